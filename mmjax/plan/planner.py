"""Compiles an experiment's train and evaluation steps for a TPU slice or a GPU
node, ahead of time, and reads what the compiler decided: memory per chip,
FLOPs, collectives, replicated parameters, and a step-time estimate.

Everything is the experiment's own: build.mesh / model / loss_fn /
state_shardings / train_step, the same functions `python -m mmjax.train`
calls, over the slice's compile-only devices. Inputs are ShapeDtypeStructs,
so nothing is allocated and no data is read.
"""

from __future__ import annotations

import re
import time

import jax
import numpy as np

from mmjax import configs
from mmjax.data import pipeline
from mmjax.parallel import partitioning
from mmjax.plan import hlo, hlo_flops, topology
from mmjax.train import build, perf
from mmjax.train import state as state_lib


def _shard_bytes(tree) -> int:
  """Bytes per chip of a pytree of ShapeDtypeStructs carrying shardings."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize
  return total


def replicated_params(abstract_params) -> tuple[list[str], int, int]:
  """(paths of replicated weight matrices, bytes of every replicated
  parameter, count of replicated vectors) on a mesh of several chips.

  Vectors (biases, norm scales, whatever their rank) are replicated by design
  and only counted; a replicated matrix or embedding is what grows into an
  out-of-memory error at pod scale, so each is named.
  """
  names, nbytes, vectors = [], 0, 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
    sharding = leaf.sharding
    if sharding is None or not sharding.is_fully_replicated:
      continue
    nbytes += int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    keys = [str(getattr(k, "key", k)) for k in path]
    if len(leaf.shape) >= 2 and keys[-1] not in ("bias", "scale"):
      names.append("/".join(keys))
    else:
      vectors += 1
  return names, nbytes, vectors


def analytic_flops(config, model, batch_size: int) -> tuple[float | None, float | None]:
  """(model FLOPs of one step, the most the hardware runs: with model.remat,
  + one more forward of every block), whole step; None for models the
  analytic count does not cover. With remat the second is an upper bound: the
  compiler recomputes only what the backward pass reads (not, for instance,
  a block's last projection), so XLA's count lands between the two."""
  image_size = config.data.image_size
  model_flops = perf.two_tower_train_flops(model, image_size, config.data.context_length,
                                           batch_size)
  if model_flops is None:
    return None, None
  recompute = perf.remat_recompute_flops(model, image_size, config.data.context_length,
                                         batch_size)
  return model_flops, model_flops + recompute


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  out = dict(argument=m.argument_size_in_bytes, output=m.output_size_in_bytes,
             alias=m.alias_size_in_bytes, temp=m.temp_size_in_bytes,
             code=m.generated_code_size_in_bytes)
  # What the chip holds at the peak: inputs, the temporaries, and outputs
  # that do not reuse a donated input's buffer.
  out["total"] = out["argument"] + out["temp"] + out["output"] - out["alias"]
  return out


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  cost = cost or {}
  return dict(flops=float(cost.get("flops", 0.0)),
              bytes_accessed=float(cost.get("bytes accessed", 0.0)),
              optimal_seconds=float(cost.get("optimal_seconds", float("nan"))))


def collective_seconds(c: hlo.Collective, chip: topology.Chip) -> float:
  """Bandwidth-bound time of one collective kind on a ring of group_size chips,
  at the chip's whole ICI bandwidth (an optimistic estimate)."""
  n = max(c.group_size, 1)
  share = {"all-reduce": 2 * (n - 1) / n, "all-gather": (n - 1) / n,
           "reduce-scatter": (n - 1) / n, "all-to-all": (n - 1) / n,
           "collective-permute": 1.0}[c.kind]
  return share * c.bytes / chip.ici_bytes_per_s


def step_time(flops: float, bytes_accessed: float | None, comms: list[hlo.Collective],
              chip: topology.Chip, optimal_seconds: float) -> dict:
  """Roofline estimates of one step, in seconds.

  compute: FLOPs at the chip's bf16 peak; memory: XLA's bytes accessed at the
  HBM bandwidth (0 when the compiler gives none); communication: every
  collective at the chip's ICI (NVLink) bandwidth.
  `overlapped` assumes communication hides under compute (the lower bound),
  `serial` that none does. `compiler`: XLA's own optimal_seconds when
  positive (for whole training steps it mostly is not), else None.
  """
  compute = flops / chip.peak_flops
  memory = (bytes_accessed or 0.0) / chip.hbm_bytes_per_s
  comm = sum(collective_seconds(c, chip) for c in comms)
  return dict(compute=compute, memory=memory, communication=comm,
              overlapped=max(compute, memory, comm), serial=max(compute, memory) + comm,
              compiler=optimal_seconds if optimal_seconds > 0 else None)


def _header(config, slice_: topology.Slice, mesh, device_kind: str) -> dict:
  return dict(
      topology=slice_.name, chip=device_kind, chip_name=slice_.chip.name,
      chips=slice_.chips, mesh=dict(zip(mesh.axis_names, map(int, mesh.devices.shape))),
      batch_size=config.batch_size, grad_accum_steps=config.optim.grad_accum_steps,
      remat=bool(config.model.get("remat", False)), dtype=config.dtype,
      loss_impl=config.loss.impl, hbm_bytes_per_chip=slice_.chip.hbm_bytes)


def _out_of_memory(config, slice_, oom: OutOfMemory, mesh, model, abstract,
                   seconds: float) -> dict:
  """The plan of a step the compiler refused for lack of HBM: the verdict,
  the compiler's numbers, and what is known without a compiled program (the
  state and batch bytes from their shardings, the analytic FLOPs)."""
  devices = list(mesh.devices.flat)
  params_bytes, state_bytes = _shard_bytes(abstract.params), _shard_bytes(abstract)
  batch_bytes = _shard_bytes(_batch_spec(config, mesh, config.batch_size))
  arguments = state_bytes + batch_bytes
  # The compiler names the temporaries it needed (or the total, for other OOMs).
  needed = oom.needed or 0
  total = arguments + needed if oom.temporaries else max(needed, arguments)
  model_flops, hw_flops = analytic_flops(config, model, config.batch_size)
  per_chip = (lambda f: None if f is None else f / slice_.chips)
  flops = per_chip(hw_flops)
  names, replicated_bytes, vectors = replicated_params(abstract.params)
  plan = _header(config, slice_, mesh, devices[0].device_kind)
  plan.update(
      fits=False, bytes_per_chip=total, compiler_error=oom.message,
      hbm_available_bytes=oom.available,
      memory=dict(argument=arguments, temp=needed if oom.temporaries else None,
                  output=None, alias=None, code=None, total=total, params=params_bytes,
                  optimizer_state=state_bytes - params_bytes, batch=batch_bytes,
                  largest_buffer=None, largest_buffer_op=None,
                  source="the compiler's out-of-memory message + state and batch shardings"),
      flops_per_chip=flops, xla_flops_per_chip=None, loop_flops_added_per_chip=0.0,
      flops_source="analytic (the compile stopped at out-of-memory)",
      analytic_flops_per_chip=flops, model_flops_per_chip=per_chip(model_flops),
      bytes_accessed_per_chip=None,
      step_seconds=step_time(flops or 0.0, 0.0, [], slice_.chip, float("nan")),
      collectives=[], loop_trip_counts_known=True, replicated_params=names,
      replicated_bytes=replicated_bytes, replicated_vectors=vectors, eval={},
      compile_seconds=seconds)
  return plan


def check(config, slice_: topology.Slice) -> dict:
  """The config against the slice, before any compile; returns the loss terms.
  A mesh that does not cover the slice's chips says which --config.mesh.* would."""
  if (config.get("distill") or {}).get("teacher", ""):
    raise topology.PlanError(
        "config.distill.teacher is set; plans do not include a teacher's forward pass "
        "yet. Plan the student alone with --config.distill.teacher='' (and a loss "
        "without teacher terms), then add the teacher's parameters and forward FLOPs.")
  try:
    return build.check(config, num_devices=slice_.chips, read_data=False)
  except configs.ConfigError as e:
    if "mesh" in str(e) and "devices" in str(e):
      raise topology.PlanError(f"--topology {slice_.name} has {slice_.chips} chips: "
                               f"{e}") from e
    raise


def _batch_spec(config, mesh, batch_size: int) -> dict:
  sharding = partitioning.batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct((batch_size, *shape), dtype, sharding=sharding)
          for k, (shape, dtype) in pipeline.batch_spec(config).items()}


