"""Step time of the default model on one device vs a mesh of 8 simulated devices.

  python experiments/benchmarks/sharded_step.py

Both runs use the same global batch and the same 2 CPU cores, so the ratio
(8 devices / 1 device) is the overhead of sharding itself: collectives, the
cross-device loss and any resharding. It should be near 1; far above would point
at pathological communication. Each mesh runs in its own process (the simulated
device count is fixed when JAX starts).
"""

import json
import os
import subprocess
import sys

WORKER = r"""
import json, tempfile, time, sys
import jax, numpy as np
from mmjax import configs
from mmjax.parallel import multihost, partitioning
from mmjax.train import build
from mmjax.train import state as state_lib

config = configs.base()
with config.unlocked():
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = map(int, sys.argv[1:4])
terms = build.check(config)
mesh = build.mesh(config)
tok = build.tokenizer(config, tempfile.mkdtemp())
model = build.model(config, tok)
tx, lr = state_lib.optimizer(config)
shardings = build.state_shardings(config, model, tx, mesh)
state = build.init_state(config, model, tx, shardings)
step = build.train_step(config, model, tx, lr, build.loss_fn(config, terms, mesh), mesh, shardings)
rng = np.random.default_rng(0)
ex = build.example_batch(config)
local = {"image": rng.integers(0, 256, ex["image"].shape, dtype=np.uint8),
         "text": rng.integers(3, tok.vocab_size, ex["text"].shape).astype(np.int32)}
batch = multihost.global_batch(local, partitioning.batch_sharding(mesh), config.batch_size)
with partitioning.activate(mesh):
  compiled = step.lower(state, batch, {}).compile()
times = []
for i in range(13):
  t = time.perf_counter()
  state, m = compiled(state, batch, {})
  jax.block_until_ready(m)
  if i >= 3:
    times.append(time.perf_counter() - t)
print(json.dumps({"median_s": float(np.median(times)), "min_s": min(times)}))
"""


def run(devices, mesh):
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  out = subprocess.run([sys.executable, "-c", WORKER, *map(str, mesh)], env=env,
                       capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  single = run(1, (1, 1, 1))
  print(f"1 device:            {single['median_s'] * 1e3:.0f} ms/step (median of 10)")
  result = {"single_ms": single["median_s"] * 1e3}
  for mesh in ((8, 1, 1), (2, 2, 2), (1, 8, 1)):
    r = run(8, mesh)
    ratio = r["median_s"] / single["median_s"]
    print(f"8 devices, mesh {mesh}: {r['median_s'] * 1e3:.0f} ms/step, ratio {ratio:.2f}")
    result[str(mesh)] = ratio
  print(json.dumps(result))


if __name__ == "__main__":
  main()
