"""The README's pod table: SigLIP presets at global batch 32k, compiled ahead
of time for TPU slices by `python -m mmjax.plan` on this machine.

  python experiments/benchmarks/pod_plans.py [--rows b16:v5e-256,l16:v5e-16] [--out runs/plans]

Each row is one `python -m mmjax.plan --config experiments/pod_siglip.py:PRESET
--topology SLICE --noeval` in its own process (a ViT-B/16 compile takes minutes
on a small CPU), written to OUT/PRESET_SLICE[_extra]/plan.json; rows whose
plan.json exists are read, not recompiled. Then prints the markdown table.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "experiments", "pod_siglip.py")
# (preset, slice, extra --config flags): the table, a plan that must not fit,
# and a second batch size (memory against batch).
ROWS = [
    ("b16", "v5e-256", ()), ("b16", "v5p-128", ()), ("b16", "v6e-256", ()),
    ("so400m", "v5e-256", ()), ("so400m", "v5p-128", ()), ("so400m", "v6e-256", ()),
    ("l16", "v5e-256", ()), ("l16", "v5p-128", ()), ("l16", "v6e-256", ()),
    ("b16", "h100:8", ()), ("b16", "h100:8", ("--config.optim.grad_accum_steps=4",)),
    ("l16", "v5e-16", ("--config.batch_size=65536", "--config.model.remat=False")),
    ("b16", "v5e-256", ("--config.batch_size=131072",)),
]
GiB = 2 ** 30


def _name(preset, slice_, extra) -> str:
  tail = "".join("_" + e.split(".")[-1].replace("=", "") for e in extra)
  return f"{preset}_{slice_.replace(':', '-')}{tail}"


def command(preset, slice_, extra, workdir) -> list[str]:
  return [sys.executable, "-m", "mmjax.plan", "--config", f"{CONFIG}:{preset}",
          "--topology", slice_, "--workdir", workdir, "--noeval", *extra]


def run(rows, out) -> list[dict]:
  plans = []
  for preset, slice_, extra in rows:
    workdir = os.path.join(out, _name(preset, slice_, extra))
    path = os.path.join(workdir, "plan.json")
    if not os.path.exists(path):
      start = time.time()
      print("$ " + " ".join(command(preset, slice_, extra, workdir)[1:]), flush=True)
      subprocess.run(command(preset, slice_, extra, workdir), cwd=ROOT, check=True)
      print(f"  {time.time() - start:.0f} s", flush=True)
    with open(path) as f:
      plan = json.load(f)
    plan["preset"], plan["slice"], plan["extra"] = preset, slice_, " ".join(extra)
    plans.append(plan)
  return plans


def _steps(plan) -> str:
  return f"{'yes' if plan['remat'] else 'no'}, {plan['grad_accum_steps']}"


def table(plans) -> str:
  lines = ["| preset | slice | mesh (data, fsdp, tensor) | batch | remat, accum | GiB per chip (of HBM) "
           "| fits | TFLOP per chip: XLA / model | compute / HBM / ICI ms | step estimate ms "
           "| replicated matrices | compile s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for p in plans:
    t = p["step_seconds"]
    mesh = ", ".join(str(v) for v in p["mesh"].values())
    model = p.get("model_flops_per_chip")
    if p.get("compiler_error"):  # no compiled program: no XLA FLOPs, no estimates
      lines.append(
          f"| {p['preset']} | {p['slice']} | {mesh} | {p['batch_size']:,} | "
          f"{_steps(p)} | {p['bytes_per_chip'] / GiB:.1f} ({p['hbm_bytes_per_chip'] / GiB:.0f}) | **no** | "
          f"- / {(model or 0) / 1e12:.1f} | - | - | {len(p['replicated_params'])} | "
          f"{p['compile_seconds']:.0f} |")
      continue
    hbm = "-" if p.get("bytes_accessed_per_chip") is None else f"{t['memory'] * 1e3:.0f}"
    lines.append(
        f"| {p['preset']} | {p['slice']} | {mesh} | {p['batch_size']:,} | {_steps(p)} | "
        f"{p['bytes_per_chip'] / GiB:.1f} ({p['hbm_bytes_per_chip'] / GiB:.0f}) | "
        f"{'yes' if p['fits'] else '**no**'} | {p['flops_per_chip'] / 1e12:.1f} / "
        f"{(model or 0) / 1e12:.1f} | {t['compute'] * 1e3:.0f} / {hbm} / "
        f"{t['communication'] * 1e3:.0f} | {t['overlapped'] * 1e3:.0f}-{t['serial'] * 1e3:.0f} | "
        f"{len(p['replicated_params'])} | {p['compile_seconds']:.0f} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", default="", help="preset:slice,... (default: all)")
  parser.add_argument("--out", default=os.path.join(ROOT, "runs", "plans"))
  args = parser.parse_args()
  rows = ROWS
  if args.rows:
    wanted = [tuple(r.split(":", 1)) for r in args.rows.split(",")]
    rows = [r for r in ROWS if (r[0], r[1]) in wanted]
  print(table(run(rows, args.out)))


if __name__ == "__main__":
  main()
