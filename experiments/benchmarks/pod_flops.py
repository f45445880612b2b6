"""FLOPs per device and the compute/communication budget of ViT-B/16 + text-B
SigLIP at a global batch of 32k, on a TPU v5e-256 pod and on 8x H100.

  python experiments/benchmarks/pod_flops.py

Model FLOPs come from XLA's cost analysis of mmjax's own train step (compiled
for CPU at a small batch and scaled linearly, which holds because every op is
per-example except the B x B loss, added analytically) and are cross-checked
against the analytic transformer count. Hardware figures are the vendors'
published peaks; the table computes what they imply, it measures nothing on
those machines.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.core import FrozenDict

from mmjax import losses
from mmjax.models import multi_tower
from mmjax.train import perf
from mmjax.train import state as state_lib
from mmjax.train import step as step_lib

GLOBAL_BATCH = 32768
IMAGE = dict(kind="vit", patch_size=16, width=768, depth=12, num_heads=12, pool="map")
TEXT = dict(kind="transformer", vocab_size=32000, context_length=64, width=768, depth=12,
            num_heads=12, causal=False, pool="first")
EMBED = 768
# name: (devices, peak bf16 dense FLOP/s per device, interconnect bytes/s per device,
#        one direction)
SYSTEMS = {
    "TPU v5e-256": (256, 197e12, 200e9),   # 1,600 Gbit/s ICI per chip
    "8x H100 SXM": (8, 989e12, 450e9),     # NVLink 4: 900 GB/s both directions
}


def analytic_forward_flops(tower, tokens):
  """2 x MACs of a pre-LN transformer tower for one example (no embeddings)."""
  w, d = tower["width"], tower["depth"]
  per_token = 2 * (4 * w * w + 2 * w * 4 * w) + 2 * 2 * tokens * w  # dense + attention
  return per_token * tokens * d


def main():
  model = multi_tower.MultiTower(
      towers=FrozenDict(image=FrozenDict(IMAGE), text=FrozenDict(TEXT)), embed_dim=EMBED)
  b = 2
  batch = {"image": jnp.zeros((b, 224, 224, 3), jnp.uint8),
           "text": jnp.ones((b, 64), jnp.int32)}
  params = jax.eval_shape(lambda: state_lib.init_params(model, jax.random.key(0), batch))
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  tx = optax.adamw(1e-3)
  state = jax.eval_shape(lambda: state_lib.create(
      state_lib.init_params(model, jax.random.key(0), batch), tx))
  step = step_lib.make_train_step(model, tx, losses.combine({"sigmoid_contrastive": 1.0}),
                                  lambda s: 1e-3)
  compiled = jax.jit(step).lower(state, batch, {}).compile()
  xla_per_example = perf.compiled_flops(compiled) / b
  analytic = 3 * (analytic_forward_flops(IMAGE, 196) + analytic_forward_flops(TEXT, 64))
  # The B x B similarity (forward + two backward matmuls) grows with the batch.
  loss_per_example = 3 * 2 * GLOBAL_BATCH * EMBED
  per_step = (xla_per_example + loss_per_example) * GLOBAL_BATCH
  grad_bytes = 4 * n_params  # float32 gradients / params

  print(f"params: {n_params / 1e6:.1f} M")
  print(f"train FLOPs per example: XLA {xla_per_example / 1e9:.1f} G, analytic "
        f"{analytic / 1e9:.1f} G (transformer blocks only), + loss "
        f"{loss_per_example / 1e9:.2f} G at B = {GLOBAL_BATCH}")
  print(f"FLOPs per step at B = {GLOBAL_BATCH}: {per_step / 1e15:.2f} PFLOP\n")
  header = ("system", "B/device", "TFLOP/device", "step @100% MFU", "grad all-reduce",
            "ring loss comm", "comm / compute")
  print(" | ".join(header))
  rows = []
  for name, (n, peak, link) in SYSTEMS.items():
    per_device = per_step / n
    t_compute = per_device / peak
    # Ring all-reduce (or FSDP reduce-scatter + all-gather): 2 (n - 1) / n of the bytes.
    t_grads = 2 * (n - 1) / n * grad_bytes / link
    # SigLIP ring: n - 1 hops of the local text embeddings, forward and backward.
    b_local = GLOBAL_BATCH // n
    t_ring = 2 * (n - 1) * b_local * EMBED * 4 / link
    row = dict(system=name, batch_per_device=b_local, tflop_per_device=per_device / 1e12,
               step_s_at_full_mfu=t_compute, grad_allreduce_s=t_grads, ring_loss_s=t_ring,
               comm_over_compute=(t_grads + t_ring) / t_compute)
    rows.append(row)
    print(f"{name} | {b_local} | {per_device / 1e12:.1f} | {t_compute * 1e3:.0f} ms | "
          f"{t_grads * 1e3:.1f} ms | {t_ring * 1e3:.1f} ms | {row['comm_over_compute']:.3f}")
  print(json.dumps(dict(params=n_params, flops_per_example_xla=xla_per_example,
                        flops_per_example_analytic=analytic, flops_per_step=per_step,
                        systems=rows)))


if __name__ == "__main__":
  main()
