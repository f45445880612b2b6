"""Which collective the TPU compiler emits for a reduce-scatter, by slice and
by the size of the group it runs over.

  python experiments/benchmarks/reduce_scatter.py [--slices v5e:4x4,v5e-256,v5p-128,v6e-256]
  python experiments/benchmarks/reduce_scatter.py --shapes [--slices v5e-256,v6e-256]

Two programs per (slice, k), compiled ahead of time by libtpu as `mmjax.plan`
does, over a mesh (n / k, k) of the slice's n chips, reducing over the k axis:
- `psum_scatter`: an explicit `jax.lax.psum_scatter` of a float32 [128 k, 1024]
  array inside `shard_map`: each chip ends with its [128, 1024] slice;
- `fsdp_grad`: the weight gradient of one dense layer with fsdp over k (x
  [4 n, 16, 128 k] split on the batch over both axes, W [128 k, 1024] split on
  its rows over k): dW = x^T dy is a partial sum on every chip, reduced and
  split to W's layout.

For each it prints the collectives of the optimised HLO as `mmjax.plan`
reads them (kind, mesh axes, count, bytes). A plan counts what the compiler
emitted, so this tells whether a whole-matrix all-reduce in a plan comes from
mmjax's shardings or from how the compiler lowers the reduction.

`--shapes` keeps the group at 64 chips (a quarter of a 256-chip slice, where
the compiler does keep reduce-scatters) and varies the weight's shape instead:
rows per chip (the fsdp shard of the model width: So400m's 1152 is 18 rows
per chip over 64, 9 over 128, 36 over 32, 72 over 16) by columns (1152 and
4304 are So400m's width and MLP width), in float32 and bfloat16. It prints
which of the two the compiler chose for each.
"""

import argparse

import numpy as np

from mmjax.plan import hlo, topology

ROWS, COLS = 128, 1024


def collectives(text: str, k: int, n: int) -> str:
  """The collectives of an HLO text as the plan reads them (`hlo.collectives`:
  a TPU all-reduce-scatter fusion counts as one reduce-scatter)."""
  found, _ = hlo.collectives(text, (n // k, k), ("data", "fsdp"))
  return "; ".join(f"{c.kind} over {'+'.join(c.axes)} ({c.count}x, {c.bytes / 2**20:g} MiB)"
                   for c in found)


def programs(devices, k: int, rows: int = ROWS, cols: int = COLS, dtype: str = "float32"):
  """{name: compiled HLO text} of the two programs over a (n / k, k) mesh."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top

  n = len(devices)
  mesh = Mesh(np.array(devices).reshape(n // k, k), ("data", "fsdp"))
  scatter = jax.jit(jax.shard_map(
      lambda g: jax.lax.psum_scatter(g, "fsdp", scatter_dimension=0, tiled=True),
      mesh=mesh, in_specs=P(), out_specs=P("fsdp")))

  def loss(w, x):
    return jnp.mean(jnp.square(jnp.einsum("btw,wv->btv", x, w).astype(jnp.float32)))

  by_row, batch = NamedSharding(mesh, P("fsdp")), NamedSharding(mesh, P(("data", "fsdp")))
  grad = jax.jit(jax.grad(loss), in_shardings=(by_row, batch), out_shardings=by_row)
  w = jax.ShapeDtypeStruct((rows * k, cols), dtype)
  x = jax.ShapeDtypeStruct((4 * n, 16, rows * k), dtype)
  return {"psum_scatter": scatter.lower(w).compile().as_text(),
          "fsdp_grad": grad.lower(w, x).compile().as_text()}


def by_shape(names, k: int = 64, rows=(9, 16, 18, 24, 36, 72), cols=(1024, 1152, 4096, 4304)):
  """The --shapes table: reduce-scatter (RS) or whole all-reduce (AR) of one
  fsdp weight gradient, by rows per chip and columns, over k chips."""
  print("| slice | dtype | rows per chip | " + " | ".join(f"{c} columns" for c in cols) + " |")
  print("|---|---|---|" + "---|" * len(cols))
  for name in names:
    devices = topology.devices(topology.parse(name))
    for dtype in ("float32", "bfloat16"):
      for r in rows:
        chosen = []
        for c in cols:
          text = programs(devices, k, r, c, dtype)["fsdp_grad"]
          found = collectives(text, k, len(devices))
          chosen.append("RS" if "reduce-scatter" in found else
                        "AR" if "all-reduce over fsdp" in found else found)
        print(f"| {name} | {dtype} | {r} | " + " | ".join(chosen) + " |", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--slices", default=None)
  parser.add_argument("--shapes", action="store_true",
                      help="vary the weight's shape over 64 chips instead of the group size")
  args = parser.parse_args()
  if args.shapes:
    by_shape((args.slices or "v5e-256,v6e-256").split(","))
    return
  args.slices = args.slices or "v5e:4x4,v5e-256,v5p-128,v6e-256"
  print("| slice | group k of n chips | program | collectives (count, bytes per chip) |")
  print("|---|---|---|---|")
  for name in args.slices.split(","):
    devices = topology.devices(topology.parse(name))
    n = len(devices)
    for k in sorted({4, 16, n // 4, n // 2, n} & set(range(2, n + 1))):
      for program, text in programs(devices, k).items():
        print(f"| {name} | {k} of {n} | {program} | {collectives(text, k, n)} |", flush=True)


if __name__ == "__main__":
  main()
