"""Builds what both entry points need from a config: mesh, tokenizer, model, loss,
sharded state and the jitted train step."""

import os

import flax.linen as nn
import jax
import numpy as np

from mmjax import configs, losses
from mmjax.data import image_text, pipeline, tokenizer as tokenizer_lib
from mmjax.eval import suite
from mmjax.losses import sharded
from mmjax.models import two_tower
from mmjax.parallel import mesh as mesh_lib
from mmjax.parallel import partitioning
from mmjax.train import state as state_lib
from mmjax.train import step as step_lib
from mmjax.train import warm_start

# What the two-tower model hands to the losses (see TwoTower.__call__).
MODEL_OUTPUTS = ("zimg", "ztxt", "scale", "bias", "logits")
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
  losses.check_inputs(terms, MODEL_OUTPUTS)
  _check_loss_impl(config.loss.impl, terms)
  shape = mesh_lib.mesh_shape(config.mesh, jax.device_count())
  mesh_lib.check_batch(config.batch_size, shape, config.optim.grad_accum_steps)
  return terms


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


def tokenizer(config, workdir: str) -> tokenizer_lib.Tokenizer:
  """The run's tokenizer: config.data.tokenizer if given, else one trained once.

  Shapes: trained on its captions, cached in `workdir/tokenizer`. A prepared
  dataset: trained on its train captions and kept with the dataset, so every
  run on it shares one vocabulary.
  """
  if config.data.tokenizer:
    return tokenizer_lib.Tokenizer(config.data.tokenizer)
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
  with model_cfg.unlocked():
    model_cfg.dtype = config.dtype
    model_cfg.text.pad_id = tok.pad_id
  return two_tower.build(model_cfg, tok.vocab_size, config.data.context_length)


def example_batch(config, batch_size: int | None = None) -> dict:
  """Zeros shaped like one training batch: {"image": uint8, "text": int32}."""
  b = batch_size or config.batch_size
  s = config.data.image_size
  return {"image": np.zeros((b, s, s, 3), np.uint8),
          "text": np.zeros((b, config.data.context_length), np.int32)}


def state_shardings(config, model, tx, mesh: jax.sharding.Mesh) -> state_lib.TrainState:
  """NamedShardings of every TrainState leaf on `mesh`, from the logical-axis rules."""
  ex = example_batch(config, batch_size=1)
  boxed = jax.eval_shape(model.init, jax.random.key(0), ex["image"], ex["text"])
  params = state_lib.unbox(boxed)["params"]
  param_sh = partitioning.param_shardings(nn.get_partition_spec(boxed)["params"],
                                          params, mesh)
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
               shardings):
  """The jitted step: state sharded as `shardings`, batch over the batch axes,
  metrics replicated; the input state is donated (updated in place)."""
  frozen = None
  if config.optim.freeze:
    frozen = warm_start.frozen_mask(shardings.params, config.optim.freeze)
  step = step_lib.make_train_step(model, tx, loss, lr_schedule,
                                  config.optim.grad_accum_steps, frozen=frozen)
  return jax.jit(step,
                 in_shardings=(shardings, partitioning.batch_sharding(mesh)),
                 out_shardings=(shardings, partitioning.replicated(mesh)),
                 donate_argnums=0)
