"""The host-side constants of the audio features, in NumPy: mel scales, the mel
filterbank, analysis windows and the DCT matrix.

They are built once per setting (cached) and handed to the compiled features
in mmjax/data/audio.py as arrays, so a fork replaces the filterbank by passing
its own (`log_mel(..., filterbank=my_bank)`) or by editing only this file.
Conventions are librosa's; see audio.py's docstring.
"""

import functools
import warnings
from typing import Optional, Union

import numpy as np

WindowSpec = Union[str, np.ndarray]

# Periodic generalised-cosine windows: w[n] = sum_k (-1)^k a_k cos(2 pi k n / M).
_COSINE_WINDOWS = {"hann": (0.5, 0.5), "hamming": (0.54, 0.46),
                   "blackman": (0.42, 0.5, 0.08), "boxcar": (1.0,)}
NORMS = ("slaney", None)


def hz_to_mel(hz, htk: bool = False) -> np.ndarray:
  """Hz -> mels, float64. HTK: 2595 log10(1 + f / 700); Slaney: linear to 1 kHz, log above."""
  hz = np.asarray(hz, np.float64)
  if htk:
    return 2595.0 * np.log10(1.0 + hz / 700.0)
  # Slaney's Auditory Toolbox: 3 mels per 200 Hz up to 1 kHz (15 mels), then
  # 27 mels per factor 6.4 in frequency.
  linear = hz * 3.0 / 200.0
  log = 15.0 + np.log(np.maximum(hz, 1000.0) / 1000.0) * 27.0 / np.log(6.4)
  return np.where(hz >= 1000.0, log, linear)


def mel_to_hz(mel, htk: bool = False) -> np.ndarray:
  """Mels -> Hz, float64; the inverse of `hz_to_mel`."""
  mel = np.asarray(mel, np.float64)
  if htk:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
  linear = mel * 200.0 / 3.0
  log = 1000.0 * np.exp((np.maximum(mel, 15.0) - 15.0) * np.log(6.4) / 27.0)
  return np.where(mel >= 15.0, log, linear)


def mel_filterbank(sample_rate: float, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: Optional[float] = None, htk: bool = False,
                   norm: Optional[str] = "slaney") -> np.ndarray:
  """The mel filterbank that maps a power spectrum onto mel bands, on the host.

  Triangle m rises from edge m to edge m + 1 and falls to edge m + 2, linearly
  in Hz, where the n_mels + 2 edges are equally spaced in mel between fmin and
  fmax. Equal to `librosa.filters.mel(...).T` at the same arguments.

  Args:
    sample_rate: Hz.
    n_fft: FFT size; the spectrum has n_fft // 2 + 1 bins at k * sample_rate / n_fft.
    n_mels: number of bands.
    fmin, fmax: lowest and highest edge in Hz; fmax=None is sample_rate / 2.
    htk: HTK's mel scale instead of Slaney's.
    norm: "slaney" divides each triangle by half its width in Hz (unit area,
      so bands carry comparable energy); None keeps peaks at 1.

  Returns:
    float32 `[n_fft // 2 + 1, n_mels]`; `power [.., F] @ filterbank` -> mels.
  """
  fmax = sample_rate / 2.0 if fmax is None else fmax
  if norm not in NORMS:
    raise ValueError(f"norm={norm!r} is not supported: use 'slaney' or None.")
  bins_hz = np.arange(n_fft // 2 + 1) * (sample_rate / n_fft)
  edges = mel_to_hz(np.linspace(hz_to_mel(fmin, htk), hz_to_mel(fmax, htk), n_mels + 2), htk)
  lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
  rising = (bins_hz[:, None] - lower) / (centre - lower)
  falling = (upper - bins_hz[:, None]) / (upper - centre)
  weights = np.maximum(0.0, np.minimum(rising, falling))
  if norm == "slaney":
    weights *= 2.0 / (upper - lower)
  # A band narrower than one FFT bin catches nothing and outputs -100 dB for
  # ever; say so now rather than let a model learn from a dead channel.
  empty = (weights.max(axis=0) <= 0) & (lower > 0)
  if empty.any():
    warnings.warn(f"{int(empty.sum())} of {n_mels} mel bands contain no FFT bin "
                  f"(sample_rate={sample_rate}, n_fft={n_fft}, fmin={fmin}, fmax={fmax}): "
                  "raise n_fft or lower n_mels.", stacklevel=2)
  return weights.astype(np.float32)


def window_array(window: WindowSpec, win_length: int, n_fft: int) -> np.ndarray:
  """The analysis window, float32 `[n_fft]`: periodic, centred, zero-padded to n_fft.

  `window` is "hann", "hamming", "blackman", "boxcar" (periodic, as
  `scipy.signal.get_window(name, win_length)`), or an array `[win_length]`.
  """
  if isinstance(window, str):
    if window not in _COSINE_WINDOWS:
      raise ValueError(f"window={window!r} is not known: use one of "
                       f"{sorted(_COSINE_WINDOWS)} or pass the window itself as an array.")
    phase = 2.0 * np.pi * np.arange(win_length) / win_length
    values = sum((-1) ** k * a * np.cos(k * phase)
                 for k, a in enumerate(_COSINE_WINDOWS[window]))
  else:
    values = np.asarray(window, np.float64)
    if values.shape != (win_length,):
      raise ValueError(f"window array has shape {values.shape}, expected ({win_length},) "
                       "(win_length samples).")
  left = (n_fft - win_length) // 2
  padded = np.zeros(n_fft, np.float64)
  padded[left:left + win_length] = values
  return padded.astype(np.float32)


def dct_matrix(n_mels: int, n_mfcc: int, lifter: float = 0.0) -> np.ndarray:
  """Orthonormal DCT-II as a matrix, float32 `[n_mels, n_mfcc]`, optionally liftered.

  `x [.., n_mels] @ dct_matrix` = `scipy.fft.dct(x, type=2, norm="ortho")[.., :n_mfcc]`,
  times librosa's sinusoidal lifter 1 + (L / 2) sin(pi (k + 1) / L) when L > 0.
  """
  n, k = np.arange(n_mels)[:, None], np.arange(n_mfcc)[None, :]
  basis = np.cos(np.pi * k * (2 * n + 1) / (2 * n_mels)) * np.sqrt(2.0 / n_mels)
  basis[:, 0] /= np.sqrt(2.0)
  if lifter > 0:
    basis *= 1.0 + (lifter / 2.0) * np.sin(np.pi * (k + 1) / lifter)
  return basis.astype(np.float32)


@functools.lru_cache(maxsize=64)
def cached(kind: str, *args) -> np.ndarray:
  """window_array / mel_filterbank / dct_matrix (kind "window" | "mel" | "dct")
  of these arguments, built once per process and read-only (shared by calls)."""
  make = {"window": window_array, "mel": mel_filterbank, "dct": dct_matrix}[kind]
  out = make(*args)
  out.flags.writeable = False  # shared between calls
  return out
