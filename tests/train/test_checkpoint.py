"""Tests for mmjax/train/checkpoint.py and faults.py on small pytrees (no model),
and for runs saved before towers were keyed by modality (the tiny model)."""

import copy
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax import configs
from mmjax.train import build
from mmjax.train import checkpoint
from mmjax.train import faults
from mmjax.train import state as state_lib
from mmjax.train import warm_start

from tests.train.conftest import tiny_config, tree_bytes


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
  assert f"checkpoint {latest} is damaged" in err and "trying the one before" in err
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


@pytest.mark.parametrize("errno, strerror, fix", [
    (30, "Read-only file system", "choose a writable path"),
    (28, "No space left on device", "the disk is full; free space")])
def test_read_only_or_full_disk_fails_at_start_with_the_fix(tmp_path, monkeypatch, errno,
                                                           strerror, fix):
  # Root writes through permission bits, so the OS error is injected at the write.
  from mmjax import paths  # pylint: disable=g-import-not-at-top

  def refuse(path, data):
    raise OSError(errno, strerror)

  monkeypatch.setattr(paths, "write_bytes", refuse)
  with pytest.raises(OSError, match=fix) as err:
    faults.check_workdir(str(tmp_path / "run"))
  assert str(tmp_path / "run") in str(err.value) and "--workdir" in str(err.value)


def test_write_probe_names_are_unique_per_process_and_host():
  from mmjax import paths  # pylint: disable=g-import-not-at-top
  a, b = paths.unique_name(".write_probe"), paths.unique_name(".write_probe")
  assert a != b and str(os.getpid()) in a


def test_is_damage_recognises_missing_truncated_and_undecodable_files():
  import json  # pylint: disable=g-import-not-at-top
  truncated = ValueError('OUT_OF_RANGE: Error reading "w/0": Requested byte range '
                         '[0, 268713) is not valid for value of size 134489')
  wrapped = Exception("Encountered error while reading array index")
  wrapped.__cause__ = truncated
  for error in (wrapped, FileNotFoundError("x"), json.JSONDecodeError("bad", "{", 1),
                ValueError("FAILED_PRECONDITION: Truncated Zstd-compressed stream"),
                ValueError("DATA_LOSS: checksum mismatch")):
    assert checkpoint.is_damage(error), error
  for error in (MemoryError(), RuntimeError("injected"), PermissionError("denied"),
                ValueError("UNAVAILABLE: connection reset"), TypeError("version")):
    assert not checkpoint.is_damage(error), error


def test_a_failure_that_is_not_damage_stops_and_moves_nothing(tmp_path, monkeypatch):
  mngr = _save_steps(str(tmp_path), [2, 4], keep=3)
  before = tree_bytes(tmp_path)
  mngr = checkpoint.manager(str(tmp_path), keep=3)

  def failing_restore(*args, **kwargs):
    raise RuntimeError("injected: host out of memory")

  monkeypatch.setattr(mngr, "restore", failing_restore)
  with pytest.raises(checkpoint.CheckpointReadError) as err:
    checkpoint.restore_latest(mngr, _abstract())
  message = str(err.value)
  assert f"{mngr.directory}/4" in message and "injected: host out of memory" in message
  assert "nothing was skipped, moved or deleted" in message
  assert tree_bytes(tmp_path) == before


def test_a_step_damaged_on_another_process_is_skipped_here_too(tmp_path, monkeypatch,
                                                               capsys):
  # Two processes; this one reads step 4 fine, the other reports damage: the
  # agreed verdict (the worst) makes both restore step 2.
  mngr = _save_steps(str(tmp_path), [2, 4], keep=3)
  others = iter([checkpoint.DAMAGED, checkpoint.OK])  # the other process, step 4 then 2
  monkeypatch.setattr(checkpoint, "_gather_verdicts",
                      lambda mine: np.array([mine, next(others)]))
  restored = checkpoint.restore_latest(mngr, _abstract())
  assert restored.step == 2
  assert f"{mngr.directory}/4 is damaged (damaged on another process)" in \
      capsys.readouterr().err


