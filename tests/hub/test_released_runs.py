"""A released model through mmjax's commands: import, load, evaluate, fine-tune.

A random-weight SigLIP ("mu/8" sizes) is written as a big_vision .npz with a
sentencepiece vocabulary in c4_en's id layout trained on the shapes captions,
then imported with `python -m mmjax.import_weights`. Everything after that
must compute what `mmjax.hub.load` of the original file computes.
"""

import io
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import sentencepiece as spm
from flax.core import meta

from mmjax import hub
from mmjax.data import released_text, shapes
from mmjax.eval import retrieval
from mmjax.hub import big_vision, families, imported as imported_lib, workdir as workdir_lib
from mmjax.models import multi_tower
from tests import modules
from tests.subprocesses import ROOT, child_env
from tests.train import conftest as train_conftest
from tests.train.conftest import override, tiny_config

# The fixture, here too: the fine-tuning test runs the loop twice.
matmul_rate_once = train_conftest.matmul_rate_once

VARIANT = "mu/8"   # width 32, depth 1, mlp 128, 2 heads; patch 8
RES, TEXT_LEN = 32, 16


def _c4_layout_tokenizer(path: str) -> str:
  """A sentencepiece model with c4_en's special ids (pad 0, eos 1, unk 2)."""
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(shapes.caption_corpus(4000)), model_writer=model,
      vocab_size=64, model_type="bpe", hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2,
      bos_id=-1, num_threads=1, minloglevel=2)
  with open(path, "wb") as f:
    f.write(model.getvalue())
  return path


