"""A loss that reads a batch field: SigLIP with every same-scene pair a positive."""

import jax
import jax.numpy as jnp


def same_scene_sigmoid(zimg, ztxt, scale, bias, scene_id):
  """Sigmoid contrastive loss whose labels come from the batch's scene ids.

  zimg, ztxt: [B, D] unit norm; scale, bias: []; scene_id: [B] int (the batch
  field "scene_id"). Pair (i, j) is labelled +1 when the two examples show the
  same described scene (the diagonal always), else -1: a duplicate scene in the
  batch is not pushed apart from its own captions. Returns -sum(log_sigmoid(
  labels * logits)) / B, as sigmoid_contrastive does.
  """
  logits = scale * zimg @ ztxt.T + bias
  labels = jnp.where(scene_id[:, None] == scene_id[None, :], 1.0, -1.0)
  return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / zimg.shape[0]
