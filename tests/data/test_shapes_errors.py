"""The `errors` evaluator: text->image retrieval failures on shapes, by kind."""

import dataclasses

import numpy as np
import pytest

from mmjax.data import shapes, shapes_errors
from mmjax.eval import evaluators
from mmjax.eval.evaluators import EvaluatorConfigError

RED_CIRCLE = shapes.Obj("red", "circle", "small", 0.2, 0.5, 0.11)
BLUE_SQUARE = shapes.Obj("blue", "square", "large", 0.7, 0.5, 0.18)


def _two(a, b, relation="left"):
  return shapes.Scene((a, b), relation=relation)


def _one(obj, cell=(1, 0)):
  return shapes.Scene((obj,), cell=cell)


@pytest.mark.parametrize("retrieved,expected", [
    # B right of A is A left of B: the same captions.
    (_two(BLUE_SQUARE, RED_CIRCLE, "right"), "same_scene"),
    (_two(RED_CIRCLE, BLUE_SQUARE, "above"), "relation"),
    (_two(BLUE_SQUARE, RED_CIRCLE, "left"), "relation"),
    (_one(RED_CIRCLE), "object_count"),
    # Paired the way that differs least: the circle is the circle.
    (_two(BLUE_SQUARE, dataclasses.replace(RED_CIRCLE, shape="ring"), "right"), "shape"),
    (_two(dataclasses.replace(RED_CIRCLE, colour="cyan"), BLUE_SQUARE, "above"), "colour"),
    (_two(dataclasses.replace(RED_CIRCLE, size="large"), BLUE_SQUARE), "size"),
    (_two(dataclasses.replace(RED_CIRCLE, shape="ring", colour="white"), BLUE_SQUARE),
     "several"),
])
def test_two_object_differences(retrieved, expected):
  assert shapes_errors.difference(_two(RED_CIRCLE, BLUE_SQUARE), retrieved) == expected


def test_one_object_differences():
  wanted = _one(RED_CIRCLE, (1, 0))
  assert shapes_errors.difference(wanted, _one(RED_CIRCLE, (1, 0))) == "same_scene"
  assert shapes_errors.difference(wanted, _one(RED_CIRCLE, (2, 2))) == "cell"
  # An attribute outranks the position: a circle for a square is a shape error.
  square = dataclasses.replace(RED_CIRCLE, shape="square")
  assert shapes_errors.difference(wanted, _one(square, (2, 2))) == "shape"


def _scene_keys(scenes, key):
  ids = {}
  return np.asarray([ids.setdefault(key(s), len(ids)) for s in scenes])


def _one_hot_reader(scenes, owner, key):
  """Similarity of a model that sees exactly `key` of each scene."""
  ids = _scene_keys(scenes, key)
  return (ids[owner][:, None] == ids[None, :]).astype(np.float32)


SPLIT = shapes.test_split(num_images=1000)
SCENES, OWNER = SPLIT["scenes"], np.asarray(SPLIT["text_to_image"])


def test_a_perfect_reader_fails_only_on_identical_scenes():
  out = shapes_errors.classify(_one_hot_reader(SCENES, OWNER, shapes.canonical), OWNER,
                               SCENES)
  assert out["errors/total"] == out["errors/same_scene"] > 0
  # argmax takes the first of equal images: right for the first image of each
  # scene, wrong for the others.
  first = len(set(map(shapes.canonical, SCENES))) / len(SCENES)
  assert out["errors/total"] == pytest.approx(1 - first)


def test_a_shape_blind_reader_loses_shapes_and_nothing_else():
  def blind(scene):
    return shapes.canonical(shapes.Scene(
        tuple(dataclasses.replace(o, shape="?") for o in scene.objects),
        scene.relation, scene.cell))

  out = shapes_errors.classify(_one_hot_reader(SCENES, OWNER, blind), OWNER, SCENES)
  assert out["errors/shape"] > 0.1
  assert out["errors/cell"] == out["errors/colour"] == out["errors/size"] == 0
  assert out["errors/object_count"] == out["errors/several"] == 0
  # Only two objects of one colour and size, with their shapes swapped, would
  # read as the same objects in the other arrangement (a relation error).
  assert out["errors/relation"] < 0.01
  parts = sum(v for k, v in out.items() if k != "errors/total")
  assert parts == pytest.approx(out["errors/total"])


