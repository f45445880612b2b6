"""Cross-device contrastive losses over global (sharded) arrays, and the choice
of form by name.

`sharded_softmax_contrastive` and `sharded_sigmoid_contrastive` take global
arrays and a mesh and run the per-device forms of `mmjax.losses.distributed`
under `jax.shard_map`; `distributed_form` picks one per loss for a train step.
"""

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.losses import contrastive
from mmjax.losses.distributed import AxisNames
from mmjax.losses.distributed import _axes  # one parser of axis names for both modules
from mmjax.losses.distributed import sigmoid_contrastive_ring
from mmjax.losses.distributed import softmax_contrastive_gather

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

# ---------------------------------------------------------------------------
# Wrappers over global arrays.


def _batch_axes(mesh, batch_axes: AxisNames) -> tuple[str, ...]:
  if mesh is None:
    raise ValueError(
        "a distributed loss needs the device mesh: pass mesh=..., or use the "
        "single-device loss (impl='naive').")
  axes = _axes(batch_axes)
  unknown = [a for a in axes if a not in mesh.axis_names]
  if unknown:
    raise ValueError(
        f"batch axes {unknown} are not axes of the mesh {dict(mesh.shape)}; "
        f"pass batch_axes from {tuple(mesh.axis_names)}.")
  if len(set(axes)) != len(axes):
    raise ValueError(f"batch_axes {axes} names an axis twice.")
  return axes


