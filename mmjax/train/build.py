"""Builds what both entry points need from a config: mesh, tokenizer, model, loss,
sharded state and the jitted train step."""

import os
import re

import flax.linen as nn
import jax
import numpy as np

from mmjax import configs, losses, paths
from mmjax.data import image_text, pipeline, released_text, tokenizer as tokenizer_lib, wordpiece
from mmjax.eval import evaluators as evaluators_lib
from mmjax.models import multi_tower, pretrained, registry as model_registry
from mmjax.parallel import mesh as mesh_lib
from mmjax.parallel import partitioning
from mmjax.train import state as state_lib
from mmjax.train import step as step_lib
from mmjax.train import warm_start

# Train images whose captions train a dataset's tokenizer (evenly spaced):
# enough for a 32k vocabulary, and reading them takes seconds, not an epoch.
TOKENIZER_IMAGES = 100_000
# Tower attributes filled from the run when a tower has them and the config
# does not set them: the tokenizer's vocabulary and padding, the data's length.
_FROM_RUN = ("vocab_size", "context_length", "pad_id")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check(config, *, num_devices: int | None = None,
          read_data: bool = True) -> dict[str, losses.Term]:
  """Validates the whole config before anything is compiled; returns the loss terms.

  Builds the model abstractly (jax.eval_shape: nothing allocated or compiled)
  to learn the names it outputs, then checks that every loss term and every
  evaluator finds what it reads, and that the mesh and batch fit `num_devices`
  (default: this job's devices; a planned TPU slice gives its chip count).
  read_data=False checks the config alone, as a plan for a machine that has
  the data does: the data dir need not exist, and the vocabulary size is
  config.data.vocab_size.
  """
  configs.validate(config)
  test_split_size = None
  if read_data:
    pipeline.check_data_config(config.data)
    # Read once: an empty split or too large an eval.num_images fails here, and
    # the evaluators learn the gallery sizes they can check before training.
    test_split_size = pipeline.test_split_size(config.data)
    configs.validate(config, test_split_size=test_split_size)
  _check_names(config)
  terms = losses.from_config(config.loss)
  model_ = model(config, vocab_size=config.data.vocab_size, pad_id=0)
  fields = set(pipeline.batch_spec(config))
  for modality, spec in config.model.towers.items():
    if spec.get("input", modality) not in fields:
      raise configs.ConfigError(
          f"config.model.towers.{modality} reads batch field "
          f"{spec.get('input', modality)!r}, but batches hold {sorted(fields)}; set its "
          "`input` to one of them, or add the field (config.data.fields).")
  if read_data:
    _check_sample_rates(config)
  names = outputs(config, model_)
  losses.check(terms, names, fields, config.model.towers.keys())
  _check_loss_impl(config.loss.impl, terms)
  evaluators_lib.build_all(
      config, evaluators_lib.Context.without_data(config, test_split_size=test_split_size),
      modalities=tuple(config.model.towers))
  shape = mesh_lib.mesh_shape(config.mesh, num_devices or jax.device_count())
  mesh_lib.check_batch(config.batch_size, shape, config.optim.grad_accum_steps)
  return terms


def _check_sample_rates(config) -> None:
  """A tower whose feature stage reads audio must expect the data's sample rate:
  at another rate every pitch lands in the wrong mel band, silently."""
  rate = pipeline.audio_sample_rate(config.data)
  for modality, spec in config.model.towers.items():
    features = spec.get("features") or {}
    expected = features.get("sample_rate")
    if rate is None or expected is None or spec.get("input", modality) != "audio":
      continue
    if float(expected) != float(rate):
      raise configs.ConfigError(
          f"config.model.towers.{modality}.features.sample_rate={expected}, but the data's "
          f"audio is at {rate} Hz; set it to {rate} (or resample the data: prepare it at "
          f"{expected} Hz, or set config.data.sample_rate for a prepared dataset).")


