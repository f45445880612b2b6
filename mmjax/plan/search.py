"""Searches over how a config is laid out on a slice, by compiling each choice.

`best` varies mesh.data / fsdp / tensor, model.remat and
optim.grad_accum_steps at the config's global batch and keeps the plan that
fits with the shortest estimated step; `largest_batch` doubles the global
batch until one no longer fits, then narrows the bracket where the bytes per
chip say the limit lies. Every candidate is a real
TPU compile (seconds for small models, minutes for ViT-B and up on a CPU), so
candidates are tried cheapest-to-run first and a mesh stops at its first fit:
more remat or accumulation only slows a step that already fits.
"""

from mmjax import configs
from mmjax.plan import planner, topology


def _with(config, **changes):
  """A copy of `config` with dotted keys changed."""
  return configs.override(config.copy_and_resolve_references(), **changes)


def tensor_misfit(config, tensor: int) -> str | None:
  """Why tensor parallelism of `tensor` cannot split `config`'s model, or None.

  The tensor axis splits attention heads (and MLP hidden units) in every
  tower and head that has them (config.model.towers / heads entries with
  num_heads); one whose heads it does not divide keeps those weights whole on
  every chip, so such a mesh only adds communication (and usually does not fit).
  """
  parts = [(f"{m} tower", spec) for m, spec in config.model.towers.items()]
  parts += [(f"{name} head", spec) for name, spec in config.model.heads.items()]
  for what, spec in parts:
    heads = spec.get("num_heads")
    if heads and heads % tensor:
      return f"the {what}'s {heads} heads do not split {tensor} ways"
  return None


