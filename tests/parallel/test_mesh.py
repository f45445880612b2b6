"""Mesh construction and its errors: no compilation involved."""

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import AxisType

from mmjax import configs
from mmjax.parallel import mesh as mesh_lib
from mmjax.train import build

from tests.train.conftest import tiny_config


def _cfg(data, fsdp, tensor):
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


@pytest.mark.parametrize("sizes,expected", [
    ((-1, 1, 1), (8, 1, 1)),
    ((4, 2, 1), (4, 2, 1)),
    ((2, 2, 2), (2, 2, 2)),
    ((1, -1, 1), (1, 8, 1)),
    ((2, 1, -1), (2, 1, 4)),
])
def test_sizes_resolve_to_the_device_count(sizes, expected):
  mesh = mesh_lib.make_mesh(_cfg(*sizes))
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert tuple(mesh.shape.values()) == expected
  assert set(mesh.axis_types) == {AxisType.Auto}
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


def test_a_subset_of_devices():
  mesh = mesh_lib.make_mesh(_cfg(-1, 1, 1), devices=jax.devices()[:1])
  assert tuple(mesh.shape.values()) == (1, 1, 1)
  assert mesh.devices.flat[0] == jax.devices()[0]


def test_wrong_product_names_device_count_and_a_fix():
  with pytest.raises(configs.ConfigError) as info:
    mesh_lib.make_mesh(_cfg(3, 1, 1))
  msg = str(info.value)
  assert "mesh (3, 1, 1) needs 3 devices but there are 8" in msg
  assert "--config.mesh.data=8 --config.mesh.fsdp=1 --config.mesh.tensor=1" in msg
  assert "-1" in msg


def test_suggestion_keeps_the_requested_fsdp_and_tensor():
  with pytest.raises(configs.ConfigError, match=r"--config.mesh.data=2 --config.mesh.fsdp=2 "
                     r"--config.mesh.tensor=2"):
    mesh_lib.make_mesh(_cfg(4, 2, 2))


@pytest.mark.parametrize("sizes,match", [
    ((-1, -1, 1), r"at most one may fill"),
    ((-1, 3, 1), r"multiple of 3 devices but there are 8"),
    ((0, 1, 1), r"config.mesh.data=0 must be a positive integer or -1"),
    ((1, 1, 2.0), r"config.mesh.tensor=2.0"),
])
def test_bad_sizes(sizes, match):
  with pytest.raises(configs.ConfigError, match=match):
    mesh_lib.mesh_shape(_cfg(*sizes), 8)


def test_batch_must_divide_over_data_and_fsdp():
  mesh_lib.check_batch(16, (4, 2, 1))
  mesh_lib.check_batch(16, (1, 1, 8))  # tensor does not split the batch
  with pytest.raises(configs.ConfigError) as info:
    mesh_lib.check_batch(12, (4, 2, 1))
  msg = str(info.value)
  assert "config.batch_size=12" in msg and "mesh.data=4 x mesh.fsdp=2" in msg
  assert "--config.batch_size=8" in msg
  with pytest.raises(configs.ConfigError, match=r"grad_accum_steps=2.*--config.batch_size=16"):
    mesh_lib.check_batch(24, (8, 1, 1), grad_accum_steps=2)


def test_build_check_rejects_mesh_batch_and_impl_before_compiling():
  with pytest.raises(configs.ConfigError, match=r"needs 3 devices but there are 8"):
    build.check(tiny_config(**{"mesh.data": 3}))
  with pytest.raises(configs.ConfigError, match=r"config.batch_size=12"):
    build.check(tiny_config(batch_size=12))
  with pytest.raises(configs.ConfigError, match=r"config.batch_size=8.*grad_accum_steps=2"):
    build.check(tiny_config(**{"optim.grad_accum_steps": 2}))
  with pytest.raises(configs.ConfigError, match=r"config.loss.impl='gather'.*'ring'"):
    build.check(tiny_config(**{"loss.impl": "gather"}))  # sigmoid has a ring form only
  with pytest.raises(configs.ConfigError, match=r"config.loss.impl='fast'; choose one of "
                                                r"\['auto', 'gather', 'naive', 'ring'\]"):
    build.check(tiny_config(**{"loss.impl": "fast"}))
  build.check(tiny_config(**{"loss.name": "softmax_contrastive", "loss.impl": "gather"}))


class _FakeDevice:
  """Enough of a TPU device for the mesh helpers: id, coords, slice."""

  platform = "tpu"
  device_kind = "TPU v5 lite"

  def __init__(self, i, per_slice):
    self.id = i
    self.slice_index = i // per_slice
    self.process_index = i // 4
    local = i % per_slice
    self.coords = (local % 2, local // 2, 0)
    self.core_on_chip = 0

  def __repr__(self):
    return f"Fake({self.id}, slice={self.slice_index})"


def test_multislice_puts_data_across_slices():
  devices = [_FakeDevice(i, per_slice=4) for i in range(8)]
  grid = mesh_lib._device_grid((2, 2, 2), devices)  # pylint: disable=protected-access
  assert grid.shape == (2, 2, 2)
  slices = np.vectorize(lambda d: d.slice_index)(grid)
  # Along data the slice changes; within one data index it does not.
  assert (slices[0] == 0).all() and (slices[1] == 1).all()
  with pytest.raises(configs.ConfigError, match=r"spans 2 TPU slices.*multiple of 2"):
    mesh_lib._device_grid((1, 8, 1), devices)  # pylint: disable=protected-access
