"""A CoCa run end to end: contrastive + captioning terms trained together, the
captioning evaluator's scores and files, the --export-captions contract, and
the messages for captioning asked of a model that cannot caption."""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from mmjax import configs, losses
from mmjax.eval import caption_export, captioning, evaluators
from mmjax.losses import captioning as caption_loss
from mmjax.train import build, loop

from tests.train.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = """from tests.train.test_coca import coca_config
def get_config():
  return coca_config()
"""


def coca_config(**overrides):
  config = tiny_config(total_steps=6, eval_every=0, checkpoint_every=6, **overrides)
  config.model.heads.caption = dict(kind="caption_decoder", width=16, depth=1, num_heads=2)
  config.loss.terms.caption = caption_loss.term("caption", weight=2.0)
  config.eval.evaluators.captioning = dict(kind="captioning", every=-1, method="beam",
                                           beam_size=2, grid=4)
  return config


@pytest.fixture(scope="module")
def coca_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("coca"))
  config = coca_config(**{"eval.reports": True})  # captions.json and the grid are reports
  result = loop.train_and_evaluate(config, workdir)
  return workdir, result


@pytest.mark.slow  # trains a CoCa model end to end
def test_contrastive_and_caption_terms_train_together(coca_run):
  workdir, result = coca_run
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  logged = [r for r in rows if "train/loss/caption" in r]
  assert logged and all(r["train/loss/caption"] > 0 for r in logged)
  last = logged[-1]
  np.testing.assert_allclose(
      last["train/loss"], last["train/loss/sigmoid_contrastive"] + 2 * last["train/loss/caption"],
      rtol=1e-5)
  # Retrieval of the contrastive part and the caption scores, in one eval.json.
  saved = json.load(open(os.path.join(workdir, "eval.json")))
  for key in ("image_to_text_R@1", "captioning/CIDEr-D", "captioning/BLEU-4",
              "captioning/ROUGE-L", "captioning/mean_words"):
    assert key in saved and key in result
  assert 0 <= saved["captioning/BLEU-4"] <= 1 and saved["captioning/truncated_references"] == 0


@pytest.mark.slow  # trains a CoCa model end to end
def test_captions_are_coco_results_for_every_test_image(coca_run):
  workdir, _ = coca_run
  generated, refs = caption_export.read_coco_results(os.path.join(workdir, "captions.json"))
  raw = json.load(open(os.path.join(workdir, "captions.json")))
  assert [set(r) for r in raw] == [{"image_id", "caption"}] * 20
  assert sorted(generated) == list(range(20)) == sorted(refs)  # shapes_test_<i> -> i
  assert all(c.strip() for c in generated.values())
  assert all(len(r) == 5 for r in refs.values())
  assert os.path.getsize(os.path.join(workdir, "captions_grid.png")) > 0


@pytest.mark.slow  # trains a CoCa model end to end
def test_export_captions_cli(coca_run, tmp_path):
  workdir, _ = coca_run
  config_file = tmp_path / "coca.py"
  config_file.write_text(CONFIG)
  out_file = tmp_path / "out.json"
  out = subprocess.run(
      [sys.executable, "-m", "mmjax.evaluate", f"--config={config_file}",
       f"--workdir={workdir}", "--export-captions", str(out_file)],
      cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
  assert out.returncode == 0, out.stderr
  results = json.load(open(out_file))
  references = json.load(open(tmp_path / "out.references.json"))
  assert all(isinstance(r["image_id"], int) and r["caption"] for r in results)
  assert sorted(str(r["image_id"]) for r in results) == sorted(references)
  # Generation is deterministic: the export equals the run's own captions.
  assert results == json.load(open(os.path.join(workdir, "captions.json")))


def test_captioning_term_without_a_decoder_names_the_head():
  config = tiny_config()
  config.loss.terms.caption = caption_loss.term("caption")
  with pytest.raises(losses.LossConfigError,
                     match=r"head 'caption' the model does not have.*config.model.heads.caption"):
    build.check(config)


def test_captioning_evaluator_bad_settings_name_the_fix():
  tok = types.SimpleNamespace(vocab_size=50)
  context = evaluators.Context.without_data(tiny_config(), tokenizer=tok)
  with pytest.raises(evaluators.EvaluatorConfigError, match="beam_size=64 must be between"):
    captioning.Captioning(context, method="beam", beam_size=64)
  # Generation asked of a model with no decoder.
  evaluator = captioning.Captioning(context)
  plain = types.SimpleNamespace(model=types.SimpleNamespace(heads={}), params={})
  with pytest.raises(evaluators.EvaluatorConfigError, match="no such decoder.*caption_decoder"):
    evaluator.generate(plain, np.zeros((2, 16, 16, 3), np.uint8))
  with pytest.raises(configs.ConfigError, match="loss.weighting='learned'"):
    configs.validate(tiny_config(**{"loss.weighting": "learned"}))


def test_references_longer_than_the_context_are_counted(caplog):
  class Tok:  # one token per word, then EOS
    pad_id = 0

    def encode(self, texts, length):
      out = np.zeros((len(texts), length), np.int32)
      for row, text in zip(out, texts):
        ids = ([3] * len(text.split()))[:length - 1] + [2]
        row[:len(ids)] = ids
      return out

  evaluator = captioning.Captioning.__new__(captioning.Captioning)
  evaluator.context = types.SimpleNamespace(context_length=4)
  test = {"captions": np.asarray(["a b c", "a b c d", "a b c d e f"])}
  assert evaluator._truncated(test, Tok()) == 2  # 5 and 7 tokens > 4
  assert "2 of 3 reference captions are longer than data.context_length=4" in caplog.text
