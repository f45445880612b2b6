"""End to end on audio: files on disk -> prepare -> experiments/audiocaps_clap.py
(scaled down) trains two steps -> audio <-> text retrieval, then
experiments/esc50_zeroshot.py scores the run on a prepared ESC-50."""

import csv
import importlib.util
import json
import os

import numpy as np
import pytest
import soundfile

from mmjax import evaluate
from mmjax.data import prepare_audio
from mmjax.train import loop

from tests.train.conftest import override

pytestmark = pytest.mark.slow  # prepares datasets and trains on them end to end

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RATE = 16_000
SOUNDS = {"dog": 300, "rain": 500, "bell": 700, "engine": 900}


def _experiment(name, *args):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments",
                                                                   f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def _tone(freq, seconds=1.0):
  t = np.arange(round(seconds * RATE)) / RATE
  return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _audiocaps(root):
  os.makedirs(os.path.join(root, "audio"))
  for split, n in (("train", 16), ("val", 4), ("test", 8)):
    with open(os.path.join(root, f"{split}.csv"), "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(("audiocap_id", "youtube_id", "start_time", "caption"))
      for i in range(n):
        name, freq = list(SOUNDS.items())[i % len(SOUNDS)]
        soundfile.write(os.path.join(root, "audio", f"{split}{i}_0.wav"),
                        _tone(freq + 10 * i), RATE)
        for k in range(2):
          writer.writerow((f"{split}{i}{k}", f"{split}{i}", 0, f"a {name} sound {k}"))


def _esc50(root):
  os.makedirs(os.path.join(root, "meta"))
  os.makedirs(os.path.join(root, "audio"))
  with open(os.path.join(root, "meta", "esc50.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(("filename", "fold", "target", "category", "esc10", "src_file", "take"))
    # Fold 5, the test split, holds 8 clips: the evaluation batches have the
    # shapes of the AudioCaps ones, so their compiled encoders are reused.
    for target, (name, freq) in enumerate(SOUNDS.items()):
      for fold, take in ((1, "A"), (4, "A"), (5, "A"), (5, "B")):
        filename = f"{fold}-{target}-{take}-{target}.wav"
        soundfile.write(os.path.join(root, "audio", filename), _tone(freq), RATE)
        writer.writerow((filename, fold, target, name, "False", target, take))


def test_train_on_audiocaps_then_zero_shot_on_esc50(tmp_path):
  data_dir = str(tmp_path / "data")
  _audiocaps(str(tmp_path / "audiocaps"))
  _esc50(str(tmp_path / "esc50"))
  quiet = dict(sample_rate=RATE, min_seconds=0.5, progress=False, log=lambda s: None)
  prepare_audio.prepare("audiocaps", str(tmp_path / "audiocaps"), str(tmp_path / "audiocaps" /
                                                                        "audio"),
                        data_dir, **quiet)
  prepare_audio.prepare("esc50", str(tmp_path / "esc50"), None, data_dir, **quiet)

  # The experiment as written, shrunk: 32 frames (0.342 s) of the same front end.
  config = _experiment("audiocaps_clap")
  frames = 32
  seconds = (config.model.towers.audio.features["n_fft"]
             + (frames - 1) * config.model.towers.audio.features["hop_length"]) / RATE
  config = override(config, **{
      "data.data_dir": data_dir, "data.clip_seconds": seconds, "data.eval_clip_seconds": seconds,
      "data.vocab_size": 32, "data.context_length": 8, "data.num_workers": 0,
      "model.towers.audio.frames": frames, "model.towers.audio.width": 16,
      "model.towers.audio.depth": 1, "model.towers.audio.num_heads": 2,
      "model.towers.text.width": 16, "model.towers.text.depth": 1,
      "model.towers.text.num_heads": 2, "model.embed_dim": 8, "model.remat": False,
      "dtype": "float32", "batch_size": 8, "total_steps": 2, "log_every": 1, "eval_every": 0,
      "checkpoint_every": 0, "optim.warmup_steps": 1, "eval.batch_size": 8,
      "eval.reports": False})
  assert config.model.towers.audio.kind == "ast"
  workdir = str(tmp_path / "run")
  result = loop.train_and_evaluate(config, workdir)
  assert result["step"] == 2
  for key in ("audio_to_text_R@1", "audio_to_text_R@5", "text_to_audio_R@1",
              "audio_to_text_median_rank", "text_to_audio_mean_rank"):
    assert 0 <= result[key], key
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert all(r.get("data/bad_records", 0) == 0 for r in rows)
  assert np.isfinite([r["train/loss"] for r in rows if "train/loss" in r]).all()

  zeroshot = _experiment("esc50_zeroshot", workdir)
  assert zeroshot.data.name == "esc50" and zeroshot.data.data_dir == data_dir
  metrics = evaluate.evaluate_workdir(zeroshot, workdir)
  assert metrics["step"] == 2
  assert set(metrics) == {"step", "audio_zeroshot/top1", "audio_zeroshot/mean_per_class",
                          "audio_zeroshot/macro_f1"}  # 4 classes: no top5
  assert 0 <= metrics["audio_zeroshot/top1"] <= 1