# Every test reads a workdir that `mmjax.import_weights` writes in a
# subprocess: the full suite runs them, the fast subset does not.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """(the .npz, its tokenizer, the imported workdir)."""
  root = tmp_path_factory.mktemp("released")
  vocab = _c4_layout_tokenizer(str(root / "c4_layout.model"))
  sizes = families.decode_variant(VARIANT)
  text = {k: v for k, v in sizes.items() if k != "patch_size"}
  text.update(vocab_size=spm.SentencePieceProcessor(model_file=vocab).get_piece_size(),
              context_length=TEXT_LEN, pad_id=1)
  kwargs = families.siglip(sizes, text, embed_dim=32, image_head=False, text_head=True,
                           scale=10.0, bias=-10.0)
  model = multi_tower.MultiTower(**kwargs)
  batch = {"image": np.zeros((1, RES, RES, 3), np.float32),
           "text": np.ones((1, TEXT_LEN), np.int32)}
  params = meta.unbox(model.init(jax.random.PRNGKey(3), batch)["params"])
  params = jax.tree.map(np.asarray, params)
  npz = str(root / "siglip_mu8.npz")
  big_vision.write(imported_lib.Imported(
      family="siglip", model=kwargs, params=params, image_size=RES, text={}, image={},
      source="test"), npz, scan=True)
  workdir = str(root / "imported")
  out = subprocess.run(
      [sys.executable, "-m", "mmjax.import_weights", npz, f"--workdir={workdir}",
       f"--variant={VARIANT}", f"--tokenizer={vocab}", f"--text_len={TEXT_LEN}"],
      cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout + out.stderr
  assert "Wrote siglip" in out.stdout
  return npz, vocab, workdir


@pytest.fixture(scope="module")
def models(files):
  npz, vocab, workdir = files
  return (hub.load(npz, variant=VARIANT, tokenizer=vocab, text_len=TEXT_LEN),
          hub.load(workdir))


def test_the_workdir_is_an_ordinary_run(files):
  _, _, workdir = files
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["0"]
  assert released_text.is_saved(os.path.join(workdir, "tokenizer"))
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  assert config["released"]["family"] == "siglip"
  assert config["data"]["context_length"] == TEXT_LEN and config["data"]["image_size"] == RES
  assert config["model"]["towers"]["text"]["pool"] == "last"
  assert config["loss"]["name"] == "sigmoid_contrastive"


def test_the_workdir_computes_what_the_file_does(models):
  from_file, from_workdir = models
  images = np.random.RandomState(0).randint(0, 256, (3, 40, 50, 3)).astype(np.uint8)
  texts = ["a big red circle left of a small blue square", "A Green Triangle!", ""]
  np.testing.assert_array_equal(from_file.tokenize(texts), from_workdir.tokenize(texts))
  pixels = from_file.preprocess_image(images)
  np.testing.assert_array_equal(pixels, from_workdir.preprocess_image(images))
  assert pixels.shape == (3, RES, RES, 3)
  np.testing.assert_array_equal(from_file.encode_image(pixels), from_workdir.encode_image(pixels))
  ids = from_file.tokenize(texts)
  np.testing.assert_array_equal(from_file.encode_text(ids), from_workdir.encode_text(ids))
  assert (from_file.logit_scale, from_file.logit_bias) == pytest.approx((10.0, -10.0))
  assert (from_workdir.logit_scale, from_workdir.logit_bias) == pytest.approx((10.0, -10.0))


def test_encode_refuses_the_wrong_shapes(models):
  model, _ = models
  with pytest.raises(ValueError, match="preprocess_image"):
    model.encode_image(np.zeros((1, RES + 8, RES + 8, 3), np.float32))
  with pytest.raises(ValueError, match=f"{TEXT_LEN} tokens"):
    model.encode_text(np.ones((1, TEXT_LEN + 1), np.int32))


def test_evaluate_scores_the_import_as_hub_load_does(files, models):
  """mmjax.evaluate on the imported workdir gives the retrieval metrics of
  hub.load's embeddings of the same test images and captions."""
  from mmjax import evaluate
  from mmjax.data import pipeline
  _, _, workdir = files
  config = _config("released_eval.py", workdir)
  config.eval.num_images = 40
  config.eval.reports = False
  result = evaluate.evaluate_workdir(config, workdir)
  assert result["step"] == 0
  model, _ = models
  test = pipeline.test_data(config, model.tokenizer)
  pixels = test["image"].astype(np.float32) / 127.5 - 1  # SigLIP: [-1, 1]
  ours = retrieval.retrieval_metrics(model.encode_image(pixels), model.encode_text(test["text"]),
                                     test["text_to_image"])
  for key in ("image_to_text_R@1", "text_to_image_R@5", "text_to_image_mean_rank"):
    assert result[key] == pytest.approx(ours[key], abs=1e-6), key


def _config(name: str, arg: str):
  return modules.from_file(os.path.join(ROOT, "experiments", name)).get_config(arg)


def _finetune_config(workdir: str, mode: str = "", **changes):
  config = _config("released_finetune.py", workdir + mode)
  config.batch_size = 8
  config.total_steps = 50
  config.log_every = 5
  config.checkpoint_every = 40
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 5
  config.eval.evaluators.retrieval.every = None  # evaluation is tested on its own below
  config.model.remat = False
  return override(config, **changes)


def _train_rows(workdir: str) -> dict:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.mark.usefixtures("matmul_rate_once")
def test_finetuning_runs_sharded_and_resumes_exactly(files, tmp_path):
  from mmjax.train import loop, warm_start
  _, _, imported = files
  config = _finetune_config(imported, **{"mesh.data": 4, "mesh.fsdp": 2, "mesh.tensor": 1})
  run = str(tmp_path / "run")
  loop.train_and_evaluate(config, run)
  losses = _train_rows(run)
  assert sorted(losses) == list(range(5, 51, 5))
  assert losses[50] < losses[5]  # it learns
  resumed = str(tmp_path / "resumed")
  os.makedirs(os.path.join(resumed, "checkpoints"))
  shutil.copytree(os.path.join(run, "checkpoints", "40"),
                  os.path.join(resumed, "checkpoints", "40"))
  loop.train_and_evaluate(config, resumed)
  again = _train_rows(resumed)
  assert sorted(again) == [45, 50]
  for step in again:
    assert again[step] == pytest.approx(losses[step], rel=1e-6), step
  a, b = warm_start.load_params(run), warm_start.load_params(resumed)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  # The fine-tuned run is still a released model: hub.load reads it.
  tuned = hub.load(run)
  assert tuned.family == "siglip" and tuned.context_length == TEXT_LEN


def test_the_locked_mode_freezes_exactly_the_image_side(files):
  """,locked freezes the image tower (SigLIP's has no projection) and nothing else."""
  from mmjax.train import build
  _, _, imported = files
  config = _finetune_config(imported, ",locked")
  tok = build.tokenizer(config, imported)
  model = build.model(config, tok)
  mask = build.freeze_mask(config, model, build.mesh(config))
  assert all(jax.tree.leaves(mask["image_tower"]))
  others = {k: v for k, v in mask.items() if k != "image_tower"}
  assert sorted(others) == ["bias", "log_scale", "text_proj", "text_tower"]
  assert not any(jax.tree.leaves(others))
  assert not _finetune_config(imported).optim.freeze


def test_import_refuses_a_workdir_with_checkpoints(files):
  npz, vocab, workdir = files
  imported = hub.read(npz, variant=VARIANT, tokenizer=vocab, text_len=TEXT_LEN)
  with pytest.raises(FileExistsError, match="new --workdir"):
    workdir_lib.write(imported, workdir)


def test_import_without_a_tokenizer_says_which_file(files, tmp_path):
  npz, _, _ = files
  imported = hub.read(npz, variant=VARIANT, text_len=TEXT_LEN)
  with pytest.raises(FileNotFoundError, match="--tokenizer"):
    workdir_lib.write(imported, str(tmp_path / "none"))
  assert not os.path.exists(tmp_path / "none" / "checkpoints")


def test_the_workdir_exports_to_hugging_face_and_back(files, tmp_path):
  from mmjax.hub import export_hf, hf, mapping
  _, _, workdir = files
  ours = hub.read(workdir)
  export_hf.export(ours, str(tmp_path / "hf"))
  back = hf.read(str(tmp_path / "hf"))
  assert back.family == "siglip"
  a, b = mapping.flatten(ours.params), mapping.flatten(back.params)
  assert sorted(a) == sorted(b)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_the_workdir_teaches_a_student_with_its_tokenizer(files):
  """--config.distill.teacher=DIR: the student reads the imported model's
  tokenizer and image size, and the teacher embeds its batches as hub.load does."""
  from mmjax.train import build, teacher as teacher_lib
  _, _, imported = files
  released = workdir_lib.read_config(imported)
  config = tiny_config(**{"data.tokenizer": released.data.tokenizer,
                          "data.image_size": RES, "data.context_length": TEXT_LEN,
                          "distill.teacher": imported,
                          "loss.terms": {"kl_alignment": 1.0}})
  tok = build.tokenizer(config, imported)
  teacher = teacher_lib.load(config, build.check(config), build.mesh(config), tok)
  assert teacher.step == 0
  ids = tok.encode(["a small red circle", "a big blue square"], TEXT_LEN)
  images = np.random.RandomState(1).randint(0, 256, (2, RES, RES, 3)).astype(np.uint8)
  out = teacher.outputs(teacher.params, {"image": images, "text": ids})
  model = hub.load(imported)
  np.testing.assert_allclose(out["teacher/z/text"], model.encode_text(ids), atol=2e-6)
  np.testing.assert_allclose(out["teacher/z/image"],
                             model.encode_image(images.astype(np.float32) / 127.5 - 1), atol=2e-6)
