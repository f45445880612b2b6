"""A released model as an ordinary mmjax workdir, and back.

`write(imported, workdir)` (what `python -m mmjax.import_weights` runs) lays out
what a training run would have left:

  workdir/config.json      a full mmjax config: the model, data.image_size,
                           data.context_length, data.tokenizer, and
                           `released` (family, source, text and image recipes)
  workdir/checkpoints/0/   a TrainState at step 0 holding the released params
                           (and a fresh optimizer state), pinned to the tokenizer
  workdir/tokenizer/       the family's tokenizer (recipe + vocabulary copy)

so that `mmjax.evaluate`, `--config.init.checkpoint=DIR` (fine-tuning, LiT) and
`--config.distill.teacher=DIR` take it like any run, and `mmjax.hub.load(DIR)`
(`read`) gives the model back, also from a run fine-tuned from it.
"""

import json

import jax
import ml_collections
import numpy as np

from mmjax import config_changes, configs, paths
from mmjax.data import released_text
from mmjax.hub import imported as imported_lib

# The config key that marks a released model (and keeps its recipes).
KEY = "released"


def tokenizer_dir(workdir: str) -> str:
  return paths.join(workdir, "tokenizer")


def config_for(imported: imported_lib.Imported, workdir: str) -> ml_collections.ConfigDict:
  """The mmjax config of a run that starts from `imported` (see the module
  docstring); experiments built on it change the data, the loss and the optimizer."""
  c = configs.base()
  towers = {m: dict(spec) for m, spec in imported.model["towers"].items()}
  towers["image"]["pixel_mean"] = tuple(float(v) for v in imported.image["mean"])
  towers["image"]["pixel_std"] = tuple(float(v) for v in imported.image["std"])
  c.model.towers = ml_collections.ConfigDict(towers)
  c.model.embed_dim = int(imported.model["embed_dim"])
  c.model.temperature_init = float(imported.model["temperature_init"])
  c.model.max_temperature = float(imported.model["max_temperature"])
  c.model.bias_init = imported.model.get("bias_init")
  c.loss.name = "softmax_contrastive" if imported.family == "clip" else "sigmoid_contrastive"
  c.data.image_size = int(imported.image_size)
  c.data.context_length = int(imported.text["length"])
  c.data.vocab_size = int(towers["text"]["vocab_size"])
  c.data.tokenizer = paths.resolve(tokenizer_dir(workdir)) if imported.text.get("file") else ""
  c[KEY] = ml_collections.ConfigDict({
      "family": imported.family, "source": imported.source,
      "text": {k: v for k, v in imported.text.items() if k != "file"},
      "image": dict(imported.image)})
  return c


def write(imported: imported_lib.Imported, workdir: str) -> ml_collections.ConfigDict:
  """Writes `imported` as an mmjax workdir (see the module docstring); returns
  its config. Refuses a workdir that already holds checkpoints."""
  from mmjax.train import build, checkpoint, metrics, pins  # pylint: disable=g-import-not-at-top
  from mmjax.train import state as state_lib  # pylint: disable=g-import-not-at-top

  if paths.isdir(paths.join(workdir, "checkpoints")):
    raise FileExistsError(f"{workdir} already holds checkpoints; import into a new "
                          "--workdir (nothing was changed).")
  if not imported.text.get("file"):
    raise FileNotFoundError(
        f"{imported.source} carries no tokenizer, and none was given: pass --tokenizer "
        f"FILE ({released_text.download_hint(imported.text)}) so that the run keeps the "
        "vocabulary its token ids mean.")
  paths.makedirs(workdir)
  tok = released_text.ReleasedTokenizer(imported.text)
  tok.save(tokenizer_dir(workdir))
  config = config_for(imported, workdir)
  tok = build.tokenizer(config, workdir)  # the copy, as every later run reads it
  model = build.model(config, tok)
  mesh = build.mesh(config)
  tx, _ = state_lib.optimizer(config, build.freeze_mask(config, model, mesh))
  shardings = build.state_shardings(config, model, tx, mesh)
  abstract = build.abstract_state(config, model, tx)
  expected = jax.tree.map(lambda a: tuple(a.shape), abstract.params)
  got = jax.tree.map(lambda a: tuple(np.shape(a)), imported.params)
  if expected != got:  # a reader bug: mapping.read checked against the same model
    raise AssertionError(f"imported params do not fit the model of {workdir}/config.json")
  state = jax.jit(lambda p: state_lib.create(p, tx), out_shardings=shardings)(
      jax.tree.map(lambda a: np.asarray(a, np.float32), imported.params))
  mngr = checkpoint.manager(workdir, keep=config.checkpoint.keep, async_save=False)
  checkpoint.save(mngr, 0, state, data={"next_step": 0, "pins": pins.record(tok, None)},
                  config=config.to_dict())
  checkpoint.wait(mngr)
  mngr.close()
  metrics.write_json(paths.join(workdir, "config.json"), config.to_dict())
  return config


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config.json of an mmjax workdir of a released model (imported or
  fine-tuned from one); raises ValueError for a run of another kind."""
  path = paths.join(workdir, "config.json")
  if not paths.isfile(path):
    raise FileNotFoundError(f"{workdir} has no config.json: give the workdir that "
                            "python -m mmjax.import_weights (or a run from it) wrote.")
  config = ml_collections.ConfigDict(config_changes.upgrade(json.loads(paths.read_text(path))))
  if KEY not in config:
    raise ValueError(f"{workdir} is an mmjax run that did not start from a released model "
                     "(its config.json has no 'released' section), so it has no family "
                     "recipe for tokenize / preprocess_image.")
  return config


def read(workdir: str, *, step: int | None = None) -> imported_lib.Imported:
  """The released model in `workdir` (its latest checkpoint, or `step`)."""
  from mmjax.train import warm_start  # pylint: disable=g-import-not-at-top
  config = read_config(workdir)
  params = warm_start.load_params(workdir, step, what="mmjax.hub.load")
  params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
  towers = {m: dict(spec) for m, spec in config.model.towers.to_dict().items()}
  for key in ("pixel_mean", "pixel_std"):  # the image recipe's, for uint8 batches of a run
    towers["image"].pop(key, None)
  model = {"towers": towers, "embed_dim": config.model.embed_dim,
           "temperature_init": float(np.exp(params["log_scale"])),
           "max_temperature": config.model.max_temperature,
           "bias_init": float(params["bias"]) if "bias" in params else None}
  text = dict(config[KEY].text.to_dict(), file=None)
  if config.data.tokenizer:  # the saved copy: its recipe with the file's path
    text = dict(released_text.ReleasedTokenizer.load(config.data.tokenizer).recipe)
  return imported_lib.Imported(
      family=config[KEY].family, model=model, params=params,
      image_size=int(config.data.image_size), text=text,
      image=dict(config[KEY].image.to_dict()), source=workdir)
