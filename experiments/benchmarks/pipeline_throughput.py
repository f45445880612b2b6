"""Can the input pipeline keep up with the train step? Images/s of each, same batch.

  python experiments/benchmarks/pipeline_throughput.py [--batch 64] [--workers 0,1,2]
      [--images 512] [--data-dir DIR] [--config experiments/image_text_small.py]

Synthesises a photo-like dataset (smooth multi-scale noise, 640x480 and 500x375
JPEGs at quality 90, ~90-140 KB: decoding costs what a COCO image costs),
prepares it with `mmjax.data.prepare`, then measures in one run:

  prepare     images/s of `prepare("jsonl", ...)` (validate, store, write array_record)
  reference   one image through RecordBatch's steps in this process, one thread:
              record read, JPEG decode, random-resized crop + bicubic resize
  pipeline    `pipeline.train_batches` at --image-size with 0, 1, 2 grain workers:
              start-up (first batch) apart, then images/s over --batches batches
  step        the compiled train step of the config at the same size and batch
  overlapped  the step fed by the 2-worker pipeline, as `mmjax.train` runs it:
              both share this machine's cores, so this is the rate a run gets

and prints the ratio pipeline images/s (2 workers) / step images/s: above 1 the
step is the bottleneck, below 1 the input pipeline is. Ratios, not absolute
rates, are what to compare across machines; run it on an otherwise idle one.
"""

import argparse
import concurrent.futures
import importlib.util
import io
import json
import os
import random
import resource
import tempfile
import time

import numpy as np
from PIL import Image

SIZES = ((640, 480), (500, 375), (480, 640), (375, 500))  # COCO-like shapes
COLOURS = ("red", "green", "blue", "yellow", "black", "white", "brown", "grey", "orange")
THINGS = ("dog", "cat", "man", "woman", "bus", "train", "car", "horse", "pizza", "plate",
          "bench", "kite", "table", "boat", "clock", "bird", "street", "field", "kitchen")
PLACES = ("on a street", "in a field", "next to a building", "on a table", "near the water",
          "in a kitchen", "under a tree", "at night", "in the snow", "by the road")


