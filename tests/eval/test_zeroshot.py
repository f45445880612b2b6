"""Tests for mmjax/eval/zeroshot.py: scoring against a brute-force loop, prompt
ensembling, bad inputs, and the shapes tasks' labels against the captions."""

import re

import jax
import numpy as np
import pytest

from mmjax import configs
from mmjax.data import shapes
from mmjax.data import tokenizer as tokenizer_lib
from mmjax.eval import zeroshot
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


# --- the shapes tasks ----------------------------------------------------------------

SIZE_OF = {"small": "small", "little": "small", "tiny": "small", "large": "large",
           "big": "large"}
DIRECTION = {"left": "left", "right": "right", "above": "above", "over": "above",
             "below": "below", "under": "below", "beneath": "below"}
OBJECT = re.compile(rf"\b({'|'.join(SIZE_OF)}) ({'|'.join(shapes.COLOURS)}) "
                    rf"({'|'.join(shapes.SHAPES)})\b")


def read(text):
  """Caption or prompt -> (objects [(size, colour, shape)] in order, relation of
  the first named to the second, or None). Independent of the code under test."""
  objects = [(SIZE_OF[s], c, sh) for s, c, sh in OBJECT.findall(text)]
  rest = OBJECT.sub("", text).split()
  if len(objects) == 1:
    return objects, None
  (rel,) = [DIRECTION[w] for w in rest if w in DIRECTION]
  if {"it", "its"} & set(rest):  # "a with b to its right": b is right of a
    rel = shapes.INVERSE[rel]
  return objects, rel


def fact(objects, rel):
  """Order-free: "B right of A" is "A left of B"."""
  if rel in ("right", "below"):
    return objects[1], shapes.INVERSE[rel], objects[0]
  return objects[0], rel, objects[1]


@pytest.fixture(scope="module")
def split():
  return shapes.test_split(image_size=16, num_images=300)


def test_shapes_tasks_have_the_stated_classes_and_images(split):
  tasks = zeroshot.shapes_tasks(split["scenes"])
  assert {name: len(t.class_names) for name, t in tasks.items()} == {
      "shape": 6, "colour": 8, "relation": 4}
  assert tasks["relation"].class_names == ("left", "right", "above", "below")
  counts = [len(s.objects) for s in split["scenes"]]
  single = [i for i, k in enumerate(counts) if k == 1]
  pair = [i for i, k in enumerate(counts) if k == 2]
  assert tasks["shape"].image_index.tolist() == tasks["colour"].image_index.tolist() == single
  assert tasks["relation"].image_index.tolist() == pair
  assert len(single) > 20 and len(pair) > 200
  for name, task in tasks.items():
    # Every class occurs, so mean per-class accuracy averages them all.
    assert set(task.labels.tolist()) == set(range(len(task.class_names))), name
    assert len(task.labels) == len(task.image_index)
  assert len(tasks["relation"].image_prompts) == len(pair)


def test_shape_and_colour_labels_agree_with_the_captions(split):
  tasks = zeroshot.shapes_tasks(split["scenes"])
  for name, where in (("shape", 2), ("colour", 1)):
    task = tasks[name]
    for i, label in zip(task.image_index, task.labels):
      for caption in split["captions"][5 * i:5 * i + 5]:
        (obj,), _ = read(caption)
        assert obj[where] == task.class_names[label], (name, caption)


def test_relation_labels_and_prompts_agree_with_the_captions(split):
  task = zeroshot.shapes_tasks(split["scenes"])["relation"]
  for i, label, candidates in zip(task.image_index, task.labels, task.image_prompts):
    truth = {fact(*read(c)) for c in split["captions"][5 * i:5 * i + 5]}
    assert len(truth) == 1  # all paraphrases of one fact
    objects = [(o.size, o.colour, o.shape) for o in split["scenes"][i].objects]
    assert truth == {fact(objects, task.class_names[label])}
    # The true class's prompts state the captions' fact; the others do not.
    for c, prompts in enumerate(candidates):
      facts = {fact(*read(p)) for p in prompts}
      assert (facts == truth) == (c == label), (c, prompts)


def test_prompts_use_only_caption_words(split):
  words = {w for c in shapes.caption_corpus(2000) for w in c.split()}
  tasks = zeroshot.shapes_tasks(split["scenes"])
  for name in ("shape", "colour"):
    for t in tasks[name].templates:
      for class_name in tasks[name].class_names:
        assert set(t.format(class_name).split()) <= words, t
  for candidates in tasks["relation"].image_prompts[:50]:
    for prompts in candidates:
      for p in prompts:
        assert set(p.split()) <= words, p


# --- end to end, with a tiny model ----------------------------------------------------

def test_evaluate_shapes_zeroshot_with_a_tiny_model(tmp_path):
  from mmjax.train import build, state as state_lib
  c = configs.base()
  c.data.image_size = 16
  c.model.image = dict(kind="vit", patch_size=8, width=16, depth=1, num_heads=2,
                       pool="gap")
  c.model.text = dict(width=16, depth=1, num_heads=2, causal=True, pool="eos")
  c.model.embed_dim = 8
  c.eval.num_images = 60
  c.eval.batch_size = 64
  tok = tokenizer_lib.shapes_tokenizer(str(tmp_path))
  model = build.model(c, tok)
  ex = build.example_batch(c, batch_size=1)
  params = state_lib.init_params(model, jax.random.key(0), ex["image"], ex["text"])

  out = zeroshot.evaluate_shapes_zeroshot(model, params, tok, c)
  assert set(out) == {"zeroshot/shape_top1", "zeroshot/shape_top5",
                      "zeroshot/shape_mean_per_class", "zeroshot/colour_top1",
                      "zeroshot/colour_top5", "zeroshot/colour_mean_per_class",
                      "zeroshot/relation_top1", "zeroshot/relation_mean_per_class"}
  assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in out.values())
  assert out["zeroshot/shape_top5"] >= out["zeroshot/shape_top1"]
  assert zeroshot.evaluate_shapes_zeroshot(model, params, tok, c) == out

  c.data.name = "coco"
  with pytest.raises(ValueError, match="data.name=shapes"):
    zeroshot.evaluate_shapes_zeroshot(model, params, tok, c)
