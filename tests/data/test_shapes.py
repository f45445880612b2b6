"""Tests for mmjax/data/shapes.py: determinism, captions, geometry, test split."""

import dataclasses

import numpy as np
import pytest

from mmjax.data import shapes

# An independent reader of the captions: words -> scene facts.
SIZE_OF = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large"}
DIRECTION = {"left": "left", "right": "right", "above": "above", "over": "above",
             "below": "below", "under": "below", "beneath": "below"}


def parse(caption):
  """-> (objects [(size, colour, shape)], relation of first to second | None, cell | None)."""
  words = caption.split()
  objects, rest = [], []
  i = 0
  while i < len(words):
    if (words[i] in SIZE_OF and i + 2 < len(words) and words[i + 1] in shapes.COLOURS
        and words[i + 2] in shapes.SHAPES):
      objects.append((SIZE_OF[words[i]], words[i + 1], words[i + 2]))
      i += 3
    else:
      rest.append(words[i])
      i += 1
  if len(objects) == 1:
    row = 0 if {"top", "upper"} & set(rest) else 2 if {"bottom", "lower"} & set(rest) else 1
    col = 0 if "left" in rest else 2 if "right" in rest else 1
    return objects, None, (row, col)
  (rel,) = [DIRECTION[w] for w in rest if w in DIRECTION]
  if {"it", "its"} & set(rest):  # "a with b to its right": b is right of a
    rel = shapes.INVERSE[rel]
  return objects, rel, None


def facts(obj):
  return (obj.size, obj.colour, obj.shape)


def matches(caption, scene):
  objects, rel, cell = parse(caption)
  if scene.cell is not None:
    return objects == [facts(scene.objects[0])] and cell == scene.cell
  a, b = map(facts, scene.objects)
  return ((objects, rel) == ([a, b], scene.relation)
          or (objects, rel) == ([b, a], shapes.INVERSE[scene.relation]))


def test_example_is_deterministic_and_varies():
  e1, e2 = shapes.example(0, "train", 7), shapes.example(0, "train", 7)
  np.testing.assert_array_equal(e1["image"], e2["image"])
  assert e1["captions"] == e2["captions"] and e1["scene"] == e2["scene"]
  assert e1["image"].shape == (32, 32, 3) and e1["image"].dtype == np.uint8
  assert not np.array_equal(e1["image"], shapes.example(0, "train", 8)["image"])
  assert not np.array_equal(e1["image"], shapes.example(1, "train", 7)["image"])
  assert not np.array_equal(e1["image"], shapes.example(0, "test", 7)["image"])


def test_images_and_captions_do_not_depend_on_each_others_settings():
  base = shapes.example(3, "train", 11)
  fewer = shapes.example(3, "train", 11, captions_per_image=2, templates=[2, 8])
  np.testing.assert_array_equal(base["image"], fewer["image"])
  assert shapes.example(3, "train", 11, image_size=48)["captions"] == base["captions"]


def test_train_batch_rows_equal_slices_of_the_full_batch():
  full = shapes.train_batch(5, 3, 16)
  assert full["image"].shape == (16, 32, 32, 3) and len(full["caption"]) == 16
  again = shapes.train_batch(5, 3, 16)
  np.testing.assert_array_equal(full["image"], again["image"])
  assert full["caption"] == again["caption"]
  mask = np.arange(16) % 3 == 0
  for rows in (slice(4, 9), np.array([15, 0, 7]), mask):
    part = shapes.train_batch(5, 3, 16, rows=rows)
    np.testing.assert_array_equal(part["image"], full["image"][rows])
    assert part["caption"] == list(np.array(full["caption"], dtype=object)[rows])
  assert not np.array_equal(full["image"], shapes.train_batch(5, 4, 16)["image"])


