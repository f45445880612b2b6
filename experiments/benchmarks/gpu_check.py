"""One GPU, one command: mmjax's step speed, MFU and loss memory, and open_clip's step.

  bash experiments/benchmarks/gpu_check.sh             # on a machine with one GPU: < 8 min
  bash experiments/benchmarks/gpu_check.sh --dry-run   # tiny shapes, any machine: ~1 min

Four parts, each in a child process of its own (so each has the accelerator's
memory to itself, and a part that overruns its time limit is stopped without
losing the others), all on device 0:

  mmjax      The SigLIP (sigmoid loss) training step of a ViT-B/16 image tower
             and a B text tower (width 768, 12 layers, 12 heads, 64 tokens, a
             32,000-token vocabulary: train_step.py's `b16` preset, its CLIP
             layout), computing in bfloat16 with float32 parameters and AdamW
             state, at the largest batch that fits. The batch is found from
             compilation alone: the step is compiled (AOT, abstract shapes) at
             batches `start` and 2 `start`, XLA's `memory_analysis()` (arguments
             + outputs + temporaries - donated aliases) gives bytes = fixed +
             per_example * batch, the largest `start * 2^k` that this line puts
             under `budget_fraction` of the device's memory (`memory_stats()
             ['bytes_limit']`) is compiled, then its double, and the search
             steps up or down until a batch fits and its double does not (or
             its time runs out: the JSON says which figures were compiled and
             which predicted). Then images/s (median step over timed steps
             after warm-up) and MFU: XLA's cost-analysis FLOPs per step, and the
             analytic count (`mmjax.train.perf.two_tower_train_flops`), per
             second over the device's published bfloat16 dense peak
             (`mmjax.train.perf.DEVICE_PEAKS`; null on CPUs and unknown devices).
  open_clip  The same model description in open_clip (torch, CUDA, autocast
             bfloat16 as open_clip's --precision amp_bf16, eager, AdamW), at
             mmjax's batch, halved while it runs out of memory (the JSON says
             which batch); the ratio of mmjax images/s to open_clip's (each
             side's median step, timed in its own process one after the
             other, not alternately as train_step.py does on CPU). Needs
             torch and open_clip (the `bench` extra): without them the part's
             status is "unavailable", with the reason, and the ratio is null.
  ring_loss  Memory of the sigmoid loss's value and gradient, float32, at batch
             32,768 x embedding 768 on one device: the ring form (one shard:
             the [B, B] logits scored in [tile_rows, B] tiles) against the naive
             form, from each compile's memory_analysis and, on GPUs, from the
             allocator's peak while running it; beside the bytes of one
             float32 [B, B] matrix.
  pipeline   The input pipeline (pipeline_throughput.py's synthetic COCO-like
             JPEGs, prepared as a dataset) at 224 px: images/s of
             `pipeline.train_batches` in the main process (one core), with
             grain workers, and one image's decode + augment on one thread.

Progress goes to stderr; the last and only line on stdout is one JSON object:
device kind, jax version, each figure, and for each part a `status` ("ok",
"error", "timeout", "unavailable" or "skipped") with a `reason`. --dry-run runs
the same parts at tiny shapes (image 32 px, patch 8, width 64, depth 1, a
512-example loss) with a fake small memory limit, so the batch search runs its
course; on CPUs MFU is null. It takes 40-55 s on 2 busy CPU cores, most of it
XLA:CPU compiling the step twice (about 10 s each); on a GPU it is a quick
first look before the full run.

On a GPU machine with network access, one environment with CUDA JAX, torch and
open_clip (torch 2.14.1's wheels are built for CUDA 13, hence jax[cuda13]):

  MMJAX_VENV=.venv-gpu bash -c 'source launch/_venv.sh bench'
  .venv-gpu/bin/pip install -c requirements/lock.txt "jax[cuda13]"
  PYTHON=.venv-gpu/bin/python bash experiments/benchmarks/gpu_check.sh

On a machine that already has CUDA JAX, flax, optax, orbax and torch but no
network, gpu_check.sh runs mmjax from this checkout (PYTHONPATH) with
`python3`. The mmjax and ring_loss parts need nothing more (at versions
mmjax works with); open_clip needs open_clip_torch and ftfy; pipeline needs
grain, array_record, tensorflow-datasets (with its own requirements),
ml_collections, sentencepiece, soundfile and soxr. A part whose imports fail reports "error" (open_clip:
"unavailable") with the missing module as its reason; the others still run.
"""

