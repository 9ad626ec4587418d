"""``nnUNetv2_ssl_split``: label-budget splits in nnU-Net's ``splits_final.json``.

Each fold is ``{"train": [labelled], "val": [held out], "unlabeled": [training cases whose labels the
semi-supervised trainers must not see]}``. Stock nnU-Net reads only ``train`` and ``val``, so the same file gives
the labelled-only baseline. Caveat: the hidden labels did take part in nnU-Net's planning (fingerprint intensity
statistics); for strict experiments put unlabelled cases in ``imagesUnlabeled`` instead.
"""
import argparse
import os
import shutil
import sys
import time
from typing import List, Optional, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, save_json

SPLITS_FILE = "splits_final.json"


class SplitError(ValueError):
    pass


def make_label_budget_splits(identifiers: Sequence[str], num_labeled: int, num_val: Optional[int] = None,
                             num_folds: Optional[int] = None, seed: int = 0) -> List[dict]:
    """Folds with disjoint validation sets and ``num_labeled`` labelled training cases each.

    Cases are shuffled once with ``seed``; fold k validates on the k-th block of ``num_val`` cases and labels the
    first ``num_labeled`` of the remaining shuffled cases; the rest of the training cases are ``unlabeled``.
    ``num_val`` defaults to 20 % of the cases, ``num_folds`` to as many disjoint blocks as fit, at most 5.
    """
    ids = sorted(set(identifiers))
    n = len(ids)
    if n != len(identifiers):
        raise SplitError("duplicate case identifiers")
    if num_val is None:
        num_val = max(1, int(round(0.2 * n)))
    if num_labeled < 1:
        raise SplitError(f"--labeled must be at least 1, got {num_labeled}")
    if num_val < 1:
        raise SplitError(f"--val must be at least 1 (nnU-Net validates every epoch), got {num_val}")
    if num_labeled + num_val > n:
        raise SplitError(f"--labeled {num_labeled} + --val {num_val} exceeds the {n} training cases")
    max_folds = n // num_val
    if num_folds is None:
        num_folds = min(5, max_folds)
    if not 1 <= num_folds <= max_folds:
        raise SplitError(f"--folds {num_folds}: with {n} cases and --val {num_val} at most {max_folds} folds have "
                         f"disjoint validation sets")
    perm = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    splits = []
    for k in range(num_folds):
        val = perm[k * num_val:(k + 1) * num_val]
        rest = [i for i in perm if i not in set(val)]
        splits.append({"train": sorted(rest[:num_labeled]), "val": sorted(val),
                       "unlabeled": sorted(rest[num_labeled:])})
    return splits


def write_splits(splits: List[dict], preprocessed_dataset_folder: str, force: bool = False,
                 backup: bool = False) -> str:
    """Write ``splits_final.json``; an existing file is kept unless ``force`` (and copied aside if ``backup``)."""
    target = join(preprocessed_dataset_folder, SPLITS_FILE)
    if isfile(target):
        if not force:
            raise SplitError(f"{target} exists and was left untouched. Pass --force to replace it (and --backup to "
                             f"keep a copy of the old one).")
        if backup:
            bak = target + time.strftime(".%Y%m%d-%H%M%S.bak")
            shutil.copy2(target, bak)
            print(f"Old split kept as {bak}")
    save_json(splits, target, sort_keys=False)
    return target


def training_identifiers(dataset_name: str) -> List[str]:
    """Labelled training cases of a dataset, from nnUNet_raw if present, else from the preprocessed ground truth."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    raw = join(os.fspath(nnUNet_raw), dataset_name) if nnUNet_raw.is_set() else None
    if raw is not None and isfile(join(raw, "dataset.json")):
        return sorted(get_filenames_of_train_images_and_targets(raw, load_json(join(raw, "dataset.json"))).keys())
    pre = join(os.fspath(nnUNet_preprocessed), dataset_name)
    dj = load_json(join(pre, "dataset.json"))
    gt = join(pre, "gt_segmentations")
    return sorted(f[:-len(dj["file_ending"])] for f in os.listdir(gt) if f.endswith(dj["file_ending"]))


def main(argv: Optional[Sequence[str]] = None):
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    p = argparse.ArgumentParser(prog="nnUNetv2_ssl_split",
                                description="Write a label-budget splits_final.json (train / val / unlabeled).")
    p.add_argument("-d", required=True, help="dataset name or id")
    p.add_argument("--labeled", type=int, required=True, help="number of labelled training cases per fold")
    p.add_argument("--val", type=int, default=None, help="validation cases per fold (default 20%% of cases)")
    p.add_argument("--folds", type=int, default=None, help="number of folds (default: up to 5 disjoint ones)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an existing splits_final.json")
    p.add_argument("--backup", action="store_true", help="with --force: keep the old file as a timestamped .bak")
    args = p.parse_args(argv)
    try:
        if not nnUNet_preprocessed.is_set():
            raise SplitError("Environment variable nnUNet_preprocessed is not set.")
        name = maybe_convert_to_dataset_name(args.d)
        pre = join(os.fspath(nnUNet_preprocessed), name)
        if not os.path.isdir(pre):
            raise SplitError(f"{pre} does not exist. Run `nnUNetv2_plan_and_preprocess -d {args.d}` first.")
        splits = make_label_budget_splits(training_identifiers(name), args.labeled, args.val, args.folds, args.seed)
        target = write_splits(splits, pre, args.force, args.backup)
    except SplitError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(2)
    s = splits[0]
    print(f"Wrote {target}: {len(splits)} fold(s); fold 0 has {len(s['train'])} labelled, {len(s['unlabeled'])} "
          f"unlabelled (labels hidden) and {len(s['val'])} validation cases.")


if __name__ == "__main__":
    main()
