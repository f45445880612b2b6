"""Image-text matching heads: does this caption describe this image?

Each head reads the towers' outputs for a batch of (image, caption) pairs and
returns one logit per pair (> 0: match). `feats` is a dict with

  zimg [B, D], ztxt [B, D]     unit-norm embeddings (z/image, z/text)
  image_tokens [B, P, W_img]   patch tokens before pooling  } cross_attention only
  text_tokens [B, L, W_txt]    text tokens before pooling   } (MultiTower.features)
  text_mask [B, L] bool        True on real (non-padding) tokens

The three heads are three answers to "where do the modalities meet":

  concat_mlp        after pooling, through an MLP over both embeddings
  weighted_sum      after pooling, through a learned per-dimension cosine
  cross_attention   before pooling: each caption token looks for its evidence
                    among the image's patches (ALBEF / BLIP style)

`fusion_n` holds their counterparts for classification from any number of
modalities (built on `dense` and `CrossAttentionBlock` from here).
"""

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import layers
from mmjax.models.layers import logical

POOLS = ("mean", "eos")


def dense(features, in_name, out_name, name, dtype):
  """A Dense layer whose kernel and bias carry logical axis names (in_name, out_name)."""
  return nn.Dense(features, dtype=dtype, name=name,
                  kernel_init=logical(layers.DEFAULT_KERNEL_INIT, in_name, out_name),
                  bias_init=logical(nn.initializers.zeros, out_name))


class ConcatMLP(nn.Module):
  """MLP over the pair's embeddings.

  With `interactions` (default) the MLP reads [zimg, ztxt, zimg * ztxt,
  |zimg - ztxt|] (the matching features of InferSent / ESIM): agreement between
  the two is then a linear function of the input, where from the plain
  concatenation [zimg, ztxt] the MLP would have to learn a product first.

  Attributes:
    hidden: width of the hidden layers.
    depth: number of hidden layers (GELU).
    interactions: add the product and absolute difference (else plain concat).

  feats: {"zimg": [B, D], "ztxt": [B, D]} -> logits [B] float32
  """

  hidden: int = 256
  depth: int = 2
  interactions: bool = True
  dtype: str = "float32"

  @nn.compact
  def __call__(self, feats):
    zimg, ztxt = feats["zimg"], feats["ztxt"]
    parts = [zimg, ztxt]
    if self.interactions:
      parts += [zimg * ztxt, jnp.abs(zimg - ztxt)]
    x = jnp.concatenate(parts, axis=-1).astype(self.dtype)
    for i in range(self.depth):
      x = nn.gelu(dense(self.hidden, "joint" if i == 0 else None, "mlp", f"fc{i}",
                        self.dtype)(x), approximate=True)
    return dense(1, "mlp", None, "out", self.dtype)(x)[..., 0].astype(jnp.float32)


class WeightedSum(nn.Module):
  """A learned weighted cosine: logit = scale * (sum_d w_d zimg_d ztxt_d + b).

  w starts at 1 (the plain cosine, which the contrastive model was trained to
  make separate matches) and b at 0; learning w lets the head weigh the
  dimensions that tell hard negatives apart. It is linear in zimg * ztxt: the
  cheapest head and a floor for the others.

  Attributes:
    scale: a fixed multiplier (SigLIP's initial logit scale): logits start in a
      range where the sigmoid is not flat, and b stays in cosine units, so an
      Adam step (about lr in each parameter) moves the decision threshold by
      about lr in cosine, whatever the scale.

  feats: {"zimg": [B, D], "ztxt": [B, D]} -> logits [B] float32
  """

  scale: float = 10.0

  @nn.compact
  def __call__(self, feats):
    zimg = feats["zimg"].astype(jnp.float32)
    ztxt = feats["ztxt"].astype(jnp.float32)
    w = self.param("weight", logical(nn.initializers.ones, "joint"), (zimg.shape[-1],))
    b = self.param("bias", logical(nn.initializers.zeros), ())
    return self.scale * (jnp.sum(zimg * ztxt * w, axis=-1) + b)


