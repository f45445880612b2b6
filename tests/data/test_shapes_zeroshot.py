"""Tests for mmjax/data/shapes_zeroshot.py: the shapes tasks' labels and prompts
against the captions, read by a parser independent of the code under test, and
`evaluate` on a hand-made encoder whose answers are known."""

import re

import numpy as np
import pytest

from mmjax.data import shapes, shapes_zeroshot


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
  tasks = shapes_zeroshot.shapes_tasks(split["scenes"])
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
  tasks = shapes_zeroshot.shapes_tasks(split["scenes"])
  for name, where in (("shape", 2), ("colour", 1)):
    task = tasks[name]
    for i, label in zip(task.image_index, task.labels):
      for caption in split["captions"][5 * i:5 * i + 5]:
        (obj,), _ = read(caption)
        assert obj[where] == task.class_names[label], (name, caption)


def test_relation_labels_and_prompts_agree_with_the_captions(split):
  task = shapes_zeroshot.shapes_tasks(split["scenes"])["relation"]
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
  tasks = shapes_zeroshot.shapes_tasks(split["scenes"])
  for name in ("shape", "colour"):
    for t in tasks[name].templates:
      for class_name in tasks[name].class_names:
        assert set(t.format(class_name).split()) <= words, t
  for candidates in tasks["relation"].image_prompts[:50]:
    for prompts in candidates:
      for p in prompts:
        assert set(p.split()) <= words, p


def test_relations_and_task_fields(split):
  assert shapes_zeroshot.RELATIONS == ("left", "right", "above", "below")
  tasks = shapes_zeroshot.shapes_tasks(split["scenes"])
  for name in ("shape", "colour"):
    task = tasks[name]
    assert isinstance(task, shapes_zeroshot.Task) and task.name == name
    assert task.image_prompts is None and len(task.templates) > 0
    assert all(t.count("{}") == 1 for t in task.templates)
    assert task.image_index.dtype == np.int64 and task.labels.dtype == np.int64
  assert tasks["shape"].class_names == shapes.SHAPES
  assert tasks["colour"].class_names == tuple(shapes.COLOURS)
  relation = tasks["relation"]
  assert relation.templates == ()
  assert all(len(c) == 4 and all(len(p) == 2 for p in c) for c in relation.image_prompts)


# --- evaluate, on an encoder that reads the words -----------------------------------

class TableTokenizer:
  """Each distinct text is one token id (in column 0)."""

  def __init__(self):
    self.texts = []

  def encode(self, texts, length):
    out = np.zeros((len(texts), length), np.int32)
    for row, t in enumerate(texts):
      if t not in self.texts:
        self.texts.append(t)
      out[row, 0] = self.texts.index(t)
    return out


class ReadingEncoder:
  """Embeds a text by what it says, parsed with `read`: a one-object text as
  one-hot(shape) + one-hot(colour), a two-object text as a one-hot of its
  order-free fact. Images get the embedding of what they show, optionally
  with a wrong colour or the inverse relation."""

  def __init__(self, tok, scenes, wrong_colour=False, inverse_relation=False):
    self.tok, self.scenes = tok, scenes
    self.wrong_colour, self.inverse_relation = wrong_colour, inverse_relation
    self.facts, self.text_calls = {}, []
    self.colours = tuple(shapes.COLOURS)
    self.dim = len(shapes.SHAPES) + len(self.colours) + 4096

  def _objects(self, objects, rel):
    v = np.zeros(self.dim, np.float32)
    if rel is None:
      (size, colour, shape), = objects
      del size
      v[shapes.SHAPES.index(shape)] = 1
      v[len(shapes.SHAPES) + self.colours.index(colour)] = 1
    else:
      f = fact(objects, rel)
      v[len(shapes.SHAPES) + len(self.colours) + self.facts.setdefault(f, len(self.facts))] = 1
    return v

  def encode_text(self, tokens):
    self.text_calls.append(tokens.shape)
    return np.stack([self._objects(*read(self.tok.texts[int(i)])) for i in tokens[:, 0]])

  def encode_image(self, images):
    assert len(images) == len(self.scenes)
    out = []
    for scene in self.scenes:
      objects = [(o.size, o.colour, o.shape) for o in scene.objects]
      if len(objects) == 1:
        if self.wrong_colour:
          size, colour, shape = objects[0]
          c = self.colours[(self.colours.index(colour) + 1) % len(self.colours)]
          objects = [(size, c, shape)]
        out.append(self._objects(objects, None))
      else:
        rel = shapes.INVERSE[scene.relation] if self.inverse_relation else scene.relation
        out.append(self._objects(objects, rel))
    return np.stack(out)


KEYS = {"zeroshot/shape_top1", "zeroshot/shape_top5", "zeroshot/shape_mean_per_class",
        "zeroshot/colour_top1", "zeroshot/colour_top5", "zeroshot/colour_mean_per_class",
        "zeroshot/relation_top1", "zeroshot/relation_mean_per_class"}


def _evaluate(split, index, batch_size=64, **kwargs):
  tok = TableTokenizer()
  scenes = [split["scenes"][i] for i in index]
  enc = ReadingEncoder(tok, scenes, **kwargs)
  out = shapes_zeroshot.evaluate(enc.encode_image, enc.encode_text, tok,
                                 np.asarray(split["image"])[index], scenes,
                                 context_length=3, batch_size=batch_size)
  return out, enc


def test_evaluate_scores_a_model_that_reads_the_scene_perfectly(split):
  out, enc = _evaluate(split, np.arange(120))
  assert set(out) == KEYS
  assert all(type(v) is float for v in out.values())
  assert out == {k: 1.0 for k in KEYS}
  # Prompts go to the encoder in fixed-size batches: a jitted encoder compiles once.
  assert set(enc.text_calls) == {(64, 3)}


def test_evaluate_tells_wrong_colours_and_inverse_relations(split):
  out, _ = _evaluate(split, np.arange(120), wrong_colour=True)
  assert out["zeroshot/colour_top1"] == out["zeroshot/colour_mean_per_class"] == 0.0
  assert out["zeroshot/shape_top1"] == out["zeroshot/relation_top1"] == 1.0
  # Left for right, above for below: every relation wrong, though the objects
  # and the words are the same (a bag of words would score it as right).
  out, _ = _evaluate(split, np.arange(120), inverse_relation=True)
  assert out["zeroshot/relation_top1"] == out["zeroshot/relation_mean_per_class"] == 0.0
  assert out["zeroshot/shape_top1"] == out["zeroshot/colour_top1"] == 1.0


def test_evaluate_leaves_out_tasks_without_images(split):
  counts = np.array([len(s.objects) for s in split["scenes"]])
  pairs, _ = _evaluate(split, np.flatnonzero(counts == 2)[:40])
  assert pairs == {"zeroshot/relation_top1": 1.0, "zeroshot/relation_mean_per_class": 1.0}
  singles, _ = _evaluate(split, np.flatnonzero(counts == 1)[:10], batch_size=1000)
  assert singles == {k: 1.0 for k in KEYS if "relation" not in k}