def _check_names(config) -> None:
  towers, heads = config.model.towers, config.model.get("heads", {}) or {}
  if not towers:
    raise configs.ConfigError("config.model.towers is empty; give one tower per modality, "
                              "e.g. towers.image = dict(kind='vit', ...).")
  for what, names in (("towers", towers), ("heads", heads)):
    for name in names:
      if not _NAME.fullmatch(name) or name in multi_tower.RESERVED:
        raise configs.ConfigError(
            f"config.model.{what}.{name}: names must be identifiers and not one of the "
            f"output namespaces {multi_tower.RESERVED}; rename it.")
  pairs = [tuple(p) for p in config.model.get("pair_scales", ()) or ()]
  joined = ["_".join(p) for p in pairs]
  if len(set(joined)) != len(joined) or len(set(pairs)) != len(pairs):
    raise configs.ConfigError(
        f"config.model.pair_scales={pairs} names one pair twice, or two pairs whose "
        "parameter names (log_scale_<a>_<b>) coincide; list each pair once.")
  for pair in pairs:
    if unknown := [m for m in pair if m not in towers]:
      raise configs.ConfigError(f"config.model.pair_scales has {pair}, but {unknown} has "
                                f"no tower (towers: {sorted(towers)}).")
  if both := sorted(set(towers) & set(heads)):
    raise configs.ConfigError(f"{both} name both a tower and a head, whose outputs would "
                              "share a namespace; rename the head.")


def outputs(config, model_) -> tuple[str, ...]:
  """The names the losses may read: the model's (from jax.eval_shape, so
  derived rather than listed), plus a teacher's when config.distill.teacher is
  set (or left a placeholder that training will require)."""
  ex = example_batch(config, batch_size=2)
  shapes = jax.eval_shape(lambda b: model_.init_with_output(jax.random.key(0), b)[0], ex)
  names = tuple(shapes)
  distill = config.get("distill") or {}
  if distill.get("teacher", "") != "":
    names += tuple(f"teacher/z/{m}" for m in config.model.towers) + (
        losses.terms.TEACHER_TEMPERATURE,)
  return names


def _check_loss_impl(impl, terms) -> None:
  """impl is "auto", "naive", or a form every term with distributed forms has."""
  known = set(losses.sharded.IMPLS).union(
      *(losses.distributed_forms(t.fn) for t in terms.values()))
  if impl not in known:
    raise configs.ConfigError(f"config.loss.impl={impl!r}; choose one of {sorted(known)}.")
  for term in terms.values():
    forms = losses.distributed_forms(term.fn)
    if forms and impl not in ("auto", "naive", *forms):
      raise configs.ConfigError(
          f"config.loss.impl={impl!r} but loss term {term.id!r} ({term.fn_name}) has no "
          f"{impl!r} form; choose one of {('auto', 'naive', *forms)}.")


def mesh(config, devices=None) -> jax.sharding.Mesh:
  """The device mesh of config.mesh over `devices` (default: all)."""
  return mesh_lib.make_mesh(config.mesh, devices)


def loss_fn(config, terms: dict[str, losses.Term], mesh: jax.sharding.Mesh):
  """The weighted loss; each term in the form config.loss.impl picks among
  those registered with its function (cross-device when the batch spans
  several devices)."""
  impls = {tid: losses.choose_form(t.fn, losses.distributed_forms(t.fn), config.loss.impl,
                                   mesh, mesh_lib.BATCH_AXES)
           for tid, t in terms.items()}
  return losses.combine(terms, impls=impls,
                        learned=config.loss.get("weighting", "fixed") == "uncertainty")


