"""Pretrained BERT text tower: a Flax BERT encoder with TextTransformer's interface.

`BertEncoder` is the post-LayerNorm BERT of HuggingFace's `BertModel` (as in
all-MiniLM-L6-v2) with TextTransformer's call signature, so it can stand in as
a text tower (`model.towers.text.kind = "bert"`; LiT-style: a pretrained,
possibly frozen, text side). Its weights are read and converted by
`mmjax.models.pretrained`:

  kwargs, params = pretrained.load_pretrained()   # all-MiniLM-L6-v2 from its package
  pooled = BertEncoder(**kwargs).apply({"params": params}, tokens)

`mmjax.hub.minilm.minilm_encoder()` wraps the whole sentence-transformers
pipeline (WordPiece, BERT, mean pooling, L2 normalisation) into one function.

Params tree (under "params"):
  embeddings/{word [V, W], position [P, W], token_type [T, W], ln/{scale, bias}}
  encoder/block{i}/attn/qkv/{kernel [W, 3, H, Dh], bias [3, H, Dh]}
  encoder/block{i}/attn/out/{kernel [H, Dh, W], bias [W]}
  encoder/block{i}/attn_ln, mlp/fc1 [W, M], mlp/fc2 [M, W], mlp_ln
  pooler/{kernel [W, W], bias [W]}               only with pool="pooler"
"""

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import layers
from mmjax.models.layers import logical

POOLS = ("mean", "first", "pooler")


# ---------------------------------------------------------------------------
# The model.


class BertEmbeddings(nn.Module):
  """Word + absolute position + token type 0 embeddings, then LayerNorm.

  tokens: [B, L] int -> [B, L, width]
  """

  vocab_size: int
  context_length: int
  width: int
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  dtype: str = "float32"

  @nn.compact
  def __call__(self, tokens):
    length = tokens.shape[1]
    word = self.param("word", logical(layers.EMBED_INIT, "vocab", "embed"),
                      (self.vocab_size, self.width))
    # Gather the table's width before the lookup, as TextTransformer does: a
    # lookup into a width-sharded table would replicate the [B, L, W] output.
    word = layers.constrain(word, "vocab", None)
    x = layers.constrain(jnp.take(word, tokens, axis=0), "batch", "length", "embed")
    pos = self.param("position", logical(layers.EMBED_INIT, None, "embed"),
                     (self.context_length, self.width))
    token_type = self.param("token_type", logical(layers.EMBED_INIT, None, "embed"),
                            (self.type_vocab_size, self.width))
    # One segment per text: every token has type 0, as sentence encoders use BERT.
    x = x + pos[None, :length] + token_type[0]
    return layers.LayerNorm(self.dtype, name="ln", epsilon=self.layer_norm_eps)(x)


class GeluMlp(nn.Module):
  """Dense(mlp_dim) -> exact GELU -> Dense(width).  x: [B, T, W] -> [B, T, W]"""

  mlp_dim: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1",
                 kernel_init=logical(layers.DEFAULT_KERNEL_INIT, "embed", "mlp"),
                 bias_init=logical(nn.initializers.zeros, "mlp"))(x)
    h = layers.constrain(h, "batch", "length", "mlp")
    # BERT's "gelu" is the erf form; layers.MlpBlock's tanh form would shift a
    # pretrained model's outputs (~1e-3 per layer).
    h = nn.gelu(h, approximate=False)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2",
                    kernel_init=logical(layers.DEFAULT_KERNEL_INIT, "mlp", "embed"),
                    bias_init=logical(nn.initializers.zeros, "embed"))(h)


