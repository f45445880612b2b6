"""Tests for mmjax/train/checkpoint.py and faults.py on small pytrees (no model)."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import configs
from mmjax.train import checkpoint
from mmjax.train import faults

from tests.train.conftest import tiny_config


def _state(value: float, width: int = 3):
  return {"params": {"w": jnp.full((4, width), value), "b": jnp.zeros(width)},
          "step": jnp.int32(value)}


def _abstract(width: int = 3):
  return jax.eval_shape(lambda: _state(0.0, width))


def _save_steps(workdir, steps, **kwargs):
  mngr = checkpoint.manager(workdir, **kwargs)
  for s in steps:
    checkpoint.save(mngr, s, _state(float(s)), {"next_step": s}, {"seed": 0})
  checkpoint.wait(mngr)
  return mngr


def test_keeps_the_last_k_and_the_milestones(tmp_path):
  mngr = _save_steps(str(tmp_path), range(1, 10), keep=2, keep_every=4)
  assert mngr.all_steps() == [4, 8, 9]
  restored = checkpoint.restore_latest(mngr, _abstract())
  assert restored.step == 9 and restored.data == {"next_step": 9}
  assert restored.config == {"seed": 0}
  np.testing.assert_array_equal(restored.state["params"]["w"], np.full((4, 3), 9.0))


def _damage(step_dir):
  # Truncate every data file of the state item: metadata may still read, the
  # arrays cannot.
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    for name in files:
      if "METADATA" not in name.upper():
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(0)


@pytest.mark.parametrize("damage", ["truncated", "metadata_deleted", "state_missing"])
def test_unreadable_latest_is_skipped_with_a_warning(tmp_path, capsys, damage):
  mngr = _save_steps(str(tmp_path), [2, 4], keep=3)
  latest = os.path.join(mngr.directory, "4")
  if damage == "truncated":
    _damage(latest)
  elif damage == "metadata_deleted":
    os.remove(os.path.join(latest, "state", "_METADATA"))
  else:
    shutil.rmtree(os.path.join(latest, "state"))
  mngr = checkpoint.manager(str(tmp_path), keep=3)
  restored = checkpoint.restore_latest(mngr, _abstract())
  assert restored.step == 2
  np.testing.assert_array_equal(restored.state["params"]["w"], np.full((4, 3), 2.0))
  err = capsys.readouterr().err
  assert f"checkpoint {latest} cannot be read" in err and "trying the one before" in err
  # Set aside (not deleted), so step 4 can be saved again.
  assert checkpoint.set_aside(mngr, 2) == [latest + ".unreadable"]
  mngr.reload()
  assert mngr.all_steps() == [2]


def test_incompatible_model_names_paths_and_shapes(tmp_path):
  mngr = _save_steps(str(tmp_path), [1])
  with pytest.raises(checkpoint.IncompatibleCheckpointError) as err:
    checkpoint.restore_latest(mngr, _abstract(width=5))
  message = str(err.value)
  assert "params/w: checkpoint (4, 3) vs model (4, 5)" in message
  assert "params/b: checkpoint (3,) vs model (5,)" in message
  assert "2 mismatched parameter paths" in message and "fresh --workdir" in message


def test_no_checkpoint_restores_none(tmp_path):
  assert checkpoint.restore_latest(checkpoint.manager(str(tmp_path)), _abstract()) is None


def test_config_diff_ignores_run_time_settings():
  saved = tiny_config().to_dict()
  changed = tiny_config(**{"log_every": 7, "eval.num_images": 10, "mesh.data": 2,
                           "checkpoint.keep": 5, "data.num_workers": 3})
  assert configs.diff(saved, changed.to_dict()) == []
  changed = tiny_config(**{"optim.lr": 0.5, "total_steps": 99})
  assert configs.diff(saved, changed.to_dict()) == [
      "  optim.lr: 0.001 -> 0.5", "  total_steps: 6 -> 99"]


def test_config_diff_ignores_keys_added_later_at_their_default():
  saved = tiny_config().to_dict()
  del saved["distill"]  # a run from before the key existed
  saved["optim"].pop("freeze")
  assert configs.diff(saved, tiny_config().to_dict()) == []
  # Added later but set to something else: a real change.
  assert configs.diff(saved, tiny_config(**{"distill.temperature": 0.5}).to_dict()) == [
      "  distill.temperature: (absent) -> 0.5"]


def test_changed_config_is_refused_with_a_diff_unless_allowed(capsys):
  saved = tiny_config().to_dict()
  with pytest.raises(faults.ConfigChangedError) as err:
    faults.check_resume_config(saved, tiny_config(**{"model.embed_dim": 16}), "runs/x")
  assert "model.embed_dim: 8 -> 16" in str(err.value)
  assert "--config.resume.allow_changes=True" in str(err.value)
  faults.check_resume_config(
      saved, tiny_config(**{"model.embed_dim": 16, "resume.allow_changes": True}), "runs/x")
  assert "model.embed_dim: 8 -> 16" in capsys.readouterr().out


def test_full_disk_fails_at_start(tmp_path, monkeypatch):
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=2**30))
  faults.check_free_space(str(tmp_path), 2**28, keep=2)  # 3 x 256 MiB fit in 1 GiB
  with pytest.raises(OSError, match=r"1.00 GiB free, but 3 checkpoints of 0.50 GiB need "
                                    r"1.50 GiB.*checkpoint.keep"):
    faults.check_free_space(str(tmp_path), 2**29, keep=2)


def test_unwritable_workdir_fails_at_start(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(OSError, match="cannot write to workdir"):
    faults.check_workdir(str(blocker / "run"))
