#!/usr/bin/env bash
# Trains the default experiment (SigLIP on the embedded shapes dataset) into
# runs/default and prints the retrieval table. Extra arguments go to
# `python -m mmjax.train`, e.g.:
#   bash launch/local.sh --config experiments/shapes_clip.py --workdir runs/clip
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" ""
exec python -m mmjax.train "$@"
