"""Cross-device forms of the contrastive losses, for a batch sharded over a mesh.

Each form gives the same value and gradient as its single-device counterpart in
`mmjax.losses.contrastive` evaluated on the global batch, but no device ever
holds the global `B x B` logit matrix:

- `softmax_contrastive_gather`: all-gathers the other tower's embeddings; each
  device scores its `B_local` rows against all `B` columns.
- `sigmoid_contrastive_ring`: passes text chunks around a ring of devices with
  `ppermute`; each device scores one `B_local x B_local` block at a time, in
  tiles of rows.

Both are per-device functions meant to run inside `jax.shard_map` (with its
default `check_vma=True`, which makes the gradients of `psum`/`all_gather`
come out right). `sharded_softmax_contrastive` and
`sharded_sigmoid_contrastive` take global arrays and a mesh and do the
`shard_map` for you (in `mmjax.losses.sharded`, with `distributed_form`, which
picks a form by name for a train step).
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from mmjax.losses import contrastive

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
AxisNames = str | Sequence[str]


def _axes(axis_name: AxisNames) -> tuple[str, ...]:
  # Collectives accept a name or a tuple of names; a tuple runs over the
  # flattened (row-major) combination, the same order in which
  # `P(("data", "fsdp"))` lays out the batch, so device indices line up.
  axes = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
  if not axes:
    raise ValueError(
        "axis_name is empty: name the mesh axes the batch is sharded over, "
        "e.g. 'data' or ('data', 'fsdp').")
  return axes


def _varying_axes(x: Array) -> frozenset:
  # The manual axes over which `x` differs between devices inside shard_map.
  # JAX 0.10 exposes them as `aval.mat.varying`; older releases as `aval.vma`.
  aval = jax.typeof(x)
  mat = getattr(aval, "mat", None)
  if mat is not None:
    return frozenset(mat.varying)
  return frozenset(getattr(aval, "vma", ()))


def _sum_like(ct: Array, primal: Array) -> Array:
  """Sums a per-device cotangent over the axes where its primal is replicated.

  A replicated input (e.g. `scale`, passed with `P()`) is used by every
  device, so its gradient is the sum of the per-device partial gradients.
  A custom_vjp must return it already summed: JAX checks that a cotangent
  varies over exactly the axes its primal does.
  """
  extra = tuple(sorted(_varying_axes(ct) - _varying_axes(primal)))
  ct = jax.lax.psum(ct, extra) if extra else ct
  return ct.astype(jnp.result_type(primal))


def softmax_contrastive_gather(
    zimg: ArrayLike,
    ztxt: ArrayLike,
    scale: ArrayLike,
    *,
    axis_name: AxisNames,
) -> Array:
  """Computes the softmax contrastive (CLIP) loss of a batch sharded over devices.

  Call inside `jax.shard_map` (default `check_vma=True`). Each device
  all-gathers the other tower's embeddings and computes the cross-entropy of
  its local images against all texts and of its local texts against all
  images; the per-device sums are `psum`-ed and divided by the global count,
  so the value equals `softmax_contrastive` on the global batch. The gradient
  also matches: `all_gather` transposes to a reduce-scatter, so the gradient
  for every gathered embedding is summed back onto the device that owns it.

  Memory per device: `B_local x B` float32 logits for each direction (plus
  `B x D` gathered embeddings per tower), instead of `B x B`.

  Args:
    zimg: this device's L2-normalised image embeddings, `[B_local, D]` float.
    ztxt: this device's text embeddings, `[B_local, D]` float; row `i` pairs
      with `zimg[i]`.
    scale: scalar logit multiplier, replicated on all devices.
    axis_name: the mesh axis, or tuple of axes, the batch is sharded over, in
      the order of the `PartitionSpec` (`("data", "fsdp")` for
      `P(("data", "fsdp"))`). Global batch `B = B_local * prod(axis sizes)`.

  Returns:
    float32 scalar loss, identical on every device.

  References:
    Radford et al., `Learning Transferable Visual Models From Natural Language
    Supervision <https://arxiv.org/abs/2103.00020>`_, 2021.
  """
  axes = _axes(axis_name)
  zimg = jnp.asarray(zimg)
  ztxt = jnp.asarray(ztxt)
  contrastive._check_pair(zimg, ztxt, same_batch=True)  # pylint: disable=protected-access
  local = zimg.shape[0]
  global_batch = local * jax.lax.axis_size(axes)
  # Gather in the input dtype (bfloat16 halves the traffic); the logits are
  # upcast to float32 in `pairwise_logits`.
  all_txt = jax.lax.all_gather(ztxt, axes, tiled=True)
  all_img = jax.lax.all_gather(zimg, axes, tiled=True)
  # Local row i is global row (device index * B_local + i): its positive sits
  # in that column of the gathered matrix.
  labels = jax.lax.axis_index(axes) * local + jnp.arange(local)
  img_to_txt = optax.softmax_cross_entropy_with_integer_labels(
      contrastive.pairwise_logits(zimg, all_txt, scale), labels)
  txt_to_img = optax.softmax_cross_entropy_with_integer_labels(
      contrastive.pairwise_logits(ztxt, all_img, scale), labels)
  total = jax.lax.psum(img_to_txt.sum() + txt_to_img.sum(), axes)
  return total / (2 * global_batch)


# Rows of this device's images scored against a text chunk at once. 512 x
# B_local float32 is a quarter of the block at B_local = 2048, and a
# [512, D] x [D, B_local] matmul is still large enough to run at full speed.
DEFAULT_TILE_ROWS = 512


def _tile_rows(local: int, tile_rows: int | None) -> int:
  """Rows per tile: the largest divisor of `local` that is <= tile_rows."""
  if tile_rows is None:
    tile_rows = DEFAULT_TILE_ROWS
  if tile_rows < 1:
    raise ValueError(f"tile_rows={tile_rows}; use a positive row count, or None "
                     f"for the default ({DEFAULT_TILE_ROWS}).")
  rows = min(tile_rows, local)
  while local % rows:
    rows -= 1
  return rows


def _ring_perm(n: int) -> list[tuple[int, int]]:
  # Device j sends to j + 1, so after k hops device i holds the chunk of i - k.
  return [(j, (j + 1) % n) for j in range(n)]


def _tile(zimg, chunk, scale, bias, diagonal, with_grads: bool):
  """Sigmoid loss of one `[R, C]` tile of logits and, optionally, its gradients.

  zimg `[R, D]`, chunk `[C, D]`, all float32. Row r is positive with column
  `diagonal + r` (pass C or more for a tile of negatives only).

  Returns (sum of -log_sigmoid(label * logit), grads): grads are
  (d zimg `[R, D]`, d chunk `[C, D]`, d scale, d bias) for a unit cotangent,
  or None without with_grads.
  """
  dots = zimg @ chunk.T  # [R, C]
  rows = jnp.arange(zimg.shape[0])[:, None]
  cols = jnp.arange(chunk.shape[0])[None, :]
  labels = jnp.where(cols == rows + diagonal, 1.0, -1.0)
  z = labels * (scale * dots + bias)
  value = jnp.sum(jax.nn.softplus(-z))  # = -log_sigmoid(z)
  if not with_grads:
    return value, None
  # d softplus(-z) / d logit = -label * sigmoid(-z). Written out rather than
  # left to autodiff so that nothing else of size [R, C] is kept.
  dlogits = -labels * jax.nn.sigmoid(-z)
  return value, (scale * (dlogits @ chunk), scale * (dlogits.T @ zimg),
                 jnp.sum(dlogits * dots), jnp.sum(dlogits))


def _zeros(shape, like) -> Array:
  # float32 zeros that vary over the same manual axes as `like`: a loop
  # carry inside shard_map must keep one type from iteration to iteration.
  axes = tuple(sorted(frozenset().union(*map(_varying_axes, like))))
  zeros = jnp.zeros(shape, jnp.float32)
  return jax.lax.pcast(zeros, axes, to="varying") if axes else zeros


def _score_chunk(acc, zimg, chunk, scale, bias, *, positive: bool, rows: int):
  """Adds this device's images `[B_local, D]` against a text chunk `[C, D]`.

  acc is (value,) or (value, d zimg `[B_local, D]`, d chunk `[C, D]`,
  d scale, d bias); the chunk's loss and, in the long form, its gradients for
  a unit cotangent are added in place. The `B_local x C` block is never
  formed whole: a loop over tiles of `rows` images keeps one `[rows, C]`
  tile, and the few same-sized intermediates the compiler materialises
  around it, live at a time.
  """
  with_grads = len(acc) > 1
  no_diagonal = chunk.shape[0]

  def body(t, acc):
    start = t * rows
    zi = jax.lax.dynamic_slice_in_dim(zimg, start, rows)
    v, g = _tile(zi, chunk, scale, bias, start if positive else no_diagonal,
                 with_grads)
    if not with_grads:
      return (acc[0] + v,)
    value, dimg, dchunk, dscale, dbias = acc
    di, dc, ds, db = g
    di = di + jax.lax.dynamic_slice_in_dim(dimg, start, rows)
    dimg = jax.lax.dynamic_update_slice_in_dim(dimg, di, start, axis=0)
    return value + v, dimg, dchunk + dc, dscale + ds, dbias + db

  return jax.lax.fori_loop(0, zimg.shape[0] // rows, body, tuple(acc))


def _ring(zimg, ztxt, scale, bias, axes, rows: int, with_grads: bool):
  """This device's images against every device's texts: one pass of the ring.

  Returns (value,) or, with with_grads, (value, d zimg, d ztxt, d scale,
  d bias): value is this device's sum of -log_sigmoid terms (not yet
  psum-ed); the gradients, float32 and for a unit cotangent, are of the psum
  of those sums, as this device's parts: d ztxt is the gradient of this
  device's own texts, collected from every device; d scale and d bias are
  this device's shares (their psum is the gradient).
  """
  n = jax.lax.axis_size(axes)
  f32 = lambda x: jnp.asarray(x).astype(jnp.float32)
  zimg, chunk, scale, bias = f32(zimg), f32(ztxt), f32(scale), f32(bias)
  score = functools.partial(_score_chunk, zimg=zimg, scale=scale, bias=bias, rows=rows)
  zeros = functools.partial(_zeros, like=(zimg, chunk))
  acc = (zeros(()),)
  if with_grads:
    acc += (zeros(zimg.shape), zeros(chunk.shape), zeros(()), zeros(()))
  acc = score(acc, chunk=chunk, positive=True)
  if n == 1:
    return acc
  perm = _ring_perm(n)
  hop = lambda x: jax.lax.ppermute(x, axes, perm)

  def pass_on(acc):
    # The gradient of a chunk travels with it, collecting each device's share.
    return (acc[0], acc[1], hop(acc[2]), *acc[3:]) if with_grads else acc

  def step(_, carry):
    acc, chunk = carry
    # Send the chunk on before scoring it: the transfer does not depend on the
    # scores, so the compiler can overlap the two.
    following = hop(chunk)
    return pass_on(score(acc, chunk=chunk, positive=False)), following

  # After k hops device i holds the chunk of device i - k, and its gradient
  # holds the shares of devices i - k .. i - 1. A loop rather than n unrolled
  # steps keeps the program size independent of the device count.
  acc, chunk = jax.lax.fori_loop(0, n - 2, step, (pass_on(acc), hop(chunk)))
  # The last chunk (of device i + 1) needs no forwarding; its gradient, now
  # complete, takes the final hop home.
  return pass_on(score(acc, chunk=chunk, positive=False))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _ring_sum(zimg, ztxt, scale, bias, axes, rows):
  """This device's images against every device's texts, summed (no psum)."""
  return _ring(zimg, ztxt, scale, bias, axes, rows, with_grads=False)[0]


def _ring_sum_fwd(zimg, ztxt, scale, bias, axes, rows):
  # The loss is a sum, so its gradient for any cotangent g is g times the
  # gradient for g = 1: one pass of the ring computes the value and that
  # gradient together, and only [B_local, D]-sized results are kept for the
  # backward pass (plain autodiff of the loop would keep every received chunk,
  # and a separate backward ring would score every block twice).
  value, *grads = _ring(zimg, ztxt, scale, bias, axes, rows, with_grads=True)
  return value, (grads, (zimg, ztxt, scale, bias))


def _ring_sum_bwd(axes, rows, res, g):
  del axes, rows
  grads, primals = res
  return tuple(_sum_like(g * d, p) for d, p in zip(grads, primals))


_ring_sum.defvjp(_ring_sum_fwd, _ring_sum_bwd)


def sigmoid_contrastive_ring(
    zimg: ArrayLike,
    ztxt: ArrayLike,
    scale: ArrayLike,
    bias: ArrayLike,
    *,
    axis_name: AxisNames,
    tile_rows: int | None = None,
) -> Array:
  """Computes the sigmoid contrastive (SigLIP) loss with a ring of devices.

  Call inside `jax.shard_map` (default `check_vma=True`). Each device first
  scores its own images against its own texts (labels +1 on the diagonal,
  -1 elsewhere), then passes its text embeddings to the next device with
  `jax.lax.ppermute`, `n - 1` times, scoring each received chunk as
  negatives. The sums of `-log_sigmoid(label * logit)` are `psum`-ed and
  divided by the global batch size, so value and gradient equal
  `sigmoid_contrastive` on the global batch.

  Under differentiation (a custom VJP) the same single pass of the ring also
  computes the gradient: each chunk's gradient travels with the chunk,
  collects every device's share, and takes one last hop home. Every block is
  scored once, not once forward and again backward, and nothing grows with
  the device count.

  Memory per device: each `B_local x B_local` block is scored in tiles of
  `tile_rows` image rows, so the largest intermediates are a few
  `[tile_rows, B_local]` float32 tiles; add the chunk in flight and its
  gradient (`[B_local, D]` each). experiments/benchmarks/loss_memory.py
  measures the total against one `B_local x B_local` float32 block.

  Args:
    zimg: this device's L2-normalised image embeddings, `[B_local, D]` float.
    ztxt: this device's text embeddings, `[B_local, D]` float; row `i` pairs
      with `zimg[i]`.
    scale: scalar logit multiplier, replicated on all devices.
    bias: scalar logit bias, replicated on all devices.
    axis_name: the mesh axis, or tuple of axes, the batch is sharded over; a
      tuple makes one ring over the flattened combination. Global batch
      `B = B_local * prod(axis sizes)`.
    tile_rows: image rows scored at once, at most; the largest divisor of
      `B_local` not above it is used. None means `DEFAULT_TILE_ROWS`. Fewer
      rows save memory, more give the matmuls more work per call.

  Returns:
    float32 scalar loss, identical on every device. Reverse-mode
    differentiable (custom VJP); not forward-mode.

  References:
    Zhai et al., `Sigmoid Loss for Language Image Pre-Training
    <https://arxiv.org/abs/2303.15343>`_, 2023 (Section 3.3, efficient
    "chunked" implementation).
  """
  axes = _axes(axis_name)
  zimg = jnp.asarray(zimg)
  ztxt = jnp.asarray(ztxt)
  contrastive._check_pair(zimg, ztxt, same_batch=True)  # pylint: disable=protected-access
  global_batch = zimg.shape[0] * jax.lax.axis_size(axes)
  rows = _tile_rows(zimg.shape[0], tile_rows)
  total = _ring_sum(zimg, ztxt, jnp.asarray(scale), jnp.asarray(bias), axes, rows)
  return jax.lax.psum(total, axes) / global_batch
