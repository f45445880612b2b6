"""Experiment configs of the repository's `experiments/` folder, by name.

Experiments are files rather than a package (they are passed to --config as
paths), so one experiment that builds on another loads it from here:

  config = experiment_files.config("coco_siglip")   # experiments/coco_siglip.py
"""

import importlib.util
import os

FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "experiments")


def config(name: str, *args):
  """get_config(*args) of experiments/<name>.py: a ConfigDict. An unknown
  name raises FileNotFoundError listing the known ones."""
  path = os.path.join(FOLDER, f"{name}.py")
  if not os.path.isdir(FOLDER):
    raise FileNotFoundError(f"no experiments folder at {FOLDER}: experiments are read "
                            "from a source checkout; install mmjax with `pip install -e`.")
  if not os.path.exists(path):
    known = sorted(f[:-3] for f in os.listdir(FOLDER) if f.endswith(".py"))
    raise FileNotFoundError(f"no experiment {name!r} in {FOLDER}; known: {known}")
  spec = importlib.util.spec_from_file_location(f"experiments.{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)
