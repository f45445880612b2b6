"""A local GCS emulator for the gs:// tests: started and stopped by the tests.

`gcp-storage-emulator` serves the GCS JSON API on 127.0.0.1 (no network
beyond the loopback), storing objects in a temporary folder. The clients find it through their standard
variables: STORAGE_EMULATOR_HOST (gcsfs, google-cloud-storage, and so etils
epath) and TENSORSTORE_GCS_HTTP_URL (tensorstore, which orbax writes arrays
through). gcsfs would first probe the bucket layout over gRPC and stall for a
minute; GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false turns that probe off.
"""

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time

BUCKET = "mmjax-test"

# Runs the emulator. Real GCS sends an object's generation with its bytes
# (x-goog-generation), and tensorstore's conditional reads of OCDBT manifests
# depend on it; the emulator's download handler omits it, so it is added here
# before the server module binds its routes.
_LAUNCH = """
import gcp_storage_emulator.handlers.objects as objects
_download = objects.download

def download(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"],
                                   request.params["object_id"])
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    except Exception:
        pass  # a missing object: the handler answers 404
    return _download(request, response, storage, *args, **kwargs)

objects.download = download
from gcp_storage_emulator.__main__ import main
main()
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def variables(url: str) -> dict:
  return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
          "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


@contextlib.contextmanager
def emulator(bucket: str = BUCKET):
  """Runs the emulator with `bucket` created; yields the variables that point
  clients at it (also set in os.environ while it runs)."""
  port = _free_port()
  store = tempfile.TemporaryDirectory(prefix="gcs-emulator-")  # pylint: disable=consider-using-with
  proc = subprocess.Popen(
      [sys.executable, "-c", _LAUNCH,
       "start", "--host", "127.0.0.1", "--port", str(port), "-q",
       "--default-bucket", bucket],
      cwd=store.name, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 60
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      assert proc.poll() is None, "the GCS emulator exited at start"
      assert time.monotonic() < deadline, "the GCS emulator did not start in 60 s"
      time.sleep(0.1)
  env = variables(f"http://127.0.0.1:{port}")
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    yield env
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=30)
    store.cleanup()
