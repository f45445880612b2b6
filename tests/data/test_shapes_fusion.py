"""The shapes fusion evaluator (mmjax/data/shapes_fusion.py): task labels in
reading order, its training examples, its settings, and a run on a tiny
image / text / sketch model.

The run uses the head options, training settings and feature shapes of
tests/train/test_fusion.py, so both files compile the same head programs once
per session (the shared compilation cache of tests/conftest.py)."""

import dataclasses

import jax
import numpy as np
import pytest

from mmjax.data import shapes, shapes_fusion, shapes_views
from mmjax.eval import evaluators
from mmjax.eval.evaluators import EvaluatorConfigError
from mmjax.models.heads import fusion_n
from mmjax.train import build, matching
from mmjax.train import state as state_lib

from tests.train.conftest import tiny_config
from tests.train.test_fusion import MODALITIES, OPTIONS, SETTINGS

METRICS = ("accuracy", "precision", "recall", "f1", "auc")
# 256 training scenes in batches of 64, as test_fusion.py's synthetic features.
RUN = dict(num_train=256, steps=3, batch_size=SETTINGS["batch_size"], lr=SETTINGS["lr"],
           head_options=OPTIONS)


@pytest.fixture(scope="module")
def setup():
  # Encoder batches of 30 = the 30 test images: every tower compiles one shape.
  config = tiny_config(**{"data.tokenizer": "minilm", "eval.num_images": 30,
                          "eval.batch_size": 30, "data.fields": ("sketch",)})
  config.model.towers.sketch = dict(kind="vit", input="sketch", patch_size=8, width=16,
                                    depth=1, num_heads=2, pool="gap")
  tok = build.tokenizer(config, "/nonexistent-workdir")
  model = build.model(config, tok)
  ex = build.example_batch(config, batch_size=1)
  params = jax.jit(lambda rng: state_lib.init_params(model, rng, ex))(jax.random.key(0))
  return config, model, params, evaluators.Context.for_run(config, tok)


def _obj(colour, shape):
  return shapes.Obj(colour, shape, "small", 0.5, 0.5, 0.11)


@pytest.mark.parametrize("relation, first", [("left", 0), ("above", 0), ("right", 1),
                                             ("below", 1)])
def test_the_first_object_is_the_left_or_upper_one(relation, first):
  objs = (_obj("red", "circle"), _obj("cyan", "ring"))
  scene = shapes.Scene(objs, relation=relation)
  assert shapes_fusion.first_object(scene) == objs[first]
  layout = 1 if relation in ("left", "right") else 2
  colours, names = tuple(shapes.COLOURS), shapes.SHAPES
  want = {"colour": colours.index(objs[first].colour), "shape": names.index(objs[first].shape),
          "layout": layout}
  for task, label in want.items():
    assert shapes_fusion.labels(task, [scene]).tolist() == [label]
    assert shapes_fusion.TASKS[task][0][label] in (objs[first].colour, objs[first].shape,
                                                   shapes_fusion.LAYOUTS[layout])


def test_a_lone_object_is_first_and_labels_cover_the_test_split():
  lone = shapes.Scene((_obj("blue", "cross"),), cell=(2, 0))
  assert [shapes_fusion.labels(t, [lone]).item() for t in ("colour", "shape", "layout")] == [
      2, 4, 0]
  scenes = shapes.test_split(image_size=16)["scenes"]
  for task, (names, _) in shapes_fusion.TASKS.items():
    y = shapes_fusion.labels(task, scenes)
    assert y.dtype == np.int32 and set(y.tolist()) == set(range(len(names))), task


def test_train_examples_have_one_caption_and_the_fields(setup):
  config, _, _, context = setup
  fields = ["image", "text", "sketch", *(["audio"] if "audio" in shapes_views.FIELDS else [])]
  data = shapes_fusion.train_examples(context, 4, fields)
  examples = [shapes.example(config.seed, "train", i, 16) for i in range(4)]
  assert data["scenes"] == [e["scene"] for e in examples]
  np.testing.assert_array_equal(data["image"], np.stack([e["image"] for e in examples]))
  assert data["text"].shape == (4, 24) and data["text"].dtype == np.int32
  for row, e in zip(data["text"], examples):  # one of its own captions
    assert any(np.array_equal(row, c) for c in context.tokenizer.encode(e["captions"], 24))
  for field in fields[2:]:  # sketch, and the sound once shapes_views has it
    np.testing.assert_array_equal(
        data[field], shapes_views.FIELDS[field](data["image"], data["scenes"]))


