"""Loss terms: which function, with what weight, over which pair of modalities,
reading which inputs; and their weighted sum.

A config names terms as

  config.loss.terms.<id> = dict(fn=NAME_OR_DOTTED_PATH, weight=w, pair=(a, b),
                                inputs={parameter: output or batch field})

(`pair` defaults to (image, text), `inputs` to {}), and `loss.name` (with
`loss.weight` and `loss.pair`) is the shorthand for one main term. A bare
number, `config.loss.terms.<fn> = w`, is a term of loss <fn> over (image, text).

A loss asks for what it needs by parameter name. For a term over (a, b):

  zimg, ztxt                  z/<a>, z/<b>: the pair's unit-norm embeddings
  scale, bias                 scale/<a>/<b> and bias/<a>/<b> where the model
                              has a pair scale, else the shared scale and bias
  logits                      scale * zimg @ ztxt.T (float32), computed here;
                              for a term that also reads teacher_logits, the
                              student's zimg @ ztxt.T / teacher/temperature,
                              the matrix the teacher's is compared with
  teacher_zimg, teacher_ztxt  teacher/z/<a>, teacher/z/<b>
  teacher_logits              teacher/z/<a> @ teacher/z/<b>.T / teacher/temperature
  any other name              the model output of that name, else the batch
                              field of that name (labels, targets, ids, ...)

and `inputs` maps a parameter to any output or field by its full name (e.g.
dict(logits="itm/logits", labels="itm/labels")). Every name is resolved
before compiling (`check`), so a missing one fails with a message, not inside XLA.
"""

import dataclasses
import inspect
import math
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp

from mmjax.losses import contrastive
from mmjax.losses import registry

Array = jax.Array
DEFAULT_PAIR = ("image", "text")
TERM_KEYS = ("fn", "weight", "pair", "inputs")
TEACHER_TEMPERATURE = "teacher/temperature"
# Parameters that name a pair's output, and the output each stands for.
_PAIR_ALIASES = {"zimg": "z/{a}", "ztxt": "z/{b}",
                 "teacher_zimg": "teacher/z/{a}", "teacher_ztxt": "teacher/z/{b}"}
_PAIR_SCALARS = ("scale", "bias")
# Parameters that read the pair's embeddings, so need a tower for each side.
_READS_PAIR = ("zimg", "ztxt", "logits", "teacher_zimg", "teacher_ztxt", "teacher_logits")


class LossConfigError(ValueError):
  """A loss term that cannot be computed; the message names the term and the fix."""


@dataclasses.dataclass(frozen=True)
class Term:
  """One weighted loss term.

  id: its name in config.loss.terms (and in the metric train/loss/<id>);
  fn_name: the registry name or dotted path; fn: the function; weight: > 0;
  pair: (a, b) modalities; inputs: {parameter: output or batch field}.
  """

  id: str
  fn_name: str
  fn: Callable[..., Array]
  weight: float
  pair: tuple[str, str] = DEFAULT_PAIR
  inputs: Mapping[str, str] = dataclasses.field(default_factory=dict)

  @property
  def signature(self) -> inspect.Signature:
    return _signature(self)


def _signature(term: Term) -> inspect.Signature:
  try:
    return inspect.signature(term.fn)
  except (TypeError, ValueError) as e:
    raise LossConfigError(
        f"cannot read the parameters of loss {term.fn_name!r} ({e}); wrap it in a `def` "
        "whose parameter names are the inputs it reads.") from e


def _as_weight(weight: Any, what: str) -> float:
  try:
    value = float(weight)
  except (TypeError, ValueError):
    raise LossConfigError(f"weight of {what} must be a number, got {weight!r}") from None
  if not math.isfinite(value) or value < 0:
    raise LossConfigError(f"weight of {what} is {value}; weights must be finite and >= 0 "
                          "(use 0 to switch a term off).")
  return value


def _cfg_get(cfg: Any, key: str, default: Any) -> Any:
  # Works for dicts and ml_collections.ConfigDict (which is not a Mapping).
  return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def _pair(value: Any, where: str) -> tuple[str, str]:
  if (isinstance(value, str) or len(value) != 2
      or not all(isinstance(m, str) and m for m in value)):
    raise LossConfigError(f"{where}={value!r} must be two modality names, e.g. "
                          "('image', 'text').")
  return tuple(value)


