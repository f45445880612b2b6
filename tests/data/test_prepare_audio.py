"""Tests for mmjax/data/prepare_audio.py, audio_sources.py and audio_text.py:
AudioCaps, Clotho and ESC-50 layouts with every kind of bad file, prepared
into tfds datasets of 16-bit FLAC clips."""

import csv
import io
import json
import os
import pickle
import sys

import ml_collections
import numpy as np
import pytest
import soundfile

from mmjax.data import audio_text
from mmjax.data import image_text
from mmjax.data import pipeline
from mmjax.data import prepare as prepare_lib
from mmjax.data import prepare_audio

RATE = 16_000
# Tiny limits keep the files small: clips of 1 s, "too short" under 0.5 s,
# "over-long" beyond 1.5 s.
LIMITS = dict(sample_rate=RATE, min_seconds=0.5, max_seconds=1.5)


def tone(freq, seconds=1.0, rate=RATE, amplitude=0.5):
  t = np.arange(round(seconds * rate)) / rate
  return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path, wave, rate=RATE, subtype="PCM_16", fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  soundfile.write(path, wave, rate, subtype=subtype, format=fmt)
  return path


def write_truncated(path, wave, rate=RATE):
  """A WAV whose header promises twice the frames the file holds."""
  buf = io.BytesIO()
  soundfile.write(buf, wave, rate, format="WAV", subtype="PCM_16")
  data = buf.getvalue()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])
  return path


def write_csv(path, header, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)


def build(tmp_path, fmt, source, audio, name="ds", **kwargs):
  kwargs = {"progress": False, "log": lambda s: None, "workers": 2, **LIMITS, **kwargs}
  return prepare_audio.prepare(fmt, str(source), None if audio is None else str(audio),
                               str(tmp_path / "data"), name, **kwargs)


def read_all(data_dir, name):
  """{split: {audio_id: example with "wave" decoded}} through the public reader."""
  out = {}
  for split in image_text.SPLITS:
    source = audio_text.open_split(data_dir, name, split)
    out[split] = {}
    for i in range(len(source)):
      example = source[i]
      example["wave"] = audio_text.decode_clip(example["audio"], source.sample_rate)
      out[split][example["audio_id"]] = example
  return out


def peak_frequency(wave, rate=RATE):
  spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
  return np.argmax(spectrum) * rate / len(wave)


# Each bad kind of file, where it lies in the AudioCaps folder, and its reason.
BAD = {
    "unreadable": ("unreadable_audio", "train/bytes_1_30.wav"),
    "truncated": ("truncated_audio", "train/cut_1_30.wav"),
    "silent": ("silent_audio", "train/quiet_1_30.wav"),
    "short": ("too_short_audio", "train/short_1_30.wav"),
    "missing": ("missing_audio", None),
}
# Fixed and kept: (youtube id, file under audio/, writer, the change noted).
FIXED = {
    "rate22": ("resampled", lambda p: write(p, tone(500, rate=22_050), 22_050)),
    "rate44": ("resampled", lambda p: write(p, tone(600, rate=44_100), 44_100)),
    "stereo": ("downmixed", lambda p: write(p, np.stack([tone(700), tone(1100, amplitude=0.3)],
                                                         axis=1))),
    "pcm8": ("converted_pcm_u8", lambda p: write(p, tone(800), subtype="PCM_U8")),
    "pcm24": ("converted_pcm_24", lambda p: write(p, tone(900), subtype="PCM_24")),
    "float": ("converted_float", lambda p: write(p, tone(1000), subtype="FLOAT")),
    "long": ("cropped", lambda p: write(p, tone(1200, seconds=2.0))),
}