class BertBlock(nn.Module):
  """Post-LayerNorm block: x = ln(x + attn(x)); x = ln(x + mlp(x)).

  x: [B, T, W], mask: bool [B, 1, 1, T] (True = attend) -> [B, T, W]
  """

  num_heads: int
  mlp_dim: int
  layer_norm_eps: float = 1e-12
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x, mask):
    ln = lambda name: layers.LayerNorm(self.dtype, name=name, epsilon=self.layer_norm_eps)
    x = layers.constrain(x, "batch", "length", "embed")
    # layers.SelfAttention is BERT's attention with q, k, v fused into one
    # matmul: the same 1/sqrt(head_dim) scaling, softmax in float32.
    x = ln("attn_ln")(x + layers.SelfAttention(self.num_heads, self.dtype, name="attn")(x, mask))
    return ln("mlp_ln")(x + GeluMlp(self.mlp_dim, self.dtype, name="mlp")(x))


class BertStack(nn.Module):
  """`depth` BertBlocks (no final LayerNorm: each block ends with one)."""

  depth: int
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float = 1e-12
  dtype: str = "float32"
  remat: bool = False

  @nn.compact
  def __call__(self, x, mask):
    block = nn.remat(BertBlock) if self.remat else BertBlock
    for i in range(self.depth):
      x = block(self.num_heads, self.mlp_dim, self.layer_norm_eps, self.dtype,
                name=f"block{i}")(x, mask)
    return x


class BertEncoder(nn.Module):
  """BERT text tower with TextTransformer's interface (bidirectional, padding-aware).

  Attributes:
    vocab_size, context_length: vocabulary and number of position embeddings
      (BERT's max_position_embeddings; sequences may be shorter).
    width, depth, num_heads, mlp_dim: size (mlp_dim defaults to 4x width).
    type_vocab_size, layer_norm_eps: as in the HF config (all tokens get type 0).
    pool: "mean" (over non-padding tokens, as sentence-transformers pools),
      "first" (the [CLS] output) or "pooler" (BERT's tanh(Dense([CLS]))).
    pad_id: the id that marks padding ([PAD] = 0 in BERT vocabularies).
    dtype: compute dtype; params, LayerNorm statistics and softmax stay float32.
    remat: recompute each block in the backward pass.

  tokens: [B, L] int -> [B, width] float32; with return_sequence=True, (that,
  [B, L, width]): every position's output, padding included (mask it with
  `tokens != pad_id`).
  """

  vocab_size: int = 30522
  context_length: int = 512
  width: int = 384
  depth: int = 6
  num_heads: int = 12
  mlp_dim: int | None = None
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pool: str = "mean"
  pad_id: int = 0
  dtype: str = "float32"
  remat: bool = False

  @nn.compact
  def __call__(self, tokens, return_sequence: bool = False):
    if self.pool not in POOLS:
      raise ValueError(f"text pool={self.pool!r}; choose one of {POOLS}.")
    length = tokens.shape[1]
    if length > self.context_length:
      raise ValueError(f"tokens have length {length} > context_length "
                       f"{self.context_length} (BERT's position embeddings); "
                       "encode shorter sequences.")
    valid = tokens != self.pad_id  # [B, L]
    x = BertEmbeddings(self.vocab_size, self.context_length, self.width,
                       self.type_vocab_size, self.layer_norm_eps, self.dtype,
                       name="embeddings")(tokens)
    x = BertStack(self.depth, self.num_heads, self.mlp_dim or 4 * self.width,
                  self.layer_norm_eps, self.dtype, self.remat,
                  name="encoder")(x, valid[:, None, None, :])
    if self.pool == "mean":
      w = valid.astype(jnp.float32)[..., None]
      pooled = (x.astype(jnp.float32) * w).sum(1) / jnp.maximum(w.sum(1), 1)
    elif self.pool == "first":
      pooled = x[:, 0].astype(jnp.float32)
    else:
      pooled = jnp.tanh(nn.Dense(
          self.width, dtype=self.dtype, name="pooler",
          kernel_init=logical(layers.DEFAULT_KERNEL_INIT, "embed", None),
          bias_init=logical(nn.initializers.zeros, None))(x[:, 0])).astype(jnp.float32)
    return (pooled, x) if return_sequence else pooled
