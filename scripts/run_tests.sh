#!/usr/bin/env bash
# Install everything needed (first run) and run the test suite on the CPU. Extra arguments go to pytest.
set -euo pipefail
case "${1:-}" in
  -h|--help)
    cat <<'EOF'
usage: run_tests.sh [pytest arguments ...]

Run the test suite on the CPU (python -m pytest tests, with nnUNet_compile=f), one test file per core (up to 4
worker processes, pytest-xdist). Every argument goes to pytest, e.g. `run_tests.sh -k splits -x`,
`run_tests.sh tests/unit/test_cdr.py` (only that file), `run_tests.sh -n 0` (no worker processes) or
`run_tests.sh --help_pytest` for pytest's own help. The first call creates the
Python environment (.venv, scripts/setup_env.sh) if there is none.

options:
  -h, --help     show this help message and exit
  --help_pytest  show pytest's help
EOF
    exit 0;;
esac
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$REPO"
# CPU-friendly nnU-Net settings for the subprocesses the tests start (tests set the rest themselves)
export nnUNet_compile=f
if [ "${1:-}" = --help_pytest ]; then exec "$VENV/bin/python" -m pytest --help; fi
# the whole suite unless a path under tests/ is given
SELECTION=(tests)
for arg in "$@"; do case "$arg" in tests*) SELECTION=();; esac; done
# one test file per worker process, up to 4 workers (most of an end-to-end test is single-threaded process
# start-up and nnU-Net's export workers); a module's fixtures are built once; `-n 0` runs everything in this process
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider --durations=15 -n auto --maxprocesses 4 --dist loadfile \
  ${SELECTION[@]+"${SELECTION[@]}"} "$@"