@pytest.fixture(scope="module")
def audiocaps(tmp_path_factory):
  """An AudioCaps layout (meta/{train,val,test}.csv + audio/) with every bad
  kind of file in train, prepared once."""
  root = tmp_path_factory.mktemp("audiocaps")
  audio = root / "audio"
  train, val, test = [], [], []
  cap = iter(range(1000, 2000))

  def row(rows, ytid, caption, start=30):
    rows.append((next(cap), ytid, start, caption))

  # Good clips under the names AudioCaps downloads use.
  write(str(audio / "train" / "good_1_30.wav"), tone(300))          # <ytid>_<start>
  row(train, "good_1", "a dog barks")
  row(train, "good_1", "a dog is barking twice")                      # same clip: merged
  write(str(audio / "train" / "Ygood_2.flac"), tone(350), fmt="FLAC")  # Y<ytid>
  row(train, "good_2", "rain falls on a roof")
  for ytid, (_, writer) in FIXED.items():
    writer(str(audio / "train" / f"{ytid}_30.wav"))
    row(train, ytid, f"the sound of {ytid}")
  # Bad files.
  (audio / "train").mkdir(parents=True, exist_ok=True)
  (audio / "train" / "bytes_1_30.wav").write_bytes(b"this is not audio" * 40)
  write_truncated(str(audio / "train" / "cut_1_30.wav"), tone(400))
  write(str(audio / "train" / "quiet_1_30.wav"), np.zeros(RATE, np.float32))
  write(str(audio / "train" / "short_1_30.wav"), tone(450, seconds=0.3))
  for ytid in ("bytes_1", "cut_1", "quiet_1", "short_1", "nowhere_1"):
    row(train, ytid, f"a broken {ytid}")
  train.append(("", "", "", "a row without a clip"))  # malformed
  # val and test, one file named by its audiocap_id.
  write(str(audio / "val" / "good_3_0.wav"), tone(500))
  row(val, "good_3", "a bird sings", start=0)
  write(str(audio / "test" / "good_4_30.wav"), tone(550))
  for caption in ("an engine idles", "a car engine runs", "a motor hums"):
    row(test, "good_4", caption)
  test.append((7777, "good_5", 10, "people talk"))
  write(str(audio / "test" / "7777.wav"), tone(650))
  header = ("audiocap_id", "youtube_id", "start_time", "caption")
  for name, rows in (("train", train), ("val", val), ("test", test)):
    write_csv(str(root / "meta" / f"{name}.csv"), header, rows)
  messages = []
  result = build(root, "audiocaps", root / "meta", audio, log=messages.append)
  return root, result, messages


def test_audiocaps_every_bad_file_is_counted_and_named(audiocaps):
  root, result, messages = audiocaps
  report = result.report
  assert report["examples"] == {"train": 2 + len(FIXED), "val": 1, "test": 2}
  assert report["skipped"] == {"missing_audio": 1, "unreadable_audio": 1, "truncated_audio": 1,
                               "silent_audio": 1, "too_short_audio": 1, "malformed_record": 1}
  for kind, (reason, where) in BAD.items():
    (place,) = report["first"][reason]
    assert place.endswith(where or "nowhere_1_30"), (kind, place)
  assert report["first"]["malformed_record"][0].endswith("train.csv:" + str(len(FIXED) + 10))
  assert report["noted"] == {"resampled": 2, "downmixed": 1, "converted_pcm_u8": 1,
                             "converted_pcm_24": 1, "converted_float": 1, "cropped": 1}
  for ytid, (change, _) in FIXED.items():
    assert any(p.endswith(f"{ytid}_30.wav") for p in report["first"][change])
  assert report["seconds"] == {"train": 2 + len(FIXED) - 1 + 1.5, "val": 1.0, "test": 2.0}
  # The summary is printed and saved.
  text = "\n".join(messages)
  for reason in ("missing_audio", "truncated_audio", "silent_audio", "too_short_audio",
                 "unreadable_audio", "resampled", "downmixed", "cropped"):
    assert reason in text
  assert "cut_1_30.wav" in text
  with open(os.path.join(result.path, image_text.REPORT_FILE)) as f:
    assert json.load(f) == report


def test_audiocaps_clips_decode_to_the_right_sound(audiocaps):
  root, result, _ = audiocaps
  data = read_all(root / "data", "ds")
  train = data["train"]
  assert set(data["val"]) == {"good_3_0"} and set(data["test"]) == {"good_4_30", "good_5_10"}
  assert train["good_1_30"]["captions"] == ["a dog barks", "a dog is barking twice"]
  assert data["test"]["good_4_30"]["captions"] == ["an engine idles", "a car engine runs",
                                                    "a motor hums"]
  assert all(x["label"] == -1 for split in data.values() for x in split.values())
  # Untouched 16-bit audio is stored losslessly: the very samples of the file.
  source = soundfile.read(root / "audio" / "train" / "good_1_30.wav", dtype="float32")[0]
  np.testing.assert_array_equal(train["good_1_30"]["wave"], source)
  np.testing.assert_allclose(source, tone(300), atol=1 / 32768)
  for ytid, freq in (("rate22", 500), ("rate44", 600)):  # resampled: same pitch, same length
    wave = train[f"{ytid}_30"]["wave"]
    assert wave.shape == (RATE,) and abs(peak_frequency(wave) - freq) <= 1.0
  # Downmixed: the mean of the channels (as read from the file), to 16-bit precision.
  left, right = soundfile.read(root / "audio" / "train" / "stereo_30.wav", dtype="float32")[0].T
  np.testing.assert_allclose(train["stereo_30"]["wave"], (left + right) / 2, atol=1 / 32768)
  np.testing.assert_allclose(train["pcm24_30"]["wave"], tone(900), atol=1 / 32768)
  assert train["long_30"]["wave"].shape == (round(1.5 * RATE),)  # cropped to max_seconds
  np.testing.assert_allclose(train["long_30"]["wave"], tone(1200, 1.5), atol=1 / 32768)


