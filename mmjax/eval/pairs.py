"""Pairs and scores for image-text matching: hard-negative mining and binary metrics.

`make_pairs` builds balanced positive / hard-negative (image, caption) pairs
from contrastive embeddings (see `mmjax.train.matching` for how they are used);
`binary_metrics` and `roc_auc` score a matcher's logits on them, and
`multiclass_metrics` a classifier's (the fusion heads'), with the same
definitions per class.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

_MINE_ROWS = 512  # queries scored per mining call: [512, C] similarities at a time
_PAIR_STREAM = 7_919  # keeps make_pairs' coins apart from other uses of the seed


# --- metrics -----------------------------------------------------------------

def roc_auc(scores, labels) -> float:
  """Area under the ROC curve: P(score of a positive > score of a negative),
  ties counting 1/2 (the Mann-Whitney U statistic over average ranks).

  scores: [P] float; labels: [P] bool or {0, 1}, both classes present.
  """
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels).astype(bool)
  n_pos, n_neg = int(labels.sum()), int((~labels).sum())
  if not n_pos or not n_neg:
    raise ValueError(f"ROC AUC needs positives and negatives; got {n_pos} positives "
                     f"and {n_neg} negatives.")
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  # A run of t tied scores starting after rank s holds ranks s+1 .. s+t: mean s + (t+1)/2.
  starts = np.cumsum(counts) - counts
  ranks = starts[inverse] + (counts[inverse] + 1) / 2
  return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(logits, labels, threshold: float = 0.0) -> dict[str, float]:
  """Accuracy, precision, recall, F1 of `logits > threshold`, and ROC AUC.

  logits: [P] float; labels: [P] bool or {0, 1}. Precision (recall) is 0 when
  nothing is predicted (labelled) positive, and so is F1 when both are 0.
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels).astype(bool)
  pred = logits > threshold
  return {"accuracy": float((pred == labels).mean()), **_precision_recall_f1(pred, labels),
          "auc": roc_auc(logits, labels)}


def _precision_recall_f1(pred, labels) -> dict[str, float]:
  """Of the positive class; pred, labels: [P] bool. 0 for what has no denominator."""
  tp = int((pred & labels).sum())
  precision = tp / max(int(pred.sum()), 1)
  recall = tp / max(int(labels.sum()), 1)
  f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
  return {"precision": precision, "recall": recall, "f1": f1}


