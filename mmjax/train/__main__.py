"""Entry point: python -m mmjax.train --config experiments/NAME.py --workdir DIR.

Trains, evaluates and checkpoints; rerunning on the same DIR resumes from its
latest checkpoint. Any config key can be overridden: --config.optim.lr=3e-4.
With no --config it runs the default experiment (shapes_siglip) into runs/default.
"""

from absl import app, flags

from mmjax import cli, configs

_CONFIG = cli.define_config(
    configs.DEFAULT_EXPERIMENT,
    "Experiment config file (a get_config() in experiments/).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default",
                               "Directory for checkpoints, metrics and plots.")


def main(argv):
  cli.setup(argv)
  from mmjax.parallel import multihost

  multihost.initialize()  # before anything touches a device
  from mmjax.train import loop  # imported after flag parsing: JAX is slow to import

  with cli.clean_errors():
    loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
