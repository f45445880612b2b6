"""Tests for mmjax/eval/reports.py and suite.py."""

import os

import numpy as np
import pytest

from mmjax.eval import reports
from mmjax.eval import suite

from tests.train.conftest import tiny_config


def test_recall_curve_counts_ranks():
  ranks = np.array([1, 1, 2, 5, 7, 300])
  ks, recall = reports.recall_curve(ranks, 10)
  assert list(ks) == list(range(1, 11))
  for k, r in zip(ks, recall):
    assert r == pytest.approx(np.mean(ranks <= k))


def test_pca_keeps_the_two_directions_of_largest_variance():
  rng = np.random.default_rng(0)
  basis = np.linalg.qr(rng.normal(size=(6, 6)))[0]
  coords = rng.normal(size=(500, 6)) * np.array([10, 5, 0.1, 0.1, 0.1, 0.1])
  xy = reports.pca_2d(coords @ basis.T + 3.0)
  assert np.allclose(xy.mean(0), 0, atol=1e-9)
  assert xy[:, 0].std() == pytest.approx(coords[:, 0].std(), rel=0.02)
  assert xy[:, 1].std() == pytest.approx(coords[:, 1].std(), rel=0.02)


def test_write_all_saves_three_images(tmp_path):
  rng = np.random.default_rng(1)
  n, per = 12, 2
  image_emb = rng.normal(size=(n, 4)).astype(np.float32)
  t2i = np.repeat(np.arange(n), per)
  text_emb = image_emb[t2i] + 0.1 * rng.normal(size=(n * per, 4)).astype(np.float32)
  data = {"image": rng.integers(0, 255, size=(n, 8, 8, 3), dtype=np.uint8),
          "text_to_image": t2i}
  paths = reports.write_all(str(tmp_path), data, image_emb, text_emb,
                            [f"caption {j}" for j in range(n * per)])
  assert [os.path.basename(p) for p in paths] == [
      "recall_curves.png", "retrieval_grid.png", "embeddings_pca.png"]
  for p in paths:
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_due_follows_each_period():
  evaluators = {"retrieval": 0, "zeroshot": 4, "itm": -1}
  assert suite.due(evaluators, 3, 12, eval_every=3) == ["retrieval"]
  assert suite.due(evaluators, 4, 12, eval_every=3) == ["zeroshot"]
  assert suite.due(evaluators, 5, 12, eval_every=3) == []
  assert suite.due(evaluators, 12, 12, eval_every=3) == ["retrieval", "zeroshot", "itm"]
  assert suite.due({**evaluators, "itm": None}, 12, 12, eval_every=3) == [
      "retrieval", "zeroshot"]


@pytest.mark.parametrize("evaluators, data, pattern", [
    ({"retrieval": 0, "ocr": 0}, "shapes", r"'ocr'; choose from"),
    ({"retrieval": -2}, "shapes", r"retrieval=-2.*at the end only"),
    ({"zeroshot": 0}, "coco", r"'zeroshot' evaluator needs the shapes"),
])
def test_check_names_the_problem(evaluators, data, pattern):
  config = tiny_config(**{"eval.evaluators": evaluators, "data.name": data})
  with pytest.raises(ValueError, match=pattern):
    suite.check(config)


def test_format_results_lists_every_metric():
  text = suite.format_results({"zeroshot/shape_top1": 0.5, "step": 3, "itm/x/f1": 0.25})
  assert text.splitlines() == ["itm/x/f1             0.2500", "zeroshot/shape_top1  0.5000"]
