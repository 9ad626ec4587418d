#!/usr/bin/env bash
# LA accuracy benchmark in one command: ../shared/data/LA_h5 -> nnU-Net raw dataset -> fingerprint -> planning at a
# coarse target spacing (nnU-Net's own planner option; predictions are still exported and scored at 0.625 mm) ->
# preprocessing -> scripts/benchmark_ssl.py (labelled-only, fully supervised and semi-supervised nnU-Net on one
# held-out block) -> the table of every finished run (scripts/benchmark_table.py).
#
#   bash scripts/benchmark_la.sh [--spacing 3.5|full] [--budgets 4] [--iterations 2000] [--seeds 0 1]
#        [--trainers nnUNetTrainerMeanTeacher ...] [--no-baseline] [--no-full] [--fold F] [--h5 DIR] [--work DIR]
#        [--record DIR] [--device cpu|cuda] [--threads N]
#
# Defaults are the CPU protocol of README "Accuracy on a CPU": 3.5 mm, 4 labelled, 16 held out, 2000 iterations,
# seed 0. `--spacing full` uses nnU-Net's default plans (0.625 mm, the papers' setting; needs a GPU). Finished
# runs are skipped and cut-off runs continue from their last epoch, so the command can be repeated to grow the table.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
SPACING=3.5; BUDGETS=(4); ITERATIONS=2000; SEEDS=(0); TRAINERS=(); EXTRA=(); DEVICE=()
H5="$REPO/../shared/data/LA_h5"; WORK="${WORK:-$REPO/bench_work/LA}"; RECORD=""; FOLD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --spacing) SPACING="$2"; shift 2;;
    --iterations) ITERATIONS="$2"; shift 2;;
    --fold) FOLD="$2"; shift 2;;  # held-out block: 0 = development fold, 1 and 2 = confirmation folds
    --h5) H5="$2"; shift 2;;
    --work) WORK="$2"; shift 2;;
    --record) RECORD="$2"; shift 2;;
    --device) DEVICE+=(--device "$2"); shift 2;;
    --threads) DEVICE+=(--num-threads "$2"); shift 2;;  # torch threads; 1 keeps a shared CPU from thrashing
    --no-baseline|--no-full) EXTRA+=("$1"); shift;;
    --budgets|--seeds|--trainers)
      opt="$1"; shift; vals=()
      while [ $# -gt 0 ] && [[ "$1" != --* ]]; do vals+=("$1"); shift; done
      case "$opt" in --budgets) BUDGETS=("${vals[@]}");; --seeds) SEEDS=("${vals[@]}");;
                     --trainers) TRAINERS=(--trainers ${vals[@]+"${vals[@]}"});; esac;;
    -h|--help) sed -n '2,14p' "$0"; exit 0;;
    *) echo "benchmark_la.sh: unknown option $1 (see --help)" >&2; exit 2;;
  esac
done
if [ "$SPACING" = full ]; then PLANS=nnUNetPlans; TAG=full; else PLANS="nnUNetPlans_${SPACING//./p}"; TAG="${SPACING//./p}mm"; fi
RECORD="${RECORD:-$REPO/benchmarks/LA_$TAG}"
if (( ITERATIONS % 250 )); then echo "benchmark_la.sh: --iterations must be a multiple of 250 (epochs of 250)" >&2; exit 2; fi
mkdir -p "$WORK"/{raw,preprocessed,results}
export nnUNet_raw="$WORK/raw" nnUNet_preprocessed="$WORK/preprocessed" nnUNet_results="$WORK/results"
PRE="$nnUNet_preprocessed/Dataset101_LA"
[ -f "$nnUNet_raw/Dataset101_LA/dataset.json" ] || python "$REPO/dataset_conversion/Dataset101_LA.py" -i "$H5"
[ -f "$PRE/dataset_fingerprint.json" ] || nnUNetv2_extract_fingerprint -d 101 -np 2
if [ ! -f "$PRE/$PLANS.json" ]; then
  if [ "$SPACING" = full ]; then nnUNetv2_plan_experiment -d 101
  else nnUNetv2_plan_experiment -d 101 -overwrite_target_spacing "$SPACING" "$SPACING" "$SPACING" -overwrite_plans_name "$PLANS"; fi
fi
DATA_ID=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['configurations']['3d_fullres']['data_identifier'])" "$PRE/$PLANS.json")
[ -d "$PRE/$DATA_ID" ] || nnUNetv2_preprocess -d 101 -plans_name "$PLANS" -c 3d_fullres -np 2
python "$REPO/scripts/benchmark_ssl.py" -d 101 -c 3d_fullres -p "$PLANS" --budgets "${BUDGETS[@]}" --val 16 \
  --test-set val --epochs $((ITERATIONS / 250)) --iters-per-epoch 250 --seeds "${SEEDS[@]}" \
  ${TRAINERS[@]+"${TRAINERS[@]}"} ${EXTRA[@]+"${EXTRA[@]}"} ${DEVICE[@]+"${DEVICE[@]}"} \
  -f "$FOLD" -o "$WORK/benchmark_$TAG$([ "$FOLD" = 0 ] || echo "_fold$FOLD")" --record-dir "$RECORD"
TABLE_DIR="$RECORD$([ "$FOLD" = 0 ] || echo "/fold_$FOLD")"
python "$REPO/scripts/benchmark_table.py" "$TABLE_DIR" -o "$TABLE_DIR/table.md"
cat "$TABLE_DIR/table.md"
