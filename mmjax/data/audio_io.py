"""Audio files on the host: decoded to mono float32 at one sample rate, and
fitted to a clip length.

  decode(data, sample_rate) -> Decoded(wave float32 [N], changes, ...)
  read(path, sample_rate)   -> the same, from a file
  fit_length(wave, n, mode, rng) -> float32 [n]

Decoding is libsndfile's (through soundfile: WAV, FLAC, OGG/Vorbis, MP3 and
the rest it reads) and resampling is libsoxr's (through soxr, its "HQ"
quality); nothing here parses or filters samples by hand.

What a file may have wrong, and what happens to it:

  fatal, raise BadAudio(reason)    unreadable_audio (not audio, a format or
                                   header libsndfile refuses, a file that cannot
                                   be opened), truncated_audio (the header
                                   promises more than the file holds, or the
                                   decoder stops early), corrupt_audio (NaN or
                                   infinite samples), too_short_audio (shorter
                                   than min_seconds, empty included),
                                   silent_audio (peak at or below silence_db
                                   dBFS), missing_audio (no such file: read)
  fixed, named in Decoded.changes  resampled (another sample rate), downmixed
                                   (several channels: their mean),
                                   converted_<subtype> (any sample format but
                                   16-bit PCM, e.g. converted_pcm_24,
                                   converted_float, converted_vorbis), clipped
                                   (float samples beyond [-1, 1]), cropped
                                   (longer than max_seconds: the start is kept)

Truncation: libsndfile shortens a WAV whose data chunk claims more bytes
than the file holds to what is there, without an error, so the data chunk's
declared size is compared with the bytes present; for every format the
frames decoded are compared with the frames the header announces, and a
decoder error after a successful open counts as truncation too.

Clip length (`fit_length`): training draws a random window of a long clip and
pads a short one, with zeros ("pad") or by repeating it from its start
("repeat", as CLAP's "repeatpad"). Evaluation is deterministic: with no rng a
long clip keeps its first n samples and a short one is padded the same way;
an audio tower that reads longer clips averages fixed windows over them (see
mmjax/models/audio.py), so nothing random happens at evaluation.
"""

import io
import math
from typing import NamedTuple

import numpy as np
import soundfile
import soxr

MIN_SECONDS = 1.0
MAX_SECONDS = 30.0
SILENCE_DB = -80.0  # peak dBFS at or below which a clip is silence (16-bit: ~3 LSB)
PAD_MODES = ("repeat", "pad")
RESAMPLE_QUALITY = "HQ"
# Decoding errors of libsndfile (LibsndfileError is a RuntimeError) and of
# soundfile's own checks on odd headers.
_DECODE_ERRORS = (RuntimeError, ValueError, TypeError, EOFError)
# Declared RIFF data sizes that mean "unknown" (streamed WAVs), not a length.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


class BadAudio(Exception):
  """A file that cannot be stored; `reason` is its report reason, str(e) the detail."""

  def __init__(self, reason: str, detail: str):
    super().__init__(detail)
    self.reason = reason


class Decoded(NamedTuple):
  wave: np.ndarray  # float32 [N], mono, in [-1, 1], at the requested rate
  changes: tuple  # report reasons of what was fixed, e.g. ("resampled", "downmixed")
  source_rate: int
  channels: int
  subtype: str  # libsndfile's sample format of the file, e.g. "PCM_16", "FLOAT"


def _riff_data_shortfall(data: bytes) -> int:
  """Bytes a RIFF/WAVE file's data chunk declares beyond those it holds (0: none,
  or not a RIFF/WAVE file, or a size left unknown by a streaming writer)."""
  if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
    return 0
  offset = 12
  while offset + 8 <= len(data):
    size = int.from_bytes(data[offset + 4:offset + 8], "little")
    if data[offset:offset + 4] == b"data":
      if size in _UNKNOWN_SIZES:
        return 0
      return max(0, size - (len(data) - offset - 8))
    offset += 8 + size + (size & 1)  # chunks are word-aligned
  return 0  # no data chunk: libsndfile has refused the file already