def test_train_batch_row_is_its_example_with_one_of_its_captions():
  step, batch = 2, 40
  out = shapes.train_batch(9, step, batch)
  positions = set()
  for i in range(batch):
    ex = shapes.example(9, "train", step * batch + i)
    np.testing.assert_array_equal(out["image"][i], ex["image"])
    assert out["caption"][i] in ex["captions"]
    positions.add(ex["captions"].index(out["caption"][i]))
  assert positions == set(range(5))  # every caption position gets used


def test_captions_are_fully_specific_paraphrases():
  split = shapes.test_split()
  for i, scene in enumerate(split["scenes"]):
    caps = split["captions"][5 * i:5 * i + 5]
    assert len(set(caps)) == 5, caps
    for caption in caps:
      assert matches(caption, scene), (caption, scene)


def test_template_subsets():
  two = next(e for e in (shapes.example(0, "train", i) for i in range(50))
             if len(e["scene"].objects) == 2)["scene"]
  rng = np.random.default_rng(0)
  caps = shapes.describe(two, rng, 5, templates=[1, 7])  # the "there is" templates
  assert all(c.startswith("there is ") for c in caps)
  assert all(matches(c, two) for c in caps)
  with pytest.raises(ValueError, match="at least one"):
    shapes.describe(two, rng, 5, templates=[6, 7])  # one-object templates only


def test_scene_geometry_matches_relations_and_cells():
  one = two = 0
  for scene in shapes.test_split()["scenes"]:
    for o in scene.objects:
      assert o.radius + shapes.MARGIN - 1e-9 <= min(o.x, o.y)
      assert max(o.x, o.y) <= 1 - o.radius - shapes.MARGIN + 1e-9
    if scene.cell is not None:
      one += 1
      o = scene.objects[0]
      assert (int(o.y * 3), int(o.x * 3)) == scene.cell
      continue
    two += 1
    a, b = scene.objects
    assert facts(a) != facts(b)
    dx, dy = a.x - b.x, a.y - b.y  # y grows downwards
    major, minor = (dx, dy) if scene.relation in ("left", "right") else (dy, dx)
    assert abs(major) >= shapes.DOMINANCE * abs(minor)
    assert abs(major) >= a.radius + b.radius  # bounding boxes apart: no overlap
    assert (major < 0) == (scene.relation in ("left", "above"))
  assert 100 < one < 200 and two == 1000 - one  # ~15% single objects


@pytest.mark.parametrize("size", [24, 32, 96])
def test_object_colour_at_its_centre(size):
  checked = 0
  for index in range(40):
    ex = shapes.example(2, "train", index, image_size=size)
    img = ex["image"]
    assert img.shape == (size, size, 3)
    for o in ex["scene"].objects:
      if o.shape == "ring":  # hollow centre
        continue
      pixel = img[int(o.y * size), int(o.x * size)].astype(int)
      assert np.abs(pixel - shapes.COLOURS[o.colour]).max() <= 8, (o, pixel)
      checked += 1
    assert np.median(img) < 130  # the background stays dim
  assert checked > 40


def test_two_object_images_have_two_separate_objects():
  # The two objects' pixels are disjoint: drawing each alone and together agrees.
  for index in range(30):
    ex = shapes.example(4, "train", index)
    scene = ex["scene"]
    if len(scene.objects) != 2:
      continue
    bg = {"kind": 3, "c1": np.zeros(3), "c2": np.zeros(3), "angle": 0.0,
          "period": 0.1, "phase": 0.0}
    alone = [shapes.render(dataclasses.replace(scene, objects=(o,)), bg, 64).any(-1)
             for o in scene.objects]
    assert not (alone[0] & alone[1]).any()


def _alone(shape, size=32, x=0.5, y=0.5, radius=shapes.SIZES["small"]):
  """Coverage [S, S] in [0, 1] of one white object on black."""
  obj = shapes.Obj("white", shape, "small", x, y, radius)
  bg = {"kind": 3, "c1": np.zeros(3), "c2": np.zeros(3), "angle": 0.0, "period": 0.1,
        "phase": 0.0}
  return shapes.render(shapes.Scene((obj,), cell=(1, 1)), bg, size)[..., 0] / 245


