"""Shared by the tests that run `python -m mmjax.train` in child processes."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env(**extra) -> dict:
  """This environment minus mmjax's launch variables and the device count
  (each launch sets its own), plus `extra`."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("MMJAX_")}
  env.pop("XLA_FLAGS", None)
  env.update(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", **extra)
  return env


def write_config(directory, name: str, text: str) -> str:
  """Writes a config file (a get_config() module) and returns its path."""
  path = directory / name
  path.write_text(text)
  return str(path)
