"""mmjax.hub.open_clip and mmjax.hub.torch_files against open_clip (PyTorch).

The fixtures in data/open_clip/ were written by references/make_open_clip.py
(tiny random open_clip models, their state dicts and outputs); the bench tests
build the references in-process, at real size, when torch and open_clip are
installed.
"""

import copy
import json
import os
import pathlib
import pickle
import shutil
import zipfile

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from mmjax.hub import mapping
from mmjax.hub import open_clip
from mmjax.hub import torch_files
from mmjax.models.multi_tower import MultiTower

DATA = pathlib.Path(__file__).parent / "data" / "open_clip"
MODELS = {"clip_quickgelu": "pt", "clip_gelu": "pt", "siglip": "safetensors"}
# The brief's bar, and a tight one: the same float32 maths gives ~3e-7 here;
# 1e-5 leaves room for other BLAS kernels and still tells exact GELU from tanh
# GELU (~5e-5 apart on these fixtures: test_wrong_activation_is_seen).
MIN_COS, MAX_DIFF, TIGHT = 0.99999, 2e-4, 1e-5


def _read(name: str, fmt: str | None = None, **kwargs):
  return open_clip.read(DATA / f"{name}.{fmt or MODELS[name]}", model_name=name,
                        model_config=DATA / f"{name}.json", **kwargs)


def _embed(imported, model: dict | None = None) -> dict:
  """mmjax's z_image, z_text and logits on the reference inputs."""
  ref = np.load(DATA / f"{imported.source.split(':')[1]}_ref.npz")
  m = MultiTower(**(model or imported.model))

  @jax.jit  # one program for both towers: compiling is most of this file's time
  def embed(params, images, texts):
    z_image = m.apply({"params": params}, images, method=m.encode_image)
    z_text = m.apply({"params": params}, texts, method=m.encode_text)
    return z_image, z_text

  z_image, z_text = map(np.asarray, embed(imported.params, ref["images"], ref["texts"]))
  logits = imported.logit_scale * z_image @ z_text.T + imported.logit_bias
  return {"z_image": z_image, "z_text": z_text, "logits": logits}


@pytest.fixture(scope="module")
def imported():
  return {name: _read(name) for name in MODELS}


@pytest.fixture(scope="module")
def outputs(imported):
  return {name: _embed(imp) for name, imp in imported.items()}


