"""A captioning decoder head (CoCa / CapPa style): a causal transformer over
caption tokens that cross-attends to another tower's token sequence.

  config.model.heads.caption = dict(kind="caption_decoder", width=256, depth=2,
                                    num_heads=4, source="image")
  config.loss.terms.caption = losses.captioning.term("caption", weight=2.0)

Training is teacher-forced: the decoder reads [BOS, t_0, ..., t_{L-2}] and
predicts [t_0, ..., t_{L-1}] (the caption's ids, EOS included; padding is not
a target). BOS and CapPa's MASK are two rows of the input embedding past the
tokenizer's vocabulary, so the output vocabulary is the tokenizer's.

CapPa's parallel prediction (`parallel_fraction` > 0): that fraction of the
examples, drawn afresh each step from the model's "train" rng stream, reads
only MASK tokens with no causal mask and must predict every token from the
image alone. Without a "train" rng (evaluation, generation) nothing is masked.

The memory the decoder attends to is the source tower's tokens, normalised and
projected to the decoder's width, or, with `num_queries` > 0, CoCa's
attentional pooler: that many learned queries attending over them once.

Generation (mmjax/models/generate.py) runs one token at a time through
`prefill` and `step`, with a key/value cache of fixed shape; `step` computes
exactly what `__call__` computes at that position.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import layers
from mmjax.models.layers import DEFAULT_KERNEL_INIT, logical


def _heads_dense(features, name, dtype, axis=-1, in_names=("embed",)):
  """DenseGeneral to `features` (tuple) with heads/kv logical names on its output."""
  out_names = {2: ("heads", "kv"), 3: (None, "heads", "kv")}[len(features)]
  return nn.DenseGeneral(features, axis=axis, dtype=dtype, name=name,
                         kernel_init=logical(DEFAULT_KERNEL_INIT, *in_names, *out_names),
                         bias_init=logical(nn.initializers.zeros, *out_names))


def _out_dense(width, name, dtype):
  return nn.DenseGeneral(width, axis=(-2, -1), dtype=dtype, name=name,
                         kernel_init=logical(DEFAULT_KERNEL_INIT, "heads", "kv", "embed"),
                         bias_init=logical(nn.initializers.zeros, "embed"))


class DecoderBlock(nn.Module):
  """Pre-LN block: causal self-attention, cross-attention to memory, MLP.

  __call__: x [B, L, W], memory_kv (k, v) [B, P, H, Dh], mask bool
    broadcastable to [B, H, L, L] -> [B, L, W].
  step: x [B, 1, W] at position `pos`, cache {"k", "v": [B, L, H, Dh]}
    -> ([B, 1, W], the cache with position pos written).
  """

  width: int
  num_heads: int
  mlp_dim: int
  dtype: str = "float32"
  act: str = "gelu_tanh"
  ln_eps: float = 1e-6

  def setup(self):
    if self.width % self.num_heads:
      raise ValueError(f"decoder width {self.width} is not divisible by num_heads "
                       f"{self.num_heads}; choose num_heads that divides it.")
    h, dh = self.num_heads, self.width // self.num_heads
    ln = lambda name: layers.LayerNorm(dtype=self.dtype, name=name, epsilon=self.ln_eps)
    self.ln_self, self.ln_cross, self.ln_mlp = ln("ln_self"), ln("ln_cross"), ln("ln_mlp")
    self.qkv = _heads_dense((3, h, dh), "qkv", self.dtype)
    self.self_out = _out_dense(self.width, "self_out", self.dtype)
    self.cross_q = _heads_dense((h, dh), "cross_q", self.dtype)
    self.cross_kv = _heads_dense((2, h, dh), "cross_kv", self.dtype)
    self.cross_out = _out_dense(self.width, "cross_out", self.dtype)
    self.mlp = layers.MlpBlock(self.mlp_dim, dtype=self.dtype, act=self.act, name="mlp")

  def memory_kv(self, memory):
    """memory [B, P, W] -> cross-attention (k, v) [B, P, H, Dh], computed once."""
    kv = self.cross_kv(memory)
    return kv[:, :, 0], kv[:, :, 1]

  def _rest(self, x, q, keys, mask, memory_kv):
    """The block after its self-attention projections: q [B, T, H, Dh] of the
    rows x [B, T, W] attends over keys (k, v) [B, S, H, Dh] under mask."""
    x = x + self.self_out(layers.attend(q, keys[0], keys[1], mask, self.dtype))
    qc = self.cross_q(self.ln_cross(x))
    x = x + self.cross_out(layers.attend(qc, memory_kv[0], memory_kv[1], None, self.dtype))
    return x + self.mlp(self.ln_mlp(x))

  def __call__(self, x, memory_kv, mask):
    qkv = self.qkv(self.ln_self(x))
    return self._rest(x, qkv[:, :, 0], (qkv[:, :, 1], qkv[:, :, 2]), mask, memory_kv)

  def step(self, x, memory_kv, cache, pos):
    qkv = self.qkv(self.ln_self(x))  # [B, 1, 3, H, Dh]
    at = (0, pos, 0, 0)
    cache = {name: jax.lax.dynamic_update_slice(
        cache[name], qkv[:, :, i].astype(cache[name].dtype), at)
        for i, name in ((1, "k"), (2, "v"))}
    length = cache["k"].shape[1]
    mask = (jnp.arange(length) <= pos)[None, None, None, :]  # [1, 1, 1, L]
    return self._rest(x, qkv[:, :, 0], (cache["k"], cache["v"]), mask, memory_kv), cache


class AttentionalPooler(nn.Module):
  """CoCa's pooler: `num_queries` learned queries attend once over the tokens.

  tokens: [B, P, W] -> [B, num_queries, W]
  """

  num_queries: int
  num_heads: int
  dtype: str = "float32"
  ln_eps: float = 1e-6

  @nn.compact
  def __call__(self, tokens):
    b, _, width = tokens.shape
    h, dh = self.num_heads, width // self.num_heads
    queries = self.param("queries", logical(layers.EMBED_INIT, None, "embed"),
                         (self.num_queries, width))
    queries = jnp.broadcast_to(queries.astype(self.dtype), (b, self.num_queries, width))
    q = _heads_dense((h, dh), "q", self.dtype)(
        layers.LayerNorm(self.dtype, "ln_q", self.ln_eps)(queries))
    kv = _heads_dense((2, h, dh), "kv", self.dtype)(tokens)
    y = layers.attend(q, kv[:, :, 0], kv[:, :, 1], None, self.dtype)
    y = _out_dense(width, "out", self.dtype)(y)
    return layers.LayerNorm(self.dtype, "ln_out", self.ln_eps)(y)


class CaptionDecoder(nn.Module):
  """Caption decoder over the `source` tower's tokens.

  Attributes:
    vocab_size, context_length, pad_id, eos_id: the tokenizer's vocabulary,
      the caption length L (EOS included) and its pad / end ids (filled from
      the run by mmjax.train.build unless set).
    width, depth, num_heads, mlp_dim: decoder size (mlp_dim: 4 x width).
    source: the modality whose tokens/<source> [B, P, W_s] it reads.
    text: the batch field holding the caption ids [B, L] it learns to write.
    num_queries: 0 attends to all source tokens; n > 0 through an attentional
      pooler of n queries (CoCa uses 256).
    parallel_fraction: CapPa's masked_pred_prob: the fraction of training
      examples decoded in parallel from MASK tokens (0: none).

  Outputs (namespaced "<head>/" by the model):
    logits  [B, L, vocab_size] float32: next-token logits at every position
    targets [B, L] int32: the caption ids
    weights [B, L] float32: 1 on real tokens (EOS included), 0 on padding
  """

  vocab_size: int
  context_length: int = 16
  pad_id: int = 0
  eos_id: int = 2
  width: int = 256
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int | None = None
  source: str = "image"
  text: str = "text"
  num_queries: int = 0
  parallel_fraction: float = 0.0
  act: str = "gelu_tanh"
  ln_eps: float = 1e-6
  dtype: str = "float32"
  remat: bool = False

  @property
  def token_modalities(self) -> tuple:
    return (self.source,)

  @property
  def bos_id(self) -> int:
    """The input id that starts every caption (one past the vocabulary)."""
    return self.vocab_size

  @property
  def mask_id(self) -> int:
    return self.vocab_size + 1

  def setup(self):
    if not 0.0 <= self.parallel_fraction <= 1.0:
      raise ValueError(f"parallel_fraction={self.parallel_fraction} must be in [0, 1].")
    self.embed = self.param("token_embedding", logical(layers.EMBED_INIT, "vocab", "embed"),
                            (self.vocab_size + 2, self.width))
    self.pos = self.param("pos_embedding", logical(layers.EMBED_INIT, None, "embed"),
                          (self.context_length, self.width))
    self.ln_memory = layers.LayerNorm(self.dtype, "ln_memory", self.ln_eps)
    self.memory_proj = nn.Dense(self.width, dtype=self.dtype, name="memory_proj",
                                kernel_init=logical(DEFAULT_KERNEL_INIT, None, "embed"),
                                bias_init=logical(nn.initializers.zeros, "embed"))
    self.pooler = (AttentionalPooler(self.num_queries, self.num_heads, self.dtype,
                                     self.ln_eps, name="pooler")
                   if self.num_queries else None)
    block = nn.remat(DecoderBlock, methods=["__call__"]) if self.remat else DecoderBlock
    mlp_dim = self.mlp_dim or 4 * self.width
    self.blocks = [block(self.width, self.num_heads, mlp_dim, self.dtype, self.act,
                         self.ln_eps, name=f"block{i}") for i in range(self.depth)]
    self.ln_final = layers.LayerNorm(self.dtype, "ln_final", self.ln_eps)
    self.head = nn.Dense(self.vocab_size, dtype=self.dtype, name="logits",
                         kernel_init=logical(DEFAULT_KERNEL_INIT, "embed", "vocab"),
                         bias_init=logical(nn.initializers.zeros, "vocab"))

  # --- shared pieces ---------------------------------------------------------

  def memory(self, source_tokens):
    """source_tokens [B, P, W_s] -> the attended memory [B, P or num_queries, W]."""
    mem = self.memory_proj(self.ln_memory(source_tokens.astype(self.dtype)))
    return self.pooler(mem) if self.pooler is not None else mem

  def _embed(self, ids, positions):
    """ids [B, T] (BOS and MASK included), positions [T] -> [B, T, W]."""
    table = layers.constrain(self.embed, "vocab", None)
    x = jnp.take(table, ids, axis=0) + jnp.take(self.pos, positions, axis=0)[None]
    return x.astype(self.dtype)

  def _logits(self, x):
    return self.head(self.ln_final(x)).astype(jnp.float32)

  def inputs(self, captions):
    """captions [B, L] -> decoder inputs [B, L]: BOS, then the ids shifted right."""
    bos = jnp.full((captions.shape[0], 1), self.bos_id, captions.dtype)
    return jnp.concatenate([bos, captions[:, :-1]], axis=1)

  # --- teacher-forced training -------------------------------------------------

  def decode(self, source_tokens, captions, parallel=None):
    """Teacher-forced logits.

    source_tokens: [B, P, W_s]; captions: [B, L] int; parallel: optional bool
    [B], examples decoded from MASK tokens without a causal mask (CapPa).
    Returns [B, L, vocab_size] float32.
    """
    b, length = captions.shape
    if length > self.context_length:
      raise ValueError(f"captions have length {length} > the decoder's context_length "
                       f"{self.context_length}; raise it (or data.context_length).")
    ids = self.inputs(captions)
    causal = jnp.tril(jnp.ones((length, length), bool))[None, None]  # [1, 1, L, L]
    if parallel is None:
      mask = causal
    else:
      ids = jnp.where(parallel[:, None], self.mask_id, ids)
      mask = causal | parallel[:, None, None, None]  # [B, 1, L, L]
    x = self._embed(ids, jnp.arange(length))
    x = layers.constrain(x, "batch", "length", "embed")
    mem = self.memory(source_tokens)
    for block in self.blocks:
      x = block(x, block.memory_kv(mem), mask)
    return self._logits(x)

  def __call__(self, features, batch):
    captions = batch[self.text]
    parallel = None
    if self.parallel_fraction > 0 and self.has_rng("train"):
      parallel = jax.random.bernoulli(self.make_rng("train"), self.parallel_fraction,
                                      (captions.shape[0],))
    logits = self.decode(features[f"tokens/{self.source}"], captions, parallel)
    return {"logits": logits, "targets": captions.astype(jnp.int32),
            "weights": (captions != self.pad_id).astype(jnp.float32)}

  # --- generation, one token at a time -------------------------------------------

  def prefill(self, source_tokens, max_length: int | None = None):
    """The decoding state before the first token.

    source_tokens: [B, P, W_s]. Returns {"memory": per block (k, v) [B, P', H,
    Dh], "cache": per block {"k", "v": [B, max_length, H, Dh]} of zeros}.
    Every leaf has the batch first, so beam search can repeat and reorder it.
    """
    length = max_length or self.context_length
    if length > self.context_length:
      raise ValueError(f"max_length {length} > the decoder's context_length "
                       f"{self.context_length}; it has no position embedding past that.")
    mem = self.memory(source_tokens)
    memory = [block.memory_kv(mem) for block in self.blocks]
    b = source_tokens.shape[0]
    h = self.num_heads
    shape = (b, length, h, self.width // h)
    cache = [{"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype)}
             for _ in self.blocks]
    return {"memory": memory, "cache": cache}

  def step(self, ids, pos, state):
    """One decoding step.

    ids: [B] int, the input token at position `pos` (BOS at 0, then the last
    token written); pos: [] int; state: from prefill (or the last step).
    Returns (logits [B, vocab_size] float32 for the token at pos, state).
    """
    x = self._embed(ids[:, None], jnp.reshape(pos, (1,)))
    cache = []
    for block, mem, c in zip(self.blocks, state["memory"], state["cache"]):
      x, c = block.step(x, mem, c, pos)
      cache.append(c)
    return self._logits(x)[:, 0], {"memory": state["memory"], "cache": cache}