def meshes(chips: int, batch_size: int, max_tensor: int = 8, tensor_ok=lambda t: True):
  """(data, fsdp, tensor) over `chips` that split `batch_size` evenly: pure
  data parallel, full fsdp, and fsdp with tensor parallel of 2..max_tensor
  (those sizes for which tensor_ok(t))."""
  out = []
  for tensor in (t for t in (1, 2, 4, 8)
                 if t <= max_tensor and chips % t == 0 and tensor_ok(t)):
    rest = chips // tensor
    for fsdp in sorted({1, rest}):
      shape = (rest // fsdp, fsdp, tensor)
      if batch_size % (shape[0] * shape[1]) == 0 and shape not in out:
        out.append(shape)
  return out


def _score(plan: dict) -> float:
  return plan["step_seconds"]["serial"]


def best(config, slice_: topology.Slice, devices, log=print, max_accum: int = 8) -> dict:
  """The fastest fitting plan (by the serial step estimate), with every
  compiled candidate listed under "search"; if none fits, the smallest."""
  tried, fitting = [], []
  for t in (2, 4, 8):
    why = tensor_misfit(config, t)
    if why and slice_.chips % t == 0:
      log(f"tensor {t} skipped: {why}", flush=True)
  ok = lambda t: tensor_misfit(config, t) is None
  for shape in meshes(slice_.chips, config.batch_size, tensor_ok=ok):
    choices = [(False, 1)] + [(True, k) for k in (1, 2, 4, 8) if k <= max_accum]
    for remat, accum in choices:
      if config.batch_size % (shape[0] * shape[1] * accum):
        continue
      c = _with(config, **{"mesh.data": shape[0], "mesh.fsdp": shape[1],
                           "mesh.tensor": shape[2], "model.remat": remat,
                           "optim.grad_accum_steps": accum})
      plan = planner.make(c, slice_, devices, with_eval=False)
      row = dict(mesh=list(shape), remat=remat, grad_accum_steps=accum, fits=plan["fits"],
                 bytes_per_chip=plan["bytes_per_chip"], step_seconds=_score(plan))
      tried.append(row)
      log(f"mesh {shape} remat {remat} accum {accum}: "
          f"{plan['bytes_per_chip'] / 2**30:.2f} GiB, "
          f"{'fits' if plan['fits'] else 'does not fit'}, "
          f"~{_score(plan) * 1e3:.0f} ms", flush=True)
      if plan["fits"]:
        fitting.append(plan)
        break
  pool = fitting or []
  if not pool:
    log("no candidate fits; the plan below is the smallest", flush=True)
    smallest = min(tried, key=lambda r: r["bytes_per_chip"])
    shape = smallest["mesh"]
    c = _with(config, **{"mesh.data": shape[0], "mesh.fsdp": shape[1],
                         "mesh.tensor": shape[2], "model.remat": smallest["remat"],
                         "optim.grad_accum_steps": smallest["grad_accum_steps"]})
    plan = planner.make(c, slice_, devices)
  else:
    winner = min(pool, key=_score)
    c = _with(config, **{"mesh.data": winner["mesh"]["data"],
                         "mesh.fsdp": winner["mesh"]["fsdp"],
                         "mesh.tensor": winner["mesh"]["tensor"],
                         "model.remat": winner["remat"],
                         "optim.grad_accum_steps": winner["grad_accum_steps"]})
    plan = planner.make(c, slice_, devices)
  plan["search"] = tried
  return plan


def _next_probe(lo: int, hi: int, results: dict, hbm: int, unit: int, step: int,
                bisect: bool) -> int | None:
  """The next batch to compile inside the bracket (lo fits, hi does not), a
  multiple of `unit`; None when none is left.

  Memory per chip grows about linearly with the batch, so the probe goes
  where the line through the two ends' bytes per chip meets the HBM (regula
  falsi): on a straight line, two probes settle the answer. It stays `step`
  (the tolerance) inside either end, so that a probe that fits next to `lo`
  or fails next to `hi` still ends the search or shrinks the bracket; and
  after two probes that moved the same end it bisects instead, because near
  the limit the compiler rematerialises more and the line bends.
  """
  mid = (lo + hi) / 2
  if not bisect:
    below, above = results[lo]["bytes_per_chip"], results[hi]["bytes_per_chip"]
    if below and above and above > below:
      mid = lo + (hbm - below) * (hi - lo) / (above - below)
      mid = min(max(mid, lo + step), hi - step)
  nxt = int(mid) // unit * unit
  if not lo < nxt < hi:
    nxt = (lo + hi) // 2 // unit * unit
  return nxt if lo < nxt < hi else None


def largest_batch(config, slice_: topology.Slice, devices, log=print,
                  granularity: int | None = None, tolerance: float = 0.0) -> dict:
  """The plan at the largest global batch (a multiple of the batch axes'
  size, to `granularity`) that fits with the config's other settings; every
  compiled batch is listed under "batches".

  tolerance: stop once the bracket [fits, does not fit] is within this
  fraction of the batch that fits (each probe of a large model is a compile
  of minutes). Inside the bracket, probes follow the bytes per chip
  (`_next_probe`), not plain bisection.
  "largest_batch" is then the bracket's lower end and "largest_batch_below"
  its upper end, the smallest batch seen not to fit.

  The search assumes memory grows with the batch. Near the HBM limit the
  compiler's schedule can change from one batch to the next (L/16 on
  v5e-256: 16.0 GiB at 95,744, 8.5 GiB at 98,816, no fit at 101,888), so
  the answer is the largest batch found to fit, not a proof that no larger
  one does.
  """
  plan = planner.make(config, slice_, devices, with_eval=False)
  mesh = plan["mesh"]
  unit = mesh["data"] * mesh["fsdp"] * config.optim.grad_accum_steps
  granularity = granularity or unit
  results = {}

  def fits(batch: int) -> dict:
    if batch not in results:
      results[batch] = planner.make(_with(config, batch_size=batch), slice_, devices,
                                    with_eval=False)
      log(f"batch {batch}: {results[batch]['bytes_per_chip'] / 2**30:.2f} GiB, "
          f"{'fits' if results[batch]['fits'] else 'does not fit'}", flush=True)
    return results[batch]

  results[config.batch_size] = plan
  log(f"batch {config.batch_size}: {plan['bytes_per_chip'] / 2**30:.2f} GiB, "
      f"{'fits' if plan['fits'] else 'does not fit'}", flush=True)
  lo, hi = None, None
  batch = config.batch_size
  if plan["fits"]:
    lo = batch
    while hi is None:
      batch *= 2
      if fits(batch)["fits"]:
        lo = batch
      else:
        hi = batch
  else:
    hi = batch
    while lo is None:
      batch = batch // 2 // unit * unit
      if batch < unit:
        break
      if fits(batch)["fits"]:
        lo = batch
      else:
        hi = batch
  if lo is not None:
    moved = []  # which end each probe moved
    while hi - lo > max(granularity, tolerance * lo):
      bisect = len(moved) >= 2 and moved[-1] == moved[-2]
      nxt = _next_probe(lo, hi, results, slice_.chip.hbm_bytes, unit,
                        step=max(granularity, int(tolerance * lo)), bisect=bisect)
      if nxt is None:
        break
      if fits(nxt)["fits"]:
        lo = nxt
        moved.append("lo")
      else:
        hi = nxt
        moved.append("hi")
  best_plan = dict(results[lo]) if lo is not None else dict(plan)
  best_plan["largest_batch"] = lo
  best_plan["largest_batch_below"] = hi
  best_plan["batches"] = {str(b): dict(fits=p["fits"], bytes_per_chip=p["bytes_per_chip"])
                          for b, p in sorted(results.items())}
  return best_plan