def test_every_checkpoint_damaged_stops_with_the_list_and_keeps_the_bytes(tmp_path):
  mngr = _save_steps(str(tmp_path), [2, 4], keep=3)
  for step in ("2", "4"):
    _damage(os.path.join(mngr.directory, step))
  before = tree_bytes(tmp_path)
  mngr = checkpoint.manager(str(tmp_path), keep=3)
  with pytest.raises(checkpoint.NoReadableCheckpointError) as err:
    checkpoint.restore_latest(mngr, _abstract())
  message = str(err.value)
  assert f"{mngr.directory}/4:" in message and f"{mngr.directory}/2:" in message
  assert "did not start from scratch" in message
  assert tree_bytes(tmp_path) == before


# A run saved before towers were keyed by modality: the config.json (and
# checkpoint config item) that mmjax wrote for tiny_config() with
# loss.terms = {"mse_alignment": 0.5}. model.image / model.text (the text tower
# without a kind), evaluators as bare periods, loss terms as {name: weight};
# no data.fields, loss.pair, model.towers, model.heads, model.name or
# model.pair_scales.
OLD_CONFIG = {
    "batch_size": 8, "checkpoint": {"keep": 2, "keep_every": 0}, "checkpoint_every": 3,
    "data": {"context_length": 24, "crop_scale": [0.9, 1.0], "data_dir": None,
             "eval_split": "test", "flip": False, "image_size": 16, "name": "shapes",
             "num_workers": 0, "prefetch": 1, "tokenizer": "", "train_split": "train",
             "vocab_size": 256},
    "distill": {"projection_dim": 0, "teacher": "", "temperature": 0.1},
    "dtype": "float32",
    "eval": {"batch_size": 20, "evaluators": {"heldout": None, "itm": None, "retrieval": 0,
                                              "zeroshot": None},
             "num_images": 20, "reports": False},
    "eval_every": 3,
    "init": {"checkpoint": "", "include": [".*"], "pretrained_text": "", "step": -1},
    "log_every": 2,
    "loss": {"impl": "auto", "name": "sigmoid_contrastive", "terms": {"mse_alignment": 0.5},
             "weight": 1.0},
    "max_bad_steps": 5,
    "mesh": {"data": -1, "fsdp": 1, "tensor": 1},
    "model": {"bias_init": -10.0, "embed_dim": 8,
              "image": {"depth": 1, "kind": "vit", "num_heads": 2, "patch_size": 8,
                        "pool": "gap", "width": 16},
              "max_temperature": 100.0, "remat": False, "temperature_init": 10.0,
              "text": {"causal": True, "depth": 1, "num_heads": 2, "pool": "eos",
                       "width": 16}},
    "optim": {"b1": 0.9, "b2": 0.95, "clip_norm": 1.0, "freeze": [], "grad_accum_steps": 1,
              "lr": 0.001, "min_lr_ratio": 0.0, "warmup_steps": 2, "weight_decay": 0.0001},
    "profile": {"num_steps": 5, "start_step": 0},
    "resume": {"allow_changes": False},
    "seed": 0,
    "total_steps": 6,
}
# Parameter paths of such a run: unchanged by the redesign.
OLD_PARAM_PATHS = ("image_tower/encoder/block0/attn/qkv/kernel",
                   "image_tower/encoder/block0/mlp/fc1/kernel", "image_tower/embedding/kernel",
                   "text_tower/token_embedding", "text_tower/encoder/block0/mlp/fc1/kernel",
                   "image_proj/kernel", "text_proj/kernel", "log_scale", "bias")


def _same_run_today():
  """OLD_CONFIG's run as today's config writes it."""
  config = tiny_config()
  config.loss.terms = {"mse_alignment": 0.5}
  return config