def compile_train(config, devices, terms):
  """(compiled train step, mesh, model, abstract sharded state, seconds to
  compile) of `config` over `devices`; terms: from check()."""
  mesh = build.mesh(config, devices)
  model = build.model(config, vocab_size=config.data.vocab_size, pad_id=0)
  loss = build.loss_fn(config, terms, mesh)
  mask = build.freeze_mask(config, model, mesh)
  tx, lr_schedule = state_lib.optimizer(config, mask)
  shardings = build.state_shardings(config, model, tx, mesh)
  abstract = build.abstract_state(config, model, tx, shardings)
  step = build.train_step(config, model, tx, lr_schedule, loss, mesh, shardings,
                          frozen_mask=mask)
  start = time.perf_counter()
  with partitioning.activate(mesh):
    lowered = step.lower(abstract, _batch_spec(config, mesh, config.batch_size), {})
  compiled = compile_or_oom(lowered, devices)
  return compiled, mesh, model, abstract, time.perf_counter() - start


class OutOfMemory:
  """The TPU compiler's refusal: a program that needs more HBM than the chip
  has does not compile. `message` is the compiler's; `needed` and `available`
  are the bytes it names (None when it names none)."""

  def __init__(self, message: str):
    self.message = message
    sizes = [_bytes(v, u) for v, u in _SIZE.findall(message)]
    self.needed = sizes[0] if len(sizes) >= 2 else None
    self.available = sizes[1] if len(sizes) >= 2 else None
    self.temporaries = "temporaries" in message


