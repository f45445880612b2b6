"""Tests for mmjax/eval/retrieval.py against a brute-force sort-based reference."""

import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.eval import retrieval
from mmjax.eval.retrieval import format_table, retrieval_metrics, retrieval_ranks

CONTRACT_KEYS = {
    *(f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)),
    "image_to_text_mean_rank", "image_to_text_median_rank",
    "text_to_image_mean_rank", "text_to_image_median_rank",
}


def reference_ranks(image_emb, text_emb, text_to_image):
  """Full similarity matrix + stable sort on (-score, is_match).

  Among equal scores non-matches sort first (False < True), so the first match
  in the sorted order has the pessimistic rank.
  """
  sim = np.asarray(image_emb, np.float64) @ np.asarray(text_emb, np.float64).T
  t2i = np.asarray(text_to_image)
  is_match = t2i[None, :] == np.arange(sim.shape[0])[:, None]  # [N, M]

  def first_match_rank(scores, matches):
    order = np.lexsort((matches, -scores))  # last key is the primary one.
    return int(np.flatnonzero(matches[order])[0]) + 1

  i2t = np.array([first_match_rank(sim[i], is_match[i]) for i in range(sim.shape[0])])
  t2i_r = np.array([first_match_rank(sim[:, j], is_match[:, j])
                    for j in range(sim.shape[1])])
  return i2t, t2i_r


def reference_metrics(i2t, t2i, ks=(1, 5, 10)):
  out = {}
  for d, r in (("image_to_text", i2t), ("text_to_image", t2i)):
    for k in ks:
      out[f"{d}_R@{k}"] = sum(int(x) <= k for x in r) / len(r)
    out[f"{d}_mean_rank"] = sum(int(x) for x in r) / len(r)
    s = sorted(int(x) for x in r)
    mid = len(s) // 2
    out[f"{d}_median_rank"] = s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
  return out


def make_data(seed, n=12, d=8, max_caps=4, quantised=False):
  """n images with 1..max_caps captions each, captions in shuffled order."""
  rng = np.random.default_rng(seed)
  counts = rng.integers(1, max_caps + 1, size=n)
  t2i = rng.permutation(np.repeat(np.arange(n), counts))
  if quantised:
    # Few distinct small-integer vectors: exact ties in float32 and float64.
    img = rng.integers(-1, 2, size=(n, d)).astype(np.float32)
    txt = rng.integers(-1, 2, size=(len(t2i), d)).astype(np.float32)
  else:
    img = rng.normal(size=(n, d)).astype(np.float32)
    txt = (img[t2i] + rng.normal(size=(len(t2i), d))).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
  return img, txt, t2i


# n=12 images, ~30 captions: chunk 1, 5 (divides neither), 12 (= N), 7, 2048.
@pytest.mark.parametrize("chunk_size", [1, 5, 7, 12, 2048])
@pytest.mark.parametrize("quantised", [False, True])
def test_matches_reference(chunk_size, quantised):
  img, txt, t2i = make_data(seed=3 if quantised else 4, quantised=quantised)
  want_i2t, want_t2i = reference_ranks(img, txt, t2i)
  got_i2t, got_t2i = retrieval_ranks(img, txt, t2i, chunk_size=chunk_size)
  assert got_i2t.shape == (12,) and got_t2i.shape == (len(t2i),)
  np.testing.assert_array_equal(got_i2t, want_i2t)
  np.testing.assert_array_equal(got_t2i, want_t2i)

  got = retrieval_metrics(img, txt, t2i, chunk_size=chunk_size)
  assert set(got) == CONTRACT_KEYS
  assert all(type(v) is float for v in got.values())
  want = reference_metrics(want_i2t, want_t2i)
  for key in CONTRACT_KEYS:
    assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_quantised_data_really_has_ties_that_change_ranks():
  img, txt, t2i = make_data(seed=3, quantised=True)
  sim = img.astype(np.float64) @ txt.T.astype(np.float64)
  i2t, t2i_r = reference_ranks(img, txt, t2i)
  # Optimistic ranks (ties resolved in the model's favour) must differ somewhere,
  # else the tie rule is not exercised.
  match = t2i[None, :] == np.arange(len(img))[:, None]
  optimistic_t2i = np.array([
      1 + np.sum(sim[:, j] > sim[t2i[j], j]) for j in range(len(t2i))])
  assert (optimistic_t2i != t2i_r).sum() >= 3
  best = np.where(match, sim, -np.inf).max(1)
  optimistic_i2t = 1 + np.sum(~match & (sim > best[:, None]), axis=1)
  assert (optimistic_i2t != i2t).sum() >= 1


