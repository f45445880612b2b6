"""Evaluators defined on the shapes dataset's scenes (registered in
mmjax.eval.evaluators.EVALUATORS):

  zeroshot   shape / colour / relation classification from prompts
  heldout    retrieval on the test images captioned in phrasings training
             never uses (shapes_heldout.TEMPLATES): generalisation to new
             sentence frames
  itm        image-text matching heads trained on frozen towers over the
             training stream, scored on the test split's mined hard negatives
             (or, with trained_head, the model's own in-step-trained head)

Each is built from an evaluator Context and called with Encoders.
"""

from typing import Sequence

import numpy as np

from mmjax.data import shapes, shapes_heldout, shapes_zeroshot
from mmjax.eval import gallery, retrieval, retrieval_evaluator
from mmjax.eval.evaluators import EvaluatorConfigError
from mmjax.eval.pairs import binary_metrics, make_pairs, roc_auc
from mmjax.models.heads.fusion import HEADS, NEEDS_TOKENS

TEST_IMAGES = 1000  # the shapes test split (pipeline.TEST_IMAGES)
HELDOUT = "heldout/"
HELDOUT_CAPTIONS = 5  # per image: shapes_heldout.heldout_split's default, used here
# Matching's settings; an evaluator entry overrides any of them.
ITM_DEFAULTS = {"num_train": 2000, "steps": 1000, "batch_size": 256, "top_k": 16,
                "easy_fraction": 0.0}


def _require_shapes(context, name: str) -> None:
  if context.data_name != "shapes":
    raise EvaluatorConfigError(
        f"the {name!r} evaluator is defined on the shapes dataset's scenes, not "
        f"{context.data_name!r}; remove it from config.eval.evaluators.")


def _num_images(context) -> int:
  n = context.num_images
  return TEST_IMAGES if n == -1 else min(n, TEST_IMAGES)


def _heldout_left_out(num_images: int, num_texts: int) -> dict[str, str]:
  """gallery.left_out under HeldOut's names ("heldout/text_to_image_R@10": ...)."""
  return {HELDOUT + k: v for k, v in gallery.left_out(num_images, num_texts).items()}


def _test_split(context) -> dict:
  return shapes.test_split(image_size=context.image_size, num_images=TEST_IMAGES)


class ZeroShot:
  """Zero-shot shape, colour and relation accuracy (shapes_zeroshot) of one
  modality's view of the test scenes against text prompts: the images by
  default (metrics "zeroshot/..."), or e.g. modality="audio", the scenes'
  sounds ("zeroshot_audio/...")."""

  def __init__(self, context, modality: str = "image"):
    _require_shapes(context, "zeroshot")
    if modality == "text":
      raise EvaluatorConfigError("zeroshot modality='text' would classify prompts with "
                                 "prompts; name the modality whose items are classified.")
    self.context, self.modality = context, modality
    self.modalities = (modality, "text")
    self.prefix = "zeroshot/" if modality == "image" else f"zeroshot_{modality}/"

  def __call__(self, encoders) -> dict[str, float]:
    c, n = self.context, _num_images(self.context)
    split = _test_split(c)
    if self.modality == "image":
      items = np.asarray(split["image"][:n])
    else:  # the test data holds the first n images' fields
      items = c.test[c.inputs.get(self.modality, self.modality)][:n]
    return shapes_zeroshot.evaluate(
        lambda x: encoders.encode(self.modality, x), lambda x: encoders.encode("text", x),
        c.tokenizer, items, split["scenes"][:n], c.context_length, c.batch_size,
        prefix=self.prefix)


def heldout_data(context) -> dict:
  """The first eval images of the shapes test split with captions in phrasings
  training never uses (shapes_heldout.heldout_split), tokenized.

  Returns {"image": uint8 [N, S, S, 3], "text": int32 [M, L], "text_to_image":
  int32 [M], "captions": M str, "truncated": float, the fraction of captions
  longer than L tokens (cut at L, so the model reads them only in part)}.
  """
  split = shapes_heldout.heldout_split(image_size=context.image_size,
                                       num_images=TEST_IMAGES)
  n = _num_images(context)
  keep = split["text_to_image"] < n
  captions = [c for c, k in zip(split["captions"], keep) if k]
  tok, length = context.tokenizer, context.context_length
  longer = tok.encode(captions, length + 8)  # rows with more than L tokens were cut
  return {"image": np.asarray(split["image"][:n]),
          "text": tok.encode(captions, length),
          "text_to_image": np.asarray(split["text_to_image"][keep], np.int32),
          "captions": captions,
          "truncated": float(np.mean((longer != tok.pad_id).sum(1) > length))}


