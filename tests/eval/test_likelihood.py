"""The caption_likelihood evaluator (mmjax/eval/likelihood.py) on a tiny random
model: the pair score against the cached step path, re-ranking against the
embedding (rerank_k=1) and against brute force over every pair (rerank_k at
least the gallery), a scorer that knows the answers, and the messages."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict

from mmjax import registry
from mmjax.data import shapes, shapes_zeroshot
from mmjax.eval import evaluators, likelihood, retrieval
from mmjax.eval.evaluators import EvaluatorConfigError

from tests.models import tiny

V, L, N, PER = 11, 6, 12, 3  # vocabulary (pad 0, eos 2), caption length, images, captions each
# Every batch of every jitted function this many rows (the test captions'
# count; prompts, pairs and captions are padded to it), so each compiles once.
BATCH = N * PER


class Tokenizer:
  """Each distinct text a row of its own (its number in base 8 over ids 3..10,
  then EOS), so a scorer can read the text back."""

  pad_id, eos_id = 0, 2

  def __init__(self):
    self.ids, self.texts = {}, {}

  def encode(self, texts, length):
    rows = np.zeros((len(texts), length), np.int32)
    for r, text in enumerate(texts):
      uid = self.ids.setdefault(text, len(self.ids))
      self.texts[uid] = text
      rows[r, :-1] = [3 + (uid // 8 ** p) % 8 for p in range(length - 1)]
      rows[r, -1] = self.eos_id
    return rows

  def text(self, row):
    return self.texts[sum(int(row[p] - 3) * 8 ** p for p in range(len(row) - 1))]


def _model(heads):
  return tiny.multi_tower_with(heads, V, L)


def _captions(n, seed):
  """[n, L] rows of 1 .. L real tokens, then pad: the last is EOS, but in some
  full rows (captions cut at L, as the tokenizer cuts long ones)."""
  rng = np.random.default_rng(seed)
  rows = rng.integers(3, V, (n, L)).astype(np.int32)
  for r, real in enumerate(rng.integers(1, L + 1, n)):
    if real < L or r % 2:
      rows[r, real - 1] = 2
    rows[r, real:] = 0
  return rows


@pytest.fixture(scope="module")
def setup():
  model = _model({"caption": FrozenDict(kind="caption_decoder", vocab_size=V, context_length=L,
                                        width=16, depth=1, num_heads=2, eos_id=2, pad_id=0)})
  images = np.asarray(shapes.test_split(image_size=16, num_images=1000)["image"][:N])
  test = {"image": images, "text": _captions(N * PER, 0),
          "text_to_image": np.repeat(np.arange(N, dtype=np.int32), PER)}
  # Random params of the right shapes, drawn in NumPy: compiling model.init
  # would cost seconds, and any weights do; these give log-likelihoods that
  # differ from pair to pair.
  shapes_ = jax.eval_shape(model.init, jax.random.key(0),
                           {"image": images[:2], "text": test["text"][:2]})["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(s.dtype), shapes_)
  context = evaluators.Context(
      data_name="shapes", image_size=16, context_length=L, seed=0,
      inputs={"image": "image", "text": "text"}, fields=("image", "text"), batch_size=BATCH,
      num_images=N, tokenizer=Tokenizer(), load_test=lambda: test)
  encoders = evaluators.Encoders(model, params, BATCH)
  return model, params, context, encoders, test


def _scores(setup, image_index, caption_index):
  model, params, _, encoders, test = setup
  memory = encoders.features("image", test["image"])["tokens"]
  return likelihood.pair_scores(model, params, "caption", memory, test["text"], image_index,
                                caption_index, batch_size=BATCH)


def test_pair_score_is_the_sum_of_stepwise_log_probs(setup):
  model, params, _, encoders, test = setup
  image, caption = np.array([0, 3, 5, 7, 11, 2]), np.array([0, 10, 2, 30, 35, 17])
  got = _scores(setup, image, caption)
  # The cached decoding path, one token at a time, log-softmax in float64.
  caps = test["text"][caption]
  tokens = encoders.features("image", test["image"])["tokens"][image]
  variables = {"params": params}
  state = jax.jit(lambda t: model.apply(variables, "caption", "prefill", t, L,
                                        method=model.head))(tokens)
  step = jax.jit(lambda ids, pos, state: model.apply(variables, "caption", "step", ids, pos,
                                                     state, method=model.head))
  inputs = np.concatenate([np.full((len(caps), 1), V), caps[:, :-1]], axis=1)  # BOS first
  total, steps = np.zeros(len(caps)), []
  for pos in range(L):
    logits, state = step(jnp.asarray(inputs[:, pos]), jnp.asarray(pos), state)
    steps.append(logits)
    logits = np.asarray(logits, np.float64)
    top = logits.max(1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True))
    total += logp[np.arange(len(caps)), caps[:, pos]] * (caps[:, pos] != 0)
  assert len(set(np.round(total, 3))) == len(total)  # pairs the score tells apart
  np.testing.assert_allclose(got, total, rtol=1e-5, atol=1e-4)
  count = (caps != 0).sum(1)
  assert len(set(count)) > 2  # captions of several lengths
  # "mean": per real token (the reduction alone, on the step logits).
  logits = np.stack(steps, axis=1)  # [B, L, V]
  for normalize, want in (("sum", total), ("mean", total / count)):
    np.testing.assert_allclose(
        likelihood.caption_log_likelihood(logits, caps, 0, normalize), want, rtol=1e-5,
        atol=1e-4)


def _run(setup, **kwargs):
  _, _, context, encoders, _ = setup
  return likelihood.CaptionLikelihood(context, **kwargs)(encoders)


DIRECTIONS = ("image_to_text", "text_to_image")


def test_rerank_k_1_keeps_the_embedding_order(setup):
  _, _, _, encoders, test = setup
  out = _run(setup, rerank_k=1, tasks=False)
  want = retrieval.retrieval_metrics(encoders.encode("image", test["image"]),
                                     encoders.encode("text", test["text"]),
                                     test["text_to_image"])
  assert set(out) == {f"likelihood/{p}{d}_R@{k}" for p in ("", "embedding_")
                      for d in DIRECTIONS for k in (1, 5)} | {
      f"likelihood/{d}_{s}" for d in DIRECTIONS
      for s in ("mean_rank", "median_rank", "recall_in_top_k")}
  for d in DIRECTIONS:
    for k in (1, 5):
      assert out[f"likelihood/{d}_R@{k}"] == out[f"likelihood/embedding_{d}_R@{k}"] == (
          want[f"{d}_R@{k}"])
    assert out[f"likelihood/{d}_recall_in_top_k"] == want[f"{d}_R@1"]
    assert out[f"likelihood/{d}_mean_rank"] == want[f"{d}_mean_rank"]
  # The run's printout tables them beside the retrieval evaluator's numbers.
  text = evaluators.format_results({**want, **out})
  assert "likelihood/image <-> text:" in text and "likelihood/embedding_image_to_text_R@1" in text


def test_rerank_over_the_whole_gallery_is_likelihood_retrieval(setup):
  """rerank_k >= both galleries: every pair is rescored, so the ranks are
  those of the likelihood alone, computed here from the full N x M scores."""
  _, _, _, _, test = setup
  out = _run(setup, rerank_k=N * PER)
  t2i = test["text_to_image"]
  full = _scores(setup, np.repeat(np.arange(N), N * PER),
                 np.tile(np.arange(N * PER), N)).reshape(N, N * PER)
  match = t2i[None, :] == np.arange(N)[:, None]  # [N, M]

  def ranks(scores, match):  # pessimistic, as mmjax.eval.retrieval
    best = np.where(match, scores, -np.inf).max(1)
    return 1 + (~match & (scores >= best[:, None])).sum(1)

  for d, r in zip(DIRECTIONS, (ranks(full, match), ranks(full.T, match.T))):
    assert out[f"likelihood/{d}_recall_in_top_k"] == 1.0
    for k in (1, 5):
      assert out[f"likelihood/{d}_R@{k}"] == np.mean(r <= k), (d, k)
    assert out[f"likelihood/{d}_mean_rank"] == np.mean(r)
  assert {k for k in out if "zeroshot" in k} == {
      f"likelihood/{p}zeroshot/{t}_top1" for p in ("", "embedding_")
      for t in ("shape", "colour", "relation")}
  assert all(0.0 <= v <= 1.0 for k, v in out.items() if "zeroshot" in k)


def test_a_scorer_that_knows_the_answer(setup, monkeypatch):
  _, _, context, encoders, test = setup
  t2i = test["text_to_image"]

  def oracle(*args, **kwargs):  # pair_scores' arguments: 1 for a match, else 0
    captions, image_index, caption_index = args[4:]
    assert captions is test["text"]
    return (t2i[caption_index] == image_index).astype(np.float32)

  monkeypatch.setattr(likelihood, "pair_scores", oracle)
  out = _run(setup, rerank_k=3, tasks=False)
  for d in DIRECTIONS:
    assert out[f"likelihood/{d}_R@1"] == out[f"likelihood/{d}_recall_in_top_k"]
    assert out[f"likelihood/{d}_R@1"] >= out[f"likelihood/embedding_{d}_R@1"]
  assert out["likelihood/text_to_image_R@1"] > out["likelihood/embedding_text_to_image_R@1"]

  # Zero-shot: a score of 1 for the true class's prompts gives top-1 = 1, of
  # 1 for the others 0; task by task (a prompt of one task can be in another).
  tok = context.tokenizer
  zimg = encoders.encode("image", test["image"])
  scenes = shapes.test_split(image_size=16, num_images=1000)["scenes"][:N]
  tasks = shapes_zeroshot.shapes_tasks(scenes)
  assert all(len(t.image_index) for t in tasks.values())
  assert len(likelihood.template_subset(tasks["shape"].templates)) == likelihood.MAX_TEMPLATES
  for name, task in tasks.items():
    prompts = likelihood.class_prompts(task)
    true = {(int(i), p) for i, cands, label in zip(task.image_index, prompts, task.labels)
            for p in cands[label]}
    for sign in (1.0, -1.0):
      def score(image_index, captions, caption_index, sign=sign):
        return np.asarray([sign * ((int(i), tok.text(captions[j])) in true)
                           for i, j in zip(image_index, caption_index)])
      got = likelihood.zeroshot_tasks({name: task}, zimg, lambda x: encoders.encode("text", x),
                                      tok, L, BATCH, score)
      assert got[f"zeroshot/{name}_top1"] == (1.0 if sign > 0 else 0.0), (name, sign)
      assert 0.0 <= got[f"embedding_zeroshot/{name}_top1"] <= 1.0


def test_messages_and_registration(setup):
  model, _, context, _, _ = setup

  @dataclasses.dataclass
  class Stub:
    model: object
    params: object = None

  itm = FrozenDict(kind="itm")
  for heads, found in (({}, "no such head"), ({"caption": itm}, "a MatchingHead")):
    evaluator = likelihood.CaptionLikelihood(context)
    with pytest.raises(EvaluatorConfigError, match=re.escape(
        f"generation/likelihood asked of a model with no decoder head 'caption' ({found}; ")
        + r".*add config.model.heads.caption = dict\(kind='caption_decoder', source='image'"):
      evaluator(Stub(_model(heads)))
  with pytest.raises(EvaluatorConfigError, match="reads 'image' tokens.*set its source"):
    likelihood.CaptionLikelihood(context, source="audio")(Stub(model))
  with pytest.raises(EvaluatorConfigError, match=r"normalize='max'; choose one of \('sum', "):
    likelihood.CaptionLikelihood(context, normalize="max")
  with pytest.raises(EvaluatorConfigError, match="rerank_k=0 must be an integer >= 1"):
    likelihood.CaptionLikelihood(context, rerank_k=0)
  kind = registry.import_path(evaluators.EVALUATORS["caption_likelihood"], "kind")
  assert kind is likelihood.CaptionLikelihood
  assert not kind(dataclasses.replace(context, data_name="coco")).tasks
