"""Checkpoints with orbax: save the train state every N steps, restore the latest.

Orbax writes each step into a temporary directory and renames it when complete,
so an interrupted save never looks like a checkpoint.
"""

import os

import jax
import orbax.checkpoint as ocp


def manager(workdir: str, keep: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over `workdir/checkpoints` that keeps the last `keep` steps."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                         read_only=read_only)
  return ocp.CheckpointManager(directory, options=options)


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
  """Starts an asynchronous save of `state` at `step` (returns before it is written)."""
  mngr.save(step, args=ocp.args.StandardSave(state), force=True)


def restore(mngr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores `step` (default: the latest) into the structure, dtypes and shardings
  of `abstract_state` (a pytree of `jax.ShapeDtypeStruct`, e.g. from `jax.eval_shape`).
  Returns None when the manager holds no checkpoint.
  """
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
  return mngr.restore(step, args=ocp.args.StandardRestore(target))
