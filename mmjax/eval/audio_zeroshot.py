"""Zero-shot audio classification: clips scored against prompt-ensembled class
embeddings, on a prepared labelled dataset (ESC-50: `python -m
mmjax.data.prepare esc50 ...`).

  config.eval.evaluators.audio_zeroshot = dict(kind="audio_zeroshot", every=-1)

Each class name is put in every template ("the sound of {}.", ...), the unit
text embeddings averaged and normalised again (CLIP's ensemble, shared with
image zero-shot: mmjax.eval.zeroshot), and each test clip takes the class of
highest cosine similarity. Ties count against the clip. Writes, under
`<prefix>/` (default "audio_zeroshot"): top1, top5, mean_per_class (balanced
accuracy) and macro_f1 (the unweighted mean over classes of each class's F1,
a class never predicted nor present counting as neither).
"""

from typing import Sequence

import numpy as np

from mmjax.eval import zeroshot
from mmjax.eval.evaluators import EvaluatorConfigError

TEMPLATES = ("the sound of {}.", "this is the sound of {}.", "a recording of {}.",
             "{} can be heard.", "the sound of a {}.", "a sound clip of {}.")


def macro_f1(confusion: np.ndarray) -> float:
  """Unweighted mean F1 over the classes that occur as a label or a prediction.

  confusion: int [C, C], row = true class, column = predicted class.
  """
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
  seen = (support + predicted) > 0
  f1 = 2 * tp[seen] / (support[seen] + predicted[seen])
  return float(f1.mean()) if f1.size else 0.0


class AudioZeroShot:
  """Top-1 / top-5 accuracy, balanced accuracy and macro F1 of zero-shot
  classification of the test split's clips by their class names.

  Args (config keys of the evaluator entry):
    templates: prompt templates with one "{}" slot for the class name.
    ks: the K of each top-K accuracy (only K < the number of classes).
    modality: the tower that encodes the clips (default "audio").
    prefix: the metric names' prefix.
  """

  def __init__(self, context, templates: Sequence[str] = TEMPLATES,
               ks: Sequence[int] = (1, 5), modality: str = "audio",
               prefix: str = "audio_zeroshot"):
    if isinstance(templates, str) or not templates or any(
        not isinstance(t, str) or t.count("{}") != 1 for t in templates):
      raise EvaluatorConfigError(
          f"audio_zeroshot templates={templates!r}: give a list of strings, each with one "
          "'{}' slot for the class name, e.g. ('the sound of {}.',).")
    if modality == "text":
      raise EvaluatorConfigError("audio_zeroshot modality='text' would classify prompts "
                                 "with prompts; name the tower of the clips, e.g. 'audio'.")
    if "labels" not in context.fields:
      raise EvaluatorConfigError(
          f"audio_zeroshot needs a labelled test split, but dataset {context.data_name!r} "
          "has no labels; prepare a labelled set (e.g. `python -m mmjax.data.prepare esc50 "
          "...`) and set --config.data.name to it, or remove the evaluator.")
    self.context, self.templates, self.ks = context, tuple(templates), tuple(ks)
    self.modality, self.prefix = modality, prefix
    self.modalities = (modality, "text")
    self.last = None  # the last classify() result

  def __call__(self, encoders) -> dict[str, float]:
    test = self.context.test
    names = [str(n) for n in test.get("class_names", ())]
    labels = np.asarray(test.get("labels", ()))
    if len(names) < 2 or labels.size == 0 or (labels < 0).any():
      raise EvaluatorConfigError(
          f"audio_zeroshot needs a labelled test split with at least two classes, but "
          f"dataset {self.context.data_name!r} has {len(names)} class name(s) and "
          f"{int((labels < 0).sum())} unlabelled clip(s); prepare a labelled set (e.g. "
          "`python -m mmjax.data.prepare esc50 ...`) or remove the evaluator.")
    field = self.context.inputs.get(self.modality, self.modality)
    clips = encoders.encode(self.modality, test[field])
    classes = zeroshot.class_embeddings(
        lambda tokens: encoders.encode("text", tokens), self.context.tokenizer, names,
        self.templates, self.context.context_length, self.context.batch_size)
    result = zeroshot.classify(clips, classes, labels, ks=self.ks, class_names=names)
    self.last = result
    out = {f"{self.prefix}/top{k}": result[f"top{k}"] for k in self.ks
           if f"top{k}" in result}
    out[f"{self.prefix}/mean_per_class"] = result["mean_per_class"]
    out[f"{self.prefix}/macro_f1"] = macro_f1(result["confusion"])
    return out
