"""Vision Transformer image tower (Dosovitskiy et al., 2021)."""

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import layers
from mmjax.models.layers import logical

POOLS = ("gap", "cls", "map")


class ViT(nn.Module):
  """ViT encoder that returns one feature vector per image.

  Patches are cut by a reshape and embedded by one Dense layer (the same maths as a
  stride-`patch_size` convolution, but a plain matmul on every backend).

  Attributes:
    patch_size: side of the square patches; must divide the image side.
    width, depth, num_heads, mlp_dim: transformer size (mlp_dim defaults to 4x width).
    pool: "gap" (mean of patch tokens), "cls" (a learned class token) or "map"
      (multihead attention pooling, as in SigLIP).
    dtype: compute dtype; parameters stay float32.
    remat: recompute block activations in the backward pass.

  images: [B, H, W, C] float -> [B, width] float
  """

  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int | None = None
  pool: str = "gap"
  dtype: str = "float32"
  remat: bool = False

  @nn.compact
  def __call__(self, images):
    if self.pool not in POOLS:
      raise ValueError(f"ViT pool={self.pool!r}; choose one of {POOLS}.")
    b, h, w, c = images.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"image size {h}x{w} is not divisible by patch_size {p}; "
                       "change model.image.patch_size or data.image_size.")
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, (h // p) * (w // p), p * p * c).astype(self.dtype)
    x = nn.Dense(self.width, dtype=self.dtype, name="embedding",
                 kernel_init=logical(layers.DEFAULT_KERNEL_INIT, None, "embed"),
                 bias_init=logical(nn.initializers.zeros, "embed"))(x)
    pos = self.param("pos_embedding", logical(layers.EMBED_INIT, None, None, "embed"),
                     (1, x.shape[1], self.width))
    x = x + pos.astype(self.dtype)
    if self.pool == "cls":
      cls = self.param("cls", logical(nn.initializers.zeros, None, None, "embed"),
                       (1, 1, self.width))
      x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)).astype(self.dtype), x],
                          axis=1)
    mlp_dim = self.mlp_dim or 4 * self.width
    x = layers.Encoder(self.depth, self.num_heads, mlp_dim, dtype=self.dtype,
                       remat=self.remat, name="encoder")(x)
    if self.pool == "gap":
      return x.mean(axis=1)
    if self.pool == "cls":
      return x[:, 0]
    return layers.MAPHead(self.num_heads, mlp_dim, dtype=self.dtype, name="map_head")(x)
