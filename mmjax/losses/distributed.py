"""Cross-device forms of the contrastive losses, for a batch sharded over a mesh.

Each form gives the same value and gradient as its single-device counterpart in
`mmjax.losses.contrastive` evaluated on the global batch, but no device ever
holds the global `B x B` logit matrix:

- `softmax_contrastive_gather`: all-gathers the other tower's embeddings; each
  device scores its `B_local` rows against all `B` columns.
- `sigmoid_contrastive_ring`: passes text chunks around a ring of devices with
  `ppermute`; each device scores one `B_local x B_local` block at a time.

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


def _sigmoid_block(zimg, ztxt, scale, bias, positive: bool) -> Array:
  """Sum of -log_sigmoid(label * logit) over one `[B_local, B_local]` block."""
  logits = contrastive.pairwise_logits(zimg, ztxt, scale, bias)
  if positive:  # The device's own texts: matching pairs on the diagonal.
    labels = 2.0 * jnp.eye(logits.shape[0], dtype=jnp.float32) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits))
  return -jnp.sum(jax.nn.log_sigmoid(-logits))


def _ring_perm(n: int) -> list[tuple[int, int]]:
  # Device j sends to j + 1, so after k hops device i holds the chunk of i - k.
  return [(j, (j + 1) % n) for j in range(n)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _ring_sum(zimg, ztxt, scale, bias, axes):
  """This device's images against every device's texts, summed (no psum)."""
  n = jax.lax.axis_size(axes)
  total = _sigmoid_block(zimg, ztxt, scale, bias, positive=True)
  if n == 1:
    return total
  perm = _ring_perm(n)
  chunk = jax.lax.ppermute(ztxt, axes, perm)

  def body(_, carry):
    total, chunk = carry
    # Send the chunk on before scoring it: the transfer does not depend on the
    # block, so the compiler can overlap it with the matmul.
    following = jax.lax.ppermute(chunk, axes, perm)
    total = total + _sigmoid_block(zimg, chunk, scale, bias, positive=False)
    return total, following

  # A loop rather than n unrolled steps keeps one block live at a time and the
  # program size independent of the device count.
  total, chunk = jax.lax.fori_loop(0, n - 2, body, (total, chunk))
  return total + _sigmoid_block(zimg, chunk, scale, bias, positive=False)


def _ring_sum_fwd(zimg, ztxt, scale, bias, axes):
  # Keep only the inputs: plain autodiff of the loop would store every chunk
  # it received (B x D per device); the backward pass runs the ring again.
  return _ring_sum(zimg, ztxt, scale, bias, axes), (zimg, ztxt, scale, bias)


def _ring_sum_bwd(axes, res, g):
  zimg, ztxt, scale, bias = res
  n = jax.lax.axis_size(axes)
  # Accumulate in float32 across the n blocks and cast once at the end, as
  # the single-device loss does.
  zimg32 = zimg.astype(jnp.float32)

  def block_grads(chunk, positive):
    _, vjp = jax.vjp(
        functools.partial(_sigmoid_block, positive=positive),
        zimg32, chunk.astype(jnp.float32), scale, bias)
    return vjp(g)  # (d zimg, d chunk, d scale, d bias)

  dimg, dtxt, dscale, dbias = block_grads(ztxt, positive=True)
  if n > 1:
    perm = _ring_perm(n)

    def body(_, carry):
      dimg, dscale, dbias, chunk, dchunk = carry
      # The chunk's gradient travels with it and collects every device's
      # contribution on the way round.
      chunk, dchunk = jax.lax.ppermute((chunk, dchunk), axes, perm)
      di, dt, ds, db = block_grads(chunk, positive=False)
      return dimg + di, dscale + ds, dbias + db, chunk, dchunk + dt

    dimg, dscale, dbias, _, dtxt = jax.lax.fori_loop(
        0, n - 1, body, (dimg, dscale, dbias, ztxt, dtxt))
    # Device i now holds the gradient of the chunk owned by device i + 1: one
    # more hop takes it home.
    dtxt = jax.lax.ppermute(dtxt, axes, perm)
  return (_sum_like(dimg, zimg), _sum_like(dtxt, ztxt),
          _sum_like(dscale, scale), _sum_like(dbias, bias))


_ring_sum.defvjp(_ring_sum_fwd, _ring_sum_bwd)


def sigmoid_contrastive_ring(
    zimg: ArrayLike,
    ztxt: ArrayLike,
    scale: ArrayLike,
    bias: ArrayLike,
    *,
    axis_name: AxisNames,
) -> Array:
  """Computes the sigmoid contrastive (SigLIP) loss with a ring of devices.

  Call inside `jax.shard_map` (default `check_vma=True`). Each device first
  scores its own images against its own texts (labels +1 on the diagonal,
  -1 elsewhere), then passes its text embeddings to the next device with
  `jax.lax.ppermute`, `n - 1` times, scoring each received chunk as
  negatives. The sums of `-log_sigmoid(label * logit)` are `psum`-ed and
  divided by the global batch size, so value and gradient equal
  `sigmoid_contrastive` on the global batch. The backward pass (a custom VJP)
  runs the ring again, each chunk's gradient travelling with it and returning
  to its owner after `n` hops, so nothing grows with the device count.

  Memory per device: `B_local x B_local` float32 blocks, plus the chunk in
  flight (`B_local x D`, and its float32 gradient in the backward pass). The
  forward pass reuses one block; in the backward pass XLA:CPU keeps three block
  intermediates live (3.75 blocks in all, measured by
  experiments/benchmarks/loss_memory.py), independent of the device count.

  Args:
    zimg: this device's L2-normalised image embeddings, `[B_local, D]` float.
    ztxt: this device's text embeddings, `[B_local, D]` float; row `i` pairs
      with `zimg[i]`.
    scale: scalar logit multiplier, replicated on all devices.
    bias: scalar logit bias, replicated on all devices.
    axis_name: the mesh axis, or tuple of axes, the batch is sharded over; a
      tuple makes one ring over the flattened combination. Global batch
      `B = B_local * prod(axis sizes)`.

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
  total = _ring_sum(zimg, ztxt, jnp.asarray(scale), jnp.asarray(bias), axes)
  return jax.lax.psum(total, axes) / global_batch
