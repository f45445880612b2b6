"""Paths that may be local or on an object store: every file a run reads or writes.

A workdir, a teacher, a warm start or an export may be `gs://BUCKET/...` as
well as a local path. Everything goes through these few functions, built on
etils `epath` (the path library orbax itself uses; gs:// goes through fsspec's
gcsfs, and orbax writes arrays through tensorstore's own GCS driver).

Two differences from a local disk shape the code that calls them:

  * An object store has no append and no atomic rename, but a single upload
    is atomic. So `write_bytes` uploads a whole object at once remotely and
    writes a temporary file then `os.replace`s it locally: a reader never sees
    half a file either way.
  * Several processes of one job share the workdir. Temporary names carry the
    host, the process id and a random suffix (`unique_name`), since containers
    often give every process the same pid.

Errors of the store (no such bucket, no credentials, no permission, a full or
read-only disk) become `StorageError` with one line saying what to change
(`explain`).
"""

import io
import os
import socket
import uuid

from etils import epath

REMOTE_PREFIXES = ("gs://", "s3://")


class StorageError(OSError):
  """A path that cannot be read or written; the message says what to change."""


def is_remote(path) -> bool:
  """True for object-store paths (gs://, s3://)."""
  return os.fspath(path).startswith(REMOTE_PREFIXES)


def resolve(path) -> str:
  """An absolute local path, or the remote path unchanged (no trailing /)."""
  path = os.fspath(path)
  return path.rstrip("/") if is_remote(path) else os.path.abspath(path)


def join(first, *rest) -> str:
  first = os.fspath(first)
  if is_remote(first):
    return "/".join([first.rstrip("/"), *(os.fspath(p).strip("/") for p in rest)])
  return os.path.join(first, *rest)


def basename(path) -> str:
  return os.path.basename(os.fspath(path).rstrip("/"))


def dirname(path) -> str:
  path = os.fspath(path).rstrip("/")
  return path.rsplit("/", 1)[0] if is_remote(path) else os.path.dirname(path)


def _path(path) -> epath.Path:
  return epath.Path(os.fspath(path))


def _fresh(path) -> None:
  """Drops gcsfs's cached listings of `path`'s folder: another process (or
  orbax through tensorstore) may have written there since."""
  if is_remote(path):
    fs = _path(path)._backend.fs(os.fspath(path))  # pylint: disable=protected-access
    fs.invalidate_cache(dirname(path))
    fs.invalidate_cache(os.fspath(path))


def exists(path) -> bool:
  _fresh(path)
  return _path(path).exists()


def isdir(path) -> bool:
  _fresh(path)
  return _path(path).is_dir()


def isfile(path) -> bool:
  _fresh(path)
  return _path(path).is_file()


def listdir(path) -> list[str]:
  """Names in the folder `path` (sorted); [] if it does not exist."""
  if not isdir(path):
    return []
  return sorted(p.name for p in _path(path).iterdir())


def makedirs(path) -> None:
  _path(path).mkdir(parents=True, exist_ok=True)


def read_bytes(path) -> bytes:
  return _path(path).read_bytes()


def read_text(path) -> str:
  return _path(path).read_text()


def unique_name(prefix: str) -> str:
  """`prefix.<host>.<pid>.<random>`: unique across the processes and hosts of a job."""
  return f"{prefix}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


def write_bytes(path, data: bytes) -> None:
  """Writes `path` atomically: a reader sees the old file or the new one."""
  path = os.fspath(path)
  if is_remote(path):
    _path(path).write_bytes(data)  # one upload: objects appear whole or not at all
    return
  tmp = unique_name(path + ".tmp")
  try:
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(path, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def remove(path) -> None:
  _path(path).unlink()


def rename(src, dst) -> None:
  """Moves a file or folder (remotely a copy then a delete, object by object)."""
  if is_remote(src):
    _path(src).rename(_path(dst))
  else:
    os.rename(src, dst)


def save_figure(fig, path, **savefig_kwargs) -> str:
  """Saves a matplotlib figure to `path` (local or remote) as PNG."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", **savefig_kwargs)
  write_bytes(path, buf.getvalue())
  return os.fspath(path)


def check_credentials(path) -> None:
  """Raises StorageError now if `path` is on GCS and no credentials are found.

  Without this, gcsfs falls back to anonymous access and the first write
  fails a minute later as a network error. Skipped when STORAGE_EMULATOR_HOST
  points the clients at an emulator (which needs none).
  """
  if not os.fspath(path).startswith("gs://") or os.environ.get("STORAGE_EMULATOR_HOST"):
    return
  import google.auth  # pylint: disable=g-import-not-at-top
  try:
    google.auth.default()
  except Exception as e:  # pylint: disable=broad-except
    raise StorageError(explain(e, path, "use")) from e


def explain(error: BaseException, path, doing: str) -> str:
  """One line: what failed at `path` while `doing`, why, and what to change."""
  path = os.fspath(path)
  text = f"{type(error).__name__}: {error}"
  lowered = text.lower()
  if is_remote(path):
    bucket = path.split("://", 1)[1].split("/", 1)[0]
    if ("credentials" in lowered or "defaultcredentialserror" in lowered
        or "refresherror" in lowered or "unauthenticated" in lowered or "401" in text):
      return (f"cannot {doing} {path}: no usable Google Cloud credentials ({_first(text)}); "
              "run `gcloud auth application-default login`, or set "
              "GOOGLE_APPLICATION_CREDENTIALS to a service-account key.")
    if "403" in text or "forbidden" in lowered or "permission" in lowered:
      return (f"cannot {doing} {path}: permission denied ({_first(text)}); grant this "
              f"account storage.objectAdmin on gs://{bucket}, or choose another bucket.")
    if (isinstance(error, FileNotFoundError) or "404" in text or "nosuchbucket" in lowered
        or "not found" in lowered):
      return (f"cannot {doing} {path}: bucket gs://{bucket} does not exist "
              f"({_first(text)}); create it (gcloud storage buckets create gs://{bucket}) "
              "or fix the name.")
    return f"cannot {doing} {path}: {_first(text)}; check the bucket and the network."
  errno = getattr(error, "errno", None)
  if errno == 28:  # ENOSPC
    return f"cannot {doing} {path}: the disk is full; free space or choose another path."
  if errno in (13, 30):  # EACCES, EROFS
    return (f"cannot {doing} {path}: {getattr(error, 'strerror', None) or _first(text)}; "
            "choose a writable path.")
  return f"cannot {doing} {path}: {_first(text)}."


def _first(text: str) -> str:
  return text.strip().splitlines()[0][:200] if text.strip() else "unknown error"
