"""Tests for mmjax/data/shapes_views.py: the sketch view and scene ids."""

import itertools

import numpy as np
import pytest

from mmjax.data import shapes
from mmjax.data import shapes_views


def _flat(colour, size=12) -> np.ndarray:
  """uint8 [1, size, size, 3] of one colour."""
  return np.broadcast_to(np.asarray(colour, np.uint8), (1, size, size, 3)).copy()


def _step(left, right, size=12, at=5) -> np.ndarray:
  """uint8 [1, size, size, 3]: colour `left` in columns < at, `right` from column at."""
  image = _flat(left, size)
  image[:, :, at:] = right
  return image


def test_sketch_shape_dtype_and_determinism():
  images = shapes.test_split(image_size=24, num_images=6)["image"]
  out = shapes_views.sketch(images)
  assert out.shape == (6, 24, 24, 1) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, shapes_views.sketch(images.copy()))
  # Every shapes image has edges; each is rescaled so its strongest one is 255.
  assert (out.max(axis=(1, 2, 3)) == 255).all()


def test_flat_image_gives_zeros_without_nan():
  for colour in [(0, 0, 0), (200, 30, 90), (255, 255, 255)]:
    with np.errstate(all="raise"):  # no division by zero, no invalid value
      out = shapes_views.sketch(_flat(colour))
    assert out.shape == (1, 12, 12, 1) and not out.any()


def test_vertical_step_responds_only_at_the_edge_columns():
  out = shapes_views.sketch(_step((20, 20, 20), (220, 220, 220), at=5))[0, ..., 0]
  # The 3x3 gradient sees the step from the two columns either side of it, on
  # every row (the border is padded by repetition, so rows are all alike).
  assert (out[:, [4, 5]] == 255).all()
  assert not np.delete(out, [4, 5], axis=1).any()


def test_rescaled_per_image_not_per_batch():
  strong = _step((0, 0, 0), (255, 255, 255))
  weak = _step((100, 100, 100), (110, 110, 110))
  both = shapes_views.sketch(np.concatenate([strong, weak]))
  np.testing.assert_array_equal(both[1:], shapes_views.sketch(weak))
  np.testing.assert_array_equal(both[0], both[1])  # same edge, same view


def _two_edges(colour) -> np.ndarray:
  """uint8 [1, 12, 12, 3]: grey | colour | white, in vertical bands.

  The per-image rescale makes a lone edge 255 whatever its contrast; beside a
  fixed second edge, the colour's luminance sets how strong its edges look.
  """
  image = _step((128, 128, 128), colour, at=4)
  image[:, :, 9:] = 255
  return image


def test_sketch_sees_luminance_not_colour():
  # 299 R + 587 G + 114 B = 100,000 for all three: one luminance, three hues.
  grey, green, blue = (100, 100, 100), (6, 164, 17), (0, 122, 249)
  assert {int(np.dot([299, 587, 114], c)) for c in (grey, green, blue)} == {100_000}
  views = [shapes_views.sketch(_two_edges(c)) for c in (grey, green, blue)]
  assert 0 < views[0][0, 0, 4, 0] < 255  # the weaker edge: not saturated, not lost
  np.testing.assert_array_equal(views[0], views[1])
  np.testing.assert_array_equal(views[0], views[2])


def test_sketch_sees_a_colour_swap_that_changes_luminance():
  red, blue = _two_edges((225, 40, 40)), _two_edges((40, 40, 225))  # R and B swapped
  assert not np.array_equal(shapes_views.sketch(red), shapes_views.sketch(blue))


def test_sketch_rejects_a_non_image():
  with pytest.raises(ValueError, match="uint8"):
    shapes_views.sketch(np.zeros((2, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match=r"\[B, S, S, 3\]"):
    shapes_views.sketch(np.zeros((8, 8, 3), np.uint8))


def test_empty_batch():
  assert shapes_views.sketch(np.zeros((0, 8, 8, 3), np.uint8)).shape == (0, 8, 8, 1)
  ids = shapes_views.scene_ids([])
  assert ids.shape == (0,) and ids.dtype == np.int32


def test_scene_ids_equal_exactly_for_equal_canonical_keys_on_the_test_split():
  scenes = shapes.test_split(image_size=16)["scenes"]
  ids = shapes_views.scene_ids(scenes)
  assert ids.shape == (len(scenes),) and ids.dtype == np.int32 and (ids >= 0).all()
  keys = [shapes.canonical(s) for s in scenes]
  id_of = {}
  for key, i in zip(keys, ids):
    assert id_of.setdefault(key, int(i)) == int(i)  # equal keys, equal ids
  assert len(set(id_of.values())) == len(id_of)  # different keys, different ids
  assert len(id_of) < len(keys)  # the split does repeat scenes: the test has teeth


def test_scene_id_ignores_position_and_object_order():
  a = shapes.Obj("red", "circle", "small", 0.2, 0.5, shapes.SIZES["small"])
  b = shapes.Obj("blue", "square", "large", 0.7, 0.5, shapes.SIZES["large"])
  moved = shapes.Obj("red", "circle", "small", 0.3, 0.4, shapes.SIZES["small"])
  left = shapes.Scene((a, b), relation="left")
  ids = shapes_views.scene_ids([left, shapes.Scene((b, a), relation="right"),
                                shapes.Scene((moved, b), relation="left"),
                                shapes.Scene((a, b), relation="above")])
  assert ids[0] == ids[1] == ids[2] != ids[3]


def _all_scenes():
  """One scene per canonical key: every object alone in every cell, every
  ordered pair of different objects left of / above each other."""
  objects = [shapes.Obj(c, s, z, 0.5, 0.5, shapes.SIZES[z])
             for c, s, z in itertools.product(shapes.COLOURS, shapes.SHAPES, shapes.SIZES)]
  for obj in objects:
    for cell in itertools.product(range(3), range(3)):
      yield shapes.Scene((obj,), cell=cell)
  for a, b in itertools.permutations(objects, 2):
    for relation in ("left", "above"):
      yield shapes.Scene((a, b), relation=relation)


def test_scene_ids_never_collide_over_every_possible_scene():
  scenes = list(_all_scenes())
  assert len({shapes.canonical(s) for s in scenes}) == len(scenes) == 19104
  assert len(set(shapes_views.scene_ids(scenes).tolist())) == len(scenes)


def test_fields_and_specs_agree():
  images = shapes.test_split(image_size=16, num_images=3)["image"]
  scenes = shapes.test_split(image_size=16, num_images=3)["scenes"]
  assert set(shapes_views.FIELDS) == {"sketch", "scene_id", "audio"}
  for name, fn in shapes_views.FIELDS.items():
    value = fn(images, scenes)
    shape, dtype = shapes_views.field_spec(name, 16)
    assert value.shape == (3, *shape) and value.dtype == dtype
  with pytest.raises(ValueError, match="'audio', 'scene_id', 'sketch'"):
    shapes_views.field_spec("depth", 16)
