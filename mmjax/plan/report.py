"""The plan as a table for the terminal, and plan.json."""

import json
import os

GiB = 2 ** 30


def _gib(n) -> str:
  return f"{n / GiB:.2f} GiB"


def _seconds(s) -> str:
  if s is None:
    return "n/a"
  return f"{s * 1e3:.1f} ms" if s < 10 else f"{s:.1f} s"


def _tera(flops: float) -> str:
  """FLOPs in T, with three significant digits also for small models."""
  return f"{flops / 1e12:.3g} T"


def table(plan: dict) -> str:
  """A readable summary of one plan."""
  m, t = plan["memory"], plan["step_seconds"]
  mesh = " x ".join(f"{k} {v}" for k, v in plan["mesh"].items())
  verdict = "FITS" if plan["fits"] else "DOES NOT FIT"
  lines = [
      f"{plan['topology']}: {plan['chips']} x {plan['chip']}, mesh {mesh}, global batch "
      f"{plan['batch_size']}, grad_accum {plan['grad_accum_steps']}, remat "
      f"{plan['remat']}, {plan['dtype']}, loss impl {plan['loss_impl']}",
      f"memory per chip   {_gib(plan['bytes_per_chip'])} of {_gib(plan['hbm_bytes_per_chip'])}"
      f" HBM: {verdict}",
      f"  params {_gib(m['params'])}, optimizer state {_gib(m['optimizer_state'])}, batch "
      f"{_gib(m['batch'])}",
  ]
  if plan.get("compiler_error"):
    lines += [f"  the compiler stopped: {plan['compiler_error']}",
              "  (FLOPs below are analytic; no collectives without a compiled program)"]
  else:
    lines.append(f"  arguments {_gib(m['argument'])}, temporaries {_gib(m['temp'])}, outputs "
                 f"not aliased {_gib(m['output'] - m['alias'])}, largest buffer "
                 f"{_gib(m['largest_buffer'])}")
    if m.get("largest_buffer_op"):
      # Its array type, then the end of the jax op name (the innermost scopes).
      array, _, op = m["largest_buffer_op"].partition(" ")
      lines.append(f"  largest buffer: {array} from ...{op[-110:]}")
  for modality, e in plan.get("eval", {}).items():
    size = _gib(e["bytes_per_chip"]) if e.get("bytes_per_chip") else "more than HBM"
    lines.append(f"  eval encode {modality}: {size}, {'fits' if e['fits'] else 'DOES NOT FIT'}")
  analytic, model = plan.get("analytic_flops_per_chip"), plan.get("model_flops_per_chip")
  flops = plan["flops_per_chip"] or 0.0
  if plan.get("compiler_error"):
    counted = "no compiled program to count"
  elif analytic and plan["remat"]:
    counted = (f"{_tera(model)} model FLOPs (x{flops / model:.3f}), at most "
               f"{_tera(analytic)} with the whole forward recomputed")
  elif analytic:
    matmuls = plan.get("matmul_flops_per_chip") or flops
    counted = (f"{_tera(analytic)} analytic; the program's matmuls / analytic "
               f"{matmuls / analytic:.3f}, the rest of XLA's count (elementwise) "
               f"{(flops - matmuls) / matmuls:+.1%}")
  else:
    counted = "no analytic count for this model"
  lines += [
      f"FLOPs per chip    {_tera(flops)} from {plan['flops_source']}; {counted}",
      f"step time (estimates) compute {_seconds(t['compute'])}, HBM {_seconds(t['memory'])}, "
      f"ICI {_seconds(t['communication'])}: {_seconds(t['overlapped'])} overlapped, "
      f"{_seconds(t['serial'])} serial; compiler's own: {_seconds(t['compiler'])}",
      "collectives per step (kind, mesh axes, count, bytes per chip, element types):",
  ]
  for c in plan["collectives"]:
    lines.append(f"  {c['kind']:<19} {','.join(c['axes']) or '-':<12} {c['count']:>6} "
                 f"{_gib(c['bytes'])}  {'/'.join(c.get('dtypes', []))}")
  if not plan.get("loop_trip_counts_known", True):
    lines.append("  (a loop without a known trip count: its collectives counted once)")
  names = plan["replicated_params"]
  lines.append(f"replicated params: {len(names)} weight matrices"
               f"{': ' + ', '.join(names[:6]) + (' ...' if len(names) > 6 else '') if names else ''}"
               f"; {plan['replicated_vectors']} vectors; {_gib(plan['replicated_bytes'])} "
               "in all")
  if "largest_batch" in plan:
    tried = ", ".join(f"{b} {'fits' if v['fits'] else 'no'}" for b, v in plan["batches"].items())
    found = (f"{plan['largest_batch']} (not {plan['largest_batch_below']})"
             if plan["largest_batch"] else "none; lower the model or raise the chips")
    lines.append(f"largest global batch that fits: {found}; compiled: {tried}")
  return "\n".join(lines)


def write(plan: dict, workdir: str) -> str:
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "plan.json")
  with open(path, "w") as f:
    json.dump(plan, f, indent=1)
  return path
