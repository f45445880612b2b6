"""Where text->image retrieval fails on shapes: the `errors` evaluator.

Every test caption whose top-1 image shows another scene is put in one class,
by how that scene differs from the caption's own:

  same_scene    the same canonical scene (shapes.canonical): the caption fits
                both images, so no model can tell them apart
  object_count  one object where the caption names two, or two for one
  relation      the same two objects, in the other arrangement
  cell          the same single object, in another cell of the 3x3 grid
  shape, colour, size
                one attribute kind differs (of one object or both), whatever
                the positions
  several       more than one attribute kind differs

Two objects are paired with the other scene's the way that differs in fewest
attributes. Metrics: "errors/<class>", each a fraction of all captions, and
"errors/total", their sum: 1 - R@1 of the same top-1 choice. They say which
lever moves recall: a model at chance on relations loses "errors/relation",
one that cannot tell the shapes apart at this resolution "errors/shape".
At the end of a run its report, errors_shapes.png, shows which shapes those
errors mistake for which, for small and large objects.
"""

import itertools

import jax
import numpy as np

from mmjax import paths
from mmjax.data import pipeline, shapes
from mmjax.eval import reports
from mmjax.eval.evaluators import EvaluatorConfigError

CLASSES = ("same_scene", "object_count", "relation", "cell", "shape", "colour", "size",
           "several")
ATTRIBUTES = ("shape", "colour", "size")
SIZES = tuple(shapes.SIZES)  # ("small", "large"), the first axis of shape_confusions
PREFIX = "errors/"


def _in_role_order(scene: shapes.Scene) -> tuple:
  """The objects ordered as in "first left of / above second"."""
  if scene.relation in ("right", "below"):
    return scene.objects[::-1]
  return scene.objects


def _pairing(a: shapes.Scene, b: shapes.Scene) -> list[tuple[shapes.Obj, shapes.Obj]]:
  """Objects of two scenes with as many objects, paired the way that differs
  in fewest attributes; of equal ones, the pairing that keeps each object's
  place in the relation (a red circle left of a blue square, for a red square
  left of a blue circle, is two shapes wrong rather than two colours)."""
  objs_a, objs_b = _in_role_order(a), _in_role_order(b)
  best, fewest = None, None
  for order in itertools.permutations(range(len(objs_b))):  # role-keeping first
    pairs = [(oa, objs_b[j]) for oa, j in zip(objs_a, order)]
    n = sum(getattr(x, k) != getattr(y, k) for x, y in pairs for k in ATTRIBUTES)
    if fewest is None or n < fewest:
      best, fewest = pairs, n
  return best


def _attribute_diffs(a: shapes.Scene, b: shapes.Scene) -> set:
  """Attribute kinds that differ between the objects of two scenes with as
  many objects, under `_pairing`."""
  return {k for x, y in _pairing(a, b) for k in ATTRIBUTES if getattr(x, k) != getattr(y, k)}


def difference(wanted: shapes.Scene, retrieved: shapes.Scene) -> str:
  """The class (CLASSES) of retrieving `retrieved` for a caption of `wanted`."""
  if shapes.canonical(wanted) == shapes.canonical(retrieved):
    return "same_scene"
  if len(wanted.objects) != len(retrieved.objects):
    return "object_count"
  diffs = _attribute_diffs(wanted, retrieved)
  if not diffs:
    return "cell" if wanted.cell is not None else "relation"
  return diffs.pop() if len(diffs) == 1 else "several"


def _failures(similarity: np.ndarray, text_to_image: np.ndarray, scenes):
  """(wanted scene, retrieved scene, class) of each caption whose top-1
  image is not its own; arguments as for `classify`."""
  top = np.argmax(similarity, axis=1)
  for q in np.flatnonzero(top != text_to_image):
    wanted, retrieved = scenes[text_to_image[q]], scenes[top[q]]
    yield wanted, retrieved, difference(wanted, retrieved)


def classify(similarity: np.ndarray, text_to_image: np.ndarray, scenes) -> dict[str, float]:
  """similarity: [M, N] caption x image scores; text_to_image: [M] each
  caption's image; scenes: the N images' Scenes. Returns {"errors/<class>":
  fraction of the M captions, "errors/total": their sum}."""
  return _summarise(list(_failures(similarity, text_to_image, scenes)), len(text_to_image))


