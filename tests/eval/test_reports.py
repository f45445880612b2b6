"""Tests for mmjax/eval/reports.py and the retrieval evaluator's reports."""

import os

import numpy as np
import pytest

from mmjax.eval import evaluators, reports, retrieval_evaluator


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


class CaptionTokenizer:
  """decode: one caption per row of token ids."""

  def decode(self, tokens):
    return [" ".join(f"w{int(t)}" for t in row if t) for row in np.asarray(tokens)]


def _retrieval_run(pair):
  """A Retrieval evaluator over `pair`, called on hand-made embeddings."""
  rng = np.random.default_rng(2)
  n, per = 12, 2
  t2i = np.repeat(np.arange(n), per).astype(np.int32)
  emb = {"image": rng.normal(size=(n, 4)).astype(np.float32),
         "sketch": rng.normal(size=(n, 4)).astype(np.float32)}
  emb["text"] = emb["image"][t2i] + 0.1 * rng.normal(size=(n * per, 4)).astype(np.float32)
  test = {"image": rng.integers(0, 255, size=(n, 8, 8, 3), dtype=np.uint8),
          "text": rng.integers(1, 9, size=(n * per, 3)).astype(np.int32),
          "sketch": rng.integers(0, 255, size=(n, 8, 8, 1), dtype=np.uint8),
          "text_to_image": t2i}
  context = evaluators.Context(
      data_name="shapes", image_size=8, context_length=3, seed=0,
      inputs={"image": "image", "text": "text", "sketch": "sketch"},
      fields=("image", "text", "sketch"), batch_size=4, num_images=n,
      tokenizer=CaptionTokenizer(), load_test=lambda: test)

  class Encoders:
    def encode(self, modality, x):
      assert x is test[modality]
      return emb[modality]

  evaluator = retrieval_evaluator.Retrieval(context, pair=pair)
  return evaluator, Encoders(), test, emb


@pytest.mark.parametrize("pair", [("image", "text"), ("text", "image")])
def test_retrieval_report_plots_the_image_text_pair(pair, tmp_path, monkeypatch):
  evaluator, encoders, test, emb = _retrieval_run(pair)
  assert evaluator.report(str(tmp_path)) == []  # nothing evaluated yet
  evaluator(encoders)
  calls = []
  write_all = reports.write_all
  monkeypatch.setattr(reports, "write_all", lambda *a: calls.append(a) or write_all(*a))
  paths = evaluator.report(str(tmp_path))
  ((workdir, data, image, text, captions),) = calls
  # Whichever order the pair names them in, the image side is the image side.
  assert workdir == str(tmp_path) and data is test
  assert image is emb["image"] and text is emb["text"]
  assert captions == CaptionTokenizer().decode(test["text"]) and len(captions) == 24
  assert [os.path.basename(p) for p in paths] == [
      "recall_curves.png", "retrieval_grid.png", "embeddings_pca.png"]
  for p in paths:
    assert os.path.dirname(p) == str(tmp_path)
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("pair", [("image", "sketch"), ("sketch", "image")])
def test_retrieval_report_grids_another_modality_against_the_images(pair, tmp_path,
                                                                     monkeypatch):
  evaluator, encoders, test, emb = _retrieval_run(pair)
  evaluator(encoders)
  calls = []
  plot = reports.plot_query_grid
  monkeypatch.setattr(reports, "plot_query_grid",
                      lambda *a, **k: calls.append((a, k)) or plot(*a, **k))
  paths = evaluator.report(str(tmp_path))
  assert paths == [os.path.join(str(tmp_path), "retrieval_grid_sketch_image.png")]
  ((args, kwargs),) = calls
  queries, images, query_emb, image_emb, _, modality = args
  assert queries is test["sketch"] and images is test["image"]
  assert query_emb is emb["sketch"] and image_emb is emb["image"] and modality == "sketch"
  with open(paths[0], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_retrieval_report_skips_pairs_without_images(tmp_path):
  evaluator, encoders, _, _ = _retrieval_run(("sketch", "text"))
  evaluator(encoders)
  assert evaluator.report(str(tmp_path)) == []
  assert os.listdir(tmp_path) == []


def test_spectrogram_shows_a_tone_at_its_frequency():
  sr, f = 8000, 1000.0
  wave = np.sin(2 * np.pi * f * np.arange(sr) / sr)
  db = reports.spectrogram_db(wave, n_fft=256, hop=64)
  assert db.shape == (1 + (sr - 256) // 64, 129)
  assert (db.argmax(axis=1) == round(f / sr * 256)).all()
  assert reports.spectrogram_db(wave[:100], n_fft=256).shape == (1, 129)  # padded