import argparse
import gc
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # train_step.py and pipeline_throughput.py sit beside this file
  sys.path.insert(0, HERE)

PARTS = ("mmjax", "open_clip", "ring_loss", "pipeline")
MIB = 2**20

# What each run measures. Time limits in seconds; a part's `limit_s` is the
# hard stop of its process, the other *_s are soft limits inside it.
SETTINGS = {
    "gpu": dict(
        spec="b16", dtype="bfloat16", loss="sigmoid",
        search_start=256, search_max=16384, budget_fraction=0.9, search_s=150,
        warmup=3, rounds=10, timing_s=30, fallback_batch=256,
        loss_batch=32768, loss_dim=768, loss_tile_rows=None, loss_reps=3,
        pipe_image_size=224, pipe_images=256, pipe_batch=32, pipe_batches=6,
        pipe_workers=None,  # None: min(8, half the host's cores)
        limit_s=dict(mmjax=250, open_clip=90, ring_loss=50, pipeline=60)),
    "dry": dict(
        spec=dict(image_size=32, patch=8, width=64, depth=1, heads=2, text_width=64,
                  text_depth=1, text_heads=2, context=16, vocab=1000, embed=64),
        dtype="bfloat16", loss="sigmoid",
        search_start=8, search_max=256, budget_fraction=1.0, search_s=60,
        warmup=1, rounds=3, timing_s=10, fallback_batch=8,
        # B x B (1 MiB) well above the ring's [B, D] gradients and [tile, B] tiles.
        loss_batch=512, loss_dim=32, loss_tile_rows=32, loss_reps=1,
        pipe_image_size=32, pipe_images=16, pipe_batch=8, pipe_batches=2, pipe_workers=0,
        limit_s=dict(mmjax=120, open_clip=120, ring_loss=120, pipeline=120)),
}
# The dry run's fake device memory: the bytes its linear model predicts at
# this many examples, between its search's first two batches (8 and 16), so
# that 8 fits and 16 does not with two compiles (XLA:CPU takes 6-12 s for
# each); test_gpu_check.py tests the search's other paths without compiling.
DRY_LIMIT_EXAMPLES = 12

# Every key each part reports, so that a failed or skipped part, and the dry
# run, print the same keys as a full run.
KEYS = {
    "mmjax": ("params", "batch", "batch_search", "images_per_s", "step_s_median",
              "step_s_min", "step_s_max", "steps_timed", "loss_after_warmup",
              "flops_per_step_xla", "flops_per_step_analytic", "peak_flops_per_s",
              "mfu", "mfu_analytic", "oom_fallbacks"),
    "open_clip": ("torch_version", "open_clip_version", "device", "amp", "params",
                  "batch", "batch_same_as_mmjax", "oom_batches", "images_per_s",
                  "step_s_median", "step_s_min", "step_s_max", "steps_timed",
                  "loss_after_warmup"),
    "ring_loss": ("batch", "dim", "tile_rows", "bxb_f32_bytes", "ring_temp_bytes",
                  "ring_total_bytes", "ring_peak_runtime_bytes", "ring_s",
                  "naive_temp_bytes", "naive_total_bytes", "naive_peak_runtime_bytes",
                  "naive_s", "ring_temp_over_bxb", "value_rel_diff"),
    "pipeline": ("image_size", "images", "batch", "jpeg_kb_mean", "host_cores",
                 "reference_ms_per_image", "reference_images_per_s",
                 "images_per_s_per_core", "workers", "workers_images_per_s",
                 "workers_images_per_s_per_worker", "startup_s", "cores_to_feed_mmjax"),
}
DEVICE_KEYS = ("device_kind", "platform", "device_count", "jax_version", "jaxlib_version")