def _check_batch(zimg, ztxt, mesh, axes: tuple[str, ...]) -> None:
  contrastive._check_pair(zimg, ztxt, same_batch=True)  # pylint: disable=protected-access
  sizes = {a: mesh.shape[a] for a in axes}
  devices = math.prod(sizes.values())
  batch = zimg.shape[0]
  if batch % devices:
    up = -(-batch // devices) * devices
    raise ValueError(
        f"global batch size {batch} is not divisible by the {devices} devices "
        f"the batch is sharded over (batch axes {sizes}). Make the batch size "
        f"(config.batch_size) a multiple of {devices}, e.g. {up}, or change "
        f"the sizes of the batch axes {tuple(axes)} (config.mesh.*).")


def _sharded(per_device: Callable, mesh, batch_axes: AxisNames,
             zimg: ArrayLike, ztxt: ArrayLike, *scalars: ArrayLike) -> Array:
  """Validates the global batch, then runs `per_device` under shard_map with
  zimg, ztxt [B, D] split over `batch_axes` and the scalars replicated."""
  axes = _batch_axes(mesh, batch_axes)
  embeddings = (jnp.asarray(zimg), jnp.asarray(ztxt))
  _check_batch(*embeddings, mesh, axes)
  scalars = tuple(jnp.asarray(x) for x in scalars)
  rows = P(axes, None)
  if all(mesh.axis_types[mesh.axis_names.index(a)] == AxisType.Explicit
         for a in axes):
    # With Explicit axes shard_map checks, rather than changes, the input
    # sharding; reshard is a no-op when the batch already arrives as `rows`.
    embeddings = jax.reshard(embeddings, NamedSharding(mesh, rows))
  fn = jax.shard_map(
      functools.partial(per_device, axis_name=axes),
      mesh=mesh,
      in_specs=(rows, rows) + (P(),) * len(scalars),
      out_specs=P())
  return fn(*embeddings, *scalars)


def sharded_softmax_contrastive(
    zimg: ArrayLike,
    ztxt: ArrayLike,
    scale: ArrayLike,
    *,
    mesh: jax.sharding.Mesh,
    batch_axes: AxisNames = ("data", "fsdp"),
) -> Array:
  """Computes `softmax_contrastive` on global arrays via the gather form.

  Runs `softmax_contrastive_gather` under `jax.shard_map` with the batch
  sharded over `batch_axes` and everything replicated over the other mesh
  axes (e.g. `tensor`). Works eagerly or under `jax.jit`.

  Memory per device: `B_local x B` float32 logits per direction, where
  `B_local = B / prod(batch axis sizes)`; XLA:CPU keeps several such buffers
  for the gradient (see experiments/benchmarks/loss_memory.py). It grows with
  the device count at fixed B_local.

  Args:
    zimg: global image embeddings, `[B, D]` float.
    ztxt: global text embeddings, `[B, D]` float.
    scale: scalar logit multiplier.
    mesh: the device mesh.
    batch_axes: the mesh axes the batch is sharded over (name or tuple).

  Returns:
    float32 scalar loss, equal to `softmax_contrastive(zimg, ztxt, scale)`.

  Raises:
    ValueError: `B` is not divisible by the number of devices on the batch
      axes, or a batch axis is not in the mesh (before anything is traced).
  """
  return _sharded(softmax_contrastive_gather, mesh, batch_axes, zimg, ztxt, scale)


def sharded_sigmoid_contrastive(
    zimg: ArrayLike,
    ztxt: ArrayLike,
    scale: ArrayLike,
    bias: ArrayLike,
    *,
    mesh: jax.sharding.Mesh,
    batch_axes: AxisNames = ("data", "fsdp"),
    tile_rows: int | None = None,
) -> Array:
  """Computes `sigmoid_contrastive` on global arrays via the ring form.

  Runs `sigmoid_contrastive_ring` under `jax.shard_map` with the batch
  sharded over `batch_axes` and everything replicated over the other mesh
  axes. Works eagerly or under `jax.jit`.

  Memory per device: a few `[tile_rows, B_local]` float32 tiles and
  `[B_local, D]` chunks, where `B_local = B / prod(batch axis sizes)`: 1.88
  `B_local x B_local` blocks for value and gradient at B_local = 2048,
  D = 512 on XLA:CPU (experiments/benchmarks/loss_memory.py), independent of
  the device count at fixed B_local.

  Args:
    zimg: global image embeddings, `[B, D]` float.
    ztxt: global text embeddings, `[B, D]` float.
    scale: scalar logit multiplier.
    bias: scalar logit bias.
    mesh: the device mesh.
    batch_axes: the mesh axes the batch is sharded over (name or tuple).
    tile_rows: image rows scored at once; see `sigmoid_contrastive_ring`.

  Returns:
    float32 scalar loss, equal to `sigmoid_contrastive(zimg, ztxt, scale,
    bias)`.

  Raises:
    ValueError: `B` is not divisible by the number of devices on the batch
      axes, or a batch axis is not in the mesh (before anything is traced).
  """
  ring = functools.partial(sigmoid_contrastive_ring, tile_rows=tile_rows)
  return _sharded(ring, mesh, batch_axes, zimg, ztxt, scale, bias)


# ---------------------------------------------------------------------------
# Choosing a form.

IMPLS = ("auto", "naive", "gather", "ring")


def choose_form(fn: Callable[..., Array], forms: dict[str, Callable[..., Array]],
                impl: str = "auto", mesh: jax.sharding.Mesh | None = None,
                batch_axes: AxisNames = ("data", "fsdp")) -> Callable[..., Array]:
  """The form of loss `fn` to run on `mesh`.

  The result takes the same parameters as `fn` (mesh and batch axes are bound
  as keywords), so binding by parameter name works unchanged.

  Args:
    fn: the single-device loss.
    forms: {impl: form over global arrays}, as registered with `fn`.
    impl: "auto" (the first registered form when the batch axes span more
      than one device, `fn` otherwise), "naive" (`fn` on the global batch; XLA's
      partitioner decides the communication and may materialise B x B), or a
      name in `forms`. A loss with no forms always runs as `fn`.
    mesh: the device mesh; not needed for "naive".
    batch_axes: the mesh axes the batch is sharded over.

  Raises:
    ValueError: `impl` is unknown or not a form of this loss (the message
      lists the valid choices), or the mesh lacks a batch axis.
  """
  if impl not in IMPLS and impl not in forms:
    raise ValueError(f"unknown loss impl {impl!r}; choose one of {IMPLS}.")
  if impl not in ("auto", "naive") and forms and impl not in forms:
    raise ValueError(f"this loss has no {impl!r} form; choose one of "
                     f"{('auto', 'naive', *forms)}.")
  if impl == "naive" or not forms:
    return fn
  axes = _batch_axes(mesh, batch_axes)
  if impl == "auto":
    if math.prod(mesh.shape[a] for a in axes) == 1:
      return fn
    impl = next(iter(forms))
  return functools.partial(forms[impl], mesh=mesh, batch_axes=axes)