class HeldOut:
  """Retrieval on held-out phrasings: retrieval_metrics' keys under "heldout/",
  plus "heldout/truncated" (see heldout_data)."""

  modalities = ("image", "text")

  def __init__(self, context):
    _require_shapes(context, "heldout")
    self.context = context
    self._data = None
    n = _num_images(context)
    retrieval_evaluator.warn_small_gallery(_heldout_left_out(n, n * HELDOUT_CAPTIONS), n,
                                           TEST_IMAGES, context.num_images)

  def __call__(self, encoders) -> dict[str, float]:
    if self._data is None:
      self._data = heldout_data(self.context)
    data = self._data
    # The test split's images are the retrieval evaluator's: shared encodings.
    test = self.context.test
    images = test["image"] if len(test["image"]) == len(data["image"]) else data["image"]
    metrics = retrieval.retrieval_metrics(encoders.encode("image", images),
                                          encoders.encode("text", data["text"]),
                                          data["text_to_image"], warn=False)
    gallery.warn_left_out(_heldout_left_out(len(images), len(data["text"])))
    out = {HELDOUT + k: v for k, v in metrics.items()}
    out[HELDOUT + "truncated"] = data["truncated"]
    return out


def scene_groups(scenes) -> np.ndarray:
  """Scenes -> ints, equal for scenes with the same captions (shapes.canonical)."""
  ids = {}
  return np.asarray([ids.setdefault(shapes.canonical(s), len(ids)) for s in scenes])


def itm_train_data(context, num_images: int) -> dict:
  """Training examples 0 .. num_images-1 of the run's seed, with all their
  captions, tokenized and grouped by scene.

  train_batch keeps one caption per image; the test split has five, and a
  gallery with five paraphrases per image yields harder negatives than one
  with one. Keeping every caption makes the train pairs as hard as the test's.
  """
  examples = [shapes.example(context.seed, "train", i, context.image_size)
              for i in range(num_images)]
  captions = [c for e in examples for c in e["captions"]]
  per_image = len(examples[0]["captions"])
  return {"image": np.stack([e["image"] for e in examples]),
          "text": context.tokenizer.encode(captions, context.context_length),
          "text_to_image": np.repeat(np.arange(num_images, dtype=np.int32), per_image),
          "group": scene_groups([e["scene"] for e in examples])}


