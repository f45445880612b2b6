"""Checks the active environment against requirements/lock.txt.

For every package pinned in the lock, compares the version `pip freeze` reports
in this interpreter's environment with the pinned one; prints each difference
(`name: installed X, locked Y`, or `name: missing, locked Y`) and exits 1 if
there is any. Packages installed but not in the lock (the optional `bench`
extra, linters, ...) are not checked. Run it with the environment's Python:

  source launch/_venv.sh test && python launch/check_lock.py [LOCK]
"""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_LOCK = os.path.join(ROOT, "requirements", "lock.txt")


def normalize(name):
  """PEP 503: lower case, runs of -, _ and . become one -."""
  return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(lines):
  """{normalised name: (name, version)} from `name==version` lines."""
  pins = {}
  for line in lines:
    line = line.split("#", 1)[0].strip()
    if not line:
      continue
    if "==" in line:
      name, version = line.split("==", 1)
      name = name.split("[", 1)[0].strip()
      pins[normalize(name)] = (name, version.split(";", 1)[0].strip())
    elif " @ " in line:  # installed from a URL or a local path
      name, url = line.split(" @ ", 1)
      pins[normalize(name)] = (name.strip(), "@ " + url.strip())
  return pins


def same_version(installed, locked):
  if installed == locked:
    return True
  try:
    from packaging.version import InvalidVersion, Version
  except ImportError:
    return False
  try:
    return Version(installed) == Version(locked)
  except InvalidVersion:
    return False


def main(argv):
  lock_path = argv[1] if len(argv) > 1 else DEFAULT_LOCK
  with open(lock_path) as f:
    locked = read_pins(f)
  freeze = subprocess.run(
      [sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
      check=True, capture_output=True, text=True).stdout
  installed = read_pins(freeze.splitlines())
  problems = 0
  for key in sorted(locked):
    name, want = locked[key]
    if key not in installed:
      print(f"{name}: missing, locked {want}")
      problems += 1
    elif not same_version(installed[key][1], want):
      print(f"{name}: installed {installed[key][1]}, locked {want}")
      problems += 1
  shown = os.path.relpath(lock_path, ROOT) if lock_path == DEFAULT_LOCK else lock_path
  if problems:
    print(f"{problems} of {len(locked)} locked packages differ from {shown} in "
          f"{sys.prefix}.", file=sys.stderr)
    if lock_path == DEFAULT_LOCK:
      print("To reinstall at the locked versions: touch requirements/lock.txt && "
            "source launch/_venv.sh test", file=sys.stderr)
    return 1
  print(f"{len(locked)} locked packages match {shown} in {sys.prefix}.")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
