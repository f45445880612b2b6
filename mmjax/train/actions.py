"""The periodic parts of a training loop, each readable alone.

  Logger        every log_every steps: the mean of the steps' metrics since
                the last row, throughput and FLOPs -> metrics.jsonl, TensorBoard
  Evaluation    the evaluators due at a step -> eval/ rows, eval.json, reports
  Checkpointer  every checkpoint_every steps, and on a stop request
  Guard         consecutive non-finite steps -> one rollback, then a clean stop

Each has `due(step)` (or decides inside) and is called by the loop with the
step's state; none of them knows about the others.
"""

import time

import numpy as np

from mmjax import paths
from mmjax.eval import evaluators as evaluators_lib
from mmjax.parallel import multihost
from mmjax.train import checkpoint, metrics as metrics_lib


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the run stopped without saving that state."""


def every(step: int, period: int, total: int) -> bool:
  """True at multiples of `period` and at the last step (period 0: last step only)."""
  return step == total or (period > 0 and step % period == 0)


class Logger:
  """Averages the metrics of the steps since the last row and writes a row
  every `log_every` steps, with steps/s and examples/s that exclude the time
  spent evaluating and checkpointing (`pause`)."""

  def __init__(self, writer, config, step_flops, peak, device_peak):
    self.writer, self.config = writer, config
    self.step_flops, self.peak, self.device_peak = step_flops, peak, device_peak
    self.reset()

  def reset(self) -> None:
    self.window, self.steps, self.paused = [], 0, 0.0
    self.start = time.perf_counter()

  def add(self, metrics) -> None:
    self.window.append(metrics)
    self.steps += 1

  def pause(self, seconds: float) -> None:
    self.paused += seconds

  def due(self, step: int) -> bool:
    return every(step, self.config.log_every, self.config.total_steps)

  def __call__(self, step: int, state, bad_records: int) -> dict:
    secs = max(time.perf_counter() - self.start - self.paused, 1e-9)
    row = {k: float(np.mean([float(w[k]) for w in self.window])) for k in self.window[0]}
    row["train/skipped_total"] = float(state.skipped)
    row["perf/steps_per_sec"] = self.steps / secs
    row["perf/examples_per_sec"] = self.steps * self.config.batch_size / secs
    row["data/bad_records"] = bad_records
    if self.step_flops:
      row["perf/step_flops"] = self.step_flops
      row["perf/flops_fraction"] = self.step_flops * self.steps / secs / self.peak
      if self.device_peak:
        row["perf/mfu"] = self.step_flops * self.steps / secs / self.device_peak
    self.writer.write(step, row)
    self.reset()
    return row


class Evaluation:
  """Runs the evaluators due at a step; keeps the latest value of every metric."""

  def __init__(self, run, writer):
    self.run, self.writer, self.latest = run, writer, {}

  def due(self, step: int) -> list[str]:
    c = self.run.config
    return evaluators_lib.due(c.eval.evaluators, step, c.total_steps, c.eval_every)

  def __call__(self, step: int, ids, params) -> dict:
    run = self.run
    result = evaluators_lib.run(run.evaluators, ids, run.model, params,
                               run.config.eval.batch_size)
    self.writer.write(step, {f"eval/{k}": v for k, v in result.items()})
    self.latest.update(result)
    if run.primary:
      metrics_lib.write_json(paths.join(run.workdir, "eval.json"),
                             {**self.latest, "step": step})
    # Every process: a report may compute sharded (a collective all must join);
    # it writes its files from the primary process only.
    if step == run.config.total_steps and run.config.eval.reports:
      for eid in ids:
        report = getattr(run.evaluators[eid], "report", None)
        if report is not None:
          report(run.workdir)
    return {**self.latest, "step": step}


class Checkpointer:
  """Saves every `checkpoint_every` steps (and the last step); remembers the
  last saved step, where a rollback returns to."""

  def __init__(self, run):
    self.run = run
    self.last_saved = run.start if run.start else None
    self.damaged_after = run.damaged_after

  def due(self, step: int) -> bool:
    c = self.run.config
    return every(step, c.checkpoint_every, c.total_steps)

  def __call__(self, step: int, state) -> None:
    if self.damaged_after is not None:
      self._set_aside_damaged()
    checkpoint.save(self.run.manager, step, state,
                    {"next_step": step, "pins": self.run.pins}, self.run.config.to_dict())
    self.last_saved = step

  def _set_aside_damaged(self) -> None:
    """Moves the damaged steps newer than the restored one to <step>.unreadable
    before the first save, which may need their step numbers."""
    run = self.run
    if run.primary:
      moved = checkpoint.set_aside(run.manager, self.damaged_after)
      if moved:
        print("Damaged checkpoints kept for inspection: " + ", ".join(moved), flush=True)
    multihost.sync("set aside damaged checkpoints")
    run.manager.reload()
    self.damaged_after = None

  def restore(self):
    """(state, step) of the latest checkpoint, after pending writes finish."""
    checkpoint.wait(self.run.manager)
    restored = checkpoint.restore_latest(self.run.manager, self.run.abstract)
    return restored.state, restored.step


class Guard:
  """Counts consecutive steps whose update was skipped (non-finite loss or
  gradient). After `max_bad_steps` of them the run rolls back once to its
  last checkpoint; a transient fault (a bad host, a flipped bit) does not
  recur, a deterministic blow-up does, and then the run stops with a message."""

  def __init__(self, max_bad_steps: int, where: str):
    self.max_bad, self.where = max_bad_steps, where
    self.bad_run, self.rolled_back = 0, False

  def should_roll_back(self, step: int, metrics, last_saved) -> bool:
    """Updates the count with a step's metrics; True to roll back now (the
    caller restores the checkpoint and says which step it returned to).

    Raises NonFiniteLossError when rolling back is impossible or was tried.
    """
    self.bad_run = self.bad_run + 1 if float(metrics["train/skipped"]) else 0
    if self.bad_run < self.max_bad:
      return False
    if self.rolled_back or last_saved is None:
      raise NonFiniteLossError(self._message(metrics, step, last_saved))
    self.bad_run, self.rolled_back = 0, True
    return True

  def _message(self, m, step, last_saved) -> str:
    loss, norm = float(m["train/loss"]), float(m["train/grad_norm"])
    history = (f"after rolling back to step {last_saved}, it happened again"
               if self.rolled_back else "there is no checkpoint to roll back to")
    return (f"{self.bad_run} consecutive steps up to step {step} had a non-finite loss or "
            f"gradient (loss {loss}, grad norm {norm}); their updates were skipped, and "
            f"{history}. Training stopped; the checkpoints in {self.where} are intact. "
            "Lower --config.optim.lr, lengthen --config.optim.warmup_steps or tighten "
            "--config.optim.clip_norm, then rerun to resume.")
