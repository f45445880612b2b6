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
"""

import concurrent.futures
import os
import sys
from typing import Sequence

import grain
import numpy as np

from mmjax.data import image_text
from mmjax.data import preprocess
from mmjax.data import shapes
from mmjax.data.tokenizer import Tokenizer

# The fixed shapes test split: 1,000 images x 5 captions, the same for every run.
TEST_IMAGES = 1000
# grain needs a length; no run takes this many steps.
_MAX_STEPS = 2**40
# Further records tried, in order, when one cannot be decoded.
_MAX_RETRIES = 16


def check_data_config(data_cfg) -> None:
  """Fails before any compile if the config names data that cannot be read."""
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
  image_text.check_dataset(data_cfg.data_dir, data_cfg.name)  # names the prepare command


def test_split_size(data_cfg) -> int:
  """Number of images in the evaluation split."""
  if data_cfg.name == "shapes":
    return TEST_IMAGES
  return len(image_text.open_split(data_cfg.data_dir, data_cfg.name, data_cfg.eval_split))


# ---------------------------------------------------------------------------
# One step's batch. Both makers are plain picklable objects: grain sends them
# to its worker processes.


class ShapesBatch:
  """step -> rows `rows` of the shapes batch of that step."""

  def __init__(self, config, tokenizer: Tokenizer, rows: Sequence[int] | None):
    self.seed = config.seed
    self.batch_size = config.batch_size
    self.image_size = config.data.image_size
    self.context_length = config.data.context_length
    self.tokenizer = tokenizer
    self.rows = None if rows is None else np.asarray(rows)

  def __call__(self, step: int) -> dict:
    raw = shapes.train_batch(self.seed, int(step), self.batch_size, rows=self.rows,
                             image_size=self.image_size)
    return {"image": raw["image"],
            "text": self.tokenizer.encode(raw["caption"], self.context_length)}


class RecordBatch:
  """step -> rows `rows` of the batch of that step, from a prepared split.

  Returns {"image": uint8 [b, S, S, 3], "text": int32 [b, L],
  "bad_records": int64 []} where bad_records counts records that could not be
  decoded and were replaced by the next readable one (prepare checks every
  image, so this stays 0 unless files changed after it).
  """

  def __init__(self, config, tokenizer: Tokenizer, rows: Sequence[int] | None):
    self.data_dir = config.data.data_dir
    self.name = config.data.name
    self.split = config.data.train_split
    self.seed = config.seed
    self.batch_size = config.batch_size
    self.image_size = config.data.image_size
    self.context_length = config.data.context_length
    self.crop_scale = tuple(config.data.crop_scale)
    self.flip = config.data.flip
    self.tokenizer = tokenizer
    self.rows = np.arange(config.batch_size) if rows is None else np.asarray(rows)
    self._source = None  # opened lazily, once per worker process

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_source"] = None  # file handles do not travel to workers
    return state

  @property
  def source(self):
    if self._source is None:
      self._source = image_text.open_split(self.data_dir, self.name, self.split)
      # Global shuffle over records, a fresh permutation each epoch.
      self._order = grain.MapDataset.range(len(self._source)).shuffle(
          seed=self.seed).repeat()
    return self._source

  def example(self, i: int) -> tuple[np.ndarray, str, int]:
    """Example i of the run -> (image uint8 [S, S, 3], caption, bad records)."""
    source = self.source
    rng = np.random.default_rng([self.seed, i])
    for attempt in range(_MAX_RETRIES + 1):
      record = source[int(self._order[i + attempt])]
      captions = [c for c in record["captions"] if c.strip()]
      try:
        if not captions:
          raise ValueError("no caption")
        image = preprocess.train_image(record["image"], self.image_size, rng,
                                       scale=self.crop_scale, flip=self.flip)
      except (ValueError, OSError) as e:  # PIL raises OSError on corrupt data
        print(f"mmjax: skipping record {record.get('image_id')!r} of "
              f"{self.name}/{self.split}: {e}", file=sys.stderr, flush=True)
        continue
      return image, captions[rng.integers(len(captions))], attempt
    raise RuntimeError(
        f"{_MAX_RETRIES + 1} records in a row of {self.name}/{self.split} could not be "
        f"read (from example {i}); the data dir is damaged: rebuild it with "
        "`python -m mmjax.data.prepare ... --overwrite`.")

  def __call__(self, step: int) -> dict:
    first = int(step) * self.batch_size
    images, captions, bad = [], [], 0
    for r in self.rows:
      image, caption, skipped = self.example(first + int(r))
      images.append(image)
      captions.append(caption)
      bad += skipped
    return {"image": np.stack(images),
            "text": self.tokenizer.encode(captions, self.context_length),
            "bad_records": np.int64(bad)}


def batch_maker(config, tokenizer: Tokenizer, rows=None):
  """The step -> batch function of the configured dataset."""
  if config.data.name == "shapes":
    return ShapesBatch(config, tokenizer, rows)
  return RecordBatch(config, tokenizer, rows)


def train_batches(config, tokenizer: Tokenizer, start_step: int, rows=None):
  """A grain iterator over the batches of steps start_step, start_step + 1, ...

  `rows` are the rows of the global batch this process feeds (default: all).
  With config.data.num_workers > 0, that many worker processes make batches
  in parallel (grain's `mp_prefetch`); otherwise a thread prefetches
  `config.data.prefetch` batches. An exception in a worker is re-raised by
  `next()`, never swallowed.

  Returns a `grain.DatasetIterator`: `next()` gives {"image": uint8
  [b, S, S, 3], "text": int32 [b, L]} (and "bad_records" for prepared data);
  `get_state()` / `set_state()` save and restore its position.
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

  Returns {"image": uint8 [N, S, S, 3], "text": int32 [M, L],
           "text_to_image": int32 [M], "image_ids": [N] str} with
  N = config.eval.num_images (all images when it is -1), M the number of
  their captions.
  """
  if config.data.name == "shapes":
    split = shapes.test_split(image_size=config.data.image_size, num_images=TEST_IMAGES)
    images, captions, owner = split["image"], split["captions"], split["text_to_image"]
    ids = [f"shapes_test_{i}" for i in range(len(images))]
  else:
    images, captions, owner, ids = _record_test_split(config)
  n = _num_eval_images(config, len(images))
  keep = np.asarray(owner) < n
  captions = [c for c, k in zip(captions, keep) if k]
  return {"image": np.asarray(images[:n]),
          "text": tokenizer.encode(captions, config.data.context_length),
          "text_to_image": np.asarray(owner)[keep].astype(np.int32),
          "image_ids": np.asarray(ids[:n])}


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
  captions, owner = [], []
  for index, record in enumerate(records):
    for caption in record["captions"]:
      if caption.strip():
        captions.append(caption)
        owner.append(index)
  return (np.stack(images), captions, np.asarray(owner, np.int32),
          [r["image_id"] for r in records])
