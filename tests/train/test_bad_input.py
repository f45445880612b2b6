"""Configs that cannot work fail in build.check, before anything is compiled,
with a message saying what to change: towers, heads, loss terms, evaluators
and the loss implementation.

Every failure here is checked under jax.log_compiles: build.check traces the
model abstractly (jax.eval_shape) and must not compile anything.
"""

import dataclasses
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from mmjax import configs, losses, registry
from mmjax.eval import evaluators
from mmjax.train import build

from tests.train.conftest import tiny_config

TINY_SKETCH = dict(kind="cnn", input="sketch", widths=(8,), blocks_per_stage=1)


# Parts a fork would keep in its own package, named here by dotted path
# (f"{__name__}.Name": this module, as pytest imported it).

def needs_depth(zimg, depth_map):
  """A fork's loss reading a batch field no dataset here provides."""
  return jnp.mean(zimg) + jnp.mean(depth_map)


class SceneRecall:
  """A fork's evaluator reading the test split's scene ids."""

  modalities = ("image",)

  def __init__(self, context, k=1):
    if "scene_id" not in context.fields:
      raise evaluators.EvaluatorConfigError(
          f"SceneRecall reads the test split's 'scene_id', which it does not hold "
          f"({list(context.fields)}); add 'scene_id' to config.data.fields.")
    self.context, self.k = context, k

  def __call__(self, encoders):
    return {"scene/R@1": 0.0}


class AudioRecall:
  """A fork's evaluator over a modality the model has no tower for."""

  modalities = ("image", "audio")

  def __init__(self, context):
    self.context = context

  def __call__(self, encoders):
    return {}


class Echo(nn.Module):
  """A fork's head that writes an output named like one of the towers'."""

  @nn.compact
  def __call__(self, features):
    return {"image": features["z/image"]}


def _path(name: str) -> str:
  return f"{__name__}.{name}"


def _config(**overrides):
  return tiny_config(**overrides)


def check_fails(caplog, config, error, match):
  """build.check(config) raises `error` matching `match` and compiles nothing;
  returns the message."""
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles():
    with pytest.raises(error, match=match) as info:
      build.check(config)
  compiled = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
  assert not compiled, compiled
  return str(info.value)


def test_the_compile_guard_sees_a_compile(caplog):
  """The guard above can fail: a compile inside it is logged and caught."""
  with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles():
    jax.jit(lambda x: x * 3 + 1)(jnp.ones((7, 5)))
  assert any("Compiling" in r.getMessage() for r in caplog.records)


def test_a_good_three_tower_config_checks_without_compiling(caplog):
  config = _config(**{"data.fields": ("sketch",)})
  config.model.towers.sketch = dict(TINY_SKETCH)
  config.loss.terms = {"sketch_text": dict(fn="sigmoid_contrastive", pair=("sketch", "text"))}
  config.eval.evaluators.sketch = dict(kind="retrieval", pair=("image", "sketch"))
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles():
    terms = build.check(config)
  assert not [r for r in caplog.records if "Compiling" in r.getMessage()]
  assert list(terms) == ["sigmoid_contrastive", "sketch_text"]
  assert terms["sketch_text"].pair == ("sketch", "text")


def test_an_audio_tower_at_another_sample_rate_than_the_data_fails(caplog):
  config = _config(**{"data.fields": ("audio",)})
  config.model.towers.audio = dict(
      kind="ast", input="audio", frames=98, patch=(14, 8), width=8, depth=1, num_heads=2,
      features=dict(fn="mmjax.data.audio.log_mel", sample_rate=22050, n_fft=400,
                    hop_length=160, n_mels=16, center=False))
  config.loss.terms = {"audio_text": dict(fn="sigmoid_contrastive", pair=("audio", "text"))}
  check_fails(caplog, config, configs.ConfigError,
              r"towers.audio.features.sample_rate=22050, but the data's audio is at 16000 Hz")
  config.model.towers.audio.features.sample_rate = 16000
  assert "audio_text" in build.check(config)


# Towers and heads.

def test_unknown_tower_kind_lists_the_registered_kinds_and_dotted_paths(caplog):
  config = _config()
  config.model.towers.image.kind = "vitt"
  msg = check_fails(caplog, config, registry.UnknownNameError,
                    r"unknown tower kind \(config.model.towers.image.kind\) 'vitt'")
  assert "Did you mean 'vit'?" in msg
  assert "Registered: ['ast', 'audio_cnn', 'bert', 'cnn', 'transformer', 'vit']" in msg
  assert "dotted path, e.g. 'mypkg.module.vitt'" in msg


def test_a_dotted_path_tower_that_does_not_import_names_the_module(caplog):
  config = _config()
  config.model.towers.image.kind = "myfork_not_installed.towers.Sketch"
  msg = check_fails(caplog, config, registry.UnknownNameError,
                    r"tower kind \(config.model.towers.image.kind\) "
                    r"'myfork_not_installed.towers.Sketch': could not import module "
                    r"'myfork_not_installed.towers'")
  assert "ModuleNotFoundError" in msg and "installed or on PYTHONPATH" in msg
  # The module imports but has no such class: the attribute is named.
  config.model.towers.image.kind = "mmjax.models.vit.Vit"
  check_fails(caplog, config, registry.UnknownNameError,
              r"module 'mmjax.models.vit' was imported but has no attribute 'Vit'")


