"""Tests for mmjax/data/pipeline.py: batches as a pure function of (seed, step).

Record batches are checked against an in-memory split (no prepare step), so
the properties are isolated from the on-disk format; test_prepare.py and the
end-to-end tests cover the files.
"""

import io

import numpy as np
import pytest
from PIL import Image

from mmjax.data import image_text
from mmjax.data import pipeline
from mmjax.data import tokenizer as tokenizer_lib
from tests.train.conftest import tiny_config

N_RECORDS = 10


def _png(value: int, size=(24, 20)) -> bytes:
  buf = io.BytesIO()
  Image.new("RGB", size, (value, 255 - value, 7)).save(buf, format="PNG")
  return buf.getvalue()


def _record(i: int) -> dict:
  # The image's red channel and every caption name the record, so a batch row
  # can be traced back to its record.
  return {"image": _png(20 * i), "image_id": f"img{i}",
          "captions": [f"photo {i} caption {k}" for k in range(3)]}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tok") / "sp.model")
  sentences = [f"photo {i} caption {k}" for i in range(N_RECORDS) for k in range(3)]
  tokenizer_lib.train_sentencepiece(sentences * 20, path, 64, model_type="bpe")
  return tokenizer_lib.Tokenizer(path)


@pytest.fixture
def records(monkeypatch):
  split = [_record(i) for i in range(N_RECORDS)]
  monkeypatch.setattr(image_text, "open_split", lambda data_dir, name, split_name: split)
  return split


def _config(**overrides):
  return tiny_config(**{"data.name": "fake", "data.data_dir": "unused",
                        "batch_size": 4, **overrides})


def _record_of(image_row: np.ndarray) -> int:
  # Crops and resizes keep a flat colour flat.
  return int(round(float(image_row[..., 0].mean()) / 20))


def _caption_record(tok, text_row) -> int:
  return int(tok.decode(text_row[None])[0].split()[1])


def test_record_batches_cover_each_epoch_once_with_matching_captions(records, tok):
  maker = pipeline.RecordBatch(_config(batch_size=5), tok, rows=None)
  seen = []
  for step in range(4):  # 20 examples = 2 epochs of 10 records
    batch = maker(step)
    assert batch["image"].shape == (5, 16, 16, 3) and batch["image"].dtype == np.uint8
    assert batch["text"].shape == (5, 24) and int(batch["bad_records"]) == 0
    for image, text in zip(batch["image"], batch["text"]):
      assert _record_of(image) == _caption_record(tok, text)  # the pair belongs together
      seen.append(_record_of(image))
  assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
  assert seen[:10] != seen[10:]  # reshuffled each epoch
  assert seen[:10] != list(range(10))


def test_caption_is_redrawn_each_epoch(records, tok):
  maker = pipeline.RecordBatch(_config(batch_size=10), tok, rows=None)
  captions = {}
  for step in range(12):
    batch = maker(step)
    for image, text in zip(batch["image"], batch["text"]):
      captions.setdefault(_record_of(image), set()).add(tok.decode(text[None])[0])
  assert all(len(c) > 1 for c in captions.values())


def test_rows_of_a_process_are_rows_of_the_global_batch(records, tok):
  config = _config(batch_size=4)
  whole = pipeline.RecordBatch(config, tok, rows=None)(3)
  part = pipeline.RecordBatch(config, tok, rows=[2, 3])(3)
  np.testing.assert_array_equal(part["image"], whole["image"][2:])
  np.testing.assert_array_equal(part["text"], whole["text"][2:])


def test_same_seed_same_batches_other_seed_other_batches(records, tok):
  a = pipeline.RecordBatch(_config(), tok, None)(2)
  b = pipeline.RecordBatch(_config(), tok, None)(2)
  c = pipeline.RecordBatch(_config(seed=1), tok, None)(2)
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["text"], b["text"])
  assert not np.array_equal(a["text"], c["text"])


def test_unreadable_record_is_replaced_and_counted(records, tok, capsys):
  records[4] = {**records[4], "image": b"not an image"}
  maker = pipeline.RecordBatch(_config(batch_size=10), tok, rows=None)
  batch = maker(0)  # the first epoch holds record 4 once
  assert int(batch["bad_records"]) == 1
  assert 4 not in {_record_of(im) for im in batch["image"]}
  assert "skipping record 'img4'" in capsys.readouterr().err


def test_iterator_resumes_at_the_exact_next_batch(tok, tmp_path):
  config = tiny_config(batch_size=4)
  shapes_tok = tokenizer_lib.shapes_tokenizer(str(tmp_path))
  it = pipeline.train_batches(config, shapes_tok, start_step=0)
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  following = next(it)
  it.set_state(state)
  np.testing.assert_array_equal(next(it)["text"], following["text"])
  # A new iterator started at step 3 (how a resumed run builds it) agrees.
  resumed = next(pipeline.train_batches(config, shapes_tok, start_step=3))
  np.testing.assert_array_equal(resumed["image"], following["image"])
  assert not np.array_equal(first[0]["text"], following["text"])


def test_worker_processes_give_the_same_batches(tmp_path):
  shapes_tok = tokenizer_lib.shapes_tokenizer(str(tmp_path))
  serial = pipeline.train_batches(tiny_config(batch_size=4), shapes_tok, start_step=5)
  parallel = pipeline.train_batches(
      tiny_config(**{"batch_size": 4, "data.num_workers": 2}), shapes_tok, start_step=5)
  try:
    for _ in range(3):
      a, b = next(serial), next(parallel)
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["text"], b["text"])
  finally:
    parallel.close()


def test_eval_split_keeps_every_caption_with_its_image(records, tok):
  data = pipeline.test_data(_config(**{"eval.num_images": 6}), tok)
  assert data["image"].shape == (6, 16, 16, 3)
  assert len(data["text"]) == 18 and len(data["text_to_image"]) == 18
  for text, owner in zip(data["text"], data["text_to_image"]):
    assert _caption_record(tok, text) == owner == _record_of(data["image"][owner])


def test_missing_data_dir_prints_the_prepare_command(tmp_path):
  config = _config(**{"data.name": "coco_karpathy", "data.data_dir": str(tmp_path)})
  with pytest.raises(FileNotFoundError, match="python -m mmjax.data.prepare"):
    pipeline.check_data_config(config.data)
  with pytest.raises(ValueError, match="--config.data.data_dir"):
    pipeline.check_data_config(_config(**{"data.data_dir": None}).data)
