"""The caption decoder head and generation: the cached step against the full
recomputation, the searches against each other and against brute force, the
captioning loss against a direct formula, and the messages for bad input."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict

from mmjax import losses
from mmjax.models import generate, multi_tower

from tests.models import tiny

V, L = 11, 6  # vocabulary (pad 0, eos 2) and caption length


def _model(num_queries=0, parallel_fraction=0.0):
  heads = {"caption": FrozenDict(
      kind="caption_decoder", vocab_size=V, context_length=L, width=32, depth=2, num_heads=2,
      eos_id=2, pad_id=0, num_queries=num_queries, parallel_fraction=parallel_fraction)}
  return tiny.multi_tower_with(heads, V, L, width=32, patch=4, embed_dim=16)


def _batch(n=4, seed=0):
  rng = np.random.default_rng(seed)
  text = rng.integers(3, V, (n, L)).astype(np.int32)
  text[:, -2], text[:, -1] = 2, 0  # ..., EOS, pad
  return {"image": rng.integers(0, 255, (n, 8, 8, 3)).astype(np.uint8), "text": text}


def _init(model):
  return model.init(jax.random.key(1), _batch())["params"]


@pytest.fixture(scope="module")
def model_and_params():
  model = _model()
  return model, _init(model)


def _spread(params):
  """Weights 3x the initial scale: a random decoder whose greedy captions
  differ from image to image, so the searches have choices to disagree on."""
  return jax.tree.map(lambda p: p * 3.0 if p.ndim >= 2 else p, params)


def _decode(model, params, images, captions):
  tokens = model.apply({"params": params}, images, "image", method=model.features)["tokens"]
  return model.apply({"params": params}, "caption", "decode", tokens, captions,
                     method=model.head)


@pytest.mark.parametrize("num_queries", [0, 3], ids=["all_tokens", "pooler"])
def test_cached_step_equals_full_recomputation(num_queries):
  model = _model(num_queries=num_queries)
  params = _init(model)
  batch = _batch()
  full = _decode(model, params, batch["image"], batch["text"])  # [B, L, V]
  tokens = model.apply({"params": params}, batch["image"], "image",
                       method=model.features)["tokens"]
  state = model.apply({"params": params}, "caption", "prefill", tokens, L, method=model.head)
  inputs = np.concatenate([np.full((4, 1), V), batch["text"][:, :-1]], axis=1)  # BOS first
  step = jax.jit(lambda ids, pos, state: model.apply(
      {"params": params}, "caption", "step", ids, pos, state, method=model.head))
  for pos in range(L):
    logits, state = step(jnp.asarray(inputs[:, pos]), jnp.asarray(pos), state)
    np.testing.assert_allclose(logits, full[:, pos], atol=1e-5, rtol=1e-5)


def _log_prob(model, params, images, ids):
  """Sum of log p of each row's tokens up to and including its EOS."""
  logp = jax.nn.log_softmax(_decode(model, params, images, ids))
  picked = np.take_along_axis(np.asarray(logp), ids[..., None], axis=-1)[..., 0]
  upto = np.cumsum(ids == 2, axis=1) - (ids == 2) == 0  # through the first EOS
  return (picked * upto).sum(1)


@pytest.mark.slow  # decodes with every search, the longest test of this file
def test_searches_agree(model_and_params):
  model, params = model_and_params
  params = _spread(params)
  images = _batch(8, seed=3)["image"]
  run = lambda **kw: np.asarray(jax.jit(generate.captioner(model, **kw))(params, images))
  greedy = run(method="greedy")
  assert len({tuple(r) for r in greedy}) > 1  # not a degenerate model
  assert not (greedy[:, :1] == 0).any()  # padding is never generated
  np.testing.assert_array_equal(run(method="beam", beam_size=1), greedy)
  np.testing.assert_array_equal(run(method="greedy", use_cache=False), greedy)
  np.testing.assert_array_equal(run(method="sample", top_k=1), greedy)
  beam = run(method="beam", beam_size=4)
  # A wider beam never finds a less likely caption than greedy (no length penalty).
  assert (_log_prob(model, params, images, beam)
          >= _log_prob(model, params, images, greedy) - 1e-4).all()
  # min_length: no EOS among the first 3 tokens.
  assert not (run(method="beam", beam_size=2, min_length=4)[:, :3] == 2).any()