def log(msg: str) -> None:
  print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Result(dict):
  """A part's figures, rewritten to `path` (atomically) at every update, so
  that a part stopped at its time limit still hands over what it measured."""

  def __init__(self, path: str | None):
    super().__init__()
    self.path = path

  def set(self, **kwargs) -> None:
    self.update(kwargs)
    if self.path:
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        json.dump(self, f)
      os.replace(tmp, self.path)


def model_spec(settings: dict) -> dict:
  import train_step
  spec = settings["spec"]
  return dict(train_step.PRESETS[spec]) if isinstance(spec, str) else dict(spec)


def device_info() -> dict:
  import jax
  import jaxlib
  d = jax.devices()[0]
  return {"device_kind": d.device_kind, "platform": d.platform,
          "device_count": jax.device_count(), "jax_version": jax.__version__,
          "jaxlib_version": getattr(jaxlib, "__version__", None)}


def memory_stat(key: str) -> int | None:
  """memory_stats()[key] of device 0 ("bytes_limit", "peak_bytes_in_use",
  "bytes_in_use"); None where the device keeps no such count (CPUs)."""
  import jax
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # some backends do not implement it
    return None
  return int(stats[key]) if stats and key in stats else None


def compiled_bytes(compiled) -> dict:
  """What XLA's buffer assignment says one call needs: arguments + outputs +
  temporaries, less the outputs that reuse donated arguments."""
  m = compiled.memory_analysis()
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return {"total": int(total), "temp": int(m.temp_size_in_bytes)}


def time_steps(step, warmup: int, rounds: int, max_s: float) -> tuple[list[float], float]:
  """Seconds of each of up to `rounds` calls of `step` (each waits for its
  result) after `warmup` calls; stops early once `max_s` have passed (after 3).
  Returns (times, the last warm-up loss)."""
  import train_step
  loss = float("nan")
  for _ in range(warmup):
    loss = step()
  times, start = [], time.perf_counter()
  for _ in range(rounds):
    times.append(train_step.timed(step))
    if len(times) >= 3 and time.perf_counter() - start > max_s:
      break
  return times, loss


def step_figures(times: list[float], batch: int) -> dict:
  median = statistics.median(times)
  return {"images_per_s": batch / median, "step_s_median": median,
          "step_s_min": min(times), "step_s_max": max(times), "steps_timed": len(times)}


# ---------------------------------------------------------------------------
# The batch search.


def find_batch(bytes_at, budget: float, start: int, max_batch: int,
               deadline: float | None = None) -> dict:
  """The largest batch `start * 2^k` (<= max_batch) whose bytes fit `budget`,
  k >= 0 (or, when `start` does not fit, the largest `start / 2^k` that does).

  bytes_at(batch) -> bytes (a compile: seconds each) is called at most once
  per batch. The first two calls (start, 2 start) fit the line bytes = fixed +
  per_example * batch; the search jumps to the largest batch that the line
  puts under the budget, then checks it and its double, stepping down or up
  until a batch fits and its double does not. A compile of a double that
  would end past `deadline` (time.monotonic(); judged by the slowest call so
  far) is skipped, and the double's bytes are taken from the line.

  Returns {"batch" (None if not even batch 1 fits), "measured" [[batch,
  bytes], ...] in call order, "fixed_bytes", "bytes_per_example",
  "double_bytes", "double_source" ("compiled", "model", or "above max_batch")}.
  """
  measured, slowest = {}, [0.0]

  def measure(b):
    if b not in measured:
      t = time.monotonic()
      measured[b] = bytes_at(b)
      slowest[0] = max(slowest[0], time.monotonic() - t)
    return measured[b]

  def late():
    return deadline is not None and time.monotonic() + slowest[0] > deadline

  out = {"batch": None, "fixed_bytes": None, "bytes_per_example": None,
         "double_bytes": None, "double_source": None}
  while start > 1 and measure(start) > budget:
    start //= 2
  if measure(start) > budget:
    out["measured"] = [[b, v] for b, v in measured.items()]
    return out
  second = 2 * start if 2 * start <= max_batch else None
  per_example = (measure(second) - measured[start]) / start if second else 0.0
  fixed = measured[start] - per_example * start
  out.update(fixed_bytes=fixed, bytes_per_example=per_example)
  predict = lambda b: fixed + per_example * b

  batch = start
  while 2 * batch <= max_batch and predict(2 * batch) <= budget:
    batch *= 2
  while batch > start and measure(batch) > budget:  # the line was optimistic
    batch //= 2
  while True:
    if 2 * batch > max_batch:
      out["double_source"] = "above max_batch"
      break
    if 2 * batch not in measured and late():
      out.update(double_bytes=predict(2 * batch), double_source="model")
      break
    if measure(2 * batch) > budget:
      out.update(double_bytes=measured[2 * batch], double_source="compiled")
      break
    batch *= 2  # the line was pessimistic
  out["batch"] = batch
  out["measured"] = [[b, v] for b, v in measured.items()]
  return out


