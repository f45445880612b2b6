"""Caption generation under `jax.jit`: greedy, beam search and sampling.

Each decoder exposes `prefill` and `step` (mmjax/models/heads/captioning.py);
here they are closures

  step_fn(ids [B], pos [], state) -> (logits [B, V] float32, state)

over a decoding state whose every leaf has the batch first. Shapes are fixed
(a key/value cache of max_length positions), the loop is a `lax.while_loop`
that stops when every row has ended, and nothing returns to the host per
token, so a whole batch of the test split is one compiled call, sharded over
the data axis like the batch.

Outputs are token rows as the tokenizer writes them: ids, EOS, then padding
([B, max_length] int32); a row that reaches max_length without EOS has none.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

StepFn = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]
NEG = -1e9  # a log-probability no candidate reaches; finite, so sums stay ordered


def _allowed(logp, pos, eos_id: int, pad_id: int, min_length: int):
  """logp [B, V] with the tokens no caption may hold here ruled out: padding
  (never a target, so never learned) and EOS before `min_length` tokens (EOS
  at position pos makes pos + 1)."""
  vocab = jnp.arange(logp.shape[-1])
  banned = (vocab == pad_id) | ((vocab == eos_id) & (pos + 1 < min_length))
  return jnp.where(banned, NEG, logp)


def _sample_loop(step_fn: StepFn, state, batch: int, *, bos_id: int, eos_id: int,
                 pad_id: int, max_length: int, min_length: int, choose):
  """The shared loop of greedy decoding and sampling: choose(logp [B, V], pos)
  -> ids [B] picks each row's next token."""
  def cond(carry):
    pos, _, done, _, _ = carry
    return (pos < max_length) & ~jnp.all(done)

  def body(carry):
    pos, last, done, out, state = carry
    logits, state = step_fn(last, pos, state)
    logp = _allowed(jax.nn.log_softmax(logits), pos, eos_id, pad_id, min_length)
    ids = jnp.where(done, pad_id, choose(logp, pos)).astype(jnp.int32)
    out = jax.lax.dynamic_update_slice(out, ids[:, None], (0, pos))
    return pos + 1, ids, done | (ids == eos_id), out, state

  init = (jnp.zeros((), jnp.int32), jnp.full((batch,), bos_id, jnp.int32),
          jnp.zeros((batch,), bool), jnp.full((batch, max_length), pad_id, jnp.int32), state)
  return jax.lax.while_loop(cond, body, init)[3]


def greedy(step_fn: StepFn, state, batch: int, *, bos_id: int, eos_id: int, pad_id: int,
           max_length: int, min_length: int = 0) -> jax.Array:
  """The most likely token at every step. Returns [B, max_length] int32."""
  return _sample_loop(step_fn, state, batch, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id,
                      max_length=max_length, min_length=min_length,
                      choose=lambda logp, pos: jnp.argmax(logp, axis=-1))


def sample(step_fn: StepFn, state, batch: int, rng: jax.Array, *, bos_id: int, eos_id: int,
           pad_id: int, max_length: int, min_length: int = 0, temperature: float = 1.0,
           top_k: int = 0) -> jax.Array:
  """Ancestral sampling from softmax(logits / temperature), restricted to the
  top_k most likely tokens when top_k > 0. rng: a key, folded with the
  position (so one row's draw does not depend on the batch's length).
  Returns [B, max_length] int32."""
  if temperature <= 0:
    raise ValueError(f"temperature={temperature} must be > 0; use greedy for the argmax.")

  def choose(logp, pos):
    scaled = logp / temperature
    if top_k:
      kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
      scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    return jax.random.categorical(jax.random.fold_in(rng, pos), scaled, axis=-1)

  return _sample_loop(step_fn, state, batch, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id,
                      max_length=max_length, min_length=min_length, choose=choose)


def length_penalty(length, alpha: float):
  """GNMT's ((5 + length) / 6) ** alpha: scores are divided by it (alpha 0: none)."""
  return ((5.0 + length) / 6.0) ** alpha


def _gather_beams(tree, index, batch: int, beams: int):
  """Rows of every [B * K_old, ...] leaf picked by index [B, K] (beam ids per
  example) -> [B * K, ...]."""
  def pick(x):
    x = x.reshape(batch, -1, *x.shape[1:])
    x = jnp.take_along_axis(x, index.reshape(batch, beams, *([1] * (x.ndim - 2))), axis=1)
    return x.reshape(batch * beams, *x.shape[2:])
  return jax.tree.map(pick, tree)


