"""MSD Task04 Hippocampus -> nnU-Net raw dataset (Dataset104_Hippocampus) with imagesTs as unlabelled data.

Input: the extracted MSD folder (``Task04_Hippocampus`` with ``imagesTr``, ``labelsTr``, ``imagesTs`` and the MSD
``dataset.json``). The source is only read.

What is done: the MSD layout is converted as nnU-Net's ``nnUNetv2_convert_MSD_dataset`` does (its
``split_4d_nifti`` writes each image's channels as ``{case}_{c:04d}.nii.gz``; labels and dataset.json are
converted the same way), except that the 130 unlabelled ``imagesTs`` volumes go to ``imagesUnlabeled``. nnU-Net's
``convert_msd_dataset`` itself is not called because it writes to the import-time ``$nnUNet_raw`` only, puts
imagesTs into imagesTs and does not validate the labels.

Default: all training cases labelled, no split file (nnU-Net's 5-fold CV applies) and imagesTs -> imagesUnlabeled.
With ``--labeled N``: a label-budget protocol on the training cases, N cases drawn with ``--seed`` from the
sorted training ids are labelled, the others unlabelled (split-level, or strict with ``--raw_unlabeled``).
No resampling or intensity change.
"""
from __future__ import annotations

import argparse
import json
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
DATASET_ID = 104
DATASET_NAME = "Hippocampus"


def _nifti_cases(folder: Path) -> dict[str, Path]:
    # MSD archives carry macOS "._" files; nnU-Net's converter skips names starting with '.' or '_' too
    return {f.name[:-len(".nii.gz")]: f for f in sorted(folder.glob("*.nii.gz"))
            if not f.name.startswith((".", "_"))}


def read_msd_folder(source: Path):
    """(MSD dataset.json, training images, training labels, test images), validated."""
    msd_json_file = C.require_file(source / "dataset.json", "MSD dataset.json")
    try:
        msd_json = json.loads(msd_json_file.read_text())
    except json.JSONDecodeError as e:
        raise C.ConversionError(f"{msd_json_file} is not valid JSON: {e}") from e
    for key in ("labels", "modality"):
        if key not in msd_json:
            raise C.ConversionError(f"{msd_json_file} has no {key!r} entry; is this an MSD dataset.json?")
    images_tr = _nifti_cases(C.require_dir(source / "imagesTr", "MSD imagesTr folder"))
    labels_tr = _nifti_cases(C.require_dir(source / "labelsTr", "MSD labelsTr folder"))
    images_ts = _nifti_cases(source / "imagesTs") if (source / "imagesTs").is_dir() else {}
    without_label = sorted(set(images_tr) - set(labels_tr))
    without_image = sorted(set(labels_tr) - set(images_tr))
    if without_label or without_image:
        raise C.ConversionError(f"{source}: imagesTr without labelsTr: {without_label[:5]}; labelsTr without "
                                f"imagesTr: {without_image[:5]}")
    if not images_tr:
        raise C.ConversionError(f"no .nii.gz training images in {source / 'imagesTr'}")
    return msd_json, images_tr, labels_tr, images_ts


def _read_channels(image_file: Path) -> list[sitk.Image]:
    from nnunetv2.dataset_conversion.convert_MSD_dataset import split_4d_nifti

    with tempfile.TemporaryDirectory() as tmp:  # nnU-Net's splitter works file to folder
        split_4d_nifti(str(image_file), tmp)
        return [sitk.ReadImage(str(f)) for f in sorted(Path(tmp).glob("*.nii.gz"))]


def convert(input_folder: str, output: Optional[str] = None, dataset_id: int = DATASET_ID,
            labeled: Optional[int] = None, strict: bool = False, seed: int = 0, overwrite: bool = False,
            install_split: bool = False, preprocessed: Optional[str] = None) -> Path:
    source = C.require_dir(Path(input_folder).expanduser().resolve(), "MSD Task04_Hippocampus folder")
    msd_json, images_tr, labels_tr, images_ts = read_msd_folder(source)
    labels = {name: int(value) for value, name in msd_json["labels"].items()}
    channel_names = {int(k): v for k, v in msd_json["modality"].items()}
    train_ids = sorted(images_tr)
    if labeled is None:
        if strict:
            raise C.ConversionError("--raw_unlabeled needs a budget: --raw_unlabeled N or --labeled N")
        labeled_ids, unlabeled_ids = train_ids, []
    else:
        shuffled = list(np.random.RandomState(seed).permutation(train_ids))
        labeled_ids, unlabeled_ids = C.take_labeled(shuffled, labeled, f"{source / 'imagesTr'}")
    out = C.prepare_output_folder(C.resolve_raw_root(output) / C.dataset_folder_name(dataset_id, DATASET_NAME),
                                  overwrite, [source], install_split, preprocessed)

    def load_case(case):
        image_file = images_tr.get(case) or images_ts[case]
        label_path = labels_tr.get(case)
        label = sitk.ReadImage(str(label_path)) if label_path else None
        return _read_channels(image_file), label, {"image": image_file, "label": label_path}

    plan = ([(c, "labeled") for c in labeled_ids] + [(c, "unlabeled") for c in unlabeled_ids]
            + [(c, "unlabeled_only") for c in sorted(images_ts)])
    C.write_dataset(out, plan, load_case, channel_names=channel_names, labels=labels,
                    allowed_label_values=set(labels.values()), strict=strict, write_split=labeled is not None,
                    protocol={"dataset": "MSD Task04 Hippocampus", "source": str(source),
                              "convention": "msd: imagesTs -> imagesUnlabeled" + (
                                  f"; label budget {labeled} drawn with seed {seed}" if labeled else ""),
                              "seed": seed if labeled else None},
                    dataset_json_extra={"dataset_name": C.dataset_folder_name(dataset_id, DATASET_NAME),
                                        "reference": msd_json.get("reference"),
                                        "license": msd_json.get("licence", msd_json.get("license"))})
    C.finish(out, install_split, preprocessed, split_written=labeled is not None)
    return out


@exits_on_user_error(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", required=True, help="extracted Task04_Hippocampus folder")
    parser.add_argument("--seed", type=int, default=0, help="seed for drawing the --labeled cases (default 0)")
    parser.add_argument("--preprocessed", default=None, help="nnU-Net preprocessed root for --install_split")
    C.add_common_arguments(parser, DATASET_ID, labeled_default=None)
    args = parser.parse_args(argv)
    labeled, strict = C.resolve_budget(args.labeled, args.raw_unlabeled)
    if args.install_split and labeled is None:
        raise C.ConversionError("--install_split needs a label budget (--labeled N); without one nnU-Net's "
                                "own 5-fold split applies")
    convert(args.input, args.output, args.dataset_id, labeled, strict, args.seed, args.overwrite,
            args.install_split, args.preprocessed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
