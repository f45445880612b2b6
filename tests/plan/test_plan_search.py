"""The search's choices, on a fake planner whose memory and speed follow simple
rules (each real candidate is a TPU compile of seconds to minutes)."""

import pytest

from mmjax.plan import search, topology
from tests.plan.test_plan_inputs import _config

SLICE = topology.parse("v5e:4x4")
LIMIT = 16 * 2 ** 30


def fake_make(config, slice_, devices, with_eval=True):
  """Memory: replicated state (shrinks with fsdp, tensor) + activations per
  local row (shrink with remat, accumulation); time: slower with remat,
  accumulation and tensor parallelism."""
  del devices, with_eval
  m = config.mesh
  accum, remat = config.optim.grad_accum_steps, config.model.remat
  rows = config.batch_size // (m.data * m.fsdp) // accum
  state = 15 * 2 ** 30 / (m.fsdp * m.tensor)
  acts = rows * (2 ** 20 if remat else 8 * 2 ** 20) / m.tensor
  total = state + acts
  seconds = 1.0 * (1.3 if remat else 1.0) * (1 + 0.05 * accum) * (1 + 0.2 * (m.tensor > 1))
  return dict(fits=total <= LIMIT, bytes_per_chip=total, step_seconds=dict(serial=seconds),
              mesh=dict(data=m.data, fsdp=m.fsdp, tensor=m.tensor), remat=remat,
              grad_accum_steps=accum, batch_size=config.batch_size)


@pytest.fixture
def fake(monkeypatch):
  calls = []

  def make(config, slice_, devices, with_eval=True):
    calls.append(config)
    return fake_make(config, slice_, devices, with_eval)

  monkeypatch.setattr(search.planner, "make", make)
  return calls


def test_meshes_cover_the_chips_and_split_the_batch():
  for shape in search.meshes(16, 4096):
    assert shape[0] * shape[1] * shape[2] == 16 and 4096 % (shape[0] * shape[1]) == 0
  assert (16, 1, 1) in search.meshes(16, 4096) and (1, 16, 1) in search.meshes(16, 4096)
  assert (1, 8, 2) in search.meshes(16, 4096)
  assert all(s[0] * s[1] <= 8 for s in search.meshes(16, 8))


def test_search_keeps_the_fastest_fitting_plan(fake):
  config = _config()
  config.batch_size = 4096
  plan = search.best(config, SLICE, devices=None, log=lambda *a, **k: None)
  # Full fsdp fits without remat or accumulation (0.94 GiB of state, 2 GiB of
  # activations); data parallel needs remat (15 GiB of state + 256 rows).
  assert plan["fits"] and plan["mesh"] == dict(data=1, fsdp=16, tensor=1)
  assert not plan["remat"] and plan["grad_accum_steps"] == 1
  by_mesh = {}
  for row in plan["search"]:
    by_mesh.setdefault(tuple(row["mesh"]), []).append(row)
  for rows in by_mesh.values():  # each mesh stops at its first fit
    assert sum(r["fits"] for r in rows) <= 1 and (rows[-1]["fits"] or len(rows) == 5)
  assert by_mesh[(16, 1, 1)][-1]["remat"]


def test_search_skips_tensor_sizes_that_cannot_split_the_heads(fake):
  config = _config()
  config.batch_size = 4096
  config.model.towers.image.num_heads = 2
  logged = []
  plan = search.best(config, SLICE, devices=None, log=lambda *a, **k: logged.append(a[0]))
  tensors = {row["mesh"][2] for row in plan["search"]}
  assert tensors == {1, 2}  # 4 and 8 would leave the image heads whole on every chip
  assert "tensor 4 skipped: the image tower's 2 heads do not split 4 ways" in logged
  assert search.tensor_misfit(config, 2) is None
  config.model.towers.text.num_heads = 3
  assert search.tensor_misfit(config, 2) == "the text tower's 3 heads do not split 2 ways"
  # Heads beside the towers (a caption decoder) are split over tensor too.
  config.model.towers.image.num_heads = config.model.towers.text.num_heads = 4
  config.model.heads.caption = dict(kind="caption_decoder", width=16, depth=1, num_heads=6)
  assert search.tensor_misfit(config, 2) is None
  assert search.tensor_misfit(config, 4) == "the caption head's 6 heads do not split 4 ways"


