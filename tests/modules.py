"""Importing a Python file that is not in a package (experiments, reference generators)."""

import importlib.util
import os


def from_file(path: str):
  """The module executed from `path` (named by its file name)."""
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
