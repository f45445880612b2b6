"""TPU slices described without a TPU: chip figures and libtpu's compile-only devices.

libtpu (the TPU runtime and compiler, a PyPI wheel) can describe a slice it is
not running on: `jax.experimental.topologies.get_topology_desc` returns one
compile-only device per chip, and `jit(...).lower(...).compile()` over a mesh
of them runs the real TPU compiler on this machine's CPU. Nothing here
allocates or runs anything on a TPU.

The compiler is found, in order, at $TPU_LIBRARY_PATH, in the installed
`libtpu` package (`pip install "jax[tpu]"`, as on a TPU VM), or in
`<sys.prefix>/libtpu-compiler` (where `launch/_venv.sh test` puts it, outside
the import path, so that training on a CPU or GPU machine in the same
environment never tries to start a TPU runtime).

NVIDIA GPUs plan the same way: jax's CUDA plugin (jax-cuda12-plugin and
jax-cuda12-pjrt, no CUDA libraries and no GPU needed) describes `h100:8` from
a written-down device description (TARGETS) and XLA:GPU compiles for it. It is
found importable (a `jax[cuda12]` install) or in `<sys.prefix>/gpu-compiler`.
"""

import dataclasses
import importlib.metadata
import importlib.util
import os
import re
import sys

from mmjax.configs import ConfigError

# Where launch/_venv.sh installs the compilers (pip install --target): not on sys.path.
COMPILER_DIR = os.path.join(sys.prefix, "libtpu-compiler")
GPU_COMPILER_DIR = os.path.join(sys.prefix, "gpu-compiler")
GiB = 2 ** 30


class PlanError(ConfigError):
  """A plan that cannot be made as asked; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation's published per-chip figures (Cloud TPU system pages).

  hbm_bytes: memory per chip. peak_flops: dense bfloat16 FLOP/s.
  hbm_bytes_per_s: memory bandwidth. ici_bytes_per_s: inter-chip bandwidth per
  chip, all links together, one direction. dims: the slice's torus dimensions.
  """
  name: str
  device_kind: str
  hbm_bytes: int
  peak_flops: float
  hbm_bytes_per_s: float
  ici_bytes_per_s: float
  dims: int
  # Cloud's accelerator-type name for a slice of n chips (v5p counts TensorCores).
  accelerator: str
  cores_per_chip_in_name: int = 1
  platform: str = "tpu"


