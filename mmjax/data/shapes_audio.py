"""The shapes scenes' sound: one procedurally synthesised clip per scene.

Image, caption and sound describe one scene. Each object makes a tone:

  colour    its pitch: eight notes three semitones apart, C4 (262 Hz) for
            red up to A5 (880 Hz) for cyan (PITCHES)
  shape     its timbre and envelope: a hum (pure sine), a buzz (odd
            harmonics), a pluck (all harmonics, fast decay), a chime
            (inharmonic bell partials), a warble (tremolo) or beeps (three
            pulses) (TIMBRES)
  size      its loudness: large objects 10 dB louder than small ones
  relation  the timing: side by side, the left object sounds first and the
            right one after it; stacked, the two overlap and the upper one
            starts first; a lone object starts early, midway or late by its
            grid column and lasts longer the lower its grid row

So "a red circle left of a blue square" sounds as a low hum followed by a
higher buzz, and "a blue square right of a red circle", the same scene, sounds
the same. Colour alone is in the pitch, so a sound can tell "a red circle left
of a blue square" from "a blue circle left of a red square" as a caption can.

Per-example variation (pitch within a third of a semitone, onsets within
20 ms, loudness within 1.5 dB, a noise floor 45 dB down) is drawn from a seed
that is a hash of the scene, positions included, so the sound is a pure
function of the scene: any process computes the same clip for the same row.

Clips are float32, SAMPLE_RATE Hz, CLIP_SAMPLES long, peak below 1.
"""

import zlib
from typing import Sequence

import numpy as np

from mmjax.data import shapes

SAMPLE_RATE = 16_000
CLIP_SECONDS = 1.0
CLIP_SAMPLES = int(SAMPLE_RATE * CLIP_SECONDS)

# Colour -> fundamental in Hz: C4, D#4, F#4, A4, C5, D#5, F#5, A5 (3 semitones apart,
# so neighbours differ by 19%: two FFT bins apart at n_fft=512 even for the lowest).
PITCHES = {colour: 261.63 * 2 ** (3 * k / 12) for k, colour in enumerate(shapes.COLOURS)}
# The words a sound caption uses for each pitch, lowest to highest.
PITCH_WORDS = dict(zip(shapes.COLOURS, ("deep", "low", "warm", "middle", "bright", "high",
                                        "shrill", "piercing")))
TIMBRES = dict(zip(shapes.SHAPES, ("hum", "buzz", "pluck", "chime", "warble", "beeps")))
LOUDNESS = {"small": 0.12, "large": 0.38}  # peak amplitude: 10 dB apart
LOUDNESS_WORDS = {"small": "soft", "large": "loud"}
NOISE = 0.002  # noise floor (std), about 45 dB below a small object's tone

# Timing in seconds (onset, duration).
_SEQUENCE = ((0.05, 0.40), (0.52, 0.40))  # side by side: first, then second
_STACKED = ((0.05, 0.85), (0.30, 0.60))  # stacked: upper first, lower joins
_LONE_ONSET = (0.05, 0.25, 0.45)  # by grid column
_LONE_DURATION = (0.30, 0.40, 0.50)  # by grid row


def _seed(scene: shapes.Scene) -> int:
  """A stable seed from the whole scene (positions included): CRC32 of its repr,
  not hash(), which is salted per process."""
  return zlib.crc32(repr(scene).encode("utf-8"))


def _envelope(t: np.ndarray, duration: float, shape: str) -> np.ndarray:
  """Amplitude over t (seconds since onset, [n]); zero outside [0, duration].

  Attacks and releases of 10 ms or more keep clicks (broadband energy that
  would blur the pitch) out of the spectrum.
  """
  inside = (t >= 0) & (t < duration)
  attack = np.clip(t / 0.01, 0, 1)
  release = np.clip((duration - t) / 0.02, 0, 1)
  if shape in ("triangle", "diamond"):  # struck: fast decay
    body = np.exp(-np.maximum(t, 0) / (0.12 if shape == "triangle" else 0.25))
  elif shape == "cross":  # tremolo at 11 Hz
    body = 0.6 + 0.4 * np.cos(2 * np.pi * 11 * t)
  elif shape == "ring":  # three pulses, each a third of the tone with a gap
    phase = (np.maximum(t, 0) / duration * 3) % 1
    body = (phase < 0.6).astype(np.float64)
    edge = np.minimum(phase / 0.05, (0.6 - phase) / 0.05)
    body *= np.clip(edge, 0, 1)
  else:
    body = np.ones_like(t)
  return np.where(inside, attack * release * body, 0.0)


