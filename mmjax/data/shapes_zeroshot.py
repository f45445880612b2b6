"""Zero-shot tasks of the shapes test split, read from its scenes: shape (6
classes) and colour (8) on the one-object images, and the spatial relation
(4) on the two-object images, where each image has its own prompts naming its
two objects (see `shapes_tasks` for why). Scored by mmjax.eval.zeroshot.
"""

import dataclasses
from typing import Sequence

import numpy as np

from mmjax.data import shapes
from mmjax.eval.zeroshot import class_embeddings, classify, prompt_embeddings

# Relations in the order of the relation task's classes.
RELATIONS = ("left", "right", "above", "below")


@dataclasses.dataclass(frozen=True)
class Task:
  """One zero-shot task on the shapes test split.

  name: "shape", "colour" or "relation".
  class_names: the C classes.
  image_index: int [n] test images in the task; labels: int [n] in [0, C).
  templates: prompts with a "{}" slot for the class name, shared by every
    image (shape, colour); empty when image_prompts is given.
  image_prompts: [n][C] lists of prompts, one candidate set per image
    (relation), or None.
  """
  name: str
  class_names: tuple
  image_index: np.ndarray
  labels: np.ndarray
  templates: tuple = ()
  image_prompts: tuple | None = None


def _phrase(size: str, colour: str, shape: str) -> str:
  return f"a {shapes.SIZE_WORDS[size][0]} {colour} {shape}"


def _object_templates(slot: str) -> tuple:
  """One-object captions (template 6, "{a} {pos}") with `slot` left open.

  The prompts use only caption words: the tokenizer learnt its pieces from the
  captions, so "shape" or "object" would reach the text tower as letters it has
  never seen in that order. The attributes that are not asked about (size,
  the other of colour/shape, position) run over all their values, so averaging
  the prompts leaves only the asked attribute.
  """
  others = shapes.COLOURS if slot == "shape" else shapes.SHAPES
  out = []
  for size in shapes.SIZES:
    for other in others:
      for pos in shapes.POS_WORDS.values():
        colour, shape = (other, "{}") if slot == "shape" else ("{}", other)
        out.append(f"{_phrase(size, colour, shape)} {pos[0]}")
  return tuple(out)


def _relation_prompts(scene: shapes.Scene) -> list:
  """[4][2] prompts: "A rel B" and the same fact in the other order, "B inv A"."""
  a, b = (_phrase(o.size, o.colour, o.shape) for o in scene.objects)
  return [[f"{a} {shapes.REL_WORDS[r][0]} {b}",
           f"{b} {shapes.REL_WORDS[shapes.INVERSE[r]][0]} {a}"] for r in RELATIONS]


def shapes_tasks(scenes: Sequence[shapes.Scene]) -> dict:
  """The three zero-shot tasks of the shapes test split, labelled from its scenes.

  - shape: 6 classes (shapes.SHAPES), one-object images only: in a two-object
    image "the" shape is ambiguous.
  - colour: 8 classes (shapes.COLOURS), one-object images only, likewise.
  - relation: 4 classes (left, right, above, below), two-object images only,
    label = the relation of scene.objects[0] to scene.objects[1]. An image
    always holds something left of something if it holds something right of
    something, so object-free prompts ("something left of something") cannot
    tell left from right; the candidates therefore name the image's two objects
    ("a small red circle left of a large blue square", ..., each also said in
    the other order). This scores relation reading given the objects, and it is
    the flipped-relation hard negative of retrieval: a bag of words cannot pass.

  Args:
    scenes: the test split's scenes (`shapes.test_split(...)["scenes"]`).

  Returns:
    {"shape": Task, "colour": Task, "relation": Task}.
  """
  single = np.array([i for i, s in enumerate(scenes) if s.cell is not None], np.int64)
  pair = np.array([i for i, s in enumerate(scenes) if s.cell is None], np.int64)
  labels = lambda index, fn, classes: np.array(
      [classes.index(fn(scenes[i])) for i in index], np.int64)
  colours = tuple(shapes.COLOURS)
  return {
      "shape": Task("shape", shapes.SHAPES, single,
                    labels(single, lambda s: s.objects[0].shape, shapes.SHAPES),
                    templates=_object_templates("shape")),
      "colour": Task("colour", colours, single,
                     labels(single, lambda s: s.objects[0].colour, colours),
                     templates=_object_templates("colour")),
      "relation": Task("relation", RELATIONS, pair,
                       labels(pair, lambda s: s.relation, RELATIONS),
                       image_prompts=tuple(_relation_prompts(scenes[i]) for i in pair)),
  }


def evaluate(encode_image, encode_text, tokenizer, images: np.ndarray,
             scenes: Sequence[shapes.Scene], context_length: int,
             batch_size: int, prefix: str = "zeroshot/") -> dict[str, float]:
  """Zero-shot accuracy on the three tasks of the given shapes test images.

  Args:
    encode_image: uint8 [N, S, S, 3] -> [N, D]; encode_text: int32 [B, L] -> [B, D].
      Any other view of the scenes works the same way: `images` is then that
      view's [N, ...] (e.g. their sounds) and encode_image its encoder.
    tokenizer: has `encode(texts, length)`.
    images, scenes: the first N test images and their scenes.
    context_length, batch_size: prompt length; prompts encoded per call.

  Returns:
    {"zeroshot/{task}_top{K}", "zeroshot/{task}_mean_per_class"} for task in
    shape, colour, relation, with K in (1, 5) where K < C (so relation, C = 4,
    has top1 alone), under `prefix`. A task with no image among the N is left out.
  """
  img = encode_image(images)
  out = {}
  for task in shapes_tasks(scenes).values():
    if not len(task.image_index):
      continue
    if task.image_prompts is None:
      cls = class_embeddings(encode_text, tokenizer, task.class_names, task.templates,
                             context_length, batch_size)
    else:
      flat = [p for candidates in task.image_prompts for p in candidates]
      cls = prompt_embeddings(encode_text, tokenizer, flat, context_length,
                              batch_size).reshape(len(task.image_index),
                                                  len(task.class_names), -1)
    result = classify(img[task.image_index], cls, task.labels,
                      class_names=task.class_names)
    for key, value in result.items():
      if key.startswith("top") or key == "mean_per_class":
        out[f"{prefix}{task.name}_{key}"] = value
  return out
