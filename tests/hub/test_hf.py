"""Tests of mmjax.hub.hf (Hugging Face reader) and mmjax.hub.export_hf.

The fixtures in tests/hub/data/hf/ are tiny random-weight SiglipModel,
Siglip2Model and CLIPModels saved by transformers, with transformers' outputs
on fixed inputs (tests/hub/references/make_hf.py writes them). The tests marked
`bench` build the references in-process and need torch and transformers.
"""

import json
import math
import os
import re
import shutil

import numpy as np
import pytest

from tests import modules

from mmjax.hub import export_hf
from mmjax.hub import hf
from mmjax.hub import mapping

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "hf")
NAMES = ("siglip", "siglip2", "clip", "clip_quickgelu")
FAMILY = {"siglip": "siglip", "siglip2": "siglip2", "clip": "clip", "clip_quickgelu": "clip"}

@pytest.fixture(scope="module")
def imported():
  return {name: hf.read(os.path.join(DATA, name)) for name in NAMES}


def encode(imp, pixels, ids):
  """(image embeddings, text embeddings, logits) of mmjax's model of `imp`."""
  import jax  # pylint: disable=g-import-not-at-top
  from mmjax.models.multi_tower import MultiTower  # pylint: disable=g-import-not-at-top
  model = MultiTower(**imp.model)

  def both(params, pixels, ids):
    return (model.apply({"params": params}, pixels, method=model.encode_image),
            model.apply({"params": params}, ids, method=model.encode_text))

  # One compile per model (op-by-op dispatch costs seconds), at XLA's lowest
  # backend optimisation level: a third of the compile time for these tiny models.
  compiled = jax.jit(both).lower(imp.params, pixels, ids).compile(
      compiler_options={"xla_backend_optimization_level": 0})
  zi, zt = map(np.asarray, compiled(imp.params, pixels, ids))
  return zi, zt, imp.logit_scale * zi @ zt.T + imp.logit_bias


def assert_close(ours, theirs, what):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
  diff = np.abs(ours - theirs).max()
  assert diff <= 2e-4, f"{what}: max|diff| {diff:.3g}"
  if ours.ndim == 2 and what != "logits":
    cos = (ours * theirs).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(theirs, axis=-1)
    assert cos.min() >= 0.99999, f"{what}: cosine {cos.min():.7f}"


def flat_bytes(params):
  return {k: (v.dtype, v.shape, np.asarray(v).tobytes())
          for k, v in mapping.flatten(params).items()}


# ---- agreement with transformers ----------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_matches_transformers(imported, name):
  ref = np.load(os.path.join(DATA, name, "reference.npz"))
  zi, zt, logits = encode(imported[name], ref["pixels"], ref["ids"])
  assert_close(zi, ref["image_embeds"], "image_embeds")
  assert_close(zt, ref["text_embeds"], "text_embeds")
  assert_close(logits, ref["logits_per_image"], "logits")


def test_what_the_reader_says(imported):
  for name, imp in imported.items():
    assert imp.family == FAMILY[name]
    assert imp.image_size == 32 and imp.text["length"] == 16
    assert imp.text["kind"] == ("clip_bpe" if imp.family == "clip" else "sentencepiece")
    assert imp.image["size"] == 32
  assert imported["clip_quickgelu"].model["towers"]["image"]["act"] == "quick_gelu"
  assert imported["clip"].model["towers"]["text"]["act"] == "gelu"
  assert imported["siglip"].model["towers"]["image"]["pool"] == "map"
  assert imported["siglip"].logit_bias == pytest.approx(-2.75)
  assert imported["siglip"].logit_scale == pytest.approx(12.5, rel=1e-6)
  assert imported["clip"].logit_bias == 0.0
  assert any("4x4 patches" in n for n in imported["siglip2"].notes)


def test_tokenizer_file(tmp_path):
  assert hf._tokenizer_file(str(tmp_path), "siglip", None) is None
  (tmp_path / "spiece.model").write_bytes(b"")
  assert hf._tokenizer_file(str(tmp_path), "siglip", None) == str(tmp_path / "spiece.model")
  assert hf._tokenizer_file(str(tmp_path), "siglip", "/mine.model") == "/mine.model"
  (tmp_path / "vocab.json").write_text("{}")
  assert hf._tokenizer_file(str(tmp_path), "clip", None) is None  # merges.txt absent
  (tmp_path / "merges.txt").write_text("")
  assert hf._tokenizer_file(str(tmp_path), "clip", None) == str(tmp_path)