def tokenizer(config, workdir: str) -> tokenizer_lib.Tokenizer | wordpiece.WordPieceTokenizer:
  """The run's tokenizer: config.data.tokenizer if given, else one trained once.

  Given: a released model's tokenizer directory (`mmjax_tokenizer.json`
  and its vocabulary, as python -m mmjax.import_weights writes it), "minilm"
  (all-MiniLM-L6-v2's WordPiece, from its package), a BERT
  model directory, tokenizer.json or vocab.txt (a WordPieceTokenizer, for a
  pretrained BERT text tower), or a sentencepiece .model. Else shapes: trained
  on its captions, cached in `workdir/tokenizer`; a prepared dataset: trained
  on its train captions and kept with the dataset, so every run on it shares
  one vocabulary. Either kind has the same encode / decode / vocab_size /
  pad_id interface.
  """
  name = config.data.tokenizer
  if name and released_text.is_saved(name):  # a released model's, kept with its workdir
    return released_text.ReleasedTokenizer.load(name)
  if name == pretrained.MINILM:
    return wordpiece.WordPieceTokenizer(pretrained.minilm_files().root)
  if name and (os.path.isdir(name) or name.endswith((".json", ".txt"))):
    return wordpiece.WordPieceTokenizer(name)
  if name:
    return tokenizer_lib.Tokenizer(name)
  if config.data.name == "shapes":
    return tokenizer_lib.shapes_tokenizer(paths.join(workdir, "tokenizer"),
                                          vocab_size=config.data.vocab_size)
  data = config.data
  name = f"sentencepiece_{data.vocab_size}.model"
  # The run keeps a copy of the tokenizer it started with (pins.keep_tokenizer):
  # re-preparing the dataset (which trains a new one) cannot change its token ids.
  own = paths.join(workdir, "tokenizer", name)
  if paths.exists(own):
    return tokenizer_lib.Tokenizer(own)
  directory = image_text.dataset_dir(data.data_dir, data.name)
  if not os.access(directory, os.W_OK):  # a read-only dataset: keep it with the run
    directory = paths.join(workdir, "tokenizer")
  path = paths.join(directory, name)
  return tokenizer_lib.cached_tokenizer(
      path, lambda: pipeline.train_captions(data, limit=TOKENIZER_IMAGES),
      data.vocab_size)


def model(config, tok=None, *, vocab_size: int | None = None, pad_id: int | None = None):
  """The model of config.model (config.model.name, default the MultiTower).

  Each tower is `config.model.towers.<m>` with `kind` and `input` as given; a
  tower class with attributes vocab_size, context_length or pad_id gets the
  tokenizer's and config.data's unless the config sets them, `remat` follows
  model.remat unless set, and every tower and head gets the run's dtype; a
  head with those attributes (a caption decoder) gets them too, and eos_id.
  """
  m = config.model
  run = {"vocab_size": tok.vocab_size if tok is not None else vocab_size,
         "context_length": config.data.context_length,
         "pad_id": tok.pad_id if tok is not None else pad_id,
         "eos_id": getattr(tok, "eos_id", None) if tok is not None else None,
         "remat": bool(m.get("remat", False)), "dtype": config.dtype}
  towers = {}
  for modality, spec in m.towers.items():
    spec = dict(spec)
    cls = model_registry.tower_class(spec.get("kind"), modality)
    fields = getattr(cls, "__dataclass_fields__", {})
    for key in (*_FROM_RUN, "remat", "dtype"):
      if key in fields and key not in spec and run[key] is not None:
        spec[key] = run[key]
    unknown = sorted(set(spec) - set(fields) - set(multi_tower.TOWER_KEYS)) if fields else []
    if unknown:
      raise configs.ConfigError(
          f"config.model.towers.{modality} has {unknown}, which the {spec['kind']!r} tower "
          f"({cls.__name__}) does not take; remove them.")
    towers[modality] = _frozen(spec)
  heads = {}
  for name, spec in (m.get("heads", {}) or {}).items():
    spec = dict(spec)
    cls = model_registry.head_class(spec.get("kind"), name)
    fields = getattr(cls, "__dataclass_fields__", {})
    for key in (*_FROM_RUN, "eos_id", "remat", "dtype"):
      if key in fields and key not in spec and run.get(key) is not None:
        spec[key] = run[key]
    heads[name] = _frozen(spec)
  distill = config.get("distill") or {}
  cls = model_registry.model_class(m.get("name", "multi_tower"))
  return cls(towers=_frozen(towers), heads=_frozen(heads), embed_dim=m.embed_dim,
             temperature_init=m.temperature_init,
             max_temperature=m.get("max_temperature", 100.0),
             bias_init=m.get("bias_init", None),
             pair_scales=tuple(tuple(p) for p in m.get("pair_scales", ()) or ()),
             dtype=config.dtype, teacher_dim=distill.get("projection_dim", 0) or None,
             # Only when learned: a fork's model class need not know the attribute.
             **({"task_log_vars": learned} if (learned := learned_weights(config)) else {}))