CHIPS = {
    "v5e": Chip("v5e", "TPU v5 lite", 16 * GiB, 197e12, 819e9, 200e9, 2, "v5litepod"),
    "v5p": Chip("v5p", "TPU v5", 95 * GiB, 459e12, 2765e9, 600e9, 3, "v5p", 2),
    "v6e": Chip("v6e", "TPU v6 lite", 32 * GiB, 918e12, 1640e9, 448e9, 2, "v6e"),
}
# GPUs: ici_bytes_per_s is NVLink's per-GPU bandwidth, one direction; dims 2 is
# (hosts, GPUs per host). hbm_bytes is what CUDA reports as usable on an H100 SXM.
GPUS = {
    "h100": Chip("h100", "NVIDIA H100 80GB HBM3", 84_929_347_584, 989e12, 3.35e12, 450e9, 2,
                 "h100", platform="cuda"),
}
# XLA:GPU's description of the device it compiles for (a GpuTargetConfigProto in
# text form), from NVIDIA's H100 SXM5 figures: 132 SMs at 1.98 GHz, 50 MiB of L2,
# 3.35 TB/s, 228 KiB of shared memory per SM (227 KiB usable by one block),
# compute capability 9.0; CUDA 12.8 and cuDNN 9.8 as the runtime it will meet.
TARGETS = {"h100": """gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132
  fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: 3352320000000 l2_cache_size: 52428800
  clock_rate_ghz: 1.98 device_memory_size: 84929347584
  shared_memory_per_block_optin: 232448 cuda_compute_capability { major: 9 minor: 0 }
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
runtime_version { major: 12 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""}
# Slice names as Cloud sells them -> the topology libtpu describes.
ALIASES = {
    "v5e-4": "v5e:2x2", "v5e-8": "v5e:2x4", "v5e-16": "v5e:4x4", "v5e-32": "v5e:4x8",
    "v5e-64": "v5e:8x8", "v5e-128": "v5e:8x16", "v5e-256": "v5e:16x16",
    "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-32": "v5p:2x2x4",
    "v5p-64": "v5p:2x4x4", "v5p-128": "v5p:4x4x4", "v5p-256": "v5p:4x4x8",
    "v5p-512": "v5p:4x8x8", "v5p-1024": "v5p:8x8x8",
    "v6e-4": "v6e:2x2", "v6e-8": "v6e:2x4", "v6e-16": "v6e:4x4", "v6e-32": "v6e:4x8",
    "v6e-64": "v6e:8x8", "v6e-128": "v6e:8x16", "v6e-256": "v6e:16x16",
}
KNOWN_FORMS = ("v5e:AxB (e.g. v5e:4x4, v5e:16x16), v5p:AxBxC (e.g. v5p:4x4x4), "
               "v6e:AxB (e.g. v6e:16x16), a slice name (" + ", ".join(ALIASES) + "), or "
               "GPUs as h100:N (N GPUs on one host) or h100:HxN (H hosts of N)")
_NAME = re.compile(r"^(v5e|v5p|v6e):(\d+(?:x\d+)+)$")
_GPU_NAME = re.compile(r"^(h100):(?:(\d+)x)?(\d+)$")


@dataclasses.dataclass(frozen=True)
class Slice:
  """A parsed topology: `name` as libtpu spells it, its chip and chip count."""
  name: str
  chip: Chip
  shape: tuple[int, ...]

  @property
  def chips(self) -> int:
    n = 1
    for d in self.shape:
      n *= d
    return n

  @property
  def accelerator_type(self) -> str:
    return f"{self.chip.accelerator}-{self.chips * self.chip.cores_per_chip_in_name}"


def parse(name: str) -> Slice:
  """'v5e:16x16', 'v5e-256', 'h100:8', ... -> Slice; PlanError listing the known forms."""
  gpu = _GPU_NAME.match(name.strip().lower())
  if gpu:
    hosts, per_host = int(gpu.group(2) or 1), int(gpu.group(3))
    if hosts < 1 or per_host < 1:
      raise PlanError(f"--topology {name}: give at least one GPU, e.g. h100:8.")
    return Slice(f"{gpu.group(1)}:{hosts}x{per_host}", GPUS[gpu.group(1)], (hosts, per_host))
  canonical = ALIASES.get(name.strip().lower(), name.strip())
  m = _NAME.match(canonical)
  if name.strip().lower().startswith("v4"):
    raise PlanError(
        f"--topology {name}: TPU v4 is not planned: libtpu describes a v4 slice as two "
        "devices per chip (its TensorCores), while jax runs v4 as one megacore device "
        "per chip, so per-chip memory and FLOPs would be wrong. Known forms: "
        f"{KNOWN_FORMS}.")
  if not m:
    raise PlanError(f"--topology {name!r} is not a known TPU topology; use one of: "
                    f"{KNOWN_FORMS}.")
  chip = CHIPS[m.group(1)]
  shape = tuple(int(d) for d in m.group(2).split("x"))
  if len(shape) != chip.dims or min(shape) < 1:
    example = "x".join(["4"] * chip.dims)
    raise PlanError(f"--topology {name}: a {chip.name} slice has {chip.dims} dimensions "
                    f"(e.g. {chip.name}:{example}); known forms: {KNOWN_FORMS}.")
  return Slice(canonical, chip, shape)


def _importable_libtpu() -> str | None:
  spec = importlib.util.find_spec("libtpu")
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(list(spec.submodule_search_locations)[0], "libtpu.so")
  return path if os.path.isfile(path) else None


def _version_at(directory: str) -> str | None:
  for dist in importlib.metadata.distributions(path=[directory]):
    if (dist.metadata["Name"] or "").lower() == "libtpu":
      return dist.version
  return None


def required_libtpu() -> str | None:
  """The libtpu versions this jax was released with ('==0.0.42.*'), from jax's
  own `tpu` extra; None if jax does not say."""
  for req in importlib.metadata.requires("jax") or ():
    name, _, rest = req.partition(";")
    if name.strip().startswith("libtpu") and "tpu" in rest:
      return name.strip()[len("libtpu"):].strip()
  return None


def install_command() -> str:
  spec = required_libtpu() or ""
  return (f'pip install --no-deps --target {COMPILER_DIR} "libtpu{spec}" (what '
          f'launch/_venv.sh test does; or pip install "jax[tpu]=={_jax_version()}")')


def _jax_version() -> str:
  return importlib.metadata.version("jax")


def find_libtpu() -> tuple[str, str | None]:
  """(path of libtpu.so, its version or None when only a path was given).

  PlanError with the install command when there is none, or when its version
  is not the one this jax was built against (the compiler's API moves with
  jax's: a mismatch fails deep inside the compile, or silently differs).
  """
  from_env = os.environ.get("TPU_LIBRARY_PATH")
  if from_env:
    if not os.path.isfile(from_env):
      raise PlanError(f"TPU_LIBRARY_PATH={from_env} does not exist; unset it or point it "
                      f"at a libtpu.so. To install the compiler: {install_command()}.")
    return from_env, None
  path = _importable_libtpu()
  version = importlib.metadata.version("libtpu") if path else None
  if path is None:
    candidate = os.path.join(COMPILER_DIR, "libtpu", "libtpu.so")
    if os.path.isfile(candidate):
      path, version = candidate, _version_at(COMPILER_DIR)
  if path is None:
    raise PlanError("the TPU compiler (libtpu) is not installed, and planning compiles "
                    f"for TPU. Install it: {install_command()}.")
  check_version(version)
  return path, version


def check_version(version: str | None, required: str | None = None) -> None:
  """PlanError unless libtpu `version` satisfies jax's pin (e.g. '==0.0.42.*')."""
  required = required if required is not None else required_libtpu()
  if version is None or not required:
    return
  from packaging.specifiers import SpecifierSet  # pylint: disable=g-import-not-at-top
  if version not in SpecifierSet(required):
    raise PlanError(
        f"libtpu {version} is installed, but jax {_jax_version()} needs libtpu{required}. "
        f"Install the matching one: {install_command()}, or the jax that libtpu "
        f"{version} was released with.")


def _quiet_runtime(slice_: Slice) -> None:
  """What libtpu would read from a TPU VM's metadata server, given up front:
  without it, it prints warnings about worker hostnames and accelerator type
  on every start. A real TPU VM's own values are kept."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", slice_.accelerator_type)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # libtpu takes /tmp/libtpu_lockfile so that two processes never drive one
  # TPU; with no chip attached there is nothing to guard, and plans (tests on
  # several workers, a search beside a plan) may compile side by side.
  from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
  if hardware_utils.num_available_tpu_chips_and_device_id()[0] == 0:
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def _load_gpu_compiler() -> None:
  """Registers jax's CUDA plugin for its compiler (no GPU, no CUDA libraries)."""
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  # Jax's own plugin discovery runs once, now, before the compiler's directory
  # is on the path: otherwise it would find the plugin again at its first
  # backend use and fail to register it twice.
  xla_bridge._discover_and_register_pjrt_plugins()  # pylint: disable=protected-access
  if not _has_cuda_plugin() and os.path.isdir(GPU_COMPILER_DIR):
    sys.path.append(GPU_COMPILER_DIR)  # jax_plugins is a namespace package
    importlib.invalidate_caches()
  if not _has_cuda_plugin():
    raise PlanError("planning for GPUs needs jax's CUDA plugin, which is not installed. "
                    f"Install it: {gpu_install_command()}.")
  plugin_version = importlib.metadata.version("jax-cuda12-plugin") if _installed(
      "jax-cuda12-plugin") else _gpu_version()
  if plugin_version and plugin_version != _jax_version():
    raise PlanError(f"jax-cuda12-plugin {plugin_version} is installed, but jax "
                    f"{_jax_version()} needs the same version: {gpu_install_command()}.")
  if "cuda" in xla_bridge._topology_factories:  # pylint: disable=protected-access
    return
  import jax_plugins.xla_cuda12 as plugin  # pylint: disable=g-import-not-at-top
  plugin.initialize()


def _has_cuda_plugin() -> bool:
  try:
    return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
  except ModuleNotFoundError:  # no jax_plugins namespace at all
    return False


def _installed(name: str) -> bool:
  try:
    importlib.metadata.version(name)
    return True
  except importlib.metadata.PackageNotFoundError:
    return False


def _gpu_version() -> str | None:
  for dist in importlib.metadata.distributions(path=[GPU_COMPILER_DIR]):
    if (dist.metadata["Name"] or "").lower() == "jax-cuda12-plugin":
      return dist.version
  return None


def gpu_install_command() -> str:
  v = _jax_version()
  return (f'pip install --no-deps --target {GPU_COMPILER_DIR} "jax-cuda12-plugin=={v}" '
          f'"jax-cuda12-pjrt=={v}" (what launch/_venv.sh test does)')


def _gpu_devices(slice_: Slice) -> list:
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  _load_gpu_compiler()
  hosts, per_host = slice_.shape
  try:
    desc = topologies.get_topology_desc(platform="cuda", topology=f"1x{hosts}x{per_host}",
                                        target_config=TARGETS[slice_.chip.name])
  except Exception as e:  # jax raises its runtime error with XLA's message
    raise PlanError(f"jax's CUDA plugin cannot describe --topology {slice_.name}: {e}") from e
  return list(desc.devices)


def devices(slice_: Slice) -> list:
  """The slice's compile-only devices, one per chip, in the compiler's order.

  Jax's own runtime stays on the CPU (JAX_PLATFORMS=cpu unless set): the TPU
  plugin (or the CUDA one) is loaded for its compiler only.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if jax.config.jax_platforms is None:
    jax.config.update("jax_platforms", "cpu")
  if slice_.chip.platform == "cuda":
    found = _gpu_devices(slice_)
    if len(found) != slice_.chips:
      raise PlanError(f"the CUDA plugin describes {slice_.name} as {len(found)} devices.")
    return found
  path, _ = find_libtpu()
  _quiet_runtime(slice_)
  os.environ.setdefault("TPU_LIBRARY_PATH", path)
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    desc = topologies.get_topology_desc(platform="tpu", topology_name=slice_.name)
  except Exception as e:  # jax raises its runtime error with libtpu's message
    raise PlanError(f"libtpu cannot describe --topology {slice_.name}: {e}. Known forms: "
                    f"{KNOWN_FORMS}.") from e
  found = list(desc.devices)
  if len(found) != slice_.chips:
    raise PlanError(f"libtpu describes {slice_.name} as {len(found)} devices, not "
                    f"{slice_.chips} chips; plan another topology.")
  return found