def test_tiny_hand_example():
  # 3 images, captions: 0->img0, 1->img0, 2->img1, 3->img2.
  img = np.eye(3, dtype=np.float32)
  txt = np.array([[0, 1, 0],     # caption of img0 that looks like img1
                  [1, 0, 0],     # caption of img0, correct
                  [0.5, 0.5, 0],  # caption of img1: ties img0 and img1
                  [0, 0, 0]],    # caption of img2: ties everything at 0
                 np.float32)
  i2t, t2i = retrieval_ranks(img, txt, [0, 0, 1, 2], chunk_size=2)
  # img0 scores captions (0, 1, .5, 0): best match is caption1 (1.0), rank 1.
  # img1 scores (1, 0, .5, 0): caption0 beats its caption2 -> rank 2.
  # img2 scores (0, 0, 0, 0): its caption3 ties with 3 others -> rank 4.
  np.testing.assert_array_equal(i2t, [1, 2, 4])
  # caption0 scores imgs (0, 1, 0): img0 at 0 ties img2, loses to img1 -> 3.
  # caption1 -> 1. caption2 (.5, .5, 0) ties img0 -> 2. caption3 all 0 -> 3.
  np.testing.assert_array_equal(t2i, [3, 1, 2, 3])


def test_perfect_model():
  n = 10
  img = np.eye(16, dtype=np.float32)[:n]
  t2i = np.array([0, 0, 1, 2, 2, 2, 3, 4, 5, 6, 7, 8, 8, 9])
  txt = img[t2i]
  m = retrieval_metrics(img, txt, t2i, chunk_size=3)
  for d in ("image_to_text", "text_to_image"):
    for k in (1, 5, 10):
      assert m[f"{d}_R@{k}"] == 1.0
    assert m[f"{d}_mean_rank"] == 1.0 and m[f"{d}_median_rank"] == 1.0


def test_constant_model_gets_worst_ranks():
  n = 12
  t2i = np.repeat(np.arange(n), [1, 2, 3] * 4)  # M = 24
  m_caps = len(t2i)
  img = np.full((n, 4), 0.5, np.float32)
  txt = np.full((m_caps, 4), 0.5, np.float32)
  i2t, t2i_r = retrieval_ranks(img, txt, t2i, chunk_size=5)
  counts = np.bincount(t2i)
  # Every non-matching caption ties the best match.
  np.testing.assert_array_equal(i2t, 1 + m_caps - counts)
  np.testing.assert_array_equal(t2i_r, np.full(m_caps, n))
  m = retrieval_metrics(img, txt, t2i, chunk_size=5)
  for k in (1, 5, 10):
    assert m[f"text_to_image_R@{k}"] == 0.0
    assert m[f"image_to_text_R@{k}"] == 0.0  # best rank is 1 + 24 - 3 = 22.
  assert m["text_to_image_mean_rank"] == n
  assert m["text_to_image_median_rank"] == n
  assert m["image_to_text_mean_rank"] == pytest.approx(1 + m_caps - 2)
  assert m["image_to_text_median_rank"] == 1 + m_caps - 2


def test_dtypes_jax_inputs_and_custom_ks():
  img, txt, t2i = make_data(seed=5, n=6, d=8)
  want = reference_metrics(*reference_ranks(img, txt, t2i), ks=(2, 6))
  for a, b, ids in [(img.astype(np.float64), txt.astype(np.float64), t2i),
                    (jnp.asarray(img), jnp.asarray(txt), jnp.asarray(t2i)),
                    (img.astype(np.float16), txt.astype(np.float16), list(t2i))]:
    got = retrieval_metrics(a, b, ids, ks=(2, 6), chunk_size=4)
    assert set(got) == set(want)
    if a.dtype == np.float16:  # Rounding may reorder near-ties; just sanity-check.
      assert 0 <= got["image_to_text_R@2"] <= got["image_to_text_R@6"] <= 1
    else:
      for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_compiles_once_per_chunk_shape():
  cache_size = getattr(retrieval._rank_chunk, "_cache_size", None)
  if cache_size is None:
    pytest.skip("jax.jit has no _cache_size in this version")
  img, txt, t2i = make_data(seed=6, n=11, d=5)
  before = cache_size()
  retrieval_ranks(img, txt, t2i, chunk_size=3)  # 4 image chunks, >= 4 text chunks.
  # One program per direction (gallery shapes differ), not one per chunk.
  assert cache_size() - before <= 2


def _valid():
  img = np.eye(12, dtype=np.float32)
  t2i = np.arange(12)
  return img, img.copy(), t2i