def multiclass_metrics(logits, labels) -> dict[str, float]:
  """Accuracy of the argmax, and macro-averaged precision, recall, F1 and
  one-vs-rest ROC AUC.

  Each class k is scored as binary_metrics scores the positive class, with
  "predicted k" (argmax, ties to the lower class) against "labelled k":
  precision, recall and F1 with the same conventions, then averaged over the
  classes that occur in labels or predictions (scikit-learn's macro average).
  The AUC of class k ranks examples by its softmax probability (as
  scikit-learn's multi_class="ovr" does) and is averaged over the classes
  that occur in labels: a class no example has has no ROC curve. For K = 2
  the accuracy and AUC are binary_metrics' of logit_1 - logit_0.

  logits: [P, K] float; labels: [P] ints in [0, K), at least two classes present.
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels)
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(f"multiclass_metrics takes logits [P, K] and labels [P]; got "
                     f"{logits.shape} and {labels.shape}.")
  k = logits.shape[1]
  if labels.size and (labels.min() < 0 or labels.max() >= k):
    raise ValueError(f"labels must be class indices in [0, {k}); got values from "
                     f"{labels.min()} to {labels.max()}.")
  present = np.unique(labels)
  if len(present) < 2:
    raise ValueError(f"multiclass_metrics needs examples of two or more classes; the labels "
                     f"hold {present.tolist()} only.")
  pred = logits.argmax(axis=1)
  per_class = [_precision_recall_f1(pred == c, labels == c)
               for c in np.union1d(present, pred)]
  # Log-probabilities rank as the probabilities do, but a confident head's
  # small probabilities do not underflow to ties at 0.
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  return {"accuracy": float((pred == labels).mean()),
          **{key: float(np.mean([m[key] for m in per_class]))
             for key in ("precision", "recall", "f1")},
          "auc": float(np.mean([roc_auc(log_probs[:, c], labels == c) for c in present]))}


# --- hard negatives and pairs ------------------------------------------------

def sample_hard_negatives(keys, sim, same, top_k: int):
  """One hard negative per row: uniform over the row's top_k most similar
  columns that do not match it. jit-safe.

  keys: [R] PRNG keys, one per row (a row's draw does not depend on which rows
  share its call); sim: [R, C] float; same: [R, C] bool, True where column c
  matches row r (never a negative). Returns (index [R] int32, ok [R] bool): ok
  is False for a row without any non-matching column.
  """
  k = min(top_k, sim.shape[1])
  values, index = jax.lax.top_k(jnp.where(same, -jnp.inf, sim.astype(jnp.float32)), k)
  valid = values > -jnp.inf  # fewer than k non-matches: draw among those there are
  pick = jax.vmap(jax.random.categorical)(keys, jnp.where(valid, 0.0, -jnp.inf))
  return jnp.take_along_axis(index, pick[:, None], axis=1)[:, 0], valid[:, 0]


@functools.partial(jax.jit, static_argnames="top_k")
def _mine_chunk(key, rows, query, query_group, gallery, gallery_group, top_k):
  keys = jax.vmap(jax.random.fold_in, (None, 0))(key, rows)
  same = query_group[:, None] == gallery_group[None, :]
  return sample_hard_negatives(keys, query @ gallery.T, same, top_k)


def mine_hard_negatives(query, query_group, gallery, gallery_group, *, top_k: int,
                        key, rows=None):
  """For each query, a hard negative from the gallery (see sample_hard_negatives).

  query: [R, D], gallery: [C, D] embeddings; query_group: [R], gallery_group:
  [C] ints (equal group = a match); key: PRNG key; rows: [R] ints naming the
  queries (default 0..R-1): query r's draw is keyed by fold_in(key, rows[r]).
  Scored in chunks of rows, never R x C at once. Returns numpy (index [R], ok [R]).
  """
  n = len(query)
  rows = np.arange(n) if rows is None else np.asarray(rows)
  if n == 0:
    return np.zeros(0, np.int32), np.zeros(0, bool)
  size = _MINE_ROWS  # every call has this shape: one compile per gallery size
  index, ok = [], []
  for start in range(0, n, size):
    chunk = np.arange(start, min(start + size, n))
    padded = np.pad(chunk, (0, size - len(chunk)), mode="edge")
    i, o = _mine_chunk(key, rows[padded], query[padded], query_group[padded], gallery,
                       gallery_group, top_k)
    index.append(np.asarray(i)[:len(chunk)])
    ok.append(np.asarray(o)[:len(chunk)])
  return np.concatenate(index), np.concatenate(ok)


def _random_negatives(rng, query_group, gallery_group, tries: int = 64):
  """For each query, a uniform gallery item of another group: (index, ok)."""
  index = rng.integers(len(gallery_group), size=len(query_group))
  for _ in range(tries):
    bad = gallery_group[index] == query_group
    if not bad.any():
      break
    index[bad] = rng.integers(len(gallery_group), size=int(bad.sum()))
  return index, gallery_group[index] != query_group


def make_pairs(zimg, ztxt, text_to_image, image_group=None, *, top_k: int = 16,
               seed: int = 0, easy_fraction: float = 0.0,
               pool: int | None = None) -> dict[str, np.ndarray]:
  """Balanced matching pairs: every positive and one negative for each (see the
  module docstring).

  zimg: [N, D], ztxt: [M, D] unit-norm; text_to_image: [M] ints; image_group:
  [N] ints (default: each image its own group); pool: hard negatives are mined
  within consecutive blocks of `pool` images (and their captions), default all N.
  Returns {"image": int32 [P], "text": int32 [P], "label": float32 [P]}: the M
  positives, then their negatives (P = 2M, less one per positive with no
  non-matching item at all).
  """
  zimg, ztxt = np.asarray(zimg, np.float32), np.asarray(ztxt, np.float32)
  t2i = np.asarray(text_to_image, np.int64)
  m = len(t2i)
  group = np.arange(len(zimg)) if image_group is None else np.asarray(image_group)
  text_group = group[t2i]
  rng = np.random.default_rng([seed, _PAIR_STREAM])
  swap_text = rng.random(m) < 0.5
  easy = rng.random(m) < easy_fraction
  neg_image, neg_text, ok = t2i.copy(), np.arange(m), np.ones(m, bool)
  key = jax.random.key(seed)

  block = np.arange(len(zimg)) // (pool or max(len(zimg), 1))
  for b in np.unique(block):
    images, captions = np.flatnonzero(block == b), np.flatnonzero(block[t2i] == b)
    mine = lambda side, rows, query, gallery, gallery_group: mine_hard_negatives(
        query, text_group[rows], gallery, gallery_group, top_k=top_k,
        key=jax.random.fold_in(key, side), rows=rows)
    rows = captions[swap_text[captions] & ~easy[captions]]  # image -> a hard caption
    index, ok[rows] = mine(0, rows, zimg[t2i[rows]], ztxt[captions], text_group[captions])
    neg_text[rows] = captions[index]
    rows = captions[~swap_text[captions] & ~easy[captions]]  # caption -> a hard image
    index, ok[rows] = mine(1, rows, ztxt[rows], zimg[images], group[images])
    neg_image[rows] = images[index]
  rows = np.flatnonzero(swap_text & easy)
  neg_text[rows], ok[rows] = _random_negatives(rng, text_group[rows], text_group)
  rows = np.flatnonzero(~swap_text & easy)
  neg_image[rows], ok[rows] = _random_negatives(rng, text_group[rows], group)

  return {"image": np.concatenate([t2i, neg_image[ok]]).astype(np.int32),
          "text": np.concatenate([np.arange(m), neg_text[ok]]).astype(np.int32),
          "label": np.concatenate([np.ones(m), np.zeros(int(ok.sum()))]).astype(np.float32)}
