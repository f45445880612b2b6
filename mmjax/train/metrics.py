"""Where numbers go: metrics.jsonl, TensorBoard event files, and PNG plots."""

import json
import math
import os
from typing import Mapping

import numpy as np


def _plain(value):
  value = np.asarray(value).item() if hasattr(value, "shape") else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/Inf; keep them readable, not invalid
  return value


class MetricWriter:
  """Appends one JSON object per logged step to `metrics.jsonl` and mirrors scalars
  into TensorBoard event files (tensorboardX: no TensorFlow needed).

  Only the primary process writes; the others get a writer that does nothing, so
  call sites need no `if process_index == 0`.
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
    """resume_step: the step the run restarts from. Rows logged after it by an
    earlier, interrupted attempt are dropped (those steps will be logged again),
    as is a line cut short by a kill, so the file holds one curve."""
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if enabled and os.path.exists(self.path):
      keep = [r for r in read_jsonl(self.path)
              if resume_step is not None and r.get("step", 0) <= resume_step]
      tmp = f"{self.path}.tmp"
      with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)
      os.replace(tmp, self.path)
    if enabled:
      from tensorboardX import SummaryWriter  # imported lazily: writers only
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    for key, value in row.items():
      if key != "step" and isinstance(value, (int, float)):
        self._tb.add_scalar(key, value, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str) -> list[dict]:
  """The rows of a JSON-lines file; a line cut short (a killed writer) is skipped."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except ValueError:
        continue
  return rows


def write_json(path: str, obj) -> None:
  """Writes JSON atomically: a reader never sees half a file."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def plot_curves(workdir: str, out_name: str = "curves.png") -> str | None:
  """Plots train loss and retrieval R@1/5/10 from metrics.jsonl into a PNG."""
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  if not rows:
    return None
  import matplotlib  # lazily: plotting is off the training path
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_loss, ax_rec) = plt.subplots(1, 2, figsize=(11, 4))
  loss = [(r["step"], r["train/loss"]) for r in rows
          if isinstance(r.get("train/loss"), (int, float))]
  if loss:
    ax_loss.plot(*zip(*loss), color="tab:blue")
  ax_loss.set(xlabel="step", ylabel="train loss", title="training loss")
  ax_loss.grid(alpha=0.3)
  for direction, style in (("image_to_text", "-"), ("text_to_image", "--")):
    for k, color in ((1, "tab:red"), (5, "tab:orange"), (10, "tab:green")):
      key = f"eval/{direction}_R@{k}"
      pts = [(r["step"], r[key]) for r in rows if key in r]
      if pts:
        ax_rec.plot(*zip(*pts), style, color=color, marker="o", ms=3,
                    label=f"{direction.replace('_', ' ')} R@{k}")
  ax_rec.set(xlabel="step", ylabel="recall", ylim=(0, 1), title="test retrieval")
  ax_rec.grid(alpha=0.3)
  if ax_rec.lines:
    ax_rec.legend(fontsize=7)
  fig.tight_layout()
  path = os.path.join(workdir, out_name)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
