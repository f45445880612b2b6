"""Builds what both entry points need from a config: tokenizer, model, loss, state."""

import os

import jax
import numpy as np

from mmjax import configs, losses
from mmjax.data import pipeline, tokenizer as tokenizer_lib
from mmjax.models import two_tower
from mmjax.train import state as state_lib

# What the two-tower model hands to the losses (see TwoTower.__call__).
MODEL_OUTPUTS = ("zimg", "ztxt", "scale", "bias", "logits")


def check(config) -> dict[str, float]:
  """Validates the whole config before anything is compiled; returns the loss terms."""
  configs.validate(config, test_split_size=pipeline.TEST_IMAGES)
  pipeline.check_data_config(config.data)
  terms = losses.from_config(config.loss)
  for name in terms:
    losses.get(name)  # unknown names fail here, listing the known ones
  losses.check_inputs(terms, MODEL_OUTPUTS)
  return terms


def tokenizer(config, workdir: str) -> tokenizer_lib.Tokenizer:
  """The shapes tokenizer, trained on first use and cached in `workdir/tokenizer`."""
  return tokenizer_lib.shapes_tokenizer(os.path.join(workdir, "tokenizer"),
                                        vocab_size=config.data.vocab_size)


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


def init_state(config, model, tx) -> state_lib.TrainState:
  """A fresh TrainState, a function of config.seed alone."""
  ex = example_batch(config, batch_size=1)

  def init(rng):
    return state_lib.create(state_lib.init_params(model, rng, ex["image"], ex["text"]), tx)

  return jax.jit(init)(jax.random.key(config.seed))


def abstract_state(config, model, tx):
  """Shapes and dtypes of the TrainState, without allocating it (for restore)."""
  return jax.eval_shape(lambda: init_state(config, model, tx))
