#!/usr/bin/env bash
# GPU check (speed against nnUNetTrainer and each trainer's pass-count floor, peak memory, AMP/compile, 3 AMP steps
# of every ablation variant) in one run that needs no dataset: see scripts/gpu_check.py for what it measures.
#
#   bash scripts/gpu_check.sh [gpu_check.py options]       e.g.  -o "$OUT"   (default output: benchmarks/gpu/)
#   bash scripts/gpu_check.sh --smoke -o /tmp/smoke         the same code on the CPU with tiny plans
#
# On a lent GPU machine (no package index): prepare the wheels in the project root first,
#   bash ../shared/device/make_wheels.sh                    -> .whl/ and .whl_sitk/ (git-ignored)
# then carry both along:  run command "bash scripts/gpu_check.sh -o $OUT", carry [".whl", ".whl_sitk"].
# When $PYTHON (default python3) cannot import nnunetv2, .whl/activate.sh installs the wheels first.
# The whole run, installation included, stays within GPU_CHECK_BUDGET_S seconds (default 450): gpu_check.py skips
# or stops what does not fit and still writes its table; `timeout` is the last resort.
set -uo pipefail
start=$(date +%s)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
budget=${GPU_CHECK_BUDGET_S:-450}
if ! "$PYTHON" -c "import importlib.util as u, sys; sys.exit(u.find_spec('nnunetv2') is None)" 2>/dev/null; then
  if [ ! -f .whl/activate.sh ]; then
    echo "[gpu_check.sh] $PYTHON cannot import nnunetv2 and there is no .whl/activate.sh" \
         "(run: bash ../shared/device/make_wheels.sh, and carry .whl and .whl_sitk)" >&2
    exit 3
  fi
  # shellcheck disable=SC1091
  source .whl/activate.sh || { echo "[gpu_check.sh] installing the wheels failed" >&2; exit 3; }
  echo "[gpu_check.sh] wheels installed after $(( $(date +%s) - start )) s"
fi
deadline=$(( start + budget ))
hard_limit=$(( deadline - $(date +%s) + 30 )); [ "$hard_limit" -ge 30 ] || hard_limit=30
PYTHONUTF8=1 timeout -s INT -k 20 "$hard_limit" \
  "$PYTHON" scripts/gpu_check.py --deadline "$deadline" "$@"
rc=$?
echo "[gpu_check.sh] total elapsed $(( $(date +%s) - start )) s (exit code $rc)"
exit $rc