# ---- export ------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_export_round_trip(imported, name, tmp_path):
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  original = imported[name]
  export_hf.export(original, str(tmp_path))
  again = hf.read(str(tmp_path))
  assert flat_bytes(again.params) == flat_bytes(original.params)
  assert again.model == original.model and again.family == original.family
  assert again.image_size == original.image_size
  # The tensors are the fixture's, bit for bit (as float32), under the same names.
  theirs = hf.load_tensors(hf.safetensors_files(os.path.join(DATA, name)))
  ours = load_file(str(tmp_path / "model.safetensors"))
  assert sorted(ours) == sorted(theirs)
  for key, value in theirs.items():
    assert ours[key].shape == value.shape and ours[key].tobytes() == value.tobytes(), key
  # config.json: every value written is transformers' own (dtype aside: we write float32).
  with open(os.path.join(DATA, name, "config.json")) as f:
    before = json.load(f)
  with open(tmp_path / "config.json") as f:
    after = json.load(f)
  for sub in ("text_config", "vision_config"):
    assert after[sub] == {k: before[sub][k] for k in after[sub]}, sub
  assert {k: v for k, v in after.items() if not k.endswith("config") and k != "dtype"} == {
      k: before[k] for k in after if not k.endswith("config") and k != "dtype"}


def test_export_refuses_what_hf_cannot_compute(imported, tmp_path):
  imp = imported["siglip"]
  model = json.loads(json.dumps(imp.model))
  model["towers"]["text"]["pool"] = "eos"
  model["towers"]["image"]["ln_pre"] = True
  other = type(imp)(**{**imp.__dict__, "model": model})
  with pytest.raises(ValueError, match=r"text tower pool: 'eos' here, 'last' in a SiglipModel"):
    export_hf.export(other, str(tmp_path))
  with pytest.raises(ValueError, match="image tower ln_pre"):
    export_hf.export(other, str(tmp_path))
  with pytest.raises(ValueError, match="family 'bert'"):
    export_hf.export(type(imp)(**{**imp.__dict__, "family": "bert"}), str(tmp_path))


# ---- configs -----------------------------------------------------------------------

def copy_fixture(name, tmp_path):
  out = tmp_path / name
  shutil.copytree(os.path.join(DATA, name), out, ignore=shutil.ignore_patterns("*.npz"))
  return out


def edit_config(directory, edit):
  with open(directory / "config.json") as f:
    config = json.load(f)
  edit(config)
  with open(directory / "config.json", "w") as f:
    json.dump(config, f)


def test_config_left_to_defaults(imported, tmp_path):
  """Hub configs often list only what differs from transformers' defaults."""
  directory = copy_fixture("clip", tmp_path)

  def strip(config):
    del config["architectures"]  # model_type alone names the model
    for sub, defaults in (("text_config", hf.DEFAULTS["clip"][0]),
                          ("vision_config", hf.DEFAULTS["clip"][1])):
      config[sub] = {k: v for k, v in config[sub].items() if defaults.get(k, "-") != v}
    del config["vision_config"]["hidden_act"]  # "gelu" here; transformers' default: quick_gelu

  edit_config(directory, strip)
  got = hf.read(str(directory))
  assert got.model["towers"]["image"]["act"] == "quick_gelu"
  assert got.model["towers"]["text"] == imported["clip"].model["towers"]["text"]
  assert flat_bytes(got.params) == flat_bytes(imported["clip"].params)


def test_unsupported_architecture(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(
      {"architectures": ["BertModel"], "model_type": "bert"}))
  with pytest.raises(hf.UnsupportedArchitecture) as err:
    hf.read(str(tmp_path))
  for name in ("BertModel", "SiglipModel", "Siglip2Model", "CLIPModel"):
    assert name in str(err.value)


def test_clip_eos_that_is_not_the_largest_id(tmp_path):
  directory = copy_fixture("clip", tmp_path)
  edit_config(directory, lambda c: c["text_config"].update(eos_token_id=5))
  with pytest.raises(ValueError, match=r"eos_token_id=5 is not the last id .*\(199\)"):
    hf.read(str(directory))
  # The legacy eos id 2 pools at the largest id in transformers too.
  edit_config(directory, lambda c: c["text_config"].update(eos_token_id=2))
  assert hf.read(str(directory)).family == "clip"


def test_unsupported_activation(tmp_path):
  directory = copy_fixture("siglip", tmp_path)
  edit_config(directory, lambda c: c["vision_config"].update(hidden_act="relu"))
  with pytest.raises(ValueError, match=r"vision_config hidden_act='relu'"):
    hf.read(str(directory))


def test_missing_weights_file(tmp_path):
  directory = copy_fixture("clip", tmp_path)
  os.remove(directory / "model.safetensors")
  with pytest.raises(FileNotFoundError, match="no model.safetensors"):
    hf.read(str(directory))


