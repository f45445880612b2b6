"""Batches for the train loop: host-side prefetch of the shapes stream.

The global batch of step s is a function of (seed, s) alone; each process
materialises only its own rows, so the same seed gives the same batches on one
device, eight, or several processes.
"""

import queue
import threading
from typing import Iterator

import numpy as np

from mmjax.data import shapes
from mmjax.data.tokenizer import Tokenizer

DATASETS = ("shapes",)
# The fixed shapes test split: 1,000 images x 5 captions, the same for every run.
TEST_IMAGES = 1000


def check_data_config(data_cfg) -> None:
  """Fails before any compile if the config names data that cannot be read."""
  if data_cfg.name not in DATASETS:
    raise ValueError(f"config.data.name={data_cfg.name!r} is not a known dataset; "
                     f"choose one of {DATASETS}.")


def shapes_batch(config, tokenizer: Tokenizer, step: int, rows=None) -> dict:
  """Rows `rows` (default: all) of the global training batch of `step`.

  Returns {"image": uint8 [b, H, W, 3], "text": int32 [b, L]}.
  """
  raw = shapes.train_batch(config.seed, step, config.batch_size, rows=rows,
                           image_size=config.data.image_size)
  return {"image": raw["image"],
          "text": tokenizer.encode(raw["caption"], config.data.context_length)}


def train_batches(config, tokenizer: Tokenizer, start_step: int, rows=None) -> Iterator[dict]:
  """Yields the batches of steps start_step, start_step + 1, ... prepared ahead.

  A daemon thread keeps `config.data.prefetch` batches ready, so the drawing of
  step s + 1 overlaps the device's work on step s. An exception in the thread is
  re-raised in the consumer, never swallowed.
  """
  q: queue.Queue = queue.Queue(maxsize=max(config.data.prefetch, 1))
  stop = threading.Event()

  def produce():
    step = start_step
    try:
      while not stop.is_set():
        q.put((step, shapes_batch(config, tokenizer, step, rows)))
        step += 1
    except BaseException as e:  # hand it to the consumer
      q.put((None, e))

  thread = threading.Thread(target=produce, daemon=True, name="shapes-prefetch")
  thread.start()
  try:
    while True:
      step, item = q.get()
      if step is None:
        raise item
      yield item
  finally:
    stop.set()
    while not q.empty():  # unblock a producer waiting on a full queue
      q.get_nowait()


def test_data(config, tokenizer: Tokenizer) -> dict:
  """The fixed evaluation split, tokenized.

  Returns {"image": uint8 [N, H, W, 3], "text": int32 [M, L],
           "text_to_image": int32 [M]} with N = config.eval.num_images.
  """
  split = shapes.test_split(image_size=config.data.image_size, num_images=TEST_IMAGES)
  n = config.eval.num_images
  keep = np.asarray(split["text_to_image"]) < n
  captions = [c for c, k in zip(split["captions"], keep) if k]
  return {"image": np.asarray(split["image"][:n]),
          "text": tokenizer.encode(captions, config.data.context_length),
          "text_to_image": np.asarray(split["text_to_image"])[keep].astype(np.int32)}