# ---------------------------------------------------------------------------
# The parts, each run in its own process.


def part_mmjax(settings: dict, result: Result, args) -> None:
  import jax
  import train_step

  from mmjax.train import perf
  from mmjax.train import state as state_lib

  result.set(**device_info())
  spec, dtype, loss = model_spec(settings), settings["dtype"], settings["loss"]
  preset = settings["spec"] if isinstance(settings["spec"], str) else "dry-run"
  result.set(model={"preset": preset, **spec, "loss": loss, "dtype": dtype,
                    "param_dtype": "float32"})
  model, tx, step = train_step.mmjax_step(spec, loss, dtype)
  example = train_step.random_batch(spec, 1)
  abstract_state = jax.eval_shape(lambda: state_lib.create(
      state_lib.init_params(model, jax.random.key(0), example), tx))
  result.set(params=sum(int(x.size) for x in jax.tree.leaves(abstract_state.params)))
  jitted = jax.jit(step, donate_argnums=0)
  compiled, compile_s = {}, {}

  def compile_at(batch: int):
    if batch not in compiled:
      shapes = {k: jax.ShapeDtypeStruct((batch, *v.shape[1:]), v.dtype)
                for k, v in example.items()}
      start = time.perf_counter()
      compiled[batch] = jitted.lower(abstract_state, shapes, {}).compile()
      compile_s[batch] = time.perf_counter() - start
    return compiled[batch]

  start = time.perf_counter()
  limit, source = memory_stat("bytes_limit"), "memory_stats()['bytes_limit'] of device 0"
  if args.memory_limit:
    limit, source = args.memory_limit, "--memory-limit"
  elif args.dry_run:
    # A fake small device: the line through two compiles at DRY_LIMIT_EXAMPLES.
    small = [compiled_bytes(compile_at(b))["total"]
             for b in (settings["search_start"], 2 * settings["search_start"])]
    per = (small[1] - small[0]) / settings["search_start"]
    limit = int(small[0] + per * (DRY_LIMIT_EXAMPLES - settings["search_start"]))
    source = (f"fake (dry run): the compiled bytes' line at {DRY_LIMIT_EXAMPLES} examples")
  elif limit is None:
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    source = "half the host's memory (the device reports no limit)"
  budget = limit * settings["budget_fraction"]
  search = {"method": (
      "AOT compiles at abstract shapes; bytes = memory_analysis() arguments + outputs + "
      "temporaries - donated aliases; a line through the first two batches predicts the "
      "largest power-of-two multiple of `start` under the budget, then that batch and its "
      "double are compiled (stepping up or down) until a batch fits and its double does not"),
      "memory_limit_bytes": limit, "memory_limit_source": source,
      "budget_fraction": settings["budget_fraction"], "budget_bytes": budget,
      "start": settings["search_start"], "max_batch": settings["search_max"]}
  log(f"mmjax: {result['params']:,} params, {dtype}; batch search under "
      f"{budget / MIB:,.0f} MiB ({source})")

  def bytes_at(batch):
    b = compiled_bytes(compile_at(batch))["total"]
    log(f"mmjax: batch {batch}: {b / MIB:,.1f} MiB compiled ({compile_s[batch]:.1f} s)")
    return b

  found = find_batch(bytes_at, budget, settings["search_start"], settings["search_max"],
                     deadline=time.monotonic() + settings["search_s"])
  search.update(found, seconds=time.perf_counter() - start,
                compile_s=[[b, s] for b, s in compile_s.items()])
  batch = found["batch"]
  result.set(batch=batch, batch_search=search)
  if batch is None:
    raise RuntimeError(f"not even batch 1 fits: {found['measured'][-1][1]:,} bytes > "
                       f"budget {budget:,.0f}")
  log(f"mmjax: largest batch {batch} (double: {found['double_source']})")

  fallbacks = []
  while True:
    try:
      side = train_step.MmjaxSide(spec, loss, train_step.random_batch(spec, batch), dtype,
                                  compiled=compile_at(batch))
      times, loss_value = time_steps(side.step, settings["warmup"], settings["rounds"],
                                     settings["timing_s"])
      break
    except Exception as e:  # XlaRuntimeError, whose module moves between jax versions
      if batch == 1 or ("RESOURCE_EXHAUSTED" not in str(e)
                        and "out of memory" not in str(e).lower()):
        raise
    # Past the except block, so that its traceback no longer holds the arrays.
    log(f"mmjax: out of memory at batch {batch} although compiled to fit; halving")
    fallbacks.append(batch)
    side = None
    gc.collect()
    batch //= 2
    result.set(batch=batch, oom_fallbacks=fallbacks)
  figures = step_figures(times, batch)
  xla = perf.compiled_flops(compile_at(batch))
  analytic = perf.two_tower_train_flops(model, spec["image_size"], spec["context"], batch)
  peak = perf.peak_flops_per_sec(jax.devices()[0], dtype)
  mfu = lambda f: f / figures["step_s_median"] / peak if f and peak else None
  result.set(**figures, loss_after_warmup=loss_value, oom_fallbacks=fallbacks,
             flops_per_step_xla=xla, flops_per_step_analytic=analytic, peak_flops_per_s=peak,
             mfu=mfu(xla), mfu_analytic=mfu(analytic))
  log(f"mmjax: batch {batch}: {figures['images_per_s']:.1f} images/s, MFU "
      f"{result['mfu']} (XLA FLOPs), {result['mfu_analytic']} (analytic)")


