"""The keys every experiment has, and their validation.

Experiments in `experiments/` start from `base()` and change what they need.
`validate` runs before anything is compiled, so a bad value fails in a second
with a message that names the key and the fix, not an hour later inside XLA.
"""

import math
import os
from typing import Any

import ml_collections

# Keys that outside checks and launch scripts set on the command line.
REQUIRED_KEYS = (
    "seed", "batch_size", "total_steps", "log_every", "eval_every", "checkpoint_every",
    "loss.name", "mesh.data", "mesh.fsdp", "mesh.tensor", "dtype", "data.name",
    "data.data_dir",
)
DTYPES = ("float32", "bfloat16")


def base() -> ml_collections.ConfigDict:
  """Defaults shared by all experiments; each experiment overrides what it needs."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 128          # global, over all devices and processes
  c.total_steps = 1000
  c.log_every = 50
  c.eval_every = 200          # 0 = only at the end
  c.checkpoint_every = 500    # 0 = only at the end
  c.dtype = "float32"         # compute dtype; parameters stay float32

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "sigmoid_contrastive"
  c.loss.weight = 1.0
  # Extra weighted terms added to loss.name, e.g. {"mse_alignment": 1.0}.
  c.loss.terms = ml_collections.ConfigDict()
  # How contrastive losses run when the batch spans several devices: "auto" (the
  # memory-lean cross-device form: gather for softmax, ring for sigmoid),
  # "naive" (the single-device formula on the global batch), "gather", "ring".
  c.loss.impl = "auto"

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1            # -1: all remaining devices
  c.mesh.fsdp = 1             # params and optimizer state sharded, batch split
  c.mesh.tensor = 1           # attention heads and MLP hidden units split

  c.data = ml_collections.ConfigDict()
  c.data.name = "shapes"
  c.data.data_dir = ml_collections.config_dict.placeholder(str)  # shapes needs none
  c.data.image_size = 32
  c.data.context_length = 16  # shapes captions are <= 16 tokens with EOS
  c.data.vocab_size = 256
  c.data.prefetch = 2         # batches prepared ahead by a host thread

  c.model = ml_collections.ConfigDict()
  c.model.image = ml_collections.ConfigDict(dict(
      kind="vit", patch_size=8, width=256, depth=4, num_heads=4, pool="gap", stem="conv"))
  c.model.text = ml_collections.ConfigDict(dict(
      width=256, depth=2, num_heads=4, causal=True, pool="eos"))
  c.model.embed_dim = 128
  c.model.temperature_init = 10.0
  c.model.max_temperature = 100.0
  c.model.bias_init = -10.0
  c.model.remat = False       # recompute transformer blocks in the backward pass

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 100
  c.optim.min_lr_ratio = 0.0  # cosine decays to lr * min_lr_ratio
  c.optim.weight_decay = 1e-4
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.clip_norm = 1.0
  # Microbatches per step: the global batch is split in this many parts whose
  # gradients are averaged before one optimizer update (same step count).
  c.optim.grad_accum_steps = 1

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 500     # images (and captions) encoded per call
  c.eval.num_images = 1000    # the shapes test split: 1,000 images x 5 captions

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.keep = 2
  return c


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and the fix."""


def _get(config, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    if part not in node:
      raise ConfigError(f"config has no key '{dotted}'; every experiment needs it "
                        "(start the experiment from mmjax.configs.base()).")
    node = node[part]
  return node


def validate(config, *, test_split_size: int | None = None) -> None:
  """Raises ConfigError for the first value that cannot work.

  test_split_size: number of evaluation images the data provides, if known.
  """
  for key in REQUIRED_KEYS:
    _get(config, key)

  def positive_int(key):
    value = _get(config, key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ConfigError(f"config.{key}={value!r} must be a positive integer; "
                        f"set --config.{key}=N with N > 0.")

  for key in ("batch_size", "total_steps", "log_every", "eval.batch_size",
              "eval.num_images", "data.image_size", "data.context_length",
              "data.vocab_size", "model.embed_dim", "optim.grad_accum_steps"):
    positive_int(key)
  for key in ("eval_every", "checkpoint_every"):
    value = _get(config, key)
    if not isinstance(value, int) or value < 0:
      raise ConfigError(f"config.{key}={value!r} must be an integer >= 0 (0 = at the end).")

  for key in ("model.temperature_init", "model.max_temperature", "optim.lr"):
    value = _get(config, key)
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
      raise ConfigError(f"config.{key}={value!r} must be a positive number "
                        f"(it is a multiplier, not a log); e.g. --config.{key}=10.0.")
  if config.model.temperature_init > config.model.max_temperature:
    raise ConfigError(
        f"config.model.temperature_init={config.model.temperature_init} exceeds "
        f"config.model.max_temperature={config.model.max_temperature}; lower the first "
        "or raise the second.")

  if config.dtype not in DTYPES:
    raise ConfigError(f"config.dtype={config.dtype!r}; choose one of {DTYPES}.")

  n_eval = test_split_size if test_split_size is not None else config.eval.num_images
  if config.eval.batch_size > n_eval:
    raise ConfigError(
        f"config.eval.batch_size={config.eval.batch_size} is larger than the test split "
        f"({n_eval} images); set --config.eval.batch_size to at most {n_eval}.")
  if config.eval.num_images > n_eval:
    raise ConfigError(
        f"config.eval.num_images={config.eval.num_images} but the test split holds "
        f"{n_eval} images; set --config.eval.num_images to at most {n_eval}.")


# The experiment `python -m mmjax.train` runs when no --config is given.
DEFAULT_EXPERIMENT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "experiments", "shapes_siglip.py")
