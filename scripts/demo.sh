#!/usr/bin/env bash
# What the plugin is for, end to end on the built-in synthetic dataset (2d images, two foreground classes):
#   generate -> nnUNetv2_plan_and_preprocess -> nnUNetv2_ssl_preprocess_unlabeled -> nnUNetv2_ssl_split
#   -> nnUNetv2_train -tr nnUNetTrainer_demo (labelled-only)  and  -tr nnUNetTrainerCRLN_demo (semi-supervised)
#   -> nnUNetv2_predict -> nnUNetv2_ssl_evaluate -> both results side by side (scripts/compare_evaluations.py)
# Both trainers see the same labelled case(s) and train for the same 800 iterations; CRLN also sees the unlabelled
# pool. Everything is written under demo_work/ (override with WORK=...; TRAINER=... picks another *_demo trainer).
# Uses the GPU when torch sees one.
set -euo pipefail
usage() {
  cat <<'EOF'
usage: demo.sh [-h]

End-to-end demo on a generated synthetic dataset (2d, two foreground classes): plan and preprocess, preprocess
the unlabelled images, write a label-budget split, train nnUNetTrainer_demo (labelled only) and
nnUNetTrainerCRLN_demo (semi-supervised) for the same 800 iterations, predict the 20 test images, evaluate both
and print them side by side. Uses the GPU when torch sees one. Finished trainings are kept and reused.

options:
  -h, --help  show this help message and exit

environment variables:
  WORK        work folder for everything the demo writes (default: demo_work in the repository)
  TRAINER     the semi-supervised *_demo trainer (default: nnUNetTrainerCRLN_demo)
  LABELED     labelled training cases of the split (default: 1)

The first call creates the Python environment (.venv, scripts/setup_env.sh) if there is none.
EOF
}
case "${1:-}" in
  -h|--help) usage; exit 0;;
  "") ;;
  *) echo "demo.sh: error: unknown argument $1 (see --help; settings are environment variables)" >&2; exit 2;;
esac
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
WORK="${WORK:-$REPO/demo_work}"
BASELINE=nnUNetTrainer_demo
TRAINER="${TRAINER:-nnUNetTrainerCRLN_demo}"
LABELED="${LABELED:-1}"   # labelled training cases of the split
ID=989; NAME=Dataset989_SyntheticDemo2D
mkdir -p "$WORK"/{raw,preprocessed,results}
export nnUNet_raw="$WORK/raw" nnUNet_preprocessed="$WORK/preprocessed" nnUNet_results="$WORK/results"
eval "$(nnUNetv2_ssl_env)"   # lets the stock nnUNetv2_train / nnUNetv2_predict find the plugin's trainers
DEVICE=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
# nnU-Net starts 8 export/preprocessing workers by default; on a small machine that only oversubscribes it
CORES=$(nproc 2>/dev/null || echo 2)
export nnUNet_def_n_proc="${nnUNet_def_n_proc:-$CORES}"
echo "== device: $DEVICE, work folder: $WORK"

if [ ! -d "$nnUNet_raw/$NAME" ]; then
  # LABELED + 2 validation cases in imagesTr, 28 unlabelled images (imagesUnlabeled), 20 test images (imagesTs)
  python "$REPO/dataset_conversion/generate_synthetic_dataset.py" -d $ID --name SyntheticDemo2D --dim 2 \
    --shape 64 64 --labeled $((LABELED + 2)) --unlabeled 28 --test 20
fi
if [ ! -f "$nnUNet_preprocessed/$NAME/nnUNetPlans.json" ]; then
  nnUNetv2_plan_and_preprocess -d $ID -c 2d -np "$nnUNet_def_n_proc" --verify_dataset_integrity
fi
nnUNetv2_ssl_preprocess_unlabeled -d $ID -c 2d -np "$nnUNet_def_n_proc"
# fold 0: LABELED labelled cases, 2 validation cases; the unlabelled pool's reference masks (labelsUnlabeled) are
# used only for the pseudo-label diagnostics in progress_ssl.png, never for training
[ -f "$nnUNet_preprocessed/$NAME/splits_final.json" ] || nnUNetv2_ssl_split -d $ID --labeled "$LABELED" --num_val 2

if [ "$DEVICE" = cpu ]; then export nnUNet_compile=f; fi
RESULTS=()
for tr in "$BASELINE" "$TRAINER"; do
  if [ -f "$nnUNet_results/$NAME/${tr}__nnUNetPlans__2d/fold_0/checkpoint_final.pth" ]; then
    echo "== $tr fold 0 already trained (delete its folder to retrain)"
  else
    echo "== training $tr"
    nnUNetv2_train $ID 2d 0 -tr "$tr" -device "$DEVICE"
  fi
  nnUNetv2_predict -i "$nnUNet_raw/$NAME/imagesTs" -o "$WORK/predictions_$tr" -d $ID -c 2d -tr "$tr" -f 0 \
    -device "$DEVICE" -npp "$nnUNet_def_n_proc" -nps "$nnUNet_def_n_proc" --disable_progress_bar
  nnUNetv2_ssl_evaluate "$nnUNet_raw/$NAME/labelsTs" "$WORK/predictions_$tr" -o "$WORK/evaluation_$tr" --overwrite
  RESULTS+=("$tr=$WORK/evaluation_$tr/metrics.json")
done
echo "== labelled-only vs semi-supervised nnU-Net on the 20 test images ($WORK/comparison.md)"
python "$REPO/scripts/compare_evaluations.py" "${RESULTS[@]}" --output_file "$WORK/comparison.md"