def part_open_clip(settings: dict, result: Result, args) -> None:
  try:
    import open_clip
    import torch
  except ImportError as e:
    result.set(status="unavailable", reason=f"{type(e).__name__}: {e}")
    return
  import train_step

  device = "cuda" if torch.cuda.is_available() else "cpu"
  result.set(torch_version=torch.__version__, open_clip_version=open_clip.__version__,
             device=device, amp=settings["dtype"])
  spec = model_spec(settings)
  batch = args.batch or settings["fallback_batch"]
  result.set(batch_same_as_mmjax=bool(args.batch))
  ooms = []
  while True:
    try:
      side = train_step.OpenClipSide(spec, settings["loss"], train_step.random_batch(spec, batch),
                                     device=device, amp=settings["dtype"])
      result.set(params=side.num_params, batch=batch)
      times, loss_value = time_steps(side.step, settings["warmup"], settings["rounds"],
                                     settings["timing_s"])
      break
    except torch.cuda.OutOfMemoryError:
      if batch == 1:
        raise
    # Past the except block, so that its traceback no longer holds the tensors.
    log(f"open_clip: out of memory at batch {batch}; halving")
    ooms.append(batch)
    side = None
    gc.collect()
    torch.cuda.empty_cache()
    batch //= 2
    result.set(oom_batches=ooms, batch_same_as_mmjax=False)
  result.set(**step_figures(times, batch), loss_after_warmup=loss_value, oom_batches=ooms)
  log(f"open_clip: batch {batch}: {result['images_per_s']:.1f} images/s on {device}")


