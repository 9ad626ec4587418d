"""ACDC -> nnU-Net raw dataset (Dataset105_ACDC) with a labelled-patient budget (BoCLIS/SSL4MIS setting).

Input: the extracted ACDC release with ``training/`` and ``testing/`` (``patientXXX/patientXXX_frameYY.nii.gz``
and ``..._gt.nii.gz``), as for nnU-Net's ``Dataset027_ACDC.py``, whose ``copy_files`` names the cases here: every
annotated frame is its own case ``patientXXX_frameYY``; labels 0 background, 1 RV, 2 MLV (myocardium), 3 LVC.

Label budget by **patient** (both frames of a patient are on the same side): ``--labeled N`` patients
(default 7 = 10 %, BoCLIS also uses 3 = 5 %).

* With the SSL4MIS lists (``--train_list``, ``--val_list``, ``--test_list``; entries ``patientXXX_frameYY``, only
  the patient number is used): the first N patients of the train list are labelled, the other train-list patients
  unlabelled, val-list patients are labelled validation cases, test-list patients go to imagesTs/labelsTs. The
  challenge ``testing/`` folder is then not used.
* Without lists: all 100 training patients form the pool, N patients drawn with ``--seed`` from the sorted
  patients are labelled, the rest unlabelled; ``testing/`` images go to imagesTs (no labels), as nnU-Net does.

2D vs 3D is a training configuration (nnU-Net plans ``2d`` and ``3d_fullres`` from the same raw volumes): a
patient budget in 2D means all slices of the labelled patients, which differs slightly from SSL4MIS's slice counts
(3 -> 68, 7 -> 136 slices). No resampling or intensity change.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

# shared helpers from the installed package (setup.py installs this folder as nnunet_ssl.dataset_conversion),
# so this file runs as a script and imports as a module alike
from nnunet_ssl.dataset_conversion import _common as C
from nnunet_ssl.errors import exits_on_user_error

PROG = Path(__file__).name
DATASET_ID = 105
DATASET_NAME = "ACDC"
LABELS = {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}
_PATIENT = re.compile(r"patient(\d{3})")


def patient_of(case_id: str) -> str:
    m = _PATIENT.search(case_id)
    if not m:
        raise C.ConversionError(f"{case_id!r} does not name a patient (patientXXX)")
    return f"patient{m.group(1)}"


def patients_in_list(path: str) -> list[str]:
    """Distinct patients of an SSL4MIS list, in list order."""
    patients = []
    for entry in C.read_case_list(Path(path)):
        p = patient_of(entry)
        if p not in patients:
            patients.append(p)
    return patients


def convert(input_folder: str, output: Optional[str] = None, dataset_id: int = DATASET_ID, labeled: int = 7,
            strict: bool = False, train_list: Optional[str] = None, val_list: Optional[str] = None,
            test_list: Optional[str] = None, seed: int = 0, overwrite: bool = False, install_split: bool = False,
            preprocessed: Optional[str] = None) -> Path:
    from nnunetv2.dataset_conversion.Dataset027_ACDC import copy_files

    source = C.require_dir(Path(input_folder).expanduser().resolve(), "ACDC input folder")
    for sub in ("training", "testing"):
        C.require_dir(source / sub, f"ACDC '{sub}' folder (nnU-Net's Dataset027_ACDC expects both)")
    given = [x is not None for x in (train_list, val_list, test_list)]
    if any(given) and not all(given):
        raise C.ConversionError("give all three of --train_list, --val_list and --test_list, or none")
    out = C.resolve_raw_root(output) / C.dataset_folder_name(dataset_id, DATASET_NAME)
    if out.exists() and not overwrite:  # fail before the copy below
        C.prepare_output_folder(out, overwrite, [source])

    with tempfile.TemporaryDirectory() as tmp:
        staged = {n: Path(tmp) / n for n in ("images", "labels", "test")}
        for d in staged.values():
            d.mkdir()
        copy_files(source, staged["images"], staged["labels"], staged["test"])  # nnU-Net's discovery + naming
        frames = {f.name[:-len("_0000.nii.gz")]: f for f in sorted(staged["images"].glob("*_0000.nii.gz"))}
        gts = {f.name[:-len(".nii.gz")]: f for f in staged["labels"].glob("*.nii.gz")}
        challenge_test = {f.name[:-len("_0000.nii.gz")]: f for f in staged["test"].glob("*_0000.nii.gz")}
        without_gt = sorted(set(frames) - set(gts))
        if without_gt or not frames:
            raise C.ConversionError(f"{source / 'training'}: frames without a _gt file: {without_gt[:5]}"
                                    if frames else f"no patientXXX_frameYY.nii.gz found in {source / 'training'}")
        original_of = {c: source / "training" / patient_of(c) / f"{c}.nii.gz" for c in frames}
        original_gt_of = {c: source / "training" / patient_of(c) / f"{c}_gt.nii.gz" for c in frames}
        frames_of = {}
        for c in frames:
            frames_of.setdefault(patient_of(c), []).append(c)

        if train_list:
            lists = {"train": patients_in_list(train_list), "val": patients_in_list(val_list),
                     "test": patients_in_list(test_list)}
            for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
                overlap = sorted(set(lists[a]) & set(lists[b]))
                if overlap:
                    raise C.ConversionError(f"patients in both the {a} and the {b} list: {overlap[:5]}")
            missing = [p for p in lists["train"] + lists["val"] + lists["test"] if p not in frames_of]
            if missing:
                raise C.ConversionError(f"listed patients missing from {source / 'training'}: {missing[:5]}")
            labeled_p, unlabeled_p = C.take_labeled(lists["train"], labeled, f"the patients of {train_list}")
            val_p, test_p, test_only = lists["val"], lists["test"], []
        else:
            pool = list(np.random.RandomState(seed).permutation(sorted(frames_of)))
            labeled_p, unlabeled_p = C.take_labeled(pool, labeled, f"the patients of {source / 'training'}")
            val_p, test_p, test_only = [], [], sorted(challenge_test)

        def cases(patients):
            return [c for p in patients for c in sorted(frames_of[p])]

        out = C.prepare_output_folder(out, overwrite, [source], install_split, preprocessed)

        def load_case(case):
            if case in challenge_test and case not in frames:
                return [sitk.ReadImage(str(challenge_test[case]))], None, {"image": challenge_test[case]}
            return ([sitk.ReadImage(str(frames[case]))], sitk.ReadImage(str(gts[case])),
                    {"image": original_of[case], "label": original_gt_of[case]})

        plan = ([(c, "labeled") for c in cases(labeled_p)] + [(c, "unlabeled") for c in cases(unlabeled_p)]
                + [(c, "val") for c in cases(val_p)] + [(c, "test") for c in cases(test_p)]
                + [(c, "test") for c in test_only])
        C.write_dataset(out, plan, load_case, channel_names={0: "cineMRI"}, labels=LABELS,
                        allowed_label_values=set(LABELS.values()), strict=strict,
                        protocol={"dataset": "ACDC (training patients 001-100)",
                                  "convention": ("ssl4mis lists: first N train-list patients labelled" if train_list
                                                 else f"patient budget drawn with seed {seed}"),
                                  "budget_unit": "patients (both frames on the same side)",
                                  "labeled_patients": labeled_p, "unlabeled_patients": unlabeled_p,
                                  "val_patients": val_p, "test_patients": test_p,
                                  "source": str(source), "train_list": train_list, "val_list": val_list,
                                  "test_list": test_list, "seed": None if train_list else seed},
                        dataset_json_extra={"dataset_name": C.dataset_folder_name(dataset_id, DATASET_NAME),
                                            "reference": "Bernard et al., IEEE TMI 2018 (ACDC)",
                                            "license": "see https://www.creatis.insa-lyon.fr/Challenge/acdc/"})
    C.finish(out, install_split, preprocessed)
    return out


@exits_on_user_error(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", required=True, help="ACDC folder with training/ and testing/")
    parser.add_argument("--train-list", default=None, help="SSL4MIS train.list (70 patients)")
    parser.add_argument("--val-list", default=None, help="SSL4MIS val.list (10 patients)")
    parser.add_argument("--test-list", default=None, help="SSL4MIS test.list (20 patients)")
    parser.add_argument("--seed", type=int, default=0, help="seed for drawing labelled patients without lists")
    parser.add_argument("--preprocessed", default=None, help="nnU-Net preprocessed root for --install_split")
    C.add_common_arguments(parser, DATASET_ID, labeled_default=7)
    args = parser.parse_args(argv)
    labeled, strict = C.resolve_budget(args.labeled, args.raw_unlabeled)
    convert(args.input, args.output, args.dataset_id, labeled, strict, args.train_list, args.val_list,
            args.test_list, args.seed, args.overwrite, args.install_split, args.preprocessed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