def beam_search(step_fn: StepFn, state, batch: int, *, beam_size: int, bos_id: int,
                eos_id: int, pad_id: int, max_length: int, min_length: int = 0,
                alpha: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Beam search with a pool of `beam_size` finished captions per example.

  At every step the 2K best extensions of the K live beams are ranked; those
  ending in EOS and ranked among the K best join the finished pool at score
  log p / length_penalty(length, alpha), the best K others stay live (so a
  beam of 1 is greedy decoding). The search stops when every example's worst
  finished caption beats what its best live beam could still reach (log
  probabilities only fall, so at the largest penalty, max_length), or at
  max_length, where the live beams compete with the finished ones.

  state: for B rows (it is repeated K times here). Returns (ids [B, max_length]
  int32, scores [B] float32, the length-penalised log-probability).
  """
  if alpha < 0:
    raise ValueError(f"length penalty alpha={alpha} must be >= 0 (0: none; 0.6 as GNMT).")
  k = beam_size

  def expand(x):
    return jnp.repeat(x, k, axis=0)

  def cond(carry):
    pos, alive_scores, _, fin_scores, _, _, _ = carry
    best_possible = alive_scores[:, 0] / length_penalty(max_length, alpha)
    worst_finished = jnp.min(fin_scores, axis=1)
    still = jnp.any(best_possible > worst_finished)
    return (pos < max_length) & still

  def body(carry):
    pos, alive_scores, alive_seq, fin_scores, fin_seq, last, state = carry
    logits, state = step_fn(last, pos, state)
    vocab = logits.shape[-1]
    logp = _allowed(jax.nn.log_softmax(logits), pos, eos_id, pad_id, min_length)
    cand = (alive_scores.reshape(batch * k, 1) + logp).reshape(batch, k * vocab)
    top_scores, top_index = jax.lax.top_k(cand, 2 * k)  # [B, 2K]
    beam, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    seq = jnp.take_along_axis(alive_seq, beam[..., None], axis=1)  # [B, 2K, L]
    seq = jax.lax.dynamic_update_slice(seq, token[..., None], (0, 0, pos))
    ended = token == eos_id
    # Live: the best K that did not end (the 2K candidates hold at least K).
    live_rank = jnp.where(ended, NEG, top_scores)
    live_scores, live_index = jax.lax.top_k(live_rank, k)
    new_alive_seq = jnp.take_along_axis(seq, live_index[..., None], axis=1)
    new_state = _gather_beams(state, jnp.take_along_axis(beam, live_index, axis=1), batch, k)
    new_last = jnp.take_along_axis(token, live_index, axis=1).reshape(batch * k)
    # Finished: merge those that ended into the pool of K.
    # Only an EOS ranked among the K best candidates ends a caption (as a
    # K-wide search would keep it), so beam 1 is greedy decoding.
    ranked = ended & (jnp.arange(2 * k) < k)[None]
    done_scores = jnp.where(ranked, top_scores / length_penalty(pos + 1, alpha), NEG)
    pool_scores = jnp.concatenate([fin_scores, done_scores], axis=1)
    pool_seq = jnp.concatenate([fin_seq, seq], axis=1)
    fin_scores, fin_index = jax.lax.top_k(pool_scores, k)
    fin_seq = jnp.take_along_axis(pool_seq, fin_index[..., None], axis=1)
    return pos + 1, live_scores, new_alive_seq, fin_scores, fin_seq, new_last, new_state

  # Only beam 0 is live at first, so the K beams do not start as K copies.
  alive_scores = jnp.tile(jnp.array([0.0] + [NEG] * (k - 1), jnp.float32), (batch, 1))
  empty = jnp.full((batch, k, max_length), pad_id, jnp.int32)
  init = (jnp.zeros((), jnp.int32), alive_scores, empty,
          jnp.full((batch, k), NEG, jnp.float32), empty,
          jnp.full((batch * k,), bos_id, jnp.int32), jax.tree.map(expand, state))
  pos, alive_scores, alive_seq, fin_scores, fin_seq, _, _ = jax.lax.while_loop(
      cond, body, init)
  # Live beams cut by max_length compete with the finished ones (a live beam
  # of a search that stopped early cannot win: that is why it stopped).
  scores = jnp.concatenate([fin_scores, alive_scores / length_penalty(pos, alpha)], axis=1)
  seqs = jnp.concatenate([fin_seq, alive_seq], axis=1)
  best = jnp.argmax(scores, axis=1)
  ids = jnp.take_along_axis(seqs, best[:, None, None], axis=1)[:, 0]
  return ids, jnp.take_along_axis(scores, best[:, None], axis=1)[:, 0]


METHODS = ("greedy", "beam", "sample")


def check_options(method: str, vocab_size: int, beam_size: int = 1, top_k: int = 0,
                  max_length: int = 1, min_length: int = 0) -> None:
  """Raises ValueError, before compiling, for options no search can honour."""
  if method not in METHODS:
    raise ValueError(f"generation method {method!r}; choose one of {METHODS}.")
  if method == "beam" and not 1 <= beam_size <= vocab_size:
    raise ValueError(f"beam_size={beam_size} must be between 1 and the vocabulary size "
                     f"{vocab_size}: each step keeps beam_size distinct tokens per beam.")
  if top_k < 0 or top_k > vocab_size:
    raise ValueError(f"top_k={top_k} must be in [0, vocabulary size {vocab_size}] "
                     "(0: no restriction).")
  if not 0 <= min_length <= max_length:
    raise ValueError(f"min_length={min_length} must be in [0, max_length={max_length}].")


def captioner(model, head: str = "caption", *, method: str = "greedy", beam_size: int = 4,
              alpha: float = 0.0, max_length: int | None = None, min_length: int = 0,
              temperature: float = 1.0, top_k: int = 0, use_cache: bool = True):
  """A function (params, inputs [B, ...], rng) -> ids [B, max_length] int32
  that captions a batch of the decoder's source modality, for `jax.jit`.

  model: a MultiTower with a caption decoder head `head`. use_cache=False
  recomputes the whole prefix at every step instead (the reference the cache
  is checked against, and the benchmark's baseline).
  """
  heads = dict(getattr(model, "heads", {}) or {})
  if head not in heads:
    raise ValueError(f"the model has no head {head!r} to generate with (heads: "
                     f"{sorted(heads)}); add a decoder, e.g. config.model.heads.{head} = "
                     "dict(kind='caption_decoder', ...), and train it.")
  spec = heads[head]
  vocab = spec.get("vocab_size")
  length = max_length or spec.get("context_length", 16)
  check_options(method, vocab, beam_size, top_k, length, min_length)
  source = spec.get("source", "image")
  ids = dict(bos_id=vocab, eos_id=spec.get("eos_id", 2), pad_id=spec.get("pad_id", 0))

  def run(params, inputs, rng=None):
    variables = {"params": params}
    tokens = model.apply(variables, inputs, source, method=model.features)["tokens"]
    state = model.apply(variables, head, "prefill", tokens, length, method=model.head)
    if use_cache:
      def step_fn(last, pos, state):
        return model.apply(variables, head, "step", last, pos, state, method=model.head)
    else:
      step_fn = _recompute_step(model, variables, head)
      state = {"prefix": jnp.full((tokens.shape[0], length), ids["pad_id"], jnp.int32),
               "tokens": tokens}
    b = inputs.shape[0]
    common = dict(max_length=length, min_length=min_length, **ids)
    if method == "greedy":
      return greedy(step_fn, state, b, **common)
    if method == "beam":
      return beam_search(step_fn, state, b, beam_size=beam_size, alpha=alpha, **common)[0]
    rng = jax.random.key(0) if rng is None else rng
    return sample(step_fn, state, b, rng, temperature=temperature, top_k=top_k, **common)

  return run


def _recompute_step(model, variables, head):
  """A step_fn without a cache: runs the decoder over the whole prefix
  (fixed length, so one compile) and reads position pos. Its state is the
  prefix written so far and the source tokens, {"prefix": [B, length] ids,
  "tokens": [B, P, W]} (in the state, so beam search reorders them with the
  beams); the memory is recomputed too, as a decoder without a cache does."""
  decode = functools.partial(model.apply, variables, head, "decode", method=model.head)

  def step_fn(last, pos, state):
    # decode() prepends BOS itself: the caption so far sits at 0 .. pos - 1.
    written = jax.lax.dynamic_update_slice(state["prefix"], last[:, None],
                                           (0, jnp.maximum(pos - 1, 0)))
    prefix = jnp.where(pos > 0, written, state["prefix"])
    logits = decode(state["tokens"], prefix)  # [B, L, V]; causal: pos sees 0 .. pos
    return (jax.lax.dynamic_index_in_dim(logits, pos, axis=1, keepdims=False),
            {"prefix": prefix, "tokens": state["tokens"]})

  return step_fn
