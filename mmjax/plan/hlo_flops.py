"""Matmul FLOPs of an optimised HLO program, per computation, counting every
loop iteration: XLA's cost analysis counts a while loop's body once, however
many times the loop runs (gradient accumulation's microbatches, the ring
loss's hops), and XLA:GPU gives no cost analysis at all. Convolutions, dots and
cuBLAS gemms are counted; elementwise work is not."""

import re

import numpy as np

from mmjax.plan.hlo import _INSTR, _SHAPE, computations, executions


_WINDOW = re.compile(r"window=\{([^}]*)\}")
_LABELS = re.compile(r"dim_labels=([\w]+)_([\w]+)->([\w]+)")


def _dims(type_text: str) -> tuple[int, ...]:
  m = _SHAPE.search(type_text)
  return tuple(int(d) for d in m.group(2).split(",") if d) if m else ()


def _window(text: str, key: str, n: int, default: int) -> list[int]:
  m = re.search(key + r"=([\d_x]+)", text)
  if not m:
    return [default] * n
  return [int(v.split("_")[0]) if key != "pad" else int(v.split("_")[0])
          for v in m.group(1).split("x")]


def _valid_pairs(out: int, size: int, kernel: int, stride: int, pad: int, lhs_dil: int,
                 rhs_dil: int) -> int:
  """Output positions x kernel taps that land on a real (not padding, not
  dilation-hole) input element, summed over the dimension."""
  o = np.arange(out)[:, None]
  k = np.arange(kernel)[None, :]
  pos = o * stride + k * rhs_dil - pad
  ok = (pos >= 0) & (pos <= (size - 1) * lhs_dil) & (pos % lhs_dil == 0)
  return int(ok.sum())


def conv_flops(line: str, types: dict[str, str]) -> float:
  """2 x multiply-adds of one `convolution`, `dot` or cuBLAS gemm line; types:
  {instruction name: its type text} of the computation it is in."""
  m = _INSTR.match(line)
  if not m:
    return 0.0
  out_dims, op, args = _dims(m.group(2)), m.group(3), m.group(4)
  names = [a.strip().lstrip("%") for a in args.split(")")[0].split(",")]
  if len(names) < 2 or names[0] not in types or names[1] not in types:
    return 0.0
  lhs, rhs = _dims(types[names[0]]), _dims(types[names[1]])
  if op == "dot":
    c = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
    k = np.prod([lhs[int(i)] for i in c.group(1).split(",") if i]) if c else 1
    return 2.0 * float(np.prod(out_dims)) * float(k)
  if op == "custom-call":  # a cuBLAS gemm: (result, workspace), contracting dims in JSON
    c = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', line)
    if '__cublas$' not in line or c is None:
      return 0.0
    k = np.prod([lhs[int(i.strip('"'))] for i in c.group(1).split(",") if i.strip('"')])
    return 2.0 * float(np.prod(out_dims)) * float(k)
  labels = _LABELS.search(line)
  if labels is None:
    return 0.0
  lhs_l, rhs_l, out_l = labels.groups()
  spatial = sorted(ch for ch in rhs_l if ch.isdigit())
  window = _WINDOW.search(line)
  wtext = window.group(1) if window else ""
  n = len(spatial)
  strides = _window(wtext, "stride", n, 1)
  pads = _window(wtext, "pad", n, 0)
  lhs_dil = _window(wtext, "lhs_dilate", n, 1)
  rhs_dil = _window(wtext, "rhs_dilate", n, 1)
  pairs = 1
  for j, d in enumerate(spatial):
    pairs *= _valid_pairs(out_dims[out_l.index(d)], lhs[lhs_l.index(d)],
                          rhs[rhs_l.index(d)], strides[j], pads[j], lhs_dil[j], rhs_dil[j])
  batch_feat = out_dims[out_l.index("b")] * out_dims[out_l.index("f")]
  return 2.0 * batch_feat * rhs[rhs_l.index("i")] * pairs


def matmul_flops(comps: dict[str, list[str]]) -> dict[str, float]:
  """{computation: FLOPs of its own convolutions and dots, once}."""
  out = {}
  for name, lines in comps.items():
    if name == "__entry__":
      continue
    types = {}
    for line in lines:
      m = _INSTR.match(line)
      if m:
        types[m.group(1)] = m.group(2)
    total = 0.0
    for line in lines:
      if " convolution(" in line or " dot(" in line or "__cublas$" in line:
        total += conv_flops(line, types)
    out[name] = total
  return out


def loop_flops(text: str) -> tuple[float, float]:
  """(matmul FLOPs of the whole program with every loop run its trip count,
  matmul FLOPs with every loop body counted once, as XLA's cost analysis
  counts them). Their difference is what that analysis leaves out."""
  comps = computations(text)
  per = matmul_flops(comps)
  full, _ = executions(comps)
  once, _ = executions(comps, loops=False)
  return (sum(per[c] * n for c, n in full.items() if c in per),
          sum(per[c] * n for c, n in once.items() if c in per))
