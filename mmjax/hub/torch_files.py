"""PyTorch state dicts (.pt / .bin / .safetensors) as NumPy, without torch.

  tensors = load_state_dict("open_clip_pytorch_model.bin")   # {name: np.ndarray}

A torch.save file (the zip format torch has written by default since 1.6) is
an archive holding `data.pkl`, a pickle of the state dict whose tensors refer
to raw storages stored beside it as `data/<key>`. The pickle is read with a
restricted Unpickler: only the handful of globals a state dict needs (the
tensor and parameter rebuild functions, the storage types, OrderedDict) are
resolved, each to a NumPy stand-in written here; any other global (a class, a
function such as os.system) stops the load before anything runs. So a file
from an untrusted source can at worst fail to load.

A training checkpoint ({"state_dict": ..., "epoch": ...}, open_clip's) is
unwrapped, and the "module." prefix DistributedDataParallel adds is stripped.
"""

import collections
import io
import os
import pickle
import zipfile
from typing import Any, Mapping

import ml_dtypes  # registers bfloat16 with NumPy (safetensors' numpy backend needs it)
import numpy as np

# torch storage type name -> NumPy dtype of its elements.
STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
# torch dtypes that torch saves through _rebuild_tensor_v3 (an untyped byte
# storage plus the dtype): the ones NumPy can hold.
V3_DTYPES = {"uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64}

RESAVE = ("re-save it with torch.save(model.state_dict(), path) in torch's default "
          "(zip) format, or with safetensors.torch.save_file")


class UnsafePickleError(pickle.UnpicklingError):
  """The file's pickle names something a state dict never needs."""


class _StorageType:
  """What the pickle's torch.<X>Storage global resolves to."""

  def __init__(self, name: str, dtype):
    self.name, self.dtype = name, np.dtype(dtype)


class _DType:
  """What a torch.<dtype> global (an argument of _rebuild_tensor_v3) resolves to."""

  def __init__(self, name: str):
    self.name = name


def _strided(storage: np.ndarray, offset: int, size, stride) -> np.ndarray:
  """storage viewed like a torch tensor: [*size] from element `offset` with
  element strides `stride` (a read-only view when contiguous, else a copy).
  Bounds are checked first: as_strided itself would read whatever memory lies
  past the storage."""
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
    raise pickle.UnpicklingError(f"bad tensor layout: size {size}, stride {stride}, "
                                 f"offset {offset}")
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.size:
    raise pickle.UnpicklingError(
        f"a tensor of size {size} (stride {stride}, offset {offset}) reaches element "
        f"{last} of a storage of {storage.size}: the file is damaged")
  count = int(np.prod(size))
  contiguous = tuple(int(np.prod(size[i + 1:])) for i in range(len(size)))
  if all(n == 1 or s == c for n, s, c in zip(size, stride, contiguous)):
    # The common case: a read-only view of the storage, no copy (checkpoints are large).
    return storage[offset:offset + count].reshape(size)
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], size, tuple(s * storage.itemsize for s in stride), writeable=False)
  return np.array(view)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _strided(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
  del requires_grad, backward_hooks, metadata
  if not isinstance(dtype, _DType) or dtype.name not in V3_DTYPES:
    raise UnsafePickleError(f"tensor dtype {getattr(dtype, 'name', dtype)!r} has no NumPy "
                            f"equivalent here; {RESAVE} after converting it to float32.")
  return _strided(storage.view(V3_DTYPES[dtype.name]), offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state
  return data


# (module, name) -> what it unpickles as. Nothing outside this table resolves.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "UntypedStorage"): _StorageType("UntypedStorage", np.uint8),
    ("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage", np.uint8),
    **{("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
    **{("torch", name): _DType(name) for name in V3_DTYPES},
}


class _StateDictUnpickler(pickle.Unpickler):
  """Unpickles torch's data.pkl, reading storages from the archive as NumPy."""

  def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, source: str):
    super().__init__(io.BytesIO(data))
    self._archive, self._prefix, self._source = archive, prefix, source
    self._storages: dict = {}

  def find_class(self, module, name):
    if (module, name) not in _ALLOWED:
      raise UnsafePickleError(
          f"{self._source} refers to {module}.{name}, which a state dict of tensors never "
          f"needs; refusing to load it (it could run code). If the file is a pickled model "
          f"rather than its state dict, {RESAVE}.")
    return _ALLOWED[(module, name)]

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
      raise UnsafePickleError(f"{self._source}: unexpected persistent id {pid!r:.80}")
    _, kind, key, _, numel = pid
    if key not in self._storages:
      try:
        raw = self._archive.read(f"{self._prefix}data/{key}")
      except KeyError:
        raise pickle.UnpicklingError(
            f"{self._source}: storage data/{key} is missing from the archive") from None
      need = int(numel) * kind.dtype.itemsize
      if len(raw) < need:
        raise pickle.UnpicklingError(f"{self._source}: storage data/{key} holds {len(raw)} "
                                     f"bytes, {need} expected: the file is truncated")
      self._storages[key] = np.frombuffer(raw, kind.dtype, int(numel))
    return self._storages[key]


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
      raise ValueError(f"{path} is a TorchScript archive (torch.jit.save, e.g. OpenAI's "
                       f"original CLIP files), not a state dict: load it with torch.jit.load "
                       f"and {RESAVE}.")
    if len(pickles) != 1:
      raise ValueError(f"{path} is a zip archive but not a torch.save file "
                       f"(no single data.pkl among {names[:5]}).")
    prefix = pickles[0][:-len("data.pkl")]
    return _StateDictUnpickler(archive.read(pickles[0]), archive, prefix, path).load()


def _unwrap(obj: Any, path: str) -> dict:
  """{"state_dict": sd, ...} -> sd, without a leading "module."; arrays only."""
  if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict (a mapping "
                     f"of tensor names to tensors).")
  not_arrays = sorted(str(k) for k, v in obj.items() if not isinstance(v, np.ndarray))
  if not_arrays:
    raise ValueError(f"{path}: these entries are not tensors: {not_arrays[:10]}; "
                     f"expected a state dict (or a checkpoint with one under 'state_dict').")
  if obj and all(k.startswith("module.") for k in obj):
    obj = {k[len("module."):]: v for k, v in obj.items()}
  return dict(obj)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A PyTorch checkpoint's tensors as NumPy arrays, without importing torch.

  path: a torch.save file (.pt / .bin / .pth, zip format) or a .safetensors file.
  Returns {name: array} in the file's own dtypes, except bfloat16, returned as
  float32 (NumPy has no native bfloat16); arrays may be read-only views of the
  file's bytes (copy before writing into one). Raises ValueError for other formats
  (legacy torch files, TorchScript archives) and UnsafePickleError when the
  pickle asks for anything but tensors.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no checkpoint file at {path}")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    tensors = load_file(path)
  elif zipfile.is_zipfile(path):
    tensors = _unwrap(_load_zip(path), path)
  else:
    with open(path, "rb") as f:
      head = f.read(2)
    what = "a legacy (pre-1.6, non-zip) torch file" if head[:1] == b"\x80" else "not a torch file"
    raise ValueError(f"{path} is {what}; mmjax reads torch's zip format and safetensors: "
                     f"{RESAVE}.")
  return {k: v.astype(np.float32) if v.dtype == ml_dtypes.bfloat16 else v
          for k, v in tensors.items()}