class _Encoders:
  """encode(): fixed embeddings, as a model whose towers see each scene's key."""

  def __init__(self, image, text):
    self.emb = {"image": image, "text": text}

  def encode(self, modality, x):
    assert len(x) == len(self.emb[modality])
    return self.emb[modality]


def _context(n, data_name="shapes", inputs=None):
  test = {"image": SPLIT["image"][:n], "text": np.zeros((5 * n, 4), np.int32),
          "text_to_image": OWNER[:5 * n]}
  return evaluators.Context(data_name=data_name, image_size=32, context_length=4, seed=0,
                            inputs=inputs or {"image": "image", "text": "text"},
                            fields=(), batch_size=8, num_images=n, load_test=lambda: test)


def test_the_evaluator_ranks_the_first_test_images_by_their_scenes():
  n = 200
  ids = _scene_keys(SCENES[:n], lambda s: s.objects[0].colour)  # colour of one object
  image = np.eye(n, dtype=np.float32)[ids]
  text = image[OWNER[:5 * n]]
  out = shapes_errors.RetrievalErrors(_context(n))(_Encoders(image, text))
  expected = shapes_errors.classify(text @ image.T, OWNER[:5 * n], SCENES[:n])
  assert out == expected and out["errors/total"] > 0.5


def test_errors_needs_shapes_and_an_image_tower():
  with pytest.raises(EvaluatorConfigError, match="shapes dataset's scenes"):
    shapes_errors.RetrievalErrors(_context(10, data_name="coco"))
  with pytest.raises(EvaluatorConfigError, match="reads 'sketch'"):
    shapes_errors.RetrievalErrors(_context(10, inputs={"image": "sketch", "text": "text"}))


def test_shape_confusions_name_the_shapes_a_reader_mixes_up():
  # A reader that sees everything but cannot tell crosses from diamonds.
  def merged(scene):
    return shapes.canonical(shapes.Scene(
        tuple(dataclasses.replace(o, shape="cross" if o.shape == "diamond" else o.shape)
              for o in scene.objects), scene.relation, scene.cell))

  similarity = _one_hot_reader(SCENES, OWNER, merged)
  counts = shapes_errors.shape_confusions(similarity, OWNER, SCENES)
  out = shapes_errors.classify(similarity, OWNER, SCENES)
  cross, diamond = shapes.SHAPES.index("cross"), shapes.SHAPES.index("diamond")
  confused = counts[:, [cross, diamond], :][:, :, [diamond, cross]]
  assert counts.sum() == confused.sum() > 0  # no other pair of shapes
  assert (counts[:, cross, cross] == 0).all() and (counts[:, diamond, diamond] == 0).all()
  # Each shape error has one or two mistaken objects.
  n = len(OWNER)
  assert out["errors/shape"] * n <= counts.sum() <= 2 * out["errors/shape"] * n
  # A whole scene with its two objects' shapes swapped counts both objects.
  wanted = _two(RED_CIRCLE, dataclasses.replace(BLUE_SQUARE, size="small"))
  both = _two(dataclasses.replace(RED_CIRCLE, shape="ring"),
              dataclasses.replace(BLUE_SQUARE, size="small", shape="cross"))
  two = shapes_errors.shape_confusions(np.array([[0.0, 1.0]]), np.array([0]), [wanted, both])
  circle, ring, square = (shapes.SHAPES.index(s) for s in ("circle", "ring", "square"))
  assert two[0, circle, ring] == two[0, square, cross] == 1 and two.sum() == 2


def test_the_evaluator_plots_its_shape_confusions(tmp_path):
  n = 200
  ids = _scene_keys(SCENES[:n], lambda s: [(o.colour, o.size) for o in s.objects].__repr__())
  image = np.eye(len(set(ids)), dtype=np.float32)[ids]  # blind to shapes only
  text = image[OWNER[:5 * n]]
  evaluator = shapes_errors.RetrievalErrors(_context(n))
  assert evaluator.report(str(tmp_path)) == []  # nothing before it has run
  out = evaluator(_Encoders(image, text))
  assert out["errors/shape"] > 0 and evaluator.confusions.sum() > 0
  written = evaluator.report(str(tmp_path))
  assert written == [str(tmp_path / "errors_shapes.png")] and (tmp_path / "errors_shapes.png").stat().st_size > 10_000
