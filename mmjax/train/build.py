"""Builds what both entry points need from a config: mesh, tokenizer, model, loss,
sharded state and the jitted train step."""

import os

import flax.linen as nn
import jax
import numpy as np

from mmjax import configs, losses
from mmjax.data import image_text, pipeline, tokenizer as tokenizer_lib, wordpiece
from mmjax.eval import suite
from mmjax.losses import sharded
from mmjax.models import pretrained, two_tower
from mmjax.parallel import mesh as mesh_lib
from mmjax.parallel import partitioning
from mmjax.train import state as state_lib
from mmjax.train import step as step_lib
from mmjax.train import warm_start

# What the two-tower model hands to the losses (see TwoTower.__call__).
MODEL_OUTPUTS = ("zimg", "ztxt", "scale", "bias", "logits")
# Added with config.distill.projection_dim > 0: the student's map into the
# teacher's space.
PROJECTION_OUTPUT = "to_teacher"
# Train images whose captions train a dataset's tokenizer (evenly spaced):
# enough for a 32k vocabulary, and reading them takes seconds, not an epoch.
TOKENIZER_IMAGES = 100_000


def check(config) -> dict[str, float]:
  """Validates the whole config before anything is compiled; returns the loss terms."""
  configs.validate(config)
  pipeline.check_data_config(config.data)
  suite.check(config)
  configs.validate(config, test_split_size=pipeline.test_split_size(config.data))
  terms = losses.from_config(config.loss)
  for name in terms:
    losses.get(name)  # unknown names fail here, listing the known ones
  losses.check_inputs(terms, outputs(config))
  _check_loss_impl(config.loss.impl, terms)
  shape = mesh_lib.mesh_shape(config.mesh, jax.device_count())
  mesh_lib.check_batch(config.batch_size, shape, config.optim.grad_accum_steps)
  return terms


def outputs(config) -> tuple[str, ...]:
  """The names the losses may read: the model's, plus the teacher's when
  config.distill.teacher is set, or left a placeholder (None) that training
  will require (see mmjax/train/teacher.py)."""
  distill = config.get("distill") or {}
  names = MODEL_OUTPUTS
  if distill.get("projection_dim", 0):
    names += (PROJECTION_OUTPUT,)
  if distill.get("teacher", "") != "":
    names += losses.TEACHER_INPUTS
  return names


def _check_loss_impl(impl, terms) -> None:
  if impl not in sharded.IMPLS:
    raise configs.ConfigError(
        f"config.loss.impl={impl!r}; choose one of {sharded.IMPLS}.")
  for name in terms:
    forms = sharded.DISTRIBUTED.get(name)
    if forms is not None and impl not in ("auto", "naive", *forms):
      raise configs.ConfigError(
          f"config.loss.impl={impl!r} but loss {name!r} has no {impl!r} form; choose "
          f"one of {('auto', 'naive', *forms)}.")


def mesh(config, devices=None) -> jax.sharding.Mesh:
  """The device mesh of config.mesh over `devices` (default: all)."""
  return mesh_lib.make_mesh(config.mesh, devices)


def loss_fn(config, terms: dict[str, float], mesh: jax.sharding.Mesh):
  """The weighted loss; contrastive terms in their cross-device form when the batch
  spans several devices (config.loss.impl), other terms as registered."""
  impls = {}
  for name in terms:
    form = losses.distributed_form(name, config.loss.impl, mesh, mesh_lib.BATCH_AXES)
    if form is not None:
      impls[name] = form
  return losses.combine(terms, impls=impls)


def tokenizer(config, workdir: str) -> tokenizer_lib.Tokenizer | wordpiece.WordPieceTokenizer:
  """The run's tokenizer: config.data.tokenizer if given, else one trained once.

  Given: "minilm" (all-MiniLM-L6-v2's WordPiece, from its package), a BERT
  model directory, tokenizer.json or vocab.txt (a WordPieceTokenizer, for a
  pretrained BERT text tower), or a sentencepiece .model. Else shapes: trained
  on its captions, cached in `workdir/tokenizer`; a prepared dataset: trained
  on its train captions and kept with the dataset, so every run on it shares
  one vocabulary. Either kind has the same encode / decode / vocab_size /
  pad_id interface.
  """
  name = config.data.tokenizer
  if name == pretrained.MINILM:
    return wordpiece.WordPieceTokenizer(pretrained.minilm_files().root)
  if name and (os.path.isdir(name) or name.endswith((".json", ".txt"))):
    return wordpiece.WordPieceTokenizer(name)
  if name:
    return tokenizer_lib.Tokenizer(name)
  if config.data.name == "shapes":
    return tokenizer_lib.shapes_tokenizer(os.path.join(workdir, "tokenizer"),
                                          vocab_size=config.data.vocab_size)
  data = config.data
  directory = image_text.dataset_dir(data.data_dir, data.name)
  if not os.access(directory, os.W_OK):  # a read-only dataset: keep it with the run
    directory = os.path.join(workdir, "tokenizer")
  path = os.path.join(directory, f"sentencepiece_{data.vocab_size}.model")
  return tokenizer_lib.cached_tokenizer(
      path, lambda: image_text.train_captions(data.data_dir, data.name,
                                              limit=TOKENIZER_IMAGES),
      data.vocab_size)


