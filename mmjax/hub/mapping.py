"""Declarative weight maps between a released checkpoint's tensors and mmjax params.

A reader (big_vision.py, hf.py, open_clip.py) describes a family as a list of
`Entry`s: one mmjax parameter, the tensor names it comes from in the released
file, and the two NumPy functions that convert between the layouts. Everything
else is shared and checked here:

  params = mapping.read(tensors, entries, expected, source)   # their -> ours
  tensors = mapping.write(params, entries)                     # ours -> their

`expected` (mmjax path -> shape, from `expected_shapes(model_kwargs, ...)`) is
what the named variant needs. `read` names every tensor that is missing, every
one left over, and every shape that differs (in the file's own names and
layout), so a checkpoint of another variant fails with the list, not halfway.

Paths are "/"-joined keys of the MultiTower params tree, e.g.
"image_tower/encoder/block0/attn/qkv/kernel".
"""

import dataclasses
import fnmatch
import re
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np


class MappingError(ValueError):
  """A released checkpoint's tensors do not match the variant asked for."""


def _same(*arrays):
  return arrays[0]


def _single(x):
  return (x,)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One mmjax parameter and where it lives in a released checkpoint.

  ours: "/"-joined mmjax param path. theirs: their tensor names.
  read(*their arrays) -> our array; write(our array) -> tuple of their arrays
  (in the order of `theirs`). The two are inverses.
  """

  ours: str
  theirs: tuple
  read: Callable = _same
  write: Callable = _single


def entry(ours: str, theirs: str | Sequence[str], read: Callable = _same,
          write: Callable = _single) -> Entry:
  return Entry(ours, (theirs,) if isinstance(theirs, str) else tuple(theirs), read, write)


# ---- layout conversions, each with its inverse ---------------------------------

def torch_linear(prefix_ours: str, prefix_theirs: str, bias: bool = True) -> list[Entry]:
  """A torch nn.Linear (weight [out, in]) as a flax Dense (kernel [in, out])."""
  out = [entry(f"{prefix_ours}/kernel", f"{prefix_theirs}.weight",
               lambda w: w.T, lambda k: (k.T,))]
  if bias:
    out.append(entry(f"{prefix_ours}/bias", f"{prefix_theirs}.bias"))
  return out


def torch_layernorm(prefix_ours: str, prefix_theirs: str) -> list[Entry]:
  return [entry(f"{prefix_ours}/scale", f"{prefix_theirs}.weight"),
          entry(f"{prefix_ours}/bias", f"{prefix_theirs}.bias")]


def split_heads_in(heads: int):
  """(read, write) for torch weights [H * Dh, W] <-> our kernel [W, H, Dh]."""
  def read(w):
    return w.T.reshape(w.shape[1], heads, w.shape[0] // heads)

  def write(k):
    return (k.reshape(k.shape[0], -1).T,)

  return read, write


def torch_qkv_separate(prefix_ours: str, names: Sequence[str], heads: int,
                       bias: bool = True) -> list[Entry]:
  """Separate q, k, v torch Linears (weight [W, W] each, HF style) as our fused
  qkv DenseGeneral (kernel [W, 3, H, Dh], bias [3, H, Dh])."""
  def read_kernel(*ws):
    return np.stack([w.T.reshape(w.shape[1], heads, -1) for w in ws], axis=1)

  def write_kernel(k):
    return tuple(k[:, i].reshape(k.shape[0], -1).T for i in range(k.shape[1]))

  def read_bias(*bs):
    return np.stack([b.reshape(heads, -1) for b in bs], axis=0)

  def write_bias(b):
    return tuple(b[i].reshape(-1) for i in range(b.shape[0]))

  out = [entry(f"{prefix_ours}/kernel", [f"{n}.weight" for n in names],
               read_kernel, write_kernel)]
  if bias:
    out.append(entry(f"{prefix_ours}/bias", [f"{n}.bias" for n in names],
                     read_bias, write_bias))
  return out


def torch_qkv_fused(prefix_ours: str, weight: str, bias_name: str | None,
                    heads: int, parts: int = 3) -> list[Entry]:
  """A fused torch in-projection (weight [parts * W, W], bias [parts * W]:
  nn.MultiheadAttention's in_proj, timm's qkv / kv) as our DenseGeneral with
  kernel [W, parts, H, Dh] and bias [parts, H, Dh]."""
  def read_kernel(w):
    width = w.shape[1]
    return w.reshape(parts, heads, -1, width).transpose(3, 0, 1, 2)

  def write_kernel(k):
    return (k.transpose(1, 2, 3, 0).reshape(-1, k.shape[0]),)

  out = [entry(f"{prefix_ours}/kernel", weight, read_kernel, write_kernel)]
  if bias_name is not None:
    out.append(entry(f"{prefix_ours}/bias", bias_name,
                     lambda b: b.reshape(parts, heads, -1), lambda b: (b.reshape(-1),)))
  return out


def torch_out_proj(prefix_ours: str, prefix_theirs: str, heads: int,
                   bias: bool = True) -> list[Entry]:
  """An attention output torch Linear (weight [W, H * Dh]) as our DenseGeneral
  over (heads, head_dim) (kernel [H, Dh, W])."""
  def read(w):
    return w.T.reshape(heads, -1, w.shape[0])

  def write(k):
    return (k.reshape(-1, k.shape[-1]).T,)

  out = [entry(f"{prefix_ours}/kernel", f"{prefix_theirs}.weight", read, write)]
  if bias:
    out.append(entry(f"{prefix_ours}/bias", f"{prefix_theirs}.bias"))
  return out


def torch_patch_conv(ours: str, theirs: str) -> Entry:
  """A torch Conv2d patch embedding (weight [W, C, p, p]) as our Dense over
  patches flattened in (row, column, channel) order (kernel [p * p * C, W])."""
  def read(w):
    return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])

  def write(k, channels=3):
    p = int(round((k.shape[0] / channels) ** 0.5))
    return (k.reshape(p, p, channels, k.shape[1]).transpose(3, 2, 0, 1),)

  return entry(ours, theirs, read, write)


# ---- reading and writing ------------------------------------------------------

def _nest(flat: Mapping[str, np.ndarray]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
  """Nested params -> {"/"-joined path: array}."""
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, path + "/"))
    else:
      out[path] = value
  return out


def _natural(name: str) -> list:
  """Sort key that puts block 2 before block 10."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _listing(names: Iterable[str], limit: int = 15) -> str:
  names = sorted(names, key=_natural)
  more = f"\n    ... and {len(names) - limit} more" if len(names) > limit else ""
  return "".join(f"\n    {n}" for n in names[:limit]) + more


