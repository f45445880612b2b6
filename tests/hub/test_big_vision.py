"""mmjax/hub/big_vision.py: big_vision SigLIP .npz files read, computed and written back.

The fixtures in tests/hub/data/big_vision/ come from a tiny random-weight
transformers SiglipModel (tests/hub/references/make_big_vision.py); the live
test at the end (-m bench) rebuilds such references in-process, also at B/16 size.
"""

import json
import os

import jax
import numpy as np
import pytest

from tests import modules

from mmjax.hub import big_vision
from mmjax.hub import families
from mmjax.hub import mapping
from mmjax.hub.imported import Imported
from mmjax.models.multi_tower import MultiTower

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "big_vision")
# big_vision's "mu/8" with 2 layers and a narrower MLP, as the generator builds it.
TINY = {"variant": "mu/8", "depth": 2, "mlp_dim": 64}
LAYOUTS = ("per_layer", "scanned", "bf16")
MIN_COS, MAX_DIFF = 0.99999, 2e-4


@pytest.fixture(scope="module")
def ref():
  with np.load(os.path.join(DATA, "reference.npz")) as npz:
    return dict(npz)


@pytest.fixture(scope="module")
def imported():
  """Every fixture file read once, by name."""
  return {name: big_vision.read(os.path.join(DATA, f"{name}.npz"), variant=TINY)
          for name in (*LAYOUTS, "img_head")}


_ENCODERS = {}


def embed(imp, pixels, tokens):
  """(image [B, D], text [N, D], logits [B, N]) of an Imported, from its params;
  one compiled function per model config."""
  key = json.dumps(imp.model, sort_keys=True, default=str)
  if key not in _ENCODERS:
    model = MultiTower(**imp.model)

    def both(params, x, t):
      variables = {"params": params}
      return (model.apply(variables, x, method=model.encode_image),
              model.apply(variables, t, method=model.encode_text))

    _ENCODERS[key] = jax.jit(both)
  zimg, ztxt = (np.asarray(z) for z in _ENCODERS[key](imp.params, pixels, tokens))
  logits = zimg @ ztxt.T * np.exp(imp.params["log_scale"]) + imp.params["bias"]
  return zimg, ztxt, logits


