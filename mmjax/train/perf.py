"""Throughput accounting: model FLOPs per step against the machine's matmul rate."""

import time

import jax
import jax.numpy as jnp


def compiled_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled function, from XLA's cost analysis."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # some backends do not implement it
    return None
  if isinstance(cost, (list, tuple)):  # older jax returned one dict per device
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def matmul_flops_per_sec(n: int = 2048, seconds: float = 1.0, dtype=jnp.float32) -> float:
  """Measured float32 matmul throughput of device 0: the ceiling for `flops_fraction`.

  Times back-to-back n x n @ n x n products after a warm-up, for about `seconds`.
  """
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  reps, start = 0, time.perf_counter()
  while True:
    out = f(a, a)
    reps += 1
    if reps % 4 == 0:
      out.block_until_ready()
      elapsed = time.perf_counter() - start
      if elapsed >= seconds:
        return 2 * n ** 3 * reps / elapsed


class Profiler:
  """Writes a `jax.profiler` trace of steps [start, start + num_steps) into
  `directory` (open it with TensorBoard's profile plugin or Perfetto).

  start = 0 turns it off. Call `before(step)` and `after(step)` around each
  step; the trace waits for the last profiled step's results, so it holds the
  device work, not just the dispatch.
  """

  def __init__(self, directory: str, start: int, num_steps: int):
    self.directory, self.start, self.stop = directory, start, start + num_steps
    self.active = False

  def before(self, step: int) -> None:
    if self.start > 0 and step == self.start and not self.active:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, step: int, outputs) -> None:
    if self.active and step >= self.stop - 1:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self.active = False
      print(f"Profile of steps {self.start}-{step} written to {self.directory}.",
            flush=True)

  def close(self) -> None:
    if self.active:  # the run ended inside the window
      jax.profiler.stop_trace()
      self.active = False
