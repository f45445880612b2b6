"""Loss registry: look losses up by name or dotted path, and combine them.

A config names its loss (`loss.name`) and optionally extra weighted terms
(`loss.terms`). Every loss is a plain function whose parameter names say which
model outputs it consumes (`zimg`, `ztxt`, `scale`, `bias`, `logits`,
`teacher_logits`, ...), so a fork plugs in a loss without touching mmjax:

  # myfork/losses.py
  import mmjax.losses

  @mmjax.losses.register("hinge")
  def hinge(zimg, ztxt, scale): ...

or, without registering, by dotted path: `--config.loss.name=myfork.losses.hinge`.
"""

import difflib
import importlib
import inspect
import math
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp

from mmjax.losses import alignment
from mmjax.losses import contrastive

Array = jax.Array
LossFn = Callable[..., Array]

_REGISTRY: dict[str, LossFn] = {}

# Outputs a train step may add beyond the model's `zimg, ztxt, scale, bias`,
# with what to do when a loss asks for one that is missing. A teacher
# (config.distill.teacher, mmjax/train/teacher.py) provides them.
_TEACHER_INPUTS = ("teacher_logits", "teacher_zimg", "teacher_ztxt")
TEACHER_INPUTS = _TEACHER_INPUTS
# `logits` is derived inside `combine` when a term asks for it.
_LOGITS_FROM = ("zimg", "ztxt", "scale")


def register(name: str, fn: LossFn | None = None):
  """Registers `fn` as the loss called `name`; also usable as a decorator.

  `register("my_loss", fn)` or `@register("my_loss")` above a `def`.
  Registering the same function twice is a no-op, and so is re-running the
  module that defines it (same module and qualified name; e.g. a notebook cell
  or `importlib.reload`), which replaces the entry. Any other function under a
  taken name raises `ValueError`.

  Args:
    name: the name configs use (`loss.name` or a key of `loss.terms`).
    fn: the loss; parameters are bound by name from the model outputs.

  Returns:
    `fn` if given, else a decorator that registers and returns its argument.
  """
  if callable(name):
    raise TypeError(
        "register needs a name: write `@register('my_loss')`, not `@register`.")
  if not isinstance(name, str) or not name:
    raise TypeError(f"loss name must be a non-empty string, got {name!r}")

  def add(f: LossFn) -> LossFn:
    if not callable(f):
      raise TypeError(f"cannot register {f!r} as loss {name!r}: not callable")
    existing = _REGISTRY.get(name)
    if existing is not None and not _same_definition(existing, f):
      raise ValueError(
          f"loss name {name!r} is already registered to {_describe(existing)}; "
          f"register {_describe(f)} under another name.")
    _REGISTRY[name] = f
    return f

  return add if fn is None else add(fn)


def _same_definition(a: Any, b: Any) -> bool:
  if a is b:
    return True
  qualname = getattr(a, "__qualname__", None)
  # Lambdas and closures share a qualname across distinct definitions.
  if not qualname or "<" in qualname:
    return False
  return (qualname == getattr(b, "__qualname__", None)
          and getattr(a, "__module__", None) == getattr(b, "__module__", None))


def _describe(fn: Any) -> str:
  module = getattr(fn, "__module__", None)
  qualname = getattr(fn, "__qualname__", None)
  return f"{module}.{qualname}" if module and qualname else repr(fn)


def names() -> list[str]:
  """Returns the registered loss names, sorted."""
  return sorted(_REGISTRY)


def get(name: str) -> LossFn:
  """Returns the loss registered as `name`, or imports it by dotted path.

  Args:
    name: a registered name (see `names()`), or, if not registered, a dotted
      path `"pkg.module.fn"` or `"pkg.module:fn"`.

  Returns:
    the loss function.

  Raises:
    ValueError: the name is neither registered nor an importable path; the
      message lists the registered names and how to add one.
  """
  if not isinstance(name, str):
    raise TypeError(f"loss name must be a string, got {name!r}")
  fn = _REGISTRY.get(name)
  if fn is not None:
    return fn
  if "." in name or ":" in name:
    return _import(name)
  close = [n for n in names() if name in n] or difflib.get_close_matches(
      name, names(), n=1)
  hint = f" Did you mean {close[0]!r}?" if close else ""
  raise ValueError(
      f"unknown loss {name!r}.{hint} Registered losses: {names()}. To use your "
      f"own, register it with `@mmjax.losses.register({name!r})` in a module "
      f"that is imported before training, or name it by dotted path, e.g. "
      f"'mypkg.losses.{name}' or 'mypkg.losses:{name}'.")