def test_an_old_format_config_is_the_same_run_after_upgrade():
  old = copy.deepcopy(OLD_CONFIG)
  today = _same_run_today()
  assert configs.diff(old, today.to_dict()) == []
  assert old == OLD_CONFIG  # upgrade works on a copy
  upgraded = configs.upgrade(old)
  assert "image" not in upgraded["model"] and "text" not in upgraded["model"]
  assert upgraded["model"]["towers"] == {
      "image": {"kind": "vit", "depth": 1, "num_heads": 2, "patch_size": 8, "pool": "gap",
                "width": 16},
      "text": {"kind": "transformer", "causal": True, "depth": 1, "num_heads": 2,
               "pool": "eos", "width": 16}}
  # Evaluators are run-time settings (not diffed), so compare them directly;
  # those added to mmjax since are off in today's config.
  today_eval = today.to_dict()["eval"]
  added = set(today_eval["evaluators"]) - set(upgraded["eval"]["evaluators"])
  assert all(today_eval["evaluators"][e]["every"] is None for e in added)
  for e in added:
    del today_eval["evaluators"][e]
  assert configs.flatten(upgraded["eval"]) == configs.flatten(today_eval)
  # Every other key is today's, or absent where today's is the base() default.
  now, then = configs.flatten(today.to_dict()), configs.flatten(upgraded)
  defaults = configs.flatten(configs.base().to_dict())
  for key in now.keys() | then.keys():
    if key in then:
      assert then[key] == now.get(key), key
    else:
      assert key in defaults and now[key] == defaults[key], key
  # The comparison can fail: a changed tower, or a term given another weight.
  wider = _same_run_today()
  wider.model.towers.text.width = 32
  assert configs.diff(old, wider.to_dict()) == ["  model.towers.text.width: 16 -> 32"]
  heavier = _same_run_today()
  heavier.loss.terms = {"mse_alignment": 1.0}
  assert configs.diff(old, heavier.to_dict()) == ["  loss.terms.mse_alignment: 0.5 -> 1.0"]
  # The upgraded config checks and builds the loss of today's.
  assert (build.check(ml_collections.ConfigDict(upgraded))
          == build.check(today))


def test_a_checkpoint_of_an_old_format_run_restores(tmp_path, capsys):
  """A state saved (with its config item) by the old run's model restores into
  today's layout of the same run, bitwise, and resuming accepts its config."""
  old_run = ml_collections.ConfigDict(configs.upgrade(OLD_CONFIG))
  model = build.model(old_run, vocab_size=256, pad_id=0)
  tx, _ = state_lib.optimizer(old_run)
  state = build.init_state(old_run, model, tx)
  names = warm_start.named_leaves(state.params)
  assert set(OLD_PARAM_PATHS) <= set(names)
  assert sorted({n.split("/")[0] for n in names}) == [
      "bias", "image_proj", "image_tower", "log_scale", "text_proj", "text_tower"]
  mngr = checkpoint.manager(str(tmp_path))
  checkpoint.save(mngr, 3, state, {"next_step": 3}, OLD_CONFIG)
  checkpoint.wait(mngr)

  today = _same_run_today()
  new_model = build.model(today, vocab_size=256, pad_id=0)
  new_tx, _ = state_lib.optimizer(today)
  abstract = build.abstract_state(today, new_model, new_tx)
  restored = checkpoint.restore_latest(checkpoint.manager(str(tmp_path)), abstract)
  assert restored.step == 3 and restored.data == {"next_step": 3}
  assert restored.config == OLD_CONFIG
  assert jax.tree.structure(restored.state) == jax.tree.structure(state)
  assert list(warm_start.named_leaves(restored.state.params)) == list(names)
  jax.tree.map(np.testing.assert_array_equal, restored.state, state)
  faults.check_resume_config(restored.config, today, str(tmp_path))  # no ConfigChangedError
  assert capsys.readouterr().out == ""  # and no "changed config" notice
