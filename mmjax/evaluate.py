"""Entry point: python -m mmjax.evaluate --config experiments/NAME.py --workdir DIR.

Evaluates the latest checkpoint in DIR with every evaluator of the config
(`config.eval.evaluators`, whatever their period), prints one table, writes
DIR/eval.json (the flat metrics plus the checkpoint's step) and the report
plots. `--export FILE.npz` also writes the test split's embeddings;
`--export-captions OUT.json` the generated captions as COCO results JSON, and
OUT.references.json beside it.
"""

import io
import sys

from absl import app, flags

from mmjax import cli, configs

_CONFIG = cli.define_config(
    configs.DEFAULT_EXPERIMENT, "The experiment config the run was trained with.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "The run's directory.")
_EXPORT = flags.DEFINE_string(
    "export", None, "Also write the test split's embeddings to this .npz: image_emb "
    "[N, D], text_emb [M, D], text_to_image [M], image_ids [N], captions [M].")
_EXPORT_CAPTIONS = flags.DEFINE_string(
    "export_captions", None, "Also write the test split's generated captions to this "
    "COCO results JSON ([{\"image_id\": int, \"caption\": str}]) and their references "
    "beside it (OUT.references.json: {image_id: [captions]}); needs a caption decoder.")


def evaluate_workdir(config, workdir: str, export: str | None = None,
                     export_captions: str | None = None) -> dict:
  """Restores the latest checkpoint of `workdir` and returns its metrics + step.

  The config must be the one the run was trained with (compared with the
  checkpoint's as a resume does, so a setting without parameters, such as the
  text tower's causal mask or pooling, cannot silently change the numbers), and
  the tokenizer the one it pinned. Every process evaluates (the encoders are
  sharded); only process 0 writes eval.json, the plots and the export.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mmjax import paths  # pylint: disable=g-import-not-at-top
  from mmjax.eval import evaluators as evaluators_lib  # pylint: disable=g-import-not-at-top
  from mmjax.train import build, checkpoint, faults, metrics, pins  # pylint: disable=g-import-not-at-top
  from mmjax.train import state as state_lib  # pylint: disable=g-import-not-at-top

  build.check(config)
  primary = jax.process_index() == 0
  ckpt_dir = paths.join(workdir, "checkpoints")
  if not paths.isdir(ckpt_dir):
    raise FileNotFoundError(f"no checkpoints in {ckpt_dir}; train first with "
                            f"python -m mmjax.train --config ... --workdir {workdir}")
  tok = build.tokenizer(config, workdir)
  model = build.model(config, tok)
  mesh = build.mesh(config)
  tx, _ = state_lib.optimizer(config, build.freeze_mask(config, model, mesh))
  # Restored straight into the layout of this run's mesh, whatever mesh trained it.
  shardings = build.state_shardings(config, model, tx, mesh)
  restored = checkpoint.restore_latest(checkpoint.manager(workdir, read_only=True),
                                      build.abstract_state(config, model, tx, shardings))
  if restored is None:
    raise FileNotFoundError(f"{ckpt_dir} holds no complete checkpoint; train first.")
  faults.check_eval_config(restored.config, config, workdir)
  pins.check_tokenizer(restored.data, tok, workdir)
  context = evaluators_lib.Context.for_run(config, tok)
  evaluators = evaluators_lib.build_all(config, context, tuple(config.model.towers))
  if export:  # the export needs the (image, text) retrieval embeddings
    evaluators.setdefault("retrieval", evaluators_lib.build_all(
        _only(config, "retrieval", pair=("image", "text")), context,
        tuple(config.model.towers))["retrieval"])
  if export_captions:
    captioner = _captioner(config, context, evaluators)
  result = evaluators_lib.run(evaluators, list(evaluators), model, restored.state.params,
                              config.eval.batch_size)
  result["step"] = restored.step
  if primary:
    metrics.write_json(paths.join(workdir, "eval.json"), result)
  for evaluator in evaluators.values():  # every process: reports may compute sharded
    if hasattr(evaluator, "report"):
      evaluator.report(workdir)
  if export_captions and primary:
    evaluators[captioner].export(export_captions)
  if export and primary:
    test, emb = context.test, evaluators["retrieval"].last
    buf = io.BytesIO()
    np.savez(buf, image_emb=emb["image"], text_emb=emb["text"],
             text_to_image=test["text_to_image"], image_ids=test["image_ids"],
             captions=np.asarray(tok.decode(test["text"])))
    paths.write_bytes(export, buf.getvalue())  # local or gs://, written whole
  return result


def _only(config, kind: str, **kwargs):
  """config with one evaluator, `kind` (its id too), at the end."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.eval.evaluators = {kind: dict(kind=kind, every=-1, **kwargs)}
  return config


def _captioner(config, context, evaluators) -> str:
  """The id of the captioning evaluator whose captions --export-captions
  writes: the config's own (its settings), else a greedy one added here."""
  from mmjax.eval import captioning, evaluators as evaluators_lib  # pylint: disable=g-import-not-at-top
  for eid, evaluator in evaluators.items():
    if isinstance(evaluator, captioning.Captioning):
      return eid
  heads = [name for name, spec in (config.model.get("heads") or {}).items()
           if spec.get("kind") == "caption_decoder"]
  if not heads:
    raise ValueError("--export-captions needs a caption decoder, and this model has none "
                     f"(heads: {sorted(config.model.get('heads') or {})}); train one with "
                     "config.model.heads.caption = dict(kind='caption_decoder', ...) and a "
                     "captioning loss term (see experiments/shapes_coca.py).")
  evaluators["captioning"] = evaluators_lib.build_all(
      _only(config, "captioning", head=heads[0]), context,
      tuple(config.model.towers))["captioning"]
  return "captioning"


def main(argv):
  cli.setup(argv)
  from mmjax.parallel import multihost  # pylint: disable=g-import-not-at-top

  multihost.initialize()  # before anything touches a device

  with cli.clean_errors():
    result = evaluate_workdir(_CONFIG.value, _WORKDIR.value, _EXPORT.value,
                              _EXPORT_CAPTIONS.value)
    print(f"checkpoint step {result['step']} in {_WORKDIR.value}")
    from mmjax.eval import evaluators  # pylint: disable=g-import-not-at-top
    print(evaluators.format_results(result))
    if _EXPORT.value:
      print(f"embeddings written to {_EXPORT.value}")
    if _EXPORT_CAPTIONS.value:
      print(f"captions written to {_EXPORT_CAPTIONS.value} (references beside it)")


def _flag_names(argv):
  """--export-captions (the documented spelling) as absl's --export_captions."""
  return [a.replace("--export-captions", "--export_captions", 1)
          if a.startswith("--export-captions") else a for a in argv]


if __name__ == "__main__":
  app.run(main, argv=_flag_names(sys.argv))
