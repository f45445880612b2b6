"""Tests for mmjax/eval/zeroshot.py: scoring against a brute-force loop, prompt
ensembling and bad inputs. The shapes dataset's tasks are tested in
tests/data/test_shapes_zeroshot.py."""

import numpy as np
import pytest

from mmjax.eval.zeroshot import class_embeddings, classify, prompt_embeddings


# --- classify --------------------------------------------------------------------

def reference(image_emb, class_emb, labels, ks):
  """One image at a time: pessimistic rank and prediction, then the metrics."""
  img = np.asarray(image_emb, np.float64)
  cls = np.asarray(class_emb, np.float64)
  c = cls.shape[-2]
  ranks, preds = [], []
  for i, y in enumerate(labels):
    s = (cls[i] if cls.ndim == 3 else cls) @ img[i]
    wrong = [j for j in range(c) if j != y]
    ranks.append(1 + sum(s[j] >= s[y] for j in wrong))
    best = max(s[j] for j in wrong)
    # Strictly best -> right; otherwise the first wrong class among the best.
    preds.append(y if s[y] > best else next(j for j in wrong if s[j] == best))
  confusion = np.zeros((c, c), np.int64)
  for y, p in zip(labels, preds):
    confusion[y, p] += 1
  per_class = {}
  for k in range(c):
    members = [i for i, y in enumerate(labels) if y == k]
    if members:
      per_class[k] = sum(preds[i] == k for i in members) / len(members)
  out = {f"top{k}": sum(r <= k for r in ranks) / len(ranks) for k in ks if k < c}
  out.update(per_class=per_class, confusion=confusion,
             mean_per_class=sum(per_class.values()) / len(per_class))
  return out


def check_against_reference(got, want):
  assert set(got) == set(want) | {"num_images"}
  for key in want:
    if key == "confusion":
      np.testing.assert_array_equal(got[key], want[key])
    elif key == "per_class":
      assert got[key].keys() == want[key].keys()
      for name in want[key]:
        assert got[key][name] == pytest.approx(want[key][name])
    else:
      assert got[key] == pytest.approx(want[key]), key


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("quantised", [False, True])
def test_classify_matches_brute_force_loop(seed, per_image, quantised):
  rng = np.random.default_rng(seed)
  n, c, d = 37, 7, 5
  labels = rng.integers(0, c, n)
  shape = (n, c, d) if per_image else (c, d)
  if quantised:
    # Few distinct small-integer vectors: exact ties, and duplicate classes.
    img = rng.integers(-1, 2, (n, d)).astype(np.float32)
    cls = rng.integers(-1, 2, shape).astype(np.float32)
  else:
    img = rng.normal(size=(n, d)).astype(np.float32)
    cls = rng.normal(size=shape).astype(np.float32)
  ks = (1, 2, 5, 7, 9)
  got = classify(img, cls, labels, ks=ks, chunk_size=8)  # several chunks, the last short
  check_against_reference(got, reference(img, cls, labels, ks))
  assert got["num_images"] == n and got["confusion"].sum() == n
  if quantised:  # the case is only a test of ties if it has some
    s = img @ cls.T if not per_image else np.einsum("nd,ncd->nc", img, cls)
    assert any(len(set(row)) < c for row in s)


def test_equal_scores_count_against_the_model():
  img = np.ones((5, 3), np.float32)
  cls = np.tile([[1.0, 0.0, 0.0]], (4, 1)).astype(np.float32)  # every class alike
  out = classify(img, cls, np.array([0, 1, 2, 3, 3]), ks=(1, 2, 3))
  assert out["top1"] == out["top2"] == out["top3"] == 0.0
  assert out["mean_per_class"] == 0.0
  # Ties go to the lowest-index wrong class.
  np.testing.assert_array_equal(np.argmax(out["confusion"], axis=1), [1, 0, 0, 0])


@pytest.mark.parametrize("c, keys", [(2, {"top1"}), (4, {"top1"}), (5, {"top1"}),
                                     (6, {"top1", "top5"}), (8, {"top1", "top5"})])
def test_top_k_is_reported_only_below_the_number_of_classes(c, keys):
  rng = np.random.default_rng(c)
  out = classify(rng.normal(size=(10, 3)), rng.normal(size=(c, 3)),
                 rng.integers(0, c, 10))
  assert {k for k in out if k.startswith("top")} == keys


def test_per_class_accuracy_and_confusion_on_a_constructed_case():
  cls = np.eye(4, dtype=np.float32)  # class k points along axis k
  names = ("circle", "square", "ring", "cross")
  # (true label, the axis the image points along)
  cases = [(0, 0), (0, 0), (0, 1), (1, 1), (1, 0), (1, 0), (2, 2), (2, 2), (2, 2)]
  labels = np.array([y for y, _ in cases])
  img = np.eye(4, dtype=np.float32)[[p for _, p in cases]]
  out = classify(img, cls, labels, class_names=names)
  np.testing.assert_array_equal(out["confusion"], [[2, 1, 0, 0],
                                                   [2, 1, 0, 0],
                                                   [0, 0, 3, 0],
                                                   [0, 0, 0, 0]])
  # "cross" has no image: left out of per_class and of the mean.
  assert out["per_class"] == {"circle": 2 / 3, "square": 1 / 3, "ring": 1.0}
  assert out["mean_per_class"] == pytest.approx((2 / 3 + 1 / 3 + 1) / 3)
  assert out["top1"] == pytest.approx(6 / 9)