def _import(path: str) -> LossFn:
  if ":" in path:
    module_name, _, attr_path = path.partition(":")
  else:
    module_name, _, attr_path = path.rpartition(".")
  if not module_name or not attr_path:
    raise ValueError(
        f"cannot read loss path {path!r}: write 'pkg.module.fn' or "
        f"'pkg.module:fn'. Registered losses: {names()}.")
  try:
    obj = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(
        f"loss {path!r}: could not import module {module_name!r} "
        f"({type(e).__name__}: {e}). Make sure it is installed or on "
        f"PYTHONPATH, or use a registered loss: {names()}.") from e
  for part in attr_path.split("."):
    try:
      obj = getattr(obj, part)
    except AttributeError as e:
      raise ValueError(
          f"loss {path!r}: module {module_name!r} was imported but has no "
          f"attribute {attr_path!r} (failed at {part!r}).") from e
  if not callable(obj):
    raise ValueError(f"loss {path!r} is {obj!r}, which is not callable.")
  return obj


def _signature(name: str, fn: LossFn) -> inspect.Signature:
  try:
    return inspect.signature(fn)
  except (TypeError, ValueError) as e:
    raise ValueError(
        f"cannot read the parameters of loss {name!r} ({e}); wrap it in a "
        f"`def` whose parameter names are model outputs.") from e