_SIZE = re.compile(r"\((\d+(?:\.\d+)?)([KMGT])\)")


def _bytes(value: str, unit: str) -> int:
  return int(float(value) * 1024 ** "KMGT".index(unit) * 1024)


def _compiler_options(devices) -> dict:
  """XLA:GPU without a GPU cannot autotune Triton's matmul tiles, and for large
  matmuls (B/16 at 4,096 rows per GPU) finds none that fit; cuBLAS takes them."""
  if devices and devices[0].platform in ("cuda", "gpu"):
    return {"xla_gpu_enable_triton_gemm": False}
  return {}


def compile_or_oom(lowered, devices=None):
  """lowered.compile(), or OutOfMemory when the compiler says it cannot fit."""
  try:
    return lowered.compile(compiler_options=_compiler_options(devices) or None)
  except Exception as e:  # jax's JaxRuntimeError carries the compiler's status
    if "RESOURCE_EXHAUSTED" in str(e) and "memory" in str(e).lower():
      return OutOfMemory(str(e).split("\n")[0])
    raise


def compile_eval(config, model, abstract_params, mesh) -> dict:
  """{modality: compiled encode} at config.eval.batch_size, laid out as
  evaluation runs it: params as training shards them, inputs and embeddings
  replicated."""
  out = {}
  repl = partitioning.replicated(mesh)
  spec = pipeline.batch_spec(config)
  for modality in config.model.towers:
    field = config.model.towers[modality].get("input", modality)
    shape, dtype = spec[field]
    x = jax.ShapeDtypeStruct((config.eval.batch_size, *shape), dtype, sharding=repl)

    def encode(params, x, modality=modality):
      return model.apply({"params": params}, x, modality, method=model.encode)

    with partitioning.activate(mesh):
      lowered = jax.jit(encode, out_shardings=repl).lower(abstract_params, x)
    out[modality] = compile_or_oom(lowered, list(mesh.devices.flat))
  return out