def learned_weights(config) -> tuple[str, ...]:
  """The loss terms that learn a log-variance (config.loss.weighting="uncertainty")."""
  if config.loss.get("weighting", "fixed") != "uncertainty":
    return ()
  return tuple(losses.from_config(config.loss))


def _frozen(value):
  """Specs as hashable values (mappings frozen, lists as tuples, all the way
  down), so the model is a static jit argument."""
  from flax.core import FrozenDict  # pylint: disable=g-import-not-at-top
  if hasattr(value, "items"):
    return FrozenDict({k: _frozen(v) for k, v in value.items()})
  if isinstance(value, (list, tuple)):
    return tuple(_frozen(v) for v in value)
  return value


def example_batch(config, batch_size: int | None = None) -> dict:
  """Zeros shaped like one training batch (pipeline.batch_spec)."""
  b = batch_size or config.batch_size
  return {k: np.zeros((b, *shape), dtype)
          for k, (shape, dtype) in pipeline.batch_spec(config).items()}


def param_layout(config, model, mesh: jax.sharding.Mesh):
  """(abstract params, their NamedShardings on `mesh`) of `model` on batches of
  `config`, from the logical-axis rules; nothing is allocated."""
  boxed = jax.eval_shape(model.init, jax.random.key(0), example_batch(config, batch_size=1))
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
    return state_lib.create(state_lib.init_params(model, rng, ex), tx)

  jitted = jax.jit(init) if shardings is None else jax.jit(init, out_shardings=shardings)
  return jitted(jax.random.key(config.seed))


def abstract_state(config, model, tx, shardings=None):
  """Shapes, dtypes (and `shardings`, if given) of the TrainState, without
  allocating it: the target checkpoints are restored into."""
  abstract = jax.eval_shape(lambda: init_state(config, model, tx))
  if shardings is None:
    return abstract
  return partitioning.with_shardings(abstract, shardings)


def freeze_mask(config, model, mesh: jax.sharding.Mesh):
  """The pytree of bools (True: frozen) of config.optim.freeze over the model's
  params, or None when nothing is frozen; computed once, for both the
  optimizer and the step."""
  if not config.optim.freeze:
    return None
  params, _ = param_layout(config, model, mesh)
  return warm_start.frozen_mask(params, config.optim.freeze)


def train_step(config, model, tx, lr_schedule, loss, mesh: jax.sharding.Mesh,
               shardings, frozen_mask=None, frozen_models=None):
  """The jitted step(state, batch, frozen_params): state sharded as
  `shardings`, batch over the batch axes, metrics replicated; the input
  state is donated (updated in place).

  frozen_models: {name: (fn(params, batch) -> outputs, params shardings)},
  e.g. {"teacher": (teacher.outputs, teacher.shardings)}; their params are the
  step's third argument, never donated, updated or returned.
  """
  frozen_models = dict(frozen_models or {})
  step = step_lib.make_train_step(
      model, tx, loss, lr_schedule, config.optim.grad_accum_steps, freeze_mask=frozen_mask,
      frozen_models={name: fn for name, (fn, _) in frozen_models.items()}, seed=config.seed)
  in_shardings = (shardings, partitioning.batch_sharding(mesh),
                  {name: sh for name, (_, sh) in frozen_models.items()})
  return jax.jit(step,
                 in_shardings=in_shardings,
                 out_shardings=(shardings, partitioning.replicated(mesh)),
                 donate_argnums=0)
