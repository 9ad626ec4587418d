#!/usr/bin/env bash
# Install everything needed (first run) and run the test suite on the CPU. Extra arguments go to pytest.
set -euo pipefail
case "${1:-}" in
  -h|--help)
    cat <<'EOF'
usage: run_tests.sh [pytest arguments ...]

Run the test suite on the CPU (python -m pytest tests, with nnUNet_compile=f). Every argument goes to pytest,
e.g. `run_tests.sh -k splits -x` or `run_tests.sh --help_pytest` for pytest's own help. The first call creates the
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
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider --durations=15 tests "$@"
