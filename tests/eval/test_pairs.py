"""Tests for mmjax/eval/pairs.py: ROC AUC and binary metrics against brute force,
and hard-negative mining and pair making on hand-built embeddings."""

import jax
import numpy as np
import pytest

from mmjax.eval import pairs as pairs_lib

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


def confusion_metrics(logits, labels):
  """Macro precision, recall, F1 from a confusion matrix over the classes seen
  in labels or predictions, and the one-vs-rest AUC over softmax probabilities
  by pairwise counting: multiclass_metrics' definitions, computed another way."""
  k = logits.shape[1]
  pred = logits.argmax(1)
  cm = np.zeros((k, k), int)  # rows: labels, columns: predictions
  np.add.at(cm, (labels, pred), 1)
  seen = (cm.sum(0) + cm.sum(1)) > 0
  tp = np.diag(cm)[seen].astype(float)
  precision = np.where(cm.sum(0)[seen] > 0, tp / np.maximum(cm.sum(0)[seen], 1), 0)
  recall = np.where(cm.sum(1)[seen] > 0, tp / np.maximum(cm.sum(1)[seen], 1), 0)
  f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0)
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  aucs = [brute_force_auc(probs[:, c], labels == c) for c in np.unique(labels)]
  return {"accuracy": np.trace(cm) / len(labels), "precision": precision.mean(),
          "recall": recall.mean(), "f1": f1.mean(), "auc": np.mean(aucs)}


def test_multiclass_metrics_equal_scikit_learns_on_a_constructed_case():
  logits = np.array([[2.0, 0.5, -1.0], [0.1, 1.5, 0.3], [-0.5, 0.2, 2.2], [1.0, 1.2, -0.3],
                     [0.3, -0.2, 0.9], [2.5, -1.0, 0.0], [-1.0, 0.4, 0.1], [0.0, 2.0, 1.9],
                     [0.7, 0.6, 0.8], [1.1, -0.4, 0.2]])
  # scikit-learn 1.9.1: accuracy_score; precision_recall_fscore_support(average="macro",
  # zero_division=0); roc_auc_score(labels, softmax(logits), multi_class="ovr").
  m = pairs_lib.multiclass_metrics(logits, np.array([0, 1, 2, 0, 2, 0, 1, 2, 1, 2]))
  assert m == pytest.approx({"accuracy": 0.6, "precision": 0.611111111111111,
                             "recall": 0.611111111111111, "f1": 0.6031746031746031,
                             "auc": 0.9246031746031745}, abs=1e-12)
  # Class 2 predicted but never labelled: it counts in the macro average (with
  # precision, recall and F1 0), not in the AUC.
  m = pairs_lib.multiclass_metrics(logits, np.array([0, 1, 1, 0, 1, 0, 1, 1, 1, 0]))
  assert m["accuracy"] == pytest.approx(0.6)
  assert (m["precision"], m["recall"], m["f1"]) == pytest.approx(
      (0.5833333333333334, 0.4166666666666667, 0.4857142857142857), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_multiclass_metrics_equal_a_confusion_matrix_count(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 5, 120)
  logits = rng.normal(size=(120, 6)) + 1.5 * np.eye(6)[labels]  # class 5: never labelled
  logits[:10] = np.round(logits[:10])  # some tied probabilities
  m = pairs_lib.multiclass_metrics(logits, labels)
  want = confusion_metrics(logits, labels)
  assert m == pytest.approx(want, abs=1e-12)
  assert all(isinstance(v, float) for v in m.values())


def test_two_classes_agree_with_binary_metrics():
  rng = np.random.default_rng(0)
  labels = rng.random(300) < 0.4
  logits = rng.normal(size=(300, 2)) + np.stack([~labels, labels], 1)
  m = pairs_lib.multiclass_metrics(logits, labels.astype(int))
  d = logits[:, 1] - logits[:, 0]
  positive, negative = pairs_lib.binary_metrics(d, labels), pairs_lib.binary_metrics(-d, ~labels)
  assert m["accuracy"] == positive["accuracy"] == negative["accuracy"]
  assert m["auc"] == pytest.approx(positive["auc"], abs=1e-12)
  for key in ("precision", "recall", "f1"):  # the macro average of both classes
    assert m[key] == pytest.approx((positive[key] + negative[key]) / 2, abs=1e-12)


def test_multiclass_metrics_reject_what_they_cannot_score():
  with pytest.raises(ValueError, match=r"two or more classes; the labels hold \[1\] only"):
    pairs_lib.multiclass_metrics(np.zeros((3, 2)), [1, 1, 1])
  with pytest.raises(ValueError, match=r"logits \[P, K\] and labels \[P\]"):
    pairs_lib.multiclass_metrics(np.zeros(3), [0, 1, 0])
  with pytest.raises(ValueError, match=r"class indices in \[0, 2\); got values from 0 to 2"):
    pairs_lib.multiclass_metrics(np.zeros((3, 2)), [0, 1, 2])


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