def make(config, slice_: topology.Slice, devices=None, *, with_eval: bool = True) -> dict:
  """The plan of `config` on `slice_` as a JSON-ready dict (see README, "Plan a pod")."""
  terms = check(config, slice_)
  devices = devices if devices is not None else topology.devices(slice_)
  compiled, mesh, model, abstract, seconds = compile_train(config, devices, terms)
  return analyse(config, slice_, compiled, mesh, model, abstract, seconds,
                 with_eval=with_eval)


def analyse(config, slice_: topology.Slice, compiled, mesh, model, abstract,
            seconds: float, *, with_eval: bool = True) -> dict:
  """The plan from a compiled train step (compile_train's results)."""
  if isinstance(compiled, OutOfMemory):
    return _out_of_memory(config, slice_, compiled, mesh, model, abstract, seconds)
  chip = slice_.chip
  devices = list(mesh.devices.flat)
  memory, cost = _memory(compiled), _cost(compiled)
  text = compiled.as_text()
  comms, trips_known = hlo.collectives(text, tuple(mesh.devices.shape), tuple(mesh.axis_names))
  full, once = hlo_flops.loop_flops(text)
  if cost["flops"] > 0:
    # XLA counts each loop body once; put back the matmuls of the other runs.
    flops = cost["flops"] + (full - once)
    source = "XLA's cost analysis, + the matmuls of loop runs it counts once"
    # Loops' memory traffic is left out the same way; scaled alike (an estimate).
    bytes_accessed = cost["bytes_accessed"] * flops / cost["flops"]
  else:  # XLA:GPU has no cost analysis: count the program's matmuls
    flops, source, bytes_accessed = full, "the matmuls of the optimised HLO", None
  model_flops, hw_flops = analytic_flops(config, model, config.batch_size)
  per_chip = (lambda f: None if f is None else f / slice_.chips)
  names, replicated_bytes, vectors = replicated_params(abstract.params)
  batch = _batch_spec(config, mesh, config.batch_size)
  largest, largest_op = hlo.largest_buffer(text)
  eval_plans = {}
  if with_eval:
    for modality, c in compile_eval(config, model, abstract.params, mesh).items():
      if isinstance(c, OutOfMemory):
        eval_plans[modality] = dict(fits=False, compiler_error=c.message,
                                    bytes_per_chip=c.needed)
        continue
      m, k = _memory(c), _cost(c)
      eval_plans[modality] = dict(bytes_per_chip=m["total"], memory=m,
                                  flops_per_chip=k["flops"],
                                  fits=m["total"] <= chip.hbm_bytes)
  fits = memory["total"] <= chip.hbm_bytes and all(e["fits"] for e in eval_plans.values())
  params_bytes = _shard_bytes(abstract.params)
  state_bytes = _shard_bytes(abstract)
  plan = _header(config, slice_, mesh, devices[0].device_kind)
  plan.update(
      fits=bool(fits), bytes_per_chip=memory["total"],
      memory=dict(memory, params=params_bytes, optimizer_state=state_bytes - params_bytes,
                  batch=_shard_bytes(batch), largest_buffer=largest,
                  largest_buffer_op=largest_op),
      flops_per_chip=flops, xla_flops_per_chip=cost["flops"] or None, flops_source=source,
      loop_flops_added_per_chip=(full - once) if cost["flops"] > 0 else 0.0,
      # What the analytic count is comparable with: both count matmuls only.
      # The rest of XLA's count is elementwise work (norms, activations,
      # softmax, the optimizer), a larger share the narrower the model.
      matmul_flops_per_chip=full,
      analytic_flops_per_chip=per_chip(hw_flops),
      model_flops_per_chip=per_chip(model_flops),
      bytes_accessed_per_chip=bytes_accessed,
      step_seconds=step_time(flops, bytes_accessed, comms, chip,
                             cost["optimal_seconds"]),
      collectives=hlo.to_json(comms), loop_trip_counts_known=trips_known,
      replicated_params=names, replicated_bytes=replicated_bytes,
      replicated_vectors=vectors, eval=eval_plans, compile_seconds=seconds)
  return plan