def make_term(term_id: str, spec: Any) -> Term:
  """A Term from `spec`: a weight (loss `term_id` over (image, text)) or a
  mapping with keys TERM_KEYS."""
  where = f"config.loss.terms.{term_id}"
  if isinstance(spec, (int, float)) and not isinstance(spec, bool):
    spec = {"fn": term_id, "weight": spec}
  if not hasattr(spec, "items"):
    raise LossConfigError(f"{where}={spec!r}: give a weight, or dict(fn=..., weight=..., "
                          "pair=(a, b)).")
  spec = dict(spec.items())
  unknown = sorted(set(spec) - set(TERM_KEYS))
  if unknown:
    raise LossConfigError(f"{where} has unknown keys {unknown}; a term takes {TERM_KEYS}.")
  fn_name = spec.get("fn") or term_id
  inputs = dict(spec.get("inputs") or {})
  if not all(isinstance(k, str) and isinstance(v, str) for k, v in inputs.items()):
    raise LossConfigError(f"{where}.inputs={inputs!r} must map parameter names to output "
                          "or batch field names, e.g. dict(logits='itm/logits').")
  return Term(id=term_id, fn_name=fn_name, fn=registry.get(fn_name),
              weight=_as_weight(spec.get("weight", 1.0), where),
              pair=_pair(spec.get("pair", DEFAULT_PAIR), where + ".pair"), inputs=inputs)


def from_config(loss_cfg: Any) -> dict[str, Term]:
  """The weighted terms of a loss config, main term first; weight-0 terms dropped.

  loss_cfg: a dict or ConfigDict with `name` (the main loss; "" for none),
  optional `weight` (1.0), `pair` ((image, text)) and `terms` ({id: spec}, see
  make_term). A bare-number term naming the main loss adds to its weight.
  """
  name = _cfg_get(loss_cfg, "name", None)
  if name is not None and not isinstance(name, str):
    raise LossConfigError(f"config.loss.name must name a loss, one of {registry.names()} "
                          f"or a dotted path like 'mypkg.losses.my_loss'; got {name!r}.")
  terms: dict[str, Term] = {}
  if name:
    terms[name] = Term(id=name, fn_name=name, fn=registry.get(name),
                       weight=_as_weight(_cfg_get(loss_cfg, "weight", 1.0),
                                         "config.loss.weight"),
                       pair=_pair(_cfg_get(loss_cfg, "pair", DEFAULT_PAIR),
                                  "config.loss.pair"))
  extra = _cfg_get(loss_cfg, "terms", None) or {}
  if not hasattr(extra, "items"):
    raise LossConfigError(f"config.loss.terms must map term ids to terms, got {extra!r}.")
  for term_id, spec in extra.items():
    term = make_term(term_id, spec)
    if term_id in terms:
      if not isinstance(spec, (int, float)):
        raise LossConfigError(f"config.loss.terms.{term_id} has the id of the main loss "
                              "(config.loss.name); give the term another id.")
      terms[term_id] = dataclasses.replace(terms[term_id],
                                           weight=terms[term_id].weight + term.weight)
    else:
      terms[term_id] = term
  if not terms:
    raise LossConfigError(f"no loss terms: set config.loss.name to one of "
                          f"{registry.names()} (or a dotted path), or add config.loss.terms.")
  kept = {k: t for k, t in terms.items() if t.weight}
  if not kept:
    raise LossConfigError(f"every loss term has weight 0 ({sorted(terms)}); give at least "
                          "one a positive weight.")
  return kept


# --- binding parameters to inputs ----------------------------------------------

