"""Losses for contrastive alignment.

Pure functions of embeddings (or logits) returning a float32 scalar; a registry
so configs can name a loss by string or dotted path, each with its
cross-device forms; and weighted terms over pairs of modalities (terms.py).
"""

from mmjax.losses import captioning
from mmjax.losses.alignment import cosine_alignment
from mmjax.losses.alignment import kl_alignment
from mmjax.losses.alignment import mse_alignment
from mmjax.losses.alignment import mse_to_teacher
from mmjax.losses.captioning import caption_cross_entropy
from mmjax.losses.contrastive import sigmoid_contrastive
from mmjax.losses.contrastive import softmax_contrastive
from mmjax.losses.distributed import sigmoid_contrastive_ring
from mmjax.losses.distributed import softmax_contrastive_gather
from mmjax.losses.matching import binary_cross_entropy
from mmjax.losses.registry import distributed_forms
from mmjax.losses.registry import get
from mmjax.losses.registry import names
from mmjax.losses.registry import register
from mmjax.losses.registry import required_inputs
from mmjax.losses.sharded import choose_form
from mmjax.losses.sharded import sharded_sigmoid_contrastive
from mmjax.losses.sharded import sharded_softmax_contrastive
from mmjax.losses.terms import check
from mmjax.losses.terms import as_terms
from mmjax.losses.terms import combine
from mmjax.losses.terms import from_config
from mmjax.losses.terms import LossConfigError
from mmjax.losses.terms import make_term
from mmjax.losses.terms import Term

__all__ = (
    "as_terms",
    "binary_cross_entropy",
    "caption_cross_entropy",
    "captioning",
    "check",
    "choose_form",
    "combine",
    "cosine_alignment",
    "distributed_forms",
    "from_config",
    "get",
    "kl_alignment",
    "LossConfigError",
    "make_term",
    "mse_alignment",
    "mse_to_teacher",
    "names",
    "register",
    "required_inputs",
    "sharded_sigmoid_contrastive",
    "sharded_softmax_contrastive",
    "sigmoid_contrastive",
    "sigmoid_contrastive_ring",
    "softmax_contrastive",
    "softmax_contrastive_gather",
    "Term",
)
