#!/usr/bin/env bash
# GPU check (speed against nnUNetTrainer and each trainer's pass-count floor, peak memory, AMP/compile, 3 AMP steps
# of every ablation variant, a -num_gpus 2 run of every method on a machine with 2 GPUs) in one run that needs no
# dataset: see scripts/gpu_check.py for what it measures.
#
#   bash scripts/gpu_check.sh [gpu_check.py options]       e.g.  -o OUT   (default output: ./gpu_check_results/)
#   bash scripts/gpu_check.sh --smoke -o /tmp/smoke         the same code on the CPU with tiny plans
#
# Needs a Python ($PYTHON, default python3) with the project installed (`pip install -e .` in the checkout, which
# pulls nnU-Net and torch). The whole run stays within GPU_CHECK_BUDGET_S seconds (default 450): gpu_check.py
# skips or stops what does not fit and still writes its table; `timeout` is the last resort.
set -uo pipefail
# --help: gpu_check.py's options (the same as this script's), before any check or work
case "${1:-}" in -h|--help) exec "${PYTHON:-python3}" "$(dirname "${BASH_SOURCE[0]}")/gpu_check.py" --help;; esac
start=$(date +%s)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
budget=${GPU_CHECK_BUDGET_S:-450}
if ! "$PYTHON" -c "import nnunetv2, nnunet_ssl" 2>/dev/null; then
  echo "gpu_check.sh: error: $PYTHON cannot import nnunetv2 and nnunet_ssl; install the project first" \
       "(pip install -e . in $(pwd)) or point PYTHON at the environment that has it" >&2
  exit 3
fi
deadline=$(( start + budget ))
hard_limit=$(( deadline - $(date +%s) + 30 )); [ "$hard_limit" -ge 30 ] || hard_limit=30
PYTHONUTF8=1 timeout -s INT -k 20 "$hard_limit" \
  "$PYTHON" scripts/gpu_check.py --deadline "$deadline" "$@"
rc=$?
echo "[gpu_check.sh] total elapsed $(( $(date +%s) - start )) s (exit code $rc)"
exit $rc
