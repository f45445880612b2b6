"""An out-of-tree fork (tests/fork_example/myfork) adds a tower, a loss that
reads a batch field and an evaluator by dotted paths, with no edit to mmjax,
and trains a three-tower model end to end through `python -m mmjax.train`."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from tests.subprocesses import child_env

pytestmark = pytest.mark.slow  # trains the fork in a subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent
FORK = ROOT / "tests" / "fork_example"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("fork")
  # One device (no device-count flag), as a user's first run.
  env = child_env(PYTHONPATH=os.pathsep.join([str(FORK), str(ROOT)]))
  proc = subprocess.run(
      [sys.executable, "-m", "mmjax.train", "--config", str(FORK / "myfork" / "experiment.py"),
       "--workdir", str(workdir)], env=env, capture_output=True, text=True, timeout=600,
      cwd=str(ROOT))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


def test_mmjax_never_imports_the_fork():
  imports = re.compile(r"^\s*(import|from)\s+myfork", re.M)
  assert not [p for p in (ROOT / "mmjax").rglob("*.py") if imports.search(p.read_text())]


def test_the_fork_trains_and_its_loss_falls(run):
  workdir, _ = run
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  train = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
  # The fork's term is logged under its id, and both terms fell.
  for key in ("train/loss", "train/loss/scene", "train/loss/sigmoid_contrastive"):
    assert train[-1][key] < 0.8 * train[0][key], (key, train[0][key], train[-1][key])


def test_every_configured_metric_is_in_eval_json(run):
  workdir, proc = run
  result = json.load(open(workdir / "eval.json"))
  assert result["step"] == 30
  for a, b in (("image", "text"), ("sketch", "text")):
    for k in (1, 5, 10):
      assert 0 <= result[f"{a}_to_{b}_R@{k}"] <= 1
      assert 0 <= result[f"{b}_to_{a}_R@{k}"] <= 1
    for d in (f"{a}_to_{b}", f"{b}_to_{a}"):
      assert result[f"{d}_mean_rank"] >= 1 and result[f"{d}_median_rank"] >= 1
  gap = result["paired_cosine/image_sketch/gap"]
  assert gap == pytest.approx(result["paired_cosine/image_sketch/match"]
                              - result["paired_cosine/image_sketch/mismatch"])
  assert -1 <= result["paired_cosine/image_sketch/mismatch"] <= 1
  assert "sketch <-> text" in proc.stdout
