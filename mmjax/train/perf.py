"""Throughput accounting: model FLOPs per step against the machine's matmul rate."""

import time

import jax
import jax.numpy as jnp


# Dense peak FLOP/s per device from the vendors' data sheets: (device_kind
# substring, bfloat16, float32). float32 on NVIDIA is the TF32 tensor-core rate,
# which XLA uses for float32 matmuls by default; TPUs run float32 matmuls as
# several bfloat16 passes, so their bfloat16 peak is the ceiling for both.
# Longest match wins ("H100 PCIe" before "H100").
DEVICE_PEAKS = (
    ("H200", 989e12, 494e12),
    ("H100 PCIe", 756e12, 378e12),
    ("H100", 989e12, 494e12),
    ("A100", 312e12, 156e12),
    ("L4", 121e12, 60e12),
    ("TPU v4", 275e12, 275e12),
    ("TPU v5 lite", 197e12, 197e12),
    ("TPU v5e", 197e12, 197e12),
    ("TPU v5p", 459e12, 459e12),
    ("TPU v5", 459e12, 459e12),
    ("TPU v6 lite", 918e12, 918e12),
    ("TPU v6e", 918e12, 918e12),
)


def peak_flops_per_sec(device, dtype: str = "bfloat16") -> float | None:
  """The device's published dense matmul peak for `dtype`, the denominator of
  MFU; None for CPUs and unknown accelerators (then only `flops_fraction`,
  against a measured matmul rate, is logged)."""
  if device.platform == "cpu":
    return None
  kind = getattr(device, "device_kind", "")
  for name, bf16, f32 in sorted(DEVICE_PEAKS, key=lambda p: -len(p[0])):
    if name.lower() in kind.lower():
      return bf16 if dtype == "bfloat16" else f32
  return None


def compiled_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled function, from XLA's cost analysis.

  For a program partitioned over several devices this is the work of one
  device (XLA analyses the per-device program), the numerator of that
  device's MFU.
  """
  try:
    cost = compiled.cost_analysis()
  except Exception:  # some backends do not implement it
    return None
  if isinstance(cost, (list, tuple)):  # older jax returned one dict per device
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def _transformer_flops(tokens: int, width: int, depth: int, mlp_dim: int | None) -> float:
  """Forward FLOPs (2 per multiply-add) of `depth` pre-LN blocks over one sequence.

  Per token: q, k, v and output projections (4 W^2 MACs) and the MLP (2 W M);
  per pair of tokens: scores and the weighted sum of values (2 W). Masked
  (causal, padded) pairs are counted: they are computed, then masked.
  """
  mlp = mlp_dim or 4 * width
  return 2.0 * depth * (tokens * (4 * width * width + 2 * width * mlp)
                        + 2 * tokens * tokens * width)


def _vit_flops(cfg: dict, image_size: int, channels: int = 3) -> float:
  p, w = cfg.get("patch_size", 16), cfg.get("width", 768)
  mlp = cfg.get("mlp_dim") or 4 * w
  n = (image_size // p) ** 2
  if cfg.get("stem", "patch") == "conv":
    flops, size, c_in = 0.0, image_size, channels
    steps = p.bit_length() - 1
    for i in range(steps):  # the stem's stride-2 3x3 convolutions
      c_out = max(w // 2 ** (steps - i), 16)
      size //= 2
      flops += 2.0 * size * size * 9 * c_in * c_out
      c_in = c_out
    flops += 2.0 * n * c_in * w  # 1x1 embedding
  else:
    flops = 2.0 * n * p * p * channels * w
  pool = cfg.get("pool", "gap")
  tokens = n + (pool == "cls")
  flops += _transformer_flops(tokens, w, cfg.get("depth", 12), mlp)
  if pool == "map":  # one query: its projection, k/v of every token, attention, MLP
    flops += 2.0 * (w * w + 2 * n * w * w + 2 * n * w + w * w + 2 * w * mlp)
  return flops


def _vit_pooled_width(cfg: dict, image_size: int) -> int:
  """Features a ViT hands its projection: width, or every token's with pool="flatten"."""
  w = cfg.get("width", 768)
  if cfg.get("pool", "gap") == "flatten":
    return (image_size // cfg.get("patch_size", 16)) ** 2 * w
  return w


def two_tower_train_flops(model, image_size: int, context_length: int,
                          batch_size: int) -> float | None:
  """Analytic FLOPs of one training step of a ViT + transformer image-text model.

  Matmuls only (embeddings, blocks, pooling head, projections, the B x B
  similarity), forward x 3: the backward pass computes two products per
  forward product (input and weight gradients). Elementwise work (norms,
  activations, softmax, the optimizer) is left out; XLA's cost analysis counts
  it, which is why the two differ by a few percent (mmjax.plan compares this
  count with the compiled program's matmuls). Assumes every tower trains.
  None for image towers other than a ViT, or a text tower whose size the
  model description does not give.
  """
  towers = dict(model.towers)
  if set(towers) != {"image", "text"} or getattr(model, "heads", None):
    return None
  image, text = dict(towers["image"]), dict(towers["text"])
  if image.get("kind") != "vit" or "width" not in text or "depth" not in text:
    return None
  per_example = (_vit_flops(image, image_size)
                 + _transformer_flops(context_length, text["width"], text["depth"],
                                      text.get("mlp_dim"))
                 + 2.0 * (_vit_pooled_width(image, image_size) + text["width"])
                 * model.embed_dim
                 + 2.0 * batch_size * model.embed_dim)  # this example's row of logits
  return 3.0 * per_example * batch_size


def remat_recompute_flops(model, image_size: int, context_length: int,
                          batch_size: int) -> float:
  """FLOPs a step spends recomputing block activations when the towers
  rematerialise (`remat`): one more forward pass of every encoder block.
  0 without remat, or for models two_tower_train_flops does not cover."""
  towers = dict(getattr(model, "towers", {}))
  if set(towers) != {"image", "text"} or getattr(model, "heads", None):
    return 0.0
  image, text = dict(towers["image"]), dict(towers["text"])
  if image.get("kind") != "vit" or "width" not in text or "depth" not in text:
    return 0.0
  flops = 0.0
  if image.get("remat", False):
    w = image.get("width", 768)
    tokens = (image_size // image.get("patch_size", 16)) ** 2
    tokens += image.get("pool", "gap") == "cls"
    flops += _transformer_flops(tokens, w, image.get("depth", 12), image.get("mlp_dim"))
  if text.get("remat", False):
    flops += _transformer_flops(context_length, text["width"], text["depth"],
                                text.get("mlp_dim"))
  return flops * batch_size


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
