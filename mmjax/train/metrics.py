"""Where numbers go: metrics.jsonl, TensorBoard event files, and PNG plots."""

import json
import math
import os
import tempfile
import time
from typing import Mapping

import numpy as np

from mmjax import paths


def _plain(value):
  value = np.asarray(value).item() if hasattr(value, "shape") else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/Inf; keep them readable, not invalid
  return value


class MetricWriter:
  """Writes one JSON object per logged step to `metrics.jsonl` and mirrors scalars
  into TensorBoard event files (tensorboardX: no TensorFlow needed).

  Only the primary process writes; the others get a writer that does nothing, so
  call sites need no `if process_index == 0`.

  Locally rows are appended. An object store (a gs:// workdir) has no append,
  so there the whole file is uploaded again with each row (one atomic object
  write; the file is small), and the TensorBoard events are written to a local
  folder and uploaded at most once a minute and at `close`.
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
    """resume_step: the step the run restarts from. Rows logged after it by an
    earlier, interrupted attempt are dropped (those steps will be logged again),
    as is a line cut short by a kill, so the file holds one curve."""
    self.enabled = enabled
    self.workdir = workdir
    self.path = paths.join(workdir, "metrics.jsonl")
    self.remote = paths.is_remote(workdir)
    self.rows = []
    self._tb = self._tb_local = None
    self._uploaded = 0.0
    if not enabled:
      return
    old = read_jsonl(self.path)
    self.rows = [r for r in old if resume_step is not None and r.get("step", 0) <= resume_step]
    if old:
      self._rewrite()
    from tensorboardX import SummaryWriter  # imported lazily: writers only
    tb_dir = paths.join(workdir, "tensorboard")
    if self.remote:
      self._tb_local = tempfile.mkdtemp(prefix="mmjax-tensorboard-")
      tb_dir = self._tb_local
    self._tb = SummaryWriter(tb_dir, flush_secs=30)

  def _rewrite(self) -> None:
    paths.write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    # wall_time (Unix seconds) places every row on the clock, for curves of
    # quality against time (experiments/benchmarks/time_to_quality.py).
    row = {"step": int(step), "wall_time": round(time.time(), 3),
           **{k: _plain(v) for k, v in metrics.items()}}
    self.rows.append(row)
    if self.remote:
      self._rewrite()
    else:
      with open(self.path, "a") as f:
        f.write(json.dumps(row) + "\n")
    for key, value in row.items():
      if key not in ("step", "wall_time") and isinstance(value, (int, float)):
        self._tb.add_scalar(key, value, step)
    if self.remote and time.monotonic() - self._uploaded > 60:
      self._upload_tensorboard()

  def rewind(self, step: int) -> None:
    """Drops the rows after `step` (a rollback to the checkpoint of `step`
    will log those steps again), so the file keeps one row per step."""
    if not self.enabled:
      return
    kept = [r for r in self.rows if r.get("step", 0) <= step]
    if len(kept) != len(self.rows):
      self.rows = kept
      self._rewrite()

  def _upload_tensorboard(self) -> None:
    self._tb.flush()
    target = paths.join(self.workdir, "tensorboard")
    paths.makedirs(target)
    for name in os.listdir(self._tb_local):
      with open(os.path.join(self._tb_local, name), "rb") as f:
        paths.write_bytes(paths.join(target, name), f.read())
    self._uploaded = time.monotonic()

  def close(self) -> None:
    if self._tb is not None:
      if self.remote:
        self._upload_tensorboard()
      self._tb.close()
      self._tb = None


def read_jsonl(path: str) -> list[dict]:
  """The rows of a JSON-lines file; a line cut short (a killed writer) is skipped."""
  if not paths.exists(path):
    return []
  rows = []
  for line in paths.read_text(path).splitlines():
    try:
      rows.append(json.loads(line))
    except ValueError:
      continue
  return rows


def write_json(path: str, obj) -> None:
  """Writes JSON atomically (local or remote): a reader never sees half a file."""
  paths.write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def plot_curves(workdir: str, out_name: str = "curves.png") -> str | None:
  """Plots train loss and retrieval R@1/5/10 from metrics.jsonl into a PNG."""
  rows = read_jsonl(paths.join(workdir, "metrics.jsonl"))
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
  path = paths.save_figure(fig, paths.join(workdir, out_name), dpi=110)
  plt.close(fig)
  return path