def agreement(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
  """(largest 1 - cosine over rows, largest |difference|)."""
  cos = (ours * theirs).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(theirs, axis=-1)
  return float(1 - cos.min()), float(np.abs(ours - theirs).max())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_agrees_with_open_clip(outputs, name):
  ref = np.load(DATA / f"{name}_ref.npz")
  for key in ("z_image", "z_text", "logits"):
    deficit, diff = agreement(outputs[name][key], ref[key])
    assert deficit <= 1 - MIN_COS and diff <= MAX_DIFF, (key, deficit, diff)
    assert diff <= TIGHT * (10 if key == "logits" else 1), (key, diff)  # logits: scale ~7


def test_wrong_activation_is_seen(imported):
  """The fixtures tell the GELU forms apart, so the agreement test would fail
  if a tower ran the other one (the SigLIP trunk runs exact GELU, its text
  tower tanh GELU)."""
  siglip = imported["siglip"]
  assert siglip.model["towers"]["image"]["act"] == "gelu"
  assert siglip.model["towers"]["text"]["act"] == "gelu_tanh"
  ref = np.load(DATA / "siglip_ref.npz")
  swapped = copy.deepcopy(siglip.model)
  swapped["towers"]["image"]["act"], swapped["towers"]["text"]["act"] = "gelu_tanh", "gelu"
  wrong = _embed(siglip, swapped)
  for key in ("z_image", "z_text"):
    assert agreement(wrong[key], ref[key])[1] > 2 * TIGHT, key


def test_model_kwargs(imported):
  q, g, s = imported["clip_quickgelu"], imported["clip_gelu"], imported["siglip"]
  assert (q.family, g.family, s.family) == ("clip", "clip", "siglip")
  assert {t["act"] for t in q.model["towers"].values()} == {"quick_gelu"}
  assert {t["act"] for t in g.model["towers"].values()} == {"gelu"}
  assert {t["ln_eps"] for t in g.model["towers"].values()} == {1e-5}
  assert {t["ln_eps"] for t in s.model["towers"].values()} == {1e-6}
  text = s.model["towers"]["text"]
  assert (text["causal"], text["pool"], text["proj_bias"]) == (False, "last", True)
  assert q.model["towers"]["text"]["pool"] == "argmax" and q.model["towers"]["text"]["causal"]
  assert q.model["bias_init"] is None and g.logit_bias == pytest.approx(-3.1)
  assert s.logit_scale == pytest.approx(7.3, rel=1e-6) and s.logit_bias == pytest.approx(-3.1)
  assert q.image_size == 32 and s.image_size == 32


def test_recipes(imported):
  from mmjax.data import released_images  # pylint: disable=g-import-not-at-top
  from mmjax.data import released_text  # pylint: disable=g-import-not-at-top
  clip, siglip = imported["clip_quickgelu"], imported["siglip"]
  assert clip.text == dict(released_text.preset("clip", file=None, length=12))
  assert clip.image == dict(released_images.preset("clip", 32))
  assert siglip.text == dict(released_text.preset("open_clip_siglip", file=None, length=12))
  assert (siglip.text["pad_id"], siglip.text["eos_id"]) == (1, 1)  # open_clip's T5 vocabularies
  assert siglip.image == dict(released_images.preset("open_clip_siglip", 32))


def test_three_formats_hold_the_same_tensors():
  pt = torch_files.load_state_dict(DATA / "clip_quickgelu.pt")
  for fmt in ("bin", "safetensors"):  # .bin: {"state_dict": {"module." + name: ...}, "epoch"}
    other = torch_files.load_state_dict(DATA / f"clip_quickgelu.{fmt}")
    assert sorted(other) == sorted(pt)
    for key, value in pt.items():
      assert other[key].dtype == value.dtype and np.array_equal(other[key], value), (fmt, key)


def test_torch_layouts():
  """dtypes (bfloat16 -> float32), storage offsets and strides, 0-d and empty tensors."""
  got = torch_files.load_state_dict(DATA / "layouts.pt")
  ref = np.load(DATA / "layouts_ref.npz")
  assert sorted(got) == sorted(ref.files)
  for key in ref.files:
    assert got[key].dtype == ref[key].dtype and got[key].shape == ref[key].shape, key
    assert np.array_equal(got[key], ref[key]), key


def _save_variant(tmp_path, change) -> pathlib.Path:
  tensors = dict(torch_files.load_state_dict(DATA / "clip_quickgelu.safetensors"))
  change(tensors)
  path = tmp_path / "variant.safetensors"
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
  return path


def _read_variant(path, model_name="clip_quickgelu"):
  return open_clip.read(path, model_name=model_name, model_config=DATA / "clip_quickgelu.json")


def test_extra_tensor_is_named(tmp_path):
  path = _save_variant(tmp_path, lambda t: t.update({"visual.extra.weight": np.zeros(3)}))
  with pytest.raises(mapping.MappingError, match=r"not in open_clip clip_quickgelu(.|\n)*"
                     r"visual\.extra\.weight"):
    _read_variant(path)


def test_missing_tensor_is_named(tmp_path):
  path = _save_variant(tmp_path, lambda t: t.pop("transformer.resblocks.0.mlp.c_fc.bias"))
  with pytest.raises(mapping.MappingError, match=r"missing(.|\n)*resblocks\.0\.mlp\.c_fc\.bias"):
    _read_variant(path)


def test_buffers_are_ignored(tmp_path):
  path = _save_variant(tmp_path, lambda t: t.update({"attn_mask": np.zeros((12, 12))}))
  assert _read_variant(path).family == "clip"


def test_another_models_checkpoint_is_refused():
  # A tiny CLIP read as the real ViT-B-32: every shape is listed as differing.
  with pytest.raises(mapping.MappingError) as error:
    open_clip.read(DATA / "clip_quickgelu.pt", model_name="ViT-B-32")
  assert "missing from the file (264)" in str(error.value)
  assert "ln_final.weight: (32,) in the file, (512,) expected" in str(error.value)
  # The SigLIP layout read with a CLIP config: its tensors are missing / left over.
  with pytest.raises(mapping.MappingError, match=r"missing(.|\n)*visual\.conv1\.weight"):
    open_clip.read(DATA / "siglip.safetensors", model_name="x",
                   model_config=DATA / "clip_quickgelu.json")


def test_unknown_name_lists_known_ones():
  with pytest.raises(ValueError, match=r"unknown open_clip model name 'ViT-Q-99'(.|\n)*"
                                       r"ViT-B-32(.|\n)*model_config="):
    open_clip.read(DATA / "clip_quickgelu.pt", model_name="ViT-Q-99")


def test_a_model_name_is_required():
  with pytest.raises(ValueError, match="model_name="):
    open_clip.read(DATA / "clip_quickgelu.pt")


def test_config_table():
  assert open_clip.find_config("ViT-B/32") == open_clip.find_config("ViT-B-32")
  arch = open_clip.architecture(open_clip.find_config("ViT-L-14-quickgelu"), "ViT-L-14")
  assert (arch["vision"]["act"], arch["text"]["act"]) == ("quick_gelu", "quick_gelu")
  assert (arch["vision"]["num_heads"], arch["vision"]["mlp_dim"]) == (16, 4096)
  arch = open_clip.architecture(open_clip.find_config("ViT-bigG-14"), "ViT-bigG-14")
  assert (arch["vision"]["num_heads"], arch["vision"]["mlp_dim"]) == (16, 8192)
  acts = {name: (a["vision"]["act"], a["text"]["act"]) for name, a in (
      (n, open_clip.architecture(open_clip.find_config(n), n)) for n in (
          "ViT-B-16-SigLIP", "ViT-B-16-SigLIP2", "ViT-SO400M-16-SigLIP2-256"))}
  assert acts == {"ViT-B-16-SigLIP": ("gelu", "gelu"), "ViT-B-16-SigLIP2": ("gelu", "gelu_tanh"),
                  "ViT-SO400M-16-SigLIP2-256": ("gelu_tanh", "gelu_tanh")}
  # 384 px in patches of 14: open_clip's conv sees the top-left 27 * 14 = 378 px.
  arch = open_clip.architecture(open_clip.find_config("ViT-SO400M-14-SigLIP-384"), "")
  assert (arch["image_size"], arch["config_image_size"]) == (378, 384)
  arch = open_clip.architecture(open_clip.find_config("ViT-SO400M-16-SigLIP-i18n-256"), "")
  assert not arch["text"]["proj"]
  # SigLIP 2 through open_clip: Gemma's vocabulary, padded with 0.
  cfg = open_clip.find_config("ViT-B-16-SigLIP2-256")
  arch = open_clip.architecture(cfg, "ViT-B-16-SigLIP2-256")
  family = open_clip.family_of("ViT-B-16-SigLIP2-256", cfg, arch["kind"])
  text, image = open_clip.recipes(family, arch, None)
  assert (family, text["pad_id"], text["eos_id"], text["length"]) == ("siglip2", 0, 1, 64)
  assert image["size"] == 256


def test_unsupported_settings_are_refused():
  cfg = json.loads((DATA / "clip_quickgelu.json").read_text())
  cfg["vision_cfg"]["attentional_pool"] = True
  cfg["text_cfg"]["embed_cls"] = True
  with pytest.raises(ValueError, match=r"attentional_pool=True(.|\n)*embed_cls=True"):
    open_clip.architecture(cfg, "coca-ish")
  cfg = json.loads((DATA / "siglip.json").read_text())
  del cfg["vision_cfg"]["mmjax_timm_trunk"]
  with pytest.raises(ValueError, match=r"vit_mmjax_tiny_siglip_32(.|\n)*mmjax_timm_trunk"):
    open_clip.architecture(cfg, "tiny")


def test_hub_directory(tmp_path):
  """A local open_clip hub directory: checkpoint, open_clip_config.json, vocabulary."""
  shutil.copy(DATA / "siglip.safetensors", tmp_path / "open_clip_model.safetensors")
  config = json.loads((DATA / "siglip.json").read_text())
  (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
  (tmp_path / "spiece.model").write_bytes(b"")  # only its path is recorded
  imp = open_clip.read(tmp_path, model_name="tiny")
  assert imp.text["file"] == str(tmp_path / "spiece.model")
  assert imp.model["towers"]["text"]["act"] == "gelu_tanh"
  with pytest.raises(FileNotFoundError, match="no-such-file"):
    _read("clip_quickgelu", tokenizer=str(tmp_path / "no-such-file"))


class _Exploit:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def _torch_zip(path, payload) -> None:
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
    z.writestr("archive/version", "3\n")


def test_a_pickle_with_other_globals_is_refused(tmp_path):
  marker = tmp_path / "ran"
  _torch_zip(tmp_path / "evil.pt", {"weight": _Exploit(marker)})
  with pytest.raises(torch_files.UnsafePickleError, match=r"posix\.system|os\.system|nt\.system"):
    torch_files.load_state_dict(tmp_path / "evil.pt")
  assert not marker.exists()


def test_other_files_are_explained(tmp_path):
  legacy = tmp_path / "legacy.pt"
  legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"rest")
  with pytest.raises(ValueError, match=r"legacy(.|\n)*torch\.save\(model\.state_dict\(\)"):
    torch_files.load_state_dict(legacy)
  scripted = tmp_path / "scripted.pt"
  with zipfile.ZipFile(scripted, "w") as z:
    z.writestr("m/data.pkl", b"")
    z.writestr("m/constants.pkl", b"")
    z.writestr("m/code/__torch__/m.py", b"")
  with pytest.raises(ValueError, match="TorchScript"):
    torch_files.load_state_dict(scripted)
  _torch_zip(tmp_path / "number.pt", 3)
  with pytest.raises(ValueError, match="not a state dict"):
    torch_files.load_state_dict(tmp_path / "number.pt")
  with pytest.raises(FileNotFoundError):
    torch_files.load_state_dict(tmp_path / "absent.pt")


def test_truncated_storage_is_refused(tmp_path):
  src = zipfile.ZipFile(DATA / "layouts.pt")
  with zipfile.ZipFile(tmp_path / "cut.pt", "w") as dst:
    for info in src.infolist():
      data = src.read(info)
      dst.writestr(info, data[:len(data) // 2] if "/data/" in info.filename else data)
  with pytest.raises(pickle.UnpicklingError, match="truncated"):
    torch_files.load_state_dict(tmp_path / "cut.pt")


# ---- live references (torch, open_clip, timm), at real size ---------------------------

def _live_compare(tmp_path, model_name: str, texts_fn) -> dict:
  torch = pytest.importorskip("torch")
  oc = pytest.importorskip("open_clip")
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = oc.create_model(model_name, pretrained=None).eval()
  size = model.visual.image_size[0] if hasattr(model.visual, "image_size") else 224
  path = tmp_path / "model.safetensors"
  safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                              str(path))
  images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
  texts = texts_fn(model)
  with torch.no_grad():
    ref = {"z_image": model.encode_image(images, normalize=True).numpy(),
           "z_text": model.encode_text(texts, normalize=True).numpy(),
           "logits": model.get_logits(images, texts)[0].numpy()}
  del model
  imp = open_clip.read(path, model_name=model_name)
  m = MultiTower(**imp.model)
  variables = {"params": imp.params}
  z_image = np.asarray(m.apply(variables, images.numpy().transpose(0, 2, 3, 1),
                               method=m.encode_image))
  z_text = np.asarray(m.apply(variables, texts.numpy().astype(np.int32), method=m.encode_text))
  ours = {"z_image": z_image, "z_text": z_text,
          "logits": imp.logit_scale * z_image @ z_text.T + imp.logit_bias}
  result = {}
  for key, value in ref.items():
    deficit, diff = agreement(ours[key], value)
    result[key] = (deficit, diff)
    assert deficit <= 1 - MIN_COS and diff <= MAX_DIFF * (10 if key == "logits" else 1), (
        key, deficit, diff)
  print(model_name, result)
  return result


@pytest.mark.bench
def test_live_vit_b_32(tmp_path):
  def texts(model):
    import torch  # pylint: disable=g-import-not-at-top
    ids = torch.zeros(2, model.context_length, dtype=torch.long)
    ids[0, :5] = torch.tensor([49406, 320, 1929, 539, 49407])
    ids[1, :3] = torch.tensor([49406, 1125, 49407])
    return ids
  _live_compare(tmp_path, "ViT-B-32", texts)


@pytest.mark.bench
def test_live_vit_b_16_siglip(tmp_path):
  def texts(model):
    import torch  # pylint: disable=g-import-not-at-top
    ids = torch.ones(2, model.context_length, dtype=torch.long)
    ids[0, :4] = torch.tensor([262, 266, 1304, 1])
    ids[1, :6] = torch.tensor([8, 3, 9, 2000, 31999, 1])
    return ids
  _live_compare(tmp_path, "ViT-B-16-SigLIP", texts)


@pytest.mark.bench
def test_table_matches_installed_open_clip():
  """CONFIGS are the installed package's JSON configs (the keys that shape the model)."""
  pytest.importorskip("open_clip")
  folder = open_clip._installed_configs()  # pylint: disable=protected-access
  skip = {"timm_model_pretrained", "hf_tokenizer_name", "tokenizer_kwargs"}
  for name, ours in open_clip.CONFIGS.items():
    theirs = json.loads(pathlib.Path(folder, f"{name}.json").read_text())
    def trim(cfg):
      cfg = copy.deepcopy(cfg)
      for part in ("vision_cfg", "text_cfg"):
        cfg[part] = {k: v for k, v in cfg[part].items() if k not in skip}
      return cfg
    t, o = trim(theirs), trim(ours)
    for part in ("vision_cfg", "text_cfg"):  # open_clip's defaults, which the table spells out
      for key, default in (("head_width", 64), ("mlp_ratio", 4.0)):
        if key in o[part]:
          t[part].setdefault(key, default)
    assert o == t, name


@pytest.mark.bench
def test_trunk_table_matches_timm():
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  for name, trunk in open_clip.TIMM_TRUNKS.items():
    with torch.device("meta"):
      m = timm.create_model(name, pretrained=False, num_classes=0, global_pool="map")
    block = m.blocks[0]
    act = block.mlp.act
    got = {"patch_size": m.patch_embed.proj.kernel_size[0], "width": m.embed_dim,
           "depth": len(m.blocks), "num_heads": block.attn.num_heads,
           "mlp_dim": block.mlp.fc1.out_features,
           "act": "gelu_tanh" if type(act).__name__ == "GELUTanh" or
                  getattr(act, "approximate", "none") == "tanh" else "gelu",
           "eps": block.norm1.eps, "class_token": m.cls_token is not None,
           "patch_bias": m.patch_embed.proj.bias is not None}
    want = {**{k: trunk[k] for k in ("patch_size", "width", "depth", "num_heads", "act")},
            "mlp_dim": int(trunk["width"] * trunk["mlp_ratio"]), "eps": 1e-6,
            "class_token": False, "patch_bias": True}
    assert type(act).__name__ in ("GELU", "GELUTanh"), (name, type(act))
    assert got == want, name
