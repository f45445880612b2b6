"""Audio towers over log-mel spectrograms: a spectrogram transformer and a CNN.

Both read `[B, T, F]` float features (time frames x mel bands, in dB), which
the model's feature stage computes from the waveform on the device (the tower
spec's `features` entry, see mmjax/models/multi_tower.py), and both see a
fixed window of `frames` frames, the training clip's length.

Clips of another length follow one documented policy (`windows`), at training
and evaluation alike, with no randomness (random crops belong to the input
pipeline, on the waveform):

  T == frames   the clip as it is
  T <  frames   repeated from its start until it fills the window (a short
                sound loops rather than fading into padding the model never
                saw in training)
  T >  frames   consecutive windows from the start, the last one ending at the
                clip's end (overlapping its neighbour rather than padded); the
                pooled features are the mean over windows, the token sequence
                their concatenation

The dB values are standardised with fixed constants (`input_mean`,
`input_std`), not per clip: loudness is information (on the shapes data it is
the object's size).
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import cnn, layers
from mmjax.models.layers import logical


def num_windows(t: int, frames: int) -> int:
  """Windows of `frames` that cover T frames (1 for T <= frames)."""
  return max(1, -(-t // frames))


def windows(spec, frames: int):
  """[B, T, F] -> [B, n, frames, F], n = num_windows(T, frames), by the policy above."""
  b, t, f = spec.shape
  if t < frames:
    reps = -(-frames // t)
    return jnp.tile(spec, (1, reps, 1))[:, None, :frames]
  n = num_windows(t, frames)
  starts = [min(i * frames, t - frames) for i in range(n)]
  return jnp.stack([spec[:, s:s + frames] for s in starts], axis=1)


def _check_spec(spec, frames: int, patch: Sequence[int] = (1, 1)) -> None:
  if spec.ndim != 3:
    raise ValueError(f"an audio tower reads [B, T, F] spectrogram features, got shape "
                     f"{tuple(spec.shape)}; give the tower spec a features entry "
                     "(e.g. features=dict(fn='mmjax.data.audio.log_mel', ...)) so the "
                     "waveform [B, N] becomes log-mel on the device.")
  pt, pf = patch
  if frames % pt or spec.shape[2] % pf:
    raise ValueError(f"the audio tower's window of {frames} frames x {spec.shape[2]} mel "
                     f"bands is not divisible by patch {tuple(patch)} (time, frequency); "
                     "change frames, the patch or the feature stage's n_mels.")


class AudioSpectrogramTransformer(nn.Module):
  """AST (Gong et al., 2021): a ViT over time x frequency patches of the log-mel.

  Patches are non-overlapping (`patch` = (time, frequency) frames x bands, cut
  by a reshape and embedded by one Dense layer, as mmjax's ViT), each with a
  learned position embedding over the fixed (frames / pt) x (F / pf) grid.

  Attributes:
    frames: the window T the tower reads (the training clip's frames).
    patch: (time, frequency) patch size.
    width, depth, num_heads, mlp_dim: transformer size (mlp_dim 4x width by default).
    pool: "gap" (mean of patch tokens) or "map" (attention pooling).
    input_mean, input_std: dB standardisation, (x - mean) / std.
    act, ln_eps, dtype, remat: as in ViT.

  spec: [B, T, F] float -> [B, width]; with return_sequence=True also
  [B, n * P, width], the n windows' P patch tokens.
  """

  frames: int = 96
  patch: Sequence[int] = (16, 16)
  width: int = 256
  depth: int = 4
  num_heads: int = 4
  mlp_dim: int | None = None
  pool: str = "gap"
  input_mean: float = -40.0
  input_std: float = 20.0
  act: str = "gelu_tanh"
  ln_eps: float = 1e-6
  dtype: str = "float32"
  remat: bool = False

  @nn.compact
  def __call__(self, spec, return_sequence: bool = False):
    if self.pool not in ("gap", "map"):
      raise ValueError(f"AudioSpectrogramTransformer pool={self.pool!r}; choose 'gap' or "
                       "'map'.")
    _check_spec(spec, self.frames, self.patch)
    b, _, f = spec.shape
    pt, pf = self.patch
    x = windows(spec, self.frames)  # [B, n, T, F]
    n = x.shape[1]
    x = ((x - self.input_mean) / self.input_std).astype(self.dtype)
    gt, gf = self.frames // pt, f // pf
    x = x.reshape(b * n, gt, pt, gf, pf).transpose(0, 1, 3, 2, 4)
    x = x.reshape(b * n, gt * gf, pt * pf)
    x = nn.Dense(self.width, dtype=self.dtype, name="embedding",
                 kernel_init=logical(layers.DEFAULT_KERNEL_INIT, None, "embed"),
                 bias_init=logical(nn.initializers.zeros, "embed"))(x)
    pos = self.param("pos_embedding", logical(layers.EMBED_INIT, None, None, "embed"),
                     (1, gt * gf, self.width))
    x = x + pos.astype(self.dtype)
    mlp_dim = self.mlp_dim or 4 * self.width
    x = layers.Encoder(self.depth, self.num_heads, mlp_dim, dtype=self.dtype,
                       remat=self.remat, act=self.act, ln_eps=self.ln_eps, name="encoder")(x)
    if self.pool == "gap":
      pooled = x.mean(axis=1)
    else:
      pooled = layers.MAPHead(self.num_heads, mlp_dim, dtype=self.dtype, act=self.act,
                              ln_eps=self.ln_eps, name="map_head")(x)
    pooled = pooled.reshape(b, n, self.width).mean(axis=1)
    if not return_sequence:
      return pooled
    return pooled, x.reshape(b, n * gt * gf, self.width)


class AudioCNN(nn.Module):
  """The log-mel as a one-channel image through mmjax's ConvNet: a cheap baseline.

  Attributes:
    frames: the window T the tower reads.
    widths, blocks_per_stage: the ConvNet's stages.
    input_mean, input_std: dB standardisation.

  spec: [B, T, F] float -> [B, widths[-1]]; with return_sequence=True also
  [B, n * h * w, widths[-1]], the n windows' last feature maps.
  """

  frames: int = 96
  widths: Sequence[int] = (32, 64, 128)
  blocks_per_stage: int = 2
  input_mean: float = -40.0
  input_std: float = 20.0
  dtype: str = "float32"

  @nn.compact
  def __call__(self, spec, return_sequence: bool = False):
    _check_spec(spec, self.frames)
    b = spec.shape[0]
    x = windows(spec, self.frames)
    n = x.shape[1]
    x = ((x - self.input_mean) / self.input_std).reshape(b * n, *x.shape[2:], 1)
    pooled, seq = cnn.ConvNet(tuple(self.widths), self.blocks_per_stage, dtype=self.dtype,
                              name="convnet")(x, return_sequence=True)
    pooled = pooled.reshape(b, n, -1).mean(axis=1)
    if not return_sequence:
      return pooled
    return pooled, seq.reshape(b, n * seq.shape[1], seq.shape[2])
