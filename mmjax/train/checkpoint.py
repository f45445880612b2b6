"""Checkpoints: everything a run needs to continue exactly, safe against a kill at any instant.

A checkpoint of step s (`workdir/checkpoints/<s>/`, orbax) holds three items:

  state   the TrainState: step, params, optimizer state, skipped-update count;
          sharded arrays, restored into the shardings of the current mesh
  data    the input iterator's position (JSON)
  config  the resolved config of the run (JSON), compared on resume

Randomness needs no item of its own: the initialisation, the data order, the
caption picks and the crops are all functions of `config.seed` and the step.

Atomicity: orbax writes a step into a temporary directory and renames it into
place once every item is complete, so a kill during a save leaves the
previous checkpoints as they were and no partial step that looks finished.
A step directory that is damaged anyway (a truncated file, a disk error) is
skipped with a warning by `restore_latest`, which falls back to the one before.

Retention: the last `keep` checkpoints, plus every multiple of `keep_every`
(milestones, never deleted).
"""

import dataclasses
import os
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class IncompatibleCheckpointError(ValueError):
  """A checkpoint whose parameters do not match the model being trained."""


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  data: dict
  config: dict


def manager(workdir: str, keep: int = 2, keep_every: int = 0, read_only: bool = False,
            async_save: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager over `workdir/checkpoints`.

  keep: the last `keep` checkpoints are kept; keep_every > 0: so is every
  multiple of it. async_save: `save` returns once the arrays are copied off
  the devices and writes them in a background thread.
  """
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, keep_period=keep_every or None, create=not read_only,
      read_only=read_only, enable_async_checkpointing=async_save,
      # Temporary directories of saves cut short by a kill: never checkpoints.
      cleanup_tmp_directories=not read_only)
  handlers = {"state": ocp.StandardCheckpointHandler(),
              "data": ocp.JsonCheckpointHandler(),
              "config": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(mngr: ocp.CheckpointManager, step: int, state, data: dict, config: dict) -> None:
  """Starts saving step `step` (returns before it is on disk; see `wait`)."""
  mngr.save(step, force=True, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data),
      config=ocp.args.JsonSave(config)))


def wait(mngr: ocp.CheckpointManager) -> None:
  """Blocks until every started save is on disk."""
  mngr.wait_until_finished()


def _paths(tree) -> dict[str, tuple]:
  """'/'-joined key path -> shape, for every leaf with a shape."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)
    out[name] = tuple(getattr(leaf, "shape", np.shape(leaf)))
  return out


def check_compatible(saved_tree, abstract_state, where: str) -> None:
  """Raises IncompatibleCheckpointError naming every path whose shape differs,
  or that only one side has."""
  saved = _paths(saved_tree)
  wanted = _paths(abstract_state)
  problems = []
  for path in sorted(saved.keys() | wanted.keys()):
    if path not in wanted:
      problems.append(f"  {path}: in the checkpoint {saved[path]}, not in the model")
    elif path not in saved:
      problems.append(f"  {path}: in the model {wanted[path]}, not in the checkpoint")
    elif saved[path] != wanted[path]:
      problems.append(f"  {path}: checkpoint {saved[path]} vs model {wanted[path]}")
  if problems:
    shown = problems[:20] + ([f"  ... and {len(problems) - 20} more"] if len(problems) > 20 else [])
    raise IncompatibleCheckpointError(
        f"the checkpoint {where} does not fit the model of this config "
        f"({len(problems)} mismatched parameter paths):\n" + "\n".join(shown) +
        "\nTrain into a fresh --workdir, or restore the config the checkpoint was "
        "written with.")


def restore_latest(mngr: ocp.CheckpointManager, abstract_state) -> Restored | None:
  """Restores the newest readable checkpoint into `abstract_state`'s layout.

  abstract_state: pytree of `jax.ShapeDtypeStruct` with the current mesh's
  shardings (e.g. `build.abstract_state(..., shardings)`), so a checkpoint
  written on any mesh or process count lands directly in the current layout.

  A checkpoint that cannot be read is skipped with a warning and the one
  before it tried. One that reads but does not fit the model raises
  IncompatibleCheckpointError (falling back would silently train something
  else). Returns None when there is no checkpoint.
  """
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
  for step in sorted(mngr.all_steps(), reverse=True):
    where = f"{mngr.directory}/{step}"
    try:
      saved_tree = mngr.item_metadata(step)["state"].tree
    except Exception as e:  # pylint: disable=broad-except
      _warn_unreadable(where, e)
      continue
    check_compatible(saved_tree, target, where)
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target),
          data=ocp.args.JsonRestore(),
          config=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      _warn_unreadable(where, e)
      continue
    return Restored(step, restored["state"], dict(restored["data"] or {}),
                    dict(restored["config"] or {}))
  return None


def _warn_unreadable(where: str, error: Exception) -> None:
  message = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
  print(f"WARNING: checkpoint {where} cannot be read ({type(error).__name__}: "
        f"{message}); skipping it and trying the one before.", file=sys.stderr, flush=True)


def set_aside(mngr: ocp.CheckpointManager, after_step: int) -> list[str]:
  """Renames the step directories newer than `after_step` (ones restore_latest
  skipped as unreadable) to `<step>.unreadable`, so the run can save those
  steps again while the damaged files stay for inspection. Call on one process,
  then `mngr.reload()` on every process.
  """
  moved = []
  for step in mngr.all_steps():
    if step > after_step:
      path = os.path.join(mngr.directory, str(step))
      aside = f"{path}.unreadable"
      n = 1
      while os.path.exists(aside):
        aside = f"{path}.unreadable{n}"
        n += 1
      os.rename(path, aside)
      moved.append(aside)
  return moved