def required_inputs(name: str) -> tuple[str, ...]:
  """Returns the outputs loss `name` needs: its parameters without defaults.

  Parameters with defaults are filled from the outputs when present; `*args`
  and `**kwargs` are never required.
  """
  sig = _signature(name, get(name))
  return tuple(
      p.name for p in sig.parameters.values()
      if p.default is p.empty
      and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


def _validate_terms(terms: Mapping[str, float]) -> dict[str, float]:
  if not hasattr(terms, "items"):
    raise TypeError(f"loss terms must be a mapping {{name: weight}}, got {terms!r}")
  if not terms:
    raise ValueError(
        "no loss terms given: set config.loss.name to one of "
        f"{names()} (or a dotted path), optionally with config.loss.terms.")
  weights = {}
  for name, weight in terms.items():
    weight = _as_weight(weight, f"loss term {name!r}")
    if weight:  # A zero weight switches the term off without editing code.
      weights[name] = weight
  if not weights:
    raise ValueError(
        f"every loss term has weight 0 ({sorted(terms)}); give at least one a "
        f"positive weight.")
  return weights


def _as_weight(weight: Any, what: str) -> float:
  try:
    value = float(weight)
  except (TypeError, ValueError):
    raise ValueError(f"weight of {what} must be a number, got {weight!r}") from None
  if not math.isfinite(value) or value < 0:
    raise ValueError(
        f"weight of {what} is {value}; weights must be finite and >= 0 (use 0 "
        f"to switch a term off).")
  return value


def _missing_message(name: str, arg: str, available: list[str]) -> str:
  head = (f"loss {name!r} needs {arg!r}, but the model provides {available}; ")
  drop = f"or remove {name!r} from config.loss.name / config.loss.terms."
  if arg in _TEACHER_INPUTS:
    return head + (f"{name} needs a teacher: set config.distill.teacher to the "
                   f"workdir of a finished run, so the train step adds {arg!r} to "
                   f"the outputs, {drop}")
  if arg == "logits":
    return head + (f"'logits' is computed from {list(_LOGITS_FROM)} when those "
                   f"are present; provide them or 'logits', {drop}")
  return head + (f"make the model or train step output {arg!r}, rename the "
                 f"parameter of {name} to one of the available outputs, {drop}")


def _check(fns: Mapping[str, LossFn], available: Iterable[str]) -> None:
  available = sorted(set(available))
  derivable = {"logits"} if set(_LOGITS_FROM) <= set(available) else set()
  for name in fns:
    for arg in required_inputs(name):
      if arg not in available and arg not in derivable:
        raise ValueError(_missing_message(name, arg, available))


def check_inputs(terms: Mapping[str, float], available: Iterable[str]) -> None:
  """Checks, before compiling, that every term's inputs will be available.

  Args:
    terms: `{name: weight}` as passed to `combine`.
    available: the output names the model and train step produce, e.g.
      `("zimg", "ztxt", "scale", "bias")`.

  Raises:
    ValueError: a weight is invalid, a name is unknown, or a term needs an
      input that is not available; the message names the loss, the missing
      argument and the available outputs.
  """
  weights = _validate_terms(terms)
  _check({name: get(name) for name in weights}, available)


def _call(name: str, fn: LossFn, sig: inspect.Signature,
          inputs: Mapping[str, Array], outputs: Mapping[str, Array]) -> Array:
  args, kwargs = [], {}
  for p in sig.parameters.values():
    if p.kind is p.VAR_POSITIONAL:
      continue
    if p.kind is p.VAR_KEYWORD:
      # A `**kwargs` loss sees every model output it did not name.
      kwargs.update({k: v for k, v in outputs.items()
                     if k not in sig.parameters and k not in kwargs})
      continue
    value = inputs[p.name] if p.name in inputs else p.default
    if p.kind is p.POSITIONAL_ONLY:
      args.append(value)
    elif p.name in inputs:
      kwargs[p.name] = value
  value = jnp.asarray(fn(*args, **kwargs))
  if value.shape:
    raise ValueError(
        f"loss {name!r} returned shape {value.shape}; a loss must return a "
        f"scalar (reduce it, e.g. with .mean()).")
  return value.astype(jnp.float32)


def combine(terms: Mapping[str, float],
            impls: Mapping[str, LossFn] | None = None,
            ) -> Callable[[Mapping[str, Array]], tuple[Array, dict[str, Array]]]:
  """Builds the weighted sum of losses named in `terms`.

  Each loss is called with its parameters bound by name from the outputs
  mapping, so any function of (a subset of) the outputs can be a term. If a
  term takes `logits` and the outputs lack them, they are computed once as
  `scale * zimg @ ztxt.T` in float32 (no bias).

  Args:
    terms: `{name: weight}`; names as accepted by `get`, weights finite and
      >= 0. Terms with weight 0 are dropped.
    impls: optional `{name: fn}` to call instead of the registered loss of
      that name, with the same parameters and value (e.g. the cross-device
      forms from `distributed_form`).

  Returns:
    `loss_fn(outputs) -> (total, per_term)`: `outputs` maps names to arrays
    (`zimg` [B, D], `ztxt` [B, D], `scale` [], `bias` [], and optionally
    `logits` [B, B'], `teacher_logits`, ...); `total` is the float32 scalar
    `sum(weight * per_term[name])` and `per_term` holds each unweighted term.
    `loss_fn.terms` is the `{name: weight}` actually used.

  Raises:
    ValueError: a weight is invalid, every weight is 0, or a name is unknown
      (at build time); a term's input is missing (when `loss_fn` is traced).
  """
  weights = _validate_terms(terms)
  fns = {name: get(name) for name in weights}
  fns.update({name: fn for name, fn in (impls or {}).items() if name in fns})
  sigs = {name: _signature(name, fn) for name, fn in fns.items()}
  wants_logits = any("logits" in sig.parameters for sig in sigs.values())

  def loss_fn(outputs: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
    _check(fns, outputs.keys())
    inputs = outputs
    if (wants_logits and "logits" not in outputs
        and all(k in outputs for k in _LOGITS_FROM)):
      inputs = dict(outputs)
      inputs["logits"] = contrastive.pairwise_logits(
          outputs["zimg"], outputs["ztxt"], outputs["scale"])
    per_term = {name: _call(name, fn, sigs[name], inputs, outputs)
                for name, fn in fns.items()}
    total = sum(weights[name] * value for name, value in per_term.items())
    return total, per_term

  loss_fn.terms = dict(weights)
  return loss_fn


def _cfg_get(cfg: Any, key: str, default: Any) -> Any:
  # Works for dicts and ml_collections.ConfigDict (which is not a Mapping).
  return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def from_config(loss_cfg: Any) -> dict[str, float]:
  """Reads the `{name: weight}` terms for `combine` from a loss config.

  Args:
    loss_cfg: a dict or ConfigDict with `name` (the main loss), optional
      `weight` (default 1.0) and optional `terms` (`{name: weight}` of extra
      terms). A loss named more than once gets the sum of its weights.

  Returns:
    `{name: weight}`, main loss first.
  """
  name = _cfg_get(loss_cfg, "name", None)
  if not isinstance(name, str) or not name:
    raise ValueError(
        f"config.loss.name must name a loss, one of {names()} or a dotted "
        f"path like 'mypkg.losses.my_loss'; got {name!r}.")
  entries = [(name, _as_weight(_cfg_get(loss_cfg, "weight", 1.0),
                               "config.loss.weight"))]
  extra = _cfg_get(loss_cfg, "terms", None) or {}
  if not hasattr(extra, "items"):
    raise ValueError(
        f"config.loss.terms must map loss names to weights, got {extra!r}.")
  for term, weight in extra.items():
    entries.append((term, _as_weight(weight, f"config.loss.terms[{term!r}]")))
  terms: dict[str, float] = {}
  for term, weight in entries:
    terms[term] = terms.get(term, 0.0) + weight
  return terms


for _fn in (contrastive.softmax_contrastive, contrastive.sigmoid_contrastive,
            alignment.kl_alignment, alignment.mse_alignment,
            alignment.mse_to_teacher, alignment.cosine_alignment):
  register(_fn.__name__, _fn)
del _fn
