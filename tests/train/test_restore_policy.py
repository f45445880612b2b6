"""A resumed run never loses a good checkpoint, its curve, or its vocabulary
(mmjax/train/checkpoint.py's restore policy, pins.py, setup._resume), on the
tiny model end to end."""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mmjax.data import tokenizer as tokenizer_lib
from mmjax.train import checkpoint
from mmjax.train import loop
from mmjax.train import pins

from tests.train.conftest import tiny_config, tree_bytes, truncate_arrays

pytestmark = pytest.mark.slow  # trains the tiny model several times


def _config():
  c = tiny_config(eval_every=0)
  c.checkpoint.keep = 2
  return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished six-step run with checkpoints 3 and 6."""
  workdir = str(tmp_path_factory.mktemp("finished"))
  loop.train_and_evaluate(_config(), workdir)
  return workdir


def _copy(src, tmp_path) -> str:
  dst = str(tmp_path / "run")
  shutil.copytree(src, dst)
  return dst


def _params(workdir, step):
  mngr = checkpoint.manager(workdir, read_only=True)
  return mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"]["params"]


def _steps(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [r["step"] for r in rows if "train/loss" in r]


def test_a_truncated_newest_checkpoint_resumes_from_the_one_before(finished, tmp_path,
                                                                   capsys):
  run = _copy(finished, tmp_path)
  damaged = os.path.join(run, "checkpoints", "6")
  truncate_arrays(damaged)
  damaged_bytes = tree_bytes(damaged)
  loop.train_and_evaluate(_config(), run)
  out = capsys.readouterr()
  assert "checkpoints/6 is damaged" in out.err
  assert "Resuming from the checkpoint at step 3" in out.out
  # Steps 4-6 ran again from step 3 and gave the same params bit for bit.
  jax.tree.map(np.testing.assert_array_equal, _params(run, 6), _params(finished, 6))
  # The damaged step is kept aside, byte for byte, for inspection.
  assert tree_bytes(damaged + ".unreadable") == damaged_bytes
  assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["3", "6", "6.unreadable"]
  assert _steps(run) == [2, 4, 6]


def test_every_checkpoint_damaged_stops_and_changes_nothing(finished, tmp_path):
  run = _copy(finished, tmp_path)
  for step in ("3", "6"):
    truncate_arrays(os.path.join(run, "checkpoints", step))
  before = tree_bytes(run)
  with pytest.raises(checkpoint.NoReadableCheckpointError) as err:
    loop.train_and_evaluate(_config(), run)
  assert "checkpoints/6:" in str(err.value) and "checkpoints/3:" in str(err.value)
  assert tree_bytes(run) == before  # checkpoints and metrics.jsonl untouched


def test_a_restore_failing_for_another_reason_stops_and_moves_nothing(finished, tmp_path,
                                                                     monkeypatch):
  run = _copy(finished, tmp_path)
  before = tree_bytes(run)

  def injected(*args, **kwargs):
    raise RuntimeError("injected: tensorstore cannot open the array (version?)")

  monkeypatch.setattr(checkpoint, "_state_tree", injected)
  with pytest.raises(checkpoint.CheckpointReadError, match="injected: tensorstore"):
    loop.train_and_evaluate(_config(), run)
  assert tree_bytes(run) == before


def test_a_resume_with_another_tokenizer_is_refused(finished, tmp_path):
  run = _copy(finished, tmp_path)
  # As a re-prepared dataset would: a tokenizer of the same name and size but
  # trained on other text, so the same ids would mean other words.
  path = os.path.join(run, "tokenizer", "shapes_sp256.model")
  tokenizer_lib.train_sentencepiece(
      [f"word{i} other{i % 7} thing{i % 13}" for i in range(3000)], path, 256,
      model_type="bpe")
  before = tree_bytes(os.path.join(run, "checkpoints"))
  with pytest.raises(pins.PinError, match="every token id would mean another word"):
    loop.train_and_evaluate(_config(), run)
  assert tree_bytes(os.path.join(run, "checkpoints")) == before


def test_a_finished_run_rerun_evaluates_its_last_checkpoint_again(finished, tmp_path):
  run = _copy(finished, tmp_path)
  result = loop.train_and_evaluate(_config(), run)
  assert result["step"] == 6
  with open(os.path.join(run, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  evals = [r for r in rows if "eval/text_to_image_R@1" in r]
  assert [r["step"] for r in evals] == [6, 6]  # the first run's, and this one's
  assert evals[1]["eval/text_to_image_R@1"] == evals[0]["eval/text_to_image_R@1"]