def agreement(ours, theirs):
  """(1 - the smallest row cosine, max |difference|)."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  cos = (ours * theirs).sum(-1) / (np.linalg.norm(ours, axis=-1) *
                                   np.linalg.norm(theirs, axis=-1))
  return 1 - cos.min(), np.abs(ours - theirs).max()


def assert_agrees(ours, theirs, what):
  deficit, diff = agreement(ours, theirs)
  assert deficit <= 1 - MIN_COS and diff <= MAX_DIFF, (what, deficit, diff)


def flat(params):
  return mapping.flatten(params)


def assert_same_params(a, b):
  fa, fb = flat(a), flat(b)
  assert sorted(fa) == sorted(fb)
  for name in fa:
    np.testing.assert_array_equal(fa[name], fb[name], err_msg=name)


# ---- agreement with the reference ----------------------------------------------------

@pytest.mark.parametrize("name,suffix", [*((n, "") for n in LAYOUTS), ("img_head", "_img_head")])
def test_agrees_with_transformers_siglip(imported, ref, name, suffix):
  zimg, ztxt, logits = embed(imported[name], ref["pixels"], ref["tokens"])
  assert_agrees(zimg, ref[f"image_embeds{suffix}"], f"{name} image")
  assert_agrees(ztxt, ref[f"text_embeds{suffix}"], f"{name} text")
  assert_agrees(logits, ref[f"logits_per_image{suffix}"], f"{name} logits")
  assert imported[name].logit_scale == pytest.approx(np.exp(imported[name].params["log_scale"]))
  assert imported[name].logit_bias == pytest.approx(-6.3, abs=0.05)


def test_layouts_and_dtypes_give_the_same_params(imported):
  # bf16.npz holds the same (bfloat16-exact) values as void 'V2' records.
  for name in LAYOUTS[1:]:
    assert_same_params(imported[name].params, imported["per_layer"].params)
    assert imported[name].model == imported["per_layer"].model


def test_the_heads_and_pool_are_read_from_the_tensors(imported):
  towers = imported["per_layer"].model["towers"]
  assert (towers["image"]["pool"], towers["image"]["proj"], towers["text"]["proj"]) == (
      "map", False, True)
  assert "image_proj" not in imported["per_layer"].params
  towers = imported["img_head"].model["towers"]
  assert (towers["image"]["proj"], towers["text"]["proj"]) == (True, False)
  assert imported["img_head"].model["embed_dim"] == 32
  assert imported["per_layer"].image_size == 32


def test_recipes_and_family(imported, tmp_path):
  imp = imported["per_layer"]
  assert imp.family == "siglip"
  assert imp.text["length"] == 16 and imp.text["file"] is None
  assert imp.image["size"] == 32
  spm = str(tmp_path / "spiece.model")
  imp = big_vision.read(os.path.join(DATA, "per_layer.npz"), variant=TINY, tokenizer=spm)
  assert imp.text["file"] == spm


def test_a_gemma_vocabulary_means_siglip2():
  tensors = _arrays("scanned")
  tensors["txt/Embed_0/embedding"] = np.zeros((big_vision.GEMMA_VOCAB, 32), np.float32)
  imp = big_vision.from_arrays(tensors, variant=TINY)
  assert imp.family == "siglip2"
  assert imp.model["towers"]["text"]["vocab_size"] == big_vision.GEMMA_VOCAB


# ---- writing: both directions ----------------------------------------------------------

def _arrays(name):
  with np.load(os.path.join(DATA, f"{name}.npz")) as npz:
    return dict(npz)


@pytest.mark.parametrize("scan", [False, True])
def test_write_then_read_is_the_identity(imported, tmp_path, scan):
  path = tmp_path / "copy.npz"
  big_vision.write(imported["per_layer"], path, scan=scan)
  with np.load(path) as npz:
    names = npz.files
  assert all(n.startswith("params/") for n in names)
  assert any("/encoderblock/" in n for n in names) == scan
  assert any("/encoderblock_1/" in n for n in names) == (not scan)
  again = big_vision.read(path, variant=TINY)
  assert_same_params(again.params, imported["per_layer"].params)
  assert again.model == imported["per_layer"].model


@pytest.mark.parametrize("name,scan,prefix", [("per_layer", False, True),
                                              ("scanned", True, False)])
def test_read_then_write_gives_back_the_file(imported, name, scan, prefix):
  original = _arrays(name)
  written = big_vision.to_arrays(imported[name], scan=scan, prefix=prefix)
  assert sorted(written) == sorted(original)
  for key, value in original.items():
    np.testing.assert_array_equal(written[key], value, err_msg=key)


def _with_pool(imp, pool, rng):
  """imp with its MAP head swapped for another pool type (and a class token)."""
  params = {k: dict(v) if isinstance(v, dict) else v for k, v in imp.params.items()}
  del params["image_tower"]["map_head"]
  if pool == "cls":
    params["image_tower"]["cls"] = rng.normal(size=(1, 1, 32)).astype(np.float32)
  model = json.loads(json.dumps(imp.model))
  model["towers"]["image"]["pool"] = pool
  return Imported(**{**imp.__dict__, "params": params, "model": model})


@pytest.mark.parametrize("pool", ["gap", "cls"])
def test_gap_and_class_token_pools_are_detected(imported, tmp_path, pool):
  imp = _with_pool(imported["per_layer"], pool, np.random.default_rng(0))
  path = tmp_path / f"{pool}.npz"
  big_vision.write(imp, path, scan=True)
  again = big_vision.read(path, variant=TINY)
  assert again.model["towers"]["image"]["pool"] == pool
  assert not again.model["towers"]["image"].get("cls_position", False)
  assert_same_params(again.params, imp.params)


def test_a_flattened_pool_is_refused_not_written_as_a_mean(imported):
  imp = _with_pool(imported["per_layer"], "flatten", np.random.default_rng(0))
  with pytest.raises(ValueError, match="pool='flatten' has no big_vision layout"):
    big_vision.to_arrays(imp, scan=True)


def test_old_class_token_position_is_folded_into_the_token(imported):
  imp = _with_pool(imported["per_layer"], "cls", np.random.default_rng(1))
  tensors = big_vision.to_arrays(imp, scan=False, prefix=False)
  pe_cls = np.full((1, 1, 32), 0.5, np.float32)
  tensors["img/pos_embedding"] = np.concatenate([pe_cls, tensors["img/pos_embedding"]], 1)
  again = big_vision.from_arrays(tensors, variant=TINY)
  np.testing.assert_allclose(again.params["image_tower"]["cls"],
                             imp.params["image_tower"]["cls"] + 0.5)
  np.testing.assert_array_equal(again.params["image_tower"]["pos_embedding"],
                                imp.params["image_tower"]["pos_embedding"])
  assert any("cls" in note for note in again.notes)


def test_a_missing_bias_is_zero():
  tensors = _arrays("scanned")
  del tensors["b"]
  imp = big_vision.from_arrays(tensors, variant=TINY)
  assert imp.logit_bias == 0.0 and float(imp.params["bias"]) == 0.0
  assert any("bias" in note for note in imp.notes)


# ---- position embeddings -------------------------------------------------------------

@pytest.mark.parametrize("grid", [6, 3])
def test_resampling_matches_big_vision(imported, ref, grid):
  # reference: scipy.ndimage.zoom(order=1), as big_vision's resample_posemb.
  imp = big_vision.read(os.path.join(DATA, "per_layer.npz"), variant=TINY, res=8 * grid)
  pos = imp.params["image_tower"]["pos_embedding"]
  assert pos.shape == (1, grid * grid, 32)
  np.testing.assert_allclose(pos.reshape(grid, grid, 32), ref[f"posemb_grid{grid}"], atol=1e-6)
  assert imp.image_size == 8 * grid and imp.image["size"] == 8 * grid
  assert any("4x4" in n and f"{grid}x{grid}" in n for n in imp.notes), imp.notes
  # Everything but the position grid is the stored model.
  rest = {k: v for k, v in flat(imp.params).items() if k != "image_tower/pos_embedding"}
  stored = flat(imported["per_layer"].params)
  assert all(np.array_equal(v, stored[k]) for k, v in rest.items())


def test_resampling_to_the_stored_grid_is_the_identity(imported):
  imp = big_vision.read(os.path.join(DATA, "per_layer.npz"), variant=TINY, res=32)
  assert imp.notes == []
  assert_same_params(imp.params, imported["per_layer"].params)
  pos = np.random.default_rng(0).normal(size=(1, 25, 4)).astype(np.float32)
  np.testing.assert_array_equal(big_vision.resample_posemb(pos, 5), pos)


def test_resampling_keeps_a_linear_ramp_and_its_corners():
  rows, cols = np.meshgrid(np.arange(5.0), np.arange(5.0), indexing="ij")
  pos = np.stack([rows, cols], -1).reshape(1, 25, 2).astype(np.float32)
  new = big_vision.resample_posemb(pos, 9).reshape(9, 9, 2)
  np.testing.assert_allclose(new[:, 0, 0], np.linspace(0, 4, 9), atol=1e-6)
  np.testing.assert_allclose(new[0, :, 1], np.linspace(0, 4, 9), atol=1e-6)


# ---- bad input -----------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_an_unreadable_file_is_named(tmp_path, damage):
  path = tmp_path / "broken.npz"
  data = open(os.path.join(DATA, "per_layer.npz"), "rb").read()
  path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a zip" * 100)
  with pytest.raises(big_vision.CheckpointError, match="incomplete or corrupt") as info:
    big_vision.read(path, variant=TINY)
  assert str(path) in str(info.value)


def test_one_array_is_not_a_checkpoint(tmp_path):
  path = tmp_path / "one.npz"
  with open(path, "wb") as f:
    np.save(f, np.zeros(3))
  with pytest.raises(big_vision.CheckpointError, match="holds one array"):
    big_vision.read(path, variant=TINY)


def test_towers_of_different_embedding_sizes_are_refused():
  tensors = _arrays("scanned")
  tensors["txt/head/kernel"] = tensors["txt/head/kernel"][:, :16]
  tensors["txt/head/bias"] = tensors["txt/head/bias"][:16]
  with pytest.raises(mapping.MappingError, match="txt/head/kernel gives 16"):
    big_vision.from_arrays(tensors, variant=TINY)


def test_another_variant_names_the_tensors_and_shapes():
  with pytest.raises(mapping.MappingError) as info:
    big_vision.read(os.path.join(DATA, "per_layer.npz"), variant="S/16")
  message = str(info.value)
  assert "S/16" in message
  assert "missing from the file (320)" in message  # blocks 2-11 of both towers
  assert "img/Transformer/encoderblock_2/LayerNorm_0/scale" in message  # in natural order
  assert "img/MAPHead_0/probe: (1, 1, 32) in the file, (1, 1, 384) expected" in message


def test_a_shallower_variant_lists_the_extra_blocks():
  with pytest.raises(mapping.MappingError, match="scanned blocks are listed per layer") as info:
    big_vision.read(os.path.join(DATA, "scanned.npz"), variant="mu/8")
  message = str(info.value)
  assert "in the file but not in SigLIP mu/8 (text mu) (32)" in message
  assert "img/Transformer/encoderblock_1/LayerNorm_0/scale" in message
  assert "Dense_0/kernel: (32, 64) in the file, (32, 128) expected" in message


def test_a_missing_variant_is_suggested():
  with pytest.raises(ValueError, match=r"pass variant=, 'mu/8' by this file's patch embedding"):
    big_vision.read(os.path.join(DATA, "per_layer.npz"))


def test_text_len_must_be_the_stored_one():
  path = os.path.join(DATA, "per_layer.npz")
  with pytest.raises(ValueError, match=r"text_len=8.*16") as info:
    big_vision.read(path, variant=TINY, text_len=8)
  assert "txt/pos_embedding" in str(info.value)
  assert big_vision.read(path, variant=TINY, text_len=16).text["length"] == 16


def test_res_must_be_a_multiple_of_the_patch():
  with pytest.raises(ValueError, match="res=30.*patch size 8"):
    big_vision.read(os.path.join(DATA, "per_layer.npz"), variant=TINY, res=30)


@pytest.mark.parametrize("variant,sizes", [
    ("B/16", (768, 12, 3072, 12, 16)), ("L/16", (1024, 24, 4096, 16, 16)),
    ("So400m/14", (1152, 27, 4304, 16, 14)), ("g-opt/16", (1536, 40, 6144, 16, 16))])
def test_variant_sizes_are_big_vision_s(variant, sizes):
  # big_vision/models/vit.py decode_variant (the SigLIP / SigLIP 2 releases).
  got = big_vision._decode(variant, "variant")  # pylint: disable=protected-access
  assert tuple(got[k] for k in ("width", "depth", "mlp_dim", "num_heads", "patch_size")) == sizes
  assert big_vision._text_default(variant) == (  # pylint: disable=protected-access
      "So400m" if variant.startswith("g-opt") else variant.split("/")[0])
  assert families.decode_variant("mu/8")["width"] == 32


# ---- live: the references built in-process -------------------------------------------

def _generator():
  return modules.from_file(os.path.join(HERE, "references", "make_big_vision.py"))


@pytest.mark.bench
@pytest.mark.parametrize("size", ["tiny", "B/16"])
def test_live_against_transformers(tmp_path, size):
  torch = pytest.importorskip("torch")
  pytest.importorskip("transformers")
  gen = _generator()
  torch.set_num_threads(max(1, os.cpu_count() or 1))
  if size == "tiny":
    model = gen.build(7, gen.TINY["vision"], gen.TINY["text"])
    variant, res, vocab, length = TINY, 32, 200, 16
    tensors = gen.prefixed(gen.as_bf16_void(gen.scan(gen.to_big_vision(model))))
  else:  # SiglipConfig's defaults are SigLIP B/16 at 224 px, 64 tokens, 32k vocabulary
    model = gen.build(7, bf16_values=False)
    variant, res, vocab, length = "B/16", 224, 32000, 64
    tensors = gen.to_big_vision(model)
  np.savez(tmp_path / "live.npz", **tensors)
  del tensors
  pixels, tokens = gen.inputs(7, res, vocab, length)
  theirs = gen.outputs(model, pixels, tokens)
  imp = big_vision.read(tmp_path / "live.npz", variant=variant)
  zimg, ztxt, logits = embed(imp, pixels, tokens)
  for what, ours in (("image_embeds", zimg), ("text_embeds", ztxt), ("logits_per_image", logits)):
    deficit, diff = agreement(ours, theirs[what])
    print(f"live {size} {what}: 1 - cos {deficit:.2e}, max|diff| {diff:.2e}")
    assert deficit <= 1 - MIN_COS and diff <= MAX_DIFF, (size, what, deficit, diff)


@pytest.mark.bench
def test_live_resampling_against_scipy():
  ndimage = pytest.importorskip("scipy.ndimage")
  rng = np.random.default_rng(0)
  for old, new in ((14, 24), (16, 12), (7, 16), (4, 1)):
    pos = rng.normal(size=(1, old * old, 8)).astype(np.float32)
    theirs = ndimage.zoom(pos.reshape(old, old, 8), (new / old, new / old, 1), order=1)
    ours = big_vision.resample_posemb(pos, new).reshape(new, new, 8)
    np.testing.assert_allclose(ours, theirs, atol=1e-6, err_msg=f"{old} -> {new}")
