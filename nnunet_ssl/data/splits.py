"""``nnUNetv2_ssl_split``: label-budget splits in nnU-Net's ``splits_final.json``.

Each fold is ``{"train": [labelled], "val": [held out], "unlabeled": [training cases whose labels the
semi-supervised trainers must not see]}``. Stock nnU-Net reads only ``train`` and ``val``, so the same file gives
the labelled-only baseline. Caveat: the hidden labels did take part in nnU-Net's planning (fingerprint intensity
statistics); for strict experiments put unlabelled cases in ``imagesUnlabeled`` instead.

nnU-Net's ``do_split`` reads such a file only for a fold it lists: with fold ``all``, or a fold number beyond the
list, it trains on every ``imagesTr`` case with its label. :func:`check_fold_keeps_labels_hidden` refuses those folds
(the semi-supervised trainers and ``scripts/benchmark_ssl.py`` call it).
"""
import argparse
import os
import shutil
import time
from typing import List, Optional, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, save_json

from nnunet_ssl.cli_flags import deprecated_alias, deprecated_aliases
from nnunet_ssl.errors import UserError, exits_on_user_error, resolve_dataset_name

SPLITS_FILE = "splits_final.json"
PROG = "nnUNetv2_ssl_split"


class SplitError(UserError):
    """A bad split setting or split file; the message names it and the fix."""


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
        raise SplitError(f"--num_val must be at least 1 (nnU-Net validates every epoch), got {num_val}")
    if num_labeled + num_val > n:
        raise SplitError(f"--labeled {num_labeled} + --num_val {num_val} exceeds the {n} training cases")
    max_folds = n // num_val
    if num_folds is None:
        num_folds = min(5, max_folds)
    if not 1 <= num_folds <= max_folds:
        raise SplitError(f"--folds {num_folds}: with {n} cases and --num_val {num_val} at most {max_folds} folds have "
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
            raise SplitError(f"{target} exists and was left untouched. Pass --overwrite to replace it (and --backup to "
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


def read_splits(preprocessed_dataset_folder: str) -> Optional[List[dict]]:
    """The folds of ``splits_final.json`` in a preprocessed dataset folder, or None if there is none."""
    target = join(preprocessed_dataset_folder, SPLITS_FILE)
    if not isfile(target):
        return None
    try:
        splits = load_json(target)
    except ValueError as e:
        raise SplitError(f"{target} is not valid JSON ({e}). Fix it, or rewrite it with `nnUNetv2_ssl_split ... "
                         f"--overwrite`.") from None
    if not isinstance(splits, list) or not all(isinstance(s, dict) for s in splits):
        raise SplitError(f"{target} must hold a list of folds ({{'train': [...], 'val': [...]}}); rewrite it with "
                         f"`nnUNetv2_ssl_split ... --overwrite`.")
    return splits


def hidden_label_cases(splits: Sequence[dict]) -> List[str]:
    """Cases whose labels some fold hides (the union of the folds' ``unlabeled`` lists)."""
    return sorted({c for s in splits for c in s.get("unlabeled", [])})


def check_fold_keeps_labels_hidden(preprocessed_dataset_folder: str, fold, dataset: str = "DatasetXXX") -> None:
    """Refuse a fold for which nnU-Net would train on labels that ``splits_final.json`` hides.

    When a fold of the split file lists ``unlabeled`` cases, nnU-Net's ``do_split`` would still train on them with
    their labels for fold ``'all'`` (every case) and for a fold number the file does not list (a random 80:20 split
    of every case): a "semi-supervised" run that is fully supervised. ``dataset`` only fills in the commands the
    message suggests. Raises ``SplitError``; returns None when the fold is safe (or there is no split file).
    """
    splits = read_splits(preprocessed_dataset_folder)
    if splits is None:
        return
    hidden = hidden_label_cases(splits)
    if not hidden:
        return
    target = join(preprocessed_dataset_folder, SPLITS_FILE)
    n = len(splits)
    use = "fold 0" if n == 1 else f"one of its folds 0..{n - 1}"
    what = f"{target} hides the labels of {len(hidden)} training case(s) (its folds' 'unlabeled' lists), but"
    if str(fold) == "all":
        raise SplitError(f"{what} with fold 'all' nnU-Net trains on every imagesTr case with its label, so the "
                         f"semi-supervised run would be fully supervised. Train {use} instead. To train on all "
                         f"labelled cases, move {target} aside: the semi-supervised trainers then take their "
                         f"unlabelled cases from imagesUnlabeled only.")
    try:
        index = int(fold)
    except (TypeError, ValueError):
        raise SplitError(f"fold {fold!r} is neither a number nor 'all'.") from None
    if not 0 <= index < n:
        raise SplitError(f"{what} it has {n} fold(s) and fold {fold} is not one of them; for a fold it does not "
                         f"list nnU-Net trains on a random 80:20 split of every imagesTr case with its label. Train "
                         f"{use}, or write more folds with `nnUNetv2_ssl_split -d {dataset} --labeled N --folds K "
                         f"--overwrite`.")


def fold_unlabeled_cases(preprocessed_dataset_folder: str, fold, labelled_cases: Sequence[str]) -> List[str]:
    """The ``unlabeled`` cases of ``fold`` (after :func:`check_fold_keeps_labels_hidden`); refuses a fold whose
    ``unlabeled`` list shares cases with ``labelled_cases`` (its ``train`` and ``val``)."""
    splits = read_splits(preprocessed_dataset_folder) or []
    if str(fold) == "all" or not 0 <= int(fold) < len(splits):
        return []
    unlabeled = list(splits[int(fold)].get("unlabeled", []))
    overlap = set(unlabeled) & set(labelled_cases)
    if overlap:
        raise SplitError(f"{join(preprocessed_dataset_folder, SPLITS_FILE)}, fold {fold}: cases {sorted(overlap)} "
                         f"are listed as 'unlabeled' and also in 'train' or 'val'. Fix the split "
                         f"(`nnUNetv2_ssl_split ... --overwrite` writes a consistent one).")
    return unlabeled


@exits_on_user_error(PROG)
def main(argv: Optional[Sequence[str]] = None):
    from nnunetv2.paths import nnUNet_preprocessed
    p = argparse.ArgumentParser(prog=PROG,
                                description="Write a label-budget splits_final.json (train / val / unlabeled).")
    p.add_argument("-d", required=True, help="dataset name or id")
    p.add_argument("--labeled", type=int, required=True, help="number of labelled training cases per fold")
    p.add_argument("--num_val", type=int, default=None,
                   help="number of validation cases per fold (default 20%% of cases)")
    p.add_argument("--folds", type=int, default=None, help="number of folds (default: up to 5 disjoint ones)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle that draws the cases (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing splits_final.json")
    p.add_argument("--backup", action="store_true", help="with --overwrite: keep the old file as a timestamped .bak")
    deprecated_aliases(p, {"--num-val": "--num_val", "--force": "--overwrite"})
    # --val read like nnUNetv2_train --val (validation only)
    deprecated_alias(p, "--val", "--num_val", note=" (a number of validation cases, unlike nnUNetv2_train's --val)")
    args = p.parse_args(argv)
    if not nnUNet_preprocessed.is_set():
        raise SplitError("Environment variable nnUNet_preprocessed is not set (see nnU-Net's setting_up_paths.md).")
    name = resolve_dataset_name(args.d)
    pre = join(os.fspath(nnUNet_preprocessed), name)
    if not os.path.isdir(pre):
        raise SplitError(f"{pre} does not exist. Run `nnUNetv2_plan_and_preprocess -d {args.d}` first.")
    splits = make_label_budget_splits(training_identifiers(name), args.labeled, args.num_val, args.folds, args.seed)
    target = write_splits(splits, pre, args.overwrite, args.backup)
    s = splits[0]
    print(f"Wrote {target}: {len(splits)} fold(s); fold 0 has {len(s['train'])} labelled, {len(s['unlabeled'])} "
          f"unlabelled (labels hidden) and {len(s['val'])} validation cases.")


if __name__ == "__main__":
    main()
