#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install nnunet_ssl with its test dependencies.
# Sourced by demo.sh and run_tests.sh. VENV overrides the location (default: .venv in the repository).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating virtual environment $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
# plain pip: nnunetv2 pulls torch; an editable install keeps the shim folder inside the checkout
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO[test]" 2>&1 \
  | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import nnunetv2, nnunet_ssl.trainers" || { echo "installation failed" >&2; exit 1; }
export PATH="$VENV/bin:$PATH"
# nnU-Net's progress bars and our tables (±) are UTF-8, whatever the machine's locale says
export PYTHONUTF8=1
