"""Tests for mmjax/data/prepare.py, sources.py, image_text.py (reader) and
preprocess.encode_image."""

import concurrent.futures
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
from PIL import Image
import pytest

from mmjax.data import image_text
from mmjax.data import prepare as prepare_lib
from mmjax.data import preprocess
from mmjax.data import sources

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def colour(i):
  """A distinct, JPEG-friendly colour per image index."""
  return (40 + 50 * (i % 4), 30 + 40 * (i // 4 % 5), 200 - 35 * (i % 5))


def write_image(path, colour_or_value=(10, 20, 30), size=(24, 16), mode="RGB", fmt=None,
                **save):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new(mode, size, colour_or_value).save(path, format=fmt, **save)
  return path


def write_bomb_png(path, width, height):
  """A tiny PNG whose header claims width x height pixels: a decompression bomb."""
  def chunk(kind, body):
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
  header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
  with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def decode(data):
  return np.asarray(Image.open(io.BytesIO(data)))


def read_all(data_dir, name):
  """{split: {image_id: example}} read through the public reader."""
  out = {}
  for split in image_text.SPLITS:
    source = image_text.open_split(data_dir, name, split)
    out[split] = {}
    for i in range(len(source)):
      example = source[i]
      out[split][example["image_id"]] = example
  return out


def build(tmp_path, fmt, source, images, name="ds", **kwargs):
  kwargs.setdefault("progress", False)
  kwargs.setdefault("log", lambda s: None)
  return prepare_lib.prepare(fmt, str(source), str(images), str(tmp_path / "data"), name,
                             **kwargs)


def assert_colour(example, expected, atol=4):
  pixels = decode(example["image"])
  assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
  np.testing.assert_allclose(pixels.reshape(-1, 3).mean(0), expected, atol=atol)


# ------------------------------------------------------------ the three formats


def test_coco_karpathy(tmp_path):
  images = tmp_path / "images"
  entries = []
  for i, split in enumerate(["train", "restval", "train", "val", "val", "test"]):
    folder = "val2014" if split != "train" else "train2014"
    write_image(str(images / folder / f"{i}.jpg"), colour(i), size=(24 + i, 16))
    entries.append({"filepath": folder, "filename": f"{i}.jpg", "imgid": i,
                    "cocoid": 100 + i, "split": split,
                    "sentences": [{"raw": f"Image {i} first."}, {"raw": f"Image {i} second."}]})
  # Flickr30k's file has no filepath and no cocoid: the id is the path.
  write_image(str(images / "f.jpg"), colour(9))
  entries.append({"filename": "f.jpg", "imgid": 9, "split": "test",
                  "sentences": [{"raw": "A flickr one.", "tokens": ["a"]}]})
  source = tmp_path / "dataset_coco.json"
  source.write_text(json.dumps({"images": entries, "dataset": "coco"}))

  result = build(tmp_path, "coco_karpathy", source, images, image_format="png")
  assert not result.reused and result.report["examples"] == {"train": 3, "val": 2, "test": 2}
  data = read_all(tmp_path / "data", "ds")
  assert set(data["train"]) == {"100", "101", "102"}  # restval joins train
  assert set(data["val"]) == {"103", "104"} and set(data["test"]) == {"105", "f.jpg"}
  for split in data.values():
    for image_id, example in split.items():
      i = 9 if image_id == "f.jpg" else int(image_id) - 100
      if i != 9:
        assert example["captions"] == [f"Image {i} first.", f"Image {i} second."]
        assert decode(example["image"]).shape == (16, 24 + i, 3)
      assert_colour(example, colour(i))
  assert data["test"]["f.jpg"]["captions"] == ["A flickr one."]
  # Source order is kept within a split.
  assert [image_text.open_split(tmp_path / "data", "ds", "train")[i]["image_id"]
          for i in range(3)] == ["100", "101", "102"]


def test_jsonl(tmp_path):
  images = tmp_path / "images"
  lines = []
  for i in range(6):
    write_image(str(images / "sub" / f"{i}.png"), colour(i), fmt="PNG")
    record = {"image": f"sub/{i}.png", "captions": [f"caption {i} a", f"caption {i} b"][:1 + i % 2]}
    if i >= 4:
      record["split"] = "val" if i == 4 else "test"
    if i % 2:
      record["id"] = f"id{i}"
    lines.append(json.dumps(record))
  source = tmp_path / "captions.jsonl"
  source.write_text("\n".join(lines) + "\n")

  result = build(tmp_path, "jsonl", source, images)
  assert result.report["examples"] == {"train": 4, "val": 1, "test": 1}
  assert not any(result.report[g] for g in ("skipped", "captions_dropped", "noted"))
  data = read_all(tmp_path / "data", "ds")
  assert set(data["train"]) == {"sub/0.png", "id1", "sub/2.png", "id3"}
  assert set(data["val"]) == {"sub/4.png"} and set(data["test"]) == {"id5"}
  for split in data.values():
    for image_id, example in split.items():
      i = int(image_id[-1] if image_id.startswith("id") else image_id[4])
      assert example["captions"] == [f"caption {i} a", f"caption {i} b"][:1 + i % 2]
      assert decode(example["image"]).shape == (16, 24, 3)
      assert_colour(example, colour(i))  # PNG in, JPEG out: close, not exact


def test_tsv_merges_rows_and_carves_val_test_deterministically(tmp_path):
  images = tmp_path / "images"
  rows = ["image_path\tcaption"]  # a header row is skipped
  for i in range(40):
    write_image(str(images / f"{i}.jpg"), colour(i), size=(20, 20))
    rows.append(f"{i}.jpg\tphoto number {i}")
  rows += ["7.jpg\tseven again, with\ta tab", "7.jpg\tphoto number 7"]  # merged; repeat dropped
  source = tmp_path / "cc.tsv"
  source.write_text("\n".join(rows) + "\n")

  result = build(tmp_path, "tsv", source, images, val_fraction=0.1, test_fraction=0.1)
  counts = result.report["examples"]
  assert sum(counts.values()) == 40 and counts["val"] >= 1 and counts["test"] >= 1
  assert result.report["captions_dropped"] == {"duplicate_caption": 1}
  data = read_all(tmp_path / "data", "ds")
  for split, examples in data.items():
    for image_id, example in examples.items():
      i = int(image_id.split(".")[0])
      assert_colour(example, colour(i))
      expected = [f"photo number {i}"] + (["seven again, with a tab"] if i == 7 else [])
      assert example["captions"] == expected
      # The split follows from the image id alone: the documented SHA-256 bands.
      u = sources._draw(image_id)
      assert split == ("val" if u < 0.1 else "test" if u < 0.2 else "train")

  # The same source gives the same splits, and so does any number of workers.
  again = build(tmp_path / "again", "tsv", source, images, val_fraction=0.1,
                test_fraction=0.1, workers=3)
  data_again = read_all(tmp_path / "again" / "data", "ds")
  assert again.report["examples"] == counts
  for split in image_text.SPLITS:
    assert list(data_again[split]) == list(data[split])
    assert all(data_again[split][k]["image"] == data[split][k]["image"] for k in data[split])


def test_small_source_still_gets_val_and_test(tmp_path):
  images = tmp_path / "images"
  for i in range(3):
    write_image(str(images / f"{i}.jpg"), colour(i))
  source = tmp_path / "a.tsv"
  source.write_text("".join(f"{i}.jpg\tcap {i}\n" for i in range(3)))
  result = build(tmp_path, "tsv", source, images, val_fraction=0.0, test_fraction=0.0)
  assert result.report["examples"] == {"train": 1, "val": 1, "test": 1}

  # A band that catches nothing takes the smallest remaining draw, never one
  # already given to the other split.
  records = [sources.Record(f"id{i}", f"{i}.jpg", ["c"], "train", "") for i in range(20)]
  splits = sources.carve({"train": records, "val": [], "test": []}, 1e-12, 0.5)
  draws = {r.image_id: sources._draw(r.image_id) for r in records}
  assert [r.image_id for r in splits["val"]] == [min(draws, key=draws.get)]
  assert splits["test"] and splits["train"]
  assert sorted(r.image_id for split in splits.values() for r in split) == sorted(draws)

  source.write_text("0.jpg\tonly one\n")
  with pytest.raises(ValueError, match="too few to carve"):
    build(tmp_path, "tsv", source, images, name="tiny")
  assert not os.path.exists(tmp_path / "data" / "tiny")


def test_encoding_is_ordered_and_bounded():
  records = [sources.Record(str(i), str(i), ["c"], "train", "") for i in range(12)]
  started = []

  def encode(path):
    started.append(path)
    time.sleep(0.002 * (12 - int(path)))  # later records finish first
    return path

  with concurrent.futures.ThreadPoolExecutor(4) as executor:
    results = prepare_lib._encode_ordered(records, encode, executor, window=3)
    first = next(results)
    assert len(started) <= 3  # no more than the window in flight
    rest = list(results)
  assert [first[1]] + [r for _, r in rest] == [str(i) for i in range(12)]
  assert [r.image_id for r, _ in [first] + rest] == [str(i) for i in range(12)]


# ------------------------------------------------------------ bad input


def test_bad_inputs_are_counted_and_good_records_survive(tmp_path):
  images = tmp_path / "images"
  d = str(images)
  write_image(f"{d}/good.jpg", colour(0))
  write_image(f"{d}/gray.png", 77, mode="L", fmt="PNG")
  Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(f"{d}/clear.png")  # fully transparent
  write_image(f"{d}/cmyk.jpg", (0, 255, 255, 0), mode="CMYK")  # pure red in CMYK
  Image.fromarray(np.full((16, 24), 51400, np.uint16)).save(f"{d}/deep.png")  # 16-bit
  write_image(f"{d}/tiny.png", (1, 2, 3), size=(1, 1), fmt="PNG")
  write_image(f"{d}/huge.jpg", colour(1), size=(10000, 10000), quality=50)
  write_bomb_png(f"{d}/bomb.png", 30000, 30000)
  noise = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
  Image.fromarray(noise).save(f"{d}/whole.jpg")
  with open(f"{d}/whole.jpg", "rb") as f:
    whole = f.read()
  with open(f"{d}/cut.jpg", "wb") as f:
    f.write(whole[:len(whole) // 2])  # a truncated download
  with open(f"{d}/text.jpg", "w") as f:
    f.write("not an image at all")
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90 degrees to display"
  write_image(f"{d}/sideways.jpg", colour(6), size=(32, 16), exif=exif)
  write_image(f"{d}/val.jpg", colour(4))
  write_image(f"{d}/test.jpg", colour(5))
  long_caption = "word " * 300

  lines = [
      {"image": "good.jpg", "captions": ["good one", "  ", "", 7, "good\n one  "]},
      {"image": "gray.png", "captions": ["gray"]},
      {"image": "clear.png", "captions": ["clear"]},
      {"image": "cmyk.jpg", "captions": ["cmyk"]},
      {"image": "deep.png", "captions": ["deep"]},
      {"image": "tiny.png", "captions": ["tiny"]},
      {"image": "huge.jpg", "captions": ["huge", long_caption]},
      {"image": "bomb.png", "captions": ["bomb"]},
      {"image": "cut.jpg", "captions": ["cut"]},
      {"image": "text.jpg", "captions": ["text"]},
      {"image": "absent.jpg", "captions": ["absent"]},
      {"image": "whole.jpg", "captions": [" ", "\t"]},
      {"image": "gray.png", "captions": ["same id again"]},
      {"image": "good.jpg", "captions": ["odd split"], "split": "holdout", "id": "x"},
      {"image": 3, "captions": ["no path"]},
      {"image": "val.jpg", "captions": ["val"], "split": "val"},
      {"image": "sideways.jpg", "captions": ["sideways"]},
      {"image": "test.jpg", "captions": ["test \u00e9"], "split": "test"},
  ]
  source = tmp_path / "bad.jsonl"
  with open(source, "wb") as f:
    for line in lines:
      f.write(json.dumps(line).encode() + b"\n")
    f.write(b'{"image": "good.jpg", "captions": \n')  # malformed JSON
    f.write(b'{"image": "good.jpg", "captions": ["caf\xe9 latin-1"], "id": "l1"}\n')
    f.write(b"\n")  # blank lines are not records

  result = build(tmp_path, "jsonl", source, images, workers=2)
  report = result.report
  assert report["skipped"] == {
      "too_small": 1, "too_large": 1, "corrupt_image": 1, "not_an_image": 1,
      "missing_image": 1, "no_captions": 1, "duplicate_id": 1, "unknown_split": 1,
      "malformed_record": 1, "malformed_json": 1, "non_utf8_line": 1}
  assert report["captions_dropped"] == {"empty_caption": 4, "malformed_caption": 1,
                                        "duplicate_caption": 1}
  assert report["noted"] == {
      "converted_from_L": 1, "converted_from_RGBA": 1, "converted_from_CMYK": 1,
      "converted_from_I;16": 1, "downscaled": 1, "long_caption": 1, "exif_rotated": 1}
  first = report["first"]
  assert first["too_small"] == [f"{d}/tiny.png"] and first["too_large"] == [f"{d}/bomb.png"]
  assert first["corrupt_image"] == [f"{d}/cut.jpg"] and first["not_an_image"] == [f"{d}/text.jpg"]
  assert first["missing_image"] == [f"{d}/absent.jpg"]
  assert first["malformed_json"] == [f"{source}:19"] and first["non_utf8_line"] == [f"{source}:20"]
  assert first["duplicate_id"] == [f"{source}:13"]
  with open(os.path.join(result.path, image_text.REPORT_FILE)) as f:
    assert json.load(f) == report

  data = read_all(tmp_path / "data", "ds")
  assert set(data["train"]) == {"good.jpg", "gray.png", "clear.png", "cmyk.jpg", "deep.png",
                                "huge.jpg", "sideways.jpg"}
  train = data["train"]
  assert train["good.jpg"]["captions"] == ["good one"]  # "good\n one" is the same caption
  assert train["gray.png"]["captions"] == ["gray"]  # the first of the repeated id
  assert train["huge.jpg"]["captions"] == ["huge", long_caption.strip()]  # long: kept
  assert data["test"]["test.jpg"]["captions"] == ["test \u00e9"]
  assert_colour(train["good.jpg"], colour(0))
  assert_colour(train["gray.png"], (77, 77, 77))
  assert_colour(train["clear.png"], (255, 255, 255))  # transparent -> white, not black/red
  assert_colour(train["cmyk.jpg"], (255, 0, 0), atol=6)
  assert_colour(train["deep.png"], (200, 200, 200))  # 51400 / 257, not clipped to 255
  assert decode(train["huge.jpg"]["image"]).shape == (1024, 1024, 3)
  assert decode(train["sideways.jpg"]["image"]).shape == (32, 16, 3)  # upright
  assert_colour(train["huge.jpg"], colour(1), atol=6)


def test_bad_text_in_tsv_and_coco(tmp_path):
  images = tmp_path / "images"
  for i in range(4):
    write_image(str(images / f"{i}.jpg"), colour(i))
  tsv = tmp_path / "a.tsv"
  tsv.write_bytes(b"0.jpg\tfine\n1.jpg\tbad \xff byte\nno tab here\n1.jpg\tfine too\n"
                  b"2.jpg\tx\n3.jpg\ty\n")
  report = build(tmp_path, "tsv", tsv, images, val_fraction=0.3, test_fraction=0.3).report
  assert report["skipped"] == {"non_utf8_line": 1, "malformed_record": 1}
  assert sum(report["examples"].values()) == 4

  entries = [{"filename": f"{i}.jpg", "split": s, "sentences": [{"raw": f"c{i}"}]}
             for i, s in enumerate(["train", "train", "val", "test"])]
  entries[1]["sentences"].append({"raw": "XX"})
  entries.append({"filename": "nope.jpg"})  # no sentences: malformed
  coco = tmp_path / "coco.json"
  coco.write_bytes(json.dumps({"images": entries}).encode().replace(b"XX", b"\xc3\x28"))
  report = build(tmp_path, "coco_karpathy", coco, images, name="coco").report
  assert report["captions_dropped"] == {"non_utf8_caption": 1}
  assert report["skipped"] == {"malformed_record": 1}
  data = read_all(tmp_path / "data", "coco")
  assert data["train"]["1.jpg"]["captions"] == ["c1"]


def test_val_with_no_usable_image_fails_clearly(tmp_path):
  images = tmp_path / "images"
  write_image(str(images / "a.jpg"), colour(0))
  write_image(str(images / "b.jpg"), colour(1))
  source = tmp_path / "s.jsonl"
  source.write_text("\n".join(json.dumps(r) for r in [
      {"image": "a.jpg", "captions": ["a"]},
      {"image": "gone.jpg", "captions": ["gone"], "split": "val"},
      {"image": "b.jpg", "captions": ["b"], "split": "test"}]))
  with pytest.raises(ValueError, match=r"split 'val'.*missing_image 1: .*gone\.jpg"):
    build(tmp_path, "jsonl", source, images)
  assert os.listdir(tmp_path / "data") == []


def test_arguments_are_checked_before_any_work(tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  source = tmp_path / "s.jsonl"
  source.write_text("")
  with pytest.raises(FileNotFoundError, match="--source"):
    build(tmp_path, "jsonl", tmp_path / "absent.jsonl", images)
  with pytest.raises(FileNotFoundError, match="--images"):
    build(tmp_path, "jsonl", source, tmp_path / "absent")
  with pytest.raises(ValueError, match="--name"):
    build(tmp_path, "jsonl", source, images, name="Bad-Name")
  assert not os.path.exists(tmp_path / "data")
  coco = tmp_path / "c.json"
  coco.write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    build(tmp_path, "coco_karpathy", coco, images)


# ------------------------------------------------------------ build behaviour


@pytest.fixture
def small_source(tmp_path):
  images = tmp_path / "images"
  for i in range(5):
    write_image(str(images / f"{i}.jpg"), colour(i))
  source = tmp_path / "s.jsonl"
  source.write_text("".join(
      json.dumps({"image": f"{i}.jpg", "captions": [f"c{i}"],
                  "split": ["train", "train", "train", "val", "test"][i]}) + "\n"
      for i in range(5)))
  return source, images


def test_second_run_reuses(tmp_path, small_source):
  source, images = small_source
  first = build(tmp_path, "jsonl", *small_source)
  marker = os.path.join(first.path, image_text.MARKER_FILE)
  stamp = os.stat(marker).st_mtime_ns
  messages = []
  second = build(tmp_path, "jsonl", *small_source, log=messages.append)
  assert second.reused and second.report == first.report
  assert "already prepared" in messages[0] and "--overwrite" in messages[0]
  assert os.stat(marker).st_mtime_ns == stamp
  # Other settings under the same name are refused, not silently reused ...
  with pytest.raises(ValueError, match="max_side.*--overwrite"):
    build(tmp_path, "jsonl", *small_source, max_side=512)
  # ... and rebuilt with --overwrite.
  third = build(tmp_path, "jsonl", *small_source, max_side=512, overwrite=True)
  assert not third.reused and os.stat(marker).st_mtime_ns != stamp
  assert sorted(os.listdir(tmp_path / "data")) == ["ds"]


def test_interrupted_build_leaves_no_dataset(tmp_path, small_source, monkeypatch):
  data_dir = tmp_path / "data"
  calls = []
  real_encode = preprocess.encode_image

  def failing_encode(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-build
    return real_encode(*args, **kwargs)

  monkeypatch.setattr(preprocess, "encode_image", failing_encode)
  with pytest.raises(KeyboardInterrupt):
    build(tmp_path, "jsonl", *small_source, workers=1)
  assert os.listdir(data_dir) == []  # the temporary directory went too
  with pytest.raises(FileNotFoundError):
    image_text.open_split(data_dir, "ds", "train")

  # A killed build cannot clean up after itself: its temporary directory stays.
  calls.clear()
  monkeypatch.setattr(prepare_lib, "_remove_temporary", lambda path: None)
  with pytest.raises(KeyboardInterrupt):
    build(tmp_path, "jsonl", *small_source, workers=1)
  (leftover,) = os.listdir(data_dir)
  assert leftover.startswith(".ds.tmp-")
  with pytest.raises(FileNotFoundError):
    image_text.open_split(data_dir, "ds", "train")

  # The next run removes it and builds the dataset.
  monkeypatch.undo()
  result = build(tmp_path, "jsonl", *small_source)
  assert os.listdir(data_dir) == ["ds"]
  assert result.report["examples"] == {"train": 3, "val": 1, "test": 1}
  assert len(image_text.open_split(data_dir, "ds", "train")) == 3


def test_directory_without_marker_is_not_a_dataset(tmp_path, small_source):
  result = build(tmp_path, "jsonl", *small_source)
  os.remove(os.path.join(result.path, image_text.MARKER_FILE))
  with pytest.raises(ValueError, match="not a complete mmjax dataset.*--overwrite"):
    image_text.open_split(tmp_path / "data", "ds", "val")
  with pytest.raises(ValueError, match="--overwrite"):
    build(tmp_path, "jsonl", *small_source)
  build(tmp_path, "jsonl", *small_source, overwrite=True)
  assert len(image_text.open_split(tmp_path / "data", "ds", "val")) == 1


def test_other_format_version_is_refused(tmp_path, small_source):
  source, images = small_source
  result = build(tmp_path, "jsonl", *small_source)
  marker_path = os.path.join(result.path, image_text.MARKER_FILE)
  with open(marker_path) as f:
    marker = json.load(f)
  marker["format_version"] = image_text.FORMAT_VERSION + 1
  with open(marker_path, "w") as f:
    json.dump(marker, f)
  data_dir = str(tmp_path / "data")
  expected = (f"python -m mmjax.data.prepare jsonl --source {os.path.realpath(source)} "
              f"--images {os.path.realpath(images)} --data-dir {data_dir} --name ds --overwrite")
  with pytest.raises(ValueError, match="format version") as error:
    image_text.open_split(data_dir, "ds", "train")
  assert expected in str(error.value)
  with pytest.raises(ValueError, match="--overwrite"):
    build(tmp_path, "jsonl", *small_source)
  build(tmp_path, "jsonl", *small_source, overwrite=True)
  assert image_text.check_dataset(data_dir, "ds")["format_version"] == image_text.FORMAT_VERSION


def test_missing_dataset_names_the_prepare_command(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    image_text.open_split(str(tmp_path), "coco_karpathy", "val")
  assert (f"python -m mmjax.data.prepare coco_karpathy --source PATH --images DIR "
          f"--data-dir {tmp_path} --name coco_karpathy") in str(error.value)
  with pytest.raises(FileNotFoundError, match=r"prepare \{coco_karpathy,jsonl,tsv\} .*--name cc3m"):
    list(image_text.train_captions(str(tmp_path), "cc3m"))
  with pytest.raises(ValueError, match="split"):
    image_text.open_split(str(tmp_path), "cc3m", "validation")


# ------------------------------------------------------------ reader


def test_a_dataset_on_a_bucket_says_to_copy_it_to_local_disk():
  with pytest.raises(ValueError, match=r"read from a local disk.*gcloud storage cp -r "
                                       r"gs://b/data/coco_karpathy /data/"):
    image_text.check_dataset("gs://b/data", "coco_karpathy")


def test_reader_contract(tmp_path, small_source):
  data_dir = tmp_path / "data"
  build(tmp_path, "jsonl", *small_source)
  train = image_text.open_split(data_dir, "ds", "train")
  assert len(train) == 3 and "ds/train" in repr(train)
  example = train[-1]
  assert set(example) == {"image", "captions", "image_id"}
  assert isinstance(example["image"], bytes) and example["image_id"] == "2.jpg"
  assert example["captions"] == ["c2"] and isinstance(example["captions"][0], str)
  assert [x["image_id"] for x in train.__getitems__([2, 0])] == ["2.jpg", "0.jpg"]
  with pytest.raises(IndexError):
    train[3]
  # Grain hands the source to worker processes by pickling it.
  assert pickle.loads(pickle.dumps(train))[1] == train[1]
  assert list(image_text.train_captions(data_dir, "ds")) == ["c0", "c1", "c2"]
  assert list(image_text.train_captions(data_dir, "ds", limit=2)) == ["c0", "c2"]
  # Neither writing nor reading needs TensorFlow.
  assert "tensorflow" not in sys.modules


def test_command_line(tmp_path, small_source):
  source, images = small_source
  command = [sys.executable, "-m", "mmjax.data.prepare", "jsonl", "--source", str(source),
             "--images", str(images), "--data-dir", str(tmp_path / "data"), "--name", "cli"]
  run = lambda command: subprocess.run(command, capture_output=True, text=True, check=False,
                                       cwd=REPO)
  first = run(command)
  assert first.returncode == 0, first.stderr
  assert "prepared" in first.stdout and "train 3, val 1, test 1" in first.stdout
  second = run(command)
  assert second.returncode == 0 and "already prepared" in second.stdout
  missing = run(command[:5] + [str(tmp_path / "nope.jsonl")] + command[6:])
  assert missing.returncode == 1 and "error: --source" in missing.stderr
  assert "Traceback" not in missing.stderr
