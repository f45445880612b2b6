"""Setting up a run: everything the loop needs, built and checked before step one.

`setup(config, workdir)` validates the config, builds the mesh, tokenizer,
model, loss, frozen models (a distillation teacher), optimizer and sharded
state (restored from the workdir's latest checkpoint, or fresh), the
evaluators, and compiles the train step. The loop (loop.py) only runs it.
"""

import dataclasses
import os
from typing import Any

import jax

from mmjax.eval import evaluators as evaluators_lib
from mmjax.parallel import multihost, partitioning
from mmjax.train import build, checkpoint, faults, metrics as metrics_lib, perf
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


def setup(config, workdir: str) -> Run:
  """Builds and checks everything; every config error surfaces before compiling."""
  terms = build.check(config)
  faults.check_workdir(workdir)
  primary = jax.process_index() == 0

  mesh = build.mesh(config)
  tok = build.tokenizer(config, workdir)
  model = build.model(config, tok)
  loss_fn = build.loss_fn(config, terms, mesh)
  # Read and checked before compiling; its params are an input of every step.
  teacher = teacher_lib.load(config, terms, mesh, tok)  # None: no config.distill.teacher
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
  state = _resume(mngr, abstract, config, workdir)
  if state is None:
    state = build.init_state(config, model, tx, shardings)
    state = state.replace(params=warm_start.apply(config, state.params))
  if primary:
    metrics_lib.write_json(os.path.join(workdir, "config.json"), config.to_dict())

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
             primary=primary)


def _resume(mngr, abstract, config, workdir: str):
  """The state of the latest readable checkpoint (None if there is none),
  after checking that this config may continue it."""
  restored = checkpoint.restore_latest(mngr, abstract)
  if restored is None:
    return None
  faults.check_resume_config(restored.config, config, workdir)
  if restored.data.get("next_step", restored.step) != restored.step:
    raise ValueError(f"checkpoint step {restored.step} in {workdir} records data "
                     f"position {restored.data}; it is damaged, move it aside.")
  newer = [s for s in mngr.all_steps() if s > restored.step]
  if newer:  # unreadable ones, skipped with a warning: keep them for inspection
    if jax.process_index() == 0:
      checkpoint.set_aside(mngr, restored.step)
    multihost.sync("set aside unreadable checkpoints")
    mngr.reload()
  print(f"Resuming from the checkpoint at step {restored.step} in {workdir}.", flush=True)
  return restored.state