def synth_jpeg(seed: int, width: int, height: int, quality: int = 90) -> bytes:
  """A photo-like JPEG: smooth colour fields with detail at several scales and grain."""
  rng = np.random.default_rng(seed)
  pixels = np.empty((height, width, 3), np.float32)
  for c, base in enumerate(rng.uniform(40, 215, 3)):
    channel = np.full((height, width), base, np.float32)
    # Coarse shapes to fine texture: a JPEG's size and decode cost come from
    # the high frequencies, so a smooth gradient alone would be far too cheap.
    for cells, amp in ((160, 80), (40, 40), (10, 30), (3, 35)):
      grid = rng.uniform(-amp, amp, (max(2, height // cells), max(2, width // cells)))
      channel += np.asarray(Image.fromarray(grid.astype(np.float32)).resize(
          (width, height), Image.Resampling.BICUBIC))
    pixels[..., c] = channel
  pixels += rng.normal(0, 10, pixels.shape).astype(np.float32)
  out = io.BytesIO()
  Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=quality)
  return out.getvalue()


def captions(seed: int, n: int = 5) -> list[str]:
  r = random.Random(seed)
  return [f"a {r.choice(COLOURS)} {r.choice(THINGS)} {r.choice(PLACES)} with a "
          f"{r.choice(COLOURS)} {r.choice(THINGS)}" for _ in range(n)]


def synthesise(root: str, n: int) -> tuple[str, str, dict]:
  """Writes n JPEGs + captions.jsonl under root; returns (source, images dir, stats).

  The images are a function of their index alone, so a root already holding n
  of them (--data-dir given twice) is kept as it is.
  """
  images = os.path.join(root, "images")
  source = os.path.join(root, "captions.jsonl")
  if os.path.exists(source):
    with open(source) as f:
      if sum(1 for _ in f) == n:
        sizes = [os.path.getsize(os.path.join(images, name)) for name in os.listdir(images)]
        return source, images, {"synth_s": 0.0, "jpeg_kb_mean": float(np.mean(sizes)) / 1e3}
  os.makedirs(images, exist_ok=True)

  def write(i):
    data = synth_jpeg(i, *SIZES[i % len(SIZES)])
    with open(os.path.join(images, f"{i:06d}.jpg"), "wb") as f:
      f.write(data)
    return len(data)

  start = time.perf_counter()
  # PIL resizes and encodes without the GIL; numpy's noise holds it.
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    sizes = list(pool.map(write, range(n)))
  with open(source, "w") as f:
    for i in range(n):
      f.write(json.dumps({"image": f"{i:06d}.jpg", "captions": captions(i)}) + "\n")
  return source, images, {"synth_s": time.perf_counter() - start,
                          "jpeg_kb_mean": float(np.mean(sizes)) / 1e3}


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("exp", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def reference_per_image(config, tok, n: int) -> dict:
  """Milliseconds per image of each stage of RecordBatch.example, one thread."""
  from mmjax.data import pipeline, preprocess

  maker = pipeline.RecordBatch(config, tok, rows=None)
  source = maker.source
  n = min(n, len(source))
  rng = np.random.default_rng(0)
  size, scale = config.data.image_size, tuple(config.data.crop_scale)

  def ms(fn, items):
    start = time.perf_counter()
    out = [fn(x) for x in items]
    return (time.perf_counter() - start) / len(items) * 1e3, out

  order_ms, indices = ms(lambda i: int(maker._order[i]), range(n))
  read_ms, records = ms(lambda i: source[i], indices)
  data = [r["image"] for r in records]
  decode_ms, decoded = ms(preprocess.decode_rgb, data)
  boxes = [preprocess.random_resized_crop_box(*im.size, rng, scale=scale) for im in decoded]
  resize_ms, _ = ms(lambda ib: np.asarray(ib[0].resize(
      (size, size), Image.Resampling.BICUBIC, box=ib[1]), np.uint8), list(zip(decoded, boxes)))
  train_ms, _ = ms(lambda d: preprocess.train_image(d, size, rng, scale=scale), data)

  # What a reduced-scale JPEG decode (PIL's draft: libjpeg's DCT scaling, the
  # trick prepare already uses for oversized images) would cost: the crop is
  # then taken from a 1/2 (or 1/4, 1/8) scale image still at least `size` wide.
  def draft_train_image(d):
    with Image.open(io.BytesIO(d)) as image:
      w, h = image.size
      box = preprocess.random_resized_crop_box(w, h, rng, scale=scale)
      bw, bh = box[2] - box[0], box[3] - box[1]
      image.draft("RGB", (max(1, round(w * size / bw)), max(1, round(h * size / bh))))
      fx, fy = image.size[0] / w, image.size[1] / h
      image = image.convert("RGB")
      return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, box=(
          box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)), np.uint8)

  draft_ms, _ = ms(draft_train_image, data)
  texts = [r["captions"][0] for r in records]
  start = time.perf_counter()
  tok.encode(texts, config.data.context_length)
  tokenize_ms = (time.perf_counter() - start) / len(texts) * 1e3
  return {"order_lookup_ms": order_ms, "record_read_ms": read_ms, "decode_ms": decode_ms,
          "crop_resize_ms": resize_ms, "train_image_ms": train_ms,
          "draft_train_image_ms": draft_ms,
          "tokenize_ms": tokenize_ms,
          "example_ms": order_ms + read_ms + train_ms + tokenize_ms}


def pipeline_rate(config, tok, workers: int, warmup: int, batches: int) -> dict:
  """Seconds to the first batch (worker start-up), then images/s over `batches`
  batches taken after `warmup` batches (the first included)."""
  from mmjax.data import pipeline

  with config.unlocked():
    config.data.num_workers = workers
  start = time.perf_counter()
  it = pipeline.train_batches(config, tok, 0)
  try:
    next(it)
    startup = time.perf_counter() - start
    for _ in range(warmup - 1):
      next(it)
    start = time.perf_counter()
    for _ in range(batches):
      batch = next(it)
    secs = time.perf_counter() - start
  finally:
    if hasattr(it, "close"):  # stops grain's worker processes
      it.close()
  assert batch["image"].shape == (config.batch_size, config.data.image_size,
                                  config.data.image_size, 3), batch["image"].shape
  return {"startup_s": startup, "images_per_s": batches * config.batch_size / secs}


def train_step(config, tok, reps: int, overlapped_steps: int) -> dict:
  """The train step built as mmjax.train.loop builds it: compile, then steps/s."""
  import jax

  from mmjax.data import pipeline
  from mmjax.parallel import multihost, partitioning
  from mmjax.train import build, perf
  from mmjax.train import state as state_lib

  terms = build.check(config)
  mesh = build.mesh(config)
  model = build.model(config, tok)
  tx, lr = state_lib.optimizer(config)
  shardings = build.state_shardings(config, model, tx, mesh)
  batch_sharding = partitioning.batch_sharding(mesh)
  state = build.init_state(config, model, tx, shardings)
  step = build.train_step(config, model, tx, lr, build.loss_fn(config, terms, mesh), mesh,
                          shardings)
  start = time.perf_counter()
  with partitioning.activate(mesh):
    spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
            for k, v in build.example_batch(config).items()}
    compiled = step.lower(state, spec, {}).compile()
  compile_s = time.perf_counter() - start

  with config.unlocked():
    config.data.num_workers = 0
  it = pipeline.train_batches(config, tok, 0)
  local = next(it)
  if hasattr(it, "close"):
    it.close()
  local.pop("bad_records", None)
  batch = multihost.global_batch(local, batch_sharding, config.batch_size)
  state, metrics = compiled(state, batch, {})  # warm-up
  jax.block_until_ready(metrics)
  times, cpu = [], os.times()
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(reps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch, {})
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  cpu = [b - a for a, b in zip(cpu, os.times())]
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
  step_s = float(np.median(times))
  flops = perf.compiled_flops(compiled) or float("nan")
  # CPU seconds per step in user and kernel mode (all of XLA's threads), and
  # page faults: a large kernel share with many faults is memory being mapped
  # for the step's temporaries, not compute.
  out = {"compile_s": compile_s, "step_s": step_s, "step_s_min": min(times),
         "step_s_max": max(times), "steps_per_s": 1 / step_s,
         "images_per_s": config.batch_size / step_s,
         "cpu_user_s": cpu[0] / reps, "cpu_sys_s": cpu[1] / reps,
         "page_faults": faults / reps,
         "gflop_per_image": flops / config.batch_size / 1e9,
         "gflop_per_s": flops / step_s / 1e9}

  if overlapped_steps:
    # As the loop runs: next batch from 2 workers, step, read the loss. The
    # workers' first batches are taken before the clock starts.
    with config.unlocked():
      config.data.num_workers = 2
    it = pipeline.train_batches(config, tok, 0)
    try:
      next(it)
      start = time.perf_counter()
      for _ in range(overlapped_steps):
        local = next(it)
        local.pop("bad_records", None)
        state, metrics = compiled(state, multihost.global_batch(
            local, batch_sharding, config.batch_size), {})
        float(metrics["train/loss"])
      secs = time.perf_counter() - start
    finally:
      if hasattr(it, "close"):
        it.close()
    out["overlapped_images_per_s"] = overlapped_steps * config.batch_size / secs
  return out