def test_reader_contract_and_marker(audiocaps):
  root, result, _ = audiocaps
  data_dir = root / "data"
  marker = audio_text.check_dataset(data_dir, "ds")
  assert marker["modality"] == "audio" and marker["sample_rate"] == RATE
  assert marker["classes"] is None and marker["format_version"] == image_text.FORMAT_VERSION
  train = audio_text.open_split(data_dir, "ds", "train")
  example = train[0]
  assert set(example) == {"audio", "captions", "audio_id", "label"}
  assert example["audio"][:4] == b"fLaC" and isinstance(example["captions"][0], str)
  assert pickle.loads(pickle.dumps(train))[1] == train[1]
  assert [x["audio_id"] for x in train.__getitems__([1, 0])] == [train[1]["audio_id"],
                                                                train[0]["audio_id"]]
  with pytest.raises(IndexError):
    train[len(train)]
  assert list(audio_text.train_captions(data_dir, "ds"))[:2] == ["a dog barks",
                                                                "a dog is barking twice"]
  # A clip read at another rate than it holds is refused, not misread.
  with pytest.raises(ValueError, match="16000 Hz"):
    audio_text.decode_clip(example["audio"], 48_000)
  # Neither writing nor reading needs TensorFlow.
  assert "tensorflow" not in sys.modules


def test_second_run_reuses_and_other_settings_need_overwrite(audiocaps, tmp_path):
  root, first, _ = audiocaps
  messages = []
  again = build(root, "audiocaps", root / "meta", root / "audio", log=messages.append)
  assert again.reused and again.report == first.report and "already prepared" in messages[0]
  with pytest.raises(ValueError, match="sample_rate.*--overwrite"):
    build(root, "audiocaps", root / "meta", root / "audio", sample_rate=22_050)


def test_clotho_layout(tmp_path):
  audio = tmp_path / "clotho"
  header = ("file_name",) + tuple(f"caption_{i}" for i in range(1, 6))
  rows = {"development": [], "validation": [], "evaluation": []}
  for i, (folder, split_rows) in enumerate(rows.items()):
    for j in range(2):
      name = f"Water drops {i}{j}.wav"
      write(str(audio / folder / name), tone(300 + 100 * i + 10 * j, rate=44_100), 44_100)
      split_rows.append((name,) + tuple(f"clip {i}{j}, caption {k}" for k in range(5)))
  rows["development"].append(("Missing one.wav",) + ("gone",) * 5)
  # A name in two split folders is read from its own split's.
  write(str(audio / "development" / "Shared.wav"), tone(1500))
  write(str(audio / "evaluation" / "Shared.wav"), tone(1700))
  rows["evaluation"].append(("Shared.wav",) + tuple(f"shared {k}" for k in range(5)))
  for folder, split_rows in rows.items():
    write_csv(str(tmp_path / "csv" / f"clotho_captions_{folder}.csv"), header, split_rows)
  result = build(tmp_path, "clotho", tmp_path / "csv", audio)
  assert result.report["examples"] == {"train": 2, "val": 2, "test": 3}
  assert result.report["skipped"] == {"missing_audio": 1}
  assert result.report["noted"] == {"resampled": 6}
  data = read_all(tmp_path / "data", "ds")
  assert abs(peak_frequency(data["test"]["Shared.wav"]["wave"]) - 1700) <= 1.0
  example = data["test"]["Water drops 21.wav"]
  assert example["captions"] == [f"clip 21, caption {k}" for k in range(5)]
  assert abs(peak_frequency(example["wave"]) - 510) <= 1.0