def test_a_tower_attribute_its_kind_does_not_take_is_named(caplog):
  config = _config()
  config.model.towers.image.widht = 16
  check_fails(caplog, config, configs.ConfigError,
              r"config.model.towers.image has \['widht'\], which the 'vit' tower \(ViT\) "
              r"does not take; remove them")


def test_unknown_head_kind_lists_the_registered_heads(caplog):
  config = _config()
  config.model.heads.itm = dict(kind="itmm")
  msg = check_fails(caplog, config, registry.UnknownNameError,
                    r"unknown head kind \(config.model.heads.itm.kind\) 'itmm'")
  assert "Did you mean 'itm'?" in msg and "Registered: ['caption_decoder', 'itm']" in msg
  assert "dotted path" in msg


@pytest.mark.parametrize("name", ["z", "tokens", "scale", "teacher"])
def test_a_head_named_like_an_output_namespace_is_refused(caplog, name):
  config = _config()
  config.model.heads[name] = dict(kind="itm")
  check_fails(caplog, config, configs.ConfigError,
              rf"config.model.heads.{name}: names must be identifiers and not one of the "
              r"output namespaces \('z', 'tokens', 'mask', 'scale', 'bias', 'teacher', "
              r"'to_teacher', 'log_var'\); rename it")


def test_a_head_named_like_a_tower_is_refused(caplog):
  config = _config()
  config.model.heads.image = dict(kind="itm")
  check_fails(caplog, config, configs.ConfigError,
              r"\['image'\] name both a tower and a head, whose outputs would share a "
              r"namespace; rename the head")


def test_two_parts_writing_one_output_fail_in_the_model():
  """Past the name check (a fork head writing "image" under the head "z"):
  the model itself refuses to overwrite z/image, while tracing."""
  config = _config()
  model = build.model(config, vocab_size=256, pad_id=0)
  model = model.clone(heads={"z": {"kind": _path("Echo")}})
  batch = build.example_batch(config, batch_size=2)
  with pytest.raises(ValueError, match=r"head 'z' writes z/image, which another part of "
                                       r"the model writes already; rename the head in "
                                       r"config.model.heads"):
    jax.eval_shape(model.init, jax.random.key(0), batch)


def test_a_tower_reading_a_field_batches_lack_names_the_field(caplog):
  config = _config()
  config.model.towers.sketch = dict(TINY_SKETCH)
  check_fails(caplog, config, configs.ConfigError,
              r"config.model.towers.sketch reads batch field 'sketch', but batches hold "
              r"\['image', 'text'\]; set its `input` to one of them, or add the field "
              r"\(config.data.fields\)")


# Loss terms.

def test_a_term_over_a_modality_without_a_tower(caplog):
  config = _config()
  config.loss.terms.sketch_text = dict(fn="sigmoid_contrastive", pair=("sketch", "text"))
  check_fails(caplog, config, losses.LossConfigError,
              r"loss term 'sketch_text' \(sigmoid_contrastive\) is over the pair "
              r"\('sketch', 'text'\), but the model has no tower for \['sketch'\] \(towers: "
              r"\['image', 'text'\]\); add config.model.towers.sketch or set "
              r"config.loss.terms.sketch_text.pair to two of \['image', 'text'\]")
  # The main term's pair too.
  config = _config(**{"loss.pair": ("image", "sketch")})
  check_fails(caplog, config, losses.LossConfigError,
              r"loss term 'sigmoid_contrastive' \(sigmoid_contrastive\) is over the pair "
              r"\('image', 'sketch'\), but the model has no tower for \['sketch'\]")


def test_a_term_reading_an_output_nothing_produces(caplog):
  config = _config()  # no ITM head, so no itm/logits
  config.loss.terms.itm = dict(fn="binary_cross_entropy",
                               inputs=dict(logits="itm/logits", labels="itm/labels"))
  check_fails(caplog, config, losses.LossConfigError,
              r"loss term 'itm' \(binary_cross_entropy\) reads 'logits' from 'itm/logits', "
              r"an output of a head 'itm' the model does not have; add it "
              r"\(config.model.heads.itm = dict\(kind=..., ...\)")


def test_a_term_reading_a_batch_field_nothing_produces(caplog):
  config = _config()
  config.loss.terms.depth = dict(fn=_path("needs_depth"))
  check_fails(caplog, config, losses.LossConfigError,
              r"loss term 'depth' \(.*needs_depth\) reads 'depth_map', which no model "
              r"output \['bias', 'scale', 'z/image', 'z/text'\] or batch field "
              r"\['image', 'text'\] provides; set config.loss.terms.depth.inputs="
              r"\{'depth_map': NAME\}")
  # A field the data does provide is found.
  config.loss.terms.depth = dict(fn=_path("needs_depth"), inputs=dict(depth_map="image"))
  assert "depth" in build.check(config)