@pytest.mark.parametrize("mutate, pattern", [
    (lambda i, t, ids: (i[:0], t, ids), r"at least one image.*N=0"),
    (lambda i, t, ids: (i, t[:0], ids[:0]), r"at least one image.*M=0"),
    (lambda i, t, ids: (i, t[:, :6], ids), r"image_emb has D=12, text_emb has D=6"),
    (lambda i, t, ids: (i[0], t, ids), r"image_emb must be 2-D"),
    (lambda i, t, ids: (i, t, ids[:-1]), r"text_to_image must be 1-D of length M=12"),
    (lambda i, t, ids: (i, t, ids[:, None]), r"text_to_image must be 1-D"),
    (lambda i, t, ids: (i, t, ids.astype(np.float32)), r"integer image indices"),
    (lambda i, t, ids: (i, t, np.where(ids == 4, 12, ids)),
     r"text_to_image\[4\] = 12 is out of range.*N=12"),
    (lambda i, t, ids: (i, t, np.where(ids == 2, -1, ids)),
     r"text_to_image\[2\] = -1 is out of range"),
    (lambda i, t, ids: (i, t, np.where(ids >= 10, 0, ids)),
     r"image\(s\) 10, 11 have no caption"),
    (lambda i, t, ids: (np.where(np.eye(12) > 0, np.nan, i), t, ids),
     r"image_emb contains NaN or Inf"),
    (lambda i, t, ids: (i, np.where(np.eye(12) > 0, np.inf, t), ids),
     r"text_emb contains NaN or Inf"),
    (lambda i, t, ids: (i.astype(np.int32), t, ids), r"image_emb must be a float"),
])
def test_validation_errors(mutate, pattern):
  img, txt, ids = mutate(*_valid())
  with pytest.raises(ValueError, match=pattern):
    retrieval_metrics(img, txt, ids)


def test_k_larger_than_gallery():
  img, txt, ids = _valid()
  with pytest.raises(ValueError, match=r"K=13 .*image_to_text gallery \(12 captions\)"):
    retrieval_metrics(img, txt, ids, ks=(1, 13))
  # 12 captions but only 8 images: K=10 fits the caption gallery, not the image
  # one. Asked for explicitly, that is an error; the default ks leave it out
  # instead (tests/eval/test_small_gallery.py).
  with pytest.raises(ValueError, match=r"K=10 .*text_to_image gallery \(8 images\)"):
    retrieval_metrics(img[:8], txt, ids % 8, ks=(1, 5, 10))
  assert "text_to_image_R@10" not in retrieval_metrics(img[:8], txt, ids % 8)
  with pytest.raises(ValueError, match=r"positive int, got 0"):
    retrieval_metrics(img, txt, ids, ks=(0,))
  with pytest.raises(ValueError, match=r"chunk_size must be a positive int"):
    retrieval_metrics(img, txt, ids, chunk_size=0)


def test_format_table():
  m = {"image_to_text_R@1": 0.5, "image_to_text_R@5": 0.75, "image_to_text_R@10": 1.0,
       "image_to_text_mean_rank": 2.25, "image_to_text_median_rank": 1.5,
       "text_to_image_R@1": 0.25, "text_to_image_R@5": 0.5, "text_to_image_R@10": 0.875,
       "text_to_image_mean_rank": 12.0, "text_to_image_median_rank": 3.0, "step": 7}
  lines = format_table(m).splitlines()
  assert len(lines) == 3
  assert lines[0].split() == ["R@1", "R@5", "R@10", "mean_rank", "median_rank"]
  assert lines[1].split() == ["image->text", "0.5000", "0.7500", "1.0000", "2.25", "1.5"]
  assert lines[2].split() == ["text->image", "0.2500", "0.5000", "0.8750", "12.00", "3.0"]
  assert len({len(line) for line in lines}) == 1  # aligned columns
  # Rows named by `labels` (another pair), the numbers unchanged.
  named = format_table(m, labels=("image->sketch", "sketch->image")).splitlines()
  assert len(named) == 3
  assert named[0].split() == lines[0].split()
  assert named[1].split() == ["image->sketch", *lines[1].split()[1:]]
  assert named[2].split() == ["sketch->image", *lines[2].split()[1:]]
  assert len({len(line) for line in named}) == 1


@pytest.mark.parametrize("quantised", [False, True])
def test_top_k_matches_a_full_sort(quantised):
  img, txt, _ = make_data(seed=7, n=13, d=6, quantised=quantised)
  scores, indices = retrieval.top_k(txt, img, 5, chunk_size=4)
  sim = txt.astype(np.float64) @ img.astype(np.float64).T
  for q in range(len(txt)):
    # Stable sort on -score: equal scores keep the lower gallery index first.
    order = np.argsort(-sim[q], kind="stable")[:5]
    np.testing.assert_allclose(scores[q], sim[q][order], atol=1e-6)
    if quantised:  # integer scores: the tie order is exact
      np.testing.assert_array_equal(indices[q], order)
    else:
      np.testing.assert_array_equal(np.sort(indices[q]), np.sort(order))


def test_top_k_rejects_k_beyond_the_gallery():
  img, txt, _ = make_data(seed=8, n=4)
  with pytest.raises(ValueError, match=r"k=5 must be in \[1, 4\]"):
    retrieval.top_k(txt, img, 5)
