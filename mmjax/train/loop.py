"""The training loop: data -> jitted step -> metrics, evaluation, checkpoints."""

import math
import os
import time

import jax
import numpy as np
from tqdm import tqdm

from mmjax.data import pipeline
from mmjax.eval import evaluator, retrieval
from mmjax.parallel import multihost, partitioning
from mmjax.train import build, checkpoint, metrics as metrics_lib, perf
from mmjax.train import state as state_lib


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the run stopped without saving that state."""


def check_workdir(workdir: str) -> None:
  """Fails now, not after hours of training, if `workdir` cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    # One probe per process: processes sharing a workdir must not race on one file.
    probe = os.path.join(workdir, f".write_probe_{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise OSError(f"cannot write to workdir {workdir!r} ({e.strerror}); choose a "
                  "writable --workdir with free space.") from e


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
  curves.png in `workdir`. Returns the last evaluation (retrieval metrics + step).
  """
  terms = build.check(config)  # every config error surfaces before compiling
  check_workdir(workdir)
  primary = _is_primary()
  if primary:
    metrics_lib.write_json(os.path.join(workdir, "config.json"), config.to_dict())

  mesh = build.mesh(config)
  tok = build.tokenizer(config, workdir)
  model = build.model(config, tok)
  loss_fn = build.loss_fn(config, terms, mesh)
  tx, lr_schedule = state_lib.optimizer(config)
  shardings = build.state_shardings(config, model, tx, mesh)
  batch_sharding = partitioning.batch_sharding(mesh)

  # Restored or created directly in its sharded layout: no device ever holds the
  # whole state unless the rules replicate it.
  mngr = checkpoint.manager(workdir, keep=config.checkpoint.keep)
  state = checkpoint.restore(mngr, build.abstract_state(config, model, tx, shardings))
  if state is None:
    state = build.init_state(config, model, tx, shardings)
  start = int(state.step)
  total = config.total_steps
  if start:
    print(f"Resuming from the checkpoint at step {start} in {workdir}.", flush=True)

  train_step = build.train_step(config, model, tx, lr_schedule, loss_fn, mesh, shardings)
  with partitioning.activate(mesh):  # the models' sharding constraints apply while tracing
    batch_spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
                  for k, v in build.example_batch(config).items()}
    compiled = train_step.lower(state, batch_spec).compile()
  step_flops = perf.compiled_flops(compiled)
  peak = perf.matmul_flops_per_sec()
  test = pipeline.test_data(config, tok)
  writer = metrics_lib.MetricWriter(workdir, enabled=primary)

  def run_eval(step: int) -> dict:
    result = evaluator.evaluate(model, state.params, test, config.eval.batch_size)
    writer.write(step, {f"eval/{k}": v for k, v in result.items()})
    if primary:
      metrics_lib.write_json(os.path.join(workdir, "eval.json"), {**result, "step": step})
    return result

  last_eval = None
  last_saved = start if start else None
  # This process draws only the rows its devices hold, then they join the global batch.
  rows = multihost.process_rows(batch_sharding, config.batch_size)
  batches = pipeline.train_batches(config, tok, start, rows)
  bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
             mininterval=1.0, disable=not primary)
  meter, window = _Throughput(), []
  bad_records = 0  # unreadable records replaced by the pipeline (this process)
  try:
    for step in range(start + 1, total + 1):
      local = next(batches)
      bad_records += int(local.pop("bad_records", 0))
      batch = multihost.global_batch(local, batch_sharding, config.batch_size)
      state, m = compiled(state, batch)
      # Reading the loss waits for this step only; the prefetch thread has the next
      # batch ready, so the check costs no throughput and no bad state is ever saved.
      loss = float(m["train/loss"])
      if not math.isfinite(loss):
        saved = f"step {last_saved}" if last_saved is not None else "none yet"
        raise NonFiniteLossError(
            f"train/loss is {loss} at step {step}; training stopped. Last good checkpoint: "
            f"{saved} in {os.path.join(workdir, 'checkpoints')} (kept intact). Lower "
            "--config.optim.lr, lengthen --config.optim.warmup_steps or tighten "
            "--config.optim.clip_norm, then rerun to resume from it.")
      window.append(m)
      meter.steps += 1
      bar.update(1)

      if _every(step, config.log_every, total):
        secs = meter.seconds()
        row = {k: float(np.mean([float(w[k]) for w in window])) for k in window[0]}
        row["train/loss"] = loss if len(window) == 1 else row["train/loss"]
        row["perf/steps_per_sec"] = meter.steps / secs
        row["perf/examples_per_sec"] = meter.steps * config.batch_size / secs
        row["data/bad_records"] = bad_records
        if step_flops:
          row["perf/step_flops"] = step_flops
          row["perf/flops_fraction"] = step_flops * meter.steps / secs / peak
        writer.write(step, row)
        bar.set_postfix(loss=f"{row['train/loss']:.4f}",
                        ex_s=f"{row['perf/examples_per_sec']:.0f}")
        window = []
        meter.reset()

      if _every(step, config.eval_every, total):
        t0 = time.perf_counter()
        last_eval = {**run_eval(step), "step": step}
        bar.write(f"step {step}: " + "  ".join(
            f"{k.replace('image_to_text', 'i2t').replace('text_to_image', 't2i')}={v:.3f}"
            for k, v in last_eval.items() if "R@" in k))
        meter.pause(time.perf_counter() - t0)

      if _every(step, config.checkpoint_every, total):
        t0 = time.perf_counter()
        checkpoint.save(mngr, step, state)
        last_saved = step
        meter.pause(time.perf_counter() - t0)
  finally:
    bar.close()
    if hasattr(batches, "close"):  # stops grain's worker processes
      batches.close()
    mngr.wait_until_finished()
    writer.close()

  if last_eval is None:  # resumed at the end: evaluate what is there
    last_eval = {**run_eval(start), "step": start}
  if primary:
    metrics_lib.plot_curves(workdir)
    print(retrieval.format_table(last_eval), flush=True)
  return last_eval
