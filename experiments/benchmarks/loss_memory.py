"""Per-device memory of the contrastive losses and their gradients, by form.

  python experiments/benchmarks/loss_memory.py [--batch 16384] [--dim 512] [--block 2048]

For `jax.value_and_grad` of each loss w.r.t. (zimg, ztxt, scale[, bias]) in
float32, with the batch sharded over the ("data", "fsdp") axes of a mesh of
simulated CPU devices, prints what XLA's buffer assignment says one device
needs: arguments, outputs and temporaries (`temp_size_in_bytes`: the one
preallocated buffer XLA carves every intermediate out of, reusing space by
liveness, so it is the peak of live intermediates). Nothing big is run: every
figure comes from `jax.jit(...).lower(...).compile().memory_analysis()`, which
is per device for an SPMD program (checked on a small case first). On CPU,
`peak_memory_in_bytes` only counted arguments + outputs, so it is not shown.
The figures are XLA:CPU's; a GPU/TPU compile fuses and schedules differently.
Forms:

  naive   the single-device formula on the global batch under jit; XLA's
          partitioner decides the layout of the B x B logits.
  gather  softmax only: all-gather the other tower, B_local x B logits.
  ring    sigmoid only: ppermute ring, one B_local x B_local block at a time.

Table 1: 8 devices, global batch --batch. Table 2: B_local fixed at --block on
2, 4 and 8 devices. Ratios are to one B_local x B_local float32 block. The last
line is a JSON object with every number.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import json

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.losses import contrastive
from mmjax.losses import sharded as sharded_losses
from mmjax.parallel import mesh as mesh_lib

MIB = 2**20
F32 = 4
FORMS = (  # (loss, form, needs bias)
    ("softmax", "naive", False),
    ("softmax", "gather", False),
    ("sigmoid", "naive", True),
    ("sigmoid", "ring", True),
)


def loss_fn(loss, form, mesh):
  """The loss as f(zimg, ztxt, scale[, bias]) over global arrays."""
  if form == "naive":
    return {"softmax": contrastive.softmax_contrastive,
            "sigmoid": contrastive.sigmoid_contrastive}[loss]
  sharded = {"gather": sharded_losses.sharded_softmax_contrastive,
             "ring": sharded_losses.sharded_sigmoid_contrastive}[form]
  return lambda *args: sharded(*args, mesh=mesh, batch_axes=mesh_lib.BATCH_AXES)


def measure(loss, form, with_bias, n, batch, dim):
  """Per-device memory stats (bytes) of value_and_grad, from compilation only."""
  # Auto axes, as in training (jax.make_mesh would default to Explicit).
  mesh = mesh_lib.make_mesh({"data": n, "fsdp": 1, "tensor": 1},
                            devices=jax.devices()[:n])
  rows = NamedSharding(mesh, P(mesh_lib.BATCH_AXES, None))
  rep = NamedSharding(mesh, P())
  args = [jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=rows)] * 2
  args += [jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)] * (2 if with_bias else 1)
  grad = jax.value_and_grad(loss_fn(loss, form, mesh), argnums=tuple(range(len(args))))
  # Gradients laid out like their inputs, so outputs count the same for every form.
  outs = (rep, tuple(a.sharding for a in args))
  stats = jax.jit(grad, out_shardings=outs).lower(*args).compile().memory_analysis()
  return {
      "arg": stats.argument_size_in_bytes,
      "out": stats.output_size_in_bytes,
      "temp": stats.temp_size_in_bytes,
      "alias": stats.alias_size_in_bytes,
  }


def check_per_device():
  """memory_analysis is per device: a sharded [8*256, 256] input counts 1/8."""
  mesh = mesh_lib.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
  x = jax.ShapeDtypeStruct((8 * 256, 256), jnp.float32,
                           sharding=NamedSharding(mesh, P(mesh_lib.BATCH_AXES, None)))
  stats = jax.jit(lambda a: a * 2).lower(x).compile().memory_analysis()
  assert stats.argument_size_in_bytes == 256 * 256 * F32, stats
  assert stats.output_size_in_bytes == 256 * 256 * F32, stats


def mib(b):
  return f"{b / MIB:9.1f}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16384, help="global batch, table 1")
  parser.add_argument("--dim", type=int, default=512, help="embedding width D")
  parser.add_argument("--block", type=int, default=2048, help="B_local, table 2")
  parser.add_argument("--devices", type=int, nargs="+", default=[2, 4, 8])
  flags = parser.parse_args()
  n_max = len(jax.devices())
  if n_max < max(flags.devices):
    raise SystemExit(f"need {max(flags.devices)} devices, have {n_max}; set XLA_FLAGS="
                     f"--xla_force_host_platform_device_count={max(flags.devices)}")
  check_per_device()
  cache = {}

  def get(loss, form, bias, n, batch):
    key = (loss, form, n, batch)
    if key not in cache:
      cache[key] = measure(loss, form, bias, n, batch, flags.dim)
    return cache[key]

  # Table 1: fixed global batch on all 8 devices.
  n, batch = 8, flags.batch
  local = batch // n
  block = local * local * F32
  print(f"Table 1: value_and_grad, float32, B={batch}, D={flags.dim}, {n} devices, "
        f"B_local={local}; MiB per device (XLA memory_analysis)")
  print(f"  ref B_local x B_local f32 = {block / MIB:.1f} MiB;  "
        f"B_local x B f32 = {local * batch * F32 / MIB:.1f} MiB;  "
        f"B x B f32 = {batch * batch * F32 / MIB:.1f} MiB")
  head = (f"  {'loss':8} {'form':7} {'args':>9} {'outs':>9} {'temp':>9} "
          f"{'a+o+t':>9} {'temp/ref':>9} {'temp/(B_l*B)':>13}")
  print(head)
  table1 = []
  for loss, form, bias in FORMS:
    s = get(loss, form, bias, n, batch)
    total = s["arg"] + s["out"] + s["temp"] - s["alias"]
    print(f"  {loss:8} {form:7} {mib(s['arg'])} {mib(s['out'])} {mib(s['temp'])} "
          f"{mib(total)} {s['temp'] / block:9.2f} {s['temp'] / (local * batch * F32):13.2f}")
    table1.append(dict(loss=loss, form=form, devices=n, batch=batch, b_local=local,
                       total=total, temp_over_ref=s["temp"] / block, **s))

  # Table 2: fixed per-device batch, growing device count.
  local = flags.block
  block = local * local * F32
  print()
  print(f"Table 2: B_local={local} fixed, D={flags.dim}; per-device temp MiB "
        f"(ratio to B_local^2 f32 = {block / MIB:.1f} MiB)")
  print(f"  {'loss':8} {'form':7} " + " ".join(f"{f'n={k}':>17}" for k in flags.devices))
  table2 = []
  for loss, form, bias in FORMS:
    cells = []
    for k in flags.devices:
      s = get(loss, form, bias, k, local * k)
      cells.append(f"{mib(s['temp'])} ({s['temp'] / block:5.2f})")
      table2.append(dict(loss=loss, form=form, devices=k, batch=local * k, b_local=local,
                         temp_over_ref=s["temp"] / block, **s))
    print(f"  {loss:8} {form:7} " + " ".join(cells))

  ring = [r for r in table1 + table2 if r["form"] == "ring"]
  accept = all(r["temp_over_ref"] <= 2.0 for r in ring)
  print()
  print(f"ring temp within 2x of B_local^2 f32: {accept}")
  print(json.dumps({"dim": flags.dim, "dtype": "float32", "table1": table1,
                    "table2": table2, "ring_within_2x": accept}))


if __name__ == "__main__":
  main()
