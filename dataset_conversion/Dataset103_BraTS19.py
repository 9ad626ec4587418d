"""BraTS 2019 -> nnU-Net raw dataset (Dataset103_BraTS19), SSL4MIS convention by default.

Input: the extracted training release, ``-i MICCAI_BraTS_2019_Data_Training`` holding ``HGG/<case>/`` and
``LGG/<case>/`` (or the case folders directly) with ``<case>_{flair,t1,t1ce,t2,seg}.nii[.gz]``, and the SSL4MIS
split lists (train 250 / val 25 / test 60) as files: ``--train_list``, ``--val_list``, ``--test_list`` (entries
are case names, optionally with a path or ``.h5``; the lists cannot be downloaded here).

Default task (SSL4MIS): FLAIR only, whole tumour (label > 0 -> 1). The first ``--labeled`` (default 25) cases
of the train list are labelled, the other train-list cases unlabelled; val-list cases are labelled validation
cases (imagesTr, split ``val``); test-list cases go to imagesTs/labelsTs.

``--all_modalities``: T1, T1ce, T2, FLAIR and nnU-Net's three BraTS regions (labels converted with nnunetv2's
``Dataset043_BraTS19.copy_BraTS_segmentation_and_convert_labels_to_nnUNet``), as nnU-Net's own Dataset043. That is
a different task from the SSL convention: report it separately.

Not done: the SSL4MIS h5 preprocessing (brain-box crop, 99.9th-percentile clip, z-score over brain voxels);
nnU-Net's own cropping to nonzero and z-scoring take that role. No resampling (BraTS is 1 mm isotropic).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import SimpleITK as sitk

# shared helpers from the installed package (setup.py installs this folder as nnunet_ssl.dataset_conversion),
# so this file runs as a script and imports as a module alike
from nnunet_ssl.dataset_conversion import _common as C
from nnunet_ssl.errors import exits_on_user_error

PROG = Path(__file__).name
DATASET_ID = 103
DATASET_NAME = "BraTS19"
BRATS_LABELS = {0, 1, 2, 4}
ALL_MODALITIES = ("t1", "t1ce", "t2", "flair")  # channel order of nnU-Net's Dataset043_BraTS19


def find_cases(input_folder: Path) -> dict[str, Path]:
    """case name -> case folder, from HGG/LGG subfolders or directly below ``input_folder``."""
    cases = {}
    parents = [input_folder / g for g in ("HGG", "LGG") if (input_folder / g).is_dir()] or [input_folder]
    for parent in parents:
        for d in sorted(p for p in parent.iterdir() if p.is_dir()):
            if d.name in cases:
                raise C.ConversionError(f"case {d.name} found twice: {cases[d.name]} and {d}")
            cases[d.name] = d
    return cases


def modality_file(case_folder: Path, modality: str) -> Path:
    for ending in (".nii.gz", ".nii"):
        f = case_folder / f"{case_folder.name}_{modality}{ending}"
        if f.is_file():
            return f
    raise C.ConversionError(f"missing {case_folder.name}_{modality}.nii.gz (or .nii) in {case_folder}")


def convert(input_folder: str, train_list: str, val_list: str, test_list: str, output: Optional[str] = None,
            dataset_id: int = DATASET_ID, labeled: int = 25, strict: bool = False, all_modalities: bool = False,
            overwrite: bool = False, install_split: bool = False, preprocessed: Optional[str] = None) -> Path:
    from nnunetv2.dataset_conversion.Dataset043_BraTS19 import copy_BraTS_segmentation_and_convert_labels_to_nnUNet

    input_folder = C.require_dir(Path(input_folder).expanduser().resolve(), "BraTS 2019 input folder")
    lists = {name: C.read_case_list(Path(p)) for name, p in (("train", train_list), ("val", val_list),
                                                             ("test", test_list))}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        overlap = sorted(set(lists[a]) & set(lists[b]))
        if overlap:
            raise C.ConversionError(f"cases in both the {a} and the {b} list: {overlap[:5]}")
    cases = find_cases(input_folder)
    missing = [c for c in lists["train"] + lists["val"] + lists["test"] if c not in cases]
    if missing:
        raise C.ConversionError(f"{len(missing)} listed case(s) have no folder in {input_folder}: {missing[:5]}")
    labeled_cases, unlabeled_cases = C.take_labeled(lists["train"], labeled, train_list)
    out = C.prepare_output_folder(C.resolve_raw_root(output) / C.dataset_folder_name(dataset_id, DATASET_NAME),
                                  overwrite, [input_folder], install_split, preprocessed)
    modalities = ALL_MODALITIES if all_modalities else ("flair",)

    def load_case(case):
        folder = cases[case]
        files = [modality_file(folder, m) for m in modalities]
        seg_file = modality_file(folder, "seg")
        channels = [sitk.ReadImage(str(f)) for f in files]
        seg = sitk.ReadImage(str(seg_file))
        C.check_label_values(seg, BRATS_LABELS, seg_file)
        if all_modalities:
            with tempfile.TemporaryDirectory() as tmp:  # nnU-Net's converter works file to file
                converted = str(Path(tmp) / "seg.nii.gz")
                copy_BraTS_segmentation_and_convert_labels_to_nnUNet(str(seg_file), converted)
                label = sitk.ReadImage(converted)
        else:
            label = sitk.Cast(seg > 0, sitk.sitkUInt8)  # whole tumour
        sources = {"image": files[0], "label": seg_file}
        sources.update({f"image{i}": f for i, f in enumerate(files)})
        return channels, label, sources

    plan = ([(c, "labeled") for c in labeled_cases] + [(c, "unlabeled") for c in unlabeled_cases]
            + [(c, "val") for c in lists["val"]] + [(c, "test") for c in lists["test"]])
    if all_modalities:
        channel_names = {0: "T1", 1: "T1ce", 2: "T2", 3: "Flair"}
        labels = {"background": 0, "whole tumor": (1, 2, 3), "tumor core": (2, 3), "enhancing tumor": (3,)}
        allowed, regions = {0, 1, 2, 3}, (1, 2, 3)
    else:
        channel_names, labels, allowed, regions = {0: "FLAIR"}, {"background": 0, "whole tumor": 1}, {0, 1}, None
    C.write_dataset(out, plan, load_case, channel_names=channel_names, labels=labels,
                    allowed_label_values=allowed, strict=strict, regions_class_order=regions,
                    protocol={"dataset": "BraTS 2019 training set",
                              "convention": "nnunet-regions (all modalities; not the SSL task)" if all_modalities
                              else "ssl4mis: FLAIR, whole tumour, first N of train list labelled",
                              "source": str(input_folder), "train_list": str(train_list),
                              "val_list": str(val_list), "test_list": str(test_list),
                              "modalities": list(modalities)},
                    dataset_json_extra={"dataset_name": C.dataset_folder_name(dataset_id, DATASET_NAME),
                                        "reference": "BraTS 2019 (Menze et al. 2015; Bakas et al. 2017, 2018)",
                                        "license": "see https://www.med.upenn.edu/cbica/brats2019/"})
    C.finish(out, install_split, preprocessed)
    return out


@exits_on_user_error(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", required=True, help="MICCAI_BraTS_2019_Data_Training folder")
    parser.add_argument("--train-list", required=True, help="SSL4MIS train list (250 cases)")
    parser.add_argument("--val-list", required=True, help="SSL4MIS val list (25 cases)")
    parser.add_argument("--test-list", required=True, help="SSL4MIS test list (60 cases)")
    parser.add_argument("--all-modalities", action="store_true",
                        help="4 modalities + nnU-Net's BraTS regions (as nnU-Net's Dataset043), not the SSL task")
    parser.add_argument("--preprocessed", default=None, help="nnU-Net preprocessed root for --install_split")
    C.add_common_arguments(parser, DATASET_ID, labeled_default=25)
    args = parser.parse_args(argv)
    labeled, strict = C.resolve_budget(args.labeled, args.raw_unlabeled)
    convert(args.input, args.train_list, args.val_list, args.test_list, args.output, args.dataset_id,
            labeled, strict, args.all_modalities, args.overwrite, args.install_split, args.preprocessed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
