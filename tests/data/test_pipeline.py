"""Tests for mmjax/data/pipeline.py: batches as a pure function of (seed, step).

Record batches are checked against an in-memory split (no prepare step), so
the properties are isolated from the on-disk format; test_prepare.py and the
end-to-end tests cover the files.
"""

import io

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mmjax.data import image_text
from mmjax.data import pipeline
from mmjax.data import shapes
from mmjax.data import shapes_views
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


# --- extra fields (config.data.fields) ---------------------------------------

FIELDS = ("sketch", "scene_id")


def _shapes_config(fields=(), **overrides):
  return tiny_config(**{"batch_size": 6, "data.fields": fields, **overrides})


def test_shapes_batch_with_fields_adds_them_and_keeps_image_and_text(tok):
  config = _shapes_config(FIELDS)
  plain = pipeline.ShapesBatch(_shapes_config(), tok, rows=None)(2)
  batch = pipeline.ShapesBatch(config, tok, rows=None)(2)
  assert set(plain) == {"image", "text"}  # no fields: the batch as before
  assert set(batch) == {"image", "text", *FIELDS}
  np.testing.assert_array_equal(batch["image"], plain["image"])
  np.testing.assert_array_equal(batch["text"], plain["text"])
  spec = pipeline.batch_spec(config)
  assert list(spec) == ["image", "text", *FIELDS]
  for name, (shape, dtype) in spec.items():
    assert batch[name].shape == (6, *shape) and batch[name].dtype == dtype, name
  assert spec["sketch"] == ((16, 16, 1), np.uint8) and spec["scene_id"] == ((), np.int32)
  # Each row's fields belong to that row's example: train example 2 * 6 + i.
  scenes = [shapes.example(config.seed, "train", 12 + i, 16)["scene"] for i in range(6)]
  np.testing.assert_array_equal(batch["scene_id"], shapes_views.scene_ids(scenes))
  np.testing.assert_array_equal(batch["sketch"], shapes_views.sketch(batch["image"]))


def test_fields_of_a_process_are_rows_of_the_global_batch(tok):
  config = _shapes_config(FIELDS)
  whole = pipeline.ShapesBatch(config, tok, rows=None)(5)
  part = pipeline.ShapesBatch(config, tok, rows=[1, 4])(5)
  assert set(part) == set(whole)
  for name in whole:
    np.testing.assert_array_equal(part[name], whole[name][[1, 4]], err_msg=name)


def test_train_iterator_carries_the_fields(tok):
  config = _shapes_config(FIELDS)
  batch = next(pipeline.train_batches(config, tok, start_step=3))
  expected = pipeline.ShapesBatch(config, tok, rows=None)(3)
  for name in ("image", "text", *FIELDS):
    np.testing.assert_array_equal(batch[name], expected[name], err_msg=name)


def test_batch_spec_and_test_fields_without_fields():
  config = _shapes_config()
  assert pipeline.batch_spec(config) == {"image": ((16, 16, 3), np.uint8),
                                         "text": ((24,), np.int32)}
  assert pipeline.test_fields(config.data) == ("image", "text")
  assert pipeline.test_fields(_shapes_config(FIELDS).data) == ("image", "text", *FIELDS)


def test_eval_split_carries_the_fields_aligned_with_its_images(tok):
  plain = pipeline.test_data(_shapes_config(**{"eval.num_images": 12}), tok)
  data = pipeline.test_data(_shapes_config(FIELDS, **{"eval.num_images": 12}), tok)
  assert set(data) == set(plain) | set(FIELDS)
  for name in plain:
    np.testing.assert_array_equal(data[name], plain[name], err_msg=name)
  assert data["sketch"].shape == (12, 16, 16, 1) and data["sketch"].dtype == np.uint8
  assert data["scene_id"].shape == (12,) and data["scene_id"].dtype == np.int32
  split = shapes.test_split(image_size=16)
  np.testing.assert_array_equal(data["sketch"], shapes_views.sketch(split["image"][:12]))
  np.testing.assert_array_equal(data["scene_id"],
                                shapes_views.scene_ids(split["scenes"][:12]))


def test_unknown_field_is_rejected_with_the_known_ones():
  config = _shapes_config(("sketch", "depth"))
  with pytest.raises(ValueError, match=r"'depth'.*\['audio', 'scene_id', 'sketch'\].*remove it "
                                       r"from config.data.fields"):
    pipeline.check_data_config(config.data)
  with pytest.raises(ValueError, match="'depth'"):
    pipeline.batch_spec(config)
  with pytest.raises(ValueError, match="more than once"):
    pipeline.check_data_config(_shapes_config(("sketch", "sketch")).data)
  # A bare string would otherwise read as the fields "s", "k", "e", ...
  with pytest.raises(ValueError, match="make it a tuple"):
    pipeline.check_data_config(ml_collections.ConfigDict({"name": "shapes", "fields": "sketch"}))


def test_field_on_a_prepared_dataset_is_rejected(records, tok):
  config = _config(**{"data.fields": ("scene_id",)})
  for check in (lambda: pipeline.check_data_config(config.data),
                lambda: pipeline.batch_maker(config, tok),
                lambda: pipeline.test_data(config, tok)):
    with pytest.raises(ValueError, match=r"'scene_id'.*'shapes'.*remove it from "
                                         r"config.data.fields"):
      check()
  # Without fields the same dataset is fine.
  assert "scene_id" not in pipeline.batch_maker(_config(), tok)(0)
