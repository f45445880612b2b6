"""The itm evaluator with trained_head (mmjax/data/shapes_evaluators.py): the
model's own in-step-trained ITM head scored on the mined test pairs, against
the head module applied to those pairs directly, and the messages."""

import dataclasses

import jax
import numpy as np
import pytest
from flax.core import FrozenDict

from mmjax.data import shapes, shapes_evaluators
from mmjax.eval import evaluators
from mmjax.eval.evaluators import EvaluatorConfigError
from mmjax.eval.pairs import binary_metrics
from mmjax.models.heads import matching as matching_head
from mmjax.train import matching

from tests.models import tiny

V, L, N = 11, 6, 10  # vocabulary, caption length, test images
ITM = FrozenDict(kind="itm", fusion="concat_mlp", options=FrozenDict(hidden=8, depth=1))


def _model(heads):
  return tiny.multi_tower_with(heads, V, L)


@dataclasses.dataclass
class Stub:
  """Encoders as far as the checks before any compute read them."""
  model: object
  params: object = None


@pytest.fixture(scope="module")
def setup():
  model = _model({"itm": ITM})
  rng = np.random.default_rng(0)
  text = rng.integers(3, V, (N, L)).astype(np.int32)
  text[:, -1] = 2
  # One caption per image: mining captions for images and images for captions
  # then has one shape, and compiles once.
  test = {"image": np.asarray(shapes.test_split(image_size=16, num_images=1000)["image"][:N]),
          "text": text, "text_to_image": np.arange(N, dtype=np.int32)}
  # Random params drawn in NumPy: compiling model.init would cost seconds.
  shapes_ = jax.eval_shape(model.init, jax.random.key(0),
                           {"image": test["image"][:2], "text": text[:2]})["params"]
  params = jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(s.dtype), shapes_)
  context = evaluators.Context(
      data_name="shapes", image_size=16, context_length=L, seed=0,
      inputs={"image": "image", "text": "text"}, fields=("image", "text"), batch_size=64,
      num_images=N, load_test=lambda: test)
  return model, params, context, test


def test_trained_head_scores_the_models_own_head(setup):
  model, params, context, test = setup
  evaluator = shapes_evaluators.Matching(context, trained_head="itm", top_k=4)
  assert evaluator.kinds == ()
  out = evaluator(evaluators.Encoders(model, params, 64))
  assert set(out) == {"itm/contrastive/auc"} | {
      f"itm/trained/{m}" for m in ("accuracy", "precision", "recall", "f1", "auc")}
  pairs, logits = evaluator.last["pairs"], evaluator.last["logits"]
  assert len(set(pairs["label"].tolist())) == 2 and len(logits) == len(pairs["label"])
  # The model's head module on the same pairs, from its own params subtree:
  # its first logits are those of the batch's positives, here the pairs.
  feats = matching.tower_features(model, params, test, tokens=False)
  head = matching_head.MatchingHead(fusion=ITM["fusion"], options=ITM["options"])
  want = jax.jit(lambda p, zi, zt: head.apply({"params": p}, {"z/image": zi, "z/text": zt}))(
      params["itm_head"], feats["zimg"][pairs["image"]], feats["ztxt"][pairs["text"]])
  want = np.asarray(want["logits"][:len(logits)])
  assert np.ptp(want) > 1e-3  # a head whose logits tell pairs apart
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
  for key, value in binary_metrics(want, pairs["label"]).items():
    assert out[f"itm/trained/{key}"] == pytest.approx(value, abs=1e-6), key


def test_trained_head_messages(setup):
  model, params, context, _ = setup
  evaluator = shapes_evaluators.Matching(context, trained_head="itm")
  with pytest.raises(EvaluatorConfigError, match=(
      r"the itm evaluator's trained_head: the model has no ITM head 'itm' \(heads: \[\]\); "
      r"add config.model.heads.itm = dict\(kind='itm', fusion='concat_mlp'\)")):
    evaluator(Stub(_model({})))
  with pytest.raises(EvaluatorConfigError,
                     match="has a CaptionDecoder, not an ITM head, as head 'itm'"):
    evaluator(Stub(_model({"itm": FrozenDict(kind="caption_decoder", vocab_size=V)})))
  no_head = {k: v for k, v in params.items() if k != "itm_head"}
  with pytest.raises(EvaluatorConfigError, match="the params have nothing under 'itm_head'"):
    evaluator(Stub(model, no_head))
  with pytest.raises(EvaluatorConfigError, match="not \\(image, text\\) pairs"):
    evaluator(Stub(_model({"itm": ITM.copy({"pair": ("image", "audio")})})))
  with pytest.raises(EvaluatorConfigError, match="use two config.eval.evaluators entries"):
    shapes_evaluators.Matching(context, kinds=["concat_mlp"], trained_head="itm")
