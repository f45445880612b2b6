"""Tests for mmjax/eval/caption_export.py and mmjax/eval/caption_grid.py."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from mmjax.eval import caption_export, caption_grid, caption_metrics

REFS = {3: ["a red circle", "a small red circle"], 11: ["two blue squares"],
        7: ["a green triangle left of a square", "a square right of a triangle"]}


def test_round_trip_writes_both_files(tmp_path):
  out = str(tmp_path / "sub" / "OUT.json")  # the folder does not exist yet
  ids = np.array([11, 3, 7])  # NumPy ids, as they come out of an eval batch
  caps = ["two blue squares", "a red circle", "a triangle é"]
  assert caption_export.write_coco_results(out, ids, caps, REFS) == out
  assert sorted(os.listdir(tmp_path / "sub")) == ["OUT.json", "OUT.references.json"]
  with open(out, encoding="utf-8") as f:
    rows = json.load(f)
  # COCO results: a list of {"image_id": int, "caption": str}, in the given order.
  assert rows == [{"image_id": 11, "caption": "two blue squares"},
                  {"image_id": 3, "caption": "a red circle"},
                  {"image_id": 7, "caption": "a triangle é"}]
  with open(tmp_path / "sub" / "OUT.references.json", encoding="utf-8") as f:
    assert json.load(f) == {str(k): v for k, v in REFS.items()}
  captions, references = caption_export.read_coco_results(out)
  assert captions == {11: "two blue squares", 3: "a red circle", 7: "a triangle é"}
  assert references == REFS
  # Read back, they score as they are.
  assert caption_metrics.score(captions, references)["num_images"] == 3


def test_references_path():
  assert caption_export.references_path("/a/OUT.json") == "/a/OUT.references.json"
  assert caption_export.references_path("gs://b/x/y.json") == "gs://b/x/y.references.json"
  assert caption_export.references_path("captions") == "captions.references.json"


@pytest.mark.parametrize("ids, caps, refs, error, message", [
    ([3, 3, 7], ["a", "b", "c"], REFS, ValueError, r"unique.*repeated: 3"),
    ([3, 11, 7], ["a", "", "c"], REFS, ValueError, r"non-empty strings.*image ids 11"),
    ([3, 11, 7], ["a", "  ", None], REFS, ValueError, r"image ids 11, 7"),
    ([3, 11], ["a", "b"], REFS, ValueError, r"without a caption 7"),
    ([3, 11, 7, 9], ["a", "b", "c", "d"], REFS, ValueError, r"no references for image ids 9"),
    ([3, 11, "7"], ["a", "b", "c"], REFS, TypeError, r"integers; got '7'"),
    ([3, 11, 7], ["a", "b"], REFS, ValueError, r"3 image ids but 2 captions"),
    ([3, 11, 7], ["a", "b", "c"], {**REFS, 7: []}, ValueError, r"image id 7 must be a non-empty"),
])
def test_bad_exports_fail_before_writing(tmp_path, ids, caps, refs, error, message):
  out = tmp_path / "OUT.json"
  with pytest.raises(error, match=message):
    caption_export.write_coco_results(out, ids, caps, refs)
  assert not os.listdir(tmp_path)


def test_read_needs_the_references_beside_it(tmp_path):
  out = tmp_path / "OUT.json"
  out.write_text(json.dumps([{"image_id": 1, "caption": "a"}]))
  with pytest.raises(FileNotFoundError, match="OUT.references.json"):
    caption_export.read_coco_results(out)


def test_caption_grid_writes_a_png(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(3, 12, 16, 3), dtype=np.uint8)
  generated = ["a red circle left of a blue square", "", "a caption long enough to be "
               "wrapped onto several lines under its little picture"]
  references = [["a little red circle", "a blue square", "not drawn"], ["one"], ["two", "x"]]
  path = str(tmp_path / "grid.png")
  assert caption_grid.plot_caption_grid(images, generated, references, path,
                                        title="captions") == path
  with Image.open(path) as im:
    width, height = im.size
    pixels = np.asarray(im.convert("RGB"))
  # 3 images and cols=4: one row of three columns.
  assert width == round(3 * caption_grid.CELL_INCHES * caption_grid.DPI)
  assert width > height > 0.5 * caption_grid.CELL_INCHES * caption_grid.DPI
  # Not blank: the random images drawn, and black text in the bottom quarter
  # (under the images) on white.
  assert pixels.std() > 20
  text = pixels[3 * height // 4:]
  assert (text == 255).all(axis=-1).mean() > 0.8 and (text < 64).all(axis=-1).any()
  with pytest.raises(ValueError, match="one of each per image"):
    caption_grid.plot_caption_grid(images, generated[:2], references, path)