def read(tensors: Mapping[str, np.ndarray], entries: Sequence[Entry],
         expected: Mapping[str, tuple], source: str, *,
         ignore: Sequence[str] = (), what: str = "the model") -> dict:
  """Converts a released checkpoint's tensors into a nested mmjax params tree.

  tensors: their name -> array (already NumPy). entries: the family's map.
  expected: mmjax path -> shape of the variant asked for (`expected_shapes`).
  ignore: fnmatch patterns of their tensors that carry no parameter (buffers,
    task heads), dropped without complaint.
  what: the variant's description, for messages.

  Returns {path: float32 array} nested by "/". Raises MappingError naming every
  missing and leftover tensor and every shape that differs.
  """
  mapped_ours = {e.ours for e in entries}
  unmapped = sorted(set(expected) - mapped_ours)
  if unmapped:  # a bug in a reader's map, not in the user's file
    raise AssertionError(f"the map for {what} leaves out mmjax params: {unmapped[:10]}")
  wanted = {name for e in entries for name in e.theirs}
  missing = sorted(wanted - set(tensors))
  leftover = sorted(n for n in set(tensors) - wanted
                    if not any(fnmatch.fnmatchcase(n, p) for p in ignore))
  problems = []
  shape_errors = []
  for e in entries:
    if any(n not in tensors for n in e.theirs):
      continue
    want = tuple(expected[e.ours])
    their_want = [a.shape for a in e.write(np.zeros(want, np.float32))]
    for name, shape in zip(e.theirs, their_want):
      got = tuple(np.shape(tensors[name]))
      if got != tuple(shape):
        shape_errors.append(f"{name}: {got} in the file, {tuple(shape)} expected")
  # Shapes first: they say most plainly that the file is another variant.
  if shape_errors:
    problems.append(f"  shapes that differ ({len(shape_errors)}):" + _listing(shape_errors))
  if missing:
    problems.append(f"  missing from the file ({len(missing)}):" + _listing(missing))
  if leftover:
    problems.append(f"  in the file but not in {what} ({len(leftover)}):" + _listing(leftover))
  if problems:
    raise MappingError(
        f"{source} does not hold {what}:\n" + "\n".join(problems) +
        "\nCheck that the variant / model name you gave is the checkpoint's, "
        "and that the file is complete.")
  flat = {}
  for e in entries:
    value = np.asarray(e.read(*[np.asarray(tensors[n], np.float32) for n in e.theirs]),
                       np.float32)
    assert value.shape == tuple(expected[e.ours]), (e.ours, value.shape)
    flat[e.ours] = value
  return _nest(flat)


