"""The training loop: data -> jitted step -> metrics, evaluation, checkpoints."""

import os
import time

import jax
import numpy as np
from tqdm import tqdm

from mmjax.data import pipeline
from mmjax.eval import reports, suite
from mmjax.parallel import multihost, partitioning
from mmjax.train import build, checkpoint, faults, metrics as metrics_lib, perf
from mmjax.train import state as state_lib
from mmjax.train import teacher as teacher_lib
from mmjax.train import warm_start


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the run stopped without saving that state."""


def _is_primary() -> bool:
  return jax.process_index() == 0


def _every(step: int, period: int, total: int) -> bool:
  """True at multiples of `period` and at the last step (period 0: last step only)."""
  return step == total or (period > 0 and step % period == 0)


class _Throughput:
  """Steps and seconds since the last log, excluding eval and checkpoint pauses."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.steps, self.start, self.paused = 0, time.perf_counter(), 0.0

  def pause(self, seconds: float):
    self.paused += seconds

  def seconds(self) -> float:
    return max(time.perf_counter() - self.start - self.paused, 1e-9)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if any.

  Writes metrics.jsonl, eval.json, config.json, checkpoints/, tensorboard/ and
  curves.png in `workdir`. Returns the last evaluation (retrieval metrics +
  step), or {"preempted": True, "step": s} after a SIGTERM made it save step s
  and stop.
  """
  terms = build.check(config)  # every config error surfaces before compiling
  faults.check_workdir(workdir)
  primary = _is_primary()

  mesh = build.mesh(config)
  tok = build.tokenizer(config, workdir)
  model = build.model(config, tok)
  loss_fn = build.loss_fn(config, terms, mesh)
  # Read and checked before compiling; its params are an input of every step.
  teacher = teacher_lib.load(config, terms, mesh, tok)  # None: no config.distill.teacher
  teacher_args = () if teacher is None else (teacher.params,)
  tx, lr_schedule = state_lib.optimizer(config)
  shardings = build.state_shardings(config, model, tx, mesh)
  batch_sharding = partitioning.batch_sharding(mesh)

  # Restored or created directly in its sharded layout: no device ever holds the
  # whole state unless the rules replicate it.
  abstract = build.abstract_state(config, model, tx, shardings)
  faults.check_free_space(workdir, faults.state_bytes(abstract), config.checkpoint.keep)
  mngr = checkpoint.manager(workdir, keep=config.checkpoint.keep,
                            keep_every=config.checkpoint.keep_every)
  state = _resume(mngr, abstract, config, workdir)
  if state is None:
    state = build.init_state(config, model, tx, shardings)
    state = state.replace(params=warm_start.apply(config, state.params))
  if primary:
    metrics_lib.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  start = int(state.step)
  total = config.total_steps

  train_step = build.train_step(config, model, tx, lr_schedule, loss_fn, mesh, shardings,
                                teacher)
  with partitioning.activate(mesh):  # the models' sharding constraints apply while tracing
    batch_spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
                  for k, v in build.example_batch(config).items()}
    compiled = train_step.lower(state, batch_spec, *teacher_args).compile()
  step_flops = perf.compiled_flops(compiled)
  peak = perf.matmul_flops_per_sec()
  device_peak = perf.peak_flops_per_sec(jax.devices()[0], config.dtype)  # None on CPU
  analytic = perf.two_tower_train_flops(model, config.data.image_size,
                                        config.data.context_length, config.batch_size)
  if primary and step_flops and analytic:
    # Both per device: XLA analyses the partitioned program.
    analytic /= jax.device_count()
    print(f"FLOPs per step per device: {step_flops / 1e9:.2f} G from XLA's cost analysis, "
          f"{analytic / 1e9:.2f} G analytic (matmuls only; ratio "
          f"{step_flops / analytic:.3f}).", flush=True)
  test = pipeline.test_data(config, tok)
  writer = metrics_lib.MetricWriter(workdir, enabled=primary, resume_step=start)

  latest = {}  # the latest value of every evaluation metric

  def run_eval(step: int, names) -> dict:
    result, embeddings = suite.run(names, model, state.params, test, tok, config)
    writer.write(step, {f"eval/{k}": v for k, v in result.items()})
    latest.update(result)
    if primary:
      metrics_lib.write_json(os.path.join(workdir, "eval.json"), {**latest, "step": step})
      if embeddings and step == total and config.eval.reports:
        reports.write_all(workdir, test, embeddings["image"], embeddings["text"],
                          tok.decode(test["text"]))
    return {**latest, "step": step}

  last_eval = None
  last_saved = start if start else None
  bad_run, rolled_back = 0, False  # consecutive skipped steps; rolled back once yet?

  def save(step: int) -> None:
    checkpoint.save(mngr, step, state, {"next_step": step}, config.to_dict())

  # This process draws only the rows its devices hold, then they join the global batch.
  rows = multihost.process_rows(batch_sharding, config.batch_size)
  batches = pipeline.train_batches(config, tok, start, rows)
  bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
             mininterval=1.0, disable=not primary)
  meter, window = _Throughput(), []
  bad_records = 0  # unreadable records replaced by the pipeline (this process)

  def next_batch():
    nonlocal bad_records
    local = next(batches)
    bad_records += int(local.pop("bad_records", 0))
    return multihost.global_batch(local, batch_sharding, config.batch_size)

  step = start
  profiler = perf.Profiler(os.path.join(workdir, "profile"), config.profile.start_step,
                           config.profile.num_steps)
  try:
    with faults.Preemption() as preemption:
      batch = next_batch() if step < total else None
      pending = None  # (step, metrics) of a step launched but not yet read
      while step < total:
        step += 1
        profiler.before(step)
        state, m = compiled(state, batch, *teacher_args)
        profiler.after(step, m)
        # Dispatch is asynchronous, so while this step runs the host draws the
        # next batch and copies it to the devices, then reads the metrics of
        # the step before (finished by now). Only at the steps below, which
        # need this step's results, does the host wait for it.
        if step < total:
          batch = next_batch()
        stop = preemption.should_stop(step, exchange=_every(step, config.log_every, total))
        names = suite.due(config.eval.evaluators, step, total, config.eval_every)
        boundary = (stop or names or _every(step, config.log_every, total)
                    or _every(step, config.checkpoint_every, total))
        ready = [pending] if pending else []
        pending = (step, m)
        if boundary:
          ready, pending = ready + [pending], None
        rolled_back_now = False
        for s, ms in ready:
          bad_run = bad_run + 1 if float(ms["train/skipped"]) else 0
          if bad_run >= config.max_bad_steps:
            where = os.path.join(workdir, "checkpoints")
            if rolled_back or last_saved is None:
              raise NonFiniteLossError(_nonfinite_message(
                  ms, s, bad_run, last_saved, where, rolled_back))
            # One rollback: a transient fault (a bad host, a flipped bit) does
            # not recur; a deterministic blow-up does, and then stops the run
            # above. A step launched after the bad ones is discarded with them.
            checkpoint.wait(mngr)
            restored = checkpoint.restore_latest(mngr, abstract)
            state, step = restored.state, restored.step
            print(f"{bad_run} consecutive non-finite steps; rolled back to the checkpoint "
                  f"of step {step}.", flush=True)
            batches.close()
            batches = pipeline.train_batches(config, tok, step, rows)
            batch = next_batch()
            bar.reset(total=total)
            bar.update(step)
            bad_run, rolled_back, window, pending = 0, True, [], None
            rolled_back_now = True
            meter.reset()
            break
          window.append(ms)
          meter.steps += 1
          bar.update(1)
        if rolled_back_now or not boundary:
          continue

        if _every(step, config.log_every, total):
          secs = meter.seconds()
          row = {k: float(np.mean([float(w[k]) for w in window])) for k in window[0]}
          row["train/skipped_total"] = float(state.skipped)
          row["perf/steps_per_sec"] = meter.steps / secs
          row["perf/examples_per_sec"] = meter.steps * config.batch_size / secs
          row["data/bad_records"] = bad_records
          if step_flops:
            row["perf/step_flops"] = step_flops
            row["perf/flops_fraction"] = step_flops * meter.steps / secs / peak
            if device_peak:
              row["perf/mfu"] = step_flops * meter.steps / secs / device_peak
          writer.write(step, row)
          bar.set_postfix(loss=f"{row['train/loss']:.4f}",
                          ex_s=f"{row['perf/examples_per_sec']:.0f}")
          window = []
          meter.reset()

        if names:
          t0 = time.perf_counter()
          last_eval = run_eval(step, names)
          bar.write(f"step {step}: " + "  ".join(
              f"{k.replace('image_to_text', 'i2t').replace('text_to_image', 't2i')}={v:.3f}"
              for k, v in last_eval.items() if "R@" in k))
          meter.pause(time.perf_counter() - t0)

        # A step with skipped updates is still a consistent state (the update
        # was dropped, not applied), so it may be saved.
        if _every(step, config.checkpoint_every, total):
          t0 = time.perf_counter()
          save(step)
          last_saved = step
          meter.pause(time.perf_counter() - t0)

        if stop:
          if last_saved != step:
            save(step)
          checkpoint.wait(mngr)
          bar.write(f"Stop requested (SIGTERM): saved step {step} in "
                    f"{os.path.join(workdir, 'checkpoints')}; rerun the same command "
                    "to continue.")
          return {"preempted": True, "step": step}
  finally:
    profiler.close()
    bar.close()
    batches.close()  # stops grain's worker processes
    checkpoint.wait(mngr)
    writer.close()

  if last_eval is None:  # resumed at the end: evaluate what is there
    last_eval = run_eval(start, list(suite.enabled(config.eval.evaluators)))
  if primary:
    metrics_lib.plot_curves(workdir)
    print(suite.format_results(last_eval), flush=True)
  return last_eval


def _resume(mngr, abstract, config, workdir: str):
  """The state of the latest readable checkpoint (None if there is none),
  after checking that this config may continue it."""
  restored = checkpoint.restore_latest(mngr, abstract)
  if restored is None:
    return None
  faults.check_resume_config(restored.config, config, workdir)
  if restored.data.get("next_step", restored.step) != restored.step:
    raise ValueError(f"checkpoint step {restored.step} in {workdir} records data "
                     f"position {restored.data}; it is damaged, move it aside.")
  newer = [s for s in mngr.all_steps() if s > restored.step]
  if newer:  # unreadable ones, skipped with a warning: keep them for inspection
    if _is_primary():
      checkpoint.set_aside(mngr, restored.step)
    multihost.sync("set aside unreadable checkpoints")
    mngr.reload()
  print(f"Resuming from the checkpoint at step {restored.step} in {workdir}.", flush=True)
  return restored.state


def _nonfinite_message(m, step, bad_run, last_saved, where, rolled_back) -> str:
  loss, norm = float(m["train/loss"]), float(m["train/grad_norm"])
  history = (f"after rolling back to step {last_saved}, it happened again"
             if rolled_back else "there is no checkpoint to roll back to")
  return (f"{bad_run} consecutive steps up to step {step} had a non-finite loss or "
          f"gradient (loss {loss}, grad norm {norm}); their updates were skipped, and "
          f"{history}. Training stopped; the checkpoints in {where} are intact. "
          "Lower --config.optim.lr, lengthen --config.optim.warmup_steps or tighten "
          "--config.optim.clip_norm, then rerun to resume.")
