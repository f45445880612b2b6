"""Fusion classifiers on frozen features (mmjax/train/fusion.py): each fusion_n
head trained on synthetic features where one modality plainly carries the
label, then scored; the cross-attention head's padding mask on trained params;
the weighted sum's weights after training.

The features have the shapes of tests/data/test_shapes_fusion.py's tiny
three-tower model and its evaluator settings (256 training examples, 30 test
images with 5 captions each, batches of 64, 8 classes), so the two files
compile the same programs and share them through the session's compilation
cache (tests/conftest.py)."""

import numpy as np
import pytest

from mmjax.eval import pairs
from mmjax.models.heads import fusion_n
from mmjax.train import fusion

MODALITIES = ("image", "sketch", "text")  # the evaluator's order: the config's, sorted
# (tokens, width) per modality: the tiny model's ViTs on 16 px (2 x 2 patches)
# and its text transformer (24 tokens); every tower projects to 8 dims.
TOKENS = {"image": (4, 16), "text": (24, 16), "sketch": (4, 16)}
EMBED, K = 8, 8
OPTIONS = {"concat_mlp": dict(hidden=32), "weighted_sum": dict(hidden=32),
           "cross_attention": dict(width=16, num_heads=2, num_queries=2)}
SETTINGS = dict(steps=150, batch_size=64, lr=3e-3, seed=0)


def _unit(x):
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def synthetic(labels, items, seed):
  """Features of `items` {modality: N_m} whose item i has class labels[i]
  plainly in the image modality: its embedding points at the class's
  direction, and one of its tokens (at a random place) is the class's
  vector. Text and sketch are noise; text is padded after 3..24 tokens.
  """
  rng = np.random.default_rng(seed)
  classes = np.random.default_rng(99).normal(size=(K, 16)).astype(np.float32)
  feats = {}
  for m, n in items.items():
    t, w = TOKENS[m]
    feats[f"z/{m}"] = _unit(rng.normal(size=(n, EMBED)))
    feats[f"tokens/{m}"] = rng.normal(size=(n, t, w)).astype(np.float32)
  y = labels[:items["image"]]
  feats["z/image"] = _unit(np.eye(K, EMBED)[y] * 2 + 0.3 * rng.normal(size=(len(y), EMBED)))
  where = rng.integers(TOKENS["image"][0], size=len(y))
  feats["tokens/image"][np.arange(len(y)), where] = 2 * classes[y]
  length = rng.integers(3, 25, items["text"])
  feats["mask/text"] = np.arange(24)[None, :] < length[:, None]
  return feats


@pytest.fixture(scope="module")
def trained():
  """{kind: (head, params, train logits fn)} trained on 256 examples, and the
  test set: 30 images, each with 5 captions (rows)."""
  rng = np.random.default_rng(0)
  y_train = rng.integers(K, size=256)
  train = synthetic(y_train, {m: 256 for m in MODALITIES}, seed=1)
  y_images = rng.integers(K, size=30)
  t2i = np.repeat(np.arange(30), 5)
  test = synthetic(y_images, {"image": 30, "sketch": 30, "text": 150}, seed=2)
  rows = {"image": t2i, "sketch": t2i, "text": np.arange(150)}
  heads = {}
  for kind in fusion_n.HEADS:
    head = fusion_n.make_head(kind, MODALITIES, K, **OPTIONS[kind])
    heads[kind] = (head, fusion.train_classifier(head, train, y_train, **SETTINGS))
  return heads, test, rows, y_images[t2i]


@pytest.mark.parametrize("kind", list(fusion_n.HEADS))
def test_a_head_finds_the_modality_that_carries_the_label(trained, kind):
  heads, test, rows, labels = trained
  head, params = heads[kind]
  logits = fusion.classifier_logits(head, params, test, len(labels), rows)
  assert logits.shape == (150, K) and logits.dtype == np.float32
  metrics = fusion.evaluate_classifier(head, params, test, labels, rows)
  assert metrics == pairs.multiclass_metrics(logits, labels)
  assert metrics["accuracy"] > 0.9 and metrics["f1"] > 0.85, metrics
  if kind == "weighted_sum":  # the vote moved to the modality that knows
    weights = fusion_n.modality_weights(head, params)
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-6)
    assert weights["image"] > 0.6, weights


def test_rows_pick_each_examples_items(trained):
  heads, test, rows, labels = trained
  head, params = heads["concat_mlp"]
  expanded = {k: v[rows[k.split("/", 1)[1]]] for k, v in test.items()}
  np.testing.assert_allclose(fusion.classifier_logits(head, params, test, 150, rows),
                             fusion.classifier_logits(head, params, expanded, 150),
                             atol=1e-6)


def test_trained_cross_attention_ignores_text_padding(trained):
  heads, test, rows, _ = trained
  head, params = heads["cross_attention"]
  logits = fusion.classifier_logits(head, params, test, 150, rows)
  pad = ~test["mask/text"]
  noisy = {**test, "tokens/text": np.where(pad[..., None], 50.0, test["tokens/text"])}
  np.testing.assert_allclose(fusion.classifier_logits(head, params, noisy, 150, rows), logits,
                             atol=1e-5)
  # Without the mask the same padding does move the logits.
  unmasked = {**noisy, "mask/text": np.ones_like(pad)}
  moved = fusion.classifier_logits(head, params, unmasked, 150, rows)
  assert np.abs(moved - logits).max() > 1e-3


def test_features_a_head_cannot_read_are_named():
  head = fusion_n.make_head("cross_attention", ("image",), K, **OPTIONS["cross_attention"])
  z_only = {"z/image": np.zeros((4, EMBED), np.float32)}
  with pytest.raises(ValueError, match="reads token sequences.*tokens=True"):
    fusion.train_classifier(head, z_only, np.zeros(4, int), steps=1)
  head = fusion_n.make_head("concat_mlp", ("image", "audio"), K)
  with pytest.raises(ValueError, match="reads modality 'audio'.*modality_features for 'audio'"):
    fusion.train_classifier(head, z_only, np.zeros(4, int), steps=1)