def load_average() -> list[float]:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return []


def run(args, root: str) -> None:
  workers = [int(w) for w in args.workers.split(",")]
  load_before = load_average()

  from absl import logging
  import tensorflow_datasets as tfds

  from mmjax.data import prepare
  from mmjax.train import build

  logging.set_verbosity(logging.ERROR)
  tfds.display_progress_bar(False)
  source, images, synth = synthesise(os.path.join(root, "source"), args.images)
  start = time.perf_counter()
  result = prepare.prepare("jsonl", source, images, root, name="synthetic",
                           progress=False, log=lambda _: None)
  prepare_s = time.perf_counter() - start
  n_prepared = sum(result.report["examples"].values())
  print(f"synthesised {args.images} JPEGs ({synth['jpeg_kb_mean']:.0f} KB mean, "
        f"{'/'.join(f'{w}x{h}' for w, h in SIZES)}) in {synth['synth_s']:.1f} s")
  print(f"prepare: {n_prepared} images in {prepare_s:.1f} s = "
        f"{n_prepared / prepare_s:.0f} images/s" + (" (reused)" if result.reused else ""))

  config = load_config(args.config)
  with config.unlocked():
    config.data.name = "synthetic"
    config.data.data_dir = root
    config.data.image_size = args.image_size
    config.batch_size = args.batch
  start = time.perf_counter()
  tok = build.tokenizer(config, os.path.join(root, "work"))
  tokenizer_s = time.perf_counter() - start

  ref = reference_per_image(config, tok, args.reference_images)
  print(f"\nper image, main process, one thread ({args.image_size} px):")
  print(f"  shuffle lookup {ref['order_lookup_ms']:.2f} ms, record read "
        f"{ref['record_read_ms']:.2f} ms, decode {ref['decode_ms']:.2f} ms, crop+resize "
        f"{ref['crop_resize_ms']:.2f} ms, tokenize {ref['tokenize_ms']:.3f} ms; "
        f"train_image (decode + crop) {ref['train_image_ms']:.2f} ms")
  print(f"  all of RecordBatch's work: {ref['example_ms']:.2f} ms -> "
        f"{1e3 / ref['example_ms']:.0f} images/s/core")
  print(f"  train_image with a reduced-scale JPEG decode (draft): "
        f"{ref['draft_train_image_ms']:.2f} ms "
        f"({ref['train_image_ms'] / ref['draft_train_image_ms']:.2f}x faster)")

  rates = {}
  for w in workers:
    rates[w] = pipeline_rate(config, tok, w, args.warmup, args.batches)
  step = train_step(config, tok, args.step_reps, args.overlapped_steps)

  print(f"\n{'':28s}{'images/s':>10s}{'start-up s':>12s}")
  for w, r in rates.items():
    print(f"{f'pipeline, {w} workers':28s}{r['images_per_s']:10.0f}{r['startup_s']:12.1f}")
  print(f"{'train step':28s}{step['images_per_s']:10.1f}{step['compile_s']:12.1f}"
        f"  (compile s; {step['step_s']:.2f} s/step, {step['steps_per_s']:.3f} steps/s, "
        f"{step['gflop_per_s']:.0f} GFLOP/s, CPU s/step user {step['cpu_user_s']:.1f} "
        f"sys {step['cpu_sys_s']:.1f}, {step['page_faults'] / 1e6:.2f} M page faults)")
  if "overlapped_images_per_s" in step:
    print(f"{'step fed by 2 workers':28s}{step['overlapped_images_per_s']:10.1f}")
  out = {"batch": args.batch, "image_size": args.image_size, "images": args.images,
         "jpeg_kb_mean": synth["jpeg_kb_mean"], "synth_s": synth["synth_s"],
         "prepare_s": prepare_s, "prepare_images_per_s": n_prepared / prepare_s,
         "prepare_reused": result.reused, "tokenizer_s": tokenizer_s, **ref,
         **{f"pipeline_{w}w_{k}": v for w, r in rates.items() for k, v in r.items()},
         **{f"step_{k}": v for k, v in step.items()}}
  if 2 in rates:
    ratio = rates[2]["images_per_s"] / step["images_per_s"]
    bottleneck = "train step" if ratio > 1 else "input pipeline"
    print(f"\npipeline (2 workers) / step images/s: {ratio:.2f} -> the {bottleneck} is "
          "the bottleneck")
    # The step's FLOPs per image times the pipeline's images/s: a device that
    # runs this step faster than that (at its achieved FLOP/s) outruns 2 workers.
    crossover = rates[2]["images_per_s"] * step["gflop_per_image"] / 1e3
    print(f"the 2-worker pipeline keeps up with a device running this step at up to "
          f"{crossover:.1f} TFLOP/s achieved ({step['gflop_per_image']:.1f} GFLOP/image)")
    out.update(ratio_pipeline2_over_step=ratio, bottleneck=bottleneck,
               crossover_device_tflop_per_s=crossover)
  out.update(cpu_count=os.cpu_count(), load_avg_before=load_before,
             load_avg_after=load_average())
  print(f"load average before {load_before}, after {out['load_avg_after']} "
        f"on {os.cpu_count()} CPUs")
  print(json.dumps(out))



def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="experiments/image_text_small.py")
  parser.add_argument("--data-dir", default=None,
                      help="where to synthesise and prepare (default: a temp dir); "
                           "a dataset already prepared there is reused")
  parser.add_argument("--images", type=int, default=512, help="images to synthesise")
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--workers", default="0,1,2", help="grain worker counts to time")
  parser.add_argument("--warmup", type=int, default=2,
                      help="batches taken before timing (>= 1; the first times start-up)")
  parser.add_argument("--batches", type=int, default=8, help="batches timed per worker count")
  parser.add_argument("--step-reps", type=int, default=2,
                      help="timed train steps after one warm-up step")
  parser.add_argument("--overlapped-steps", type=int, default=2,
                      help="steps fed by the 2-worker pipeline (0: skip)")
  parser.add_argument("--reference-images", type=int, default=64)
  args = parser.parse_args()
  if args.data_dir:
    run(args, args.data_dir)
  else:
    with tempfile.TemporaryDirectory(prefix="pipeline_throughput_") as root:
      run(args, root)


if __name__ == "__main__":
  main()
