"""Two local processes x 4 devices train exactly like one process x 8 devices."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from tests.subprocesses import ROOT, child_env, write_config
from tests.train.conftest import TRAIN_SMALL_PEAK, truncate_arrays

pytestmark = pytest.mark.slow  # launches several JAX processes

CONFIG = """
from tests.train.conftest import tiny_config

def get_config(arg=""):
  c = tiny_config(batch_size=16, total_steps=4, eval_every=4, checkpoint_every=4)
  if arg == "no_eval":  # an evaluation setting, which a resume may change
    c.eval.evaluators.retrieval.every = None
  return c
"""


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


_env = child_env


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
  return write_config(tmp_path_factory.mktemp("cfg"), "tiny_mp.py", CONFIG)


# mmjax.train with process 1 late to look for checkpoints: process 0 creates the
# directory meanwhile, and both must still take the same path through setup
# (they once entered different collectives and stopped with a sync mismatch).
# Every training process here is started as TRAIN_SMALL_PEAK (python -m
# mmjax.train, its peak matmul rate measured on a small product): no test here
# reads a perf/ metric.
LAGGING_TRAIN = """
import os, time
from mmjax import paths
_isdir = paths.isdir
def isdir(path):
  if os.environ["MMJAX_PROCESS_ID"] == "1" and str(path).endswith("checkpoints"):
    time.sleep(5)
  return _isdir(path)
