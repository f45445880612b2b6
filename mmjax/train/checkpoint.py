"""Checkpoints: everything a run needs to continue exactly, safe against a kill at any instant.

A checkpoint of step s (`workdir/checkpoints/<s>/`, orbax) holds three items:

  state   the TrainState: step, params, optimizer state, skipped-update count;
          sharded arrays, restored into the shardings of the current mesh
  data    the input iterator's position (JSON)
  config  the resolved config of the run (JSON), compared on resume

Randomness needs no item of its own: the initialisation, the data order, the
caption picks and the crops are all functions of `config.seed` and the step.

Atomicity: orbax writes a step into a temporary directory and renames it into
place once every item is complete (on an object store, it marks it complete
with a commit file), so a kill during a save leaves the previous checkpoints as
they were and no partial step that looks finished.

Restore policy (`restore_latest`), so that a restore never loses a good checkpoint:
  * Only recognised damage (a missing, truncated or undecodable file, a failed
    checksum) makes it fall back to the step before, with a warning. Any other
    error (a transient I/O error, host memory, a library version that cannot
    read the files) stops the run with the path and what to do.
  * If step directories exist but none can be read, it stops with the list:
    it never starts from scratch over them.
  * With several processes, all agree on each step's verdict, so all restore
    the same step.
  * Damaged steps newer than the restored one stay where they are until the
    run's next save, which first moves them to `<step>.unreadable` (kept for
    inspection; see `set_aside`).

Retention: the last `keep` checkpoints, plus every multiple of `keep_every`
(milestones, never deleted).
"""

import dataclasses
import json
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mmjax import paths


class IncompatibleCheckpointError(ValueError):
  """A checkpoint whose parameters do not match the model being trained."""


class CheckpointReadError(RuntimeError):
  """Reading a checkpoint failed for a reason that is not recognised damage."""


class NoReadableCheckpointError(RuntimeError):
  """Step directories exist, but every one is damaged."""


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
  directory = paths.join(paths.resolve(workdir), "checkpoints")
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


# Substrings of the errors tensorstore / orbax raise for damaged files (their
# status codes, and the zstd / checksum / JSON decoders' words).
DAMAGE_MARKERS = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND", "Truncated", "truncated",
                  "checksum", "Checksum", "corrupt", "Corrupt", "Unexpected end")
DAMAGE_TYPES = (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, EOFError)


def is_damage(error: BaseException) -> bool:
  """True when `error` (or one it was raised from) says a file is missing,
  truncated or undecodable: damage, not a failure of the reader."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, DAMAGE_TYPES) or any(m in str(error) for m in DAMAGE_MARKERS):
      return True
    error = error.__cause__ or error.__context__
  return False


# Verdicts of one process on one step, agreed by taking the worst over processes.
OK, DAMAGED, FAILED = 0, 1, 2


def _gather_verdicts(verdict: int) -> np.ndarray:
  """[processes] every process's verdict on one step (a collective)."""
  if jax.process_count() == 1:
    return np.array([verdict])
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(np.array(verdict, np.int32)))


def _agree(verdict: int) -> int:
  """The worst verdict of all processes, the same on each."""
  return int(np.max(_gather_verdicts(verdict)))


def restore_latest(mngr: ocp.CheckpointManager, abstract_state) -> Restored | None:
  """Restores the newest readable checkpoint into `abstract_state`'s layout.

  abstract_state: pytree of `jax.ShapeDtypeStruct` with the current mesh's
  shardings (e.g. `build.abstract_state(..., shardings)`), so a checkpoint
  written on any mesh or process count lands directly in the current layout.

  Returns None when there is no checkpoint. A damaged step is skipped with a
  warning and the one before tried; see the module docstring for the policy.
  Raises IncompatibleCheckpointError for one that reads but does not fit the
  model (falling back would silently train something else),
  CheckpointReadError for an error that is not damage (nothing is skipped),
  and NoReadableCheckpointError when every step is damaged.
  """
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
  damaged = []
  for step in sorted(mngr.all_steps(), reverse=True):
    where = f"{mngr.directory}/{step}"
    restored, error = None, None
    try:
      saved_tree = _state_tree(mngr, step, where)
    except Exception as e:  # pylint: disable=broad-except
      error = e
    if error is None:
      check_compatible(saved_tree, target, where)
      try:
        restored = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        error = e
    verdict = _agree(OK if error is None else DAMAGED if is_damage(error) else FAILED)
    if verdict == FAILED:
      cause = (f"{type(error).__name__}: {_first_line(error)}" if error is not None
               else "an error on another process (see its log)")
      raise CheckpointReadError(
          f"reading the checkpoint {where} failed ({cause}). This is not recognised "
          "damage (a missing, truncated or undecodable file), so nothing was skipped, "
          "moved or deleted. If it is transient (I/O, host memory), rerun the same "
          "command; if the orbax / tensorstore versions changed, install the ones in "
          "requirements/lock.txt.") from error
    if verdict == DAMAGED:
      reason = (f"{type(error).__name__}: {_first_line(error)}" if error is not None
                else "damaged on another process")
      damaged.append(f"  {where}: {reason}")
      print(f"WARNING: checkpoint {where} is damaged ({reason}); trying the one before. "
            "It stays in place until this run saves again.", file=sys.stderr, flush=True)
      continue
    return Restored(step, restored["state"], dict(restored["data"] or {}),
                    dict(restored["config"] or {}))
  if damaged:
    raise NoReadableCheckpointError(
        f"every checkpoint in {mngr.directory} is damaged; nothing was moved, deleted or "
        "overwritten, and training did not start from scratch over them:\n"
        + "\n".join(damaged) + "\nRestore them from a backup, or train into a fresh "
        "--workdir (or move checkpoints/ aside to start this one again).")
  return None


def _state_tree(mngr, step: int, where: str):
  """The saved state's tree metadata; FileNotFoundError (damage) if missing."""
  items = mngr.item_metadata(step)
  state = items.get("state") if items is not None else None
  tree = getattr(state, "tree", None)
  if tree is None:
    raise FileNotFoundError(f"{where}/state has no metadata (a deleted or missing file)")
  return tree


def latest_data(mngr: ocp.CheckpointManager) -> dict | None:
  """The `data` item (input position, pins) of the newest step whose one reads
  (None if there is none): cheap JSON, read before the state is restored."""
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
      return dict(restored["data"] or {})
    except Exception:  # pylint: disable=broad-except
      continue  # restore_latest decides what a step that does not read means
  return None


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:300] if text else type(error).__name__


def set_aside(mngr: ocp.CheckpointManager, after_step: int) -> list[str]:
  """Renames the step directories newer than `after_step` (damaged ones that
  restore_latest skipped) to `<step>.unreadable`, so the run can save those
  steps again while the damaged files stay for inspection. Call on one process,
  then `mngr.reload()` on every process.
  """
  moved = []
  for step in mngr.all_steps():
    if step > after_step:
      path = paths.join(mngr.directory, str(step))
      aside = f"{path}.unreadable"
      n = 1
      while paths.exists(aside):
        aside = f"{path}.unreadable{n}"
        n += 1
      paths.rename(path, aside)
      moved.append(aside)
  return moved
