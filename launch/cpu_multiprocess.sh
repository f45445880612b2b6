#!/usr/bin/env bash
# Runs COMMAND in NUM_PROCESSES local processes that form one JAX job over
# 127.0.0.1 (gloo CPU collectives), each with DEVICES_PER_PROCESS simulated CPU
# devices: the way multi-host code is tested on one machine.
#
#   bash launch/cpu_multiprocess.sh 2 4 python -m mmjax.train \
#       --config experiments/shapes_siglip.py --workdir runs/mp
#
# Process 0 prints to the terminal; the others write DIR/process_<i>.log
# (DIR = $MMJAX_LOG_DIR or a temporary directory), shown if they fail. Exits
# non-zero if any process fails, after stopping the others.
set -uo pipefail
if [ "$#" -lt 3 ]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS COMMAND..." >&2
  exit 2
fi
NUM="$1"; DEVICES="$2"; shift 2
case "$NUM$DEVICES" in *[!0-9]*) echo "NUM_PROCESSES and DEVICES_PER_PROCESS must be positive integers" >&2; exit 2;; esac
LOG_DIR="${MMJAX_LOG_DIR:-$(mktemp -d)}"
mkdir -p "$LOG_DIR"
PYTHON_BIN="${PYTHON:-python3}"
command -v python >/dev/null 2>&1 && PYTHON_BIN=python
PORT="$("$PYTHON_BIN" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

pids=()
for ((i = 0; i < NUM; i++)); do
  env MMJAX_COORDINATOR="127.0.0.1:$PORT" MMJAX_NUM_PROCESSES="$NUM" MMJAX_PROCESS_ID="$i" \
      JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$DEVICES" \
      "$@" > >(if [ "$i" -eq 0 ]; then cat; else cat > "$LOG_DIR/process_$i.log"; fi) 2>&1 &
  pids+=("$!")
done

# Poll, so that whichever process fails first is noticed at once: a failed one
# must not leave the others blocked on it at the next collective until a timeout.
running=("${!pids[@]}")
while [ "${#running[@]}" -gt 0 ]; do
  still=()
  for i in "${running[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then still+=("$i"); continue; fi
    wait "${pids[$i]}"
    rc=$?
    if [ "$rc" -ne 0 ]; then
      echo "process $i exited with status $rc; stopping the others (logs: $LOG_DIR)" >&2
      [ "$i" -ne 0 ] && tail -n 30 "$LOG_DIR/process_$i.log" >&2
      kill "${pids[@]}" 2>/dev/null
      wait 2>/dev/null
      exit "$rc"
    fi
  done
  running=("${still[@]}")
  [ "${#running[@]}" -gt 0 ] && sleep 0.5
done
exit 0