paths.isdir = isdir
""" + TRAIN_SMALL_PEAK
TRAIN = (sys.executable, "-c", TRAIN_SMALL_PEAK)


# One process x 8 devices on mesh (2, 4, 1): the reference the two-process run
# must match, and the checkpoints the resume test starts from (one run, shared).
RUN = ("--config.total_steps=5", "--config.log_every=1", "--config.checkpoint.keep=5",
       "--config.mesh.data=2", "--config.mesh.fsdp=4")
EIGHT = "--xla_force_host_platform_device_count=8"


@pytest.fixture(scope="module")
def one_process(config_file, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("one_process") / "run")
  out = subprocess.run(
      [*TRAIN, f"--config={config_file}", *RUN, f"--workdir={workdir}"],
      cwd=ROOT, env=_env(XLA_FLAGS=EIGHT), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
  return workdir


def test_two_processes_match_one_process(config_file, one_process, tmp_path):
  multi = str(tmp_path / "multi")
  out = subprocess.run(  # with the end-of-run reports, as by default
      ["bash", "launch/cpu_multiprocess.sh", "2", "4", sys.executable, "-c", LAGGING_TRAIN,
       f"--config={config_file}", *RUN, f"--workdir={multi}", "--config.eval.reports=True"],
      cwd=ROOT, env=_env(MMJAX_LOG_DIR=str(tmp_path / "logs")),
      capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]

  assert [s for s, _ in _losses(multi)] == [s for s, _ in _losses(one_process)] == [1, 2, 3, 4, 5]
  assert [v for _, v in _losses(multi)] == pytest.approx(
      [v for _, v in _losses(one_process)], rel=1e-5)
  with open(os.path.join(multi, "eval.json")) as f, \
       open(os.path.join(one_process, "eval.json")) as g:
    assert json.load(f) == pytest.approx(json.load(g), abs=1e-6)
  # Files are written once, by process 0: one row per logged step, not two.
  with open(os.path.join(multi, "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps.count(4) == 2  # the train row and the eval row of step 4
  # The end-of-run reports (a sharded rank computation every process joins)
  # finished on both processes and were written once.
  for name in ("recall_curves.png", "retrieval_grid.png", "embeddings_pca.png"):
    assert os.path.isfile(os.path.join(multi, name)), name


def test_launcher_fails_when_one_process_fails(tmp_path):
  out = subprocess.run(
      ["bash", "launch/cpu_multiprocess.sh", "2", "1", sys.executable, "-c",
       "import os, sys, time; sys.exit(3) if os.environ['MMJAX_PROCESS_ID'] == '1' "
       "else time.sleep(60)"],
      cwd=ROOT, env=_env(MMJAX_LOG_DIR=str(tmp_path)), capture_output=True, text=True,
      timeout=30)
  assert out.returncode == 3
  assert "process 1 exited with status 3" in out.stderr


def test_mismatched_process_id_is_rejected():
  out = subprocess.run(
      [sys.executable, "-c", "from mmjax.parallel import multihost; multihost.initialize()"],
      cwd=ROOT, capture_output=True, text=True, timeout=60,
      env=_env(MMJAX_COORDINATOR="127.0.0.1:1", MMJAX_NUM_PROCESSES="2",
               MMJAX_PROCESS_ID="2"))
  assert out.returncode != 0
  assert "MMJAX_PROCESS_ID=2 is outside [0, MMJAX_NUM_PROCESSES=2)" in out.stderr


def test_missing_process_fails_with_the_fix(tmp_path):
  # Process 0 of 2, and no process 1: the join must fail within the timeout
  # (not hang) and the log must say what to check. (The shortest timeout: the
  # wait is the test's cost, and nothing is expected to arrive.)
  out = subprocess.run(
      [sys.executable, "-c", "from mmjax.parallel import multihost; multihost.initialize()"],
      cwd=ROOT, capture_output=True, text=True, timeout=60,
      env=_env(MMJAX_COORDINATOR=f"127.0.0.1:{_free_port()}", MMJAX_NUM_PROCESSES="2",
               MMJAX_PROCESS_ID="0", MMJAX_INIT_TIMEOUT="1"))
  assert out.returncode != 0
  assert "not all 2 processes started with MMJAX_COORDINATOR=" in out.stderr
  assert "DEADLINE_EXCEEDED" in out.stderr


def test_checkpoint_resumes_on_another_mesh_and_process_count(config_file, one_process,
                                                              tmp_path):
  """Saved at step 4 on mesh (2, 4, 1), 1 process x 8 devices; step 5 resumed on
  (8, 1, 1) and on 2 processes x 4 devices (past a damaged step 5) gives the
  same loss."""
  # Without the end-of-run evaluation: only the loss of step 5 is compared.
  cmd = [*TRAIN, f"--config={config_file}:no_eval", *RUN[:3]]
  eight = _env(XLA_FLAGS=EIGHT)
  source = one_process
  want = dict(_losses(source))[5]

  def resume(name, launch, env, damage):
    workdir = str(tmp_path / name)
    shutil.copytree(source, workdir)
    damage(os.path.join(workdir, "checkpoints", "5"))
    out = subprocess.run([*launch, *cmd, "--config.mesh.fsdp=1", f"--workdir={workdir}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "Resuming from the checkpoint at step 4" in out.stdout + out.stderr
    return workdir, dict(_losses(workdir))

  _, one = resume("one_process", [], eight, shutil.rmtree)
  # Two processes find step 5 damaged: both fall back to step 4 together, and
  # step 5 is kept aside. (tests/train/test_checkpoint.py covers a step only
  # one process finds damaged.)
  logs = tmp_path / "logs"
  workdir, two = resume("two_processes", ["bash", "launch/cpu_multiprocess.sh", "2", "4"],
                        _env(MMJAX_LOG_DIR=str(logs)), truncate_arrays)
  with open(logs / "process_1.log") as f:
    other = f.read()
  assert "Resuming from the checkpoint at step 4" in other
  assert "checkpoints/5 is damaged" in other
  # checkpoint_every=4: the source saved steps 4 and 5 (the last).
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "5", "5.unreadable"]
  assert sorted(one) == sorted(two) == [1, 2, 3, 4, 5]  # steps 1-4 kept, 5 redone
  assert one[5] == pytest.approx(want, rel=1e-5)
  assert two[5] == pytest.approx(want, rel=1e-5)
