"""Distillation from a frozen teacher: another mmjax run, scored on the student's batch.

A teacher is any mmjax run's workdir: its resolved `config.json` says how to
build its model (any size or architecture), its latest checkpoint holds the
params. Set `config.distill.teacher` to it and weight the terms that read the
teacher's outputs in `config.loss.terms`:

  python -m mmjax.train --config experiments/shapes_distill.py --workdir runs/distill \\
      --config.distill.teacher=runs/siglip --config.loss.terms.kl_alignment=1.0

How the teacher flows through a run: `load` reads and checks it before anything
is compiled and places its params on the student's mesh with the same
logical-axis rules (`partitioning.RULES`), so a big teacher is FSDP / tensor
sharded like the student. `build.train_step` takes those params as a third
argument of the jitted step (an input, not a constant folded into the
program); inside, `teacher.outputs(teacher_params, batch)` runs on the same
(micro)batch under `jax.lax.stop_gradient`, and adds

  teacher/z/<m> [B, D_t]   its unit-norm embedding of each modality m it has
  teacher/temperature []   config.distill.temperature

to the outputs the losses read. A term reading `teacher_logits` gets the
teacher's similarities of its pair at that temperature, and its `logits` are
the student's at the same temperature (mmjax/losses/terms.py): one fixed
temperature rather than each model's learned scale, so the KL term matches
the two models' similarity structure and cannot be lowered by moving the
student's scale (which the contrastive loss tunes for itself; under the
sigmoid loss it is not a softmax temperature at all). The teacher params are
not part of the TrainState: no gradient, no optimizer state, absent from the
student's checkpoints (a resumed student reads them again from the teacher's
workdir).
"""

import json
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import sentencepiece as spm

from mmjax import config_changes, losses, paths
from mmjax.data import tokenizer as tokenizer_lib
from mmjax.train import build
from mmjax.train import warm_start

# Loss parameters that read the teacher's embeddings / anything of the teacher.
EMBEDDINGS = ("teacher_zimg", "teacher_ztxt")


class TeacherError(ValueError):
  """A teacher that cannot teach this run; the message names both settings."""


class Teacher(NamedTuple):
  """A loaded teacher.

  workdir: the teacher run's directory; step: its checkpoint's step;
  config: its resolved config; model: its model; params: its params,
  sharded on the student's mesh as `shardings`; temperature: the distillation
  temperature; outputs: `outputs(params, batch) -> {"teacher/z/<m>": ...,
  "teacher/temperature": ...}` (outputs_fn).
  """

  workdir: str
  step: int
  config: ml_collections.ConfigDict
  model: Any
  params: Any
  shardings: Any
  temperature: float
  outputs: Callable[[Any, Mapping[str, jax.Array]], dict]


