"""The "fusion" evaluator: scene classification from several modalities at once.

Fusion heads (mmjax.models.heads.fusion_n) are trained on the frozen towers'
outputs to predict a label of each scene from all the chosen modalities
together, and the same head on each modality alone gives the baselines they
are measured against (mmjax.train.fusion).

Tasks, labels of a scene that image, caption and sound each carry:

  colour   8 classes: the colour of the object first in reading order
  shape    6 classes: the shape of that object
  layout   3 classes: one object, two side by side, two stacked

Reading order: the left object of a side-by-side pair, the upper one of a
stacked pair, the only one when alone. Every modality holds this order, none
trivially: the image by position; a caption names the objects in either order
("a red circle left of a blue square", "a blue square right of a red
circle"), so the first object is found only by reading the relation; the
sound plays the left object first and starts the upper one first. Asking for
"the first-named object" instead would be an order only captions have. The
sketch view (no colour) cannot carry colour: its colour baseline is the floor.

Data. Training: examples 0 .. num_train - 1 of the run's training stream
(shapes.example with the run's seed, as the itm evaluator), each image with
ONE of its captions, drawn by (seed, index), and the extra fields its towers
read (shapes_views.FIELDS). Test: the shapes test split's first N images
(config.eval.num_images), each with ALL its captions, one example per
(image, caption): the image-side views of an image repeat across its five
examples, so image-only metrics equal those on the N images, while the text
baseline is scored on five paraphrases of each scene, not one chosen at random.

Results: "fusion/<task>/<head>/<metric>" for each head over all modalities,
"fusion/<task>/single:<m>/<metric>" for the `single` head on modality m
alone, with metric in accuracy, precision, recall, f1, auc (macro over
classes; pairs.multiclass_metrics); "fusion/<task>/weighted_sum/weight:<m>",
the learned share of each modality; and "fusion/<task>/majority/accuracy",
always answering the training set's most frequent class: the bar.
"""

from typing import Mapping, Sequence

import numpy as np

from mmjax.data import shapes, shapes_views
from mmjax.data.shapes_evaluators import TEST_IMAGES, _require_shapes
from mmjax.eval.evaluators import EvaluatorConfigError
from mmjax.models.heads import fusion_n

FIRST = {"left": 0, "above": 0, "right": 1, "below": 1}  # objects[i] first in reading order
LAYOUTS = ("single", "side_by_side", "stacked")
_RELATION_LAYOUT = {"left": 1, "right": 1, "above": 2, "below": 2}
_CAPTION_STREAM = 2_718_281  # keeps the caption draw apart from other uses of the seed


def first_object(scene: shapes.Scene) -> shapes.Obj:
  """The object first in reading order (left, then upper; the only one alone)."""
  return scene.objects[0 if scene.relation is None else FIRST[scene.relation]]


# task -> (class names, scene -> class index).
TASKS = {
    "colour": (tuple(shapes.COLOURS),
               lambda s: tuple(shapes.COLOURS).index(first_object(s).colour)),
    "shape": (shapes.SHAPES, lambda s: shapes.SHAPES.index(first_object(s).shape)),
    "layout": (LAYOUTS, lambda s: 0 if s.relation is None else _RELATION_LAYOUT[s.relation]),
}
# Evaluator settings; its config entry overrides any of them.
FUSION_DEFAULTS = {"num_train": 2000, "steps": 1000, "batch_size": 256, "lr": 1e-3}


def labels(task: str, scenes: Sequence[shapes.Scene]) -> np.ndarray:
  """int32 [N]: each scene's class in `task` (one of TASKS)."""
  return np.asarray([TASKS[task][1](s) for s in scenes], np.int32)


def train_examples(context, num: int, fields: Sequence[str]) -> dict:
  """Training examples 0 .. num-1 of the run's seed, each with one caption.

  fields: the input fields to build ("image", "text", or shapes_views.FIELDS).
  Returns {field: [num, ...]} ("text" tokenized: int32 [num, L]) and
  "scenes": the num scenes.
  """
  examples = [shapes.example(context.seed, "train", i, context.image_size)
              for i in range(num)]
  images, scenes = np.stack([e["image"] for e in examples]), [e["scene"] for e in examples]
  pick = np.random.default_rng([context.seed, _CAPTION_STREAM]).integers(
      len(examples[0]["captions"]), size=num)
  out = {"scenes": scenes}
  for field in fields:
    if field == "image":
      out[field] = images
    elif field == "text":
      captions = [e["captions"][j] for e, j in zip(examples, pick)]
      out[field] = context.tokenizer.encode(captions, context.context_length)
    else:
      out[field] = shapes_views.FIELDS[field](images, scenes)
  return out


def _check_settings(settings: dict) -> None:
  for key in ("num_train", "steps", "batch_size"):
    value, low = settings[key], 2 if key == "num_train" else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
      raise EvaluatorConfigError(
          f"the fusion evaluator's {key}={value!r} must be an integer >= {low}; set {key} "
          f"in its config.eval.evaluators entry (default {FUSION_DEFAULTS[key]}).")
  lr = settings["lr"]
  if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
    raise EvaluatorConfigError(f"the fusion evaluator's lr={lr!r} must be a positive number "
                               "(Adam's step); set lr in its config.eval.evaluators entry.")


def _names(value, what: str, known: Sequence[str]) -> tuple:
  """A name or a sequence of names -> a tuple of known, distinct names."""
  names = (value,) if isinstance(value, str) else tuple(value)
  bad = [n for n in names if n not in known]
  if not names or bad or len(set(names)) != len(names):
    raise EvaluatorConfigError(f"the fusion evaluator's {what}={value!r}: give one or more "
                               f"distinct names from {tuple(known)}.")
  return names


