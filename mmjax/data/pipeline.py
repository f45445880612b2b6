"""Batches for the train loop and the evaluation split, from any dataset.

A dataset is `shapes` (procedural, built in) or a name prepared with
`python -m mmjax.data.prepare` under `config.data.data_dir`.

The global training batch of step s is a pure function of (seed, s). For a
prepared dataset, example i = s * B + r of the run is train record
`order[i]`, where `order` is grain's global shuffle of the split, reshuffled
every epoch; the caption (one of the record's, drawn afresh each epoch), the
crop and the flip come from an RNG keyed by (seed, i). Each process builds
only its own rows of the batch. So the same seed gives the same batches on
one device, eight devices or several processes, and a run resumed at step s
sees exactly the batches it would have seen.

Batches are made by grain: a `MapDataset` over step numbers, mapped to whole
batches, read by `config.data.num_workers` worker processes (0: a
background thread). The iterator's `get_state()` / `set_state()` let a
checkpoint save and restore its position.

`config.data.fields` (a tuple of names, default ()) adds extra fields to every
batch and to the test split: a second view of the image or a per-example
label, from `shapes_views.FIELDS` (shapes only). `batch_spec` and `test_fields`
say which fields there will be, and their shapes, before anything is loaded.

A prepared dataset of audio clips (its marker says so, see
mmjax/data/audio_text.py) has "audio" where others have "image": its batches,
test split and settings are made by mmjax.data.audio_batches.
"""

import concurrent.futures
import os
from typing import Sequence

import grain
import numpy as np

from mmjax.data import audio_batches
from mmjax.data import audio_text
from mmjax.data import image_text
from mmjax.data import prepared_batch
from mmjax.data import preprocess
from mmjax.data import shapes
from mmjax.data import shapes_audio
from mmjax.data import shapes_views
from mmjax.data.tokenizer import Tokenizer

# The fixed shapes test split: 1,000 images x 5 captions, the same for every run.
TEST_IMAGES = 1000
# grain needs a length; no run takes this many steps.
_MAX_STEPS = 2**40


def data_fields(data_cfg) -> tuple[str, ...]:
  """The extra fields of every batch: config.data.fields, () when unset."""
  fields = data_cfg.get("fields", ()) or ()
  if isinstance(fields, str):  # tuple("sketch") would split it into letters
    raise ValueError(f"config.data.fields={fields!r} is a string; make it a tuple of "
                     f"names, e.g. --config.data.fields='(\"{fields}\",)'.")
  return tuple(fields)


def _check_fields(data_cfg) -> tuple[str, ...]:
  """config.data.fields, checked: known names, no repeats, a dataset that has them."""
  fields = data_fields(data_cfg)
  known = sorted(shapes_views.FIELDS)
  for name in fields:
    if name not in shapes_views.FIELDS:
      raise ValueError(f"config.data.fields has {name!r}, which is not a field; the "
                       f"known fields are {known}: fix the name or remove it from "
                       "config.data.fields.")
    if data_cfg.name != "shapes":
      raise ValueError(f"config.data.fields has {name!r}, but only the 'shapes' dataset "
                       f"supplies extra fields ({known}) and config.data.name="
                       f"{data_cfg.name!r}: remove it from config.data.fields or set "
                       "--config.data.name=shapes.")
  repeated = sorted({name for name in fields if fields.count(name) > 1})
  if repeated:
    raise ValueError(f"config.data.fields={fields} names {repeated} more than once; "
                     "list each field once.")
  return fields


def modality(data_cfg) -> str:
  """What the dataset's items are: "audio" for a prepared audio dataset, else
  "image" (shapes, image-text datasets). A dataset not prepared here (which
  check_data_config reports; a plan for another machine reads none) is
  "audio" when its name is an audio source format (audiocaps, clotho, esc50)
  or the config gives its clips' rate (config.data.sample_rate), as
  audio_batches.planned_marker reads it."""
  if data_cfg.name == "shapes" or not data_cfg.get("data_dir"):
    return "image"
  marker = image_text.read_marker(image_text.dataset_dir(data_cfg.data_dir, data_cfg.name))
  if marker is None:
    audio = data_cfg.name in audio_text.FORMATS or data_cfg.get("sample_rate")
    return "audio" if audio else "image"
  return "audio" if audio_text.is_audio(marker) else "image"


def check_data_config(data_cfg) -> None:
  """Fails before any compile if the config names data that cannot be read."""
  _check_fields(data_cfg)
  if data_cfg.name == "shapes":
    return
  if not data_cfg.name:
    raise ValueError("config.data.name is empty: set --config.data.name=NAME, the "
                     "--name given to `python -m mmjax.data.prepare`, or 'shapes'.")
  if not data_cfg.get("data_dir"):
    raise ValueError(
        f"config.data.name={data_cfg.name!r} is a prepared dataset, so it needs "
        f"--config.data.data_dir=DIR (where `python -m mmjax.data.prepare ... "
        f"--data-dir DIR --name {data_cfg.name}` wrote it); the built-in dataset "
        "is 'shapes'.")
  if data_cfg.name in audio_text.FORMATS or modality(data_cfg) == "audio":
    audio_batches.settings(data_cfg)  # the dataset (naming its prepare command), the audio keys
    return
  image_text.check_dataset(data_cfg.data_dir, data_cfg.name)  # names the prepare command


