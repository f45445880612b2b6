"""Alignment losses: match a teacher's similarity matrix or pull pairs together."""

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _kl_rows(log_student: Array, log_teacher: Array, axis: int) -> Array:
  # Taking the teacher in log space keeps rows where the teacher puts ~0 mass
  # on an entry finite (0 * finite), and makes identical inputs give exactly 0.
  return optax.losses.kl_divergence_with_log_targets(
      log_student, log_teacher, axis=axis).mean()


def kl_alignment(logits: ArrayLike, teacher_logits: ArrayLike) -> Array:
  """Computes the KL divergence from a teacher's similarity distribution.

  Both matrices are turned into row-wise softmax distributions (image -> text
  retrieval) and the true `KL(teacher || student)` is averaged over rows; the
  same is done column-wise (text -> image retrieval) and the two directions are
  averaged. The loss is 0 exactly when `logits == teacher_logits`.

  Gradients flow into both arguments; wrap `teacher_logits` in
  `jax.lax.stop_gradient` to distil from a frozen teacher.

  Args:
    logits: student logits, `[B, B']` float (any float dtype); entry `[i, j]`
      scores image `i` against text `j`. Must be finite (no `-inf` masking).
    teacher_logits: teacher logits, same shape as `logits`.

  Returns:
    float32 scalar loss.

  References:
    Hinton et al., `Distilling the Knowledge in a Neural Network
    <https://arxiv.org/abs/1503.02531>`_, 2015.
    Kullback and Leibler, `On Information and Sufficiency
    <https://www.jstor.org/stable/2236703>`_, 1951.
  """
  logits = jnp.asarray(logits)
  teacher_logits = jnp.asarray(teacher_logits)
  if logits.ndim != 2 or logits.shape != teacher_logits.shape:
    raise ValueError(
        f"kl_alignment expects student and teacher logits of the same shape "
        f"[B, B'], got {logits.shape} and {teacher_logits.shape}; score the "
        f"teacher on the same batch as the student.")
  logits = logits.astype(jnp.float32)
  teacher_logits = teacher_logits.astype(jnp.float32)
  directions = []
  for axis in (-1, 0):  # rows: image -> text; columns: text -> image.
    directions.append(_kl_rows(
        jax.nn.log_softmax(logits, axis=axis),
        jax.nn.log_softmax(teacher_logits, axis=axis),
        axis=axis))
  return 0.5 * (directions[0] + directions[1])


def mse_alignment(zimg: ArrayLike, ztxt: ArrayLike) -> Array:
  """Computes the mean squared Euclidean distance between paired embeddings.

  `mean_i ||zimg[i] - ztxt[i]||^2`: summed over features, averaged over pairs.
  Note it has no negatives, so on its own it admits a collapsed solution; use
  it next to a contrastive term or against a fixed target (e.g. a teacher's
  embeddings).

  Args:
    zimg: image embeddings, `[B, D]` float (any float dtype).
    ztxt: text embeddings, `[B, D]` float; row `i` pairs with `zimg[i]`.

  Returns:
    float32 scalar loss.
  """
  zimg, ztxt = _as_pairs(zimg, ztxt, "mse_alignment")
  return optax.losses.squared_error(zimg, ztxt).sum(axis=-1).mean()