def test_settings_are_checked_before_anything_runs(setup):
  context = setup[-1]
  default = shapes_fusion.Fusion(context)
  assert default.modalities == MODALITIES  # all towers, in the config's (sorted) order
  assert default.tasks == ("colour",)
  assert default.heads == tuple(fusion_n.HEADS) and default.single == "concat_mlp"
  assert default.settings == shapes_fusion.FUSION_DEFAULTS
  assert default.fields == {"image": "image", "text": "text", "sketch": "sketch"}
  chosen = shapes_fusion.Fusion(context, modalities=["text", "sketch"], task=("shape", "layout"),
                                heads=["weighted_sum"], single=None, steps=5)
  assert (chosen.modalities, chosen.tasks, chosen.heads) == (
      ("text", "sketch"), ("shape", "layout"), ("weighted_sum",))
  assert chosen.settings["steps"] == 5 and chosen.single is None
  bad = [({"step": 5}, r"unknown keys \['step'\]"),
         ({"num_train": 1}, "num_train=1 must be an integer >= 2"),
         ({"batch_size": 0.5}, "batch_size=0.5 must be an integer >= 1"),
         ({"lr": 0}, "lr=0 must be a positive number"),
         ({"task": "size"}, r"task='size'.*\('colour', 'shape', 'layout'\)"),
         ({"heads": ["concat_mlp", "concat_mlp"]}, "distinct names"),
         ({"modalities": ("image", "audio")}, r"modalities=.*\('image', 'sketch', 'text'\)"),
         ({"single": "mlp"}, "single='mlp'"),
         ({"head_options": {"attention": {}}}, "head_options' keys"),
         ({"head_options": {"concat_mlp": {"widht": 8}}},
          r"head_options\['concat_mlp'\].*widht.*attributes of fusion_n.ConcatMLP")]
  for kwargs, message in bad:
    with pytest.raises(EvaluatorConfigError, match=message):
      shapes_fusion.Fusion(context, **kwargs)
  with pytest.raises(EvaluatorConfigError, match="defined on the shapes dataset's scenes, "
                                                 "not 'coco'"):
    shapes_fusion.Fusion(dataclasses.replace(context, data_name="coco"))


def test_a_config_entry_builds_it():
  config = tiny_config(**{"eval.evaluators": {"fusion": {
      "kind": "fusion", "every": -1, "task": "layout", "steps": 10}}})
  (built,) = evaluators.build_all(config, evaluators.Context.without_data(config),
                                  ("image", "text")).values()
  assert isinstance(built, shapes_fusion.Fusion)
  assert built.modalities == ("image", "text") and built.tasks == ("layout",)
  assert built.settings == {**shapes_fusion.FUSION_DEFAULTS, "steps": 10}


def test_fusion_evaluator_on_a_three_tower_model(setup):
  config, model, params, context = setup
  evaluator = shapes_fusion.Fusion(context, **RUN)
  out = evaluator(evaluators.Encoders(model, params, config.eval.batch_size))
  names = (*fusion_n.HEADS, *(f"single:{m}" for m in MODALITIES))
  weights = {f"fusion/colour/weighted_sum/weight:{m}" for m in MODALITIES}
  assert set(out) == ({f"fusion/colour/{n}/{k}" for n in names for k in METRICS} | weights
                      | {"fusion/colour/majority/accuracy"})
  assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in out.values())
  assert sum(out[k] for k in weights) == pytest.approx(1.0, abs=1e-6)
  # The bar: the training set's most frequent colour, on the 30 images' 150 captions.
  train = shapes_fusion.labels("colour", shapes_fusion.train_examples(context, 256, [])["scenes"])
  test = shapes_fusion.labels("colour", shapes.test_split(image_size=16)["scenes"][:30])
  assert out["fusion/colour/majority/accuracy"] == pytest.approx(
      np.mean(test == np.bincount(train).argmax()))
  # The heads read the towers' own outputs (MultiTower.features) for each modality's field.
  feats = matching.modality_features(model, params, {"sketch": context.test["sketch"]},
                                     batch_size=30)
  want = model.apply({"params": params}, context.test["sketch"], "sketch",
                     method=model.features)
  assert set(feats) == {"z/sketch", "tokens/sketch"}
  np.testing.assert_allclose(feats["z/sketch"], want["z"], atol=1e-5)
  np.testing.assert_allclose(feats["tokens/sketch"], want["tokens"], atol=1e-5)
