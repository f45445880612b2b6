"""MultiTower (mmjax/models/multi_tower.py): output names for N towers, towers
read by dotted path, unknown kinds, parameter paths, and the matching head.

Every model is tiny and built once per module; init and apply run eagerly
(for models this small that is quicker than compiling them)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict

from mmjax import losses
from mmjax import registry
from mmjax.models import cnn, multi_tower, vit
from mmjax.models import registry as model_registry
from mmjax.models.heads import fusion
from mmjax.models.heads import matching

B = 3
IMAGE = dict(kind="vit", patch_size=4, width=16, depth=1, num_heads=2)
TEXT = dict(kind="transformer", vocab_size=32, context_length=8, width=16, depth=1,
            num_heads=2)
# A third modality: a small ConvNet over the one-channel "sketch" field.
DEPTH = dict(kind="cnn", input="sketch", widths=(8,), blocks_per_stage=1)
RNG = np.random.default_rng(0)
BATCH = {
    "image": RNG.integers(0, 256, (B, 8, 8, 3), dtype=np.uint8),
    "text": np.array([[5, 6, 2, 0, 0, 0, 0, 0], [7, 8, 9, 2, 0, 0, 0, 0],
                      [5, 9, 9, 9, 6, 2, 0, 0]], np.int32),
    "sketch": RNG.integers(0, 256, (B, 8, 8, 1), dtype=np.uint8),
}
IMAGE_TEXT = {"image": BATCH["image"], "text": BATCH["text"]}
REGISTERED = ["ast", "audio_cnn", "bert", "cnn", "transformer", "vit"]


def _model(towers, heads=None, **kwargs):
  kwargs.setdefault("embed_dim", 8)
  return multi_tower.MultiTower(
      towers=FrozenDict({m: FrozenDict(spec) for m, spec in towers.items()}),
      heads=FrozenDict({h: FrozenDict(spec) for h, spec in (heads or {}).items()}),
      **kwargs)


def _init(model, batch):
  boxed = model.init(jax.random.key(0), batch)
  return nn.meta.unbox(boxed), boxed


def _built(model, batch):
  variables, boxed = _init(model, batch)
  return model, variables, boxed, model.apply(variables, batch)


def _names(tree):
  return sorted("/".join(str(k.key) for k in path)
                for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0])


@pytest.fixture(scope="module")
def image_text():
  return _built(_model({"image": IMAGE, "text": TEXT}, temperature_init=10.0,
                       bias_init=-10.0), IMAGE_TEXT)


@pytest.fixture(scope="module")
def three_towers():
  model = _model({"image": IMAGE, "text": TEXT, "depth": DEPTH},
                 pair_scales=(("image", "depth"),), temperature_init=10.0, bias_init=-10.0)
  return _built(model, BATCH)


# --- outputs -----------------------------------------------------------------


def test_three_towers_output_names(three_towers):
  model, variables, _, out = three_towers
  assert set(out) == {"z/image", "z/text", "z/depth", "scale", "bias",
                      "scale/image/depth", "bias/image/depth"}
  for m in ("image", "text", "depth"):
    assert out[f"z/{m}"].shape == (B, 8) and out[f"z/{m}"].dtype == jnp.float32, m
  for name in ("scale", "scale/image/depth"):
    assert out[name].shape == () and out[name].dtype == jnp.float32
    np.testing.assert_allclose(out[name], 10.0, rtol=1e-6)
  for name in ("bias", "bias/image/depth"):
    np.testing.assert_allclose(out[name], -10.0)
  params = variables["params"]
  assert set(params) == {"image_tower", "text_tower", "depth_tower", "image_proj",
                         "text_proj", "depth_proj", "log_scale", "bias",
                         "log_scale_image_depth", "bias_image_depth"}
  # The third tower is a ConvNet over the sketch field (one channel).
  assert params["depth_tower"]["stage0_block0"]["Conv_0"]["kernel"].shape == (3, 3, 1, 8)
  assert params["depth_proj"]["kernel"].shape == (8, 8)
  assert model.input_key("depth") == "sketch" and model.input_key("image") == "image"


def test_third_tower_reads_its_input_field(three_towers):
  model, variables, _, out = three_towers
  # The batch has no "depth" key: the tower reads "sketch".
  assert "depth" not in BATCH
  np.testing.assert_allclose(model.apply(variables, BATCH["sketch"], "depth",
                                         method=model.encode), out["z/depth"], atol=1e-6)
  other = dict(BATCH, sketch=np.roll(BATCH["sketch"], 1, axis=0))
  changed = model.apply(variables, other)
  np.testing.assert_allclose(changed["z/depth"], np.roll(out["z/depth"], 1, axis=0),
                             atol=1e-6)
  assert np.abs(changed["z/depth"] - out["z/depth"]).max() > 1e-3
  np.testing.assert_array_equal(changed["z/image"], out["z/image"])
  np.testing.assert_array_equal(changed["z/text"], out["z/text"])
  # features(): one tower's embedding (and its sequence) on its field.
  feats = model.apply(variables, BATCH["sketch"], "depth", method=model.features)
  assert set(feats) == {"z", "tokens"}  # an image tower has no padding mask
  np.testing.assert_allclose(feats["z"], out["z/depth"], atol=1e-6)
  feats = model.apply(variables, BATCH["text"], "text", method=model.features)
  assert set(feats) == {"z", "tokens", "mask"}
  assert feats["tokens"].shape == (B, 8, 16)
  np.testing.assert_array_equal(feats["mask"], BATCH["text"] != 0)
  # Loss terms over the new pair find what they read in these outputs.
  terms = losses.from_config({"name": "sigmoid_contrastive", "terms": {
      "depth": dict(fn="sigmoid_contrastive", pair=("image", "depth"))}})
  losses.check(terms, out, BATCH, model.towers)
  total, per_term = losses.combine(terms)(out, BATCH)
  np.testing.assert_allclose(
      per_term["depth"], losses.sigmoid_contrastive(out["z/image"], out["z/depth"],
                                                    out["scale/image/depth"],
                                                    out["bias/image/depth"]), rtol=1e-6)
  np.testing.assert_allclose(total, per_term["depth"] + per_term["sigmoid_contrastive"],
                             rtol=1e-6)


def test_every_z_is_unit_norm(three_towers, image_text):
  for _, _, _, out in (three_towers, image_text):
    zs = [k for k in out if k.startswith("z/")]
    assert zs
    for k in zs:
      np.testing.assert_allclose(jnp.linalg.norm(out[k], axis=-1), 1.0, rtol=1e-5,
                                 err_msg=k)
  # Also for an all-zero input.
  model, variables, _, _ = three_towers
  zeros = jax.tree.map(np.zeros_like, BATCH)
  for k, v in model.apply(variables, zeros).items():
    if k.startswith("z/"):
      assert np.isfinite(v).all(), k
      np.testing.assert_allclose(jnp.linalg.norm(v, axis=-1), 1.0, rtol=1e-4, err_msg=k)


# --- tower kinds ---------------------------------------------------------------


def test_tower_kind_by_dotted_path():
  image = dict(kind="cnn", widths=(8,), blocks_per_stage=1)
  by_name = _init(_model({"image": image, "text": TEXT}), IMAGE_TEXT)[0]
  for path in ("mmjax.models.cnn.ConvNet", "mmjax.models.cnn:ConvNet"):
    model = _model({"image": dict(image, kind=path), "text": TEXT})
    variables = _init(model, IMAGE_TEXT)[0]
    assert jax.tree.structure(variables) == jax.tree.structure(by_name), path
    assert all(np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(variables), jax.tree.leaves(by_name))), path
    out = model.apply(variables, IMAGE_TEXT)
    np.testing.assert_allclose(out["z/image"],
                               model.apply(by_name, IMAGE_TEXT)["z/image"], atol=1e-6)
  # The registry resolves names and paths to the same classes.
  assert model_registry.tower_class("mmjax.models.cnn.ConvNet", "image") is cnn.ConvNet
  assert model_registry.tower_class("vit", "image") is vit.ViT
  assert sorted(model_registry.TOWERS) == REGISTERED


@pytest.mark.parametrize("kind, hint", [("resnet", ""), ("vitt", " Did you mean 'vit'?")])
def test_unknown_tower_kind_lists_the_registered_kinds(kind, hint):
  model = _model({"image": dict(IMAGE, kind=kind), "text": TEXT})
  with pytest.raises(registry.UnknownNameError) as e:
    model.init(jax.random.key(0), IMAGE_TEXT)
  msg = str(e.value)
  assert isinstance(e.value, ValueError)
  assert f"unknown tower kind (config.model.towers.image.kind) {kind!r}.{hint} " in msg
  assert f"Registered: {REGISTERED}" in msg
  assert f"dotted path, e.g. 'mypkg.module.{kind}'" in msg


def test_tower_without_a_kind_says_what_to_set():
  model = _model({"image": IMAGE, "text": {k: v for k, v in TEXT.items() if k != "kind"}})
  with pytest.raises(registry.UnknownNameError,
                     match=r"tower kind \(config.model.towers.text.kind\) is not set; choose "
                           r"one of \['ast', 'audio_cnn', 'bert', 'cnn', 'transformer', "
                           r"'vit'\] or a dotted path"):
    model.init(jax.random.key(0), IMAGE_TEXT)


def test_dotted_path_that_does_not_import_names_the_module():
  model = _model({"image": dict(IMAGE, kind="no_such_pkg_xyz.towers.Net"), "text": TEXT})
  with pytest.raises(registry.UnknownNameError,
                     match=r"tower kind \(config.model.towers.image.kind\) "
                           r"'no_such_pkg_xyz.towers.Net': could not import module "
                           r"'no_such_pkg_xyz.towers' \(ModuleNotFoundError: No module named "
                           r"'no_such_pkg_xyz'\)"):
    model.init(jax.random.key(0), IMAGE_TEXT)
  model = _model({"image": dict(IMAGE, kind="mmjax.models.cnn.ResNet"), "text": TEXT})
  with pytest.raises(registry.UnknownNameError,
                     match=r"module 'mmjax.models.cnn' was imported but has no attribute "
                           r"'ResNet'"):
    model.init(jax.random.key(0), IMAGE_TEXT)


# --- parameters ----------------------------------------------------------------


def test_image_text_param_paths(image_text):
  _, variables, boxed, _ = image_text
  params = variables["params"]
  # The paths of earlier (two-tower) checkpoints, unchanged.
  assert set(params) == {"image_tower", "text_tower", "image_proj", "text_proj",
                         "log_scale", "bias"}
  assert set(params["image_proj"]) == set(params["text_proj"]) == {"kernel"}
  assert params["image_proj"]["kernel"].shape == (16, 8)
  assert params["text_proj"]["kernel"].shape == (16, 8)
  assert params["log_scale"].shape == params["bias"].shape == ()
  np.testing.assert_allclose(params["log_scale"], np.log(10.0), rtol=1e-6)
  alone = nn.meta.unbox(vit.ViT(**{k: v for k, v in IMAGE.items() if k != "kind"}).init(
      jax.random.key(0), BATCH["image"].astype(np.float32)))["params"]
  assert _names(params["image_tower"]) == _names(alone)
  specs = nn.get_partition_spec(boxed)["params"]
  assert specs["image_proj"]["kernel"] == jax.sharding.PartitionSpec("embed", "joint")
  # With a teacher's size, to_teacher [D, D_t] joins them and the outputs.
  model = _model({"image": IMAGE, "text": TEXT}, teacher_dim=6)
  teacher_params, _ = _init(model, IMAGE_TEXT)
  assert set(teacher_params["params"]) == set(params) | {"to_teacher"}
  assert teacher_params["params"]["to_teacher"].shape == (8, 6)
  out = model.apply(teacher_params, IMAGE_TEXT)
  np.testing.assert_array_equal(out["to_teacher"], teacher_params["params"]["to_teacher"])


# --- the matching head -----------------------------------------------------------

HEADS = {
    "concat_mlp": dict(kind="itm", fusion="concat_mlp", options=FrozenDict(hidden=8, depth=1)),
    "cross_attention": dict(kind="itm", fusion="cross_attention",
                            options=FrozenDict(width=8, num_heads=2)),
}


@pytest.fixture(scope="module", params=sorted(HEADS))
def with_itm(request):
  model = _model({"image": IMAGE, "text": TEXT}, heads={"itm": HEADS[request.param]})
  return (request.param, *_built(model, IMAGE_TEXT))


def test_matching_head_outputs_logits_and_labels(with_itm):
  kind, _, variables, _, out = with_itm
  assert out["itm/logits"].shape == (3 * B,) and out["itm/logits"].dtype == jnp.float32
  assert np.isfinite(out["itm/logits"]).all()
  np.testing.assert_array_equal(out["itm/labels"], [1.0] * B + [0.0] * (2 * B))
  assert out["itm/labels"].dtype == jnp.float32
  base = {"z/image", "z/text", "scale", "bias", "itm/logits", "itm/labels"}
  if kind == "cross_attention":
    # Token sequences are output only because this head reads them.
    assert set(out) == base | {"tokens/image", "tokens/text", "mask/text"}
    assert out["tokens/image"].shape == (B, 4, 16)
    assert out["tokens/text"].shape == (B, 8, 16)
    np.testing.assert_array_equal(out["mask/text"], BATCH["text"] != 0)
  else:
    assert set(out) == base
  params = variables["params"]
  assert set(params) == {"image_tower", "text_tower", "image_proj", "text_proj",
                         "log_scale", "bias", "itm_head"}


def test_matching_head_scores_positives_then_hardest_negatives(with_itm):
  kind, _, variables, _, out = with_itm
  za, zb = np.asarray(out["z/image"]), np.asarray(out["z/text"])
  sims = za @ zb.T
  np.fill_diagonal(sims, -np.inf)
  rows = np.arange(B)
  side_a = np.concatenate([rows, rows, sims.argmax(axis=0)])
  side_b = np.concatenate([rows, sims.argmax(axis=1), rows])
  # Each example's hardest negative is another example.
  assert (side_a[B:] != side_b[B:]).all()
  feats = {"zimg": za[side_a], "ztxt": zb[side_b]}
  if kind == "cross_attention":
    feats.update(image_tokens=np.asarray(out["tokens/image"])[side_a],
                 text_tokens=np.asarray(out["tokens/text"])[side_b],
                 text_mask=np.asarray(out["mask/text"])[side_b])
  head = fusion.make_head(kind, **dict(HEADS[kind]["options"]))
  (sub,) = variables["params"]["itm_head"].values()
  want = head.apply({"params": sub}, feats)
  np.testing.assert_allclose(out["itm/logits"], want, rtol=1e-5, atol=1e-5)
  # An ITM loss term reads them through `inputs`.
  terms = losses.from_config({"name": "", "terms": {"itm": dict(
      fn="binary_cross_entropy", inputs=dict(logits="itm/logits", labels="itm/labels"))}})
  losses.check(terms, out, IMAGE_TEXT, ("image", "text"))
  total, _ = losses.combine(terms)(out)
  np.testing.assert_allclose(
      total, losses.binary_cross_entropy(out["itm/logits"], out["itm/labels"]), rtol=1e-6)


def test_matching_head_is_registered_as_itm():
  assert model_registry.HEADS["itm"] is matching.MatchingHead
  assert model_registry.head_class("itm", "itm") is matching.MatchingHead
  assert matching.MatchingHead(fusion="cross_attention").token_modalities == ("image", "text")
  assert matching.MatchingHead(fusion="concat_mlp").token_modalities == ()
