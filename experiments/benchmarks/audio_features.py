"""Log-mel speed: mmjax's jitted features on the device vs librosa on the host.

  python experiments/benchmarks/audio_features.py [--presets clap ast librosa]
      [--batch 8] [--clip-seconds 10] [--measure-seconds 2] [--rounds 3]

Needs librosa (the bench venv: .venv-bench). For each preset, a batch of
--batch clips of --clip-seconds of noise at the preset's sample rate, then
--rounds rounds, each timing in turn (so load on a shared machine hits all alike):

  mmjax         `mmjax.data.audio.log_mel(wave, **preset)`, wave already on the
                device, result ready on the device (compiled once beforehand)
  mmjax+copy    the same from a NumPy batch to a NumPy result (host transfers included)
  librosa       `power_to_db(melspectrogram(y=wave, ...))` on the whole [B, N]
                batch at the same settings, one call (librosa's own batching)

each repeated for about --measure-seconds. It prints seconds of audio per
second of wall time (median over rounds) and the ratios to librosa; the
ratios, not the rates, compare across machines. The last line is JSON.
"""

import argparse
import json
import os
import statistics
import time
import warnings

import jax
import numpy as np

from mmjax.data import audio

PRESETS = {
    "clap": audio.CLAP,
    "ast": audio.AST,
    # librosa's own defaults at 22.05 kHz
    "librosa": dict(sample_rate=22_050, n_fft=2048, hop_length=512, n_mels=128),
}


def rate(fn, audio_seconds: float, budget: float) -> float:
  """Seconds of audio per wall second of fn(), repeated for about `budget` seconds."""
  fn()  # warm (caches, first-touch)
  start, calls = time.perf_counter(), 0
  while True:
    fn()
    calls += 1
    elapsed = time.perf_counter() - start
    if elapsed >= budget:
      return audio_seconds * calls / elapsed


def librosa_log_mel(librosa, wave, preset):
  kwargs = dict(preset)
  sr, top_db = kwargs.pop("sample_rate"), kwargs.pop("top_db", None)
  mel = librosa.feature.melspectrogram(y=wave, sr=sr, **kwargs)
  return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=top_db)


def measure(librosa, name, preset, flags):
  sr = preset["sample_rate"]
  n = int(flags.clip_seconds * sr)
  host = np.random.default_rng(0).standard_normal((flags.batch, n)).astype(np.float32)
  device = jax.device_put(host)
  seconds = flags.batch * flags.clip_seconds
  fns = {
      "mmjax": lambda: audio.log_mel(device, **preset).block_until_ready(),
      "mmjax+copy": lambda: np.asarray(audio.log_mel(host, **preset)),
      "librosa": lambda: librosa_log_mel(librosa, host, preset),
  }
  # Same numbers first: a fast wrong answer is no result.
  ours, ref = np.asarray(audio.log_mel(host, **preset)), librosa_log_mel(librosa, host, preset)
  diff = float(np.abs(ours - np.swapaxes(ref, -1, -2)).max())
  rates = {k: [] for k in fns}
  for _ in range(flags.rounds):
    for k, fn in fns.items():
      rates[k].append(rate(fn, seconds, flags.measure_seconds / flags.rounds))
  median = {k: statistics.median(v) for k, v in rates.items()}
  return dict(preset=name, sample_rate=sr, batch=flags.batch, clip_seconds=flags.clip_seconds,
              max_abs_db_diff=diff, audio_s_per_s=median,
              ratio_vs_librosa={k: median[k] / median["librosa"] for k in ("mmjax", "mmjax+copy")})


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--clip-seconds", type=float, default=10.0)
  parser.add_argument("--measure-seconds", type=float, default=2.0,
                      help="per preset and contender, split over the rounds")
  parser.add_argument("--rounds", type=int, default=3)
  flags = parser.parse_args()
  import librosa  # pylint: disable=g-import-not-at-top (the bench extra)

  warnings.simplefilter("ignore")  # AST's empty low mel bands (documented in audio.AST)
  results = [measure(librosa, name, PRESETS[name], flags) for name in flags.presets]
  print(f"{jax.devices()[0].platform} x{len(jax.devices())} (jax {jax.__version__}), host "
        f"{os.cpu_count()} cores, librosa {librosa.__version__}; batch {flags.batch} x "
        f"{flags.clip_seconds:g} s; audio seconds per wall second, median of {flags.rounds}")
  print(f"  {'preset':8} {'mmjax':>10} {'mmjax+copy':>11} {'librosa':>10} {'ratio':>7} "
        f"{'ratio+copy':>11} {'max|dB diff|':>13}")
  for r in results:
    a, q = r["audio_s_per_s"], r["ratio_vs_librosa"]
    print(f"  {r['preset']:8} {a['mmjax']:10.0f} {a['mmjax+copy']:11.0f} {a['librosa']:10.0f} "
          f"{q['mmjax']:7.2f} {q['mmjax+copy']:11.2f} {r['max_abs_db_diff']:13.4f}")
  print(json.dumps(results))


if __name__ == "__main__":
  main()
