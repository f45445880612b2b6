"""Names for pluggable parts: a registry of one kind, or any dotted path.

Towers, heads, models, losses and evaluators are all looked up the same way:
a short registered name (`"vit"`, `"retrieval"`) or the dotted path of an
object in any importable module (`"myfork.towers.Sketch"`, or
`"myfork.towers:Sketch"`), so a fork adds a part without editing mmjax.
"""

import difflib
import importlib
from typing import Any, Mapping


class UnknownNameError(ValueError):
  """A name that is neither registered nor an importable dotted path."""


def import_path(path: str, what: str) -> Any:
  """The object at `path` ("pkg.module.Name" or "pkg.module:Name").

  Raises UnknownNameError naming the module or attribute that failed.
  """
  if ":" in path:
    module_name, _, attr_path = path.partition(":")
  else:
    module_name, _, attr_path = path.rpartition(".")
  if not module_name or not attr_path:
    raise UnknownNameError(f"{what} {path!r}: write a dotted path 'pkg.module.Name' "
                           "or 'pkg.module:Name'.")
  try:
    obj = importlib.import_module(module_name)
  except ImportError as e:
    raise UnknownNameError(
        f"{what} {path!r}: could not import module {module_name!r} "
        f"({type(e).__name__}: {e}). Make sure it is installed or on PYTHONPATH.") from e
  for part in attr_path.split("."):
    try:
      obj = getattr(obj, part)
    except AttributeError as e:
      raise UnknownNameError(
          f"{what} {path!r}: module {module_name!r} was imported but has no "
          f"attribute {attr_path!r} (failed at {part!r}).") from e
  return obj


def resolve(name: Any, table: Mapping[str, Any], what: str) -> Any:
  """`table[name]`, or the object at dotted path `name`; a non-string passes through.

  what: the kind of thing, for messages (e.g. "tower kind (config.model.towers.image)").
  Raises UnknownNameError listing the registered names and saying that dotted
  paths work.
  """
  if not isinstance(name, str):
    if name is None:
      raise UnknownNameError(f"{what} is not set; choose one of {sorted(table)} or a "
                             "dotted path 'pkg.module.Name'.")
    return name
  if name in table:
    return table[name]
  if "." in name or ":" in name:
    return import_path(name, what)
  close = difflib.get_close_matches(name, list(table), n=1)
  hint = f" Did you mean {close[0]!r}?" if close else ""
  raise UnknownNameError(
      f"unknown {what} {name!r}.{hint} Registered: {sorted(table)}; or name your own "
      f"by its dotted path, e.g. 'mypkg.module.{name}'.")
