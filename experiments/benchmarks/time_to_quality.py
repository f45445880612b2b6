"""Retrieval quality against wall time: the default recipe and variants of it.

Each recipe is one ordinary training command, run to its end in a subprocess
while nothing else runs; the clock starts just before the command is launched,
so start-up, tokenizer training, compilation, evaluations and checkpoints all
count. Every row of metrics.jsonl carries `wall_time`, so each evaluation
becomes one point (seconds since launch, text->image R@1).

  python experiments/benchmarks/time_to_quality.py                  # the default run
  python experiments/benchmarks/time_to_quality.py --recipes default_300,bias_-5
  python experiments/benchmarks/time_to_quality.py --recipes default,gap,width256  # today's and the earlier defaults
  # today's default beside a curve saved by an earlier run on this machine
  python experiments/benchmarks/time_to_quality.py --workdir runs/ttq_new \
      --earlier "before=runs/time_to_quality/results.json"

Writes <workdir>/<recipe>/ (the runs), <workdir>/results.json, <out> (the
plot, default docs/time_to_quality.png) and prints the same JSON on one line:
per recipe, the whole command's seconds, its final R@1 both ways, its curve
(seconds since launch, step, text->image R@1, image->text R@1) and the first
time text->image R@1 reached each of --targets. Curves from other machines
are not comparable in seconds: plot earlier ones only from the same machine.
"""

import argparse
import json
import os
import subprocess
import sys
import time

# The default experiment, and a variant of its recipe on a shorter schedule
# (compare it with "default_300"). More variants: extra --config.k=v arguments
# apply to every recipe run.
_PROBE = ["--config.total_steps=300", "--config.eval_every=100"]
RECIPES = {
    "default": ("experiments/shapes_siglip.py", []),
    "default_300": ("experiments/shapes_siglip.py", _PROBE),
    "bias_-5": ("experiments/shapes_siglip.py", _PROBE + ["--config.model.bias_init=-5.0"]),
    # The default recipe until the image tokens were flattened: mean-pooled.
    "gap": ("experiments/shapes_siglip.py", ["--config.model.towers.image.pool=gap"]),
    # The default recipe until the towers were narrowed: configs.base()'s
    # width-256 towers, mean-pooled, at lr 1e-3.
    "width256": ("experiments/shapes_siglip.py", [
        "--config.model.towers.image.width=256", "--config.model.towers.text.width=256",
        "--config.model.towers.image.pool=gap", "--config.optim.lr=1e-3"]),
}
METRIC = "eval/text_to_image_R@1"


def run(name: str, workdir: str, extra: list[str]) -> dict:
  """Trains recipe `name` into workdir/name; its curve and totals."""
  config, overrides = RECIPES[name]
  out = os.path.join(workdir, name)
  if os.path.exists(os.path.join(out, "metrics.jsonl")):
    raise SystemExit(f"{out} holds a run already; a resumed run would not time the "
                     "whole command. Remove it or pass another --workdir.")
  cmd = [sys.executable, "-m", "mmjax.train", "--config", config, "--workdir", out,
         *overrides, *extra]
  print(" ".join(cmd), file=sys.stderr, flush=True)
  start = time.time()
  subprocess.run(cmd, check=True)
  seconds = time.time() - start
  rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
  evals = [r for r in rows if METRIC in r]
  curve = [(round(r["wall_time"] - start, 1), r["step"], r[METRIC],
            r["eval/image_to_text_R@1"]) for r in evals]
  return {"seconds": round(seconds, 1), "curve": curve,
          "text_to_image_R@1": evals[-1][METRIC],
          "image_to_text_R@1": evals[-1]["eval/image_to_text_R@1"],
          "steps": evals[-1]["step"], "command": " ".join(cmd[1:])}


def first_reaching(curve, target):
  return next((t for t, _, r, _ in curve if r >= target), None)


def load_earlier(spec: str) -> tuple[str, dict]:
  """"LABEL=FILE" or "LABEL=FILE#RECIPE" -> (LABEL, that recipe's results)."""
  label, sep, path = spec.partition("=")
  if not sep or not label:
    raise SystemExit(f"--earlier {spec!r}: give LABEL=FILE, e.g. "
                     "'before=runs/time_to_quality/results.json'.")
  path, _, recipe = path.partition("#")
  with open(path) as f:
    saved = json.load(f)
  recipe = recipe or next(iter(saved))
  if recipe not in saved:
    raise SystemExit(f"--earlier {spec!r}: {path} has recipes {sorted(saved)}, not {recipe!r}.")
  return label, saved[recipe]


def plot(results: dict, path: str, targets, earlier: dict | None = None) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  curves = [(name, r, "-") for name, r in results.items()]
  curves += [(name, r, "--") for name, r in (earlier or {}).items()]
  for name, r, style in curves:
    t = [0.0] + [p[0] / 60 for p in r["curve"]]
    y = [0.0] + [p[2] for p in r["curve"]]
    ax.plot(t, y, marker="o", ls=style,
            label=f"{name} ({r['seconds'] / 60:.1f} min in all)")
  for target in targets:
    ax.axhline(target, color="grey", lw=0.8, ls="--")
  ax.set_xlabel("wall time since launch (min)")
  ax.set_ylabel("text->image R@1 (shapes test)")
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right")
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=120)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--recipes", default="default", help=f"comma-separated, of {sorted(RECIPES)}")
  parser.add_argument("--workdir", default="runs/time_to_quality")
  parser.add_argument("--out", default="docs/time_to_quality.png")
  parser.add_argument("--targets", default="0.742,0.9")
  parser.add_argument("--earlier", action="append", default=[], metavar="LABEL=FILE",
                      help="also plot a recipe of an earlier results.json (its first "
                           "recipe, or LABEL=FILE#RECIPE), drawn dashed; repeatable")
  args, extra = parser.parse_known_args()
  targets = [float(t) for t in args.targets.split(",")]
  earlier = dict(load_earlier(spec) for spec in args.earlier)  # read before a long run
  results = {name: run(name, args.workdir, extra) for name in args.recipes.split(",")}
  for r in results.values():
    r["seconds_to"] = {str(t): first_reaching(r["curve"], t) for t in targets}
  with open(os.path.join(args.workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  plot(results, args.out, targets, earlier)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