def part_ring_loss(settings: dict, result: Result, args) -> None:
  del args
  import jax
  import jax.numpy as jnp
  import numpy as np

  from mmjax.losses import contrastive
  from mmjax.losses import distributed
  from mmjax.losses import sharded

  result.set(**device_info())
  b, d, tile = settings["loss_batch"], settings["loss_dim"], settings["loss_tile_rows"]
  # A ring of one device. Built here rather than by mmjax.parallel.mesh, which
  # needs ml_collections (for its config errors): one package less to install.
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",),
                           axis_types=(jax.sharding.AxisType.Auto,))
  forms = {
      "ring": lambda zi, zt, s, c: sharded.sharded_sigmoid_contrastive(
          zi, zt, s, c, mesh=mesh, batch_axes="data", tile_rows=tile),
      "naive": contrastive.sigmoid_contrastive,
  }
  # The rows per tile the ring will use (on one device B_local = B).
  result.set(batch=b, dim=d, bxb_f32_bytes=b * b * 4,
             tile_rows=distributed._tile_rows(b, tile))
  keys = jax.random.split(jax.random.key(0), 2)
  zimg, ztxt = (x / jnp.linalg.norm(x, axis=-1, keepdims=True)
                for x in (jax.random.normal(k, (b, d), jnp.float32) for k in keys))
  scalars = (jnp.float32(10.0), jnp.float32(-10.0))
  jax.block_until_ready((zimg, ztxt))
  values = {}
  # The allocator's peak since start-up less what was in use before the call:
  # the call's own peak (its outputs included), or more where an earlier
  # moment (a compile's autotuning) peaked higher. The ring goes first, so
  # that the naive form's larger peak cannot hide it.
  for name, fn in forms.items():
    grad = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))
    compiled = grad.lower(zimg, ztxt, *scalars).compile()
    mem = compiled_bytes(compiled)
    result.set(**{f"{name}_temp_bytes": mem["temp"], f"{name}_total_bytes": mem["total"]})
    in_use = memory_stat("bytes_in_use")
    out = jax.block_until_ready(compiled(zimg, ztxt, *scalars))  # warm-up
    peak = memory_stat("peak_bytes_in_use")
    times = []
    for _ in range(settings["loss_reps"]):
      start = time.perf_counter()
      out = jax.block_until_ready(compiled(zimg, ztxt, *scalars))
      times.append(time.perf_counter() - start)
    values[name] = float(out[0])
    result.set(**{f"{name}_s": min(times),
                  f"{name}_peak_runtime_bytes": None if peak is None else peak - in_use})
    log(f"{name} loss: temp {mem['temp'] / MIB:,.1f} MiB, total {mem['total'] / MIB:,.1f} "
        f"MiB compiled; {min(times) * 1e3:.1f} ms")
  result.set(ring_temp_over_bxb=result["ring_temp_bytes"] / result["bxb_f32_bytes"],
             value_rel_diff=abs(values["ring"] - values["naive"]) / abs(values["naive"]))


