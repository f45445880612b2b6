"""Transformer text tower, padding-aware, causal (CLIP) or bidirectional (SigLIP/BERT)."""

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import layers
from mmjax.models.layers import logical

POOLS = ("eos", "first", "mean", "last", "argmax")


class TextTransformer(nn.Module):
  """Embeds token ids and returns one feature vector per sequence.

  Padding is where `tokens == pad_id`; padded keys are never attended to, and
  padded positions never enter the pooled vector, so a caption's feature does not
  depend on how much padding follows it.

  Attributes:
    vocab_size, context_length: the tokenizer's vocabulary and the sequence length.
    width, depth, num_heads, mlp_dim: transformer size (mlp_dim defaults to 4x width).
    causal: each token attends only to itself and earlier tokens (CLIP); then
      "eos" pooling sees the whole caption.
    pool: "eos" (the last non-padding token, where the tokenizer puts EOS),
      "first" (the first token), "mean" (mean over non-padding tokens), "last"
      (the last position, padding or not: big_vision / SigLIP, whose captions
      are padded to a fixed length) or "argmax" (the position of the largest
      id, where CLIP's end-of-text token, the last in its vocabulary, sits).
    pad_id: the id that marks padding.
    mask_padding: padded keys are not attended to. False computes what SigLIP
      does (no attention mask: padding tokens are ordinary inputs).
    act, ln_eps: MLP activation (layers.ACTIVATIONS) and LayerNorm epsilon.

  tokens: [B, L] int -> [B, width] float; with return_sequence=True, (that,
  [B, L, width] float): every position's output, padding included (mask it with
  `tokens != pad_id`).
  """

  vocab_size: int
  context_length: int = 32
  width: int = 512
  depth: int = 12
  num_heads: int = 8
  mlp_dim: int | None = None
  causal: bool = True
  pool: str = "eos"
  pad_id: int = 0
  mask_padding: bool = True
  act: str = "gelu_tanh"
  ln_eps: float = 1e-6
  dtype: str = "float32"
  remat: bool = False

  @nn.compact
  def __call__(self, tokens, return_sequence: bool = False):
    if self.pool not in POOLS:
      raise ValueError(f"text pool={self.pool!r}; choose one of {POOLS}.")
    b, length = tokens.shape
    if length > self.context_length:
      raise ValueError(f"tokens have length {length} > context_length "
                       f"{self.context_length}; raise data.context_length.")
    valid = tokens != self.pad_id  # [B, L]
    embed = self.param("token_embedding", logical(layers.EMBED_INIT, "vocab", "embed"),
                       (self.vocab_size, self.width))
    # Gather the table's width before the lookup (as FSDP does for every weight):
    # a lookup into a width-sharded table leaves its output, and the gradient's
    # scatter-add, in a layout the partitioner can only fix by replicating the
    # whole [B, L, width] activation.
    embed = layers.constrain(embed, "vocab", None)
    x = jnp.take(embed, tokens, axis=0).astype(self.dtype)
    x = layers.constrain(x, "batch", "length", "embed")
    pos = self.param("pos_embedding", logical(layers.EMBED_INIT, None, "embed"),
                     (self.context_length, self.width))
    x = x + pos[None, :length].astype(self.dtype)

    mask = valid[:, None, None, :] if self.mask_padding else None  # keys: [B, 1, 1, L]
    if self.causal:
      causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
      mask = causal if mask is None else mask & causal
    mlp_dim = self.mlp_dim or 4 * self.width
    x = layers.Encoder(self.depth, self.num_heads, mlp_dim, dtype=self.dtype,
                       remat=self.remat, act=self.act, ln_eps=self.ln_eps,
                       name="encoder")(x, mask)

    if self.pool == "first":
      pooled = x[:, 0]
    elif self.pool == "last":
      pooled = x[:, -1]
    elif self.pool == "argmax":
      at = jnp.argmax(tokens, axis=-1)  # the first occurrence of the largest id
      pooled = jnp.take_along_axis(x, at[:, None, None], axis=1)[:, 0]
    elif self.pool == "mean":
      w = valid.astype(x.dtype)[..., None]
      pooled = (x * w).sum(1) / jnp.maximum(w.sum(1), 1)
    else:
      last = jnp.maximum(valid.sum(axis=1) - 1, 0)  # index of the last real token
      pooled = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    return (pooled, x) if return_sequence else pooled
