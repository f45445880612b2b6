"""The training loop: data -> compiled step -> the periodic actions (actions.py)."""

import time

import jax
from tqdm import tqdm

from mmjax import paths
from mmjax.data import pipeline
from mmjax.eval import evaluators as evaluators_lib
from mmjax.parallel import multihost
from mmjax.train import actions, checkpoint, faults, metrics as metrics_lib, perf
from mmjax.train.actions import NonFiniteLossError  # pylint: disable=unused-import
from mmjax.train.setup import Run, setup


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if any.

  Writes metrics.jsonl, eval.json, config.json, checkpoints/, tensorboard/ and
  curves.png in `workdir`. Returns the last evaluation (metrics + step), or
  {"preempted": True, "step": s} after a SIGTERM made it save step s and stop.
  """
  return train(setup(config, workdir))


def _batches(run: Run, start: int):
  """(iterator of global batches from step `start`, a function returning the
  count of unreadable records the pipeline replaced)."""
  config = run.config
  # This process draws only the rows its devices hold, then they join the global batch.
  rows = multihost.process_rows(run.batch_sharding, config.batch_size)
  local = pipeline.train_batches(config, run.tokenizer, start, rows)
  bad = [0]

  def batches():
    while True:
      b = next(local)
      bad[0] += int(b.pop("bad_records", 0))
      yield multihost.global_batch(b, run.batch_sharding, config.batch_size)

  return batches(), local.close, lambda: bad[0]


def train(run: Run) -> dict:
  """Runs the set-up `run` to config.total_steps; see train_and_evaluate."""
  config, workdir, total = run.config, run.workdir, run.config.total_steps
  state, step = run.state, run.start
  writer = metrics_lib.MetricWriter(workdir, enabled=run.primary, resume_step=step)
  logger = actions.Logger(writer, config, run.step_flops, perf.matmul_flops_per_sec(),
                          perf.peak_flops_per_sec(jax.devices()[0], config.dtype))
  evaluation = actions.Evaluation(run, writer)
  saver = actions.Checkpointer(run)
  guard = actions.Guard(config.max_bad_steps, paths.join(workdir, "checkpoints"))
  batches, close_batches, bad_records = _batches(run, step)
  bar = tqdm(total=total, initial=step, desc="train", unit="step", dynamic_ncols=True,
             mininterval=1.0, disable=not run.primary)
  profiler = perf.Profiler(paths.join(workdir, "profile"), config.profile.start_step,
                           config.profile.num_steps)
  last_eval = None

  def paused(action, *args):
    t0 = time.perf_counter()
    out = action(*args)
    logger.pause(time.perf_counter() - t0)
    return out

  try:
    with faults.Preemption() as preemption:
      batch = next(batches) if step < total else None
      pending = None  # (step, metrics) of a step launched but not yet read
      while step < total:
        step += 1
        profiler.before(step)
        state, m = run.step(state, batch, run.frozen_params)
        profiler.after(step, m)
        # Dispatch is asynchronous, so while this step runs the host draws the
        # next batch and copies it to the devices, then reads the metrics of
        # the step before (finished by now). Only at the steps below, which
        # need this step's results, does the host wait for it.
        if step < total:
          batch = next(batches)
        stop = preemption.should_stop(step, exchange=logger.due(step))
        due = evaluation.due(step)
        boundary = stop or due or logger.due(step) or saver.due(step)
        ready = [pending] if pending else []
        pending = (step, m)
        if boundary:
          ready, pending = ready + [pending], None
        rolled_back = False
        for s, ms in ready:
          if guard.should_roll_back(s, ms, saver.last_saved):
            # A step launched after the bad ones is discarded with them.
            state, step = saver.restore()
            writer.rewind(step)  # the steps after it run again: one row per step
            print(f"{config.max_bad_steps} consecutive non-finite steps; rolled back to "
                  f"the checkpoint of step {step}.", flush=True)
            close_batches()
            batches, close_batches, bad_records = _batches(run, step)
            batch = next(batches)
            bar.reset(total=total)
            bar.update(step)
            pending, rolled_back = None, True
            logger.reset()
            break
          logger.add(ms)
          bar.update(1)
        if rolled_back or not boundary:
          continue

        if logger.due(step):
          row = logger(step, state, bad_records())
          bar.set_postfix(loss=f"{row['train/loss']:.4f}",
                          ex_s=f"{row['perf/examples_per_sec']:.0f}")
        if due:
          last_eval = paused(evaluation, step, due, state.params)
          bar.write(f"step {step}: " + "  ".join(
              f"{k}={v:.3f}" for k, v in last_eval.items() if k.endswith("_R@1")))
        # A step with skipped updates is still a consistent state (the update
        # was dropped, not applied), so it may be saved.
        if saver.due(step):
          paused(saver, step, state)
        if stop:
          if saver.last_saved != step:
            saver(step, state)
          checkpoint.wait(run.manager)
          bar.write(f"Stop requested (SIGTERM): saved step {step} in "
                    f"{paths.join(workdir, 'checkpoints')}; rerun the same command "
                    "to continue.")
          return {"preempted": True, "step": step}
    if last_eval is None:  # resumed at the end: evaluate what is there
      last_eval = evaluation(run.start, list(evaluators_lib.enabled(config.eval.evaluators)),
                             state.params)
  finally:
    profiler.close()
    bar.close()
    close_batches()  # stops grain's worker processes
    checkpoint.wait(run.manager)
    writer.close()  # after the last row: nothing writes to a closed writer

  if run.primary:
    metrics_lib.plot_curves(workdir)
    print(evaluators_lib.format_results(last_eval), flush=True)
  return last_eval
