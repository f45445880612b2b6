"""A run killed again and again ends exactly where an uninterrupted one does.

`python -m mmjax.train` runs in a subprocess on one CPU device: once without
interruption, and once killed with SIGKILL at least five times (half of the
kills aimed at a checkpoint being written) and restarted after each. SIGTERM
must save at the next step boundary and exit 0.

Every run trains the same config (one compiled step, read from the test
session's compilation cache after the first run), and the uninterrupted run is
the reference of all the interrupted ones: a process start (imports, tracing)
is most of the cost of each attempt. (For the same reason the peak matmul rate
each start measures is measured on a small product, see TRAIN_SMALL_PEAK.)
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mmjax import paths
from mmjax.train import checkpoint

from tests import gcs
from tests.subprocesses import ROOT, child_env, write_config
from tests.train.conftest import TRAIN_SMALL_PEAK

pytestmark = pytest.mark.slow  # kills and restarts training processes

# Each attempt is killed a step or two after it logs its first new row, so the
# five kills end well before step 20; the rest is margin for a loaded machine.
STEPS = 30
CONFIG = f"""
from tests.train.conftest import tiny_config

def get_config():
  c = tiny_config(total_steps={STEPS}, log_every=1, eval_every=0, checkpoint_every=2)
  c.checkpoint.keep = 3
  return c
