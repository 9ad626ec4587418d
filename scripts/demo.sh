#!/usr/bin/env bash
# End-to-end demo on the built-in synthetic dataset:
#   generate -> nnUNetv2_plan_and_preprocess -> nnUNetv2_ssl_preprocess_unlabeled -> nnUNetv2_ssl_split
#   -> nnUNetv2_train -tr nnUNetTrainerMeanTeacher_demo -> nnUNetv2_predict -> nnUNetv2_ssl_evaluate
# Everything is written under demo_work/ (override with WORK=...). Uses the GPU when torch sees one.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
WORK="${WORK:-$REPO/demo_work}"
TRAINER="${TRAINER:-nnUNetTrainerMeanTeacher_demo}"
mkdir -p "$WORK"/{raw,preprocessed,results}
export nnUNet_raw="$WORK/raw" nnUNet_preprocessed="$WORK/preprocessed" nnUNet_results="$WORK/results"
eval "$(nnUNetv2_ssl_env)"   # lets the stock nnUNetv2_train / nnUNetv2_predict find the plugin's trainers
DEVICE=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
# nnU-Net starts 8 export/preprocessing workers by default; on a small machine that only oversubscribes it
CORES=$(nproc 2>/dev/null || echo 2)
export nnUNet_def_n_proc="${nnUNet_def_n_proc:-$CORES}"
echo "== device: $DEVICE, work folder: $WORK"

if [ ! -d "$nnUNet_raw/Dataset990_SyntheticSSL" ]; then
  python "$REPO/dataset_conversion/generate_synthetic_dataset.py" -d 990 --labeled 12 --unlabeled 12 --test 6 \
    --shape 32 32 32
fi
if [ ! -f "$nnUNet_preprocessed/Dataset990_SyntheticSSL/nnUNetPlans.json" ]; then
  nnUNetv2_plan_and_preprocess -d 990 -c 3d_fullres -np "$nnUNet_def_n_proc" --verify_dataset_integrity
fi
nnUNetv2_ssl_preprocess_unlabeled -d 990 -c 3d_fullres -np "$nnUNet_def_n_proc"
# 3 labelled cases per fold; the other training cases' labels are hidden (used only for pseudo-label diagnostics)
[ -f "$nnUNet_preprocessed/Dataset990_SyntheticSSL/splits_final.json" ] || nnUNetv2_ssl_split -d 990 --labeled 3 --num-val 3

if [ "$DEVICE" = cpu ]; then export nnUNet_compile=f; fi
if [ -f "$nnUNet_results/Dataset990_SyntheticSSL/${TRAINER}__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth" ]; then
  echo "== $TRAINER fold 0 already trained (delete its folder to retrain)"
else
  nnUNetv2_train 990 3d_fullres 0 -tr "$TRAINER" -device "$DEVICE"
fi
nnUNetv2_predict -i "$nnUNet_raw/Dataset990_SyntheticSSL/imagesTs" -o "$WORK/predictions_$TRAINER" -d 990 \
  -c 3d_fullres -tr "$TRAINER" -f 0 -device "$DEVICE" -npp "$nnUNet_def_n_proc" -nps "$nnUNet_def_n_proc" --disable_progress_bar
nnUNetv2_ssl_evaluate -ref "$nnUNet_raw/Dataset990_SyntheticSSL/labelsTs" -pred "$WORK/predictions_$TRAINER" \
  -o "$WORK/evaluation_$TRAINER" --overwrite
echo "== done: $WORK/evaluation_$TRAINER/metrics.md"
cat "$WORK/evaluation_$TRAINER/metrics.md"
