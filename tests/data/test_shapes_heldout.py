"""Tests for the held-out phrasings of mmjax/data/shapes_heldout.py: TEMPLATES and
heldout_split (training never draws them; same test images; deterministic)."""

import re

import numpy as np
import pytest

from mmjax.data import shapes, shapes_heldout, tokenizer

# An independent reader: each template becomes an exact regex whose slots
# capture the object phrases and relation words; meaning comes from the words.
SIZE_OF = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large"}
DIRECTION = {"left": "left", "right": "right", "above": "above", "over": "above",
             "below": "below", "under": "below", "beneath": "below"}
_alt = lambda words: "|".join(sorted(map(re.escape, words), key=len, reverse=True))
_OBJ = (rf"a (?:{_alt(SIZE_OF)}) (?:{_alt(shapes.COLOURS)}) (?:{_alt(shapes.SHAPES)})")
_SLOTS = {
    "a": rf"(?P<a>{_OBJ})", "b": rf"(?P<b>{_OBJ})",
    "rel": rf"(?P<rel>{_alt(w for ws in shapes.REL_WORDS.values() for w in ws)})",
    "rel_it": rf"(?P<rel_it>{_alt(w for ws in shapes.REL_IT_WORDS.values() for w in ws)})",
    "pos": rf"(?P<pos>{_alt(w for ws in shapes.POS_WORDS.values() for w in ws)})",
}


def _regex(template):
  parts = re.split(r"\{(\w+)\}", template)  # text, slot, text, slot, ...
  return re.compile("".join(_SLOTS[p] if i % 2 else re.escape(p)
                            for i, p in enumerate(parts)))


TRAIN = [_regex(t) for t in shapes.TEMPLATES]
HELDOUT = [_regex(t) for t in shapes_heldout.TEMPLATES]


def _obj(phrase):
  _, size, colour, shape = phrase.split()
  return (SIZE_OF[size], colour, shape)


def _direction(phrase):
  (d,) = [DIRECTION[w] for w in phrase.split() if w in DIRECTION]
  return d


def read(caption, regexes):
  """-> (template index, facts) of the one template that reads `caption` whole, or None.
  facts: ("one", obj, cell words) or ("two", obj_a, relation of a to b, obj_b)."""
  hits = [(i, m) for i, r in enumerate(regexes) if (m := r.fullmatch(caption))]
  if not hits:
    return None
  assert len(hits) == 1, (caption, [i for i, _ in hits])
  i, m = hits[0]
  g = m.groupdict()
  if g.get("pos"):
    return i, ("one", _obj(g["a"]), g["pos"])
  if g.get("rel"):
    return i, ("two", _obj(g["a"]), _direction(g["rel"]), _obj(g["b"]))
  # "{a} ... {b} {rel_it}": b lies rel_it of a, so a lies the inverse of it of b.
  return i, ("two", _obj(g["a"]), shapes.INVERSE[_direction(g["rel_it"])], _obj(g["b"]))


def says(facts, scene):
  obj = lambda o: (o.size, o.colour, o.shape)
  if facts[0] == "one":
    return (scene.cell is not None and facts[1] == obj(scene.objects[0])
            and facts[2] in shapes.POS_WORDS[scene.cell])
  if scene.cell is not None:
    return False
  a, b = map(obj, scene.objects)
  _, x, rel, y = facts
  return (x, rel, y) in ((a, scene.relation, b), (b, shapes.INVERSE[scene.relation], a))


@pytest.fixture(scope="module")
def heldout():
  return shapes_heldout.heldout_split()


def test_training_never_draws_a_heldout_phrasing(heldout):
  # Every caption training can see (the endless stream, sampled widely, and the
  # tokenizer's corpus) reads as a TEMPLATES frame and as no held-out one.
  train = shapes.caption_corpus(3000, seed=0)
  for step in range(0, 4000, 97):
    train += shapes.train_batch(step % 5, step, 16, image_size=16)["caption"]
  assert len(train) > 3500
  for caption in train:
    assert read(caption, TRAIN) is not None, caption
    assert read(caption, HELDOUT) is None, caption
  # ... and each held-out caption the other way round; no string is shared.
  for caption in heldout["captions"]:
    assert read(caption, HELDOUT) is not None, caption
    assert read(caption, TRAIN) is None, caption
  assert not set(train) & set(heldout["captions"])
  assert not set(shapes.test_split()["captions"]) & set(heldout["captions"])


def test_heldout_split_is_the_test_images_with_true_captions(heldout):
  test = shapes.test_split()
  assert heldout["image"] is test["image"]  # shared, read-only
  np.testing.assert_array_equal(heldout["text_to_image"], test["text_to_image"])
  assert heldout["scenes"] == test["scenes"] and len(heldout["captions"]) == 5000
  used = set()
  for i, scene in enumerate(heldout["scenes"]):
    caps = heldout["captions"][5 * i:5 * i + 5]
    frames = []
    for caption in caps:
      index, facts = read(caption, HELDOUT)
      assert says(facts, scene), (caption, scene)
      frames.append(index)
    assert len(set(frames)) == 5, caps  # five different held-out frames per image
    used.update(frames)
  assert used == set(range(len(shapes_heldout.TEMPLATES)))


def test_heldout_split_is_deterministic(heldout):
  shapes_heldout._captions.cache_clear()
  again = shapes_heldout.heldout_split()
  assert again["captions"] == heldout["captions"]
  small = shapes_heldout.heldout_split(image_size=16, num_images=10, captions_per_image=3)
  np.testing.assert_array_equal(small["image"], shapes.test_split(16, 10)["image"])
  assert len(small["captions"]) == 30
  np.testing.assert_array_equal(small["text_to_image"], np.repeat(np.arange(10), 3))
  # Its own random stream: the test split's captions do not change with it.
  assert shapes.test_split()["captions"] == shapes.test_split(captions_per_image=5)["captions"]


def test_heldout_captions_fit_the_default_tokenizer(tmp_path, heldout):
  """Read whole at context_length 16 by a from-scratch run's tokenizer (the
  shapes BPE, trained deterministically on training captions only)."""
  tok = tokenizer.shapes_tokenizer(str(tmp_path))
  lengths = (tok.encode(heldout["captions"], 32) != tok.pad_id).sum(1)
  assert lengths.max() <= 16, heldout["captions"][int(lengths.argmax())]
