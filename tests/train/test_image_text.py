"""End to end on prepared data: files on disk -> prepare -> 20 training steps -> retrieval.

One small dataset of flat-coloured photos is written in each source format
(several captions per image, and for tsv several rows per image). Every
caption names its image's colour, so the caption-to-image mapping that
evaluation uses can be checked against the pixels.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from mmjax.data import image_text
from mmjax.data import pipeline
from mmjax.data import prepare
from mmjax.train import build
from mmjax.train import loop

from tests.train.conftest import tiny_config

# matmul_rate_once: the loop runs once per format.
pytestmark = [pytest.mark.slow,  # prepares datasets and trains on them end to end
              pytest.mark.usefixtures("matmul_rate_once")]

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220),
           "yellow": (230, 220, 40), "black": (10, 10, 10), "white": (245, 245, 245)}
N_IMAGES = 48  # eight of each colour; 12 test images, enough for R@10


def _images(root):
  """Writes N_IMAGES JPEGs; returns [(relative path, colour name)]."""
  names = list(COLOURS)
  out = []
  for i in range(N_IMAGES):
    colour = names[i % len(names)]
    rel = os.path.join("photos", f"{i:03d}.jpg")
    os.makedirs(os.path.join(root, "photos"), exist_ok=True)
    size = (40 + 2 * i, 32 + 2 * (i % 5))  # assorted shapes, none square
    Image.new("RGB", size, COLOURS[colour]).save(os.path.join(root, rel), quality=95)
    out.append((rel, colour))
  return out


def _captions(i, colour):
  return [f"a {colour} photo", f"something {colour} number {i}", f"all {colour}"]


def _split(i):
  return "train" if i < 30 else ("val" if i < 36 else "test")


def _write_jsonl(root, photos):
  path = os.path.join(root, "captions.jsonl")
  with open(path, "w") as f:
    for i, (rel, colour) in enumerate(photos):
      f.write(json.dumps({"image": rel, "captions": _captions(i, colour),
                          "split": _split(i)}) + "\n")
  return path


def _write_karpathy(root, photos):
  path = os.path.join(root, "dataset_karpathy.json")
  images = [{"filepath": "photos", "filename": os.path.basename(rel), "imgid": i,
             "split": _split(i).replace("train", "restval" if i % 2 else "train"),
             "sentences": [{"raw": c} for c in _captions(i, colour)]}
            for i, (rel, colour) in enumerate(photos)]
  with open(path, "w") as f:
    json.dump({"images": images}, f)
  return path


def _write_tsv(root, photos):
  # No split column: prepare carves val and test out of these by image id.
  path = os.path.join(root, "captions.tsv")
  with open(path, "w") as f:
    for i, (rel, colour) in enumerate(photos):
      for caption in _captions(i, colour):  # one row per caption
        f.write(f"{rel}\t{caption}\n")
  return path


WRITERS = {"jsonl": _write_jsonl, "coco_karpathy": _write_karpathy, "tsv": _write_tsv}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("photos"))
  photos = _images(root)
  data_dir = os.path.join(root, "tfds")
  for fmt, write in WRITERS.items():
    prepare.prepare(fmt, write(root, photos), root, data_dir, name=f"colours_{fmt}",
                    progress=False, log=lambda *_: None, val_fraction=0.15,
                    test_fraction=0.25)
  return data_dir


def _config(data_dir, fmt, **overrides):
  return tiny_config(**{
      "data.name": f"colours_{fmt}", "data.data_dir": data_dir, "data.vocab_size": 64,
      "batch_size": 8, "total_steps": 20, "log_every": 5, "eval_every": 20,
      "checkpoint_every": 20, "eval.num_images": -1, **overrides})


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_prepare_train_and_evaluate(datasets, fmt, tmp_path):
  config = _config(datasets, fmt)
  workdir = str(tmp_path)
  result = loop.train_and_evaluate(config, workdir)

  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert len(losses) == 4 and all(np.isfinite(losses))
  assert all(r["data/bad_records"] == 0 for r in rows if "data/bad_records" in r)
  assert result["step"] == 20
  assert {f"{d}_R@{k}" for d in ("image_to_text", "text_to_image")
          for k in (1, 5, 10)} <= set(result)

  # The evaluation data pairs each caption with the image whose colour it names.
  tok = build.tokenizer(config, workdir)
  test = pipeline.test_data(config, tok)
  source = image_text.open_split(datasets, config.data.name, "test")
  assert len(test["image"]) == len(source) >= 1
  assert len(test["text"]) == 3 * len(source)  # all captions, not one per image
  for text, owner in zip(tok.decode(test["text"]), test["text_to_image"]):
    colour = next(c for c in COLOURS if c in text.split())
    pixel = test["image"][owner].reshape(-1, 3).mean(0)
    assert np.abs(pixel - COLOURS[colour]).max() < 12, (text, pixel)
  # The tokenizer was trained on this dataset's captions and kept with it.
  assert os.path.exists(os.path.join(image_text.dataset_dir(datasets, config.data.name),
                                     "sentencepiece_64.model"))


def test_given_tokenizer_file_is_used(datasets, tmp_path):
  base = build.tokenizer(_config(datasets, "jsonl"), str(tmp_path))
  config = _config(datasets, "tsv", **{"data.tokenizer": base.path})
  assert build.tokenizer(config, str(tmp_path)).path == base.path
  missing = _config(datasets, "tsv", **{"data.tokenizer": str(tmp_path / "no.model")})
  with pytest.raises(FileNotFoundError, match="config.data.tokenizer"):
    build.tokenizer(missing, str(tmp_path))
