"""Batches of a prepared audio-text dataset, for the train loop and evaluation.

mmjax.data.pipeline hands a dataset whose marker says "audio" (see
mmjax/data/audio_text.py) to this module. A training batch is

  {"audio": float32 [b, N] in [-1, 1], "text": int32 [b, L], "bad_records": int64 []}

with N = round(config.data.clip_seconds * sample_rate). As for images, the
batch of step s is a function of (seed, s) alone: example i = s * B + r of
the run is train record order[i] (grain's global shuffle, reshuffled each
epoch), and the window of a long clip and the caption (one of the clip's,
drawn afresh each epoch) come from an RNG keyed by (seed, i); a short clip is
padded by config.data.pad_mode. The evaluation split is deterministic: each
clip is fitted to eval_clip_seconds without an RNG (audio_io.fit_length), so
it is its first seconds, padded the same way.

Config keys (under config.data, in configs.base(); a config written before
they existed reads as their defaults):
  sample_rate        Hz the tower's features expect; must equal the dataset's
                     (None: the dataset's)
  clip_seconds       training clip length (10.0)
  eval_clip_seconds  evaluation clip length (None: clip_seconds; an audio
                     tower averages its windows over a longer clip)
  pad_mode           "repeat" or "pad" (zeros)
"""

import concurrent.futures
import os
from typing import NamedTuple, Sequence

import numpy as np

from mmjax.data import audio_io
from mmjax.data import audio_text
from mmjax.data import prepared_batch
from mmjax.data.tokenizer import Tokenizer

CLIP_SECONDS = 10.0


class Settings(NamedTuple):
  sample_rate: int
  clip_samples: int  # N of a training clip
  eval_samples: int  # N of an evaluation clip
  pad_mode: str


def settings(data_cfg, marker: dict | None = None) -> Settings:
  """The audio settings of config.data, checked against the dataset's marker
  (read when not given). Raises ValueError naming the key and the fix."""
  if marker is None:
    marker = audio_text.check_dataset(data_cfg.data_dir, data_cfg.name)
  stored = int(marker["sample_rate"])
  rate = data_cfg.get("sample_rate", None) or stored
  if rate != stored:
    raise ValueError(
        f"config.data.sample_rate={rate} but dataset {data_cfg.name!r} holds clips at "
        f"{stored} Hz; set --config.data.sample_rate={stored} (and the tower's features "
        f"sample_rate), or prepare the dataset at {rate} Hz under another --name "
        f"(--sample-rate {rate}).")
  samples = {}
  for key in ("clip_seconds", "eval_clip_seconds"):
    seconds = data_cfg.get(key, None)
    if seconds is None:  # unset: the training clip's length, by default CLIP_SECONDS
      seconds = samples.get("clip_seconds", round(CLIP_SECONDS * rate)) / rate
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds <= 0:
      raise ValueError(f"config.data.{key}={seconds!r} must be a positive number of "
                       f"seconds, e.g. --config.data.{key}=10.0.")
    samples[key] = round(seconds * rate)
  pad_mode = data_cfg.get("pad_mode", "repeat")
  if pad_mode not in audio_io.PAD_MODES:
    raise ValueError(f"config.data.pad_mode={pad_mode!r}; choose one of {audio_io.PAD_MODES}.")
  return Settings(rate, samples["clip_seconds"], samples["eval_clip_seconds"], pad_mode)


def planned_marker(data_cfg) -> dict:
  """The dataset's marker, for what only its layout needs (batch_spec,
  test_fields). Where nothing is prepared under config.data.data_dir but the
  config gives the rate its clips are stored at (config.data.sample_rate: a
  plan for a machine that has the data), {"sample_rate": that rate} stands in
  for it. Otherwise the dataset is read: a missing one raises naming its
  prepare command, an incomplete one or another format version says to
  rebuild it. Training checks the dataset itself (pipeline.check_data_config).
  """
  try:
    return audio_text.check_dataset(data_cfg.data_dir, data_cfg.name)
  except FileNotFoundError:
    if data_cfg.get("sample_rate"):
      return {"sample_rate": data_cfg.sample_rate}
    raise


