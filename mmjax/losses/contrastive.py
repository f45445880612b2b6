"""Contrastive image-text losses: softmax (CLIP) and sigmoid (SigLIP).

Single-device forms on the full batch. The cross-device forms that never hold
the global B x B logit matrix live in `mmjax.losses.distributed` and must agree
with these in value and gradient.
"""

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _check_pair(zimg: Array, ztxt: Array, *, same_batch: bool) -> None:
  # Shapes are static, so this fails at trace time, before anything compiles.
  if zimg.ndim != 2 or ztxt.ndim != 2:
    raise ValueError(
        f"expected zimg and ztxt of shape [B, D], got {zimg.shape} and "
        f"{ztxt.shape}; flatten any extra axes into the batch first.")
  if zimg.shape[1] != ztxt.shape[1]:
    raise ValueError(
        f"zimg and ztxt have different embedding widths ({zimg.shape[1]} vs "
        f"{ztxt.shape[1]}); project both towers to the same width.")
  if same_batch and zimg.shape[0] != ztxt.shape[0]:
    raise ValueError(
        f"zimg and ztxt must hold the same number of pairs, got "
        f"{zimg.shape[0]} and {ztxt.shape[0]}; row i of each is one pair.")


def pairwise_logits(
    zimg: ArrayLike,
    ztxt: ArrayLike,
    scale: ArrayLike,
    bias: ArrayLike = 0.0,
) -> Array:
  """Computes the image-text similarity logits `scale * zimg @ ztxt.T + bias`.

  Args:
    zimg: image embeddings, `[B, D]` float (any float dtype).
    ztxt: text embeddings, `[B', D]` float (any float dtype).
    scale: scalar multiplier (the temperature, already exponentiated).
    bias: scalar added to every logit.

  Returns:
    float32 logits of shape `[B, B']`; entry `[i, j]` scores image `i` against
    text `j`.
  """
  zimg = jnp.asarray(zimg)
  ztxt = jnp.asarray(ztxt)
  _check_pair(zimg, ztxt, same_batch=False)
  # Upcast before the matmul: with scale ~100 a bfloat16 dot product is off by
  # whole logits, which changes which negatives dominate the loss.
  sims = jnp.matmul(zimg.astype(jnp.float32), ztxt.astype(jnp.float32).T)
  scale = jnp.asarray(scale, jnp.float32)
  bias = jnp.asarray(bias, jnp.float32)
  return sims * scale + bias


def softmax_contrastive(
    zimg: ArrayLike,
    ztxt: ArrayLike,
    scale: ArrayLike,
) -> Array:
  """Computes the symmetric softmax contrastive (CLIP / InfoNCE) loss.

  With `logits = scale * zimg @ ztxt.T`, each image must pick out its own
  caption among all captions in the batch (row-wise cross-entropy against the
  diagonal) and each caption its own image (column-wise); the loss is the mean
  of the two directions.

  Args:
    zimg: L2-normalised image embeddings, `[B, D]` float (any float dtype).
    ztxt: L2-normalised text embeddings, `[B, D]` float; row `i` pairs with
      `zimg[i]`.
    scale: scalar logit multiplier (already exponentiated temperature).

  Returns:
    float32 scalar loss.

  References:
    Radford et al., `Learning Transferable Visual Models From Natural Language
    Supervision <https://arxiv.org/abs/2103.00020>`_, 2021.
    van den Oord et al., `Representation Learning with Contrastive Predictive
    Coding <https://arxiv.org/abs/1807.03748>`_, 2018.
  """
  zimg = jnp.asarray(zimg)
  ztxt = jnp.asarray(ztxt)
  _check_pair(zimg, ztxt, same_batch=True)
  logits = pairwise_logits(zimg, ztxt, scale)
  labels = jnp.arange(logits.shape[0])
  # optax's cross-entropy goes through log-softmax, so it stays finite even for
  # logits in the thousands (a learned scale that has run away).
  img_to_txt = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  txt_to_img = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
  return 0.5 * (img_to_txt.mean() + txt_to_img.mean())


def sigmoid_contrastive(
    zimg: ArrayLike,
    ztxt: ArrayLike,
    scale: ArrayLike,
    bias: ArrayLike,
) -> Array:
  """Computes the pairwise sigmoid contrastive (SigLIP) loss.

  With `logits = scale * zimg @ ztxt.T + bias`, every image-text pair is an
  independent binary classification: label +1 on the diagonal (matching pair),
  -1 elsewhere. The loss sums `-log_sigmoid(label * logit)` over all `B * B`
  pairs and divides by the batch size `B` (not by `B * B`), as in the paper.

  Args:
    zimg: L2-normalised image embeddings, `[B, D]` float (any float dtype).
    ztxt: L2-normalised text embeddings, `[B, D]` float; row `i` pairs with
      `zimg[i]`.
    scale: scalar logit multiplier (already exponentiated temperature).
    bias: scalar logit bias; SigLIP initialises it to -10 so the many negatives
      do not dominate the first steps.

  Returns:
    float32 scalar loss.

  References:
    Zhai et al., `Sigmoid Loss for Language Image Pre-Training
    <https://arxiv.org/abs/2303.15343>`_, 2023.
  """
  zimg = jnp.asarray(zimg)
  ztxt = jnp.asarray(ztxt)
  _check_pair(zimg, ztxt, same_batch=True)
  logits = pairwise_logits(zimg, ztxt, scale, bias)
  batch_size = logits.shape[0]
  labels = 2.0 * jnp.eye(batch_size, dtype=jnp.float32) - 1.0
  # log_sigmoid is softplus-based, so neither sign of a huge logit overflows.
  return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / batch_size
