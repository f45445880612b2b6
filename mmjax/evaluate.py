"""Entry point: python -m mmjax.evaluate --config experiments/NAME.py --workdir DIR.

Evaluates the latest checkpoint in DIR on the test split, prints the retrieval
table and writes DIR/eval.json (the metrics plus the checkpoint's step).
"""

import os

from absl import app, flags

from mmjax import cli, configs

_CONFIG = cli.define_config(
    configs.DEFAULT_EXPERIMENT, "The experiment config the run was trained with.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "The run's directory.")


def evaluate_workdir(config, workdir: str) -> dict:
  """Restores the latest checkpoint of `workdir` and returns its metrics + step."""
  from mmjax.data import pipeline
  from mmjax.eval import evaluator
  from mmjax.train import build, checkpoint, metrics
  from mmjax.train import state as state_lib

  build.check(config)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"no checkpoints in {ckpt_dir}; train first with "
                            f"python -m mmjax.train --config ... --workdir {workdir}")
  tok = build.tokenizer(config, workdir)
  model = build.model(config, tok)
  tx, _ = state_lib.optimizer(config)
  # Restored straight into the layout of this run's mesh, whatever mesh trained it.
  shardings = build.state_shardings(config, model, tx, build.mesh(config))
  restored = checkpoint.restore_latest(checkpoint.manager(workdir, read_only=True),
                                      build.abstract_state(config, model, tx, shardings))
  if restored is None:
    raise FileNotFoundError(f"{ckpt_dir} holds no complete checkpoint; train first.")
  state = restored.state
  result = evaluator.evaluate(model, state.params, pipeline.test_data(config, tok),
                              config.eval.batch_size)
  result["step"] = int(state.step)
  metrics.write_json(os.path.join(workdir, "eval.json"), result)
  return result


def main(argv):
  cli.setup(argv)
  from mmjax.parallel import multihost

  multihost.initialize()  # before anything touches a device
  from mmjax.eval import retrieval

  with cli.clean_errors():
    result = evaluate_workdir(_CONFIG.value, _WORKDIR.value)
    print(f"checkpoint step {result['step']} in {_WORKDIR.value}")
    print(retrieval.format_table(result))


if __name__ == "__main__":
  app.run(main)