def outputs_fn(model, temperature: float):
  """Returns the pure `teacher_outputs(teacher_params, batch)` of `model`.

  batch: the student's, holding the input field of every teacher tower.
  Returns {"teacher/z/<m>": [B, D_t] float32 unit norm for each of the
  teacher's modalities, "teacher/temperature": [] float32}, all under
  stop_gradient: nothing differentiates into the teacher, whatever the caller
  does with them.
  """
  def teacher_outputs(teacher_params, batch):
    params = jax.lax.stop_gradient(teacher_params)
    out = model.apply({"params": params}, batch)
    z = {f"teacher/{k}": jax.lax.stop_gradient(v) for k, v in out.items()
         if k.startswith("z/")}
    return {**z, "teacher/temperature": jnp.asarray(temperature, jnp.float32)}

  return teacher_outputs


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run wrote to `workdir/config.json` (local or gs://)."""
  if not paths.isdir(workdir):
    raise FileNotFoundError(
        f"config.distill.teacher={workdir!r} does not exist; set it to the workdir "
        "of a trained mmjax run (e.g. runs/siglip), or '' for no teacher.")
  path = paths.join(workdir, "config.json")
  if not paths.isfile(path):
    raise FileNotFoundError(
        f"config.distill.teacher={workdir!r} has no config.json ({path}): the teacher "
        "must be the workdir of an mmjax run, which writes its resolved config there "
        "(not its checkpoints/ folder or a step folder in it).")
  return ml_collections.ConfigDict(config_changes.upgrade(json.loads(paths.read_text(path))))


def _data(config, key: str):
  defaults = {"tokenizer": "", "name": "shapes"}
  return config.data.get(key, defaults.get(key))


def check_batches(config, teacher_config, workdir: str, tok=None) -> None:
  """Raises TeacherError unless the teacher reads the student's batches as its own.

  The teacher scores the very arrays the student trains on, so the image size,
  the context length and the tokenizer (the meaning of every token id) must be
  the teacher's. A shapes tokenizer is trained deterministically from the
  caption corpus and data.vocab_size (the same settings give the same model
  bytes); a prepared dataset's from its train captions. So equal data.name,
  data.vocab_size and data.tokenizer mean equal tokenizers; and when the
  teacher's workdir keeps a tokenizer of the same file name as `tok`'s, their
  vocabularies are compared too.
  """
  def refuse(key, what, fix):
    raise TeacherError(
        f"teacher {workdir} was trained with data.{key}={_data(teacher_config, key)!r} "
        f"but this run has data.{key}={_data(config, key)!r}; the teacher scores this "
        f"run's batches, so {what} must be the same. {fix}")

  for key in ("image_size", "context_length"):
    if _data(config, key) != _data(teacher_config, key):
      refuse(key, "the image size and the context length",
             f"Set --config.data.{key}={_data(teacher_config, key)!r}, or choose a "
             f"teacher trained with data.{key}={_data(config, key)!r}.")
  keys = ("tokenizer",) if _data(config, "tokenizer") else ("tokenizer", "name",
                                                           "vocab_size")
  for key in keys:
    if _data(config, key) != _data(teacher_config, key):
      refuse(key, "the tokenizer (token ids)",
             f"Set --config.data.{key}={_data(teacher_config, key)!r} (the student then "
             "uses the teacher's tokenizer), or choose a teacher trained with this "
             "run's data settings.")
  ours = str(getattr(tok, "path", ""))
  if ours.endswith(".model"):  # sentencepiece (a given WordPiece is compared by name)
    theirs = paths.join(workdir, "tokenizer", paths.basename(ours))
    if paths.isfile(theirs) and _pieces(theirs) != _pieces(ours):
      raise TeacherError(
          f"teacher {workdir} tokenizes with {theirs}, whose vocabulary differs from "
          f"this run's {ours} although data.name, data.vocab_size and "
          "data.tokenizer agree (trained by another sentencepiece version?); set "
          f"--config.data.tokenizer={theirs} to use the teacher's.")


def _pieces(path: str) -> list[str]:
  sp = spm.SentencePieceProcessor(model_proto=paths.read_bytes(path))
  return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def check_embeddings(config, terms: Mapping[str, losses.Term], teacher_config,
                     workdir: str) -> None:
  """Raises TeacherError when a term compares embeddings across sizes without a map.

  A term whose inputs include teacher_zimg / teacher_ztxt (mse_to_teacher) needs
  model.embed_dim equal to the teacher's, or config.distill.projection_dim set
  to the teacher's (the student then learns `to_teacher`, see MultiTower).
  """
  theirs, ours = teacher_config.model.embed_dim, config.model.embed_dim
  projection = config.distill.get("projection_dim", 0)
  if projection and projection != theirs:
    raise TeacherError(
        f"config.distill.projection_dim={projection} but the teacher {workdir} has "
        f"model.embed_dim={theirs}; the projection maps into the teacher's space: set "
        f"--config.distill.projection_dim={theirs}.")
  users = [t.id for t in terms.values()
           if set(losses.required_inputs(t.fn)) & set(EMBEDDINGS)]
  if users and not projection and theirs != ours:
    raise TeacherError(
        f"loss term(s) {users} compare this run's embeddings with the teacher's, but "
        f"the teacher {workdir} has model.embed_dim={theirs} and this run "
        f"model.embed_dim={ours}; set --config.distill.projection_dim={theirs} to learn "
        f"a linear map into the teacher's space (or --config.model.embed_dim={theirs}).")


def load(config, terms: Mapping[str, losses.Term], mesh: jax.sharding.Mesh,
         tok: tokenizer_lib.Tokenizer, step: int | None = None) -> Teacher | None:
  """Reads, checks and places the teacher of config.distill.teacher (None if "").

  Every check runs before anything is compiled: a teacher is given (not an
  experiment's unset placeholder), the workdir holds config.json
  and a checkpoint, the teacher reads the student's batches (`check_batches`),
  embedding sizes fit the configured terms (`check_embeddings`), and the
  checkpoint's params fit the model its config describes.

  Args:
    config: the student's config; terms: its loss terms (build.check).
    mesh: the student's mesh; the teacher's params are sharded on it by the
      same logical-axis rules.
    tok: the student's tokenizer (the teacher's model uses its vocabulary).
    step: the teacher checkpoint to read (a resumed student's pinned step,
      `pins.teacher_step`); None: the teacher run's latest.
  """
  distill = config.get("distill")
  workdir = distill.get("teacher", "") if distill is not None else ""
  if workdir is None:  # an experiment's placeholder, left unset
    raise ValueError("config.distill.teacher is required by this experiment: set "
                     "--config.distill.teacher to the workdir of the teacher run (e.g. "
                     "runs/siglip), or to '' to train without a teacher.")
  if not workdir:
    return None
  teacher_config = read_config(workdir)
  check_batches(config, teacher_config, workdir, tok)
  check_embeddings(config, terms, teacher_config, workdir)
  try:
    source = warm_start.resolve(workdir, step=step, what="teacher")
  except FileNotFoundError as e:
    if step is not None:
      raise TeacherError(
          f"this run distils from step {step} of the teacher {workdir} (pinned in its "
          f"checkpoints), but that step is gone: {e} Restore that checkpoint of the "
          "teacher, or train the student into a fresh --workdir.") from None
    raise FileNotFoundError(
        f"{e} config.distill.teacher={workdir!r} must be a run that has saved a "
        "checkpoint: train it first (python -m mmjax.train --config ... --workdir "
        f"{workdir}), or point at another run.") from None

  model = build.model(teacher_config, tok)
  abstract, shardings = build.param_layout(config, model, mesh)
  host = warm_start.named_leaves(warm_start.load_params(source.item_dir, what="teacher"))
  target = warm_start.named_leaves(abstract)
  problems = warm_start.misfits(target, host, target)
  if problems:
    raise TeacherError(
        f"teacher: the checkpoint {source.item_dir} does not fit the model that "
        f"{paths.join(workdir, 'config.json')} describes ({len(problems)} params):\n"
        + "\n".join(problems) + "\nIs config.json from the run that wrote checkpoints/?")
  params = jax.tree_util.tree_map_with_path(
      lambda path, sharding: warm_start.place(
          np.asarray(host[warm_start.path_name(path)]), sharding), shardings)

  used = [t.id for t in terms.values()
          if any(p.startswith("teacher_") for p in losses.required_inputs(t.fn))]
  missing = sorted({m for t in terms.values() if t.id in used for m in t.pair}
                   - set(teacher_config.model.towers))
  if missing:
    raise TeacherError(
        f"loss terms {used} compare with the teacher over modalities {missing}, but the "
        f"teacher {workdir} has towers {sorted(teacher_config.model.towers)}; choose a "
        "teacher with those towers, or change the terms' pairs.")
  if jax.process_index() == 0:
    count = sum(int(np.prod(leaf.shape)) for leaf in target.values())
    print(f"teacher: {workdir} step {source.step} ({count:,} params, model.embed_dim="
          f"{teacher_config.model.embed_dim}), temperature {distill.temperature}; read "
          f"by {used or 'no loss term (add one to config.loss.terms)'}", flush=True)
  return Teacher(workdir=workdir, step=source.step, config=teacher_config, model=model,
                 params=params, shardings=shardings, temperature=float(distill.temperature),
                 outputs=outputs_fn(model, float(distill.temperature)))
