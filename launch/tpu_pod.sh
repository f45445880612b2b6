#!/usr/bin/env bash
# Runs one command on every worker of a Cloud TPU VM pod slice, the way JAX
# multi-host jobs run: the same program on all hosts, which find each other
# through the TPU metadata (jax.distributed.initialize() needs no arguments there).
#
#   TPU_NAME=my-v5e-256 ZONE=us-west4-a \
#     bash launch/tpu_pod.sh create            # once: create the slice
#   TPU_NAME=my-v5e-256 ZONE=us-west4-a \
#     bash launch/tpu_pod.sh run python -m mmjax.train \
#       --config experiments/shapes_siglip.py --workdir gs://BUCKET/runs/siglip
#   TPU_NAME=... ZONE=... bash launch/tpu_pod.sh delete
#
# `run` copies this checkout to every worker (gcloud scp), installs it into a
# virtual environment with jax[tpu] at the versions of requirements/lock.txt,
# and starts the command on all workers at once; it returns when every worker
# has finished. Preempted? Run the same `run` again: training resumes from the
# workdir's latest checkpoint.
# Settings: TPU_NAME, ZONE (required); ACCELERATOR_TYPE (default v5litepod-256),
# RUNTIME_VERSION (default v2-alpha-tpuv5-lite), PROJECT (default: gcloud's).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5litepod-256}"
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all \
    --command="$1"
}

case "${1:-}" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --quiet
    ;;
  run)
    shift
    [ "$#" -gt 0 ] || { echo "usage: $0 run COMMAND..." >&2; exit 2; }
    tar -C "$ROOT" --exclude=.venv --exclude=runs --exclude=.git -czf /tmp/mmjax.tgz .
    gcloud compute tpus tpu-vm scp /tmp/mmjax.tgz "$TPU_NAME":~/mmjax.tgz --zone="$ZONE" \
      $PROJECT_FLAG --worker=all
    ssh_all "mkdir -p ~/mmjax && tar -xzf ~/mmjax.tgz -C ~/mmjax && cd ~/mmjax && \
      ( [ -x .venv/bin/python ] || python3 -m venv .venv ) && \
      .venv/bin/pip install -q -c requirements/lock.txt -e . 'jax[tpu]' && \
      MMJAX_DISTRIBUTED=auto .venv/bin/$(printf '%q ' "$@")"
    ;;
  *)
    echo "usage: $0 create | run COMMAND... | delete" >&2
    exit 2
    ;;
esac
