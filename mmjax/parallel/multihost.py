"""Per-process batches: each process materialises only the rows its devices hold.

The global batch of a step is a function of (seed, step) alone. Process p asks
the data pipeline for `process_rows(...)` of it, and `global_batch` stitches
those local rows into one global `jax.Array`, so no process ever builds (or
sends) rows that live on another process's devices.
"""

from typing import Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding


def process_rows(sharding: NamedSharding, batch_size: int) -> np.ndarray:
  """Sorted indices of the global-batch rows held by this process's devices.

  sharding: the batch sharding (leading dimension split); returns int64 [b_local].
  In the order `jax.make_array_from_process_local_data` expects the local rows.
  """
  rows = set()
  for index in sharding.addressable_devices_indices_map((batch_size,)).values():
    rows.update(range(batch_size)[index[0]])
  return np.asarray(sorted(rows), dtype=np.int64)


def global_batch(local: Mapping[str, np.ndarray], sharding: NamedSharding,
                 batch_size: int) -> dict:
  """This process's rows -> global arrays of `batch_size` rows laid out by `sharding`.

  local: {"image": [b_local, ...], "text": [b_local, ...]}, the rows
  `process_rows(sharding, batch_size)` in that order.
  """
  return {k: jax.make_array_from_process_local_data(
              sharding, np.asarray(v), (batch_size,) + np.shape(v)[1:])
          for k, v in local.items()}


def initialize() -> None:
  """Joins the multi-process JAX job this process belongs to, if any.

  Must run before anything touches a device. Three ways in, by environment:
  - MMJAX_COORDINATOR=host:port, MMJAX_NUM_PROCESSES, MMJAX_PROCESS_ID: explicit,
    as `launch/cpu_multiprocess.sh` sets them (CPU collectives via gloo).
  - MMJAX_DISTRIBUTED=auto: `jax.distributed.initialize()` with no arguments,
    which reads the cluster from TPU metadata or Slurm (`launch/tpu_pod.sh`,
    `launch/slurm_gpu.sbatch`).
  - neither: a single process; nothing to do.
  """
  import os
  import sys

  coordinator = os.environ.get("MMJAX_COORDINATOR")
  if coordinator:
    try:
      num = int(os.environ["MMJAX_NUM_PROCESSES"])
      pid = int(os.environ["MMJAX_PROCESS_ID"])
    except (KeyError, ValueError) as e:
      raise ValueError("MMJAX_COORDINATOR is set, so MMJAX_NUM_PROCESSES and "
                       "MMJAX_PROCESS_ID must be integers too (launch/cpu_multiprocess.sh "
                       f"sets all three): {e}") from e
    if not 0 <= pid < num:
      raise ValueError(f"MMJAX_PROCESS_ID={pid} is outside [0, MMJAX_NUM_PROCESSES={num}).")
    timeout = int(os.environ.get("MMJAX_INIT_TIMEOUT", "300"))
    if os.environ.get("JAX_PLATFORMS") == "cpu":  # CPU collectives need gloo
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # If a process never arrives, the coordination service aborts the others
    # from C++ (no Python exception to catch), so say beforehand what a
    # timeout means and what to check.
    print(f"mmjax: process {pid} of {num} joining {coordinator}; waits up to "
          f"{timeout} s (MMJAX_INIT_TIMEOUT) for the others. A DEADLINE_EXCEEDED "
          f"abort means not all {num} processes started with MMJAX_COORDINATOR="
          f"{coordinator} and MMJAX_NUM_PROCESSES={num}.", file=sys.stderr, flush=True)
    jax.distributed.initialize(coordinator, num_processes=num, process_id=pid,
                               initialization_timeout=timeout)
  elif os.environ.get("MMJAX_DISTRIBUTED") == "auto":
    jax.distributed.initialize()
  else:
    return
  expected = os.environ.get("MMJAX_NUM_PROCESSES")
  if expected and jax.process_count() != int(expected):
    raise ValueError(f"joined a job of {jax.process_count()} processes but "
                     f"MMJAX_NUM_PROCESSES={expected}; start that many processes with the "
                     "same MMJAX_COORDINATOR.")


def sync(name: str) -> None:
  """Waits until every process reaches this point (a no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
