"""End to end on a tiny model: files in the workdir, resume, NaN stop, the CLIs."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import numpy as np
import orbax.checkpoint as ocp

from mmjax.data import pipeline
from mmjax.eval import retrieval
from mmjax.train import checkpoint
from mmjax.train import loop
from mmjax.train import state as state_lib
from mmjax.train import step as step_lib

from tests.train.conftest import tiny_config

# matmul_rate_once: the loop runs four times here.
pytestmark = [pytest.mark.slow,  # runs the training loop end to end
              pytest.mark.usefixtures("matmul_rate_once")]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Six steps with eval and checkpoints at 3 and 6."""
  workdir = str(tmp_path_factory.mktemp("run"))
  result = loop.train_and_evaluate(
      tiny_config(**{"profile.start_step": 2, "profile.num_steps": 2,
                     "eval.reports": True}), workdir)
  return workdir, result


def test_workdir_holds_every_promised_file(trained):
  workdir, result = trained
  traces = [f for _, _, files in os.walk(os.path.join(workdir, "profile")) for f in files]
  assert any(f.endswith(".xplane.pb") for f in traces), traces
  for name in ("metrics.jsonl", "eval.json", "config.json", "curves.png",
               "recall_curves.png", "retrieval_grid.png", "embeddings_pca.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
  assert any(f.startswith("events.out.tfevents")
             for f in os.listdir(os.path.join(workdir, "tensorboard")))
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["batch_size"] == 8


def test_metrics_rows_have_the_contract_keys(trained):
  workdir, _ = trained
  train_rows = [r for r in _rows(workdir) if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [2, 4, 6]
  for r in train_rows:
    assert r["perf/examples_per_sec"] > 0
    assert 0 < r["perf/flops_fraction"] < 1.5  # a fraction of the measured matmul rate
  eval_rows = [r for r in _rows(workdir) if "eval/text_to_image_R@1" in r]
  assert [r["step"] for r in eval_rows] == [3, 6]
  # Every row is on the clock, in the order it was written (time-to-quality curves).
  times = [r["wall_time"] for r in _rows(workdir)]
  assert times == sorted(times) and times[-1] - times[0] < 3600


def test_eval_json_is_the_last_evaluation(trained):
  workdir, result = trained
  with open(os.path.join(workdir, "eval.json")) as f:
    saved = json.load(f)
  assert saved["step"] == 6 == result["step"]
  expected = {f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
  expected |= {f"{d}_{s}_rank" for d in ("image_to_text", "text_to_image")
               for s in ("mean", "median")}
  assert expected <= set(saved)
  for key in expected:
    assert saved[key] == pytest.approx(result[key])


def test_resume_continues_the_same_curve(trained, tmp_path):
  """Resuming from the step-3 checkpoint reproduces steps 4-6 of the uninterrupted run."""
  workdir, result = trained
  resumed = str(tmp_path / "resumed")
  os.makedirs(os.path.join(resumed, "checkpoints"))
  subprocess.run(["cp", "-r", os.path.join(workdir, "checkpoints", "3"),
                  os.path.join(resumed, "checkpoints")], check=True)
  again = loop.train_and_evaluate(tiny_config(), resumed)
  original = {r["step"]: r for r in _rows(workdir) if "train/loss" in r}
  rows = {r["step"]: r for r in _rows(resumed) if "train/loss" in r}
  assert sorted(rows) == [4, 6]  # it started at step 4, not from scratch
  assert rows[6]["train/loss"] == pytest.approx(original[6]["train/loss"], rel=1e-6)
  for key in ("image_to_text_R@1", "text_to_image_R@5", "text_to_image_mean_rank"):
    assert again[key] == pytest.approx(result[key], abs=1e-6)
  assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["3", "6"]


class _PoisonedModel:
  """The real model, whose image embeddings turn NaN for an all-black batch."""

  def __init__(self, model):
    self._model = model

  def apply(self, variables, batch, **kwargs):
    out = self._model.apply(variables, batch, **kwargs)
    black = jnp.all(batch["image"] == 0)
    return {**out, "z/image": jnp.where(black, jnp.nan, out["z/image"])}

  def __getattr__(self, name):
    return getattr(self._model, name)


@pytest.fixture
def black_steps(monkeypatch):
  """Steps whose batch is all black, so loss and gradient are NaN there."""
  steps = set()
  real_step, real_maker = step_lib.make_train_step, pipeline.batch_maker

  def maker(config, tok, rows=None):
    make = real_maker(config, tok, rows)

    def batch(step):  # the loop's step s + 1 consumes the batch of s
      out = make(step)
      if step + 1 in steps:
        out["image"] = np.zeros_like(out["image"])
      return out
    return batch

  monkeypatch.setattr(pipeline, "batch_maker", maker)
  monkeypatch.setattr(step_lib, "make_train_step",
                      lambda model, *a, **k: real_step(_PoisonedModel(model), *a, **k))
  return steps


def _params(workdir, step):
  mngr = checkpoint.manager(workdir, read_only=True)
  return mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"]["params"]


def test_a_transient_nan_step_is_skipped_and_counted(black_steps, tmp_path):
  black_steps.add(5)
  run = str(tmp_path)
  loop.train_and_evaluate(tiny_config(total_steps=6, checkpoint_every=1, log_every=1,
                                      **{"checkpoint.keep": 10}), run)
  rows = {r["step"]: r for r in _rows(run) if "train/loss" in r}
  assert rows[5]["train/skipped"] == 1 and rows[5]["train/loss"] == "nan"
  assert rows[6]["train/skipped"] == 0 and np.isfinite(rows[6]["train/loss"])
  assert rows[6]["train/skipped_total"] == 1
  # The update of step 5 was dropped: its params are those of step 4.
  before, after = _params(run, 4), _params(run, 5)
  jax.tree.map(np.testing.assert_array_equal, before, after)
  # The logged rate is the one applied. The schedule counts applied updates,
  # whose number the optimizer state itself keeps: after step 6 it holds 5
  # (steps 1-4 and 6), so step 6 applied schedule(4), not schedule(5).
  config = tiny_config(total_steps=6)
  schedule = state_lib.schedule(config.optim, config.total_steps)
  counts = {int(c) for c in _counts(_opt_state(run, 6))}
  assert counts == {5}
  np.testing.assert_allclose(rows[6]["train/lr"], schedule(4), rtol=1e-6)
  assert abs(float(schedule(4)) - float(schedule(5))) > 1e-6
  np.testing.assert_allclose(rows[4]["train/lr"], schedule(3), rtol=1e-6)


def _opt_state(workdir, step):
  mngr = checkpoint.manager(workdir, read_only=True)
  return mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"]["opt_state"]


def _counts(tree) -> list:
  """Every optax `count` leaf of an optimizer state."""
  found = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if any(getattr(k, "key", getattr(k, "name", None)) == "count" for k in path):
      found.append(np.asarray(leaf))
  return found


def test_persistent_nan_rolls_back_once_then_stops(black_steps, tmp_path, capsys):
  black_steps.update({8, 9, 10})
  run = str(tmp_path)
  config = tiny_config(total_steps=12, checkpoint_every=3, max_bad_steps=2,
                       eval_every=0)
  with pytest.raises(loop.NonFiniteLossError,
                     match=r"2 consecutive steps up to step 9 .* after rolling back to "
                           r"step 6, it happened again"):
    loop.train_and_evaluate(config, run)
  assert "rolled back to the checkpoint of step 6" in capsys.readouterr().out
  # Nothing non-finite was saved: steps 3 and 6 only, both intact.
  assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["3", "6"]
  # Step 8 was logged, rolled back over and run again: one row, not two.
  steps = [r["step"] for r in _rows(run) if "train/loss" in r]
  assert steps == [2, 4, 6, 8]


def test_evaluate_cli_reads_the_latest_checkpoint(trained, tmp_path):
  workdir, result = trained
  config_file = tmp_path / "tiny.py"
  config_file.write_text(
      "from tests.train.conftest import tiny_config\n"
      "def get_config():\n  return tiny_config()\n")
  export = str(tmp_path / "emb.npz")
  out = subprocess.run(
      [sys.executable, "-m", "mmjax.evaluate", f"--config={config_file}", f"--workdir={workdir}",
       f"--export={export}"],
      cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
  assert out.returncode == 0, out.stderr
  assert "checkpoint step 6" in out.stdout
  # The exported embeddings reproduce the printed metrics.
  emb = np.load(export)
  assert emb["image_emb"].shape == (20, 8) and len(emb["captions"]) == len(emb["text_emb"])
  assert list(emb["image_ids"][:2]) == ["shapes_test_0", "shapes_test_1"]
  again = retrieval.retrieval_metrics(emb["image_emb"], emb["text_emb"], emb["text_to_image"])
  assert again["text_to_image_R@1"] == pytest.approx(result["text_to_image_R@1"], abs=1e-6)
  for name in ("recall_curves.png", "retrieval_grid.png", "embeddings_pca.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  assert retrieval.format_table(result).splitlines()[0] in out.stdout


def test_train_cli_rejects_a_mistyped_key_before_compiling(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "mmjax.train", f"--workdir={tmp_path}", "--config.batch_sise=8"],
      cwd=ROOT, capture_output=True, text=True)
  assert out.returncode != 0
  assert "config.batch_sise" in out.stderr
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))