def _markov_step(table):
  """A step_fn of a first-order Markov chain: logits = table[last token]."""
  def step_fn(last, pos, state):
    return table[jnp.minimum(last, table.shape[0] - 1)], state
  return step_fn


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_search_finds_the_best_caption_by_brute_force(alpha):
  vocab, length, eos, pad, bos = 4, 3, 2, 0, 4
  rng = np.random.default_rng(0)
  table = jnp.asarray(rng.normal(size=(vocab + 1, vocab)) * 2, jnp.float32)  # row 4: BOS
  ids, score = generate.beam_search(_markov_step(table), {}, 1, beam_size=vocab ** length,
                                    bos_id=bos, eos_id=eos, pad_id=pad, max_length=length,
                                    alpha=alpha)
  logp = np.asarray(jax.nn.log_softmax(table))
  best, best_seq = -np.inf, None
  for n in range(1, length + 1):
    for seq in itertools.product([t for t in range(vocab) if t != pad], repeat=n):
      if eos in seq[:-1] or (n < length and seq[-1] != eos):
        continue  # an EOS ends a caption; one without EOS runs to max_length
      prev, total = bos, 0.0
      for t in seq:
        total, prev = total + logp[prev, t], t
      total /= ((5 + n) / 6) ** alpha
      if total > best:
        best, best_seq = total, seq
  np.testing.assert_allclose(float(score[0]), best, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(ids[0, :len(best_seq)]), best_seq)


def test_generation_bad_options_name_the_fix(model_and_params):
  model, _ = model_and_params
  with pytest.raises(ValueError, match="beam_size=20 must be between 1 and the vocabulary"):
    generate.captioner(model, method="beam", beam_size=20)
  with pytest.raises(ValueError, match="has no head 'caption'.*caption_decoder"):
    generate.captioner(multi_tower.MultiTower(towers=model.towers, embed_dim=16))
  with pytest.raises(ValueError, match="temperature"):
    generate.sample(None, None, 1, jax.random.key(0), bos_id=0, eos_id=2, pad_id=0,
                    max_length=3, temperature=0.0)


def test_parallel_prediction_reads_only_masks():
  model = _model(parallel_fraction=1.0)
  batch = _batch()
  params = model.init(jax.random.key(0), batch)["params"]
  other = dict(batch, text=_batch(seed=5)["text"])
  run = lambda b, rng: model.apply({"params": params}, b, rngs={"train": rng})["caption/logits"]
  # All examples masked: the logits cannot depend on the caption they predict.
  np.testing.assert_allclose(run(batch, jax.random.key(0)), run(other, jax.random.key(0)),
                             atol=1e-6)
  # Without a "train" rng (evaluation) nothing is masked: they do.
  plain = lambda b: model.apply({"params": params}, b)["caption/logits"]
  assert np.abs(np.asarray(plain(batch) - plain(other))).max() > 1e-3


def test_caption_cross_entropy_value_and_gradient():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
  targets = rng.integers(0, 7, (3, 5))
  weights = (rng.random((3, 5)) > 0.3).astype(np.float32)

  def direct(logits):
    # -log softmax written out, summed over real tokens, per real token.
    lse = jnp.log(jnp.sum(jnp.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
    picked = jnp.take_along_axis(logits, jnp.asarray(targets)[..., None], -1)[..., 0]
    return jnp.sum((lse - picked) * weights) / weights.sum()

  fn = lambda x: losses.caption_cross_entropy(x, targets, weights)
  np.testing.assert_allclose(fn(logits), direct(jnp.asarray(logits)), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(fn)(logits), jax.grad(direct)(jnp.asarray(logits)),
                             atol=1e-7)
  # Padding is not a target: its logits do not matter.
  changed = np.where(weights[..., None] > 0, logits, 100.0)
  np.testing.assert_allclose(fn(changed), fn(logits), rtol=1e-6)


def test_uncertainty_weights_follow_kendall():
  terms = {"a": dict(fn="mse_alignment", weight=2.0),
           "b": dict(fn="mse_alignment", weight=1.0, pair=("image", "audio"))}
  z = lambda seed: jnp.asarray(np.random.default_rng(seed).normal(size=(4, 3)), jnp.float32)
  outputs = {"z/image": z(0), "z/text": z(1), "z/audio": z(2)}
  fn = losses.combine(terms, learned=True)

  def total(s):
    return fn({**outputs, "log_var/a": s[0], "log_var/b": s[1]})[0]

  s = jnp.asarray([0.3, -0.5])
  la = losses.mse_alignment(outputs["z/image"], outputs["z/text"])
  lb = losses.mse_alignment(outputs["z/image"], outputs["z/audio"])
  np.testing.assert_allclose(total(s), 2 * np.exp(-0.3) * la + 0.3 + np.exp(0.5) * lb - 0.5,
                             rtol=1e-6)
  np.testing.assert_allclose(jax.grad(total)(s), [1 - 2 * np.exp(-0.3) * la,
                                                  1 - np.exp(0.5) * lb], rtol=1e-5)
  with pytest.raises(losses.LossConfigError, match="no log_var/a"):
    fn(outputs)