def batch_spec(config) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """name -> (shape of ONE example, dtype) of the fields a training batch feeds
  the model: "image" (S, S, 3) uint8, "text" (L,) int32, then each of
  config.data.fields (see shapes_views.field_spec). Prepared datasets' batches
  also carry "bad_records", a counter the loop pops, not a model input. An
  audio dataset's are "audio" (N,) float32 and "text" (audio_batches.batch_spec).
  """
  if modality(config.data) == "audio":
    _check_fields(config.data)  # only shapes has extra fields
    return audio_batches.batch_spec(config)
  size = config.data.image_size
  spec = {"image": ((size, size, 3), np.dtype(np.uint8)),
          "text": ((config.data.context_length,), np.dtype(np.int32))}
  for name in _check_fields(config.data):
    spec[name] = shapes_views.field_spec(name, size)
  return spec


def test_fields(data_cfg) -> tuple[str, ...]:
  """The per-example modality fields of the test split: ("image", "text", *fields).

  "image" and each extra field have one row per test image, "text" one per
  caption (mapped to its image by "text_to_image"). An audio dataset's are
  ("audio", "text"), one row per clip and per caption, and "labels" when its
  clips are labelled (audio_batches.test_fields).
  """
  if modality(data_cfg) == "audio":
    return (*audio_batches.test_fields(data_cfg), *_check_fields(data_cfg))
  return ("image", "text", *_check_fields(data_cfg))


def test_split_size(data_cfg) -> int:
  """Number of images in the evaluation split."""
  if data_cfg.name == "shapes":
    return TEST_IMAGES
  if modality(data_cfg) == "audio":
    return audio_batches.test_split_size(data_cfg)
  return len(image_text.open_split(data_cfg.data_dir, data_cfg.name, data_cfg.eval_split))


# ---------------------------------------------------------------------------
# One step's batch. Both makers are plain picklable objects: grain sends them
# to its worker processes.


class ShapesBatch:
  """step -> rows `rows` of the shapes batch of that step.

  Returns {"image": uint8 [b, S, S, 3], "text": int32 [b, L]} and each of
  config.data.fields (sketch: uint8 [b, S, S, 1], scene_id: int32 [b]),
  computed from the same rows' images and scenes.
  """

  def __init__(self, config, tokenizer: Tokenizer, rows: Sequence[int] | None):
    self.seed = config.seed
    self.batch_size = config.batch_size
    self.image_size = config.data.image_size
    self.context_length = config.data.context_length
    self.tokenizer = tokenizer
    self.rows = None if rows is None else np.asarray(rows)
    # Checked here, in the main process: a bad name fails now, not in a worker.
    self.fields = _check_fields(config.data)

  def __call__(self, step: int) -> dict:
    raw = shapes.train_batch(self.seed, int(step), self.batch_size, rows=self.rows,
                             image_size=self.image_size, with_scenes=bool(self.fields))
    batch = {"image": raw["image"],
             "text": self.tokenizer.encode(raw["caption"], self.context_length)}
    for name in self.fields:
      batch[name] = shapes_views.FIELDS[name](raw["image"], raw["scenes"])
    return batch


class RecordBatch(prepared_batch.PreparedBatch):
  """step -> rows `rows` of the batch of that step, from a prepared split.

  Returns {"image": uint8 [b, S, S, 3], "text": int32 [b, L],
  "bad_records": int64 []} where bad_records counts records that could not be
  decoded and were replaced by the next readable one (prepare checks every
  image, so this stays 0 unless files changed after it).
  """

  FIELD = "image"
  ID_FIELD = "image_id"
  ERRORS = (ValueError, OSError)  # PIL raises OSError on corrupt data

  def __init__(self, config, tokenizer: Tokenizer, rows: Sequence[int] | None):
    super().__init__(config, tokenizer, rows)
    self.image_size = config.data.image_size
    self.crop_scale = tuple(config.data.crop_scale)
    self.flip = config.data.flip

  def open_split(self) -> image_text.ImageTextSource:
    return image_text.open_split(self.data_dir, self.name, self.split)

  def decode(self, record: dict, rng: np.random.Generator) -> np.ndarray:
    """The record's image, decoded, cropped and flipped: uint8 [S, S, 3]."""
    return preprocess.train_image(record["image"], self.image_size, rng,
                                  scale=self.crop_scale, flip=self.flip)