def rows(e: Entry, start: int, stop: int, total: int) -> Entry:
  """`e` applied to rows start:stop of a tensor that several params share
  (nn.MultiheadAttention's in_proj holds q, then k and v, which our MAP head
  keeps as two params). Its write gives the whole tensor with -0.0 in the rows
  of the others: x + (-0.0) == x bitwise for every x, so `write` adds the parts
  up exactly, and `read`'s shape check sees (and names) the whole tensor."""
  def read_rows(x):
    return e.read(x[start:stop])

  def write_rows(k):
    part = e.write(k)[0]
    whole = np.full((total,) + part.shape[1:], -0.0, part.dtype)
    whole[start:stop] = part
    return (whole,)

  return Entry(e.ours, e.theirs, read_rows, write_rows)


def write(params: Mapping, entries: Sequence[Entry]) -> dict[str, np.ndarray]:
  """The inverse of `read`: a nested mmjax params tree -> their name -> float32
  array. A tensor named by several entries (see `rows`) is the sum of their parts."""
  flat = flatten(params)
  out = {}
  for e in entries:
    arrays = e.write(np.asarray(flat[e.ours], np.float32))
    for name, value in zip(e.theirs, arrays):
      # A C-ordered copy (safetensors writes a strided view wrongly), keeping
      # 0-d tensors 0-d (np.ascontiguousarray would make them [1]).
      value = np.array(value, np.float32, order="C", copy=True)
      out[name] = out[name] + value if name in out else value
  return out


def expected_shapes(model_kwargs: Mapping, image_size: int | None,
                    context_length: int | None) -> dict[str, tuple]:
  """mmjax path -> shape of every parameter of MultiTower(**model_kwargs), from
  jax.eval_shape (nothing is allocated or compiled)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax.core import meta  # pylint: disable=g-import-not-at-top
  from mmjax.models import multi_tower  # pylint: disable=g-import-not-at-top

  model = multi_tower.MultiTower(**model_kwargs)
  batch = {}
  for modality, spec in model_kwargs["towers"].items():
    key = spec.get("input", modality)
    if modality == "image":
      batch[key] = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    else:
      batch[key] = jax.ShapeDtypeStruct((1, context_length), jnp.int32)
  shapes = jax.eval_shape(lambda b: model.init(jax.random.PRNGKey(0), b), batch)["params"]
  shapes = meta.unbox(shapes)
  return {path: tuple(v.shape) for path, v in flatten(shapes).items()}
