"""One table maps logical axis names to mesh axes; shardings derive from it.

Models name their parameter and activation dimensions (`embed`, `mlp`, `heads`,
`batch`, ...; see `mmjax.models.layers`) and never mention a mesh. `RULES`
below decides where each name lives on the ("data", "fsdp", "tensor") mesh:

- FSDP: every weight matrix has an `embed` dimension (the model width), and
  `embed -> fsdp` shards all of them, their optimizer moments and the norms.
  Which dimension of a matrix is split does not change the memory saved
  (size / fsdp either way); splitting `embed` everywhere gives each layer the
  same all-gather pattern and leaves the wide dimensions (`mlp`, `heads`,
  `vocab`) free for tensor parallelism.
- Tensor parallelism (Megatron-style): attention heads and the MLP hidden
  dimension split over `tensor`, so the QKV / fc1 matmuls need no
  communication and the out / fc2 matmuls end in one reduction.
- The batch splits over ("data", "fsdp"). Within one array a mesh axis is used
  once, first rule first: an activation ("batch", "length", "embed") has its
  batch on fsdp, so its `embed` stays whole, as it must for the matmuls.

A dimension that its mesh axes do not divide (e.g. 6 heads on tensor=4) is
replicated instead, with one warning listing each such parameter, rather than
failing deep inside XLA.
"""

import contextlib
import logging
import math
from typing import Any, Iterator

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.parallel.mesh import BATCH_AXES

logger = logging.getLogger(__name__)

# Logical name -> mesh axis (or tuple of axes, or None = replicated). Order
# matters: a mesh axis already taken by an earlier rule in the same array is
# skipped (that dimension is replicated).
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),   # examples: data parallel over data x fsdp
    ("length", None),        # tokens / patches of one example stay together
    ("vocab", "tensor"),     # token embedding rows
    ("heads", "tensor"),     # attention heads: tensor parallel
    ("mlp", "tensor"),       # MLP hidden units: tensor parallel
    ("kv", None),            # per-head features: a head is never split
    ("embed", "fsdp"),       # model width: the FSDP dimension of every matrix
    ("conv_out", "fsdp"),    # conv channels play the role of embed in conv stems
    ("conv_in", None),
    ("joint", None),         # shared embedding space: the loss wants it whole
)


@contextlib.contextmanager
def activate(mesh: Mesh, rules=RULES) -> Iterator[None]:
  """Makes the models' `nn.with_logical_constraint` calls resolve on `mesh`.

  Trace (jit, lower, eval_shape) sharded steps inside this context; compiled
  functions do not need it to run. Outside it the constraints are no-ops.
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension over ("data", "fsdp"), the rest whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


def mesh_axes(logical: P, rules=RULES) -> P:
  """Logical PartitionSpec -> mesh PartitionSpec (unmatched names replicated)."""
  return nn.logical_to_mesh_axes(tuple(logical), rules)


def _axis_size(mesh: Mesh, axes) -> int:
  if axes is None:
    return 1
  return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


def _path(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                  for k in path)


def param_shardings(logical_specs, params_shapes, mesh: Mesh, rules=RULES):
  """NamedShardings of the params from their logical specs.

  Args:
    logical_specs: pytree of logical PartitionSpecs (e.g. `P("embed", "mlp")`),
      as from `nn.get_partition_spec`; leaves without names are replicated.
    params_shapes: the same pytree of arrays or ShapeDtypeStructs.
    mesh: the device mesh.

  Returns:
    the same pytree of NamedShardings. A dimension not divisible by the size
    of its mesh axes is replicated; all such fallbacks are reported in one
    logged warning naming parameter path, shape and axis.
  """
  fallbacks = []

  def one(path, logical, shape_like):
    shape = tuple(np.shape(shape_like))
    axes = list(mesh_axes(logical, rules))
    axes += [None] * (len(shape) - len(axes))
    for dim, (size, ax) in enumerate(zip(shape, axes)):
      n = _axis_size(mesh, ax)
      if size % n:
        fallbacks.append(f"{_path(path)} {shape}: dim {dim} ({logical[dim]}) of size "
                         f"{size} is not divisible by mesh axis {ax!r} of size {n}")
        axes[dim] = None
    return NamedSharding(mesh, P(*axes[:len(shape)]))

  out = jax.tree_util.tree_map_with_path(
      one, logical_specs, params_shapes, is_leaf=lambda x: isinstance(x, P))
  if fallbacks:
    logger.warning(
        "%d parameter dimension(s) cannot be split over their mesh axes and are "
        "replicated instead (more memory per device, same results); choose mesh "
        "sizes that divide them:\n  %s", len(fallbacks), "\n  ".join(fallbacks))
  return out


def state_shardings(abstract_state, param_shardings_tree, mesh: Mesh):
  """Shardings for a whole train state (params, optimizer state, counters).

  Optax states mirror the param tree (Adam's `mu` and `nu` hold one array per
  param, under the same dict keys), so a state leaf whose path ends with a
  param's path takes that param's sharding (if it fits the leaf's shape).
  Everything else (step counters, scalars, factored statistics) is replicated.

  Args:
    abstract_state: pytree of arrays or ShapeDtypeStructs, e.g. a TrainState.
    param_shardings_tree: from `param_shardings`, keyed like the params.
    mesh: the device mesh.
  """
  by_path = {}
  for path, sharding in jax.tree_util.tree_flatten_with_path(param_shardings_tree)[0]:
    by_path[tuple(path)] = sharding
  lengths = sorted({len(p) for p in by_path}, reverse=True)
  repl = replicated(mesh)

  def fits(sharding, shape):
    return len(sharding.spec) <= len(shape) and all(
        size % _axis_size(mesh, ax) == 0 for size, ax in zip(shape, sharding.spec))

  def one(path, leaf):
    shape = tuple(np.shape(leaf))
    for n in lengths:
      sharding = by_path.get(tuple(path[-n:])) if len(path) >= n else None
      if sharding is not None and fits(sharding, shape):
        return sharding
    return repl

  return jax.tree_util.tree_map_with_path(one, abstract_state)


def with_shardings(abstract_tree, shardings_tree):
  """ShapeDtypeStructs carrying `shardings_tree` (e.g. as a restore target)."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=s),
      abstract_tree, shardings_tree)
