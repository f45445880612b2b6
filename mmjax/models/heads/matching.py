"""An image-text matching (ITM) head trained inside the train step.

Every (a, b) pair of the batch is a positive; each example of `a` also meets
the hardest other `b` of the batch (highest contrastive similarity, off the
diagonal), and each example of `b` the hardest other `a` (VSE++'s hardest
negative, picked without randomness so the step stays a function of (seed,
step)). A fusion head from `fusion.HEADS` scores the 3B pairs; a loss term
reads `<head>/logits` and `<head>/labels`, e.g.

  config.model.heads.itm = dict(kind="itm", fusion="concat_mlp")
  config.loss.terms.itm = dict(fn="binary_cross_entropy", weight=1.0,
      inputs=dict(logits="itm/logits", labels="itm/labels"))

Two examples of one described scene in a batch make a false "hard negative";
on the shapes data that is rare (980 distinct scenes in 1,000). Negatives are
chosen on embeddings under stop_gradient: the choice is not differentiated.
"""

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from mmjax.models.heads import fusion


class MatchingHead(nn.Module):
  """ITM on in-batch hardest negatives.

  Attributes:
    fusion: the scorer, one of fusion.HEADS ("concat_mlp", "weighted_sum",
      "cross_attention").
    pair: (a, b) modalities; a plays the image's part in the fusion head, b
      the caption's.
    options: attributes of the fusion head (e.g. {"hidden": 128}).

  features: the model's outputs so far, with z/<a>, z/<b> [B, D] and, for
  "cross_attention", tokens/<a> [B, P, W], tokens/<b> [B, L, W], mask/<b> [B, L].
  Returns {"logits": [3B] float32, "labels": [3B] float32 (1 for the B
  positives, then 0 for the 2B negatives)}.
  """

  fusion: str = "concat_mlp"
  pair: tuple = ("image", "text")
  options: Mapping[str, Any] = FrozenDict()
  dtype: str = "float32"

  @property
  def token_modalities(self) -> tuple:
    """The modalities whose token sequences this head reads."""
    return tuple(self.pair) if self.fusion in fusion.NEEDS_TOKENS else ()

  @nn.compact
  def __call__(self, features):
    a, b = self.pair
    za, zb = features[f"z/{a}"], features[f"z/{b}"]
    n = za.shape[0]
    sims = jax.lax.stop_gradient(za @ zb.T)
    sims = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, sims)
    rows = jnp.arange(n)
    side_a = jnp.concatenate([rows, rows, jnp.argmax(sims, axis=0)])
    side_b = jnp.concatenate([rows, jnp.argmax(sims, axis=1), rows])
    feats = {"zimg": za[side_a], "ztxt": zb[side_b]}
    if self.fusion in fusion.NEEDS_TOKENS:
      feats.update(image_tokens=features[f"tokens/{a}"][side_a],
                   text_tokens=features[f"tokens/{b}"][side_b],
                   text_mask=features[f"mask/{b}"][side_b])
    head = fusion.make_head(self.fusion, dtype=self.dtype, **dict(self.options))
    labels = jnp.concatenate([jnp.ones(n), jnp.zeros(2 * n)]).astype(jnp.float32)
    return {"logits": head(feats), "labels": labels}
