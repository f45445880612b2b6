"""experiments/benchmarks/gpu_check.sh: its dry run on CPU, and its batch search.

The dry run is the GPU check at tiny shapes with a fake small memory limit:
one JSON line on stdout with every key a GPU run prints, figures that make
sense, a batch that fits with a double that does not, and the ring loss under
the B x B bytes. The search's other paths (the line too optimistic or too
pessimistic, a start that does not fit, the time limit) are tested on a fake
memory function, without compiling anything.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "experiments", "benchmarks", "gpu_check.py")


def _load_gpu_check():
  spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)  # stdlib imports only: jax loads in the parts
  return module


gpu_check = _load_gpu_check()


@pytest.fixture(scope="module")
def dry_run():
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHON": sys.executable}
  out = subprocess.run(["bash", os.path.join(ROOT, "experiments", "benchmarks", "gpu_check.sh"),
                        "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  return out


@pytest.fixture(scope="module")
def report(dry_run):
  return json.loads(dry_run.stdout)


@pytest.mark.slow  # runs the four parts in child processes: about 40 s on 2 cores
def test_dry_run_prints_one_json_line_with_every_key(dry_run, report):
  lines = dry_run.stdout.splitlines()
  assert len(lines) == 1, dry_run.stdout
  assert "part mmjax: ok" in dry_run.stderr  # progress goes to stderr
  for key in ("device_kind", "platform", "jax_version", "host_cores", "model", "status",
              "ratio_mmjax_over_open_clip", "params_equal", "total_s", *gpu_check.PARTS):
    assert key in report, key
  assert report["dry_run"] is True and report["platform"] == "cpu"
  for part in gpu_check.PARTS:
    assert set(report[part]) == {"status", "reason", "seconds", *gpu_check.KEYS[part]}, part
  assert report["model"]["dtype"] == "bfloat16"
  assert report["model"]["preset"] == "dry-run"


@pytest.mark.slow
def test_dry_run_measures_the_mmjax_step(report):
  mm = report["mmjax"]
  assert mm["status"] == "ok", mm["reason"]
  assert mm["images_per_s"] > 0 and mm["steps_timed"] >= 3
  assert mm["flops_per_step_xla"] > 0 and mm["flops_per_step_analytic"] > 0
  # No published peak for a CPU, so no MFU; where perf knows one, MFU follows it.
  assert (mm["mfu"] is None) == (mm["peak_flops_per_s"] is None)
  assert mm["peak_flops_per_s"] is None  # JAX_PLATFORMS=cpu


@pytest.mark.slow
def test_dry_run_batch_fits_and_its_double_does_not(report):
  mm = report["mmjax"]
  search = mm["batch_search"]
  measured = dict((b, v) for b, v in search["measured"])
  assert "fake" in search["memory_limit_source"]
  assert mm["batch"] == search["batch"] and mm["oom_fallbacks"] == []
  assert measured[mm["batch"]] <= search["budget_bytes"]
  assert search["double_source"] == "compiled"
  assert measured[2 * mm["batch"]] == search["double_bytes"] > search["budget_bytes"]
  assert search["bytes_per_example"] > 0


@pytest.mark.slow
def test_dry_run_ring_loss_stays_under_the_bxb_matrix(report):
  ring = report["ring_loss"]
  assert ring["status"] == "ok", ring["reason"]
  assert ring["bxb_f32_bytes"] == ring["batch"] ** 2 * 4
  assert ring["ring_temp_bytes"] < ring["bxb_f32_bytes"] <= ring["naive_temp_bytes"]
  assert ring["ring_total_bytes"] < ring["naive_total_bytes"]
  assert ring["value_rel_diff"] < 1e-4  # the same loss


@pytest.mark.slow
def test_dry_run_pipeline_and_open_clip(report):
  pipe = report["pipeline"]
  assert pipe["status"] == "ok", pipe["reason"]
  assert pipe["images_per_s_per_core"] > 0 and pipe["cores_to_feed_mmjax"] > 0
  oc = report["open_clip"]
  has_open_clip = all(importlib.util.find_spec(m) for m in ("torch", "open_clip"))
  if has_open_clip:
    assert oc["status"] == "ok", oc["reason"]
    assert oc["images_per_s"] > 0 and report["ratio_mmjax_over_open_clip"] > 0
    assert oc["batch"] == report["mmjax"]["batch"] and oc["batch_same_as_mmjax"]
    assert report["params_equal"] is True  # one model description on both sides
  else:
    assert oc["status"] == "unavailable" and "No module named" in oc["reason"]
    assert oc["images_per_s"] is None and report["ratio_mmjax_over_open_clip"] is None
    assert report["status"] == "ok"  # a missing optional part is not a failure


class FakeMemory:
  """bytes(batch) of a made-up program; counts the compiles the search asks for."""

  def __init__(self, fn, seconds=0.0):
    self.fn, self.seconds, self.calls = fn, seconds, []

  def __call__(self, batch):
    self.calls.append(batch)
    time.sleep(self.seconds)
    return self.fn(batch)


def _check(found, memory, budget):
  b = found["batch"]
  assert memory.fn(b) <= budget
  assert len(memory.calls) == len(set(memory.calls))  # no batch compiled twice
  return b


def test_search_jumps_along_the_line():
  memory = FakeMemory(lambda b: 1000 + 10 * b)
  found = gpu_check.find_batch(memory, budget=1000 + 10 * 700, start=8, max_batch=4096)
  assert _check(found, memory, 8000) == 512
  assert found["double_source"] == "compiled" and found["double_bytes"] == 1000 + 10 * 1024
  assert memory.calls == [8, 16, 512, 1024]  # two to draw the line, then the answer and double
  assert found["bytes_per_example"] == 10 and found["fixed_bytes"] == 1000


@pytest.mark.parametrize("fn, expected", [
    (lambda b: 1000 + 10 * b + b * b // 100, 256),  # grows faster than the line: step down
    (lambda b: 1000 + 10 * min(b, 64) + (b - min(b, 64)), 4096),  # slower: step up
])
def test_search_corrects_a_wrong_line(fn, expected):
  budget = 8000
  memory = FakeMemory(fn)
  found = gpu_check.find_batch(memory, budget, start=8, max_batch=8192)
  assert _check(found, memory, budget) == expected
  assert fn(2 * expected) > budget and found["double_source"] == "compiled"


def test_search_halves_a_start_that_does_not_fit_and_stops_at_max_batch():
  memory = FakeMemory(lambda b: 100 * b)
  found = gpu_check.find_batch(memory, budget=1000, start=64, max_batch=1024)
  assert _check(found, memory, 1000) == 8 and memory.calls[:4] == [64, 32, 16, 8]
  found = gpu_check.find_batch(FakeMemory(lambda b: b), budget=1e9, start=8, max_batch=64)
  assert found["batch"] == 64 and found["double_source"] == "above max_batch"
  found = gpu_check.find_batch(FakeMemory(lambda b: 5000), budget=1000, start=4, max_batch=64)
  assert found["batch"] is None


def test_search_takes_the_double_from_the_line_when_out_of_time():
  memory = FakeMemory(lambda b: 1000 + 10 * b, seconds=0.05)
  found = gpu_check.find_batch(memory, budget=8000, start=8, max_batch=4096,
                               deadline=time.monotonic() + 0.175)
  # Three compiles fit in the time; the fourth (the double) would end past it.
  assert found["batch"] == 512 and memory.calls == [8, 16, 512]
  assert found["double_source"] == "model" and found["double_bytes"] == 1000 + 10 * 1024
