#!/usr/bin/env bash
# LA accuracy benchmark in one command: the LA h5 release -> nnU-Net raw dataset -> fingerprint -> planning at a
# coarse target spacing (nnU-Net's own planner option; predictions are still exported and scored at 0.625 mm) ->
# preprocessing -> scripts/benchmark_ssl.py (labelled-only, fully supervised and semi-supervised nnU-Net on one
# held-out block) -> the table of every finished run (scripts/benchmark_table.py). `--help` lists the options.
#
# Defaults are the CPU protocol of README "Accuracy on a CPU": 3.5 mm, 4 labelled, 16 held out, 2000 iterations,
# seed 0. `--spacing full` uses nnU-Net's default plans (0.625 mm, the papers' setting; needs a GPU). Finished
# runs are skipped and cut-off runs continue from their last epoch, so the command can be repeated to grow the table.
# Everything, the run records included, is written under the work folder unless `--record DIR` names another folder
# (e.g. the repository's benchmarks/LA_3p5mm, to commit the records).
set -euo pipefail
PROG=benchmark_la.sh
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  cat <<'EOF'
usage: benchmark_la.sh --h5 DIR [--spacing 3.5|full] [--budgets B ...] [--iterations N] [--seeds S ...]
                       [--trainers T ...] [--no_baseline] [--no_full] [-f F] [--work DIR] [--record DIR]
                       [-device cuda|cpu] [--threads N]

LA accuracy benchmark: the LA h5 release -> Dataset101_LA (nnU-Net raw) -> plans at a coarse spacing ->
scripts/benchmark_ssl.py (labelled-only, fully supervised and semi-supervised nnU-Net on one held-out block of 16
cases) -> the table of every finished run. Repeating the command skips finished runs and continues cut-off ones.

options:
  -h, --help         show this help message and exit
  --h5 DIR           (required) the LA h5 files: a folder of <case>/mri_norm2.h5 with train.list / test.list in it
                     or in its parent. Public release: the LA h5 files of the UA-MT repository
                     (github.com/yulequan/UA-MT, data/2018LA_Seg_Training Set), which come from the 2018 Atrial
                     Segmentation Challenge
  --spacing S        target spacing of the plans in mm, or 'full' for nnU-Net's default plans (0.625 mm, needs a
                     GPU) (default 3.5)
  --budgets B ...    numbers of labelled training cases (default 4)
  --iterations N     training iterations of every run, a multiple of 250 (epochs of 250 iterations) (default 2000)
  --seeds S ...      training seeds; every run is repeated once per seed (default 0)
  --trainers T ...   semi-supervised trainers (default: those of benchmark_ssl.py)
  --no_baseline      skip the labelled-only nnUNetTrainer runs
  --no_full          skip the fully supervised nnUNetTrainer run
  -f F               held-out block (fold) of the split: 0 = development fold, 1 and 2 = confirmation folds
                     (default 0)
  --work DIR         work folder: nnU-Net raw/preprocessed/results, runs, predictions and, by default, the run
                     records (default: bench_work/LA in the repository, or $WORK)
  --record DIR       write the run records and table.md here (default: <work>/records_<spacing tag>); records
                     of folds other than 0 go to DIR/fold_F
  -device D          cuda or cpu (default: cuda if available)
  --threads N        torch threads (1 keeps a CPU shared with other runs from thrashing)

The first call creates the Python environment (.venv, scripts/setup_env.sh) if there is none.
EOF
}

deprecated() { echo "$PROG: warning: $1 is deprecated, use $2" >&2; }

# every option is read before anything is set up, so --help and a bad option change nothing
SPACING=3.5; BUDGETS=(4); ITERATIONS=2000; SEEDS=(0); TRAINERS=(); EXTRA=(); DEVICE=()
H5=""; WORK="${WORK:-$REPO/bench_work/LA}"; RECORD=""; FOLD=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0;;
    --spacing|--iterations|-f|--fold|--h5|--work|--record|-device|--device|--threads)
      if [ $# -lt 2 ]; then echo "$PROG: error: $1 needs a value (see --help)" >&2; exit 2; fi
      case "$1" in
        --spacing) SPACING="$2";;
        --iterations) ITERATIONS="$2";;
        --fold) deprecated --fold -f; FOLD="$2";;
        -f) FOLD="$2";;
        --h5) H5="$2";;
        --work) WORK="$2";;
        --record) RECORD="$2";;
        --device) deprecated --device -device; DEVICE+=(-device "$2");;
        -device) DEVICE+=(-device "$2");;
        --threads) DEVICE+=(--threads "$2");;
      esac
      shift 2;;
    --no-baseline) deprecated --no-baseline --no_baseline; EXTRA+=(--no_baseline); shift;;
    --no-full) deprecated --no-full --no_full; EXTRA+=(--no_full); shift;;
    --no_baseline|--no_full) EXTRA+=("$1"); shift;;
    --budgets|--seeds|--trainers)
      opt="$1"; shift; vals=()
      while [ $# -gt 0 ] && [[ "$1" != -* ]]; do vals+=("$1"); shift; done
      case "$opt" in --budgets) BUDGETS=("${vals[@]}");; --seeds) SEEDS=("${vals[@]}");;
                     --trainers) TRAINERS=(--trainers ${vals[@]+"${vals[@]}"});; esac;;
    *) echo "$PROG: error: unknown option $1 (see --help)" >&2; exit 2;;
  esac
done
if [ -z "$H5" ]; then
  echo "$PROG: error: --h5 DIR is required: the folder of the LA h5 files (<case>/mri_norm2.h5 with train.list);" \
       "the public release is in the UA-MT repository, github.com/yulequan/UA-MT (see --help)" >&2
  exit 2
fi
if [ ! -d "$H5" ]; then echo "$PROG: error: --h5 $H5 is not a folder" >&2; exit 2; fi
if ! [[ "$ITERATIONS" =~ ^[0-9]+$ ]] || (( ITERATIONS < 250 || ITERATIONS % 250 )); then
  echo "$PROG: error: --iterations $ITERATIONS must be a positive multiple of 250 (epochs of 250)" >&2; exit 2
fi
if [ "$SPACING" = full ]; then PLANS=nnUNetPlans; TAG=full; else PLANS="nnUNetPlans_${SPACING//./p}"; TAG="${SPACING//./p}mm"; fi
RECORD="${RECORD:-$WORK/records_$TAG}"

source "$REPO/scripts/setup_env.sh"
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
python "$REPO/scripts/benchmark_ssl.py" -d 101 -c 3d_fullres -p "$PLANS" --budgets "${BUDGETS[@]}" --num_val 16 \
  --test_set val --epochs $((ITERATIONS / 250)) --iterations_per_epoch 250 --seeds "${SEEDS[@]}" \
  ${TRAINERS[@]+"${TRAINERS[@]}"} ${EXTRA[@]+"${EXTRA[@]}"} ${DEVICE[@]+"${DEVICE[@]}"} \
  -f "$FOLD" -o "$WORK/benchmark_$TAG$([ "$FOLD" = 0 ] || echo "_fold$FOLD")" --record "$RECORD"
TABLE_DIR="$RECORD$([ "$FOLD" = 0 ] || echo "/fold_$FOLD")"
python "$REPO/scripts/benchmark_table.py" "$TABLE_DIR" --output_file "$TABLE_DIR/table.md"
cat "$TABLE_DIR/table.md"