def test_ring_impl_with_a_softmax_term_names_its_forms(caplog):
  check_fails(caplog, _config(**{"loss.name": "softmax_contrastive", "loss.impl": "ring"}),
              configs.ConfigError,
              r"config.loss.impl='ring' but loss term 'softmax_contrastive' "
              r"\(softmax_contrastive\) has no 'ring' form; choose one of \('auto', "
              r"'naive', 'gather'\)")
  config = _config(**{"loss.impl": "ring"})  # the sigmoid main term has a ring form...
  config.loss.terms.sm = dict(fn="softmax_contrastive", weight=0.5)  # ...this one not
  check_fails(caplog, config, configs.ConfigError,
              r"config.loss.impl='ring' but loss term 'sm' \(softmax_contrastive\) has no "
              r"'ring' form")


# Evaluators.

def test_retrieval_over_a_modality_without_a_tower(caplog):
  config = _config()
  config.eval.evaluators.sketch = dict(kind="retrieval", pair=("image", "sketch"))
  check_fails(caplog, config, evaluators.EvaluatorConfigError,
              r"config.eval.evaluators.sketch evaluates modality 'sketch', but the model "
              r"has no tower for it \(towers: \['image', 'text'\]\); change its pair or add "
              r"the tower")


def test_a_fork_evaluator_is_built_and_checked_before_compiling(caplog):
  config = _config()
  config.eval.evaluators.scene = dict(kind=_path("SceneRecall"), every=0, k=5)
  check_fails(caplog, config, evaluators.EvaluatorConfigError,
              r"SceneRecall reads the test split's 'scene_id', which it does not hold "
              r"\(\['image', 'text'\]\); add 'scene_id' to config.data.fields")
  config.data.fields = ("scene_id",)
  build.check(config)  # the field is there: it builds
  config.eval.evaluators.scene = dict(kind=_path("SceneRecall"), every=0, top=5)
  check_fails(caplog, config, evaluators.EvaluatorConfigError,
              r"config.eval.evaluators.scene: .*'top'.*; remove or rename the keys its "
              r"kind does not take")


def test_a_fork_evaluator_over_a_modality_without_a_tower(caplog):
  config = _config()
  config.eval.evaluators.audio = dict(kind=_path("AudioRecall"))
  check_fails(caplog, config, evaluators.EvaluatorConfigError,
              r"config.eval.evaluators.audio evaluates modality 'audio', but the model has "
              r"no tower for it")


def test_a_fork_evaluator_that_does_not_import(caplog):
  config = _config()
  config.eval.evaluators.mine = dict(kind="myfork_not_installed.evals.Mine", every=0)
  check_fails(caplog, config, registry.UnknownNameError,
              r"evaluator kind \(config.eval.evaluators.mine.kind\) "
              r"'myfork_not_installed.evals.Mine': could not import module "
              r"'myfork_not_installed.evals'")
  config.eval.evaluators.mine = dict(kind="retrievl", every=0)
  msg = check_fails(caplog, config, registry.UnknownNameError,
                    r"unknown evaluator kind \(config.eval.evaluators.mine.kind\) 'retrievl'")
  assert f"Registered: {sorted(evaluators.EVALUATORS)}" in msg


def test_an_evaluator_over_a_field_the_test_split_lacks():
  """A tower's input is always a batch field, and the test split holds every
  batch field, so build.check cannot reach this; build_all still refuses a
  context whose test split lacks an evaluated modality's field."""
  config = _config(**{"data.fields": ("sketch",)})
  config.model.towers.sketch = dict(TINY_SKETCH)
  config.eval.evaluators.sketch = dict(kind="retrieval", pair=("image", "sketch"))
  context = evaluators.Context.without_data(config)
  assert context.fields == ("image", "text", "sketch")
  assert set(evaluators.build_all(config, context, ("image", "text", "sketch"))) == {
      "retrieval", "sketch"}
  lacking = dataclasses.replace(context, fields=("image", "text"))
  with pytest.raises(evaluators.EvaluatorConfigError,
                     match=r"config.eval.evaluators.sketch evaluates modality 'sketch', whose "
                           r"field 'sketch' the test split does not hold \(it has \['image', "
                           r"'text'\]\); add the field to config.data.fields, or remove the "
                           r"evaluator"):
    evaluators.build_all(config, lacking, ("image", "text", "sketch"))


@pytest.mark.parametrize("spec,match", [
    (dict(kind="retrieval", every=-2), r"config.eval.evaluators.retrieval.every=-2: use 0 "
                                       r"\(every eval_every\), N > 0 \(every N steps\), -1"),
    (dict(kind="retrieval", every=1.5), r"config.eval.evaluators.retrieval.every=1.5: use 0"),
    ("3", r"config.eval.evaluators.retrieval='3': give dict\(kind=..., every=...\)"),
])
def test_a_bad_evaluator_entry_names_the_key(caplog, spec, match):
  config = _config()
  config.eval.evaluators = {"retrieval": spec}
  check_fails(caplog, config, evaluators.EvaluatorConfigError, match)
