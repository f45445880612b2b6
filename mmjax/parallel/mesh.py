"""The device mesh: axes ("data", "fsdp", "tensor") sized from `config.mesh`.

The same config runs on one CPU, 8 simulated CPU devices, a GPU node or a TPU
pod: `config.mesh.data = -1` takes whatever devices the other two axes leave.
Every size is checked against the device count before anything is compiled,
and a mismatch says which `--config.mesh.*` values would fit.
"""

import math
from typing import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from mmjax.configs import ConfigError

AXES = ("data", "fsdp", "tensor")
# The batch is split over these axes; params are replicated over `data` and
# sharded over `fsdp`, so both count towards the data-parallel size.
BATCH_AXES = ("data", "fsdp")


def _flags(shape: Sequence[int]) -> str:
  return " ".join(f"--config.mesh.{a}={n}" for a, n in zip(AXES, shape))


def _suggest(requested: Sequence[int], num_devices: int) -> tuple[int, int, int]:
  """A mesh for `num_devices` that keeps the requested fsdp and tensor if it can."""
  _, fsdp, tensor = (max(n, 1) for n in requested)
  if num_devices % (fsdp * tensor) == 0:
    return (num_devices // (fsdp * tensor), fsdp, tensor)
  return (num_devices, 1, 1)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
  """Resolves config.mesh.{data,fsdp,tensor} (one may be -1) for `num_devices`.

  Returns (data, fsdp, tensor) with data * fsdp * tensor == num_devices.
  Raises ConfigError naming the device count and a mesh that fits.
  """
  sizes = []
  for axis in AXES:
    n = mesh_cfg[axis]
    if not isinstance(n, int) or isinstance(n, bool) or (n < 1 and n != -1):
      raise ConfigError(
          f"config.mesh.{axis}={n!r} must be a positive integer or -1 (all remaining "
          f"devices); e.g. {_flags(_suggest((1, 1, 1), num_devices))}.")
    sizes.append(n)
  free = [a for a, n in zip(AXES, sizes) if n == -1]
  if len(free) > 1:
    raise ConfigError(
        f"config.mesh sets {len(free)} axes to -1 ({', '.join(free)}); at most one may "
        f"fill the remaining devices. There are {num_devices} devices; e.g. "
        f"{_flags(_suggest((-1, 1, 1), num_devices))}.")
  fixed = math.prod(n for n in sizes if n != -1)
  if free:
    if num_devices % fixed:
      raise ConfigError(
          f"mesh {tuple(sizes)} cannot be filled: the fixed axes need a multiple of "
          f"{fixed} devices but there are {num_devices}; e.g. "
          f"{_flags(_suggest(sizes, num_devices))}.")
    sizes = [num_devices // fixed if n == -1 else n for n in sizes]
  elif fixed != num_devices:
    raise ConfigError(
        f"mesh {tuple(sizes)} needs {fixed} devices but there are {num_devices}; e.g. "
        f"{_flags(_suggest(sizes, num_devices))} or use -1 for one axis "
        "(--config.mesh.data=-1 takes all remaining devices).")
  return tuple(sizes)


def check_batch(batch_size: int, shape: Sequence[int], grad_accum_steps: int = 1) -> None:
  """Raises ConfigError unless `batch_size` splits evenly over the batch axes.

  The global batch is sharded over data x fsdp devices, and with gradient
  accumulation every device's rows are split again into `grad_accum_steps`
  microbatches, so the batch must be a multiple of data * fsdp * grad_accum_steps.
  """
  data, fsdp = shape[0], shape[1]
  multiple = data * fsdp * grad_accum_steps
  if batch_size % multiple:
    valid = max(multiple, batch_size // multiple * multiple)
    accum = (f" x config.optim.grad_accum_steps={grad_accum_steps}"
             if grad_accum_steps > 1 else "")
    raise ConfigError(
        f"config.batch_size={batch_size} is not divisible by {multiple} (mesh.data={data} "
        f"x mesh.fsdp={fsdp}{accum}): every device needs the same number of rows. Use a "
        f"multiple of {multiple}, e.g. --config.batch_size={valid}, or change "
        "config.mesh.data / config.mesh.fsdp.")


def _device_grid(shape: tuple[int, int, int], devices: Sequence) -> np.ndarray:
  """Devices arranged as `shape`, with `data` across TPU slices when there are several."""
  slices = {getattr(d, "slice_index", None) for d in devices}
  if len(slices) > 1 and None not in slices:
    # Multi-slice: only the data axis crosses the slow data-centre network
    # (one gradient all-reduce per step); fsdp and tensor stay inside a slice.
    n = len(slices)
    if shape[0] % n:
      raise ConfigError(
          f"mesh {shape} spans {n} TPU slices, so mesh.data must be a multiple of {n} "
          f"(data runs across slices); e.g. {_flags(_suggest(shape, len(devices)))}.")
    return mesh_utils.create_hybrid_device_mesh(
        (shape[0] // n, shape[1], shape[2]), (n, 1, 1), devices,
        allow_split_physical_axes=True)
  try:
    # Lays the axes out along the physical topology (ICI rings on TPU).
    return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError):
    # Subsets of a TPU topology (e.g. tests using devices[:1]) have no
    # topology-aware layout; any order is correct, just possibly slower.
    return np.asarray(devices, dtype=object).reshape(shape)


def make_mesh(mesh_cfg, devices: Sequence | None = None) -> Mesh:
  """The ("data", "fsdp", "tensor") mesh over `devices` (default: all devices).

  Axis types are Auto: jit places arrays from in/out shardings and
  `with_sharding_constraint`, GSPMD-style.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  return Mesh(_device_grid(shape, devices), AXES, axis_types=(AxisType.Auto,) * len(AXES))