class CrossAttentionBlock(nn.Module):
  """Query tokens attend over context tokens, then compare what they found.

  The comparison is an MLP over [y, a, y * a] (y: the normed query token, a:
  what it attended to), as in ESIM (Chen et al., 2017): the product makes
  "this word found its match" a linear feature. A plain residual x + a would
  leave it to be inferred from the sum, which LayerNorm then rescales away.
  In ITM the queries are caption tokens and the context image patches; in
  fusion_n they are learned queries over every modality's tokens.

  x: [B, L, W] queries, context: [B, P, W], mask: optional bool [B, P] (True
  on real context tokens; padding gets no attention) -> [B, L, W]
  """

  num_heads: int
  mlp_dim: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x, context, mask=None):
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"cross_attention width {width} is not divisible by num_heads "
                       f"{self.num_heads}; choose num_heads that divides width.")
    head_dim = width // self.num_heads
    y = layers.LayerNorm(dtype=self.dtype, name="ln")(x)
    q = nn.DenseGeneral((self.num_heads, head_dim), dtype=self.dtype, name="q",
                        kernel_init=logical(layers.DEFAULT_KERNEL_INIT, "embed", "heads", "kv"),
                        bias_init=logical(nn.initializers.zeros, "heads", "kv"))(y)
    kv = nn.DenseGeneral((2, self.num_heads, head_dim), dtype=self.dtype, name="kv",
                         kernel_init=logical(layers.DEFAULT_KERNEL_INIT, "embed", None, "heads",
                                             "kv"),
                         bias_init=logical(nn.initializers.zeros, None, "heads", "kv"))(context)
    if mask is not None:
      mask = mask[:, None, None, :]  # [B, 1 (heads), 1 (queries), P]
    a = layers.attend(q, kv[:, :, 0], kv[:, :, 1], mask, dtype=self.dtype)
    a = nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, name="out",
                        kernel_init=logical(layers.DEFAULT_KERNEL_INIT, "heads", "kv", "embed"),
                        bias_init=logical(nn.initializers.zeros, "embed"))(a)
    h = jnp.concatenate([y, a, y * a], axis=-1)
    h = nn.gelu(dense(self.mlp_dim, None, "mlp", "compare_fc1", self.dtype)(h),
                approximate=True)
    return x + dense(width, "mlp", "embed", "compare_fc2", self.dtype)(h)


class CrossAttention(nn.Module):
  """Fusion before pooling: caption tokens cross-attend over image patch tokens.

  Both sequences are projected to `width`; `depth` CrossAttentionBlocks update
  the text tokens from the image's; the real (unmasked) text tokens are pooled
  and a linear layer gives the logit.

  Attributes:
    width: model width of the head (both sequences are projected to it).
    depth: number of cross-attention blocks.
    num_heads: attention heads (must divide width).
    mlp_dim: hidden size of each block's comparison MLP (default 2x width).
    pool: "mean" (mean over real text tokens) or "eos" (the last real token,
      where the tokenizer puts EOS).

  feats: {"image_tokens": [B, P, W_img], "text_tokens": [B, L, W_txt],
          "text_mask": [B, L] bool} -> logits [B] float32
  """

  width: int = 128
  depth: int = 1
  num_heads: int = 4
  mlp_dim: int | None = None
  pool: str = "mean"
  dtype: str = "float32"

  @nn.compact
  def __call__(self, feats):
    if self.pool not in POOLS:
      raise ValueError(f"cross_attention pool={self.pool!r}; choose one of {POOLS}.")
    mask = feats["text_mask"]
    x = dense(self.width, None, "embed", "text_in", self.dtype)(
        feats["text_tokens"].astype(self.dtype))
    image = dense(self.width, None, "embed", "image_in", self.dtype)(
        feats["image_tokens"].astype(self.dtype))
    image = layers.LayerNorm(dtype=self.dtype, name="image_ln")(image)
    for i in range(self.depth):
      x = CrossAttentionBlock(self.num_heads, self.mlp_dim or 2 * self.width,
                              dtype=self.dtype, name=f"block{i}")(x, image)
    x = layers.LayerNorm(dtype=self.dtype, name="ln_final")(x)
    if self.pool == "mean":
      w = mask.astype(x.dtype)[..., None]
      pooled = (x * w).sum(1) / jnp.maximum(w.sum(1), 1)
    else:
      last = jnp.maximum(mask.sum(axis=1) - 1, 0)  # index of the last real token
      pooled = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    return dense(1, "embed", None, "out", self.dtype)(pooled)[..., 0].astype(jnp.float32)


HEADS = {"concat_mlp": ConcatMLP, "weighted_sum": WeightedSum,
         "cross_attention": CrossAttention}
# Heads that read token sequences, not just the pooled embeddings.
NEEDS_TOKENS = ("cross_attention",)


def make_head(kind: str, dtype: str | None = None, **cfg) -> nn.Module:
  """The head `kind` (one of HEADS) built with attributes `cfg` (and `dtype`,
  where the head has a compute dtype)."""
  if kind not in HEADS:
    raise ValueError(f"unknown ITM head {kind!r}; choose one of {tuple(HEADS)}.")
  if dtype is not None and "dtype" in HEADS[kind].__dataclass_fields__:
    cfg["dtype"] = dtype
  return HEADS[kind](**cfg)