"""


def _env():
  return child_env(XLA_FLAGS="--xla_force_host_platform_device_count=1")


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
  return write_config(tmp_path_factory.mktemp("cfg"), "tiny_long.py", CONFIG)


def _start(config_file, workdir, log_path=None, *flags):
  # Output goes to a file, not a pipe nobody reads while the run goes on.
  log_path = log_path or f"{workdir}.log"
  log = open(log_path, "w")  # pylint: disable=consider-using-with
  proc = subprocess.Popen(  # python -m mmjax.train, the matmul peak measured small
      [sys.executable, "-c", TRAIN_SMALL_PEAK, f"--config={config_file}",
       f"--workdir={workdir}", *flags],
      cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT, text=True)
  log.close()
  proc.log = log_path
  return proc


def _finish(proc, timeout=300) -> str:
  proc.wait(timeout=timeout)
  with open(proc.log) as f:
    out = f.read()
  assert proc.returncode == 0, out[-3000:]
  return out


def _logged_steps(workdir) -> int:
  try:  # local or gs://
    return len(paths.read_text(paths.join(workdir, "metrics.jsonl")).splitlines())
  except FileNotFoundError:
    return 0


def _saving(workdir) -> bool:
  ckpts = os.path.join(workdir, "checkpoints")
  return os.path.isdir(ckpts) and any("tmp" in d for d in os.listdir(ckpts))


def _wait(predicate, proc, timeout=120, every=0.002):
  deadline = time.monotonic() + timeout
  while not predicate():
    assert proc.poll() is None, "the run ended before it could be interrupted"
    assert time.monotonic() < deadline, "the run made no progress"
    time.sleep(every)


def _curve(workdir) -> dict:
  rows = [json.loads(line) for line in
          paths.read_text(paths.join(workdir, "metrics.jsonl")).splitlines()]
  steps = [r["step"] for r in rows if "train/loss" in r]
  assert steps == sorted(set(steps)), "a step was logged twice"
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _final_params(workdir, steps=STEPS):
  mngr = checkpoint.manager(workdir, read_only=True)
  assert mngr.latest_step() == steps
  return mngr.restore(steps, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"]


@pytest.fixture(scope="module")
def uninterrupted(config_file, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  _finish(_start(config_file, workdir))
  return workdir


@pytest.fixture(scope="module")
def interrupted(config_file, tmp_path_factory):
  """One workdir, killed with SIGKILL five times, then stopped once by SIGTERM
  (a few steps into the attempt after the last kill), then run to the end.
  The two tests below read what each stage left."""
  workdir = str(tmp_path_factory.mktemp("interrupted"))
  rng = random.Random(0)
  kills, during_write = 0, 0
  while kills < 5:
    proc = _start(config_file, workdir)
    logged = _logged_steps(workdir)
    if kills % 2:
      # A random instant once this attempt is training.
      _wait(lambda: _logged_steps(workdir) > logged, proc)
      time.sleep(rng.uniform(0.0, 0.2))
    else:
      # The moment a save of this attempt is in flight.
      _wait(lambda: _logged_steps(workdir) > logged and _saving(workdir), proc)
    during_write += _saving(workdir)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kills += 1

  # SIGTERM once this attempt has trained at least one step of its own (and 5 in all).
  proc = _start(config_file, workdir)
  logged = _logged_steps(workdir)
  _wait(lambda: _logged_steps(workdir) >= max(5, logged + 1), proc)
  proc.send_signal(signal.SIGTERM)
  sigterm_out = _finish(proc)
  sigterm_latest = checkpoint.manager(workdir, read_only=True).latest_step()
  final_out = _finish(_start(config_file, workdir))
  return SimpleNamespace(workdir=workdir, during_write=during_write,
                         after_kills=sigterm_out, sigterm_latest=sigterm_latest,
                         after_sigterm=final_out)


def test_sigkill_at_random_instants_resumes_bitwise(interrupted, uninterrupted):
  workdir = interrupted.workdir
  assert interrupted.during_write >= 2, "no kill landed on a checkpoint write"
  # The attempt after the last kill resumed from a checkpoint the kills left.
  out = interrupted.after_kills
  resumed = int(out.split("Resuming from the checkpoint at step ")[1].split()[0])
  assert 0 < resumed < STEPS

  # The whole curve, not just the tail, equals the uninterrupted run's: rows a
  # killed attempt logged past its last checkpoint were dropped and redone.
  assert _curve(workdir) == _curve(uninterrupted)
  got, want = _final_params(workdir), _final_params(uninterrupted)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  # No save cut short is left looking like a checkpoint.
  assert checkpoint.manager(workdir, read_only=True).all_steps() == [STEPS - 4, STEPS - 2, STEPS]


def test_sigterm_saves_at_the_next_step_and_exits_zero(interrupted, uninterrupted):
  # _finish checked that the SIGTERM'd attempt exited 0.
  out = interrupted.after_kills
  stopped = int(out.split("Stop requested (SIGTERM): saved step ")[1].split()[0])
  assert 5 <= stopped < STEPS
  assert interrupted.sigterm_latest == stopped
  assert f"Resuming from the checkpoint at step {stopped}" in interrupted.after_sigterm
  assert _curve(interrupted.workdir) == _curve(uninterrupted)


def test_a_gs_workdir_survives_sigterm_and_sigkill(config_file, uninterrupted, tmp_path):
  """A run in a bucket (a local GCS emulator): stopped by SIGTERM, killed, and
  resumed, it ends with the curve and params of the same run on a local disk
  that was never interrupted (the same config; checkpoints every 4 steps
  instead of 2, fewer round trips to the emulator, which leaves the curve as
  it is)."""
  flags = ("--config.checkpoint_every=4",)
  with gcs.emulator():
    workdir = f"gs://{gcs.BUCKET}/runs/preempted"
    log = str(tmp_path / "gs.log")
    proc = _start(config_file, workdir, log, *flags)
    # Polled every 0.1 s: each read is a request to the emulator.
    _wait(lambda: _logged_steps(workdir) >= 3, proc, timeout=300, every=0.1)
    proc.send_signal(signal.SIGTERM)
    out = _finish(proc)
    stopped = int(out.split("Stop requested (SIGTERM): saved step ")[1].split()[0])
    proc = _start(config_file, workdir, log, *flags)
    _wait(lambda: _logged_steps(workdir) > stopped + 3, proc, timeout=300, every=0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = _finish(_start(config_file, workdir, log, *flags))
    resumed = int(out.split("Resuming from the checkpoint at step ")[1].split()[0])
    assert stopped <= resumed < STEPS
    assert _curve(workdir) == _curve(uninterrupted)
    got, want = (_final_params(w) for w in (workdir, uninterrupted))
    jax.tree.map(np.testing.assert_array_equal, got, want)
