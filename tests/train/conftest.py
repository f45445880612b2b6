"""A tiny shapes config, so the end-to-end tests compile in seconds."""

import functools
import os

import pytest

from mmjax import configs


def tiny_config(**overrides):
  c = configs.base()
  c.batch_size = 8
  c.total_steps = 6
  c.log_every = 2
  c.eval_every = 3
  c.checkpoint_every = 3
  c.data.image_size = 16
  c.data.context_length = 24
  c.data.prefetch = 1
  c.model.towers.image = dict(kind="vit", patch_size=8, width=16, depth=1, num_heads=2,
                             pool="gap")
  c.model.towers.text = dict(kind="transformer", width=16, depth=1, num_heads=2, causal=True,
                            pool="eos")
  c.model.embed_dim = 8
  c.optim.warmup_steps = 2
  c.eval.num_images = 20
  c.eval.batch_size = 20
  c.eval.reports = False  # plotting costs seconds per run; test_loop turns it on
  return override(c, **overrides)


override = configs.override


@pytest.fixture
def make_config():
  return tiny_config


def tree_bytes(root) -> dict:
  """{path relative to root: bytes} of every file under root, to show that
  something left a directory exactly as it was."""
  out = {}
  for where, _, files in os.walk(root):
    for name in files:
      path = os.path.join(where, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def truncate_arrays(step_dir) -> None:
  """Cuts every array data file of a checkpoint step's state item to half its
  size: the per-process OCDBT databases' and the merged one's (`state/d/`),
  which finalising a save may fill instead."""
  for where, _, files in os.walk(os.path.join(step_dir, "state")):
    if os.path.basename(where) == "d":
      for name in files:
        path = os.path.join(where, name)
        os.truncate(path, os.path.getsize(path) // 2)


@pytest.fixture(scope="module")
def matmul_rate_once():
  """Makes mmjax.train.perf.matmul_flops_per_sec measure once in the module
  and answer every later call with that number. The loop calls it at the start
  of every run (the ceiling of perf/flops_fraction), and each measurement keeps
  the CPU busy for over a second; the machine's matmul rate is the same for
  all the runs of one test module. Request it from the first fixture that runs
  the loop."""
  from mmjax.train import perf  # pylint: disable=g-import-not-at-top
  real = perf.matmul_flops_per_sec
  perf.matmul_flops_per_sec = functools.cache(real)
  yield
  perf.matmul_flops_per_sec = real


# `python -c TRAIN_SMALL_PEAK ARGS...` is `python -m mmjax.train ARGS...` with
# the peak matmul rate it measures at every start (the ceiling of
# perf/flops_fraction: seconds of busy CPU on 2048 x 2048 products) measured on
# a 256 x 256 product instead, for the tests that start many training
# processes and read no perf/ metric.
TRAIN_SMALL_PEAK = """
import functools, runpy
from mmjax.train import perf
perf.matmul_flops_per_sec = functools.partial(perf.matmul_flops_per_sec, n=256, seconds=0.0)
runpy.run_module("mmjax.train", run_name="__main__", alter_sys=True)
"""