def _partials(shape: str, f0: float) -> list[tuple[float, float]]:
  """(frequency Hz, relative amplitude) of one tone's partials, kept below 7 kHz."""
  if shape == "square":  # odd harmonics, 1/k: a band-limited square wave
    parts = [(k * f0, 1 / k) for k in (1, 3, 5, 7)]
  elif shape == "triangle":  # every harmonic, 1/k: a band-limited sawtooth
    parts = [(k * f0, 1 / k) for k in range(1, 7)]
  elif shape == "diamond":  # a bell's inharmonic partials
    parts = [(f0, 1.0), (2.76 * f0, 0.5), (5.40 * f0, 0.25)]
  elif shape == "cross":
    parts = [(f0, 1.0), (2 * f0, 0.3)]
  else:  # circle: a pure sine; ring: a sine in pulses
    parts = [(f0, 1.0)]
  return [(f, a) for f, a in parts if f < 7000]


def _add_tone(wave: np.ndarray, obj: shapes.Obj, onset: float, duration: float,
              rng) -> None:
  """Adds one object's tone to wave (float32 [CLIP_SAMPLES]), in place.

  Only the samples inside the tone are computed: the envelope is zero elsewhere.
  """
  onset += rng.uniform(-0.02, 0.02)
  f0 = PITCHES[obj.colour] * 2 ** (rng.uniform(-1, 1) / 36)  # +- a third of a semitone
  parts = _partials(obj.shape, f0)
  phases = rng.uniform(0, 2 * np.pi, len(parts))
  gain = LOUDNESS[obj.size] * 10 ** (rng.uniform(-1.5, 1.5) / 20)
  lo = max(0, int(np.ceil(onset * SAMPLE_RATE)))
  hi = min(CLIP_SAMPLES, int(np.ceil((onset + duration) * SAMPLE_RATE)))
  t = np.arange(lo, hi) / SAMPLE_RATE - onset
  tone = sum(a * np.sin(2 * np.pi * f * t + p) for (f, a), p in zip(parts, phases))
  tone *= gain / sum(a for _, a in parts)  # peak <= gain
  wave[lo:hi] += tone * _envelope(t, duration, obj.shape)


def _timing(scene: shapes.Scene) -> list[tuple[shapes.Obj, float, float]]:
  """(object, onset, duration) of each object, in the order they start."""
  if scene.cell is not None:
    row, col = scene.cell
    return [(scene.objects[0], _LONE_ONSET[col], _LONE_DURATION[row])]
  a, b = scene.objects
  first, second = (a, b) if scene.relation in ("left", "above") else (b, a)
  timing = _SEQUENCE if scene.relation in ("left", "right") else _STACKED
  return [(first, *timing[0]), (second, *timing[1])]


def synthesize(scene: shapes.Scene) -> np.ndarray:
  """scene -> float32 [CLIP_SAMPLES] in (-1, 1), a pure function of the scene."""
  rng = np.random.default_rng(_seed(scene))
  wave = NOISE * rng.standard_normal(CLIP_SAMPLES, np.float32)
  for obj, onset, duration in _timing(scene):
    _add_tone(wave, obj, onset, duration, rng)
  return wave


def sounds(scenes: Sequence[shapes.Scene]) -> np.ndarray:
  """B scenes -> float32 [B, CLIP_SAMPLES]."""
  out = np.empty((len(scenes), CLIP_SAMPLES), np.float32)
  for i, scene in enumerate(scenes):
    out[i] = synthesize(scene)
  return out


def _sound_words(obj: shapes.Obj) -> str:
  return f"{LOUDNESS_WORDS[obj.size]} {PITCH_WORDS[obj.colour]} {TIMBRES[obj.shape]}"


def sound_caption(scene: shapes.Scene) -> str:
  """What the clip sounds like, e.g. "a loud deep hum followed by a soft high buzz"."""
  timing = _timing(scene)
  words = [_sound_words(obj) for obj, _, _ in timing]
  if len(words) == 1:
    row, col = scene.cell
    when = ("early", "midway", "late")[col]
    length = ("short", "medium", "long")[row]
    return f"a {length} {words[0]} starting {when}"
  link = "followed by" if scene.relation in ("left", "right") else "joined by"
  return f"a {words[0]} {link} a {words[1]}"