def test_largest_batch_is_the_last_that_fits(fake):
  config = _config()
  config.batch_size = 1024
  config.mesh.data, config.mesh.fsdp = 1, 16
  plan = search.largest_batch(config, SLICE, devices=None, log=lambda *a, **k: None)
  # 0.94 GiB of state + 8 MiB per local row: up to 1,928 rows, i.e. 30,848.
  assert plan["largest_batch"] == 30848 and plan["fits"]
  assert not plan["batches"]["30864"]["fits"]  # the boundary was probed
  assert all(v["fits"] == (int(b) <= 30848) for b, v in plan["batches"].items())


def test_largest_batch_to_a_tolerance_brackets_the_boundary(fake):
  config = _config()
  config.batch_size = 1024
  config.mesh.data, config.mesh.fsdp = 1, 16
  exact = len(fake)
  search.largest_batch(config, SLICE, devices=None, log=lambda *a, **k: None)
  exact = len(fake) - exact
  before = len(fake)
  plan = search.largest_batch(config, SLICE, devices=None, log=lambda *a, **k: None,
                              tolerance=1 / 16)
  lo, hi = plan["largest_batch"], plan["largest_batch_below"]
  # The true boundary, 30,848, lies in [lo, hi), which is 1/16 of lo or less.
  assert lo <= 30848 < hi and hi - lo <= lo / 16 and plan["fits"]
  assert not plan["batches"][str(hi)]["fits"] and len(fake) - before < exact


def _counted(fake, tolerance):
  config = _config()
  config.batch_size = 1024
  config.mesh.data, config.mesh.fsdp = 1, 16
  before = len(fake)
  plan = search.largest_batch(config, SLICE, devices=None, log=lambda *a, **k: None,
                              tolerance=tolerance)
  return plan, len(fake) - before


def test_largest_batch_follows_the_bytes_per_chip_not_plain_bisection(fake):
  # Memory is a straight line in the batch: after doubling brackets it
  # (1,024 ... 32,768), the line through the ends meets 16 GiB at the
  # boundary, and one more probe, a batch step above it, closes the search.
  plan, compiles = _counted(fake, 0.0)
  assert plan["largest_batch"] == 30848 and plan["largest_batch_below"] == 30864
  doubling = 6  # 1,024 (the config's own) to 32,768
  assert compiles == doubling + 2
  # Plain bisection of [16,384, 32,768] to one batch step (16) would take 10
  # probes; that is what the search falls back to where an end has no byte
  # count (a compile that stopped without naming its bytes): the midpoint.
  assert search._next_probe(16384, 32768, {16384: {"bytes_per_chip": None},
                                           32768: {"bytes_per_chip": 1}},
                            16 * 2 ** 30, 16, 16, bisect=False) == 24576


def test_largest_batch_still_brackets_when_memory_bends(monkeypatch):
  # Near the limit the compiler rematerialises more, so memory grows ever more
  # slowly and the line overshoots on the low side; the search must still end
  # on a bracket within tolerance.
  def bent(config, slice_, devices, with_eval=True):
    rows = config.batch_size // 16
    total = 2 ** 30 * (1 + 20 * (1 - 2.0 ** (-rows / 2000)))  # 16 GiB at 4,000 rows
    return dict(fits=total <= LIMIT, bytes_per_chip=total, batch_size=config.batch_size,
                mesh=dict(data=1, fsdp=16, tensor=1), remat=False, grad_accum_steps=1)

  monkeypatch.setattr(search.planner, "make", bent)
  config = _config()
  config.batch_size = 1024
  config.mesh.data, config.mesh.fsdp = 1, 16
  plan = search.largest_batch(config, SLICE, devices=None, log=lambda *a, **k: None,
                              tolerance=1 / 16)
  lo, hi = plan["largest_batch"], plan["largest_batch_below"]
  assert plan["batches"][str(lo)]["fits"] and not plan["batches"][str(hi)]["fits"]
  assert hi - lo <= lo / 16
