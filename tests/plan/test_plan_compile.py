"""mmjax.plan compiles real train steps for a TPU v5e-16 (v5e:4x4) on this CPU
(libtpu's compiler, compile-only devices) and reads the verdict, FLOPs,
collectives and buffers the compiler chose."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mmjax.plan import hlo, planner, topology
from tests.plan.test_plan_inputs import _config
from tests.subprocesses import ROOT, child_env

V5E_16 = topology.parse("v5e:4x4")
# Every test here compiles a train step with the TPU compiler (1.5 minutes or
# more each on a 2-core CPU): the full suite runs them, the fast subset does not.
pytestmark = pytest.mark.slow


def _plan_cli(workdir, *args) -> tuple[dict, str]:
  result = subprocess.run(
      [sys.executable, "-m", "mmjax.plan", "--topology", "v5e:4x4", "--workdir",
       str(workdir), *args], cwd=ROOT, env=child_env(), capture_output=True, text=True,
      timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "plan.json")) as f:
    return json.load(f), result.stdout + result.stderr


@pytest.fixture(scope="module")
def default_plan(tmp_path_factory):
  """The default experiment (shapes SigLIP) through the command line."""
  return _plan_cli(tmp_path_factory.mktemp("default"))


def test_contract_keys_and_a_quiet_compiler(default_plan):
  plan, output = default_plan
  for key in ("chip", "chips", "fits", "hbm_bytes_per_chip", "bytes_per_chip",
              "flops_per_chip", "collectives", "replicated_params"):
    assert key in plan
  assert plan["chip"] == "TPU v5 lite" and plan["chips"] == 16
  assert plan["hbm_bytes_per_chip"] == 16 * 2 ** 30
  for c in plan["collectives"]:
    assert {"kind", "count", "bytes"} <= set(c)
  # libtpu's start-up warnings (worker hostnames, accelerator type) are
  # answered, not filtered.
  assert "TPU_WORKER_HOSTNAMES" not in output and "accelerator type" not in output


def test_default_fits_and_its_memory_adds_up(default_plan):
  plan, _ = default_plan
  m = plan["memory"]
  assert plan["fits"] and plan["bytes_per_chip"] < plan["hbm_bytes_per_chip"]
  assert plan["bytes_per_chip"] == m["argument"] + m["temp"] + m["output"] - m["alias"]
  # Data parallel (mesh data=16): each chip holds all params and both Adam
  # moments, in float32; the state is donated, so its outputs alias its inputs.
  assert m["optimizer_state"] == pytest.approx(2 * m["params"], rel=0.01)
  assert m["argument"] >= m["params"] + m["optimizer_state"] + m["batch"]
  assert m["alias"] >= m["params"] + m["optimizer_state"]
  assert all(e["fits"] for e in plan["eval"].values()) and set(plan["eval"]) == {"image", "text"}


def test_default_flops_agree_with_the_analytic_count(default_plan):
  plan, _ = default_plan
  assert not plan["remat"]
  # Both count matmuls: the optimised program's dots and convolutions against
  # the transformer formula (they differ by 0.6% at width 128).
  assert plan["matmul_flops_per_chip"] == pytest.approx(plan["analytic_flops_per_chip"],
                                                        rel=0.02)
  # XLA's whole count adds the elementwise work: a few percent more, never less.
  elementwise = plan["flops_per_chip"] - plan["matmul_flops_per_chip"]
  assert 0 < elementwise < 0.1 * plan["matmul_flops_per_chip"]


def test_default_collectives_are_the_gradient_all_reduce_and_the_ring(default_plan):
  plan, _ = default_plan
  by_kind = {c["kind"]: c for c in plan["collectives"]}
  # One (combined) all-reduce of every float32 gradient over the data axis.
  grads = by_kind["all-reduce"]
  assert grads["axes"] == ["data"] and grads["dtypes"] == ["f32"]
  assert plan["memory"]["params"] <= grads["bytes"] <= 1.01 * plan["memory"]["params"]
  # The ring sigmoid loss: its hops are permutes between neighbours on "data",
  # at least chips - 1 of them per step.
  ring = by_kind["collective-permute"]
  assert ring["axes"] == ["data"] and ring["count"] >= plan["chips"] - 1
  assert plan["loop_trip_counts_known"]
  # Data parallel: every weight matrix is replicated, and named.
  assert "image_tower/encoder/block0/mlp/fc1/kernel" in plan["replicated_params"]


@pytest.fixture(scope="module")
def ring_32k():
  """The real-layout preset (224 px ViT, MAP head, bf16, remat, ring loss) at
  a global batch of 32,768 on 16 chips, compiled once."""
  config = _config("pod_siglip.py", "small")
  devices = topology.devices(V5E_16)
  terms = planner.check(config, V5E_16)
  compiled, mesh, model, abstract, seconds = planner.compile_train(config, devices, terms)
  plan = planner.analyse(config, V5E_16, compiled, mesh, model, abstract, seconds,
                         with_eval=False)
  return plan, compiled.as_text()


def test_ring_at_32k_fits_and_holds_no_batch_by_batch_buffer(ring_32k):
  plan, text = ring_32k
  assert plan["fits"] and plan["batch_size"] == 32768
  ring = [c for c in plan["collectives"] if c["kind"] == "collective-permute"]
  assert ring and ring[0]["axes"] == ["data"] and ring[0]["count"] >= 15
  # In a bfloat16 step the compiler reduces the weight matrices' gradients in
  # bfloat16 (before their cast to the float32 params), the norms' in float32.
  reduced = {d for c in plan["collectives"] if c["kind"] == "all-reduce" for d in c["dtypes"]}
  assert reduced == {"bf16", "f32"}
  batch, local = 32768, 32768 // 16
  for shape in hlo.array_shapes(text):
    big = [d for d in shape if d >= local]
    # No B x B logits, nor a B_local x B slice of them: the ring scores
    # B_local x B_local blocks (in tiles), one neighbour at a time.
    assert not (len(big) >= 2 and max(big) >= batch), shape


def test_remat_flops_lie_between_model_flops_and_a_full_recompute(ring_32k):
  plan, _ = ring_32k
  assert plan["remat"]
  # The ring's 15 hops run in a loop that XLA's cost analysis counts once.
  assert plan["loop_flops_added_per_chip"] > 0
  assert plan["model_flops_per_chip"] < plan["flops_per_chip"]
  assert plan["flops_per_chip"] <= 1.05 * plan["analytic_flops_per_chip"]


def test_a_plan_that_cannot_fit_says_so_with_its_numbers(tmp_path):
  # 1.3 B parameters, data parallel: float32 params and both Adam moments
  # alone are 15.6 GB per chip, against a v5e's 16 GiB (15.75 GiB usable).
  wide = ["--config.model.towers.image.width=4096", "--config.model.towers.text.width=4096",
          "--config.model.towers.image.depth=3", "--config.model.towers.text.depth=3",
          "--config.model.towers.image.num_heads=32", "--config.model.towers.text.num_heads=32",
          "--config.batch_size=256", "--noeval"]
  plan, output = _plan_cli(tmp_path, "--config", os.path.join(ROOT, "experiments",
                                                              "pod_siglip.py:small"), *wide)
  assert not plan["fits"] and "DOES NOT FIT" in output
  # The TPU compiler itself refuses the program; its message is kept.
  assert "HBM" in plan["compiler_error"] and plan["hbm_available_bytes"] <= 16 * 2 ** 30
  assert plan["bytes_per_chip"] > plan["hbm_bytes_per_chip"]
  params = plan["memory"]["params"]
  assert params > 1.2e9 * 4 and plan["memory"]["optimizer_state"] >= 2 * params * 0.99
  assert np.isfinite(plan["step_seconds"]["serial"])


def test_an_h100_node_compiles_here_without_a_gpu():
  """XLA:GPU through jax's CUDA plugin, from a written-down H100 description."""
  plan = planner.make(_config(), topology.parse("h100:8"), with_eval=False)
  assert plan["chip"] == "NVIDIA H100 80GB HBM3" and plan["chips"] == 8 and plan["fits"]
  # XLA:GPU gives no cost analysis: the FLOPs are the program's own matmuls.
  assert plan["xla_flops_per_chip"] is None
  assert plan["flops_per_chip"] == pytest.approx(plan["analytic_flops_per_chip"], rel=0.05)
  by_kind = {c["kind"]: c for c in plan["collectives"]}
  params = plan["memory"]["params"]
  assert params <= by_kind["all-reduce"]["bytes"] <= 1.01 * params
  assert by_kind["collective-permute"]["count"] >= 7
