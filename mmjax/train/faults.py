"""What a long run meets besides training: preemption, a full disk, a changed config.

Each check runs before the work it protects: the workdir is probed before
anything compiles, free space is checked against the size of a checkpoint,
a resumed config is compared with the one the checkpoint was written with,
and a SIGTERM is turned into a checkpoint at the next step boundary.
"""

import shutil
import signal
import threading

import jax
import numpy as np

from mmjax import config_changes, paths


class ConfigChangedError(ValueError):
  """The workdir's checkpoint was written by a different config."""


def check_workdir(workdir: str) -> None:
  """Fails now, not after hours of training, if `workdir` cannot be written.

  Every process writes and deletes its own probe (named by host, pid and a
  random suffix: containers often give all processes the same pid), so a
  missing bucket, missing credentials or a read-only disk surface before
  anything compiles, with a line saying what to change.
  """
  probe = paths.join(workdir, paths.unique_name(".write_probe"))
  paths.check_credentials(workdir)
  try:
    paths.makedirs(workdir)
    paths.write_bytes(probe, b"ok")
    paths.remove(probe)
  except Exception as e:  # pylint: disable=broad-except
    raise paths.StorageError(paths.explain(e, workdir, "write to workdir") +
                             " Or choose another --workdir.") from e


def state_bytes(abstract_state) -> int:
  """Bytes of a TrainState's arrays (global, not per device)."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(abstract_state))


def check_free_space(workdir: str, checkpoint_bytes: int, keep: int) -> None:
  """Fails now if the disk cannot hold the checkpoints this run will keep.

  A save writes a new step before the oldest is deleted, so keep + 1
  checkpoints must fit (milestones add more later; this is the floor).
  """
  if paths.is_remote(workdir):
    return  # an object store has no free-space figure; quotas fail at the save
  needed = checkpoint_bytes * (keep + 1)
  free = shutil.disk_usage(workdir).free
  if free < needed:
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    raise OSError(
        f"workdir {workdir!r} has {gib(free)} free, but {keep + 1} checkpoints of "
        f"{gib(checkpoint_bytes)} need {gib(needed)}; free space, choose another "
        "--workdir, or lower --config.checkpoint.keep.")


def check_resume_config(saved: dict, config, where: str) -> None:
  """Raises ConfigChangedError with a diff if `config` differs from the
  checkpoint's `saved` config in anything but run-time settings."""
  lines = config_changes.diff(saved, config.to_dict())
  if not lines:
    return
  if config.resume.allow_changes:
    print(f"Resuming {where} with a changed config (resume.allow_changes):\n"
          + "\n".join(lines), flush=True)
    return
  raise ConfigChangedError(
      f"the checkpoint in {where} was written with a different config "
      "(checkpoint -> now):\n" + "\n".join(lines) +
      "\nRerun with the checkpoint's settings, train into a fresh --workdir, or "
      "pass --config.resume.allow_changes=True to continue with the new ones.")


# What an evaluation computes depends on these; the optimizer, loss, schedule
# and batch size of training do not change a checkpoint's embeddings.
EVAL_KEYS = ("model.", "data.", "dtype:")


# data.* keys that choose what to evaluate on, not what the model computes: a
# checkpoint may be scored on another dataset (the tokenizer pin still guards
# the meaning of token ids).
EVAL_DATA_CHOICE = ("data.name:", "data.data_dir:", "data.train_split:", "data.eval_split:",
                    "data.prefetch:", "data.num_workers:", "data.crop_scale:", "data.flip:")


def check_eval_config(saved: dict, config, where: str) -> None:
  """Raises ConfigChangedError if `config` differs from the checkpoint's in a
  setting that changes what the model computes (model.*, data.* except the
  dataset's choice, dtype)."""
  lines = [l for l in config_changes.diff(saved, config.to_dict())
           if l.strip().startswith(EVAL_KEYS) and not l.strip().startswith(EVAL_DATA_CHOICE)]
  if lines:
    raise ConfigChangedError(
        f"the checkpoint in {where} was trained with a different model or data config "
        "(checkpoint -> now):\n" + "\n".join(lines) + "\nEvaluate with the "
        "experiment and overrides it was trained with (its resolved config is "
        f"{paths.join(where, 'config.json')}).")


class Preemption:
  """SIGTERM -> a request to checkpoint at the next step boundary and stop.

  Used as a context manager around the training loop; the previous handler
  is restored on exit. With several processes, a request on any one of them
  (or JAX's preemption notice on TPU) stops all of them at the same step, so
  they save the same checkpoint together.
  """

  def __init__(self):
    self._requested = threading.Event()
    self._previous = None
    self._notices = True  # whether JAX's preemption service answers

  def __enter__(self):
    # Signal handlers can only be installed from the main thread.
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False

  def _on_signal(self, signum, frame):
    del signum, frame
    self._requested.set()

  def request(self) -> None:
    """Asks for a stop as SIGTERM would (tests, notebooks)."""
    self._requested.set()

  def should_stop(self, step: int, exchange: bool) -> bool:
    """True on every process, at the same step, once a stop was requested.

    Call every step. JAX's preemption notice (TPU) arrives on all processes
    at the same step by itself. A SIGTERM reaches one process at a time, so
    the processes agree on it by an allgather, a host-level collective that
    would stall every step: it runs only when `exchange` is true (the loop
    passes its logging steps), so a stop may wait until the next of those.
    """
    local = self._requested.is_set()
    if jax.process_count() == 1:
      return local
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    if self._notices:
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          return True
      except Exception:  # pylint: disable=broad-except
        self._notices = False  # no preemption service on this platform: stop asking
    if not exchange:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.array(local))))
