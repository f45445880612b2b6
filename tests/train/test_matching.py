"""Image-text matching: metrics against brute force, hard-negative mining on
hand-built embeddings, the fusion heads on a synthetic task, and the token-level
TwoTower outputs the heads read."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax.eval import matching
from mmjax.eval import pairs as pairs_lib
from mmjax.models import fusion, two_tower

# --- metrics -----------------------------------------------------------------


def brute_force_auc(scores, labels):
  """P(positive > negative) + P(tie) / 2 over every (positive, negative) pair."""
  pos, neg = scores[labels], scores[~labels]
  diff = pos[:, None] - neg[None, :]
  return float(((diff > 0) + 0.5 * (diff == 0)).mean())


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_pairwise_count_with_ties(seed):
  rng = np.random.default_rng(seed)
  scores = rng.integers(0, 6, 200).astype(np.float32)  # many exact ties
  labels = rng.random(200) < 0.3 + 0.1 * scores / 5
  np.testing.assert_allclose(pairs_lib.roc_auc(scores, labels),
                             brute_force_auc(scores, labels), rtol=0, atol=1e-12)


def test_roc_auc_extremes_and_one_class():
  labels = np.array([1, 1, 0, 0], bool)
  assert pairs_lib.roc_auc([4.0, 3.0, 2.0, 1.0], labels) == 1.0
  assert pairs_lib.roc_auc([1.0, 2.0, 3.0, 4.0], labels) == 0.0
  assert pairs_lib.roc_auc([1.0, 1.0, 1.0, 1.0], labels) == 0.5
  with pytest.raises(ValueError, match="positives and negatives"):
    pairs_lib.roc_auc([1.0, 2.0], [1, 1])


def test_binary_metrics_on_a_constructed_case():
  logits = np.array([2.0, 1.0, -1.0, 0.0, 3.0, 0.5, -3.0, 0.2])
  labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
  m = pairs_lib.binary_metrics(logits, labels)
  # logit 0 is not > 0: tp = 2, fn = 2, fp = 3, tn = 1.
  assert m["accuracy"] == pytest.approx(3 / 8)
  assert m["precision"] == pytest.approx(2 / 5)
  assert m["recall"] == pytest.approx(2 / 4)
  assert m["f1"] == pytest.approx(2 * 0.4 * 0.5 / 0.9)
  assert m["auc"] == pytest.approx(brute_force_auc(logits, labels.astype(bool)))
  none = pairs_lib.binary_metrics(-np.ones(4), [1, 0, 1, 0])
  assert none["precision"] == none["recall"] == none["f1"] == 0.0
  assert none["accuracy"] == 0.5


# --- mining and pairs --------------------------------------------------------


def _unit(x):
  x = np.asarray(x, np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _hand_built():
  """One query against 6 gallery items with known similarities.

  Gallery 0 is the query's own match, gallery 1 a duplicate of it (same group,
  the most similar of all), then 2 > 3 > 4 > 5 by similarity.
  """
  angles = np.array([0.0, 0.05, 0.3, 0.6, 1.2, 2.5])
  gallery = _unit(np.stack([np.cos(angles), np.sin(angles)], -1))
  query = gallery[:1]
  return query, np.array([7]), gallery, np.array([7, 7, 1, 2, 3, 4])


def _draws(top_k, n=200):
  query, qg, gallery, gg = _hand_built()
  key = jax.random.key(0)
  rows = np.arange(n)
  idx, ok = pairs_lib.mine_hard_negatives(np.repeat(query, n, 0), np.repeat(qg, n), gallery,
                                         gg, top_k=top_k, key=key, rows=rows)
  assert ok.all()
  return idx


def test_mining_never_returns_a_match_and_prefers_similar_items():
  assert set(_draws(top_k=1)) == {2}  # the most similar non-match, never 0 or 1
  drawn = _draws(top_k=2)
  assert set(drawn) == {2, 3}  # sampled among the top 2, not always the same
  assert 0.3 < np.mean(drawn == 2) < 0.7
  assert set(_draws(top_k=10)) == {2, 3, 4, 5}  # k beyond the non-matches: all of them


def test_mining_is_keyed_per_row():
  query, qg, gallery, gg = _hand_built()
  n = 1200  # over two chunks of queries
  q, g = np.repeat(query, n, 0), np.repeat(qg, n)
  key = jax.random.key(3)
  full, _ = pairs_lib.mine_hard_negatives(q, g, gallery, gg, top_k=3, key=key)
  again, _ = pairs_lib.mine_hard_negatives(q, g, gallery, gg, top_k=3, key=key)
  part, _ = pairs_lib.mine_hard_negatives(q[:5], g[:5], gallery, gg, top_k=3, key=key,
                                         rows=np.arange(700, 705))
  np.testing.assert_array_equal(full, again)
  np.testing.assert_array_equal(part, full[700:705])


def test_mining_flags_rows_without_a_negative():
  query, _, gallery, _ = _hand_built()
  idx, ok = pairs_lib.mine_hard_negatives(query, np.array([0]), gallery, np.zeros(6, int),
                                         top_k=4, key=jax.random.key(0))
  assert not ok[0]


def test_make_pairs_is_balanced_and_negatives_never_match():
  rng = np.random.default_rng(0)
  n, per = 40, 3
  zimg = _unit(rng.normal(size=(n, 8)))
  t2i = np.repeat(np.arange(n), per)
  ztxt = _unit(zimg[t2i] + 0.3 * rng.normal(size=(n * per, 8)))
  group = np.arange(n) // 2  # pairs of duplicate images
  for easy in (0.0, 0.5, 1.0):
    pairs = pairs_lib.make_pairs(zimg, ztxt, t2i, group, top_k=4, seed=1, easy_fraction=easy)
    label = pairs["label"].astype(bool)
    assert label.sum() == (~label).sum() == n * per
    match = group[pairs["image"]] == group[t2i[pairs["text"]]]
    np.testing.assert_array_equal(match, label)
    again = pairs_lib.make_pairs(zimg, ztxt, t2i, group, top_k=4, seed=1, easy_fraction=easy)
    for k in pairs:
      np.testing.assert_array_equal(pairs[k], again[k])
  # Each negative swaps exactly one side of its positive, both sides occurring.
  neg = ~label
  swapped_text = pairs["image"][neg] == t2i[pairs["text"][:n * per]]
  swapped_image = pairs["text"][neg] == np.arange(n * per)
  assert np.all(swapped_text ^ swapped_image)
  assert 0.3 < swapped_text.mean() < 0.7


def test_make_pairs_mines_within_pools():
  rng = np.random.default_rng(2)
  zimg = _unit(rng.normal(size=(30, 8)))
  t2i = np.repeat(np.arange(30), 2)
  ztxt = _unit(zimg[t2i] + 0.3 * rng.normal(size=(60, 8)))
  pairs = pairs_lib.make_pairs(zimg, ztxt, t2i, top_k=3, seed=0, pool=10)
  neg = pairs["label"] == 0
  np.testing.assert_array_equal(pairs["image"][neg] // 10, t2i[pairs["text"][neg]] // 10)
  whole = pairs_lib.make_pairs(zimg, ztxt, t2i, top_k=3, seed=0)
  same = pairs_lib.make_pairs(zimg, ztxt, t2i, top_k=3, seed=0, pool=30)
  for k in whole:
    np.testing.assert_array_equal(whole[k], same[k])


def test_hard_negatives_are_harder_than_random_ones():
  rng = np.random.default_rng(1)
  zimg = _unit(rng.normal(size=(100, 8)))
  ztxt = _unit(zimg + 0.3 * rng.normal(size=(100, 8)))
  t2i = np.arange(100)

  def negative_similarity(easy):
    p = pairs_lib.make_pairs(zimg, ztxt, t2i, top_k=3, seed=0, easy_fraction=easy)
    neg = p["label"] == 0
    return np.sum(zimg[p["image"][neg]] * ztxt[p["text"][neg]], -1).mean()

  assert negative_similarity(0.0) > negative_similarity(1.0) + 0.3


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


def test_itm_settings_reject_unknown_keys():
  import ml_collections
  config = ml_collections.ConfigDict({"eval": {"itm": {"step": 10}}})
  with pytest.raises(ValueError, match="unknown keys \\['step'\\]"):
    matching.itm_settings(config)
  config.eval.itm = {"steps": 10}
  assert matching.itm_settings(config)["steps"] == 10


# --- the towers' token outputs ---------------------------------------------------

TEXT = dict(vocab_size=32, context_length=8, width=16, depth=1, num_heads=2, pad_id=0)
IMAGES = {
    "vit_gap": dict(kind="vit", patch_size=4, width=16, depth=1, num_heads=2, pool="gap"),
    "vit_cls": dict(kind="vit", patch_size=4, width=16, depth=1, num_heads=2, pool="cls"),
    "vit_map": dict(kind="vit", patch_size=4, width=16, depth=1, num_heads=2, pool="map",
                    stem="conv"),
    "cnn": dict(kind="cnn", widths=(8, 16), blocks_per_stage=1),
}


def _tiny_model(image):
  model = two_tower.TwoTower(image=two_tower._frozen(image), text=two_tower._frozen(TEXT),
                             embed_dim=12)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
  tokens = rng.integers(3, 32, (3, 8)).astype(np.int32)
  tokens[:, 5:] = 0
  tokens[1, 3:] = 0
  params = nn.meta.unbox(model.init(jax.random.key(0), images, tokens))["params"]
  return model, params, images, tokens


@pytest.mark.parametrize("image", list(IMAGES))
def test_encode_tokens_shapes_and_pooled_outputs_equal_encode(image):
  model, params, images, tokens = _tiny_model(IMAGES[image])
  apply = lambda method, *args: model.apply({"params": params}, *args, method=method)
  out = apply(model.encode_tokens, images, tokens)  # no new params: apply would fail
  patches = 4 if image != "cnn" else 16  # 8x8 images: 2x2 patches; cnn: 4x4 map
  assert out["image_tokens"].shape == (3, patches, 16)
  assert out["text_tokens"].shape == (3, 8, 16)
  np.testing.assert_array_equal(out["text_mask"], tokens != 0)
  np.testing.assert_array_equal(out["zimg"], apply(model.encode_image, images))
  np.testing.assert_array_equal(out["ztxt"], apply(model.encode_text, tokens))
  assert set(apply(model.encode_tokens, None, tokens)) == {"text_tokens", "text_mask", "ztxt"}
  assert set(apply(model.encode_tokens, images)) == {"image_tokens", "zimg"}


def test_trained_towers_and_evaluation_end_to_end():
  model, params, images, tokens = _tiny_model(IMAGES["vit_gap"])
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


def test_run_itm_on_shapes(tmp_path):
  from mmjax import configs
  from mmjax.data import tokenizer as tokenizer_lib
  from mmjax.train import build
  config = configs.base()
  config.data.image_size = 16
  config.model.image = dict(kind="vit", patch_size=8, width=16, depth=1, num_heads=2)
  config.model.text = dict(width=16, depth=1, num_heads=2)
  config.model.embed_dim = 8
  config.eval.num_images = 12
  config.eval.itm = {"num_train": 12, "steps": 2, "batch_size": 8}
  tok = tokenizer_lib.shapes_tokenizer(str(tmp_path))
  model = build.model(config, tok)
  ex = build.example_batch(config, batch_size=1)
  params = nn.meta.unbox(model.init(jax.random.key(0), ex["image"], ex["text"]))["params"]
  metrics = matching.run_itm(model, params, tok, config)
  assert set(metrics) == {"itm/contrastive/auc"} | {
      f"itm/{kind}/{m}" for kind in fusion.HEADS
      for m in ("accuracy", "precision", "recall", "f1", "auc")}
  assert all(np.isfinite(v) for v in metrics.values())