def part_pipeline(settings: dict, result: Result, args) -> None:
  del args
  import pipeline_throughput as pt
  from absl import logging as absl_logging
  import tensorflow_datasets as tfds

  from mmjax.data import prepare
  from mmjax.train import build

  absl_logging.set_verbosity(absl_logging.ERROR)
  tfds.display_progress_bar(False)
  cores = os.cpu_count() or 1
  workers = settings["pipe_workers"]
  if workers is None:
    workers = max(1, min(8, cores // 2))
  size, n, batch = settings["pipe_image_size"], settings["pipe_images"], settings["pipe_batch"]
  result.set(image_size=size, images=n, batch=batch, host_cores=cores)
  with tempfile.TemporaryDirectory(prefix="gpu_check_pipeline_") as root:
    source, images, synth = pt.synthesise(os.path.join(root, "source"), n)
    prepare.prepare("jsonl", source, images, root, name="synthetic", progress=False,
                    log=lambda _: None)
    config = pt.load_config(os.path.join(HERE, "..", "image_text_small.py"))
    with config.unlocked():
      config.data.name = "synthetic"
      config.data.data_dir = root
      config.data.image_size = size
      config.batch_size = batch
    tok = build.tokenizer(config, os.path.join(root, "work"))
    ref = pt.reference_per_image(config, tok, min(n, 32))
    result.set(jpeg_kb_mean=synth["jpeg_kb_mean"], reference_ms_per_image=ref["example_ms"],
               reference_images_per_s=1e3 / ref["example_ms"])
    one = pt.pipeline_rate(config, tok, 0, 1, settings["pipe_batches"])
    result.set(images_per_s_per_core=one["images_per_s"])
    log(f"pipeline: {one['images_per_s']:.0f} images/s in the main process at {size} px")
    if workers:
      many = pt.pipeline_rate(config, tok, workers, 2, settings["pipe_batches"])
      result.set(workers=workers, workers_images_per_s=many["images_per_s"],
                 workers_images_per_s_per_worker=many["images_per_s"] / workers,
                 startup_s=many["startup_s"])
      log(f"pipeline: {many['images_per_s']:.0f} images/s with {workers} grain workers")
    else:
      result.set(workers=0, workers_images_per_s=one["images_per_s"],
                 workers_images_per_s_per_worker=one["images_per_s"],
                 startup_s=one["startup_s"])


PART_FNS = {"mmjax": part_mmjax, "open_clip": part_open_clip, "ring_loss": part_ring_loss,
            "pipeline": part_pipeline}


def run_child(args) -> int:
  """One part, in this process: its figures go to args.result."""
  settings = SETTINGS["dry" if args.dry_run else "gpu"]
  result = Result(args.result)
  start = time.perf_counter()
  result.set(status="running")
  try:
    PART_FNS[args.part](settings, result, args)
  except BaseException as e:  # reported as the part's status, whatever it was
    traceback.print_exc(file=sys.stderr)
    result.set(status="error", reason=f"{type(e).__name__}: {e}"[:500],
               seconds=time.perf_counter() - start)
    return 1
  if result.get("status") == "running":
    result.set(status="ok", reason=None)
  result.set(seconds=time.perf_counter() - start)
  return 0


# ---------------------------------------------------------------------------
# The parent: runs the parts, prints the one JSON line.


def run_part(name: str, args, extra: list[str], limit_s: float) -> dict:
  """Runs part `name` in a child process for at most limit_s seconds; its
  output goes to stderr, its figures come back through a file."""
  fd, path = tempfile.mkstemp(prefix=f"gpu_check_{name}_", suffix=".json")
  os.close(fd)
  cmd = [sys.executable, os.path.abspath(__file__), "--part", name, "--result", path, *extra]
  if args.dry_run:
    cmd.append("--dry-run")
  if args.memory_limit:
    cmd += ["--memory-limit", str(args.memory_limit)]
  env = dict(os.environ)
  # The child owns the device: let JAX's allocator take most of the GPU
  # (its default is 75%); bytes_limit reports the result.
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.90")
  env.setdefault("PYTHONUNBUFFERED", "1")
  if name in ("open_clip", "pipeline"):
    # These need no JAX device: should anything in them start JAX's GPU
    # backend, it would take the memory torch (or grain's workers) needs.
    env["JAX_PLATFORMS"] = "cpu"
  log(f"part {name}: starting (limit {limit_s:.0f} s)")
  start = time.perf_counter()
  # A session of its own, so that a timeout stops the part's grain workers too.
  proc = subprocess.Popen(cmd, stdout=sys.stderr, env=env, start_new_session=True)
  timed_out = False
  try:
    code = proc.wait(timeout=limit_s)
  except subprocess.TimeoutExpired:
    timed_out = True
    os.killpg(proc.pid, signal.SIGKILL)
    code = proc.wait()
  try:
    with open(path) as f:
      out = json.load(f)
  except (OSError, ValueError):
    out = {}
  finally:
    for p in (path, path + ".tmp"):
      if os.path.exists(p):
        os.remove(p)
  if timed_out:
    out.update(status="timeout", reason=f"stopped at its limit of {limit_s:.0f} s")
  elif out.get("status") in (None, "running"):
    out.update(status="error", reason=f"exited with code {code} before reporting")
  out["seconds"] = time.perf_counter() - start
  log(f"part {name}: {out['status']} in {out['seconds']:.1f} s"
      + (f" ({out['reason']})" if out.get("reason") else ""))
  return out


def package_version(name: str) -> str | None:
  from importlib import metadata
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return None


def run_parent(args) -> dict:
  settings = SETTINGS["dry" if args.dry_run else "gpu"]
  wanted = args.parts.split(",") if args.parts else list(PARTS)
  unknown = [p for p in wanted if p not in PARTS]
  if unknown:
    raise SystemExit(f"unknown parts {unknown}; choose from {','.join(PARTS)}")
  start = time.perf_counter()
  parts = {}
  for name in PARTS:
    out = {"status": "skipped", "reason": "not in --parts", "seconds": 0.0}
    if name in wanted:
      extra = []
      if name == "open_clip" and parts.get("mmjax", {}).get("batch"):
        extra = ["--batch", str(parts["mmjax"]["batch"])]
      out = run_part(name, args, extra, settings["limit_s"][name] * args.time_scale)
    parts[name] = out

  device = next((p for p in parts.values() if p.get("device_kind")), {})
  result = {"check": "gpu_check", "dry_run": bool(args.dry_run),
            **{k: device.get(k) for k in DEVICE_KEYS},
            "host_cores": os.cpu_count(), "python": sys.version.split()[0],
            "model": parts["mmjax"].get("model")}
  if result["jax_version"] is None:
    result["jax_version"] = package_version("jax")
  for name in PARTS:
    out = parts[name]
    result[name] = {"status": out.get("status"), "reason": out.get("reason"),
                    "seconds": out.get("seconds"),
                    **{k: out.get(k) for k in KEYS[name]}}
  mm, oc, pipe = result["mmjax"], result["open_clip"], result["pipeline"]
  result["params_equal"] = (mm["params"] == oc["params"]
                            if mm["params"] is not None and oc["params"] is not None else None)
  result["ratio_mmjax_over_open_clip"] = (
      mm["images_per_s"] / oc["images_per_s"]
      if mm["images_per_s"] and oc["images_per_s"] else None)
  if mm["images_per_s"] and pipe["images_per_s_per_core"]:
    pipe["cores_to_feed_mmjax"] = mm["images_per_s"] / pipe["images_per_s_per_core"]
  # A missing optional part (open_clip) is no failure of the check.
  fine = all(result[p]["status"] in ("ok", "skipped", "unavailable") for p in PARTS)
  result["status"] = "ok" if fine else "partial"
  result["total_s"] = time.perf_counter() - start
  return result


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dry-run", action="store_true",
                      default=os.environ.get("MMJAX_GPU_CHECK_DRY_RUN", "") not in ("", "0"),
                      help="tiny shapes and a fake memory limit (also MMJAX_GPU_CHECK_DRY_RUN=1)")
  parser.add_argument("--parts", default="",
                      help=f"comma-separated subset of {','.join(PARTS)} (default: all)")
  parser.add_argument("--memory-limit", type=int, default=0,
                      help="device bytes for the batch search, instead of the device's own")
  parser.add_argument("--time-scale", type=float, default=1.0,
                      help="multiplies every part's time limit")
  # Internal: how the parent starts one part in a child process.
  parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
  parser.add_argument("--result", help=argparse.SUPPRESS)
  parser.add_argument("--batch", type=int, default=0, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def finite(x):
  """x with every NaN or infinity replaced by None: strict JSON."""
  if isinstance(x, dict):
    return {k: finite(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [finite(v) for v in x]
  return None if isinstance(x, float) and not math.isfinite(x) else x


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.part:
    return run_child(args)
  result = run_parent(args)
  print(json.dumps(finite(result), allow_nan=False), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