def decode(data: bytes, sample_rate: int, *, min_seconds: float = MIN_SECONDS,
           max_seconds: float = MAX_SECONDS, silence_db: float = SILENCE_DB,
           name: str = "audio") -> Decoded:
  """Decodes an audio file's bytes to mono float32 at `sample_rate`.

  Args:
    data: the whole file.
    sample_rate: rate of the result, Hz.
    min_seconds: shorter results raise BadAudio("too_short_audio").
    max_seconds: longer files keep their first max_seconds ("cropped"); only
      that much (plus a few ms for the resampler) is decoded.
    silence_db: a peak at or below this (dBFS) raises BadAudio("silent_audio").
    name: how messages name the file.

  Returns:
    Decoded with wave float32 [N], N = the file's duration in samples at
    sample_rate (at most round(max_seconds * sample_rate)).

  Raises:
    BadAudio: see the module docstring for the reasons.
  """
  try:
    f = soundfile.SoundFile(io.BytesIO(data))
  except _DECODE_ERRORS as e:
    raise BadAudio("unreadable_audio", f"{name}: {_short(e)}") from None
  with f:
    rate, channels, subtype, frames = f.samplerate, f.channels, f.subtype, f.frames
    if rate <= 0 or channels <= 0:
      raise BadAudio("unreadable_audio", f"{name}: header gives {rate} Hz, {channels} channels")
    keep = round(max_seconds * rate)
    # A few ms past the crop, so the resampler's filter sees real samples at the end.
    wanted = min(frames, keep + rate // 100)
    try:
      wave = f.read(frames=wanted, dtype="float32", always_2d=True)
    except _DECODE_ERRORS as e:
      raise BadAudio("truncated_audio", f"{name}: decoding stopped: {_short(e)}") from None
  shortfall = _riff_data_shortfall(data)
  if shortfall:
    raise BadAudio("truncated_audio", f"{name}: the WAV data chunk declares {shortfall} "
                                      "bytes more than the file holds")
  if len(wave) < wanted:
    raise BadAudio("truncated_audio", f"{name}: decoded {len(wave)} of the {wanted} frames "
                                      "the header announces")
  if not np.isfinite(wave).all():
    raise BadAudio("corrupt_audio", f"{name}: {int((~np.isfinite(wave)).sum())} NaN or "
                                    "infinite samples")
  changes = []
  if subtype != "PCM_16":
    changes.append(f"converted_{subtype.lower()}")
  if np.abs(wave).max(initial=0.0) > 1.0:  # only float files can exceed full scale
    wave = np.clip(wave, -1.0, 1.0)
    changes.append("clipped")
  if channels > 1:
    wave = wave.mean(axis=1, dtype=np.float32)
    changes.append("downmixed")
  else:
    wave = wave[:, 0]
  if rate != sample_rate:
    wave = soxr.resample(wave, rate, sample_rate, quality=RESAMPLE_QUALITY)
    changes.append("resampled")
  if frames > keep:
    wave = wave[:round(max_seconds * sample_rate)]
    changes.append("cropped")
  wave = np.ascontiguousarray(wave, dtype=np.float32)
  if len(wave) < round(min_seconds * sample_rate):
    raise BadAudio("too_short_audio", f"{name}: {len(wave) / sample_rate:.3f} s, under "
                                      f"the minimum of {min_seconds} s")
  peak = float(np.abs(wave).max())
  if peak <= 10 ** (silence_db / 20):
    level = "-inf" if peak == 0 else f"{20 * math.log10(peak):.1f}"
    raise BadAudio("silent_audio", f"{name}: peak {level} dBFS, at or below {silence_db} dBFS")
  return Decoded(wave, tuple(changes), rate, channels, subtype)


def read(path: str, sample_rate: int, **kwargs) -> Decoded:
  """`decode` of the file at `path`; a missing file raises BadAudio("missing_audio")."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise BadAudio("missing_audio", f"{path}: no such file") from None
  except OSError as e:  # a directory, no permission, an I/O error
    raise BadAudio("unreadable_audio", f"{path}: {e.strerror or e}") from None
  return decode(data, sample_rate, name=path, **kwargs)


def _short(error: Exception) -> str:
  # libsndfile's messages start with "Error opening <_io.BytesIO object at 0x...>: ".
  text = str(error)
  return text.split(">: ", 1)[-1] if "<_io." in text else text


def fit_length(wave: np.ndarray, n: int, mode: str = "repeat",
               rng: np.random.Generator | None = None) -> np.ndarray:
  """A clip of exactly n samples from wave.

  Args:
    wave: float [T] samples.
    n: length of the result.
    mode: how a short clip (T < n) is filled: "repeat" (the clip again from its
      start, as often as needed) or "pad" (zeros after it). An empty clip
      gives zeros either way.
    rng: a long clip (T > n) gives a uniformly drawn window of n samples;
      None (evaluation) keeps its first n samples.

  Returns:
    float32 [n].
  """
  if mode not in PAD_MODES:
    raise ValueError(f"pad mode {mode!r} is not one of {PAD_MODES}; set "
                     "config.data.pad_mode to one of them.")
  if n <= 0:
    raise ValueError(f"clip length n={n} must be positive.")
  wave = np.asarray(wave, np.float32)
  t = len(wave)
  if t > n:
    start = 0 if rng is None else int(rng.integers(0, t - n + 1))
    return wave[start:start + n].copy()
  if t == n:
    return wave.copy()
  if mode == "repeat" and t:
    return np.tile(wave, -(-n // t))[:n]
  return np.concatenate([wave, np.zeros(n - t, np.float32)])
