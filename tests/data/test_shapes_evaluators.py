"""The shapes-only evaluators (mmjax/data/shapes_evaluators.py) on a tiny model:
`heldout`, retrieval on the shapes test images captioned in phrasings training
never uses; `zeroshot`; and `itm`, image-text matching heads on the frozen towers."""

import dataclasses

import jax
import numpy as np
import pytest

from mmjax.data import shapes, shapes_evaluators, shapes_heldout, shapes_zeroshot
from mmjax.eval import evaluators, retrieval
from mmjax.eval.evaluators import EvaluatorConfigError
from mmjax.eval.retrieval_evaluator import Retrieval
from mmjax.models.heads import fusion
from mmjax.train import build
from mmjax.train import state as state_lib

from tests.train.conftest import tiny_config

# Retrieval and held-out retrieval on; zeroshot and itm off.
EVALUATORS = {"retrieval": 0, "heldout": -1}
ITM_METRICS = ("accuracy", "precision", "recall", "f1", "auc")


@pytest.fixture(scope="module")
def setup():
  # WordPiece: loads in a second, no tokenizer training; any tokenizer would do.
  config = tiny_config(**{"data.tokenizer": "minilm", "eval.num_images": 30,
                          "eval.batch_size": 32, "eval.evaluators": EVALUATORS})
  tok = build.tokenizer(config, "/nonexistent-workdir")
  model = build.model(config, tok)
  ex = build.example_batch(config, batch_size=1)
  params = jax.jit(lambda rng: state_lib.init_params(model, rng, ex))(jax.random.key(0))
  context = evaluators.Context.for_run(config, tok)
  return config, tok, model, params, context


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


def _counting_batched(monkeypatch):
  """Counts the encoder passes of Encoders (one `batched` call per array)."""
  calls = []
  real = evaluators.batched
  monkeypatch.setattr(evaluators, "batched",
                      lambda fn, x, b: calls.append(len(x)) or real(fn, x, b))
  return calls


# --- heldout --------------------------------------------------------------------------


def test_heldout_numbers_are_retrieval_metrics_on_heldout_captions(setup, monkeypatch):
  config, tok, model, params, context = setup
  built = evaluators.build_all(config, context, ("image", "text"))
  assert {k: type(v) for k, v in built.items()} == {
      "retrieval": Retrieval, "heldout": shapes_evaluators.HeldOut}
  calls = _counting_batched(monkeypatch)
  run = lambda ids: evaluators.run(built, ids, model, params, config.eval.batch_size)
  both = run(["retrieval", "heldout"])
  # The test images are encoded once, for both: 30 images, 150 + 150 captions.
  assert sorted(calls) == [30, 150, 150]
  want = _reference(config, tok, model, params, 30)
  assert {k for k in both if k.startswith("heldout/")} == (
      {f"heldout/{k}" for k in want} | {"heldout/truncated"})
  for key, value in want.items():
    np.testing.assert_allclose(both[f"heldout/{key}"], value, atol=1e-6, err_msg=key)
  assert both["heldout/truncated"] == 0.0
  # Alone (embedding the images itself) it gives the same numbers ...
  calls.clear()
  alone = run(["heldout"])
  assert sorted(calls) == [30, 150]
  assert alone == {k: v for k, v in both.items() if k.startswith("heldout/")}
  # ... and the retrieval contract is untouched by it.
  plain = run(["retrieval"])
  assert plain == {k: v for k, v in both.items() if not k.startswith("heldout/")}
  last = built["retrieval"].last
  assert plain == retrieval.retrieval_metrics(last["image"], last["text"],
                                              context.test["text_to_image"])
  # The held-out captions are other captions of the same images.
  data = shapes_evaluators.heldout_data(context)
  assert not np.array_equal(data["text"], context.test["text"])
  np.testing.assert_array_equal(data["image"], context.test["image"])


def test_heldout_data(setup):
  config, tok, _, _, context = setup
  data = shapes_evaluators.heldout_data(context)
  assert set(data) == {"image", "text", "text_to_image", "captions", "truncated"}
  assert data["image"].shape == (30, 16, 16, 3) and data["image"].dtype == np.uint8
  assert data["text"].shape == (150, config.data.context_length)
  np.testing.assert_array_equal(data["text_to_image"], np.repeat(np.arange(30), 5))
  assert data["text_to_image"].dtype == np.int32
  split = shapes_heldout.heldout_split(image_size=16, num_images=1000)
  assert data["captions"] == split["captions"][:150]
  np.testing.assert_array_equal(data["text"], tok.encode(data["captions"], 24))
  assert shapes_evaluators.HELDOUT == "heldout/"


def test_truncated_counts_captions_cut_by_the_context(setup):
  _, tok, _, _, context = setup
  short = dataclasses.replace(context, context_length=12)  # the fixture's is shared
  data = shapes_evaluators.heldout_data(short)
  whole = tok.encode(data["captions"], 40)
  expected = float(np.mean((whole != tok.pad_id).sum(1) > 12))
  assert 0 < expected < 1 and data["truncated"] == expected
  assert data["text"].shape == (150, 12)


