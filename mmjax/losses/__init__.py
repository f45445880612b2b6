"""Losses for contrastive image-text alignment.

Pure functions of embeddings (or logits) returning a float32 scalar, plus a
registry so configs can name a loss, or a weighted sum of losses, by string.
"""

from mmjax.losses.alignment import cosine_alignment
from mmjax.losses.alignment import kl_alignment
from mmjax.losses.alignment import mse_alignment
from mmjax.losses.contrastive import sigmoid_contrastive
from mmjax.losses.contrastive import softmax_contrastive
from mmjax.losses.registry import check_inputs
from mmjax.losses.registry import combine
from mmjax.losses.registry import from_config
from mmjax.losses.registry import get
from mmjax.losses.registry import names
from mmjax.losses.registry import register
from mmjax.losses.registry import required_inputs

__all__ = (
    "check_inputs",
    "combine",
    "cosine_alignment",
    "from_config",
    "get",
    "kl_alignment",
    "mse_alignment",
    "names",
    "register",
    "required_inputs",
    "sigmoid_contrastive",
    "softmax_contrastive",
)
