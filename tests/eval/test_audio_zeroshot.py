"""Tests for mmjax/eval/audio_zeroshot.py: prompt-ensembled zero-shot
classification of clips, on stand-in encoders (no model to compile)."""

import numpy as np
import pytest

from mmjax import registry
from mmjax.eval import audio_zeroshot, evaluators

CLASSES = ["dog", "rain", "church bells"]


class Tokenizer:
  """Encodes a prompt as [index of the class it names, index of its template + 1]."""

  def __init__(self, templates):
    self.templates = templates

  def encode(self, texts, length):
    out = np.zeros((len(texts), length), np.int32)
    for i, text in enumerate(texts):
      out[i, 0] = next(c for c, name in enumerate(CLASSES) if name in text)
      out[i, 1] = 1 + next(t for t, tpl in enumerate(self.templates)
                           if tpl.format(CLASSES[out[i, 0]]) == text)
    return out


class Encoders:
  """Text: the class direction plus a template-dependent wobble (the ensemble
  averages it out); audio: the rows of test["audio"] as they are."""

  def __init__(self):
    self.calls = []

  def encode(self, modality, x):
    self.calls.append(modality)
    x = np.asarray(x)
    if modality == "text":
      emb = np.eye(len(CLASSES) + 1)[x[:, 0]]
      emb[:, -1] = np.where(x[:, 1] % 2, 0.3, -0.3)
    else:
      emb = x
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)


def context(test, templates=audio_zeroshot.TEMPLATES, fields=("audio", "text", "labels")):
  return evaluators.Context(
      data_name="esc50", image_size=32, context_length=4, seed=0,
      inputs={"audio": "audio", "text": "text"}, fields=fields, batch_size=4,
      num_images=-1, tokenizer=Tokenizer(templates), load_test=lambda: test)


def one_hot(classes):
  return np.eye(len(CLASSES) + 1, dtype=np.float32)[classes]


def test_accuracy_and_macro_f1():
  labels = np.array([0, 0, 1, 1, 2, 2], np.int32)
  predicted = [0, 1, 1, 1, 2, 0]
  test = {"audio": one_hot(predicted), "labels": labels,
          "class_names": np.asarray(CLASSES), "text": np.zeros((6, 4), np.int32)}
  evaluator = audio_zeroshot.AudioZeroShot(context(test), ks=(1, 2))
  assert evaluator.modalities == ("audio", "text")
  result = evaluator(Encoders())
  assert result["audio_zeroshot/top1"] == pytest.approx(4 / 6)
  # A wrong clip scores 0 for its class, tied with the other wrong class: rank 3.
  assert result["audio_zeroshot/top2"] == pytest.approx(4 / 6)
  assert result["audio_zeroshot/mean_per_class"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
  f1 = [2 * 1 / (2 + 2), 2 * 2 / (2 + 3), 2 * 1 / (2 + 1)]
  assert result["audio_zeroshot/macro_f1"] == pytest.approx(np.mean(f1))
  np.testing.assert_array_equal(evaluator.last["confusion"],
                                [[1, 1, 0], [0, 2, 0], [1, 0, 1]])


def test_macro_f1_counts_only_classes_that_occur():
  assert audio_zeroshot.macro_f1(np.diag([3, 2, 0])) == pytest.approx(1.0)
  assert audio_zeroshot.macro_f1(np.array([[0, 2], [0, 0]])) == pytest.approx(0.0)


def test_registered_and_checked():
  kind = registry.import_path(evaluators.EVALUATORS["audio_zeroshot"], "evaluator")
  assert kind is audio_zeroshot.AudioZeroShot
  with pytest.raises(evaluators.EvaluatorConfigError, match=r"one '\{\}' slot"):
    audio_zeroshot.AudioZeroShot(context({}), templates=("the sound of",))
  # A dataset without labels is refused when the evaluator is built (before
  # anything compiles), and labels that do not fit when it runs.
  with pytest.raises(evaluators.EvaluatorConfigError, match="labelled test split.*esc50"):
    audio_zeroshot.AudioZeroShot(context({}, fields=("audio", "text")))
  unlabelled = {"audio": one_hot([0, 1]), "labels": np.array([-1, -1]),
                "class_names": np.asarray([], dtype=str)}
  with pytest.raises(evaluators.EvaluatorConfigError, match="at least two classes"):
    audio_zeroshot.AudioZeroShot(context(unlabelled))(Encoders())
