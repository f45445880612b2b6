"""Collectives of a compiled program, read from its optimised HLO text.

Each collective instruction is counted as many times as it runs per step: an
op inside a while loop's body (gradient accumulation, the ring loss's hops)
runs its known trip count times. Its `bytes` are the size of the whole buffer
it combines or moves per chip (all-reduce: the operand; all-gather: the
gathered result; reduce-scatter: the input before scattering;
collective-permute and all-to-all: the operand), and its mesh axes are those
along which the chips of one replica group (or one source -> target pair)
differ.
"""

import collections
import dataclasses
import re

import numpy as np

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
          "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
          "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$")
_SHAPE = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([\d,]*)\]")
_CALLEES = re.compile(
    r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"\b(?:branch_computations|called_computations)=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')
_GROUPS = re.compile(r"replica_groups=(\{\{[\d,{} ]*\}\}|\[[\d,]+\]<=\[[\d,]+\](?:T\([\d,]+\))?)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_PAIRS = re.compile(r"source_target_pairs=\{([\d,{} ]*)\}")


@dataclasses.dataclass
class Collective:
  kind: str
  count: int          # executions per step
  bytes: int          # per chip per step, all executions together
  axes: tuple[str, ...]
  group_size: int     # chips per replica group (2 for a permute's pair)
  dtypes: set = dataclasses.field(default_factory=set)  # element types moved


def _array_bytes(dtype: str, dims: str) -> int:
  n = 1
  for d in dims.split(","):
    if d:
      n *= int(d)
  return n * _BYTES[dtype]


def shape_bytes(text: str) -> list[int]:
  """Bytes of each array shape in an HLO type string, in order."""
  return [_array_bytes(dtype, dims) for dtype, dims in _SHAPE.findall(text)]


def computations(text: str) -> dict[str, list[str]]:
  """{computation name: its instruction lines}, plus "__entry__" -> entry's name."""
  comps, current = {}, None
  for line in text.splitlines():
    m = _HEADER.match(line)
    if m:
      current = m.group(2)
      comps[current] = []
      if m.group(1):
        comps["__entry__"] = [current]
      continue
    if line.strip() == "}":
      current = None
    elif current is not None and line.strip():
      comps[current].append(line)
  return comps


def _definitions(lines: list[str]) -> dict[str, tuple[str, str]]:
  """{instruction name: (opcode, operand text)} of one computation."""
  out = {}
  for line in lines:
    m = _INSTR.match(line)
    if m:
      out[m.group(1)] = (m.group(3), m.group(4))
  return out


def _constant(name: str, defs: dict) -> int | None:
  """The integer value of `name`, followed through copies and bitcasts."""
  for _ in range(8):
    if name not in defs:
      return None
    op, args = defs[name]
    if op == "constant":
      m = re.match(r"\s*(-?\d+)\)", args)
      return int(m.group(1)) if m else None
    if op not in ("copy", "bitcast", "convert"):
      return None
    name = args.split(")")[0].strip().lstrip("%")
  return None


def trip_count(line: str, comps: dict[str, list[str]], caller: list[str]) -> int | None:
  """A while loop's trip count: its "known_trip_count", else read from a
  condition `i < K` over tuple element i whose initial value is a constant
  (the form lax.fori_loop lowers to, after the TPU compiler's rewrites)."""
  trip = _TRIP.search(line)
  if trip:
    return int(trip.group(1))
  cond = re.search(r"condition=%?([\w.\-]+)", line)
  init = re.search(r" while\(%?([\w.\-]+)\)", line)
  if not cond or not init or cond.group(1) not in comps:
    return None
  defs = _definitions(comps[cond.group(1)])
  root = next((l for l in comps[cond.group(1)] if l.strip().startswith("ROOT")), "")
  m = re.search(r"compare\(%?([\w.\-]+), %?([\w.\-]+)\), direction=LT", root)
  if not m:
    return None
  index_def = defs.get(m.group(1))
  bound = _constant(m.group(2), defs)
  if index_def is None or index_def[0] != "get-tuple-element" or bound is None:
    return None
  element = re.search(r"index=(\d+)", index_def[1])
  caller_defs = _definitions(caller)
  tuple_def = caller_defs.get(init.group(1))
  if element is None or tuple_def is None or tuple_def[0] != "tuple":
    return None
  operands = [a.strip().lstrip("%") for a in re.sub(r"/\*.*?\*/", "", tuple_def[1]).split(")")[0].split(",")]
  start = _constant(operands[int(element.group(1))], caller_defs)
  return None if start is None else max(bound - start, 0)


def executions(comps: dict[str, list[str]], loops: bool = True) -> tuple[dict[str, int], bool]:
  """How many times each computation runs per call of the entry; and whether
  every while loop on the way had a trip count that could be read.
  loops=False counts every loop body once, as XLA's cost analysis does."""
  runs = collections.Counter()
  known = True
  entry = comps["__entry__"][0]

  def visit(name: str, times: int):
    nonlocal known
    runs[name] += times
    for line in comps.get(name, ()):
      for key, callee in _CALLEES.findall(line):
        if key == "body":
          trip = trip_count(line, comps, comps.get(name, [])) if loops else 1
          if trip is None:
            known = False
          visit(callee, times * (trip if trip is not None else 1))
        elif key != "to_apply" or " all-reduce(" not in line:  # reducers are scalar
          visit(callee, times)
      for group in _BRANCHES.findall(line):
        for callee in re.findall(r"%?([\w.\-]+)", group):
          visit(callee, times)

  visit(entry, 1)
  return runs, known


_MESH_GROUPS = re.compile(
    r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\(\[([\d,]+)\](?:T\(([\d,]+)\))?\))?"
    r"\s*\{([^}]*)\}")


def _iota(dims: list[int], perm: list[int] | None) -> np.ndarray:
  ids = np.arange(int(np.prod(dims))).reshape(dims)
  return ids.transpose(perm) if perm else ids


def _mesh_groups(m) -> list[list[int]]:
  """Groups of the `mesh['axis_0'=A,...], device_ids=([dims]T(perm)) {'axis_i'}`
  form: device ids laid out on the compiler's own mesh, grouped along the
  listed axes."""
  names, sizes = [], []
  for part in m.group(1).split(","):
    name, size = part.split("=")
    names.append(name.strip().strip("'"))
    sizes.append(int(size))
  if m.group(2):
    ids = _iota([int(d) for d in m.group(2).split(",")],
                [int(p) for p in m.group(3).split(",")] if m.group(3) else None)
  else:
    ids = np.arange(int(np.prod(sizes)))
  ids = ids.reshape(sizes)
  grouped = [names.index(a.strip().strip("'")) for a in m.group(4).split(",") if a.strip()]
  rest = [a for a in range(len(sizes)) if a not in grouped]
  size = int(np.prod([sizes[a] for a in grouped])) if grouped else 1
  return ids.transpose(rest + grouped).reshape(-1, size).tolist()


def _groups(line: str) -> list[list[int]]:
  mesh_form = _MESH_GROUPS.search(line)
  if mesh_form is not None:
    return _mesh_groups(mesh_form)
  m = _GROUPS.search(line)
  if m is None:
    return []
  spec = m.group(1)
  if spec.startswith("{"):
    return [[int(i) for i in g.split(",") if i.strip()]
            for g in re.findall(r"\{([\d, ]*)\}", spec[1:-1])]
  shape, rest = spec.split("<=")
  shape = [int(d) for d in shape.strip("[]").split(",")]
  dims_text, _, perm = rest.partition("T")
  dims = [int(d) for d in dims_text.strip("[]").split(",")]
  ids = np.arange(int(np.prod(dims))).reshape(dims)
  if perm:
    ids = ids.transpose([int(p) for p in perm.strip("()").split(",")])
  return ids.reshape(shape).tolist()


def _pairs(line: str) -> list[list[int]]:
  m = _PAIRS.search(line)
  if m is None:
    return []
  return [[int(i) for i in p.split(",")] for p in re.findall(r"\{(\d+,\d+)\}", m.group(1))]


def axes_of(groups: list[list[int]], mesh_shape: tuple[int, ...],
            axis_names: tuple[str, ...]) -> tuple[str, ...]:
  """Mesh axes along which the partitions of any one group differ (partition
  i is the mesh's i-th device in row-major order)."""
  varying = set()
  for group in groups:
    coords = np.array([np.unravel_index(i, mesh_shape) for i in group])
    if len(coords) > 1:
      varying |= {a for a in range(len(mesh_shape)) if len(set(coords[:, a])) > 1}
  return tuple(axis_names[a] for a in sorted(varying))


def collectives(text: str, mesh_shape: tuple[int, ...],
                axis_names: tuple[str, ...]) -> tuple[list[Collective], bool]:
  """The collectives of optimised HLO `text`, one entry per (kind, axes),
  largest bytes first; and whether every loop's trip count was known."""
  comps = computations(text)
  runs, known = executions(comps)
  # A TPU reduce-scatter is a fusion around an all-reduce (then a slice of it).
  scatter_bodies = set()
  for lines in comps.values():
    for line in lines:
      m = re.search(r"kind=kCustom, calls=%?([\w.\-]+)", line)
      if m and "reduce-scatter" in m.group(1):
        scatter_bodies.add(m.group(1))
  totals = {}
  for name, lines in comps.items():
    if name == "__entry__" or runs.get(name, 0) == 0:
      continue
    for line in lines:
      m = _INSTR.match(line)
      if not m:
        continue
      type_text, op = m.group(2), m.group(3)
      base = op[:-len("-start")] if op.endswith("-start") else op
      if base not in KINDS:
        continue
      sizes = shape_bytes(type_text)
      if op == "collective-permute-start":  # (operand, result, contexts)
        size = sizes[0]
      elif op == "all-gather-start":  # (operands..., results...)
        size = sum(sizes[len(sizes) // 2:])
      else:  # one array, or a tuple of arrays combined into one op
        size = sum(sizes)
      kind = "reduce-scatter" if (base == "all-reduce" and name in scatter_bodies) else base
      if base == "collective-permute":
        groups, group_size = _pairs(line), 2
      else:
        groups = _groups(line)
        group_size = len(groups[0]) if groups else int(np.prod(mesh_shape))
      if base == "reduce-scatter":
        # The input, group_size times the (tiled) result: optimised HLO names
        # its operand without a shape.
        operand = shape_bytes(m.group(4).split(")")[0])
        size = operand[0] if operand else size * group_size
      axes = axes_of(groups, mesh_shape, axis_names) if groups else tuple(
          a for a, n in zip(axis_names, mesh_shape) if n > 1)
      key = (kind, axes, group_size)
      c = totals.setdefault(key, Collective(kind, 0, 0, axes, group_size))
      c.count += runs[name]
      c.bytes += runs[name] * size
      c.dtypes |= {dtype for dtype, _ in _SHAPE.findall(type_text) if dtype not in ("u32",)}
  return sorted(totals.values(), key=lambda c: -c.bytes), known


def to_json(items: list[Collective]) -> list[dict]:
  return [dict(kind=c.kind, count=c.count, bytes=c.bytes, axes=list(c.axes),
               group_size=c.group_size, dtypes=sorted(c.dtypes)) for c in items]


def fusion_bodies(comps: dict[str, list[str]]) -> set[str]:
  """Names of the computations that fusion instructions call: their values
  stay inside one kernel and are never written to memory as arrays."""
  bodies = set()
  for name, lines in comps.items():
    if name == "__entry__":
      continue
    for line in lines:
      m = _INSTR.match(line)
      if m and m.group(3) == "fusion":
        bodies.update(callee for kind, callee in _CALLEES.findall(line) if kind == "calls")
  return bodies


def largest_buffer(text: str) -> tuple[int, str]:
  """(bytes, what) of the largest array the program writes to memory: the
  outputs of instructions outside fusion bodies (the entry, loop bodies,
  branches), not the values a fused kernel computes on its way. what: its
  type and the jax operation it comes from (the HLO metadata's op_name)."""
  comps = computations(text)
  fused = fusion_bodies(comps)
  entry = comps.get("__entry__", [None])[0]
  best, where = 0, ""
  for name, lines in comps.items():
    if name == "__entry__" or name in fused:
      continue
    # Views of other buffers; a parameter is a buffer of its own only in the
    # entry (an argument), elsewhere it is the caller's operand.
    aliases = ("get-tuple-element", "tuple", "bitcast") + (() if name == entry else ("parameter",))
    for line in lines:
      m = _INSTR.match(line)
      if m and m.group(3) not in aliases:
        # A tuple-typed output (an async collective's start, a loop) is named
        # by its largest array, not by the whole tuple.
        arrays = [(_array_bytes(dtype, dims), f"{dtype}[{dims}]")
                  for dtype, dims in _SHAPE.findall(m.group(2))]
        size, array = max(arrays, default=(0, ""))
        if size > best:
          op = _OP_NAME.search(line)
          best, where = size, f"{array} {op.group(1) if op else m.group(1)}"
  return best, where


def array_shapes(text: str) -> set[tuple[int, ...]]:
  """Every array shape (dims) the program's instructions produce."""
  shapes = set()
  for line in text.splitlines():
    m = _INSTR.match(line)
    if m:
      for _, dims in _SHAPE.findall(m.group(2)):
        shapes.add(tuple(int(d) for d in dims.split(",") if d))
  return shapes
