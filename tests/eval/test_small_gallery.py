"""A test split smaller than a recall@K's K: that R@K is left out and named,
never an error after training; settings that cannot evaluate fail at start-up."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from mmjax import configs
from mmjax.data import pipeline, prepare
from mmjax.eval import evaluators, gallery, retrieval
from mmjax.eval.evaluators import EvaluatorConfigError
from mmjax.eval.retrieval_evaluator import Retrieval
from mmjax.train import build
from mmjax.train import state as state_lib

from tests.train.conftest import tiny_config

RANKS = {f"{d}_{r}_rank" for d in ("image_to_text", "text_to_image")
         for r in ("mean", "median")}
SMALL_KEYS = {"image_to_text_R@1", "image_to_text_R@5", "image_to_text_R@10",
              "text_to_image_R@1", "text_to_image_R@5", *RANKS}


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
  """Each test sees its warnings printed: the once-per-process memory starts empty."""
  monkeypatch.setattr(gallery, "_WARNED", set())


def _eight_images(seed=0, captions=3, d=6):
  """8 images with `captions` captions each (interleaved), noisy unit embeddings."""
  rng = np.random.default_rng(seed)
  t2i = np.tile(np.arange(8, dtype=np.int32), captions)
  img = rng.normal(size=(8, d))
  txt = img[t2i] + 2.0 * rng.normal(size=(len(t2i), d))  # imperfect: R@1 < R@5 < 1
  unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  return unit(img), unit(txt), t2i


def _sorted_recall(img, txt, t2i, k):
  """R@K both ways from argsort of the whole similarity matrix (no ties in this data)."""
  sim = img.astype(np.float64) @ txt.astype(np.float64).T  # [N, M]
  by_image = np.argsort(-sim, axis=1)[:, :k]  # each image's top-k captions
  i2t = np.mean([np.any(t2i[top] == i) for i, top in enumerate(by_image)])
  by_text = np.argsort(-sim.T, axis=1)[:, :k]  # each caption's top-k images
  t2i_hits = np.mean([t2i[j] in top for j, top in enumerate(by_text)])
  return i2t, t2i_hits


# --- retrieval_metrics ----------------------------------------------------------------


def test_eight_images_report_r1_and_r5_and_name_r10(capsys):
  img, txt, t2i = _eight_images()
  got = retrieval.retrieval_metrics(img, txt, t2i)
  # 24 captions: every image->text K fits; 8 images: text->image R@10 does not.
  assert set(got) == SMALL_KEYS
  for k in (1, 5, 10):
    i2t, t2i_r = _sorted_recall(img, txt, t2i, k)
    assert got[f"image_to_text_R@{k}"] == pytest.approx(i2t, abs=1e-12)
    if k < 10:
      assert got[f"text_to_image_R@{k}"] == pytest.approx(t2i_r, abs=1e-12)
  assert 0 < got["text_to_image_R@1"] < got["text_to_image_R@5"] < 1  # not trivial
  assert 0 < got["image_to_text_R@1"] < got["image_to_text_R@5"] < 1
  printed = capsys.readouterr().out
  assert "text_to_image_R@10 left out: the gallery has 8 images" in printed
  assert "image_to_text" not in printed
  # Once: the next evaluation of the same galleries says nothing more.
  assert retrieval.retrieval_metrics(img, txt, t2i) == got
  assert capsys.readouterr().out == ""


def test_both_directions_can_lose_keys():
  img, txt, t2i = _eight_images(captions=1)  # 8 captions, 8 images
  got = retrieval.retrieval_metrics(img[:4], txt[:4], t2i[:4], warn=False)
  assert set(got) == {"image_to_text_R@1", "text_to_image_R@1", *RANKS}


def test_left_out_names_each_key_with_its_gallery():
  assert gallery.left_out(8, 24) == {"text_to_image_R@10": "8 images"}
  assert gallery.left_out(10, 10) == {}  # K = gallery size fits
  left = gallery.left_out(2, 6)
  assert left == {"image_to_text_R@10": "6 captions", "text_to_image_R@5": "2 images",
                  "text_to_image_R@10": "2 images"}
  assert gallery.left_out_message(left) == (
      "image_to_text_R@10 left out: the gallery has 6 captions; text_to_image_R@5, "
      "text_to_image_R@10 left out: the gallery has 2 images")
  assert gallery.reported(left) == ["image_to_text_R@1", "image_to_text_R@5",
                                      "text_to_image_R@1"]


def test_explicit_ks_must_still_fit():
  img, txt, t2i = _eight_images()
  with pytest.raises(ValueError, match=r"K=10 .*text_to_image gallery \(8 images\)"):
    retrieval.retrieval_metrics(img, txt, t2i, ks=(1, 10))


# --- printing results with a key left out ---------------------------------------------


def test_tables_show_a_left_out_recall_as_a_dash():
  img, txt, t2i = _eight_images()
  got = retrieval.retrieval_metrics(img, txt, t2i, warn=False)
  lines = retrieval.format_table(got).splitlines()
  assert lines[0].split() == ["R@1", "R@5", "R@10", "mean_rank", "median_rank"]
  assert lines[1].split()[3] == f"{got['image_to_text_R@10']:.4f}"
  assert lines[2].split()[:4] == ["text->image", f"{got['text_to_image_R@1']:.4f}",
                                  f"{got['text_to_image_R@5']:.4f}", "-"]
  assert len({len(line) for line in lines}) == 1  # still aligned
  # format_results: the contract's table and a prefixed one, nothing as a loose line.
  held = {f"heldout/{k}": v for k, v in got.items()}
  text = evaluators.format_results({**got, **held, "step": 5}).splitlines()
  assert text == [*lines, "heldout/image <-> text:", *lines]


# --- the evaluators -------------------------------------------------------------------


class _Encoders:
  """Hand-made embeddings by test-split field."""

  def __init__(self, emb):
    self.emb = emb

  def encode(self, modality, x):
    del x
    return self.emb[modality]


def _context(num_images=-1, captions=3):
  img, txt, t2i = _eight_images(captions=captions)
  sketch = np.roll(img, 1, axis=1)
  test = {"image": np.zeros((8, 4, 4, 3), np.uint8), "sketch": np.zeros((8, 4, 4, 1)),
          "text": np.zeros((len(t2i), 5), np.int32), "text_to_image": t2i}
  context = evaluators.Context(
      data_name="coco", image_size=4, context_length=5, seed=0,
      inputs={"image": "image", "text": "text", "sketch": "sketch"},
      fields=("image", "text", "sketch"), batch_size=4, num_images=num_images,
      load_test=lambda: test, test_split_size=8)
  return context, _Encoders({"image": img, "text": txt, "sketch": sketch})


@pytest.mark.parametrize("pair", [("image", "text"), ("text", "image")])
def test_retrieval_evaluator_names_what_it_leaves_out_at_construction(pair, capsys):
  context, encoders = _context()
  evaluator = Retrieval(context, pair=pair)
  printed = capsys.readouterr().out
  assert ("text_to_image_R@10 left out: the gallery has 8 images (R@K needs a gallery of "
          "at least K items); reported: text_to_image_R@1, text_to_image_R@5, over all 8 "
          "test images.") in printed
  result = evaluator(encoders)
  assert set(result) == SMALL_KEYS
  assert capsys.readouterr().out == ""  # named once, at start-up
  img, txt, t2i = (encoders.emb["image"], encoders.emb["text"],
                   context.test["text_to_image"])
  assert result == retrieval.retrieval_metrics(img, txt, t2i)


def test_retrieval_evaluator_warns_under_its_own_names(capsys):
  context, encoders = _context()
  evaluator = Retrieval(context, pair=("image", "sketch"))
  printed = capsys.readouterr().out
  assert ("image_to_sketch_R@10 left out: the gallery has 8 sketch items; "
          "sketch_to_image_R@10 left out: the gallery has 8 images") in printed
  result = evaluator(encoders)
  assert {k for k in result if "_R@" in k} == {
      f"{d}_R@{k}" for d in ("image_to_sketch", "sketch_to_image") for k in (1, 5)}
  assert capsys.readouterr().out == ""


def test_retrieval_evaluator_learns_the_captions_at_the_first_evaluation(capsys):
  # One caption per image: the caption gallery (8) is known only once read.
  context, encoders = _context(captions=1)
  evaluator = Retrieval(context)
  assert "image_to_text" not in capsys.readouterr().out
  result = evaluator(encoders)
  assert "image_to_text_R@10" not in result and "image_to_text_R@5" in result
  assert ("image_to_text_R@10 left out: the gallery has 8 captions"
          in capsys.readouterr().out)


# --- start-up checks ------------------------------------------------------------------


def test_eight_shapes_images_pass_the_check_and_build(capsys):
  config = tiny_config(**{"eval.num_images": 8, "eval.batch_size": 8,
                          "eval.evaluators.heldout.every": -1})
  build.check(config)
  printed = capsys.readouterr().out
  assert ("text_to_image_R@10 left out: the gallery has 8 images (R@K needs a gallery of "
          "at least K items); reported: text_to_image_R@1, text_to_image_R@5, over the "
          "first 8 of 1000 test images (config.eval.num_images=8).") in printed
  assert "heldout/text_to_image_R@10 left out: the gallery has 8 images" in printed
  built = evaluators.build_all(config, evaluators.Context.without_data(config),
                               ("image", "text"))
  assert sorted(built) == ["heldout", "retrieval"]
  assert capsys.readouterr().out == ""  # setup builds them again: no second warning


@pytest.mark.parametrize("key, value, pattern", [
    ("eval.num_images", 0, r"config.eval.num_images=0 must be a positive integer.*-1 for "
                           r"the whole test split"),
    ("eval.num_images", -2, r"config.eval.num_images=-2 must be a positive integer"),
    ("eval.batch_size", 0, r"config.eval.batch_size=0 must be a positive integer; set "
                           r"--config.eval.batch_size=N"),
])
def test_eval_settings_that_cannot_evaluate_fail_at_check(key, value, pattern):
  with pytest.raises(configs.ConfigError, match=pattern):
    build.check(tiny_config(**{key: value}))


def test_an_empty_test_split_fails_at_check(monkeypatch):
  monkeypatch.setattr(pipeline, "test_split_size", lambda data_cfg: 0)
  with pytest.raises(configs.ConfigError, match=(
      r"the test split config.data.eval_split='test' of dataset "
      r"config.data.name='shapes' holds no images.*--config.data.eval_split")):
    build.check(tiny_config(**{"eval.num_images": -1}))


def test_an_evaluation_batch_larger_than_the_split_is_fine():
  build.check(tiny_config(**{"eval.num_images": 8, "eval.batch_size": 500}))


@pytest.mark.parametrize("overrides, pattern", [
    ({"eval.num_images": 1}, r"config.eval.num_images=1: the itm evaluator .* at least 2 "
                             r"test images"),
    ({"eval.evaluators.itm.top_k": 0}, r"itm evaluator's top_k=0 must be an integer >= 1"),
    ({"eval.evaluators.itm.num_train": 1}, r"num_train=1 must be an integer >= 2"),
    ({"eval.evaluators.itm.easy_fraction": 1.5}, r"easy_fraction=1.5 must be a fraction"),
])
def test_itm_settings_that_fail_after_training_fail_at_check(overrides, pattern):
  config = tiny_config(**{"eval.evaluators.itm.every": -1})
  with config.unlocked():
    for key, value in overrides.items():
      node = config
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
  with pytest.raises(EvaluatorConfigError, match=pattern):
    build.check(config)


# --- the case: a prepared Karpathy-format set with 8 test images ----------------


@pytest.fixture(scope="module")
def eight_test_images(tmp_path_factory):
  """A prepared dataset of 2 train and 8 test images, 3 captions each."""
  root = str(tmp_path_factory.mktemp("karpathy"))
  os.makedirs(os.path.join(root, "photos"))
  images = []
  for i in range(10):
    Image.new("RGB", (40 + 2 * i, 36), (25 * i, 255 - 25 * i, 90)).save(
        os.path.join(root, "photos", f"{i}.jpg"))
    images.append({"filepath": "photos", "filename": f"{i}.jpg", "imgid": i,
                   "split": "train" if i < 2 else "test",
                   "sentences": [{"raw": f"photo {i} version {v}"} for v in range(3)]})
  with open(os.path.join(root, "dataset.json"), "w") as f:
    json.dump({"images": images}, f)
  data_dir = os.path.join(root, "tfds")
  prepare.prepare("coco_karpathy", os.path.join(root, "dataset.json"), root, data_dir,
                  name="eight", progress=False, log=lambda *_: None)
  return data_dir


def test_a_prepared_set_of_8_test_images_checks_and_evaluates(eight_test_images, capsys):
  config = tiny_config(**{"data.name": "eight", "data.data_dir": eight_test_images,
                          # WordPiece: loads in a second, no tokenizer training.
                          "data.tokenizer": "minilm", "eval.num_images": -1})
  build.check(config)
  assert ("text_to_image_R@10 left out: the gallery has 8 images (R@K needs a gallery of "
          "at least K items); reported: text_to_image_R@1, text_to_image_R@5, over all 8 "
          "test images.") in capsys.readouterr().out
  tok = build.tokenizer(config, "/nonexistent-workdir")
  model = build.model(config, tok)
  params = jax.jit(lambda rng: state_lib.init_params(
      model, rng, build.example_batch(config, batch_size=1)))(jax.random.key(0))
  built = evaluators.build_all(config, evaluators.Context.for_run(config, tok),
                               tuple(config.model.towers))
  result = evaluators.run(built, ["retrieval"], model, params, config.eval.batch_size)
  assert set(result) == SMALL_KEYS
  assert capsys.readouterr().out == ""  # named at start-up, not again
  assert "text->image" in evaluators.format_results(result)