def mse_to_teacher(zimg: ArrayLike, ztxt: ArrayLike, teacher_zimg: ArrayLike,
                   teacher_ztxt: ArrayLike, to_teacher: ArrayLike | None = None
                   ) -> Array:
  """Computes the squared distance of the student's embeddings to a teacher's.

  `0.5 * (mse_alignment(p(zimg), teacher_zimg) + mse_alignment(p(ztxt),
  teacher_ztxt))`: each tower is pulled onto the teacher's embedding of the same
  example. Without `to_teacher`, `p` is the identity and both spaces must have
  the same size. With it, `p(z) = normalize(z @ to_teacher)`: a learned linear
  map into the teacher's space, L2-normalised again because the teacher's
  embeddings are unit vectors, so the term measures directions (it is then
  `2 - 2 cos`) and the map's overall scale is free (weight decay on it changes
  nothing the loss sees).

  Gradients flow into every argument; the train step passes the teacher's
  embeddings under `jax.lax.stop_gradient`.

  Args:
    zimg: student image embeddings, `[B, D]` float (any float dtype).
    ztxt: student text embeddings, `[B, D]` float.
    teacher_zimg: teacher image embeddings, `[B, D_t]` float, unit norm.
    teacher_ztxt: teacher text embeddings, `[B, D_t]` float, unit norm.
    to_teacher: optional `[D, D_t]` float, the student's map into the teacher's
      space (the model output of that name, see `config.distill.projection_dim`).

  Returns:
    float32 scalar loss; 0 when the (mapped) embeddings equal the teacher's.
  """
  zimg, ztxt = _as_pairs(zimg, ztxt, "mse_to_teacher")
  teacher_zimg, teacher_ztxt = _as_pairs(teacher_zimg, teacher_ztxt, "mse_to_teacher")
  if to_teacher is not None:
    to_teacher = jnp.asarray(to_teacher, jnp.float32)
    if to_teacher.shape != (zimg.shape[1], teacher_zimg.shape[1]):
      raise ValueError(
          f"mse_to_teacher: to_teacher has shape {to_teacher.shape}, but it must map "
          f"the student's {zimg.shape[1]} features to the teacher's "
          f"{teacher_zimg.shape[1]}: [{zimg.shape[1]}, {teacher_zimg.shape[1]}]; set "
          f"config.distill.projection_dim={teacher_zimg.shape[1]}.")
    zimg, ztxt = (_unit(z @ to_teacher) for z in (zimg, ztxt))
  if zimg.shape != teacher_zimg.shape:
    raise ValueError(
        f"mse_to_teacher: student embeddings {zimg.shape} and teacher embeddings "
        f"{teacher_zimg.shape} differ in size; set config.distill.projection_dim="
        f"{teacher_zimg.shape[1]} to learn a map into the teacher's space.")
  return 0.5 * (mse_alignment(zimg, teacher_zimg) + mse_alignment(ztxt, teacher_ztxt))


def _unit(x: Array) -> Array:
  # A floor on the squared norm keeps a zero row finite, as in cosine_alignment.
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def cosine_alignment(zimg: ArrayLike, ztxt: ArrayLike) -> Array:
  """Computes the mean cosine distance `1 - cos(zimg[i], ztxt[i])` over pairs.

  Unlike `mse_alignment` it ignores the embeddings' norms, so it does not need
  L2-normalised inputs. Like `mse_alignment` it has no negatives.

  Args:
    zimg: image embeddings, `[B, D]` float (any float dtype).
    ztxt: text embeddings, `[B, D]` float; row `i` pairs with `zimg[i]`.

  Returns:
    float32 scalar loss, in `[0, 2]` up to rounding.
  """
  zimg, ztxt = _as_pairs(zimg, ztxt, "cosine_alignment")
  # A floor on the squared norm keeps an all-zero embedding (e.g. a padded
  # example) from turning the loss and its gradient into NaN.
  return optax.losses.cosine_distance(zimg, ztxt, epsilon=1e-12).mean()


def _as_pairs(zimg: ArrayLike, ztxt: ArrayLike, name: str) -> tuple[Array, Array]:
  zimg = jnp.asarray(zimg)
  ztxt = jnp.asarray(ztxt)
  if zimg.ndim != 2 or zimg.shape != ztxt.shape:
    raise ValueError(
        f"{name} expects zimg and ztxt of the same shape [B, D], got "
        f"{zimg.shape} and {ztxt.shape}; row i of each is one pair.")
  return zimg.astype(jnp.float32), ztxt.astype(jnp.float32)