def batch_maker(config, tokenizer: Tokenizer, rows=None):
  """The step -> batch function of the configured dataset."""
  _check_fields(config.data)  # prepared data has no extra fields: fail, don't drop them
  if config.data.name == "shapes":
    return ShapesBatch(config, tokenizer, rows)
  if modality(config.data) == "audio":
    return audio_batches.AudioBatch(config, tokenizer, rows)
  return RecordBatch(config, tokenizer, rows)


def train_batches(config, tokenizer: Tokenizer, start_step: int, rows=None):
  """A grain iterator over the batches of steps start_step, start_step + 1, ...

  `rows` are the rows of the global batch this process feeds (default: all).
  With config.data.num_workers > 0, that many worker processes make batches
  in parallel (grain's `mp_prefetch`); otherwise a thread prefetches
  `config.data.prefetch` batches. An exception in a worker is re-raised by
  `next()`, never swallowed.

  Returns a `grain.DatasetIterator`: `next()` gives {"image": uint8
  [b, S, S, 3], "text": int32 [b, L]} plus config.data.fields (see `batch_spec`),
  and "bad_records" for prepared data; `get_state()` / `set_state()` save and
  restore its position.
  """
  steps = grain.MapDataset.range(start_step, _MAX_STEPS)
  dataset = steps.map(batch_maker(config, tokenizer, rows)).to_iter_dataset(
      grain.ReadOptions(num_threads=1, prefetch_buffer_size=max(config.data.prefetch, 1)))
  if config.data.num_workers > 0:
    _absl_flags_parsed()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.data.num_workers,
        per_worker_buffer_size=max(config.data.prefetch, 1)))
  return iter(dataset)


def _absl_flags_parsed() -> None:
  # grain's worker processes read absl flags; a program that does not run
  # through absl.app (a test, a notebook) has not parsed them.
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


# ---------------------------------------------------------------------------
# Evaluation split.


def test_data(config, tokenizer: Tokenizer) -> dict:
  """The evaluation split, tokenized: every caption of the first N images.

  Returns {"image": uint8 [N, S, S, 3], "text": int32 [M, L], "captions":
           [M] str (as written, untruncated), "text_to_image": int32 [M],
           "image_ids": [N] str} with
  N = config.eval.num_images (all images when it is -1), M the number of
  their captions; plus each of config.data.fields for the N images (sketch:
  uint8 [N, S, S, 1], scene_id: int32 [N]).
  """
  fields = _check_fields(config.data)
  if modality(config.data) == "audio":  # {"audio": [N, E], "text", "text_to_image", ...}
    return audio_batches.test_data(config, tokenizer, config.eval.num_images)
  scenes = None
  if config.data.name == "shapes":
    split = shapes.test_split(image_size=config.data.image_size, num_images=TEST_IMAGES)
    images, captions, owner = split["image"], split["captions"], split["text_to_image"]
    ids = [f"shapes_test_{i}" for i in range(len(images))]
    scenes = split["scenes"]
  else:
    images, captions, owner, ids = _record_test_split(config)
  n = _num_eval_images(config, len(images))
  keep = np.asarray(owner) < n
  captions = [c for c, k in zip(captions, keep) if k]
  data = {"image": np.asarray(images[:n]),
          "text": tokenizer.encode(captions, config.data.context_length),
          "captions": np.asarray(captions),
          "text_to_image": np.asarray(owner)[keep].astype(np.int32),
          "image_ids": np.asarray(ids[:n])}
  for name in fields:  # only shapes has fields (_check_fields), so scenes is set
    data[name] = shapes_views.FIELDS[name](data["image"], scenes[:n])
  return data


def audio_sample_rate(data_cfg) -> int | None:
  """Hz of the batches' "audio" field: the shapes sounds' rate when
  config.data.fields has "audio", a prepared audio dataset's rate, else None."""
  if data_cfg.name == "shapes":
    return shapes_audio.SAMPLE_RATE if "audio" in _check_fields(data_cfg) else None
  if modality(data_cfg) == "audio":
    return audio_batches.settings(data_cfg).sample_rate
  return None


def train_captions(data_cfg, limit: int | None = None):
  """The train captions of a prepared dataset (image or audio), for its tokenizer."""
  reader = audio_text if modality(data_cfg) == "audio" else image_text
  return reader.train_captions(data_cfg.data_dir, data_cfg.name, limit=limit)


def _num_eval_images(config, available: int) -> int:
  n = config.eval.num_images
  return available if n == -1 else min(n, available)


def _record_test_split(config):
  source = image_text.open_split(config.data.data_dir, config.data.name,
                                 config.data.eval_split)
  n = _num_eval_images(config, len(source))
  records = [source[i] for i in range(n)]
  size = config.data.image_size
  # Decoding is the slow part; PIL releases the GIL while it decodes.
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    images = list(pool.map(lambda r: preprocess.eval_image(r["image"], size), records))
  captions, owner = prepared_batch.test_captions(records)
  return np.stack(images), captions, owner, [r["image_id"] for r in records]
