"""Caption generation speed: the decoder's key/value cache against recomputing
the whole prefix at every step, greedy and beam search.

  python experiments/benchmarks/generation.py [--config experiments/shapes_coca.py]
      [--batch 64] [--beam 3] [--rounds 5] [--measure-seconds 2]

The model is the config's (random weights: speed does not depend on them),
its params on one device. Every search runs to max_length (min_length =
max_length keeps EOS out), so each call writes exactly batch x max_length
tokens (x beam for beam search, counted as written captions' tokens only).
Each round times every variant in turn, so load on a shared machine hits all
alike; it prints generated tokens per second (median over rounds) and the
cache's speed-up per search. The ratios, not the rates, compare across
machines. The last line is JSON.
"""

import argparse
import importlib.util
import json
import statistics
import time

import jax
import numpy as np

from mmjax.models import generate
from mmjax.train import build
from mmjax.train import state as state_lib


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def rate(fn, tokens: int, budget: float) -> float:
  """Tokens per wall second of fn(), repeated for about `budget` seconds."""
  start, calls = time.perf_counter(), 0
  while True:
    jax.block_until_ready(fn())
    calls += 1
    elapsed = time.perf_counter() - start
    if elapsed >= budget:
      return tokens * calls / elapsed


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="experiments/shapes_coca.py")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--beam", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--measure-seconds", type=float, default=2.0)
  args = parser.parse_args()

  config = load_config(args.config)
  model = build.model(config, vocab_size=config.data.vocab_size, pad_id=0)
  params = build.init_state(config, model, state_lib.optimizer(config)[0]).params
  size = config.data.image_size
  images = np.random.default_rng(0).integers(0, 255, (args.batch, size, size, 3), np.uint8)
  length = config.data.context_length
  variants = {}
  for method in ("greedy", "beam"):
    for cache in (True, False):
      fn = jax.jit(generate.captioner(model, method=method, beam_size=args.beam,
                                      min_length=length, use_cache=cache))
      jax.block_until_ready(fn(params, images))  # compile
      variants[(method, cache)] = fn
  tokens = args.batch * length
  rates = {key: [] for key in variants}
  for _ in range(args.rounds):
    for key, fn in variants.items():
      rates[key].append(rate(lambda fn=fn: fn(params, images), tokens, args.measure_seconds))
  result = {"batch": args.batch, "max_length": length, "beam_size": args.beam,
            "device": jax.devices()[0].device_kind}
  print(f"{'search':<8} {'cache':>12} {'no cache':>12} {'speed-up':>9}   tokens/s, median "
        f"of {args.rounds}, batch {args.batch}, {length} tokens")
  for method in ("greedy", "beam"):
    with_cache = statistics.median(rates[(method, True)])
    without = statistics.median(rates[(method, False)])
    print(f"{method:<8} {with_cache:>12.0f} {without:>12.0f} {with_cache / without:>8.2f}x")
    result[method] = {"cache_tokens_per_s": round(with_cache, 1),
                      "no_cache_tokens_per_s": round(without, 1),
                      "speedup": round(with_cache / without, 3),
                      "speedup_min": round(min(a / b for a, b in zip(
                          rates[(method, True)], rates[(method, False)])), 3),
                      "speedup_max": round(max(a / b for a, b in zip(
                          rates[(method, True)], rates[(method, False)])), 3)}
  print(json.dumps(result))


if __name__ == "__main__":
  main()
