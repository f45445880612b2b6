"""Retrieval scoring at scale: time and memory of 20,000 images x 100,000 captions.

  python experiments/benchmarks/retrieval_scale.py [--images 20000] [--captions 100000]
      [--dim 512] [--chunk 1024]

Random unit embeddings (5 captions per image) are ranked in both directions by
`mmjax.eval.retrieval.retrieval_ranks`. Reported:

  time      wall time of each direction (after a warm-up on a small set
            compiles nothing big: one program per gallery shape)
  limit     2 * queries * gallery * D FLOPs at the measured matmul peak of this
            host (`mmjax.train.perf.matmul_flops_per_sec`), i.e. the time if
            scoring ran at matmul speed; fraction = limit / time
  memory    per device, from XLA's buffer assignment of the chunk program:
            the chunk's scores and masks (temporaries) plus the replicated
            gallery and the chunk of queries (arguments); the N x M matrix
            (shown for scale) is never formed

The last line is a JSON object with every number.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.eval import retrieval
from mmjax.train import perf

MIB = 2**20


def embeddings(n, m, dim, seed=0):
  rng = np.random.default_rng(seed)
  img = rng.standard_normal((n, dim), dtype=np.float32)
  t2i = np.repeat(np.arange(n), m // n).astype(np.int32)
  txt = img[t2i] + rng.standard_normal((len(t2i), dim), dtype=np.float32)
  img /= np.linalg.norm(img, axis=1, keepdims=True)
  txt /= np.linalg.norm(txt, axis=1, keepdims=True)
  return img, txt, t2i


def chunk_memory(queries, gallery, chunk):
  """XLA's per-device bytes (arguments, temporaries) of one chunk program."""
  mesh = retrieval._scoring_mesh()  # pylint: disable=protected-access
  rows = NamedSharding(mesh, P("queries"))
  rep = NamedSharding(mesh, P())
  c = -(-min(chunk, queries) // mesh.size) * mesh.size
  args = (jax.ShapeDtypeStruct((c, gallery.shape[1]), jnp.float32, sharding=rows),
          jax.ShapeDtypeStruct((c,), jnp.int32, sharding=rows),
          jax.ShapeDtypeStruct(gallery.shape, jnp.float32, sharding=rep),
          jax.ShapeDtypeStruct((gallery.shape[0],), jnp.int32, sharding=rep))
  stats = retrieval._rank_chunk.lower(*args).compile().memory_analysis()  # pylint: disable=protected-access
  return stats.argument_size_in_bytes, stats.temp_size_in_bytes


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=20000)
  parser.add_argument("--captions", type=int, default=100000)
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--chunk", type=int, default=1024)
  flags = parser.parse_args()
  img, txt, t2i = embeddings(flags.images, flags.captions, flags.dim)
  # Warm-up: compiles nothing the timed run reuses except the matmul kernels.
  small = embeddings(64, 320, flags.dim, seed=1)
  retrieval.retrieval_ranks(*small, chunk_size=flags.chunk)
  peak = perf.matmul_flops_per_sec()

  results = {}
  for name, (queries, gallery, q_labels, g_labels) in {
      "image_to_text": (img, txt, np.arange(len(img), dtype=np.int32), t2i),
      "text_to_image": (txt, img, t2i, np.arange(len(img), dtype=np.int32)),
  }.items():
    t0 = time.perf_counter()
    ranks = retrieval._chunked_ranks(queries, q_labels, gallery, g_labels, flags.chunk)  # pylint: disable=protected-access
    seconds = time.perf_counter() - t0
    flops = 2.0 * len(queries) * len(gallery) * flags.dim
    args, temp = chunk_memory(len(queries), gallery, flags.chunk)
    results[name] = dict(seconds=seconds, flops=flops, limit_seconds=flops / peak,
                         fraction=flops / peak / seconds, arg_bytes=args, temp_bytes=temp,
                         r1=float(np.mean(ranks <= 1)))

  n, m = len(img), len(txt)
  print(f"{n} images x {m} captions, D={flags.dim}, chunk {flags.chunk}, "
        f"{len(jax.local_devices())} {jax.devices()[0].platform} device(s); "
        f"matmul peak {peak / 1e9:.0f} GFLOP/s")
  print(f"  {'direction':14} {'time s':>8} {'limit s':>8} {'fraction':>9} "
        f"{'args MiB':>9} {'temp MiB':>9}")
  for name, r in results.items():
    print(f"  {name:14} {r['seconds']:8.2f} {r['limit_seconds']:8.2f} {r['fraction']:9.2f} "
          f"{r['arg_bytes'] / MIB:9.1f} {r['temp_bytes'] / MIB:9.1f}")
  print(f"  the full {n} x {m} float32 matrix would be {n * m * 4 / MIB:,.0f} MiB")
  print(json.dumps({"images": n, "captions": m, "dim": flags.dim, "chunk": flags.chunk,
                    "peak_flops": peak, **results}))


if __name__ == "__main__":
  main()