def _check_itm_settings(settings: dict) -> None:
  """The itm settings that would otherwise fail only after training, each named."""
  minimum = {"num_train": 2, "steps": 1, "batch_size": 1, "top_k": 1}
  for key, low in minimum.items():
    value = settings[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
      why = " (a negative pair needs a second image)" if key == "num_train" else ""
      raise EvaluatorConfigError(
          f"the itm evaluator's {key}={value!r} must be an integer >= {low}{why}; set "
          f"{key} in its config.eval.evaluators entry (default {ITM_DEFAULTS[key]}).")
  fraction = settings["easy_fraction"]
  if (not isinstance(fraction, (int, float)) or isinstance(fraction, bool)
      or not 0 <= fraction <= 1):
    raise EvaluatorConfigError(
        f"the itm evaluator's easy_fraction={fraction!r} must be a fraction in [0, 1] "
        "(of negatives drawn at random rather than mined); set easy_fraction in its "
        "config.eval.evaluators entry.")


class Matching:
  """Image-text matching heads trained on the frozen towers (mmjax.train.matching).

  kinds: the fusion heads to train (default all); the other keyword
  arguments override ITM_DEFAULTS. Writes "itm/<kind>/{accuracy, precision,
  recall, f1, auc}" and "itm/contrastive/auc", the ROC AUC of the model's own
  similarity on the same test pairs: the bar a head has to clear.

  trained_head: the name of the model's own ITM head (config.model.heads.<name>
  of kind "itm", trained in the train step on in-batch hard negatives), e.g.
  "itm". Nothing is trained then: that head scores the same mined test pairs,
  as "itm/trained/{accuracy, precision, recall, f1, auc}" (num_train, steps
  and batch_size go unused; top_k and easy_fraction still shape the pairs).
  `last` holds the pairs and the head's logits of the last call.
  """

  modalities = ("image", "text")

  def __init__(self, context, kinds: Sequence[str] | None = None,
               trained_head: str | None = None, **settings):
    from mmjax.train import matching  # pylint: disable=g-import-not-at-top
    _require_shapes(context, "itm")
    unknown = sorted(set(settings) - set(ITM_DEFAULTS))
    if unknown:
      raise EvaluatorConfigError(f"the itm evaluator has unknown keys {unknown}; known: "
                                 f"{sorted(ITM_DEFAULTS)} and kinds (or trained_head).")
    if trained_head is not None and kinds is not None:
      raise EvaluatorConfigError(
          f"the itm evaluator was given kinds={kinds!r} and trained_head={trained_head!r}: "
          "with trained_head it trains nothing; use two config.eval.evaluators entries "
          "(one with kinds, one with trained_head).")
    self.trained_head = trained_head
    self.last = None
    self.kinds = () if trained_head is not None else tuple(kinds or HEADS)
    for kind in self.kinds:
      matching.head_key(kind)  # unknown kinds fail here, listing the known ones
    self.context, self.settings = context, {**ITM_DEFAULTS, **settings}
    _check_itm_settings(self.settings)
    if _num_images(context) < 2:
      # One image has only matching captions: no negative pair, no AUC.
      raise EvaluatorConfigError(
          f"config.eval.num_images={context.num_images}: the itm evaluator scores "
          "matching against mismatched pairs, which needs at least 2 test images; set "
          "--config.eval.num_images=2 or more (-1: all), or turn itm off.")

  def __call__(self, encoders) -> dict[str, float]:
    from mmjax.train import matching  # pylint: disable=g-import-not-at-top
    s, c = self.settings, self.context
    model, params = encoders.model, encoders.params
    own = None  # (fusion kind, params, head_cfg) of the model's own head
    if self.trained_head is not None:
      try:  # before anything is computed: a model without the head fails at once
        own = matching.model_head(model, params, self.trained_head)
      except ValueError as e:
        raise EvaluatorConfigError(f"the itm evaluator's trained_head: {e}") from None
    kinds = self.kinds if own is None else (own[0],)
    tokens = any(kind in NEEDS_TOKENS for kind in kinds)
    test = dict(c.test)
    test["group"] = scene_groups(_test_split(c)["scenes"][:len(test["image"])])
    test_f = matching.tower_features(model, params, test, tokens=tokens,
                                     batch_size=c.batch_size)
    pairs = make_pairs(test_f["zimg"], test_f["ztxt"], test["text_to_image"], test["group"],
                       top_k=s["top_k"], seed=matching.TEST_SEED,
                       easy_fraction=s["easy_fraction"])
    cosine = np.sum(test_f["zimg"][pairs["image"]] * test_f["ztxt"][pairs["text"]], axis=-1)
    metrics = {"itm/contrastive/auc": roc_auc(cosine, pairs["label"])}
    if own is not None:
      kind, head_params, head_cfg = own
      logits = matching.head_logits(kind, head_params, test_f, pairs, head_cfg=head_cfg,
                                    batch_size=c.batch_size)
      self.last = {"pairs": pairs, "logits": logits}
      metrics.update({f"itm/trained/{k}": v
                      for k, v in binary_metrics(logits, pairs["label"]).items()})
      return metrics
    train = itm_train_data(c, s["num_train"])
    # Negatives mined over more images are closer to their positives: train
    # pairs are mined in pools the size of the test split, so the head learns
    # negatives as hard as those it is scored on.
    pool = len(test["image"])
    train_f = matching.tower_features(model, params, train, tokens=tokens,
                                      batch_size=c.batch_size)
    for kind in self.kinds:
      trained = matching.train_head(kind, model, params, train, steps=s["steps"],
                                    batch_size=s["batch_size"], seed=c.seed,
                                    top_k=s["top_k"], easy_fraction=s["easy_fraction"],
                                    pool=pool, features=train_f)
      metrics.update(matching.evaluate_head(kind, model, trained, test, top_k=s["top_k"],
                                            easy_fraction=s["easy_fraction"],
                                            features=test_f))
    return metrics
