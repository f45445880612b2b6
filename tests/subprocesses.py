"""Shared by the tests that run `python -m mmjax.train` in child processes."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# XLA:CPU's LLVM back end at optimisation level 0, for the test session and
# every process it starts. The tests' models are tiny, so compiling is most of
# the suite's time and running the unoptimised code costs little: this cuts a
# compile-heavy test file by about a quarter. The programs are the same HLO;
# only the machine code is less optimised. Benchmarks and real runs never see it.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def child_env(**extra) -> dict:
  """This environment minus mmjax's launch variables and the device count
  (each launch sets its own), plus `extra` (which may replace PYTHONPATH).
  XLA_FLAGS is FAST_COMPILE plus any flags `extra` gives."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("MMJAX_")}
  flags = f"{FAST_COMPILE} {extra.pop('XLA_FLAGS', '')}".strip()
  env.update(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
  env.update(extra)
  return env


def write_config(directory, name: str, text: str) -> str:
  """Writes a config file (a get_config() module) and returns its path."""
  path = directory / name
  path.write_text(text)
  return str(path)