def test_heldout_is_a_shapes_evaluator_printed_as_a_table(setup):
  config, tok, model, params, context = setup
  on = tiny_config(**{"eval.evaluators": EVALUATORS})
  built = evaluators.build_all(on, evaluators.Context.without_data(on), ("image", "text"))
  assert {k: type(v) for k, v in built.items()} == {
      "retrieval": Retrieval, "heldout": shapes_evaluators.HeldOut}
  assert built["heldout"].modalities == ("image", "text")
  assert set(evaluators.due(on.eval.evaluators, 6, 6, 3)) == {"retrieval", "heldout"}
  assert evaluators.due(on.eval.evaluators, 3, 6, 3) == ["retrieval"]
  coco = tiny_config(**{"eval.evaluators": EVALUATORS, "data.name": "coco"})
  refused = (r"the 'heldout' evaluator is defined on the shapes dataset's scenes, not "
             r"'coco'; remove it from config.eval.evaluators")
  with pytest.raises(EvaluatorConfigError, match=refused):
    evaluators.build_all(coco, evaluators.Context.without_data(coco), ("image", "text"))
  with pytest.raises(EvaluatorConfigError, match=refused):
    shapes_evaluators.HeldOut(dataclasses.replace(context, data_name="coco"))
  built = evaluators.build_all(config, context, ("image", "text"))
  result = evaluators.run(built, ["retrieval", "heldout"], model, params,
                          config.eval.batch_size)
  text = evaluators.format_results({**result, "step": 6})
  held = {k[len("heldout/"):]: v for k, v in result.items() if k.startswith("heldout/")}
  contract = {k: v for k, v in result.items() if not k.startswith("heldout/")}
  assert text.splitlines() == [
      *retrieval.format_table(contract).splitlines(),
      "heldout/image <-> text:",
      *retrieval.format_table(held).splitlines(),
      "heldout/truncated  0.0000"]
  assert "heldout/image_to_text_R@1" not in text and "step" not in text


# --- zeroshot -------------------------------------------------------------------------

ZEROSHOT_KEYS = {
    "zeroshot/shape_top1", "zeroshot/shape_top5", "zeroshot/shape_mean_per_class",
    "zeroshot/colour_top1", "zeroshot/colour_top5", "zeroshot/colour_mean_per_class",
    "zeroshot/relation_top1", "zeroshot/relation_mean_per_class"}


def test_zeroshot_evaluator_with_a_tiny_model(setup):
  config, tok, model, params, context = setup
  evaluator = shapes_evaluators.ZeroShot(context)
  assert evaluator.modalities == ("image", "text")
  encoders = evaluators.Encoders(model, params, config.eval.batch_size)
  out = evaluator(encoders)
  assert set(out) == ZEROSHOT_KEYS
  assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in out.values())
  assert out["zeroshot/shape_top5"] >= out["zeroshot/shape_top1"]
  assert out["zeroshot/colour_top5"] >= out["zeroshot/colour_top1"]
  # The first eval.num_images test images and their scenes, scored by shapes_zeroshot.
  split = shapes.test_split(image_size=16, num_images=1000)
  assert out == shapes_zeroshot.evaluate(
      lambda x: encoders.encode("image", x), lambda x: encoders.encode("text", x), tok,
      np.asarray(split["image"][:30]), split["scenes"][:30], config.data.context_length,
      config.eval.batch_size)
  fresh = evaluators.Encoders(model, params, config.eval.batch_size)
  assert shapes_evaluators.ZeroShot(context)(fresh) == out
  with pytest.raises(EvaluatorConfigError, match="the 'zeroshot' evaluator is defined on "
                                                 "the shapes dataset's scenes, not 'coco'"):
    shapes_evaluators.ZeroShot(dataclasses.replace(context, data_name="coco"))


def test_zeroshot_classifies_another_view_of_the_scenes(setup):
  """modality="audio": the test split's audio field is classified against the
  same prompts, under its own prefix."""
  config, tok, _, _, context = setup
  sounds = np.random.default_rng(0).normal(size=(30, 7)).astype(np.float32)
  context = dataclasses.replace(context, inputs={**context.inputs, "audio": "audio"},
                                load_test=lambda: {"audio": sounds})
  rng = np.random.default_rng(1)
  table = {}

  class Encoders:  # any fixed embedding per row will do
    def encode(self, modality, x):
      key = (modality, np.asarray(x).tobytes())
      if key not in table:
        table[key] = rng.normal(size=(len(x), 4)).astype(np.float32)
      return table[key]

  evaluator = shapes_evaluators.ZeroShot(context, modality="audio")
  assert evaluator.modalities == ("audio", "text")
  out = evaluator(Encoders())
  assert set(out) == {k.replace("zeroshot/", "zeroshot_audio/") for k in ZEROSHOT_KEYS}
  split = shapes.test_split(image_size=16, num_images=1000)
  assert out == shapes_zeroshot.evaluate(
      lambda x: Encoders().encode("audio", x), lambda x: Encoders().encode("text", x), tok,
      sounds, split["scenes"][:30], config.data.context_length, config.eval.batch_size,
      prefix="zeroshot_audio/")
  with pytest.raises(EvaluatorConfigError, match="classify prompts with prompts"):
    shapes_evaluators.ZeroShot(context, modality="text")


