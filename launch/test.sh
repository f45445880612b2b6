#!/usr/bin/env bash
# Runs the test suite on 8 simulated CPU devices, in MMJAX_TEST_WORKERS (default
# 2) pytest-xdist workers, one test file per worker at a time (their module
# fixtures share compiled models). Extra arguments go to pytest, e.g.:
#   bash launch/test.sh tests/losses -x
#   bash launch/test.sh -m "not slow"      # the fast subset
#   bash launch/test.sh -n 0               # one process
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" test
exec python -m pytest -n "${MMJAX_TEST_WORKERS:-2}" --dist loadfile "$@"