class Fusion:
  """Fusion heads and single-modality baselines on frozen towers (see the
  module docstring).

  modalities: the towers fused (default all); task: a name in TASKS or a
  sequence of them; heads: the fusion_n heads over all modalities (default
  all three); single: the head kind of the per-modality baselines (None:
  none); head_options: {kind: attributes} (e.g. {"cross_attention":
  {"width": 64}}); the other keyword arguments override FUSION_DEFAULTS.
  """

  def __init__(self, context, modalities: Sequence[str] | None = None,
               task: str | Sequence[str] = "colour", heads: Sequence[str] | None = None,
               single: str | None = "concat_mlp",
               head_options: Mapping[str, Mapping] | None = None, **settings):
    _require_shapes(context, "fusion")
    unknown = sorted(set(settings) - set(FUSION_DEFAULTS))
    if unknown:
      raise EvaluatorConfigError(
          f"the fusion evaluator has unknown keys {unknown}; known: {sorted(FUSION_DEFAULTS)} "
          "and modalities, task, heads, single, head_options.")
    self.context, self.settings = context, {**FUSION_DEFAULTS, **settings}
    _check_settings(self.settings)
    self.modalities = _names(modalities or tuple(context.inputs), "modalities",
                             tuple(context.inputs))
    self.tasks = _names(task, "task", tuple(TASKS))
    self.heads = _names(heads or tuple(fusion_n.HEADS), "heads", tuple(fusion_n.HEADS))
    if single is not None:
      _names(single, "single", tuple(fusion_n.HEADS))
    self.single = single
    self.head_options = {k: dict(v) for k, v in (head_options or {}).items()}
    if self.head_options:
      _names(tuple(self.head_options), "head_options' keys", tuple(fusion_n.HEADS))
    for kind, options in self.head_options.items():
      try:  # builds the module only: a misspelt attribute fails here, not after training
        fusion_n.make_head(kind, self.modalities, 2, **options)
      except TypeError as e:
        cls = fusion_n.HEADS[kind].__name__
        raise EvaluatorConfigError(f"the fusion evaluator's head_options[{kind!r}]={options}: "
                                   f"{e}; use attributes of fusion_n.{cls}.") from e
    for field in self.fields:
      if field not in ("image", "text") and field not in shapes_views.FIELDS:
        raise EvaluatorConfigError(
            f"the fusion evaluator's towers read {field!r}, which is no shapes field (known: "
            f"image, text, {sorted(shapes_views.FIELDS)}); leave its tower out of modalities.")

  @property
  def fields(self) -> dict:
    """{modality: the input field its tower reads}."""
    return {m: self.context.inputs.get(m, m) for m in self.modalities}

  def _kinds(self) -> set:
    return set(self.heads) | ({self.single} if self.single else set())

  def _head(self, kind: str, modalities: tuple, num_classes: int):
    return fusion_n.make_head(kind, modalities, num_classes, **self.head_options.get(kind, {}))

  def _features(self, encoders) -> tuple:
    """The frozen towers' features of the training and test examples.

    Returns (train features, train scenes [num_train], test features, test
    rows {modality: [M]}, test scenes [M]): one test example per caption, so
    the text rows are the captions and the image-side rows their images.
    """
    from mmjax.train import matching  # pylint: disable=g-import-not-at-top
    c, fields = self.context, self.fields
    tokens = any(k in fusion_n.NEEDS_TOKENS for k in self._kinds())
    encode = lambda data: matching.modality_features(
        encoders.model, encoders.params, {m: data[f] for m, f in fields.items()},
        tokens=tokens, batch_size=c.batch_size)
    train = train_examples(c, self.settings["num_train"], sorted(set(fields.values())))
    test = c.test
    t2i = np.asarray(test["text_to_image"])
    scenes = shapes.test_split(image_size=c.image_size, num_images=TEST_IMAGES)["scenes"]
    rows = {m: np.arange(len(t2i)) if f == "text" else t2i for m, f in fields.items()}
    return encode(train), train["scenes"], encode(test), rows, [scenes[i] for i in t2i]

  def __call__(self, encoders) -> dict[str, float]:
    from mmjax.train import fusion  # pylint: disable=g-import-not-at-top
    s = self.settings
    train_f, train_scenes, test_f, rows, test_scenes = self._features(encoders)
    runs = [(kind, kind, self.modalities) for kind in self.heads]
    if self.single:
      runs += [(f"single:{m}", self.single, (m,)) for m in self.modalities]
    out = {}
    for task in self.tasks:
      k = len(TASKS[task][0])
      y_train, y_test = labels(task, train_scenes), labels(task, test_scenes)
      if len(np.unique(y_test)) < 2:
        raise EvaluatorConfigError(
            f"the fusion task {task!r} has one class among the test images evaluated; set "
            "--config.eval.num_images higher (-1: all).")
      majority = np.bincount(y_train, minlength=k).argmax()
      out[f"fusion/{task}/majority/accuracy"] = float(np.mean(y_test == majority))
      for name, kind, modalities in runs:
        head = self._head(kind, modalities, k)
        params = fusion.train_classifier(head, train_f, y_train, steps=s["steps"],
                                         batch_size=s["batch_size"], lr=s["lr"],
                                         seed=self.context.seed)
        metrics = fusion.evaluate_classifier(head, params, test_f, y_test, rows)
        out.update({f"fusion/{task}/{name}/{key}": v for key, v in metrics.items()})
        if name == "weighted_sum":
          out.update({f"fusion/{task}/{name}/weight:{m}": w
                      for m, w in fusion_n.modality_weights(head, params).items()})
    return out
