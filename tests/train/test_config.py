"""Bad configs fail before compilation with a message naming the key and the fix."""

import pytest

from mmjax import configs
from mmjax.train import build

from tests.train.conftest import tiny_config


@pytest.mark.parametrize("key,value,match", [
    ("batch_size", 0, r"config.batch_size=0 must be a positive integer"),
    ("batch_size", -8, r"--config.batch_size=N"),
    ("log_every", 0, r"config.log_every=0"),
    ("model.temperature_init", 0.0, r"config.model.temperature_init=0.0 must be a positive"),
    ("model.temperature_init", -1.0, r"multiplier, not a log"),
    ("model.temperature_init", 500.0, r"exceeds config.model.max_temperature"),
    ("optim.lr", float("nan"), r"config.optim.lr"),
    ("eval.num_images", 5000, r"at most 1000"),
    ("dtype", "float16", r"config.dtype='float16'"),
    ("eval_every", -1, r"config.eval_every"),
])
def test_bad_values_name_the_key(key, value, match):
  with pytest.raises(configs.ConfigError, match=match):
    build.check(tiny_config(**{key: value}))


def test_unknown_loss_lists_the_known_ones():
  with pytest.raises(ValueError, match=r"sigmoid_contrastive") as info:
    build.check(tiny_config(**{"loss.name": "sigmoid_contrastiv"}))
  assert "register" in str(info.value)


def test_loss_needing_a_teacher_fails_before_compiling():
  with pytest.raises(ValueError, match=r"reads 'teacher_logits', which needs a teacher: "
                                       r"set config.distill.teacher"):
    build.check(tiny_config(**{"loss.name": "kl_alignment"}))


def test_missing_key_is_named():
  config = tiny_config()
  with config.unlocked():
    del config.mesh["fsdp"]
  with pytest.raises(configs.ConfigError, match=r"config has no key 'mesh.fsdp'"):
    build.check(config)


def test_unknown_dataset_is_named():
  with pytest.raises(ValueError, match=r"config.data.name='coco'"):
    build.check(tiny_config(**{"data.name": "coco"}))


# Experiments whose config is a workdir's (`--config FILE.py:DIR`): a released
# model's (tests/hub/test_released_runs.py) or a trained audio run's
# (tests/train/test_audio_text.py).
FROM_A_WORKDIR = ("released_eval", "released_finetune", "esc50_zeroshot")


def test_experiment_files_are_valid():
  import importlib.util
  import pathlib
  root = pathlib.Path(__file__).resolve().parents[2] / "experiments"
  found = sorted(root.glob("*.py"))
  assert len(found) >= 6
  for path in found:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if path.stem in FROM_A_WORKDIR:  # tested with a workdir where named above
      with pytest.raises(ValueError, match="workdir after the config file"):
        module.get_config()
      continue
    config = module.get_config()
    if config.data.name == "shapes":
      build.check(config)
    else:  # needs prepared data: check everything but the files
      configs.validate(config)
      with pytest.raises((ValueError, FileNotFoundError), match="data"):
        build.check(config)


def test_an_experiment_built_on_another_follows_its_changes():
  """shapes_lit must keep shapes_siglip's image tower (its checkpoint is the
  source); it reads that file rather than repeating its model."""
  from mmjax import experiment_files
  siglip, lit = experiment_files.config("shapes_siglip"), experiment_files.config("shapes_lit")
  assert lit.model.towers.image.to_dict() == siglip.model.towers.image.to_dict()
  assert lit.optim.lr == siglip.optim.lr and lit.optim.freeze == ("image_tower/.*", "image_proj/.*")
  with pytest.raises(FileNotFoundError, match="shapes_siglip"):
    experiment_files.config("shapes_sigilp")


def test_evaluation_may_choose_another_dataset_but_not_another_model():
  """mmjax.evaluate scores a checkpoint on any prepared dataset (a released
  model on COCO), but refuses a change to what the model computes."""
  from mmjax.train import faults
  saved = tiny_config().to_dict()
  other_data = tiny_config(**{"data.name": "coco", "data.data_dir": "/data/tfds",
                              "data.eval_split": "val"})
  faults.check_eval_config(saved, other_data, "runs/x")  # no error
  for key, value in (("data.image_size", 32), ("data.context_length", 12),
                     ("model.towers.text.pool", "mean")):
    with pytest.raises(faults.ConfigChangedError, match=key):
      faults.check_eval_config(saved, tiny_config(**{key: value}), "runs/x")
