"""The `heldout` evaluator: retrieval on the shapes test images captioned in
phrasings training never uses (mmjax/eval/evaluator.py, mmjax/eval/suite.py)."""

import jax
import numpy as np
import pytest

from mmjax.data import pipeline, shapes_heldout
from mmjax.eval import evaluator, retrieval, suite
from mmjax.train import build
from mmjax.train import state as state_lib

from tests.train.conftest import tiny_config


@pytest.fixture(scope="module")
def setup():
  # WordPiece: loads in a second, no tokenizer training; any tokenizer would do.
  config = tiny_config(**{"data.tokenizer": "minilm", "eval.num_images": 30,
                          "eval.batch_size": 32})
  tok = build.tokenizer(config, "/nonexistent-workdir")
  model = build.model(config, tok)
  ex = build.example_batch(config, batch_size=1)
  params = state_lib.init_params(model, jax.random.key(0), ex["image"], ex["text"])
  return config, tok, model, params


def _reference(config, tok, model, params, n):
  """Retrieval metrics of the held-out captions of the first n test images,
  computed directly from shapes_heldout.heldout_split."""
  split = shapes_heldout.heldout_split(image_size=config.data.image_size, num_images=1000)
  captions = split["captions"][:5 * n]
  img = model.apply({"params": params}, split["image"][:n], method=model.encode_image)
  txt = model.apply({"params": params}, tok.encode(captions, config.data.context_length),
                    method=model.encode_text)
  return retrieval.retrieval_metrics(np.asarray(img), np.asarray(txt),
                                     np.repeat(np.arange(n), 5))


def test_heldout_numbers_are_retrieval_metrics_on_heldout_captions(setup):
  config, tok, model, params = setup
  test = pipeline.test_data(config, tok)
  both, embeddings = suite.run(["retrieval", "heldout"], model, params, test, tok, config)
  want = _reference(config, tok, model, params, 30)
  assert {k for k in both if k.startswith("heldout/")} == (
      {f"heldout/{k}" for k in want} | {"heldout/truncated"})
  for key, value in want.items():
    np.testing.assert_allclose(both[f"heldout/{key}"], value, atol=1e-6, err_msg=key)
  assert both["heldout/truncated"] == 0.0
  # Alone (embedding the images itself) it gives the same numbers ...
  alone, no_embeddings = suite.run(["heldout"], model, params, test, tok, config)
  assert no_embeddings == {} and alone == {k: v for k, v in both.items()
                                           if k.startswith("heldout/")}
  # ... and the retrieval contract is untouched by it.
  plain, _ = suite.run(["retrieval"], model, params, test, tok, config)
  assert plain == {k: v for k, v in both.items() if not k.startswith("heldout/")}
  assert set(plain) == set(retrieval.retrieval_metrics(
      embeddings["image"], embeddings["text"], test["text_to_image"]))
  # The held-out captions are other captions of the same images.
  assert not np.array_equal(evaluator.heldout_data(config, tok)["text"], test["text"])
  np.testing.assert_array_equal(evaluator.heldout_data(config, tok)["image"], test["image"])


def test_truncated_counts_captions_cut_by_the_context(setup):
  config, tok, _, _ = setup
  config = config.copy_and_resolve_references()  # the fixture's is shared
  config.data.context_length = 12
  data = evaluator.heldout_data(config, tok)
  whole = tok.encode(data["captions"], 40)
  expected = float(np.mean((whole != tok.pad_id).sum(1) > 12))
  assert 0 < expected < 1 and data["truncated"] == expected
  assert data["text"].shape == (150, 12)


def test_heldout_is_a_shapes_evaluator_printed_as_a_table(setup):
  config, tok, model, params = setup
  on = tiny_config(**{"eval.evaluators.heldout": -1})
  suite.check(on)
  assert set(suite.due(on.eval.evaluators, 6, 6, 3)) == {"retrieval", "heldout"}
  assert suite.due(on.eval.evaluators, 3, 6, 3) == ["retrieval"]
  coco = tiny_config(**{"eval.evaluators.heldout": -1, "data.name": "coco"})
  with pytest.raises(ValueError, match="'heldout' evaluator needs the shapes dataset"):
    suite.check(coco)
  with pytest.raises(ValueError, match="held-out phrasings exist for the shapes dataset"):
    evaluator.heldout_data(coco, tok)
  result, _ = suite.run(["retrieval", "heldout"], model, params,
                        pipeline.test_data(config, tok), tok, config)
  text = suite.format_results({**result, "step": 6})
  tables = text.split("held-out phrasings:\n")
  assert len(tables) == 2
  assert tables[0].rstrip("\n") == retrieval.format_table(result)
  assert tables[1].startswith(retrieval.format_table(
      {k[len("heldout/"):]: v for k, v in result.items() if k.startswith("heldout/")}))
  assert "heldout/truncated" in tables[1] and "heldout/image_to_text_R@1" not in text
