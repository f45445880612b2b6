"""Which collective the TPU compiler emits for a reduce-scatter, by slice and
by the size of the group it runs over.

  python experiments/benchmarks/reduce_scatter.py [--slices v5e:4x4,v5e-256,v5p-128,v6e-256]

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


def programs(devices, k: int):
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
    return jnp.mean(jnp.square(jnp.einsum("btw,wv->btv", x, w)))

  rows, batch = NamedSharding(mesh, P("fsdp")), NamedSharding(mesh, P(("data", "fsdp")))
  grad = jax.jit(jax.grad(loss), in_shardings=(rows, batch), out_shardings=rows)
  w = jax.ShapeDtypeStruct((ROWS * k, COLS), jnp.float32)
  x = jax.ShapeDtypeStruct((4 * n, 16, ROWS * k), jnp.float32)
  return {"psum_scatter": scatter.lower(w).compile().as_text(),
          "fsdp_grad": grad.lower(w, x).compile().as_text()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--slices", default="v5e:4x4,v5e-256,v5p-128,v6e-256")
  args = parser.parse_args()
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
