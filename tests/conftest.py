"""Test-wide setup: 8 simulated CPU devices, set before JAX is imported."""

import os

from tests.subprocesses import FAST_COMPILE

# Must happen before the first `import jax` anywhere in the test session: XLA
# reads the flags once, when the CPU backend is created.
os.environ["XLA_FLAGS"] = (
    f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE} --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache per test session, shared by the xdist
# workers and every child process the tests start (they inherit the
# environment): the tiny models compile to the same programs in many tests and
# in every restart of a killed run, and JAX compile time is most of the suite.
# Created by the controlling process (the workers see its variable) and removed
# at the end, so each session starts cold and timings do not depend on history.
if "MMJAX_TEST_JAX_CACHE" not in os.environ:
  import tempfile  # pylint: disable=g-import-not-at-top
  os.environ["MMJAX_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="mmjax-test-jax-cache-")
  _OWN_CACHE = True
else:
  _OWN_CACHE = False
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["MMJAX_TEST_JAX_CACHE"]
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(os.environ["MMJAX_TEST_JAX_CACHE"], ignore_errors=True)


# The longest files (measured with --durations), started first: the xdist
# workers take whole files (--dist loadfile) in collection order, so a long
# file collected last would run alone at the end while the other worker idles.
LONGEST_FIRST = (
    "plan/test_plan_compile.py", "parallel/test_sharded_training.py",
    "parallel/test_multiprocess.py", "train/test_distill.py", "train/test_preemption.py",
    "train/test_loop.py", "hub/test_released_runs.py", "train/test_warm_start.py",
    "models/test_captioning.py", "train/test_matching.py", "models/test_towers.py",
    "train/test_coca.py", "data/test_shapes_evaluators.py", "train/test_image_text.py",
    "train/test_gpu_check.py", "models/test_layers.py", "train/test_restore_policy.py",
    "data/test_shapes_fusion.py", "train/test_gcs.py", "train/test_perf.py",
    "test_fork_example.py", "train/test_audio_text.py",
)


def pytest_collection_modifyitems(config, items):
  del config
  here = os.path.dirname(os.path.abspath(__file__))
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(
      os.path.relpath(str(item.path), here), len(rank)))  # stable: the rest as collected
