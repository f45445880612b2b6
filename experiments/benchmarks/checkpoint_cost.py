"""What a checkpoint costs: blocking time, total save time, size on disk, restore time.

  python experiments/benchmarks/checkpoint_cost.py [--models default vit_b16] [--repeats 3]

For each model, the full TrainState the train loop saves (params, AdamW
moments, step counters) is built on this host's devices and saved with
`mmjax.train.checkpoint` exactly as the loop does (async, into a fresh
directory each time):

  blocking  time until `save` returns and training could continue (the
            arrays are copied off the devices; the write goes on in a thread)
  total     time until the checkpoint is committed on disk
  restore   `restore_latest` into the same shardings, arrays ready

Models: `default` is the default experiment's model (experiments/shapes_siglip.py);
`vit_b16` is ViT-B/16 (224 px, MAP head) + text-B (64 tokens, 32k vocabulary,
width 768), the towers of experiments/coco_siglip.py, in float32. The last line is JSON.
"""

import argparse
import json
import os
import shutil
import tempfile
import time

import jax
import numpy as np

from mmjax import configs, experiment_files
from mmjax.data.tokenizer import Tokenizer
from mmjax.train import build, checkpoint, faults
from mmjax.train import state as state_lib


class _Vocab(Tokenizer):
  """Stands in for a trained tokenizer: the model only needs the sizes."""

  def __init__(self, size):  # pylint: disable=super-init-not-called
    self._size = size

  vocab_size = property(lambda self: self._size)
  pad_id = property(lambda self: 0)


def model_config(name):
  if name == "default":
    return experiment_files.config("shapes_siglip"), 256
  config = configs.base()
  config.data.image_size = 224
  config.data.context_length = 64
  config.model.towers.image = dict(kind="vit", patch_size=16, width=768, depth=12,
                                   num_heads=12, pool="map", stem="patch")
  config.model.towers.text = dict(kind="transformer", width=768, depth=12, num_heads=12,
                                  causal=False, pool="first")
  config.model.embed_dim = 768
  return config, 32000


def du(path):
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(path) for f in files)


def measure(name, repeats, root):
  config, vocab = model_config(name)
  model = build.model(config, _Vocab(vocab))
  tx, _ = state_lib.optimizer(config)
  mesh = build.mesh(config)
  shardings = build.state_shardings(config, model, tx, mesh)
  state = build.init_state(config, model, tx, shardings)
  jax.block_until_ready(state)
  abstract = build.abstract_state(config, model, tx, shardings)
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  rows = []
  for r in range(repeats):
    workdir = os.path.join(root, f"{name}_{r}")
    mngr = checkpoint.manager(workdir, keep=1)
    t0 = time.perf_counter()
    checkpoint.save(mngr, 1, state, {"next_step": 1}, config.to_dict())
    blocking = time.perf_counter() - t0
    checkpoint.wait(mngr)
    total = time.perf_counter() - t0
    size = du(os.path.join(workdir, "checkpoints", "1"))
    t0 = time.perf_counter()
    restored = checkpoint.restore_latest(checkpoint.manager(workdir, read_only=True), abstract)
    jax.block_until_ready(restored.state)
    restore = time.perf_counter() - t0
    rows.append((blocking, total, restore, size))
    shutil.rmtree(workdir)
  blocking, total, restore, size = (float(np.median(c)) for c in zip(*rows))
  return dict(model=name, params=params, state_bytes=faults.state_bytes(abstract),
              disk_bytes=int(size), blocking_s=blocking, total_s=total, restore_s=restore)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=["default", "vit_b16"])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
  flags = parser.parse_args()
  root = flags.dir or tempfile.mkdtemp(prefix="ckpt_cost_")
  results = [measure(m, flags.repeats, root) for m in flags.models]
  print(f"{len(jax.devices())} {jax.devices()[0].platform} device(s); median of "
        f"{flags.repeats} saves into {root}")
  print(f"  {'model':8} {'params':>8} {'state MiB':>10} {'disk MiB':>9} "
        f"{'blocking s':>11} {'total s':>8} {'restore s':>10} {'write MiB/s':>12}")
  for r in results:
    print(f"  {r['model']:8} {r['params'] / 1e6:7.1f}M {r['state_bytes'] / 2**20:10.1f} "
          f"{r['disk_bytes'] / 2**20:9.1f} {r['blocking_s']:11.3f} {r['total_s']:8.3f} "
          f"{r['restore_s']:10.3f} {r['disk_bytes'] / 2**20 / r['total_s']:12.0f}")
  print(json.dumps(results))


if __name__ == "__main__":
  main()
