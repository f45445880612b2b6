"""The step -> batch machinery shared by every prepared (tfds) dataset.

`PreparedBatch` reads a prepared split lazily, once per worker process, in
grain's global shuffle (a fresh permutation each epoch), skips records it
cannot decode, and stacks one step's rows. A subclass says which split to
open and how to turn a record into its array: images in
mmjax.data.pipeline.RecordBatch, audio clips in
mmjax.data.audio_batches.AudioBatch. `test_captions` lists the captions of
an evaluation split, for both.
"""

import abc
import sys
from typing import Sequence

import grain
import numpy as np

from mmjax.data.tokenizer import Tokenizer

# Further records tried, in order, when one cannot be decoded.
_MAX_RETRIES = 16


class PreparedBatch(abc.ABC):
  """step -> rows `rows` of the batch of that step, from a prepared split.

  Returns {FIELD: the stacked arrays of `decode`/`fit`, "text": int32 [b, L],
  "bad_records": int64 []}, bad_records counting records that could not be
  decoded and were replaced by the next readable one (prepare checks every
  record, so this stays 0 unless files changed after it). Picklable: grain
  sends it to its workers.

  A subclass sets FIELD (the batch's and the record's field), ID_FIELD (the
  record's id, named when one is skipped) and ERRORS (what `decode` raises for
  a damaged record), and defines `open_split` and `decode` (and `fit`).
  """

  FIELD: str
  ID_FIELD: str
  ERRORS: tuple[type[Exception], ...] = (ValueError,)

  def __init__(self, config, tokenizer: Tokenizer, rows: Sequence[int] | None):
    self.data_dir = config.data.data_dir
    self.name = config.data.name
    self.split = config.data.train_split
    self.seed = config.seed
    self.batch_size = config.batch_size
    self.context_length = config.data.context_length
    self.tokenizer = tokenizer
    self.rows = np.arange(config.batch_size) if rows is None else np.asarray(rows)
    self._source = None  # opened lazily, once per worker process

  @abc.abstractmethod
  def open_split(self):
    """The split to read: random access, `len` and `[i]` -> a record dict."""

  @abc.abstractmethod
  def decode(self, record: dict, rng: np.random.Generator) -> np.ndarray:
    """The record's FIELD as an array; raises one of ERRORS when it is damaged."""

  def fit(self, value: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What `decode` gave, made ready for the batch (its errors are not skipped)."""
    del rng
    return value

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_source"] = None  # file handles do not travel to workers
    return state

  @property
  def source(self):
    if self._source is None:
      self._source = self.open_split()
      # Global shuffle over records, a fresh permutation each epoch.
      self._order = grain.MapDataset.range(len(self._source)).shuffle(
          seed=self.seed).repeat()
    return self._source

  def example(self, i: int) -> tuple[np.ndarray, str, int]:
    """Example i of the run -> (its FIELD array, caption, bad records)."""
    source = self.source
    rng = np.random.default_rng([self.seed, i])
    for attempt in range(_MAX_RETRIES + 1):
      record = source[int(self._order[i + attempt])]
      captions = [c for c in record["captions"] if c.strip()]
      try:
        if not captions:
          raise ValueError("no caption")
        value = self.decode(record, rng)
      except self.ERRORS as e:
        print(f"mmjax: skipping record {record.get(self.ID_FIELD)!r} of "
              f"{self.name}/{self.split}: {e}", file=sys.stderr, flush=True)
        continue
      value = self.fit(value, rng)
      return value, captions[rng.integers(len(captions))], attempt
    raise RuntimeError(
        f"{_MAX_RETRIES + 1} records in a row of {self.name}/{self.split} could not be "
        f"read (from example {i}); the data dir is damaged: rebuild it with "
        "`python -m mmjax.data.prepare ... --overwrite`.")

  def __call__(self, step: int) -> dict:
    first = int(step) * self.batch_size
    values, captions, bad = [], [], 0
    for r in self.rows:
      value, caption, skipped = self.example(first + int(r))
      values.append(value)
      captions.append(caption)
      bad += skipped
    return {self.FIELD: np.stack(values),
            "text": self.tokenizer.encode(captions, self.context_length),
            "bad_records": np.int64(bad)}


def test_captions(records: Sequence[dict]) -> tuple[list[str], np.ndarray]:
  """Every non-blank caption of `records`, in order, and the index of the
  record each belongs to (int32 [M]): an evaluation split's text side."""
  captions, owner = [], []
  for index, record in enumerate(records):
    for caption in record["captions"]:
      if caption.strip():
        captions.append(caption)
        owner.append(index)
  return captions, np.asarray(owner, np.int32)
