"""Mixed precision against float32: the same 300 shapes steps in both, one plot.

  python experiments/benchmarks/precision_curves.py [--steps 300] [--out docs/mixed_precision.png]

Trains experiments/shapes_siglip.py twice from the same seed and batches, with
`dtype=float32` and `dtype=bfloat16` (parameters, optimizer state, logits and
losses stay float32; the towers compute in bfloat16), into runs/precision/.
Plots both loss curves and their relative difference, next to the difference
between two float32 runs with different seeds (how far apart two equally valid
runs drift anyway), and prints the final loss and retrieval of each. An existing run in runs/precision/<dtype> is reused
(delete it to retrain).
"""

import argparse
import json
import os

import numpy as np

from mmjax import experiment_files
from mmjax.train import loop, metrics


RUNS = (("float32", 0), ("bfloat16", 0), ("float32", 1))


def _config(steps: int, dtype: str, seed: int):
  config = experiment_files.config("shapes_siglip")
  config.total_steps = steps
  config.dtype = dtype
  config.seed = seed
  config.log_every = 10
  config.eval_every = 0           # retrieval once, at the end
  config.checkpoint_every = 0
  config.optim.warmup_steps = min(config.optim.warmup_steps, steps // 3)
  config.eval.reports = False
  return config


def _curve(workdir: str) -> tuple[np.ndarray, np.ndarray]:
  rows = [r for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if "train/loss" in r]
  return np.array([r["step"] for r in rows]), np.array([r["train/loss"] for r in rows])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--out", default="docs/mixed_precision.png")
  parser.add_argument("--runs", default="runs/precision")
  args = parser.parse_args()

  results = {}
  for dtype, seed in RUNS:
    name = dtype if seed == 0 else f"{dtype}_seed{seed}"
    workdir = os.path.join(args.runs, name)
    os.makedirs(workdir, exist_ok=True)
    result = loop.train_and_evaluate(_config(args.steps, dtype, seed), workdir)
    steps, losses = _curve(workdir)
    speed = [r["perf/examples_per_sec"] for r in
             metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
             if "perf/examples_per_sec" in r][1:]  # the first window holds compilation
    results[name] = dict(steps=steps, loss=losses, eval=result,
                          examples_per_sec=float(np.median(speed)) if speed else None)

  f32, bf16, seed1 = results["float32"], results["bfloat16"], results["float32_seed1"]
  if not (np.array_equal(f32["steps"], bf16["steps"])
          and np.array_equal(f32["steps"], seed1["steps"])):
    raise SystemExit("the runs logged different steps; delete runs/precision and rerun.")
  rel = np.abs(bf16["loss"] - f32["loss"]) / np.abs(f32["loss"])
  rel_seed = np.abs(seed1["loss"] - f32["loss"]) / np.abs(f32["loss"])

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax, ax_rel) = plt.subplots(1, 2, figsize=(11, 4))
  for name, style in (("float32", "-"), ("bfloat16", "--"), ("float32_seed1", ":")):
    ax.plot(results[name]["steps"], results[name]["loss"], style,
            label=name.replace("_seed1", ", seed 1"))
  ax.set(xlabel="step", ylabel="train loss (mean of 10 steps)", yscale="log",
         title="shapes_siglip: float32 vs bfloat16 compute")
  ax.legend()
  ax.grid(alpha=0.3)
  ax_rel.plot(f32["steps"], rel, color="tab:red", label="bfloat16 vs float32")
  ax_rel.plot(f32["steps"], rel_seed, ":", color="tab:gray",
              label="float32 seed 1 vs seed 0")
  ax_rel.set(xlabel="step", ylabel="|loss - float32 loss| / float32 loss",
             title="relative difference of the loss")
  ax_rel.legend()
  ax_rel.grid(alpha=0.3)
  fig.tight_layout()
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  fig.savefig(args.out, dpi=110)
  print(f"wrote {args.out}")

  summary = {"steps": args.steps, "max_rel_diff": float(rel.max()),
             "median_rel_diff": float(np.median(rel)),
             "final_rel_diff": float(rel[-1]),
             "seed_max_rel_diff": float(rel_seed.max()),
             "seed_median_rel_diff": float(np.median(rel_seed))}
  for name, r in results.items():
    summary[name] = {"final_loss": float(r["loss"][-1]),
                      "examples_per_sec": r["examples_per_sec"],
                      **{k: v for k, v in r["eval"].items() if "R@1" in k}}
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