# --- itm ------------------------------------------------------------------------------


def test_itm_settings_reject_unknown_keys(setup):
  context = setup[-1]
  assert shapes_evaluators.ITM_DEFAULTS == {"num_train": 2000, "steps": 1000,
                                            "batch_size": 256, "top_k": 16,
                                            "easy_fraction": 0.0}
  with pytest.raises(EvaluatorConfigError, match=(
      r"the itm evaluator has unknown keys \['step'\]; known: \['batch_size', "
      r"'easy_fraction', 'num_train', 'steps', 'top_k'\] and kinds")):
    shapes_evaluators.Matching(context, step=10)
  default = shapes_evaluators.Matching(context)
  assert default.settings == shapes_evaluators.ITM_DEFAULTS
  assert default.kinds == tuple(fusion.HEADS) and default.modalities == ("image", "text")
  chosen = shapes_evaluators.Matching(context, kinds=["weighted_sum"], steps=10)
  assert chosen.settings == {**shapes_evaluators.ITM_DEFAULTS, "steps": 10}
  assert chosen.kinds == ("weighted_sum",)
  with pytest.raises(ValueError, match="unknown ITM head 'bilinear'.*concat_mlp"):
    shapes_evaluators.Matching(context, kinds=("bilinear",))
  with pytest.raises(EvaluatorConfigError, match="the 'itm' evaluator is defined on "
                                                 "the shapes dataset's scenes, not 'coco'"):
    shapes_evaluators.Matching(dataclasses.replace(context, data_name="coco"))


def test_itm_settings_come_from_the_evaluator_entry():
  config = tiny_config(**{"eval.evaluators": {"itm": {
      "kind": "itm", "every": -1, "steps": 10, "kinds": ("concat_mlp", "cross_attention")}}})
  (matching,) = evaluators.build_all(config, evaluators.Context.without_data(config),
                                     ("image", "text")).values()
  assert isinstance(matching, shapes_evaluators.Matching)
  assert matching.settings == {**shapes_evaluators.ITM_DEFAULTS, "steps": 10}
  assert matching.kinds == ("concat_mlp", "cross_attention")
  config.eval.evaluators.itm.step = 10
  with pytest.raises(EvaluatorConfigError, match=r"unknown keys \['step'\]"):
    evaluators.build_all(config, evaluators.Context.without_data(config), ("image", "text"))


def test_scene_groups_number_equal_scenes_alike():
  scenes = shapes.test_split(image_size=16, num_images=1000)["scenes"][:300]
  groups = shapes_evaluators.scene_groups(scenes)
  assert groups.shape == (300,)
  keys = [shapes.canonical(s) for s in scenes]
  for i in range(300):
    for j in range(i):
      assert (groups[i] == groups[j]) == (keys[i] == keys[j])
  # Numbered 0, 1, ... in order of first appearance.
  first = list(dict.fromkeys(groups.tolist()))
  assert first == list(range(len(first)))
  assert len(first) < 300  # the split has duplicate scenes, which is why groups exist
  assert shapes_evaluators.scene_groups([scenes[1], scenes[0], scenes[1]]).tolist() == [0, 1, 0]


def test_itm_train_data_keeps_every_caption(setup):
  config, tok, _, _, context = setup
  data = shapes_evaluators.itm_train_data(context, 4)
  examples = [shapes.example(config.seed, "train", i, 16) for i in range(4)]
  per = len(examples[0]["captions"])
  assert per == 5
  assert set(data) == {"image", "text", "text_to_image", "group"}
  np.testing.assert_array_equal(data["image"], np.stack([e["image"] for e in examples]))
  np.testing.assert_array_equal(
      data["text"], tok.encode([c for e in examples for c in e["captions"]], 24))
  np.testing.assert_array_equal(data["text_to_image"], np.repeat(np.arange(4), per))
  assert data["text_to_image"].dtype == np.int32
  np.testing.assert_array_equal(
      data["group"], shapes_evaluators.scene_groups([e["scene"] for e in examples]))


def test_itm_evaluator_on_shapes(setup):
  config, _, model, params, context = setup
  evaluator = shapes_evaluators.Matching(context, num_train=12, steps=2, batch_size=8)
  metrics = evaluator(evaluators.Encoders(model, params, config.eval.batch_size))
  assert set(metrics) == {"itm/contrastive/auc"} | {
      f"itm/{kind}/{m}" for kind in fusion.HEADS for m in ITM_METRICS}
  assert all(np.isfinite(v) and 0.0 <= v <= 1.0 for v in metrics.values())
