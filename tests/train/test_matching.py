"""Image-text matching heads (mmjax/train/matching.py): the fusion heads on a
synthetic task, head storage in the params tree, and the towers' token-level
outputs the heads read (encode_tokens, tower_features) on a tiny MultiTower.
Pair mining and the metrics are tested in tests/eval/test_pairs.py; the shapes
ITM evaluator in tests/data/test_shapes_evaluators.py."""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax.core import FrozenDict

from mmjax.eval import pairs as pairs_lib
from mmjax.models import multi_tower
from mmjax.models.heads import fusion
from mmjax.train import matching

pytestmark = pytest.mark.slow  # trains matching heads


def _unit(x):
  x = np.asarray(x, np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --- heads -------------------------------------------------------------------


def synthetic(n, seed, p=4, length=6, width=8):
  """A separable matching task: each image is p random tokens; its caption
  copies (noisily) some of them, then padding. Embeddings are the flattened
  tokens, so pooled and token-level heads can both tell a match."""
  rng = np.random.default_rng(seed)
  image_tokens = rng.normal(size=(n, p, width)).astype(np.float32)
  real = rng.integers(3, length + 1, n)
  mask = np.arange(length)[None, :] < real[:, None]
  picks = rng.integers(p, size=(n, length))
  text_tokens = image_tokens[np.arange(n)[:, None], picks] + 0.3 * rng.normal(
      size=(n, length, width))
  text_tokens = np.where(mask[..., None], text_tokens, 0).astype(np.float32)
  flat = image_tokens.reshape(n, -1)
  feats = {"zimg": _unit(flat), "ztxt": _unit(flat + 0.5 * rng.normal(size=flat.shape)),
           "image_tokens": image_tokens, "text_tokens": text_tokens, "text_mask": mask}
  return feats, {"image": np.zeros((n, 1)), "text_to_image": np.arange(n)}


SMALL = {"concat_mlp": dict(hidden=32), "weighted_sum": {},
         "cross_attention": dict(width=32, num_heads=2)}


@pytest.mark.parametrize("kind", list(fusion.HEADS))
def test_head_output_shape(kind):
  feats, _ = synthetic(5, 0)
  head = fusion.make_head(kind, **SMALL[kind])
  variables = head.init(jax.random.key(0), feats)
  logits = head.apply(nn.meta.unbox(variables), feats)
  assert logits.shape == (5,) and logits.dtype == np.float32


@pytest.mark.parametrize("kind", list(fusion.HEADS))
def test_head_fits_a_separable_problem(kind):
  train_feats, train_data = synthetic(256, 0)
  test_feats, test_data = synthetic(200, 1)
  params = matching.train_head(kind, None, {"tower": np.zeros(1)}, train_data, steps=300,
                               batch_size=64, seed=0, head_cfg=SMALL[kind], top_k=4,
                               features=train_feats)
  assert "tower" in params  # the given params stay, the head joins them
  pairs = pairs_lib.make_pairs(test_feats["zimg"], test_feats["ztxt"],
                              test_data["text_to_image"], top_k=4, seed=0)
  logits = matching.head_logits(kind, matching.load_head(params, kind), test_feats, pairs,
                                head_cfg=SMALL[kind])
  metrics = pairs_lib.binary_metrics(logits, pairs["label"])
  assert metrics["accuracy"] > 0.9, metrics


def test_unknown_head_kind_lists_the_choices():
  with pytest.raises(ValueError, match="unknown ITM head 'bilinear'.*concat_mlp.*"
                                       "weighted_sum.*cross_attention"):
    fusion.make_head("bilinear")
  with pytest.raises(ValueError, match="unknown ITM head"):
    matching.load_head({"itm_bilinear": {}}, "bilinear")


def test_missing_head_names_the_head_and_the_fix():
  params = {"image_tower": {}, "text_tower": {}, "itm_concat_mlp": {}}
  with pytest.raises(ValueError, match=r"no ITM head 'cross_attention'.*itm_concat_mlp.*"
                                       r"train_head\('cross_attention'"):
    matching.load_head(params, "cross_attention")
  assert matching.load_head({"params": params}, "concat_mlp") == {}
  feats, _ = synthetic(4, 0)
  with pytest.raises(ValueError, match="reads token sequences"):
    matching.head_logits("cross_attention", {}, {"zimg": feats["zimg"], "ztxt": feats["ztxt"]},
                         {"image": np.zeros(1, int), "text": np.zeros(1, int),
                          "label": np.zeros(1)})


# --- the towers' token outputs ---------------------------------------------------

TEXT = dict(kind="transformer", vocab_size=32, context_length=8, width=16, depth=1,
            num_heads=2, pad_id=0)
IMAGES = {
    "vit_gap": dict(kind="vit", patch_size=4, width=16, depth=1, num_heads=2, pool="gap"),
    "vit_cls": dict(kind="vit", patch_size=4, width=16, depth=1, num_heads=2, pool="cls"),
    "vit_map": dict(kind="vit", patch_size=4, width=16, depth=1, num_heads=2, pool="map",
                    stem="conv"),
    "cnn": dict(kind="cnn", widths=(8, 16), blocks_per_stage=1),
}


@functools.lru_cache(maxsize=None)  # one per image tower, shared by the tests (read-only)
def _tiny_model(name):
  image = IMAGES[name]
  model = multi_tower.MultiTower(
      towers=FrozenDict(image=FrozenDict(image), text=FrozenDict(TEXT)), embed_dim=12)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
  tokens = rng.integers(3, 32, (3, 8)).astype(np.int32)
  tokens[:, 5:] = 0
  tokens[1, 3:] = 0
  params = nn.meta.unbox(model.init(jax.random.key(0), {"image": images, "text": tokens}))
  return model, params["params"], images, tokens


@pytest.mark.parametrize("image", list(IMAGES))
def test_encode_tokens_shapes_and_pooled_outputs_equal_encode(image):
  model, params, images, tokens = _tiny_model(image)
  variables = {"params": params}
  apply = lambda method, *args: model.apply(variables, *args, method=method)
  # The token outputs need no params beyond the towers': apply would fail otherwise.
  out = matching.encode_tokens(model, variables, images, tokens)
  assert set(out) == {"zimg", "image_tokens", "ztxt", "text_tokens", "text_mask"}
  patches = 4 if image != "cnn" else 16  # 8x8 images: 2x2 patches; cnn: 4x4 map
  assert out["image_tokens"].shape == (3, patches, 16)
  assert out["text_tokens"].shape == (3, 8, 16)
  assert out["zimg"].shape == out["ztxt"].shape == (3, 12)
  np.testing.assert_array_equal(out["text_mask"], tokens != 0)
  np.testing.assert_array_equal(out["zimg"], apply(model.encode_image, images))
  np.testing.assert_array_equal(out["ztxt"], apply(model.encode_text, tokens))
  assert set(matching.encode_tokens(model, variables, tokens=tokens)) == {
      "text_tokens", "text_mask", "ztxt"}
  assert set(matching.encode_tokens(model, variables, images)) == {"image_tokens", "zimg"}
  assert matching.encode_tokens(model, variables) == {}


def test_tower_features_batch_the_towers_outputs():
  model, params, images, tokens = _tiny_model("vit_gap")
  data = {"image": np.concatenate([images] * 3)[:7], "text": np.concatenate([tokens] * 3)[:8],
          "text_to_image": np.arange(8) % 7}
  want = matching.encode_tokens(model, {"params": params}, data["image"], data["text"])
  # ITM heads in the params tree are not the towers': tower_features ignores them.
  with_head = {**params, "itm_concat_mlp": {"w": np.zeros(3)}}
  feats = matching.tower_features(model, with_head, data, batch_size=3)  # padded batches
  assert set(feats) == set(want)
  for key, value in want.items():
    assert feats[key].shape == value.shape and isinstance(feats[key], np.ndarray), key
    if key == "text_mask":
      assert feats[key].dtype == bool
      np.testing.assert_array_equal(feats[key], value)
    else:
      assert feats[key].dtype == np.float32
      np.testing.assert_allclose(feats[key], value, atol=1e-5, err_msg=key)
  pooled = matching.tower_features(model, params, data, tokens=False, batch_size=3)
  assert set(pooled) == {"zimg", "ztxt"}
  np.testing.assert_allclose(pooled["zimg"], want["zimg"], atol=1e-5)
  np.testing.assert_allclose(pooled["ztxt"], want["ztxt"], atol=1e-5)


def test_head_key_and_tower_params():
  assert {k: matching.head_key(k) for k in fusion.HEADS} == {
      "concat_mlp": "itm_concat_mlp", "weighted_sum": "itm_weighted_sum",
      "cross_attention": "itm_cross_attention"}
  with pytest.raises(ValueError, match="unknown ITM head 'bilinear'"):
    matching.head_key("bilinear")
  params = {"image_tower": 1, "text_proj": 2, "log_scale": 3, "itm_weighted_sum": 4}
  assert matching.tower_params(params) == {"image_tower": 1, "text_proj": 2, "log_scale": 3}


def test_trained_towers_and_evaluation_end_to_end():
  model, params, images, tokens = _tiny_model("vit_gap")
  data = {"image": np.concatenate([images] * 4), "text": np.concatenate([tokens] * 4),
          "text_to_image": np.arange(12), "group": np.arange(12) % 3}
  trained = matching.train_head("cross_attention", model, params, data, steps=2,
                                batch_size=6, freeze_towers=False,
                                head_cfg=SMALL["cross_attention"])
  assert set(trained) == set(params) | {"itm_cross_attention"}
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), params, matching.tower_params(trained))
  assert any(jax.tree.leaves(moved))  # the towers trained too
  metrics = matching.evaluate_head("cross_attention", model, trained, data,
                                   head_cfg=SMALL["cross_attention"])
  assert set(metrics) == {f"itm/cross_attention/{k}"
                          for k in ("accuracy", "precision", "recall", "f1", "auc")}
  assert all(0 <= v <= 1 for v in metrics.values())
  with pytest.raises(ValueError, match="no ITM head 'weighted_sum'"):
    matching.evaluate_head("weighted_sum", model, params, data)