def esc50_folder(root):
  """ESC-50's layout: meta/esc50.csv and audio/, three classes over five folds."""
  header = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
  categories = ("dog", "chirping_birds", "door_wood_knock")
  rows = []
  for fold in range(1, 6):
    for target, category in enumerate(categories):
      name = f"{fold}-{100 + target}-A-{target}.wav"
      write(str(root / "audio" / name), tone(300 * (target + 1) + 7 * fold))
      rows.append((name, fold, target, category, "False", 100 + target, "A"))
  write_truncated(str(root / "audio" / "5-999-A-0.wav"), tone(300))
  rows.append(("5-999-A-0.wav", 5, 0, "dog", "False", 999, "A"))
  rows.append(("5-998-A-1.wav", 5, 1, "chirping_birds", "False", 998, "A"))  # no file
  rows.append(("1-997-A-1.wav", "one", 1, "chirping_birds", "False", 997, "A"))  # bad fold
  rows.append(("9-996-A-1.wav", 9, 1, "chirping_birds", "False", 996, "A"))  # unknown fold
  write_csv(str(root / "meta" / "esc50.csv"), header, rows)
  return categories


def test_esc50_layout_folds_and_labels(tmp_path):
  root = tmp_path / "ESC-50-master"
  categories = esc50_folder(root)
  result = build(tmp_path, "esc50", root, None)  # --audio defaults to <root>/audio
  report = result.report
  assert report["examples"] == {"train": 9, "val": 3, "test": 3}
  assert report["skipped"] == {"truncated_audio": 1, "missing_audio": 1,
                               "malformed_record": 1, "unknown_split": 1}
  assert report["first"]["truncated_audio"][0].endswith("5-999-A-0.wav")
  assert report["first"]["unknown_split"][0].endswith("esc50.csv:20")
  marker = audio_text.check_dataset(tmp_path / "data", "ds")
  assert marker["classes"] == ["dog", "chirping birds", "door wood knock"]
  data_cfg = ml_collections.ConfigDict({"name": "ds", "data_dir": str(tmp_path / "data")})
  assert pipeline.test_fields(data_cfg) == ("audio", "text", "labels")
  data = read_all(tmp_path / "data", "ds")
  assert {x["audio_id"][0] for x in data["test"].values()} == {"5"}  # fold 5
  assert {x["audio_id"][0] for x in data["val"].values()} == {"4"}  # fold 4
  for split in data.values():
    for x in split.values():
      target = int(x["audio_id"].split("-")[-1][0])
      assert x["label"] == target
      assert x["captions"] == [categories[target].replace("_", " ")]


def test_arguments_are_checked_before_any_work(tmp_path):
  (tmp_path / "a.csv").write_text("youtube_id,caption\n")
  (tmp_path / "audio").mkdir()
  with pytest.raises(FileNotFoundError, match="--audio"):
    build(tmp_path, "audiocaps", tmp_path / "a.csv", tmp_path / "nope")
  with pytest.raises(ValueError, match="--sample-rate"):
    build(tmp_path, "audiocaps", tmp_path / "a.csv", tmp_path / "audio", sample_rate=10)
  with pytest.raises(ValueError, match="--min-seconds"):
    build(tmp_path, "audiocaps", tmp_path / "a.csv", tmp_path / "audio", min_seconds=3.0)
  (tmp_path / "b.csv").write_text("file_name,caption_1\n")
  with pytest.raises(ValueError, match="no column youtube_id.*AudioCaps"):
    build(tmp_path, "audiocaps", tmp_path / "b.csv", tmp_path / "audio")
  with pytest.raises(FileNotFoundError, match="train.csv"):
    build(tmp_path, "audiocaps", tmp_path / "audio", tmp_path / "audio")
  assert not os.listdir(tmp_path / "data")


def test_command_line(tmp_path, capsys):
  root = tmp_path / "esc"
  esc50_folder(root)
  argv = ["esc50", "--source", str(root), "--data-dir", str(tmp_path / "data"),
          "--name", "esc", "--min-seconds", "0.5", "--workers", "2"]
  assert prepare_lib.main(argv) == 0
  out = capsys.readouterr().out
  assert "train 9, val 3, test 3" in out and "truncated_audio 1" in out
  assert prepare_lib.main(argv) == 0 and "already prepared" in capsys.readouterr().out
  with pytest.raises(SystemExit):
    prepare_lib.main(argv + ["--images", str(root)])
  assert "give --audio DIR, not --images" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    prepare_lib.main(["jsonl", "--source", "x.jsonl", "--data-dir", str(tmp_path)])
  assert "needs --images" in capsys.readouterr().err
  # A config naming an audio dataset that is not there says how to prepare it.
  with pytest.raises(FileNotFoundError, match="prepare audiocaps --source PATH --audio DIR"):
    audio_text.check_dataset(str(tmp_path / "data"), "audiocaps")
  with pytest.raises(ValueError, match="holds images"):
    image_dataset = tmp_path / "data" / "pics"
    image_dataset.mkdir()
    image_text.write_marker(str(image_dataset), {"name": "pics"})
    audio_text.check_dataset(str(tmp_path / "data"), "pics")