def test_six_shapes_are_distinct_when_small():
  masks = {s: _alone(s) for s in shapes.SHAPES}
  for i, a in enumerate(shapes.SHAPES):
    for b in shapes.SHAPES[i + 1:]:
      assert np.abs(masks[a] - masks[b]).sum() >= 6, (a, b)  # >= 6 pixels' worth apart
  big = {s: _alone(s, size=96) for s in shapes.SHAPES}
  top, bottom = big["triangle"][:48].sum(), big["triangle"][48:].sum()
  assert top < 0.6 * bottom  # apex up
  assert big["ring"][48, 48] == 0 and big["circle"][48, 48] == 1  # ring is hollow
  assert big["cross"][41, 41] == 0 and big["square"][41, 41] == 1  # cross has no corners
  assert big["diamond"][41, 41] == 0


def test_canonical_is_caption_independent():
  scene = shapes.test_split()["scenes"][0]
  two = next(s for s in shapes.test_split()["scenes"] if len(s.objects) == 2)
  a, b = two.objects
  for relation in ("left", "right", "above", "below"):  # "B right of A" == "A left of B"
    flipped = dataclasses.replace(two, objects=(b, a), relation=shapes.INVERSE[relation])
    assert shapes.canonical(flipped) == shapes.canonical(
        dataclasses.replace(two, relation=relation))
  recoloured = dataclasses.replace(two, objects=(dataclasses.replace(a, colour=b.colour),
                                                 dataclasses.replace(b, colour=a.colour)))
  if a.colour != b.colour:
    assert shapes.canonical(recoloured) != shapes.canonical(two)
  for relation in ("left", "right", "above", "below"):
    moved = dataclasses.replace(two, relation=relation)
    assert (shapes.canonical(moved) == shapes.canonical(two)) == (relation == two.relation)
  assert shapes.canonical(scene) != shapes.canonical(two)


def test_test_split_is_fixed_and_grouped():
  split = shapes.test_split()
  assert split["image"].shape == (1000, 32, 32, 3) and split["image"].dtype == np.uint8
  assert len(split["captions"]) == 5000 and len(split["scenes"]) == 1000
  assert split["text_to_image"].dtype == np.int32
  np.testing.assert_array_equal(split["text_to_image"], np.repeat(np.arange(1000), 5))
  with pytest.raises(ValueError):
    split["image"][0, 0, 0] = 0  # the cached arrays are shared: read-only
  shapes._test_split.cache_clear()
  fresh = shapes.test_split()
  np.testing.assert_array_equal(fresh["image"], split["image"])
  assert fresh["captions"] == split["captions"]
  # Independent of the training seed: never the train examples of any seed.
  train = shapes.example(shapes.TEST_SEED, "train", 0)
  assert not np.array_equal(train["image"], split["image"][0])
  small = shapes.test_split(num_images=10, captions_per_image=3)
  np.testing.assert_array_equal(small["image"], split["image"][:10])
  assert len(small["captions"]) == 30


def test_oracle_recall():
  split = shapes.test_split()
  recall = shapes.oracle_recall_at_1(split)
  assert 0.9 <= recall <= 1.0
  keys = [shapes.canonical(s) for s in split["scenes"]]
  assert recall < 1.0 or len(set(keys)) == len(keys)


def test_caption_corpus_is_the_training_captions():
  corpus = shapes.caption_corpus(12, seed=6)
  assert len(corpus) == 12
  assert corpus[:5] == shapes.example(6, "train", 0)["captions"]
  assert corpus[10:] == shapes.example(6, "train", 2)["captions"][:2]


def test_bad_arguments_name_the_fix():
  with pytest.raises(ValueError, match="split"):
    shapes.example(0, "val", 0)
  with pytest.raises(ValueError, match="image_size"):
    shapes.train_batch(0, 0, 4, image_size=8)
