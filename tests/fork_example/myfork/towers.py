"""A tower mmjax does not ship: an MLP over downsampled edge maps."""

import flax.linen as nn
import jax.numpy as jnp


class EdgeMLP(nn.Module):
  """[B, H, W, C] images -> [B, width]; with return_sequence, also [B, T, width]
  over T = (H / pool) * (W / pool) pooled cells.

  Its parameters carry no logical axis names: mmjax replicates them (with a
  warning) on any mesh.
  """

  width: int = 32
  pool: int = 4
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x, return_sequence: bool = False):
    b, h, w, c = x.shape
    p = self.pool
    cells = x.reshape(b, h // p, p, w // p, p, c).mean(axis=(2, 4))  # [B, h/p, w/p, C]
    seq = nn.gelu(nn.Dense(self.width, dtype=self.dtype)(cells.reshape(b, -1, c)))
    seq = nn.Dense(self.width, dtype=self.dtype)(seq)
    pooled = nn.Dense(self.width, dtype=self.dtype)(nn.gelu(seq.reshape(b, -1)))
    pooled = pooled.astype(jnp.float32)
    return (pooled, seq) if return_sequence else pooled