@pytest.mark.parametrize("image_emb, class_emb, labels, match", [
    ([[np.nan, 0.0]], [[1.0, 0.0], [0.0, 1.0]], [0], "image_emb contains NaN"),
    ([[1.0, 0.0]], [[1.0, 0.0], [np.inf, 1.0]], [0], "class_emb contains NaN or Inf"),
    ([[1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]], [2], r"labels\[0\] = 2 is out of range"),
    ([[1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]], [-1], "out of range"),
    ([[1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]], [0.0], "labels must be int"),
    ([[1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]], [0, 1], "labels must be int"),
    (np.zeros((0, 2)), [[1.0, 0.0], [0.0, 1.0]], [], "at least one image"),
    ([[1.0, 0.0]], np.zeros((0, 2)), [0], "at least one image and two classes"),
    ([[1.0, 0.0]], [[1.0, 0.0]], [0], "C=1 class"),
    ([[1.0, 0.0]], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [0], "embedding sizes differ"),
    ([[1, 0]], [[1.0, 0.0], [0.0, 1.0]], [0], "image_emb must be a float array"),
    ([[1.0, 0.0]], np.zeros((2, 2, 2)), [0], "one candidate set per image"),
])
def test_bad_inputs_name_the_cause(image_emb, class_emb, labels, match):
  with pytest.raises(ValueError, match=match):
    classify(np.asarray(image_emb), np.asarray(class_emb), np.asarray(labels))


def test_bad_ks_and_class_names():
  img, cls, y = np.eye(2), np.eye(2), np.array([0, 1])
  with pytest.raises(ValueError, match="positive int"):
    classify(img, cls, y, ks=(0,))
  with pytest.raises(ValueError, match="class_names"):
    classify(img, cls, y, class_names=("a",))


# --- prompt ensembling -------------------------------------------------------------

class TableTokenizer:
  """Each distinct text is one token id; remembers what it was asked to encode."""

  def __init__(self):
    self.ids, self.seen = {}, []

  def encode(self, texts, length):
    self.seen.extend(texts)
    out = np.zeros((len(texts), length), np.int32)
    out[:, 0] = [self.ids.setdefault(t, len(self.ids)) for t in texts]
    return out


def table_encoder(tok, vectors):
  """encode_text that looks up each text's (not necessarily unit) vector."""
  calls = []

  def encode(tokens):
    calls.append(tokens.shape)
    by_id = {i: vectors[t] for t, i in tok.ids.items()}
    return np.stack([by_id[int(i)] for i in tokens[:, 0]]).astype(np.float32)

  return encode, calls


def test_class_embedding_is_the_normalised_mean_of_unit_template_embeddings():
  vectors = {"a cat": [2.0, 0.0, 0.0], "the cat": [0.0, 0.5, 0.0],  # not unit: normalised
             "a dog": [0.0, 0.0, 1.0], "the dog": [0.0, 0.6, 0.8]}
  tok = TableTokenizer()
  encode, calls = table_encoder(tok, vectors)
  emb = class_embeddings(encode, tok, ["cat", "dog"], ["a {}", "the {}"],
                         context_length=4, batch_size=3)
  dog = np.array([0.0, 0.6, 1.8]) / 2
  np.testing.assert_allclose(emb, [[np.sqrt(0.5), np.sqrt(0.5), 0.0],
                                   dog / np.linalg.norm(dog)], rtol=1e-6)
  assert emb.dtype == np.float32 and emb.shape == (2, 3)
  assert tok.seen == ["a cat", "the cat", "a dog", "the dog"]
  assert calls == [(3, 4), (3, 4)]  # fixed-size batches, the last padded: one compile


def test_prompt_embeddings_encode_each_distinct_prompt_once():
  vectors = {"x": [1.0, 0.0], "y": [0.0, 1.0], "z": [-1.0, 0.0]}
  tok = TableTokenizer()
  encode, _ = table_encoder(tok, vectors)
  emb = prompt_embeddings(encode, tok, [["x", "y"], ["y"], ["y", "z", "z"]], 2, 8)
  np.testing.assert_allclose(emb, [[np.sqrt(0.5)] * 2, [0.0, 1.0],
                                   np.array([-2.0, 1.0]) / np.sqrt(5)], rtol=1e-6)
  assert sorted(tok.seen) == ["x", "y", "z"]


def test_prompt_embedding_errors():
  tok = TableTokenizer()
  encode, _ = table_encoder(tok, {"x": [1.0, 0.0], "-x": [-1.0, 0.0], "nan": [np.nan, 0]})
  with pytest.raises(ValueError, match="average to a zero vector"):
    prompt_embeddings(encode, tok, [["x"], ["x", "-x"]], 2, 4)
  with pytest.raises(ValueError, match="NaN or Inf"):
    prompt_embeddings(encode, tok, [["x"], ["nan"]], 2, 4)
  with pytest.raises(ValueError, match="class 1 has no prompts"):
    prompt_embeddings(encode, tok, [["x"], []], 2, 4)
  with pytest.raises(ValueError, match="exactly one"):
    class_embeddings(encode, tok, ["x"], ["no slot"], 2, 4)
  with pytest.raises(ValueError, match="sequence of strings"):
    class_embeddings(encode, tok, ["x"], "a {}", 2, 4)
