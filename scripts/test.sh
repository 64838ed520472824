#!/usr/bin/env bash
# Set everything up, then run the whole test suite. Extra arguments go to pytest, e.g.
# `-m "not slow"` for the fast inner loop, `-k registry`, or `-n 0` for one process.
# The tests run in 3 processes (pytest-xdist), a test file to each at a time, the slowest files first
# (tests/conftest.py: SLOWEST_FILES; --no-loadscope-reorder keeps that order): most tests wait
# on servers, so 3 keep 2 cores busy (measured: see the README's Development section).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n "${TEST_PROCESSES:-3}" --dist loadfile --no-loadscope-reorder "$@"
