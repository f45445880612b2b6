"""Entry point: python -m mmjax.evaluate --config experiments/NAME.py --workdir DIR.

Evaluates the latest checkpoint in DIR with every evaluator of the config
(`config.eval.evaluators`, whatever their period), prints one table, writes
DIR/eval.json (the flat metrics plus the checkpoint's step) and the report
plots. `--export FILE.npz` also writes the test split's embeddings.
"""

import os

from absl import app, flags

from mmjax import cli, configs

_CONFIG = cli.define_config(
    configs.DEFAULT_EXPERIMENT, "The experiment config the run was trained with.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "The run's directory.")
_EXPORT = flags.DEFINE_string(
    "export", None, "Also write the test split's embeddings to this .npz: image_emb "
    "[N, D], text_emb [M, D], text_to_image [M], image_ids [N], captions [M].")


def evaluate_workdir(config, workdir: str, export: str | None = None) -> dict:
  """Restores the latest checkpoint of `workdir` and returns its metrics + step."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mmjax.data import pipeline  # pylint: disable=g-import-not-at-top
  from mmjax.eval import reports, suite  # pylint: disable=g-import-not-at-top
  from mmjax.train import build, checkpoint, metrics  # pylint: disable=g-import-not-at-top
  from mmjax.train import state as state_lib  # pylint: disable=g-import-not-at-top

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
  test = pipeline.test_data(config, tok)
  names = list(suite.enabled(config.eval.evaluators))
  if export and "retrieval" not in names:
    names.append("retrieval")  # the export needs its embeddings
  result, embeddings = suite.run(names, model, restored.state.params, test, tok, config)
  result["step"] = restored.step
  metrics.write_json(os.path.join(workdir, "eval.json"), result)
  captions = tok.decode(test["text"])
  if embeddings:
    reports.write_all(workdir, test, embeddings["image"], embeddings["text"], captions)
  if export:
    np.savez(export, image_emb=embeddings["image"], text_emb=embeddings["text"],
             text_to_image=test["text_to_image"],
             image_ids=test["image_ids"],
             captions=np.asarray(captions))
  return result


def main(argv):
  cli.setup(argv)
  from mmjax.parallel import multihost  # pylint: disable=g-import-not-at-top

  multihost.initialize()  # before anything touches a device

  with cli.clean_errors():
    result = evaluate_workdir(_CONFIG.value, _WORKDIR.value, _EXPORT.value)
    print(f"checkpoint step {result['step']} in {_WORKDIR.value}")
    from mmjax.eval import suite  # pylint: disable=g-import-not-at-top
    print(suite.format_results(result))
    if _EXPORT.value:
      print(f"embeddings written to {_EXPORT.value}")


if __name__ == "__main__":
  app.run(main)
