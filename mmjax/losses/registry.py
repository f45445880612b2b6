"""Loss registry: look a loss up by name or dotted path, with its distributed forms.

Every loss is a plain function whose parameter names say what it reads
(`zimg`, `ztxt`, `scale`, `bias`, `logits`, `teacher_logits`, any model
output or batch field; see mmjax/losses/terms.py), so a fork plugs in a loss
without touching mmjax:

  # myfork/losses.py
  import mmjax.losses

  @mmjax.losses.register("hinge")
  def hinge(zimg, ztxt, scale): ...

or, without registering, by dotted path: `fn="myfork.losses.hinge"`.

A loss may come with cross-device forms (`register(..., distributed={impl:
form})`): functions of the same parameters over global, batch-sharded arrays
that never hold the global B x B logits. They are kept with the function
itself, so the loss finds them whether it is named by its registered name or
by its dotted path.
"""

import difflib
import inspect
from typing import Any, Callable, Mapping

import jax

from mmjax import registry as names_lib
from mmjax.losses import alignment
from mmjax.losses import captioning
from mmjax.losses import contrastive
from mmjax.losses import matching
from mmjax.losses import sharded

Array = jax.Array
LossFn = Callable[..., Array]

_REGISTRY: dict[str, LossFn] = {}
# loss function -> {impl name: form over global arrays}; the first impl is
# what loss.impl="auto" picks when the batch spans several devices.
_DISTRIBUTED: dict[Any, dict[str, Callable[..., Array]]] = {}


def register(name: str, fn: LossFn | None = None, *,
             distributed: Mapping[str, Callable[..., Array]] | None = None):
  """Registers `fn` as the loss called `name`; also usable as a decorator.

  `register("my_loss", fn)` or `@register("my_loss")` above a `def`.
  Registering the same function twice is a no-op, and so is re-running the
  module that defines it (same module and qualified name; e.g. a notebook cell
  or `importlib.reload`), which replaces the entry. Any other function under a
  taken name raises `ValueError`.

  Args:
    name: the name configs use (`loss.name` or a key of `loss.terms`).
    fn: the loss; parameters are bound by name (mmjax/losses/terms.py).
    distributed: optional {impl: form}: each form takes the loss's parameters
      as global arrays plus keyword-only `mesh` and `batch_axes`, and returns
      the same value and gradient (e.g. {"ring": sharded_sigmoid_contrastive}).

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
    if distributed:
      _DISTRIBUTED[f] = dict(distributed)
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
    fn = names_lib.import_path(name, "loss")
    if not callable(fn):
      raise ValueError(f"loss {name!r} is {fn!r}, which is not callable.")
    return fn
  close = [n for n in names() if name in n] or difflib.get_close_matches(
      name, names(), n=1)
  hint = f" Did you mean {close[0]!r}?" if close else ""
  raise ValueError(
      f"unknown loss {name!r}.{hint} Registered losses: {names()}. To use your "
      f"own, register it with `@mmjax.losses.register({name!r})` in a module "
      f"that is imported before training, or name it by dotted path, e.g. "
      f"'mypkg.losses.{name}' or 'mypkg.losses:{name}'.")


def distributed_forms(fn: LossFn) -> dict[str, Callable[..., Array]]:
  """{impl: form} registered with loss function `fn` ({} if none)."""
  try:
    return dict(_DISTRIBUTED.get(fn, {}))
  except TypeError:  # an unhashable callable has none
    return {}


def _signature(name: str, fn: LossFn) -> inspect.Signature:
  try:
    return inspect.signature(fn)
  except (TypeError, ValueError) as e:
    raise ValueError(
        f"cannot read the parameters of loss {name!r} ({e}); wrap it in a "
        f"`def` whose parameter names are the inputs it reads.") from e


def required_inputs(name: str | LossFn) -> tuple[str, ...]:
  """Returns the inputs loss `name` (or a loss function) needs: its parameters
  without defaults.

  Parameters with defaults are filled when present; `*args` and `**kwargs`
  are never required.
  """
  fn = get(name) if isinstance(name, str) else name
  sig = _signature(_describe(fn), fn)
  return tuple(
      p.name for p in sig.parameters.values()
      if p.default is p.empty
      and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


def _register_builtins() -> None:
  register("softmax_contrastive", contrastive.softmax_contrastive,
           distributed={"gather": sharded.sharded_softmax_contrastive})
  register("sigmoid_contrastive", contrastive.sigmoid_contrastive,
           distributed={"ring": sharded.sharded_sigmoid_contrastive})
  for fn in (alignment.kl_alignment, alignment.mse_alignment, alignment.mse_to_teacher,
             alignment.cosine_alignment, matching.binary_cross_entropy,
             captioning.caption_cross_entropy):
    register(fn.__name__, fn)


_register_builtins()
