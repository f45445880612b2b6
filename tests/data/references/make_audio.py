"""Writes the librosa reference fixtures of tests/data/test_audio.py.

Run with the reference venv (librosa), from the repository root:

  /work/main/.venv-bench/bin/python tests/data/references/make_audio.py

For each case below it makes a batch of two short clips from their generating
parameters (no waveform is stored: the test rebuilds them with `noise` and
`chirp` from this module, bit for bit, and checks their sha256), and writes
into tests/data/data/audio/:

  reference.npz  "<case>/mel"  [2, frames, n_mels] float32, librosa's
                               melspectrogram(...).T (power, or magnitude at power=1)
                 "<case>/db"   [2, frames, n_mels] float32, power_to_db(mel, ref=1.0,
                               amin=1e-10, top_db=case's top_db).T
                 "<case>/mfcc" [2, frames, N_MFCC] float32, feature.mfcc(...).T with
                               librosa's internal top_db=80 and mel_norm=case's norm
  cases.json     per case: sample_rate, n_samples, mmjax log_mel keywords,
                 noise seed, chirp parameters, sha256 of each clip; versions.

Row 0 of each batch is unit white noise, row 1 a linear chirp sweeping almost
the whole band (its far-from-peak bands probe the float32 rounding floor).
"""

import hashlib
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "data", "audio")
N_MFCC = 20

# Cases: mmjax `log_mel` keywords (librosa's names, plus pad_mode / win_length
# that librosa's melspectrogram also takes). Clip lengths are not multiples of
# the hop, so the last frames run into the padding.
CASES = {
    # librosa's defaults: centred, zero-padded, Slaney mels with Slaney norm.
    "slaney": dict(sample_rate=16_000, n_samples=8_037,
                   kwargs=dict(n_fft=512, hop_length=256, n_mels=40)),
    # HTK mels without norm, a window shorter than the frame, band limits.
    "htk_nonorm": dict(sample_rate=16_000, n_samples=8_037,
                       kwargs=dict(n_fft=400, hop_length=160, win_length=320, n_mels=40,
                                   fmin=30.0, fmax=7_000.0, htk=True, norm=None)),
    # Uncentred frames, magnitude (power=1) and an 80 dB floor.
    "uncentred_top_db": dict(sample_rate=22_050, n_samples=11_025,
                             kwargs=dict(n_fft=1024, hop_length=256, n_mels=64, fmin=100.0,
                                         fmax=8_000.0, center=False, power=1.0,
                                         top_db=80.0)),
    # mmjax.data.audio.CLAP (the test checks they are equal), at 48 kHz.
    "clap": dict(sample_rate=48_000, n_samples=12_000,
                 kwargs=dict(n_fft=1024, hop_length=480, n_mels=64, fmin=50.0,
                             fmax=14_000.0, htk=True, norm=None, center=True,
                             pad_mode="reflect", power=2.0, top_db=None)),
    # mmjax.data.audio.AST, at 16 kHz.
    "ast": dict(sample_rate=16_000, n_samples=4_800,
                kwargs=dict(n_fft=400, hop_length=160, n_mels=128, fmin=20.0, fmax=8_000.0,
                            htk=True, norm=None, center=False, power=2.0, top_db=None)),
}


def noise(seed: int, n: int) -> np.ndarray:
  """Unit white noise, float32 [n]."""
  return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def chirp(sample_rate: float, n: int, f0: float, f1: float, amplitude: float) -> np.ndarray:
  """A linear sweep f0 -> f1 Hz over n samples, float32 [n] (computed in float64)."""
  t = np.arange(n) / sample_rate
  duration = n / sample_rate
  phase = 2.0 * np.pi * (f0 * t + (f1 - f0) * t * t / (2.0 * duration))
  return (amplitude * np.sin(phase)).astype(np.float32)


def inputs(case: dict) -> np.ndarray:
  """The case's [2, n_samples] float32 batch: noise, chirp."""
  n = case["n_samples"]
  return np.stack([noise(case["noise_seed"], n), chirp(n=n, **case["chirp"])])


def sha256(x: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def librosa_features(librosa, y: np.ndarray, sample_rate: float, kwargs: dict):
  """librosa's (mel, dB, MFCC) of one clip, each transposed to [frames, bins]."""
  kwargs = dict(kwargs)
  top_db = kwargs.pop("top_db", None)
  mel = librosa.feature.melspectrogram(y=y, sr=sample_rate, **kwargs)
  db = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=top_db)
  # mfcc's `norm` is its DCT's; the filterbank's is `mel_norm`.
  mel_norm = kwargs.pop("norm", "slaney")
  mfcc = librosa.feature.mfcc(y=y, sr=sample_rate, n_mfcc=N_MFCC, mel_norm=mel_norm, **kwargs)
  return mel.T, db.T, mfcc.T


def main():
  import librosa  # pylint: disable=g-import-not-at-top (the test imports this module)
  os.makedirs(OUT, exist_ok=True)
  arrays, meta = {}, {}
  for i, (name, case) in enumerate(CASES.items()):
    sr = case["sample_rate"]
    case = dict(case, noise_seed=1000 + i,
                chirp=dict(sample_rate=sr, f0=50.0, f1=0.45 * sr, amplitude=0.5))
    batch = inputs(case)
    feats = [librosa_features(librosa, y, sr, case["kwargs"]) for y in batch]
    for j, key in enumerate(("mel", "db", "mfcc")):
      arrays[f"{name}/{key}"] = np.stack([f[j] for f in feats]).astype(np.float32)
    meta[name] = dict(case, sha256=[sha256(y) for y in batch])
    print(f"{name}: {arrays[f'{name}/db'].shape}")
  np.savez_compressed(os.path.join(OUT, "reference.npz"), **arrays)
  with open(os.path.join(OUT, "cases.json"), "w") as f:
    json.dump(dict(librosa=librosa.__version__, numpy=np.__version__, n_mfcc=N_MFCC,
                   cases=meta), f, indent=1)
  size = sum(os.path.getsize(os.path.join(OUT, x)) for x in os.listdir(OUT))
  print(f"wrote {OUT} ({size / 1e3:.0f} KB)")


if __name__ == "__main__":
  main()