def _wanted(term: Term) -> list[inspect.Parameter]:
  return [p for p in term.signature.parameters.values()
          if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _source(term: Term, param: str, available: set) -> tuple | None:
  """How `param` of `term` is filled: ("name", key) read from the outputs or
  the batch, ("logits", za, zb, scale_key, temperature_key) computed, or None."""
  a, b = term.pair
  if param in term.inputs:
    return ("name", term.inputs[param]) if term.inputs[param] in available else None
  if param in _PAIR_ALIASES:
    key = _PAIR_ALIASES[param].format(a=a, b=b)
    if key in available:
      return ("name", key)
    # Plain arrays under the parameter's own name (a loss called by hand).
    return ("name", param) if param in available else None
  if param in _PAIR_SCALARS:
    own = f"{param}/{a}/{b}"
    return ("name", own if own in available else param) if (
        own in available or param in available) else None
  if param in ("logits", "teacher_logits"):
    if param in available:  # given as such, e.g. by a caller's own outputs
      return ("name", param)
    reads = {p.name for p in _wanted(term)}
    teacher = param == "teacher_logits"
    za, zb = (_source(term, "teacher_zimg" if teacher else "zimg", available),
              _source(term, "teacher_ztxt" if teacher else "ztxt", available))
    if za is None or zb is None:
      return None
    if teacher or "teacher_logits" in reads:  # compared at the teacher's temperature
      return (("logits", za[1], zb[1], None, TEACHER_TEMPERATURE)
              if TEACHER_TEMPERATURE in available else None)
    scale = _source(term, "scale", available)
    return None if scale is None else ("logits", za[1], zb[1], scale[1], None)
  return ("name", param) if param in available else None


def _missing(term: Term, param: str, outputs: list, batch: list,
             modalities: list) -> str:
  head = f"loss term {term.id!r} ({term.fn_name}) "
  fix = (f"set config.loss.terms.{term.id}.inputs={{{param!r}: NAME}} to read another "
         f"output or field, or remove the term.")
  a, b = term.pair
  if param in term.inputs:
    space = term.inputs[param].split("/")[0]
    if "/" in term.inputs[param] and not any(o.startswith(space + "/") for o in outputs):
      # A head's output namespace that no head writes: the head itself is missing.
      return (head + f"reads {param!r} from {term.inputs[param]!r}, an output of a head "
              f"{space!r} the model does not have; add it (config.model.heads.{space} = "
              f"dict(kind=..., ...), e.g. kind='caption_decoder' for a captioning term) or "
              "remove the term.")
    return (head + f"reads {param!r} from {term.inputs[param]!r} (its inputs), which no "
            f"model output {outputs} or batch field {batch} provides; {fix}")
  reads = {p.name for p in _wanted(term)}
  if param == "logits" and "teacher_logits" in reads:
    param = ("'logits' (compared with 'teacher_logits' at the teacher's temperature, "
             f"{TEACHER_TEMPERATURE})")
  if param.startswith(("teacher_", "'logits'")):
    shown = param if param.startswith("'") else repr(param)
    return (head + f"reads {shown}, which needs a teacher: set config.distill.teacher "
            f"to the workdir of a finished run with towers for {term.pair}, or remove the term.")
  if param in ("zimg", "ztxt", "logits", "scale", "bias") and modalities:
    absent = [m for m in (a, b) if m not in modalities]
    if absent:
      return (head + f"is over the pair {term.pair}, but the model has no tower for "
              f"{absent} (towers: {modalities}); add config.model.towers.{absent[0]} or set "
              f"config.loss.terms.{term.id}.pair to two of {modalities}.")
  return (head + f"reads {param!r}, which no model output {outputs} or batch field "
          f"{batch} provides; {fix}")


def check(terms: Mapping[str, Term], outputs: Iterable[str], batch: Iterable[str] = (),
          modalities: Iterable[str] = ()) -> None:
  """Raises LossConfigError, before compiling, for a term that cannot be fed.

  outputs: the names the model (and a teacher) produce; batch: the fields of
  a training batch; modalities: the model's towers (for the message).
  """
  terms = as_terms(terms)
  outputs, batch, modalities = sorted(outputs), sorted(batch), sorted(modalities)
  available = set(outputs) | set(batch)
  for term in terms.values():
    reads_pair = any(p.name in _READS_PAIR and p.name not in term.inputs
                     for p in _wanted(term))
    if modalities and reads_pair:
      for m in term.pair:
        if m not in modalities:
          raise LossConfigError(_missing(term, "zimg", outputs, batch, modalities))
    # A missing teacher is named first: it is why derived logits are missing too.
    for p in sorted(_wanted(term), key=lambda p: not p.name.startswith("teacher_")):
      if p.default is p.empty and _source(term, p.name, available) is None:
        raise LossConfigError(_missing(term, p.name, outputs, batch, modalities))


def _fetch(source: tuple, values: Mapping[str, Array]) -> Array:
  if source[0] == "name":
    return values[source[1]]
  _, za, zb, scale, temperature = source
  mult = values[scale] if scale else 1.0 / values[temperature]
  return contrastive.pairwise_logits(values[za], values[zb], mult)


def _call(term: Term, fn: Callable, values: Mapping[str, Array], available: set) -> Array:
  args, kwargs = [], {}
  named = set(term.signature.parameters)
  for p in term.signature.parameters.values():
    if p.kind is p.VAR_POSITIONAL:
      continue
    if p.kind is p.VAR_KEYWORD:  # a `**kwargs` loss sees every other input
      kwargs.update({k: v for k, v in values.items() if k not in named and k not in kwargs})
      continue
    source = _source(term, p.name, available)
    if source is None:
      if p.default is p.empty:
        raise LossConfigError(_missing(term, p.name, sorted(values), [], []))
      if p.kind is p.POSITIONAL_ONLY:  # keeps the later positional ones in place
        args.append(p.default)
      continue
    if p.kind is p.POSITIONAL_ONLY:
      args.append(_fetch(source, values))
    else:
      kwargs[p.name] = _fetch(source, values)
  value = jnp.asarray(fn(*args, **kwargs))
  if value.shape:
    raise LossConfigError(f"loss term {term.id!r} ({term.fn_name}) returned shape "
                          f"{value.shape}; a loss must return a scalar (reduce it, e.g. "
                          "with .mean()).")
  return value.astype(jnp.float32)


def as_terms(terms: Mapping[str, Any]) -> dict[str, Term]:
  """{id: Term} from a mapping of Terms, specs or bare weights ({"mse_alignment":
  0.5} is loss mse_alignment over (image, text)); weight-0 terms dropped."""
  if not hasattr(terms, "items"):
    raise LossConfigError(f"loss terms must be a mapping {{id: term or weight}}, "
                          f"got {terms!r}")
  out = {tid: t if isinstance(t, Term) else make_term(tid, t) for tid, t in terms.items()}
  out = {tid: t for tid, t in out.items() if t.weight}
  if not out:
    raise LossConfigError(f"no loss term with a positive weight in {sorted(terms)}; give "
                          "at least one a positive weight.")
  return out


def combine(terms: Mapping[str, Any], impls: Mapping[str, Callable] | None = None,
            learned: bool = False):
  """The weighted sum of `terms` ({id: Term}, or anything as_terms reads).

  impls: optional {term id: fn} run instead of the term's fn, with the same
  parameters and value (e.g. a distributed form chosen by sharded.choose_form).
  learned: Kendall et al.'s uncertainty weighting: term t adds
  weight * exp(-s_t) * L_t + s_t, with s_t the model output `log_var/<t>`
  (a learned log-variance: a noisy or large term learns a large s and a
  smaller weight, and the + s_t keeps s from growing without bound).

  Returns `loss_fn(outputs, batch=None) -> (total, per_term)`: outputs and
  batch map names to arrays; total is the float32 scalar sum(weight * term)
  and per_term holds each unweighted term by id. `loss_fn.terms` is `terms`.
  """
  terms = as_terms(terms)
  impls = dict(impls or {})

  def loss_fn(outputs: Mapping[str, Array], batch: Mapping[str, Array] | None = None):
    values = {**(batch or {}), **outputs}  # an output shadows a field of its name
    available = set(values)
    per_term = {tid: _call(t, impls.get(tid, t.fn), values, available)
                for tid, t in terms.items()}
    if not learned:
      total = sum(terms[tid].weight * value for tid, value in per_term.items())
      return total, per_term
    total = 0.0
    for tid, value in per_term.items():
      if f"log_var/{tid}" not in values:
        raise LossConfigError(f"loss term {tid!r} has learned weights, but the model gives "
                              f"no log_var/{tid}; build the model with "
                              f"task_log_vars={tuple(terms)} (mmjax.train.build does).")
      s = values[f"log_var/{tid}"]
      total = total + terms[tid].weight * jnp.exp(-s) * value + s
    return total, per_term

  loss_fn.terms = dict(terms)
  return loss_fn
