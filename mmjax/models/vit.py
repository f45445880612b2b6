"""Vision Transformer image tower (Dosovitskiy et al., 2021)."""

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import layers
from mmjax.models.layers import logical

POOLS = ("gap", "cls", "map", "flatten")
STEMS = ("patch", "conv")


class ConvStem(nn.Module):
  """log2(patch_size) stride-2 3x3 convolutions with ReLU: a patchifier that sees
  across patch borders. Xiao et al. (2021), "Early Convolutions Help Transformers
  See Better", show it makes ViTs train faster and less sensitively to the
  learning rate, for a few percent more FLOPs.

  images: [B, H, W, C] -> [B, H / patch_size, W / patch_size, channels[-1]]
  """

  patch_size: int
  width: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    n = self.patch_size.bit_length() - 1
    if 2 ** n != self.patch_size:
      raise ValueError(f"stem='conv' needs a power-of-two patch_size, got "
                       f"{self.patch_size}; use stem='patch' or patch_size in (2, 4, 8, 16).")
    for i in range(n):
      channels = max(self.width // 2 ** (n - i), 16)
      x = nn.Conv(channels, (3, 3), strides=(2, 2), dtype=self.dtype, name=f"conv{i}",
                  kernel_init=logical(nn.initializers.he_normal(), None, None,
                                      "conv_in", "conv_out"),
                  bias_init=logical(nn.initializers.zeros, "conv_out"))(x)
      x = nn.relu(x)
    return x


class ViT(nn.Module):
  """ViT encoder that returns one feature vector per image.

  Patches are cut by a reshape and embedded by one Dense layer (the same maths as a
  stride-`patch_size` convolution, but a plain matmul on every backend).

  Attributes:
    patch_size: side of the square patches; must divide the image side.
    width, depth, num_heads, mlp_dim: transformer size (mlp_dim defaults to 4x width).
    pool: "gap" (mean of patch tokens), "cls" (a learned class token), "map"
      (multihead attention pooling, as in SigLIP) or "flatten" (the P patch
      tokens concatenated, [B, P * width], so the projection after the tower
      reads which token holds what: for small token grids whose captions
      name positions; a mean or one query has to learn to keep them).
    stem: "patch" (non-overlapping patches, one linear map) or "conv" (ConvStem).
    ln_pre: a LayerNorm on the token sequence before the first block, as in
      CLIP's ViT (and open_clip's), so its checkpoints' layout can be matched.
    patch_bias: the patch embedding has a bias (big_vision, SigLIP) or not (CLIP).
    cls_position: with pool="cls", the class token has a position embedding of
      its own (CLIP: [1, P + 1, width], added after the token is prepended)
      rather than none (big_vision's "tok": added to the patches only).
    act, ln_eps: MLP activation (layers.ACTIVATIONS) and LayerNorm epsilon:
      "gelu_tanh", 1e-6 for big_vision / SigLIP; "quick_gelu" or "gelu", 1e-5
      for CLIP.
    dtype: compute dtype; parameters stay float32.
    remat: recompute block activations in the backward pass.

  images: [B, H, W, C] float -> [B, width] float ([B, P * width] with
  pool="flatten"); with return_sequence=True,
  (that, [B, P, width] float): the P patch tokens before pooling (the class
  token left out), for heads that attend over patches.
  """

  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int | None = None
  pool: str = "gap"
  stem: str = "patch"
  ln_pre: bool = False
  patch_bias: bool = True
  cls_position: bool = False
  act: str = "gelu_tanh"
  ln_eps: float = 1e-6
  dtype: str = "float32"
  remat: bool = False

  @nn.compact
  def __call__(self, images, return_sequence: bool = False):
    if self.pool not in POOLS:
      raise ValueError(f"ViT pool={self.pool!r}; choose one of {POOLS}.")
    if self.stem not in STEMS:
      raise ValueError(f"ViT stem={self.stem!r}; choose one of {STEMS}.")
    b, h, w, c = images.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"image size {h}x{w} is not divisible by patch_size {p}; "
                       "change the tower's patch_size or data.image_size.")
    if self.stem == "conv":
      x = ConvStem(p, self.width, dtype=self.dtype, name="stem")(images.astype(self.dtype))
      x = x.reshape(b, (h // p) * (w // p), x.shape[-1])
    else:
      x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
      x = x.reshape(b, (h // p) * (w // p), p * p * c).astype(self.dtype)
    x = nn.Dense(self.width, dtype=self.dtype, name="embedding", use_bias=self.patch_bias,
                 kernel_init=logical(layers.DEFAULT_KERNEL_INIT, None, "embed"),
                 bias_init=logical(nn.initializers.zeros, "embed"))(x)
    with_cls = self.pool == "cls"
    if with_cls and self.cls_position:
      x = self._prepend_cls(x)
    pos = self.param("pos_embedding", logical(layers.EMBED_INIT, None, None, "embed"),
                     (1, x.shape[1], self.width))
    x = x + pos.astype(self.dtype)
    if with_cls and not self.cls_position:
      x = self._prepend_cls(x)
    if self.ln_pre:
      x = layers.LayerNorm(dtype=self.dtype, name="ln_pre", epsilon=self.ln_eps)(x)
    mlp_dim = self.mlp_dim or 4 * self.width
    x = layers.Encoder(self.depth, self.num_heads, mlp_dim, dtype=self.dtype,
                       remat=self.remat, act=self.act, ln_eps=self.ln_eps, name="encoder")(x)
    if self.pool == "gap":
      pooled = x.mean(axis=1)
    elif self.pool == "cls":
      pooled, x = x[:, 0], x[:, 1:]
    elif self.pool == "flatten":
      pooled = x.reshape(b, -1)
    else:
      pooled = layers.MAPHead(self.num_heads, mlp_dim, dtype=self.dtype, act=self.act,
                              ln_eps=self.ln_eps, name="map_head")(x)
    return (pooled, x) if return_sequence else pooled

  def _prepend_cls(self, x):
    """x: [B, P, width] -> [B, 1 + P, width], the learned class token first."""
    b = x.shape[0]
    cls = self.param("cls", logical(nn.initializers.zeros, None, None, "embed"),
                     (1, 1, self.width))
    return jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)).astype(self.dtype), x],
                           axis=1)
