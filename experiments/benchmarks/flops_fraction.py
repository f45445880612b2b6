"""Where the default train step's time goes on this machine.

Prints the step's model FLOPs (XLA cost analysis) over its time as a fraction of
a large float32 matmul timed in the same run, then the same fraction for the
kinds of work inside the step, so the gap to 1.0 can be attributed:

  python experiments/benchmarks/flops_fraction.py [--config experiments/shapes_siglip.py]

Ratios, not absolute times, are what to compare across machines.
"""

import argparse
import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np

from mmjax import losses
from mmjax.train import build, perf
from mmjax.train import state as state_lib
from mmjax.train import step as step_lib


def timed(fn, *args, reps=10):
  """Seconds per call of the jitted fn after one warm-up call."""
  out = fn(*args)
  jax.block_until_ready(out)
  start = time.perf_counter()
  for _ in range(reps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / reps


def fraction(fn, args, peak, reps=10):
  compiled = jax.jit(fn).lower(*args).compile()
  secs = timed(compiled, *args, reps=reps)
  return perf.compiled_flops(compiled) / secs / peak, secs


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="experiments/shapes_siglip.py")
  args = parser.parse_args()
  spec = importlib.util.spec_from_file_location("exp", args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()

  peak = perf.matmul_flops_per_sec(seconds=2.0)
  print(f"float32 matmul 2048^3: {peak / 1e9:.0f} GFLOP/s (the reference)")

  import tempfile
  tok = build.tokenizer(config, tempfile.mkdtemp())
  model = build.model(config, tok)
  tx, lr = state_lib.optimizer(config)
  state = build.init_state(config, model, tx)
  rng = np.random.default_rng(0)
  batch = build.example_batch(config)
  batch["image"] = rng.integers(0, 256, batch["image"].shape, dtype=np.uint8)
  batch["text"] = rng.integers(3, tok.vocab_size, batch["text"].shape).astype(np.int32)
  step = jax.jit(step_lib.make_train_step(model, tx, losses.combine(build.check(config)), lr))
  compiled = step.lower(state, batch, {}).compile()
  flops = perf.compiled_flops(compiled)
  secs = timed(lambda s, b: compiled(s, b, {})[1], state, batch)
  print(f"train step: {flops / 1e9:.1f} GFLOP in {secs * 1e3:.0f} ms -> "
        f"flops_fraction {flops / secs / peak:.2f}")

  # The kinds of work inside the step, at the default model's shapes.
  b = config.batch_size
  image = config.model.towers.image
  w = image.width
  t_img = (config.data.image_size // image.patch_size) ** 2
  heads = image.num_heads
  x = jnp.ones((b * t_img, w))
  parts = {
      "dense fwd+bwd (tokens x width @ width x 4width)":
          (lambda x, k: jax.grad(lambda k: jnp.sum(jnp.tanh(x @ k)))(k),
           (x, jnp.ones((w, 4 * w)) / w)),
      f"attention fwd+bwd ({t_img} tokens, {heads} heads)":
          (lambda q: jax.grad(lambda q: jnp.sum(jax.nn.dot_product_attention(q, q, q)))(q),
           (jnp.ones((b, t_img, heads, w // heads)) / w,)),
      "layernorm + gelu fwd+bwd (elementwise)":
          (lambda x: jax.grad(lambda x: jnp.sum(jax.nn.gelu(
              (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-6))))(x),
           (jnp.ones((b * t_img, 4 * w)),)),
  }
  for name, (fn, fn_args) in parts.items():
    frac, secs = fraction(fn, fn_args, peak)
    print(f"  {name}: {secs * 1e3:.1f} ms, flops_fraction {frac:.2f}")


if __name__ == "__main__":
  main()
