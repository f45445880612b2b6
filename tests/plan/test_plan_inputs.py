"""mmjax.plan's checks before any compile: topology names, libtpu's presence
and version, the mesh against the slice; and the HLO readers on small texts."""

import importlib.util
import os

import numpy as np
import pytest

from mmjax import configs
from mmjax.data import pipeline
from mmjax.plan import hlo, hlo_flops, planner, topology
from tests.subprocesses import ROOT


def _config(name="shapes_siglip.py", arg=None):
  path = os.path.join(ROOT, "experiments", name)
  spec = importlib.util.spec_from_file_location("experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


@pytest.mark.parametrize("name, chips, kind", [
    ("v5e:4x4", 16, "v5e"), ("v5e-256", 256, "v5e"), ("v5p-128", 64, "v5p"),
    ("v5p:4x4x8", 128, "v5p"), ("v6e-256", 256, "v6e"), ("h100:8", 8, "h100"),
    ("h100:2x8", 16, "h100")])
def test_topology_names_and_slice_names_agree(name, chips, kind):
  s = topology.parse(name)
  assert (s.chips, s.chip.name) == (chips, kind)


@pytest.mark.parametrize("name", ["v9z:4x4", "4x4", "v5e", "tpu-256", "v5p:4x4"])
def test_unknown_topology_lists_the_known_forms(name):
  with pytest.raises(topology.PlanError) as e:
    topology.parse(name)
  assert "v5e:4x4" in str(e.value) and "v5p:4x4x4" in str(e.value) and "v6e-256" in str(e.value)


def test_v4_is_refused_with_the_reason():
  with pytest.raises(topology.PlanError, match="two devices per chip"):
    topology.parse("v4:2x2x1")


def test_slice_names_count_v5p_cores():
  assert topology.parse("v5p:4x4x4").accelerator_type == "v5p-128"
  assert topology.parse("v5e:16x16").accelerator_type == "v5litepod-256"


def test_version_mismatch_names_both_versions_and_the_fix():
  topology.check_version("0.0.42.1", "==0.0.42.*")
  with pytest.raises(topology.PlanError) as e:
    topology.check_version("0.0.41", "==0.0.42.*")
  message = str(e.value)
  assert "libtpu 0.0.41" in message and "==0.0.42.*" in message and "pip install" in message


def test_jax_pins_the_libtpu_it_was_built_with():
  assert topology.required_libtpu().startswith("==")


def test_missing_libtpu_gives_the_install_command(monkeypatch, tmp_path):
  monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
  monkeypatch.setattr(topology, "_importable_libtpu", lambda: None)
  monkeypatch.setattr(topology, "COMPILER_DIR", str(tmp_path / "none"))
  with pytest.raises(topology.PlanError) as e:
    topology.find_libtpu()
  assert "not installed" in str(e.value) and "pip install" in str(e.value)
  assert "libtpu==" in str(e.value)


def test_a_wrong_library_path_is_named(monkeypatch, tmp_path):
  monkeypatch.setenv("TPU_LIBRARY_PATH", str(tmp_path / "libtpu.so"))
  with pytest.raises(topology.PlanError, match="does not exist"):
    topology.find_libtpu()


def test_the_installed_compiler_is_found_at_the_pinned_version():
  path, version = topology.find_libtpu()
  assert os.path.isfile(path)
  with open(os.path.join(ROOT, "requirements", "tpu-compiler.txt")) as f:
    pin = [l.split("==")[1].strip() for l in f if l.startswith("libtpu==")][0]
  assert version in (None, pin)


def test_mesh_that_does_not_cover_the_slice_says_what_to_change():
  config = _config()
  config.mesh.data, config.mesh.fsdp = 8, 1
  with pytest.raises(topology.PlanError) as e:
    planner.check(config, topology.parse("v5e:4x4"))
  assert "16 chips" in str(e.value) and "--config.mesh." in str(e.value)


def test_plans_need_no_data():
  config = _config("pod_siglip.py", "small")
  assert not os.path.exists(config.data.data_dir)
  planner.check(config, topology.parse("v5e:4x4"))  # no error: nothing is read


def test_an_audio_plan_needs_no_data_and_training_still_asks_for_it(tmp_path):
  # CLAP at pod scale: audiocaps is not prepared here. Its config gives the
  # clips' rate, so the batch is known: 9.94 s windows at 16 kHz, and no image.
  config = _config("pod_multimodal.py", "audio")
  config.data.data_dir = str(tmp_path)
  assert pipeline.modality(config.data) == "audio"
  spec = pipeline.batch_spec(config)
  assert set(spec) == {"audio", "text"}
  assert spec["audio"] == ((round(config.data.clip_seconds * 16000),), np.dtype(np.float32))
  planner.check(config, topology.parse("v5e:4x4"))
  # A run (which reads the data) is refused with the prepare command.
  with pytest.raises(FileNotFoundError, match="mmjax.data.prepare audiocaps"):
    pipeline.check_data_config(config.data)
  # Any name prepared from an audio format: the rate says the items are clips.
  config.data.name = "my_clips"
  assert pipeline.modality(config.data) == "audio"
  assert pipeline.batch_spec(config)["audio"] == spec["audio"]
  # Without the rate nothing says what the clips are: the dataset is read.
  config.data.name, config.data.sample_rate = "audiocaps", None
  with pytest.raises(FileNotFoundError, match="mmjax.data.prepare audiocaps"):
    pipeline.batch_spec(config)
  # A directory that is there but incomplete is named, not stood in for.
  config.data.sample_rate = 16000
  os.makedirs(tmp_path / "audiocaps")
  with pytest.raises(ValueError, match="not a complete mmjax dataset"):
    pipeline.batch_spec(config)


def test_a_teacher_is_refused_not_ignored():
  config = _config("shapes_distill.py", "kl")
  config.distill.teacher = "runs/siglip"
  with pytest.raises(configs.ConfigError, match="teacher"):
    planner.check(config, topology.parse("v5e:4x4"))


# --- HLO readers --------------------------------------------------------------

HLO = """HloModule m, is_scheduled=true

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%body (p: (s32[], f32[8,128])) -> (s32[], f32[8,128]) {
  %p = (s32[], f32[8,128]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[8,128]{1,0} get-tuple-element(%p), index=1
  %w = f32[128,128]{1,0} constant({...})
  %d = f32[8,128]{1,0} dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %cp = (f32[8,128]{1,0}, f32[8,128]{1,0}, u32[], u32[]) collective-permute-start(%d), channel_id=1, source_target_pairs={{0,1},{1,2},{2,3},{3,0}}
  %cpd = f32[8,128]{1,0} collective-permute-done(%cp)
  %one = s32[] constant(1)
  %j = s32[] add(%i, %one)
  ROOT %t = (s32[], f32[8,128]) tuple(%j, %cpd)
}

%cond (q: (s32[], f32[8,128])) -> pred[] {
  %q = (s32[], f32[8,128]) parameter(0)
  %k = s32[] constant(7)
  %n = s32[] get-tuple-element(%q), index=0
  ROOT %lt = pred[] compare(%n, %k), direction=LT
}

ENTRY %main (x0: f32[8,128]) -> f32[8,128] {
  %x0 = f32[8,128]{1,0} parameter(0)
  %zero = s32[] constant(0)
  %z = s32[] copy(%zero)
  %init = (s32[], f32[8,128]) tuple(%z, %x0)
  %loop = (s32[], f32[8,128]) while(%init), condition=%cond, body=%body
  %out = f32[8,128]{1,0} get-tuple-element(%loop), index=1
  %ar = (f32[8,128]{1,0}, bf16[64]{0}) all-reduce(%out, %out), channel_id=2, replica_groups=[2,2]<=[2,2]T(1,0), use_global_device_ids=true, to_apply=%add
  ROOT %r = f32[8,128]{1,0} get-tuple-element(%ar), index=0
}
"""


def test_loop_trip_count_is_read_from_the_condition():
  comps = hlo.computations(HLO)
  runs, known = hlo.executions(comps)
  assert known and runs["body"] == 7 and runs["main"] == 1


def test_collectives_count_loop_runs_tuple_bytes_and_mesh_axes():
  found, known = hlo.collectives(HLO, (2, 2), ("data", "fsdp"))
  by_kind = {c.kind: c for c in found}
  permute = by_kind["collective-permute"]
  assert (permute.count, permute.bytes) == (7, 7 * 8 * 128 * 4)
  # Pairs 0->1 (fsdp), 1->2 (both), 2->3 (fsdp), 3->0 (both).
  assert permute.axes == ("data", "fsdp")
  reduce = by_kind["all-reduce"]
  assert (reduce.count, reduce.bytes) == (1, 8 * 128 * 4 + 64 * 2)
  # iota(4).reshape(2, 2).T -> groups {0, 2}, {1, 3}: partitions differing in "data".
  assert reduce.axes == ("data",) and reduce.group_size == 2


SCATTER = """HloModule s

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %c = f32[] add(%a, %b)
}

%all-reduce-scatter.1 (p: f32[512,1024], i: s32[]) -> f32[128,1024] {
  %p = f32[512,1024]{1,0} parameter(0)
  %i = s32[] parameter(1)
  %zero = s32[] constant(0)
  %whole = f32[512,1024]{1,0} all-reduce(%p), channel_id=1, replica_groups={{0,1,2,3},{4,5,6,7}}, use_global_device_ids=true, to_apply=%add
  ROOT %mine = f32[128,1024]{1,0} dynamic-slice(%whole, %i, %zero), dynamic_slice_sizes={128,1024}
}

ENTRY %main (x: f32[512,1024], y: f32[512,1024], i: s32[]) -> (f32[128,1024], f32[128,1024]) {
  %x = f32[512,1024]{1,0} parameter(0)
  %y = f32[512,1024]{1,0} parameter(1)
  %i = s32[] parameter(2)
  %rs = f32[128,1024]{1,0} reduce-scatter(%x), channel_id=2, replica_groups={{0,1,2,3},{4,5,6,7}}, use_global_device_ids=true, dimensions={0}, to_apply=%add
  %fused = f32[128,1024]{1,0} fusion(%y, %i), kind=kCustom, calls=%all-reduce-scatter.1
  ROOT %t = (f32[128,1024], f32[128,1024]) tuple(%rs, %fused)
}
"""


def test_a_reduce_scatter_counts_its_input_in_either_form():
  # The same reduction twice: a reduce-scatter op (optimised HLO names its
  # operand without a shape, so the input is the result times the group) and
  # the TPU's form, an all-reduce fused with the slice each chip keeps.
  found, _ = hlo.collectives(SCATTER, (2, 4), ("data", "fsdp"))
  assert len(found) == 1
  scatter = found[0]
  assert (scatter.kind, scatter.axes, scatter.group_size) == ("reduce-scatter", ("fsdp",), 4)
  assert (scatter.count, scatter.bytes) == (2, 2 * 512 * 1024 * 4)


FUSED = """HloModule f

%fused_computation (p0: u8[64,32]) -> bf16[64,32] {
  %p0 = u8[64,32]{1,0} parameter(0)
  %wide = f32[64,32]{1,0} convert(%p0), metadata={op_name="jit(step)/normalise/convert"}
  %twice = f32[4,64,32]{2,1,0} broadcast(%wide), dimensions={1,2}
  ROOT %narrow = bf16[64,32]{1,0} convert(%wide)
}

ENTRY %main (x: u8[64,32], big: u8[4096]) -> bf16[64,32] {
  %x = u8[64,32]{1,0} parameter(0)
  %big = u8[4096]{0} parameter(1)
  %fusion = bf16[64,32]{1,0} fusion(%x), kind=kLoop, calls=%fused_computation, metadata={op_name="jit(step)/normalise/convert"}
  %view = bf16[2048]{0} bitcast(%fusion)
  ROOT %copy = bf16[64,32]{1,0} copy(%fusion)
}
"""


def test_largest_buffer_counts_written_arrays_not_values_inside_a_fusion():
  # f32[4, 64, 32] (32 KiB) lives only inside the fused kernel; of the arrays
  # written to memory the largest is the 4,096-byte argument, then the
  # 4,096-byte bf16 fusion output (a bitcast is a view of it, not a buffer).
  assert hlo.fusion_bodies(hlo.computations(FUSED)) == {"fused_computation"}
  size, what = hlo.largest_buffer(FUSED)
  assert size == 4096 and what.startswith("u8[4096]")
  size, what = hlo.largest_buffer(FUSED.replace("u8[4096]", "u8[16]"))
  assert size == 64 * 32 * 2 and what.endswith("jit(step)/normalise/convert")
  # A loop body's buffers count; its parameter is the caller's tuple, not a buffer.
  size, what = hlo.largest_buffer(HLO)
  assert size == 128 * 128 * 4 and what.startswith("f32[128,128]")
  # A tuple-typed output is named by its largest array.
  started = """HloModule t

ENTRY %main (x: f32[8,128]) -> f32[8,128] {
  %x = f32[8,128]{1,0} parameter(0)
  %cp = (f32[8,128]{1,0}, f32[64,128]{1,0}, u32[], u32[]) collective-permute-start(%x), channel_id=1, source_target_pairs={{0,1}}, metadata={op_name="jit(step)/ring/ppermute"}
  ROOT %d = f32[8,128]{1,0} collective-permute-done(%cp)
}
"""
  assert hlo.largest_buffer(started) == (64 * 128 * 4, "f32[64,128] jit(step)/ring/ppermute")


def test_loop_flops_put_back_what_the_body_counted_once_misses():
  full, once = hlo_flops.loop_flops(HLO)
  assert once == 2 * 8 * 128 * 128 and full == 7 * once


@pytest.mark.parametrize("pad, stride, lhs_dil", [(0, 1, 1), (1, 1, 1), (2, 2, 1), (1, 1, 2)])
def test_valid_window_pairs_match_a_direct_count(pad, stride, lhs_dil):
  size, kernel = 9, 3
  dilated = (size - 1) * lhs_dil + 1
  out = (dilated + 2 * pad - kernel) // stride + 1
  direct = 0
  for o in range(out):
    for k in range(kernel):
      pos = o * stride + k - pad
      direct += 0 <= pos < dilated and pos % lhs_dil == 0
  assert hlo_flops._valid_pairs(out, size, kernel, stride, pad, lhs_dil, 1) == direct


def test_iota_replica_groups_match_numpy():
  line = "x = f32[4] all-reduce(y), replica_groups=[4,2]<=[2,4]T(1,0), to_apply=%add"
  expected = np.arange(8).reshape(2, 4).T.reshape(4, 2).tolist()
  assert hlo._groups(line) == expected


def test_mesh_form_replica_groups_follow_the_device_ids():
  # The TPU compiler's own form: its mesh [fsdp 2, tensor 1, data 8] holds the
  # partition ids iota(16).reshape(8, 2).T, i.e. our (data 8, fsdp 2) in row-major
  # order; grouping along axis_0 is grouping along our fsdp, axis_2 along data.
  gather = ("x = f32[4] all-gather(y), replica_groups=mesh['axis_0'=2,'axis_1'=1,'axis_2'=8], "
            "device_ids=([8,2]T(1,0)) {'axis_0'}, dimensions={0}")
  reduce = gather.replace("{'axis_0'}", "{'axis_2'}")
  assert hlo._groups(gather) == [[2 * d, 2 * d + 1] for d in range(8)]
  assert hlo.axes_of(hlo._groups(gather), (8, 2, 1), ("data", "fsdp", "tensor")) == ("fsdp",)
  assert hlo.axes_of(hlo._groups(reduce), (8, 2, 1), ("data", "fsdp", "tensor")) == ("data",)
  assert sorted(len(g) for g in hlo._groups(reduce)) == [8, 8]