def _summarise(failures: list, m: int) -> dict[str, float]:
  counts = dict.fromkeys(CLASSES, 0)
  for _, _, kind in failures:
    counts[kind] += 1
  out = {PREFIX + k: v / m for k, v in counts.items()}
  out[PREFIX + "total"] = sum(counts.values()) / m
  return out


def shape_confusions(similarity: np.ndarray, text_to_image: np.ndarray, scenes) -> np.ndarray:
  """Which shapes the "shape" errors mistake for which.

  similarity, text_to_image, scenes: as for `classify`. Returns int64
  [len(SIZES), len(shapes.SHAPES), len(shapes.SHAPES)] = [2, 6, 6]: [size of
  the object, shape the caption names, shape of the retrieved image's
  object], counting each object whose shape differs, under the same pairing
  of objects as `classify` (a caption whose retrieved scene has both shapes
  wrong counts twice).
  """
  return _confusions(list(_failures(similarity, text_to_image, scenes)))


def _confusions(failures: list) -> np.ndarray:
  counts = np.zeros((len(SIZES), len(shapes.SHAPES), len(shapes.SHAPES)), np.int64)
  for wanted, retrieved, kind in failures:
    if kind != "shape":
      continue
    for x, y in _pairing(wanted, retrieved):
      if x.shape != y.shape:
        counts[SIZES.index(x.size), shapes.SHAPES.index(x.shape),
               shapes.SHAPES.index(y.shape)] += 1
  return counts


def plot_shape_confusions(counts: np.ndarray, path: str) -> str:
  """Two 6 x 6 heat maps (small, large objects) of `shape_confusions`'s
  [2, 6, 6] counts, saved to `path`; returns path."""
  plt = reports.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
  top = max(int(counts.max()), 1)
  for ax, size, c in zip(axes, SIZES, counts):
    ax.imshow(c, cmap="Reds", vmin=0, vmax=top)
    ax.set_xticks(range(len(shapes.SHAPES)), shapes.SHAPES, rotation=45, ha="right")
    ax.set_yticks(range(len(shapes.SHAPES)), shapes.SHAPES)
    ax.set_xlabel("shape in the retrieved image")
    ax.set_title(f"{size} objects: {int(c.sum())} mistaken shapes")
    for (i, j), v in np.ndenumerate(c):
      if v:
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                color="white" if v > top / 2 else "black")
  axes[0].set_ylabel("shape the caption names")
  fig.suptitle("text->image top-1 errors that differ only in shape")
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=110)
  return path


class RetrievalErrors:
  """The errors of text->image retrieval on the test split, by class (above)."""

  modalities = ("image", "text")

  def __init__(self, context):
    if context.data_name != "shapes":
      raise EvaluatorConfigError(
          f"the 'errors' evaluator reads the shapes dataset's scenes, not "
          f"{context.data_name!r}; remove it from config.eval.evaluators.")
    if context.inputs.get("image", "image") != "image":
      raise EvaluatorConfigError(
          "the 'errors' evaluator ranks the test images; this model's image tower reads "
          f"{context.inputs['image']!r}. Remove the evaluator or give it a tower on images.")
    self.context = context
    self.confusions = None

  def __call__(self, encoders) -> dict[str, float]:
    test = self.context.test
    images, owner = test["image"], np.asarray(test["text_to_image"])
    scenes = shapes.test_split(image_size=self.context.image_size,
                               num_images=pipeline.TEST_IMAGES)["scenes"][:len(images)]
    similarity = encoders.encode("text", test["text"]) @ encoders.encode("image", images).T
    failures = list(_failures(similarity, owner, scenes))  # classified once, for both
    self.confusions = _confusions(failures)
    return _summarise(failures, len(owner))

  def report(self, workdir: str) -> list[str]:
    """errors_shapes.png: which shapes the shape errors confuse, by size."""
    if self.confusions is None or jax.process_index() != 0:
      return []
    return [plot_shape_confusions(self.confusions, paths.join(workdir, "errors_shapes.png"))]

