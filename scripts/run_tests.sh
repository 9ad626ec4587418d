#!/usr/bin/env bash
# Install everything needed (first run) and run the test suite on the CPU. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$REPO"
# CPU-friendly nnU-Net settings for the subprocesses the tests start (tests set the rest themselves)
export nnUNet_compile=f
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider --durations=15 tests "$@"