def batch_spec(config) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """{"audio": ((N,), float32), "text": ((L,), int32)}: one example's fields."""
  clip = settings(config.data, planned_marker(config.data)).clip_samples
  return {"audio": ((clip,), np.dtype(np.float32)),
          "text": ((config.data.context_length,), np.dtype(np.int32))}


class AudioBatch(prepared_batch.PreparedBatch):
  """step -> rows `rows` of the batch of that step, from a prepared audio split.

  Returns {"audio": float32 [b, N], "text": int32 [b, L], "bad_records": int64
  []}, bad_records counting records that could not be decoded and were
  replaced by the next readable one (prepare checks every clip, so this stays 0
  unless files changed after it). Picklable: grain sends it to its workers.
  """

  FIELD = "audio"
  ID_FIELD = "audio_id"
  ERRORS = (ValueError,)

  def __init__(self, config, tokenizer: Tokenizer, rows: Sequence[int] | None):
    self.settings = settings(config.data)  # checked here: a bad value fails before workers
    super().__init__(config, tokenizer, rows)

  def open_split(self) -> audio_text.AudioTextSource:
    return audio_text.open_split(self.data_dir, self.name, self.split)

  def decode(self, record: dict, rng: np.random.Generator) -> np.ndarray:
    """The record's clip, decoded: float32 [n] at the dataset's rate."""
    del rng
    return audio_text.decode_clip(record["audio"], self.settings.sample_rate)

  def fit(self, value: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The clip fitted to the training length: float32 [N]."""
    s = self.settings
    return audio_io.fit_length(value, s.clip_samples, s.pad_mode, rng)


def test_fields(data_cfg) -> tuple[str, ...]:
  """("audio", "text"), and "labels" for a labelled dataset (ESC-50): what the
  evaluators may read, known before the split is loaded."""
  marker = planned_marker(data_cfg)
  return ("audio", "text") + (("labels",) if marker.get("classes") else ())


def test_split_size(data_cfg) -> int:
  return len(audio_text.open_split(data_cfg.data_dir, data_cfg.name, data_cfg.eval_split))


def test_data(config, tokenizer: Tokenizer, num_items: int) -> dict:
  """The evaluation split: every caption of its first `num_items` clips (-1: all).

  Returns {"audio": float32 [N, E] (E = eval_clip_seconds * rate),
           "text": int32 [M, L], "text_to_image": int32 [M] (the clip of each
           caption; named as for images, which the evaluators read),
           "audio_ids": [N] str, "labels": int32 [N] (-1: unlabelled),
           "class_names": [C] str (C = 0 without labels)}.
  The clips are held as float32: AudioCaps's 975 test clips of 10 s at 16 kHz
  take 624 MB.
  """
  s = settings(config.data)
  source = audio_text.open_split(config.data.data_dir, config.data.name,
                                 config.data.eval_split)
  n = len(source) if num_items == -1 else min(num_items, len(source))
  records = [source[i] for i in range(n)]

  def clip(record):
    try:
      wave = audio_text.decode_clip(record["audio"], s.sample_rate)
    except ValueError as e:
      raise ValueError(f"test clip {record['audio_id']!r} of {config.data.name}: {e}; rebuild "
                       "the dataset with `python -m mmjax.data.prepare ... --overwrite`.") from None
    return audio_io.fit_length(wave, s.eval_samples, s.pad_mode, rng=None)

  # soundfile decodes outside the GIL.
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    audio = np.stack(list(pool.map(clip, records)))
  captions, owner = prepared_batch.test_captions(records)
  return {"audio": audio,
          "text": tokenizer.encode(captions, config.data.context_length),
          "text_to_image": owner,
          "audio_ids": np.asarray([r["audio_id"] for r in records]),
          "labels": np.asarray([r["label"] for r in records], np.int32),
          "class_names": np.asarray(source.classes or (), dtype=str)}
