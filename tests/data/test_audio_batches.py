"""Tests for mmjax/data/audio_batches.py and the audio branch of
mmjax/data/pipeline.py: a prepared audio dataset yields the documented batch
and test-split fields, deterministically from (seed, step)."""

import csv
import os

import numpy as np
import pytest
import soundfile

from mmjax import configs
from mmjax.data import audio_batches
from mmjax.data import audio_text
from mmjax.data import pipeline
from mmjax.data import prepare_audio
from mmjax.data import tokenizer as tokenizer_lib
from tests.train.conftest import tiny_config

RATE = 8_000
N_CLIPS = 6  # train; val and test hold 2 each
CLIP = RATE  # samples of a training clip: 1 s
EVAL = 2 * RATE  # of an evaluation clip: 2 s, longer than the stored 1.5 s


def _tone(i, seconds=1.5):
  # Clip i's pitch names it; 220 + 110 i Hz never aliases at 8 kHz.
  t = np.arange(round(seconds * RATE)) / RATE
  return (0.5 * np.sin(2 * np.pi * (220 + 110 * i) * t)).astype(np.float32)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """(data_dir, tokenizer, {audio_id: stored clip}) of a tiny AudioCaps set."""
  root = tmp_path_factory.mktemp("audio_batches")
  splits = {"train": range(N_CLIPS), "val": range(N_CLIPS, N_CLIPS + 2),
            "test": range(N_CLIPS + 2, N_CLIPS + 4)}
  for split, ids in splits.items():
    with open(root / f"{split}.csv", "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(("audiocap_id", "youtube_id", "start_time", "caption"))
      for i in ids:
        soundfile.write(str(root / f"clip{i}_0.wav"), _tone(i), RATE)
        for k in range(3):
          writer.writerow((100 * i + k, f"clip{i}", 0, f"sound {i} caption {k}"))
  data_dir = str(root / "data")
  prepare_audio.prepare("audiocaps", str(root), str(root), data_dir, "sounds",
                        sample_rate=RATE, progress=False, log=lambda s: None)
  stored = {}
  for split in ("train", "test"):
    source = audio_text.open_split(data_dir, "sounds", split)
    for i in range(len(source)):
      stored[source[i]["audio_id"]] = audio_text.decode_clip(source[i]["audio"], RATE)
  path = str(root / "sp.model")
  # Trained on every split's captions, so test captions decode back to their clip.
  captions = [f"sound {i} caption {k}" for i in range(N_CLIPS + 4) for k in range(3)]
  tokenizer_lib.train_sentencepiece(captions * 20, path, 48, model_type="bpe")
  return data_dir, tokenizer_lib.Tokenizer(path), stored


def _config(data_dir, **overrides):
  config = tiny_config(**{"data.name": "sounds", "data.data_dir": data_dir, "batch_size": 4})
  with config.unlocked():
    config.data.sample_rate = RATE
    config.data.clip_seconds = 1.0
    config.data.eval_clip_seconds = 2.0
    config.data.pad_mode = "repeat"
  return configs.override(config, **overrides)


def _clip_of(row, stored) -> str:
  """The stored clip a training row is a window of (by exact samples)."""
  for clip_id, wave in stored.items():
    windows = np.lib.stride_tricks.sliding_window_view(wave, len(row))
    if (windows == row).all(axis=1).any():
      return clip_id
  raise AssertionError("the row is no window of any stored clip")


def test_fields_and_shapes_depend_on_the_dataset(prepared):
  data_dir, _, _ = prepared
  config = _config(data_dir)
  pipeline.check_data_config(config.data)
  assert pipeline.modality(config.data) == "audio"
  assert pipeline.batch_spec(config) == {"audio": ((CLIP,), np.float32),
                                         "text": ((24,), np.int32)}
  assert pipeline.test_fields(config.data) == ("audio", "text")  # no labels
  assert pipeline.test_split_size(config.data) == 2
  # Unset audio keys take the dataset's rate and a 10 s clip.
  bare = tiny_config(**{"data.name": "sounds", "data.data_dir": data_dir})
  assert audio_batches.settings(bare.data) == (RATE, 10 * RATE, 10 * RATE, "repeat")


def test_batches_are_windows_of_their_clip_with_its_caption(prepared):
  data_dir, tok, stored = prepared
  maker = pipeline.batch_maker(_config(data_dir, batch_size=N_CLIPS), tok)
  assert isinstance(maker, audio_batches.AudioBatch)
  seen = []
  for step in range(2):  # two epochs of the 6 train clips
    batch = maker(step)
    assert set(batch) == {"audio", "text", "bad_records"}
    assert batch["audio"].shape == (N_CLIPS, CLIP) and batch["audio"].dtype == np.float32
    assert batch["text"].shape == (N_CLIPS, 24) and batch["text"].dtype == np.int32
    assert int(batch["bad_records"]) == 0
    for row, text in zip(batch["audio"], batch["text"]):
      clip_id = _clip_of(row, stored)
      assert tok.decode(text[None])[0].split()[1] == clip_id[4:-2]  # "clip3_0" -> "3"
      seen.append(clip_id)
  assert sorted(seen[:N_CLIPS]) == sorted(seen[N_CLIPS:]) == [f"clip{i}_0" for i in range(6)]


def test_batches_are_a_function_of_seed_and_step(prepared):
  data_dir, tok, _ = prepared
  config = _config(data_dir)
  a = audio_batches.AudioBatch(config, tok, rows=None)(3)
  b = audio_batches.AudioBatch(config, tok, rows=None)(3)
  part = audio_batches.AudioBatch(config, tok, rows=[1, 3])(3)
  other = audio_batches.AudioBatch(_config(data_dir, seed=1), tok, rows=None)(3)
  for key in ("audio", "text"):
    np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(part[key], a[key][[1, 3]])
  assert not np.array_equal(a["audio"], other["audio"])
  # Through grain's iterator, from any start step.
  it = pipeline.train_batches(config, tok, start_step=3)
  first = next(it)
  np.testing.assert_array_equal(first["audio"], a["audio"])
  np.testing.assert_array_equal(next(it)["text"],
                                audio_batches.AudioBatch(config, tok, None)(4)["text"])


def test_zero_padding_and_a_damaged_record(prepared, monkeypatch, capsys):
  data_dir, tok, stored = prepared
  config = _config(data_dir, **{"data.clip_seconds": 2.0, "data.pad_mode": "pad"})
  batch = audio_batches.AudioBatch(config, tok, rows=None)(0)
  assert batch["audio"].shape == (4, 2 * RATE)
  np.testing.assert_array_equal(batch["audio"][:, 3 * RATE // 2:], 0)  # zeros after 1.5 s
  # A record that no longer decodes is replaced by the next one, and counted.
  split = audio_text.open_split(data_dir, "sounds", "train")
  records = [split[i] for i in range(len(split))]
  records[2] = {**records[2], "audio": b"damaged"}
  monkeypatch.setattr(audio_text, "open_split", lambda *args: _Listed(records))
  batch = audio_batches.AudioBatch(_config(data_dir, batch_size=N_CLIPS), tok, None)(0)
  assert int(batch["bad_records"]) == 1
  assert "clip2_0" not in {_clip_of(row, stored) for row in batch["audio"]}
  assert "skipping record 'clip2_0'" in capsys.readouterr().err


class _Listed(list):
  classes = None


def test_test_split_is_deterministic_and_keeps_every_caption(prepared):
  data_dir, tok, stored = prepared
  data = pipeline.test_data(_config(data_dir, **{"eval.num_images": -1}), tok)
  assert data["audio"].shape == (2, EVAL) and data["audio"].dtype == np.float32
  assert data["text"].shape == (6, 24) and data["text_to_image"].tolist() == [0, 0, 0, 1, 1, 1]
  assert data["audio_ids"].tolist() == ["clip8_0", "clip9_0"]
  assert data["labels"].tolist() == [-1, -1] and data["class_names"].shape == (0,)
  for row, clip_id in zip(data["audio"], data["audio_ids"]):
    wave = stored[clip_id]  # 1.5 s, repeated from its start to fill 2 s
    np.testing.assert_array_equal(row, np.concatenate([wave, wave])[:EVAL])
  for text, owner in zip(data["text"], data["text_to_image"]):
    assert tok.decode(text[None])[0].split()[1] == data["audio_ids"][owner][4:-2]
  np.testing.assert_array_equal(pipeline.test_data(_config(data_dir), tok)["audio"],
                                data["audio"])


def test_bad_audio_settings_name_the_key(prepared):
  data_dir, _, _ = prepared
  with pytest.raises(ValueError, match=r"sample_rate=16000 .* 8000 Hz.*"
                                       r"--config.data.sample_rate=8000"):
    pipeline.check_data_config(_config(data_dir, **{"data.sample_rate": 16000}).data)
  with pytest.raises(ValueError, match=r"config.data.clip_seconds=-1.0"):
    pipeline.batch_spec(_config(data_dir, **{"data.clip_seconds": -1.0}))
  with pytest.raises(ValueError, match=r"config.data.pad_mode='edge'"):
    pipeline.check_data_config(_config(data_dir, **{"data.pad_mode": "edge"}).data)
  with pytest.raises(ValueError, match=r"'sketch'.*'shapes'"):
    pipeline.batch_spec(_config(data_dir, **{"data.fields": ("sketch",)}))
  missing = _config(os.path.dirname(data_dir), **{"data.name": "audiocaps"})
  with pytest.raises(FileNotFoundError, match="prepare audiocaps --source PATH --audio DIR"):
    pipeline.check_data_config(missing.data)
