"""Setting up a run: everything the loop needs, built and checked before step one.

`setup(config, workdir)` validates the config, builds the mesh, tokenizer,
model, loss, frozen models (a distillation teacher), optimizer and sharded
state (restored from the workdir's latest checkpoint, or fresh), the
evaluators, and compiles the train step. The loop (loop.py) only runs it.
"""

import dataclasses
from typing import Any

import jax
import numpy as np

from mmjax import paths
from mmjax.eval import evaluators as evaluators_lib
from mmjax.parallel import partitioning
from mmjax.train import build, checkpoint, faults, metrics as metrics_lib, perf, pins
from mmjax.train import state as state_lib
from mmjax.train import teacher as teacher_lib
from mmjax.train import warm_start


@dataclasses.dataclass
class Run:
  """One training run, set up.

  state: the TrainState to continue from (step `start`); step: the compiled
  `step(state, batch, frozen_params)`; frozen_params: {name: params} of the
  frozen models; abstract: the state's shapes and shardings (for restores);
  evaluators: {id: evaluator}; context: what they read.
  """

  config: Any
  workdir: str
  mesh: jax.sharding.Mesh
  tokenizer: Any
  model: Any
  state: Any
  start: int
  step: Any
  frozen_params: dict
  abstract: Any
  manager: Any
  batch_sharding: Any
  evaluators: dict
  context: evaluators_lib.Context
  step_flops: float | None
  primary: bool
  pins: dict = dataclasses.field(default_factory=dict)
  damaged_after: int | None = None


def setup(config, workdir: str) -> Run:
  """Builds and checks everything; every config error surfaces before compiling."""
  terms = build.check(config)
  faults.check_workdir(workdir)
  primary = jax.process_index() == 0

  mesh = build.mesh(config)
  tok = build.tokenizer(config, workdir)
  model = build.model(config, tok)
  loss_fn = build.loss_fn(config, terms, mesh)
  # A resumed student reads the teacher step its checkpoints pin, not the latest.
  pinned_teacher = pins.teacher_step(_latest_data(workdir))
  # Read and checked before compiling; its params are an input of every step.
  teacher = teacher_lib.load(config, terms, mesh, tok, step=pinned_teacher)  # None: none
  frozen = {} if teacher is None else {"teacher": (teacher.outputs, teacher.shardings)}
  frozen_params = {} if teacher is None else {"teacher": teacher.params}
  mask = build.freeze_mask(config, model, mesh)
  tx, lr_schedule = state_lib.optimizer(config, mask)
  shardings = build.state_shardings(config, model, tx, mesh)
  batch_sharding = partitioning.batch_sharding(mesh)

  # Restored or created directly in its sharded layout: no device ever holds the
  # whole state unless the rules replicate it.
  abstract = build.abstract_state(config, model, tx, shardings)
  faults.check_free_space(workdir, faults.state_bytes(abstract), config.checkpoint.keep)
  mngr = checkpoint.manager(workdir, keep=config.checkpoint.keep,
                            keep_every=config.checkpoint.keep_every)
  state, damaged_after = _resume(mngr, abstract, config, workdir, tok)
  if state is None:
    state = build.init_state(config, model, tx, shardings)
    state = state.replace(params=warm_start.apply(config, state.params))
  if primary:
    metrics_lib.write_json(paths.join(workdir, "config.json"), config.to_dict())
    pins.keep_tokenizer(workdir, tok)

  train_step = build.train_step(config, model, tx, lr_schedule, loss_fn, mesh, shardings,
                                frozen_mask=mask, frozen_models=frozen)
  with partitioning.activate(mesh):  # the models' sharding constraints apply while tracing
    batch_spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
                  for k, v in build.example_batch(config).items()}
    compiled = train_step.lower(state, batch_spec, frozen_params).compile()
  step_flops = perf.compiled_flops(compiled)
  analytic = perf.two_tower_train_flops(model, config.data.image_size,
                                        config.data.context_length, config.batch_size)
  if primary and step_flops and analytic:
    analytic /= jax.device_count()  # both per device: XLA analyses the partitioned program
    print(f"FLOPs per step per device: {step_flops / 1e9:.2f} G from XLA's cost analysis, "
          f"{analytic / 1e9:.2f} G analytic (matmuls only; ratio "
          f"{step_flops / analytic:.3f}).", flush=True)
  context = evaluators_lib.Context.for_run(config, tok)
  evaluators = evaluators_lib.build_all(config, context, tuple(config.model.towers))
  return Run(config=config, workdir=workdir, mesh=mesh, tokenizer=tok, model=model,
             state=state, start=int(state.step), step=compiled, frozen_params=frozen_params,
             abstract=abstract, manager=mngr, batch_sharding=batch_sharding,
             evaluators=evaluators, context=context, step_flops=step_flops,
             primary=primary, damaged_after=damaged_after,
             pins=pins.record(tok, None if teacher is None else teacher.step))


def _latest_data(workdir: str) -> dict | None:
  """The newest readable checkpoint's data item (None without checkpoints),
  read without creating anything: a config refused later leaves no trace."""
  exists = paths.isdir(paths.join(workdir, "checkpoints"))
  if jax.process_count() > 1:
    # Every process takes process 0's answer. Process 0 creates the directory
    # just after this (checkpoint.manager); a process that looked later would
    # see it, open a read-only manager and enter a different collective.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    exists = bool(multihost_utils.broadcast_one_to_all(np.array(exists)))
  if not exists:
    return None
  return checkpoint.latest_data(checkpoint.manager(workdir, read_only=True))


def _resume(mngr, abstract, config, workdir: str, tok):
  """(state of the latest readable checkpoint, or None if there is none; the
  step after which damaged checkpoints wait to be set aside, or None), after
  checking that this config and tokenizer may continue it."""
  restored = checkpoint.restore_latest(mngr, abstract)
  if restored is None:
    return None, None
  faults.check_resume_config(restored.config, config, workdir)
  pins.check_tokenizer(restored.data, tok, workdir)
  if restored.data.get("next_step", restored.step) != restored.step:
    raise ValueError(f"checkpoint step {restored.step} in {workdir} records data "
                     f"position {restored.data}; it is damaged, move it aside.")
  newer = [s for s in mngr.all_steps() if s > restored.step]
  print(f"Resuming from the checkpoint at step {restored.step} in {workdir}.", flush=True)
  # Damaged newer steps are moved aside by the next save (Checkpointer), not now:
  # a run that fails before saving leaves the checkpoints as it found them.
  return restored.state, (restored.step if newer else None)