def model(config, tok: tokenizer_lib.Tokenizer) -> two_tower.TwoTower:
  model_cfg = config.model.copy_and_resolve_references()
  distill = config.get("distill") or {}
  with model_cfg.unlocked():
    model_cfg.dtype = config.dtype
    model_cfg.text.pad_id = tok.pad_id
    model_cfg.teacher_dim = distill.get("projection_dim", 0) or None
  return two_tower.build(model_cfg, tok.vocab_size, config.data.context_length)


def example_batch(config, batch_size: int | None = None) -> dict:
  """Zeros shaped like one training batch: {"image": uint8, "text": int32}."""
  b = batch_size or config.batch_size
  s = config.data.image_size
  return {"image": np.zeros((b, s, s, 3), np.uint8),
          "text": np.zeros((b, config.data.context_length), np.int32)}


def param_layout(config, model, mesh: jax.sharding.Mesh):
  """(abstract params, their NamedShardings on `mesh`) of `model` on batches of
  `config`, from the logical-axis rules; nothing is allocated."""
  ex = example_batch(config, batch_size=1)
  boxed = jax.eval_shape(model.init, jax.random.key(0), ex["image"], ex["text"])
  params = state_lib.unbox(boxed)["params"]
  return params, partitioning.param_shardings(nn.get_partition_spec(boxed)["params"],
                                              params, mesh)


def state_shardings(config, model, tx, mesh: jax.sharding.Mesh) -> state_lib.TrainState:
  """NamedShardings of every TrainState leaf on `mesh`, from the logical-axis rules."""
  params, param_sh = param_layout(config, model, mesh)
  abstract = jax.eval_shape(lambda p: state_lib.create(p, tx), params)
  return partitioning.state_shardings(abstract, param_sh, mesh)


def init_state(config, model, tx, shardings=None) -> state_lib.TrainState:
  """A fresh TrainState, a function of config.seed alone, created directly with
  `shardings` (a TrainState of NamedShardings; default: jit's choice)."""
  ex = example_batch(config, batch_size=1)

  def init(rng):
    return state_lib.create(state_lib.init_params(model, rng, ex["image"], ex["text"]), tx)

  jitted = jax.jit(init) if shardings is None else jax.jit(init, out_shardings=shardings)
  return jitted(jax.random.key(config.seed))


def abstract_state(config, model, tx, shardings=None):
  """Shapes, dtypes (and `shardings`, if given) of the TrainState, without
  allocating it: the target checkpoints are restored into."""
  abstract = jax.eval_shape(lambda: init_state(config, model, tx))
  if shardings is None:
    return abstract
  return partitioning.with_shardings(abstract, shardings)


def train_step(config, model, tx, lr_schedule, loss, mesh: jax.sharding.Mesh,
               shardings, teacher=None):
  """The jitted step: state sharded as `shardings`, batch over the batch axes,
  metrics replicated; the input state is donated (updated in place).

  teacher: None, or a `mmjax.train.teacher.Teacher`: the step then takes its
  params as a third argument, `step(state, batch, teacher.params)`, sharded as
  `teacher.shardings` and never donated, updated or returned.
  """
  frozen = None
  if config.optim.freeze:
    frozen = warm_start.frozen_mask(shardings.params, config.optim.freeze)
  step = step_lib.make_train_step(
      model, tx, loss, lr_schedule, config.optim.grad_accum_steps, frozen=frozen,
      teacher_outputs=None if teacher is None else teacher.outputs,
      distill_temperature=None if teacher is None else teacher.temperature)
  in_shardings = (shardings, partitioning.batch_sharding(mesh))
  if teacher is not None:
    in_shardings += (teacher.shardings,)
  return jax.jit(step,
                 in_shardings=in_shardings,
                 out_shardings=(shardings, partitioning.replicated(mesh)),
                 donate_argnums=0)
