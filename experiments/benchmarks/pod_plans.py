"""The README's pod table: SigLIP presets at global batch 32k (and the
multi-modality presets of experiments/pod_multimodal.py), compiled ahead of
time for TPU slices by `python -m mmjax.plan` on this machine.

  python experiments/benchmarks/pod_plans.py [--rows b16:v5e-256,l16:v5e-16] [--out runs/plans]

Each row is one `python -m mmjax.plan --config experiments/pod_siglip.py:PRESET
--topology SLICE --noeval` (PRESET `pod_multimodal:coca` reads
experiments/pod_multimodal.py:coca) in its own process (a ViT-B/16 compile takes minutes
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
# (preset, slice, extra --config flags): the table, a plan that must not fit,
# a second batch size (memory against batch), So400m sharded 16 ways rather
# than 64 (its gradients' reductions), and the multi-modality presets.
ROWS = [
    ("b16", "v5e-256", ()), ("b16", "v5p-128", ()), ("b16", "v6e-256", ()),
    ("so400m", "v5e-256", ()), ("so400m", "v5p-128", ()), ("so400m", "v6e-256", ()),
    ("l16", "v5e-256", ()), ("l16", "v5p-128", ()), ("l16", "v6e-256", ()),
    ("b16", "h100:8", ()), ("b16", "h100:8", ("--config.optim.grad_accum_steps=4",)),
    ("l16", "v5e-16", ("--config.batch_size=65536", "--config.model.remat=False")),
    ("b16", "v5e-256", ("--config.batch_size=131072",)),
    ("so400m", "v5e-256", ("--config.mesh.fsdp=16",)),
    ("pod_multimodal:coca", "v5e-256", ()), ("pod_multimodal:audio", "v5e-256", ()),
]
GiB = 2 ** 30


def _name(preset, slice_, extra) -> str:
  tail = "".join("_" + e.split(".")[-1].replace("=", "") for e in extra)
  return f"{preset.replace(':', '_')}_{slice_.replace(':', '-')}{tail}"


def config(preset) -> str:
  """--config of a preset: "b16" is experiments/pod_siglip.py:b16, "FILE:ARG"
  is experiments/FILE.py:ARG."""
  file, _, arg = preset.rpartition(":")
  return os.path.join(ROOT, "experiments", f"{file or 'pod_siglip'}.py") + f":{arg}"


def command(preset, slice_, extra, workdir) -> list[str]:
  return [sys.executable, "-m", "mmjax.plan", "--config", config(preset),
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
    model = "-" if model is None else f"{model / 1e12:.1f}"  # no analytic count (heads)
    if p.get("compiler_error"):  # no compiled program: no XLA FLOPs, no estimates
      lines.append(
          f"| {p['preset']} | {p['slice']} | {mesh} | {p['batch_size']:,} | "
          f"{_steps(p)} | {p['bytes_per_chip'] / GiB:.1f} ({p['hbm_bytes_per_chip'] / GiB:.0f}) | **no** | "
          f"- / {model} | - | - | {len(p['replicated_params'])} | "
          f"{p['compile_seconds']:.0f} |")
      continue
    hbm = "-" if p.get("bytes_accessed_per_chip") is None else f"{t['memory'] * 1e3:.0f}"
    lines.append(
        f"| {p['preset']} | {p['slice']} | {mesh} | {p['batch_size']:,} | {_steps(p)} | "
        f"{p['bytes_per_chip'] / GiB:.1f} ({p['hbm_bytes_per_chip'] / GiB:.0f}) | "
        f"{'yes' if p['fits'] else '**no**'} | {p['flops_per_chip'] / 1e12:.1f} / "
        f"{model} | {t['compute'] * 1e3:.0f} / {hbm} / "
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
    wanted = set(args.rows.split(","))
    rows = [r for r in ROWS if f"{r[0]}:{r[1]}" in wanted]
  print(table(run(rows, args.out)))


if __name__ == "__main__":
  main()