# ---- damaged checkpoints -------------------------------------------------------------

PROJ = "text_projection.weight"


def _remove(t):
  del t[PROJ]


def _extra(t):
  t["text_model.extra.weight"] = np.zeros((2, 2), np.float32)


def _reshape(t):
  t[PROJ] = np.zeros((25, 48), np.float32)


@pytest.mark.parametrize("damage, says", [
    (_remove, [r"missing from the file \(1\)", PROJ]),
    (_extra, [r"in the file but not in a CLIPModel", "text_model.extra.weight"]),
    (_reshape, [r"text_projection.weight: \(25, 48\) in the file, \(24, 48\) expected"]),
])
def test_damaged_checkpoint(tmp_path, damage, says):
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
  directory = copy_fixture("clip", tmp_path)
  tensors = load_file(str(directory / "model.safetensors"))
  damage(tensors)
  save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(mapping.MappingError) as err:
    hf.read(str(directory))
  for pattern in says:
    assert re.search(pattern, str(err.value)), (pattern, str(err.value))


def test_sharded_checkpoint_with_a_shard_missing(tmp_path):
  directory = copy_fixture("siglip", tmp_path)
  os.remove(directory / "model-00002-of-00003.safetensors")
  with pytest.raises(FileNotFoundError, match="model-00002-of-00003"):
    hf.read(str(directory))


# ---- live comparison with transformers (bench) ---------------------------------------

def _make_hf():
  return modules.from_file(os.path.join(HERE, "references", "make_hf.py"))


@pytest.mark.bench
@pytest.mark.parametrize("name", NAMES)
def test_live_against_transformers(name, tmp_path):
  pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  make_hf = _make_hf()
  torch_model, family, _, _ = make_hf.build(name, seed=7)
  pixels, ids = make_hf.inputs(family, torch_model.config.text_config.vocab_size, seed=7)
  ref = make_hf.run(torch_model, family, pixels, ids)
  torch_model.save_pretrained(str(tmp_path / "hf"))
  imp = hf.read(str(tmp_path / "hf"))
  zi, zt, logits = encode(imp, pixels, ids)
  assert_close(zi, ref["image_embeds"], "image_embeds")
  assert_close(zt, ref["text_embeds"], "text_embeds")
  assert_close(logits, ref["logits_per_image"], "logits")
  # transformers loads the export as the same architecture, every tensor used.
  export_hf.export(imp, str(tmp_path / "export"))
  loaded, info = transformers.AutoModel.from_pretrained(
      str(tmp_path / "export"), output_loading_info=True)
  assert type(loaded) is type(torch_model)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  again = make_hf.run(loaded.eval(), family, pixels, ids)
  for key, value in ref.items():
    np.testing.assert_allclose(again[key], value, atol=1e-6, err_msg=key)


@pytest.mark.bench
def test_defaults_are_transformers_defaults():
  transformers = pytest.importorskip("transformers")
  classes = {"siglip": (transformers.SiglipTextConfig, transformers.SiglipVisionConfig, None),
             "siglip2": (transformers.Siglip2TextConfig, transformers.Siglip2VisionConfig, None),
             "clip": (transformers.CLIPTextConfig, transformers.CLIPVisionConfig,
                      transformers.CLIPConfig)}
  for family, configs in classes.items():
    for ours, cls in zip(hf.DEFAULTS[family], configs):
      if cls is None:
        continue
      theirs = cls().to_dict()
      for key, value in ours.items():
        if key == "projection_size":  # None: filled with hidden_size, as transformers does
          assert theirs[key] == theirs["hidden_size"]
          continue
        assert theirs[key] == value, (family, cls.__name__, key, theirs[key], value)


@pytest.mark.bench
def test_live_clip_base_size(tmp_path):
  """A CLIPModel at transformers' default (ViT-B/32, 224 px) sizes."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  model = transformers.CLIPModel(transformers.CLIPConfig()).eval()
  model.save_pretrained(str(tmp_path))
  rng = np.random.default_rng(0)
  pixels = rng.uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
  ids = np.zeros((2, 77), np.int32)
  ids[0, :5] = [49406, 320, 1125, 539, 49407]
  ids[1, :3] = [49406, 2368, 49407]
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids).long(),
                pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()))
  imp = hf.read(str(tmp_path))
  zi, zt, logits = encode(imp, pixels, ids)
  assert_close(zi, out.image_embeds.numpy(), "image_embeds")
  assert_close(zt, out.text_embeds.numpy(), "text_embeds")
  assert_close(logits, out.logits_per_image.numpy(), "logits")
  assert math.isclose(model.logit_scale.exp().item(), imp.logit_scale, rel_tol=1e-6)
