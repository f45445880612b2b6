#!/usr/bin/env bash
# Runs the test suite on 8 simulated CPU devices. Extra arguments go to pytest,
# e.g.:  bash launch/test.sh tests/losses -x
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" test
exec python -m pytest "$@"
