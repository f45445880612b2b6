"""A small convolutional image tower: a cheap baseline and a sanity check for ViT."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import layers
from mmjax.models.layers import logical


class ConvBlock(nn.Module):
  """3x3 conv -> GroupNorm -> ReLU, optionally with stride 2 to halve the resolution.

  x: [B, H, W, C] -> [B, H / stride, W / stride, features]
  """

  features: int
  stride: int = 1
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, (3, 3), strides=(self.stride, self.stride), use_bias=False,
                dtype=self.dtype,
                kernel_init=logical(nn.initializers.he_normal(), None, None, "conv_in", "conv_out"))(x)
    # GroupNorm, not BatchNorm: no cross-example statistics, so the loss of one
    # example never depends on which other examples share its device.
    x = nn.GroupNorm(num_groups=min(8, self.features), dtype=self.dtype,
                     scale_init=logical(nn.initializers.ones, "conv_out"),
                     bias_init=logical(nn.initializers.zeros, "conv_out"))(x)
    return nn.relu(x)


class ConvNet(nn.Module):
  """Stages of ConvBlocks, each stage halving the resolution, then global mean pool.

  Attributes:
    widths: channels of each stage; stage i > 0 starts with a stride-2 block.
    blocks_per_stage: ConvBlocks per stage.

  images: [B, H, W, C] float -> [B, widths[-1]] float; with return_sequence=True,
  (that, [B, h * w, widths[-1]]): the last stage's feature map, one token per
  position, for heads that attend over image regions.
  """

  widths: Sequence[int] = (32, 64, 128)
  blocks_per_stage: int = 2
  dtype: str = "float32"

  @nn.compact
  def __call__(self, images, return_sequence: bool = False):
    x = images.astype(self.dtype)
    for stage, width in enumerate(self.widths):
      for i in range(self.blocks_per_stage):
        stride = 2 if stage > 0 and i == 0 else 1
        x = ConvBlock(width, stride, dtype=self.dtype, name=f"stage{stage}_block{i}")(x)
    seq = x.reshape(x.shape[0], -1, x.shape[-1])
    x = x.mean(axis=(1, 2))
    pooled = layers.LayerNorm(dtype=self.dtype, name="ln")(
        nn.Dense(x.shape[-1], dtype=self.dtype,
                 kernel_init=logical(layers.DEFAULT_KERNEL_INIT, "conv_out", "embed"),
                 bias_init=logical(nn.initializers.zeros, "embed"))(x)).astype(jnp.float32)
    return (pooled, seq) if return_sequence else pooled
