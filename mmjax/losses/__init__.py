"""Losses for contrastive image-text alignment.

Pure functions of embeddings (or logits) returning a float32 scalar, plus a
registry so configs can name a loss, or a weighted sum of losses, by string.
Cross-device forms of the contrastive losses are in `mmjax.losses.distributed`.
"""

from mmjax.losses.alignment import cosine_alignment
from mmjax.losses.alignment import kl_alignment
from mmjax.losses.alignment import mse_alignment
from mmjax.losses.alignment import mse_to_teacher
from mmjax.losses.contrastive import sigmoid_contrastive
from mmjax.losses.contrastive import softmax_contrastive
from mmjax.losses.sharded import distributed_form
from mmjax.losses.sharded import sharded_sigmoid_contrastive
from mmjax.losses.sharded import sharded_softmax_contrastive
from mmjax.losses.distributed import sigmoid_contrastive_ring
from mmjax.losses.distributed import softmax_contrastive_gather
from mmjax.losses.registry import check_inputs
from mmjax.losses.registry import combine
from mmjax.losses.registry import from_config
from mmjax.losses.registry import get
from mmjax.losses.registry import names
from mmjax.losses.registry import register
from mmjax.losses.registry import required_inputs
from mmjax.losses.registry import TEACHER_INPUTS

__all__ = (
    "check_inputs",
    "combine",
    "cosine_alignment",
    "distributed_form",
    "from_config",
    "get",
    "kl_alignment",
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
    "TEACHER_INPUTS",
)
