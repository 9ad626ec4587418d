"""Left Atrium (2018 LA challenge), UA-MT h5 release -> nnU-Net raw dataset (Dataset101_LA).

Input: a folder of ``<case>/mri_norm2.h5`` (datasets ``image`` float32 and ``label`` uint8 {0, 1}, array axes
x, y, z) and ``train.list`` (required) / ``test.list`` (optional), found in the input folder or its parent (the
UA-MT layout keeps the lists one level above ``2018LA_Seg_Training Set``), or given with --train_list/--test_list.

What is done: each volume is written as NIfTI with spacing 0.625 mm on every axis (the h5 files store none),
origin 0, identity direction, the array transposed to SimpleITK's (z, y, x) order so that reading the NIfTI and
transposing back gives the h5 array exactly. Labels stay {0, 1}. Intensities are written as stored (already
z-scored; nnU-Net's MRI normalisation z-scores again, harmlessly).
What is not done: no resampling, no cropping (the release is already cropped around the ground-truth atrium in
x/y, see the benchmark spec), no intensity change.

Protocol (UA-MT convention): the first ``--labeled`` (default 8) cases of train.list are labelled, the other
training cases unlabelled; test.list cases go to imagesTs/labelsTs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

# shared helpers from the installed package (setup.py installs this folder as nnunet_ssl.dataset_conversion),
# so this file runs as a script and imports as a module alike
from nnunet_ssl.dataset_conversion import _common as C
from nnunet_ssl.errors import exits_on_user_error

PROG = Path(__file__).name
DATASET_ID = 101
DATASET_NAME = "LA"
SPACING_MM = (0.625, 0.625, 0.625)
H5_NAME = "mri_norm2.h5"


def _find_list(input_folder: Path, explicit: Optional[str], name: str) -> Optional[Path]:
    if explicit:
        return C.require_file(Path(explicit), f"--{name.replace('.', '-')} file")
    for folder in (input_folder, input_folder.parent):
        if (folder / name).is_file():
            return folder / name
    return None


def read_la_case(h5_file: Path):
    """(image, label) arrays with axes (x, y, z), validated."""
    return C.read_h5_image_label(h5_file)


def convert(input_folder: str, output: Optional[str] = None, dataset_id: int = DATASET_ID,
            labeled: int = 8, strict: bool = False, train_list: Optional[str] = None,
            test_list: Optional[str] = None, overwrite: bool = False, install_split: bool = False,
            preprocessed: Optional[str] = None) -> Path:
    input_folder = C.require_dir(Path(input_folder).expanduser().resolve(), "LA input folder")
    train_list_file = _find_list(input_folder, train_list, "train.list")
    if train_list_file is None:
        raise C.ConversionError(f"no train.list in {input_folder} or its parent; pass --train_list")
    test_list_file = _find_list(input_folder, test_list, "test.list")
    train_cases = C.read_case_list(train_list_file)
    test_cases = C.read_case_list(test_list_file) if test_list_file else []
    overlap = sorted(set(train_cases) & set(test_cases))
    if overlap:
        raise C.ConversionError(f"cases in both {train_list_file} and {test_list_file}: {overlap}")
    missing = [c for c in train_cases + test_cases if not (input_folder / c / H5_NAME).is_file()]
    if missing:
        raise C.ConversionError(f"{len(missing)} listed case(s) have no {input_folder}/<case>/{H5_NAME}: "
                                f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
    labeled_cases, unlabeled_cases = C.take_labeled(train_cases, labeled, str(train_list_file))

    out = C.prepare_output_folder(C.resolve_raw_root(output) / C.dataset_folder_name(dataset_id, DATASET_NAME),
                                  overwrite, [input_folder], install_split, preprocessed)

    def load_case(case_id):
        h5_file = input_folder / case_id / H5_NAME
        image, label = read_la_case(h5_file)
        return ([C.image_from_xyz_array(image, SPACING_MM)], C.image_from_xyz_array(label, SPACING_MM),
                {"image": h5_file, "label": f"{h5_file} (dataset 'label')"})

    plan = ([(c, "labeled") for c in labeled_cases] + [(c, "unlabeled") for c in unlabeled_cases]
            + [(c, "test") for c in test_cases])
    C.write_dataset(out, plan, load_case, channel_names={0: "MRI"}, labels={"background": 0, "left atrium": 1},
                    allowed_label_values={0, 1}, strict=strict,
                    protocol={"dataset": "LA (2018 Atrial Segmentation Challenge, UA-MT h5 release)",
                              "convention": "ua-mt: first N of train.list labelled, rest unlabelled",
                              "source": str(input_folder), "train_list": str(train_list_file),
                              "test_list": str(test_list_file) if test_list_file else None,
                              "spacing_mm": list(SPACING_MM),
                              "notes": "volumes are cropped around the ground-truth atrium in x/y by the release"},
                    dataset_json_extra={"dataset_name": C.dataset_folder_name(dataset_id, DATASET_NAME),
                                        "reference": "Xiong et al., MedIA 2021; Yu et al., UA-MT, MICCAI 2019",
                                        "license": "challenge data, no licence file"})
    C.finish(out, install_split, preprocessed)
    return out


@exits_on_user_error(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", required=True, help="folder holding <case>/mri_norm2.h5")
    parser.add_argument("--train-list", default=None, help="train.list (default: in -i or its parent)")
    parser.add_argument("--test-list", default=None, help="test.list (default: in -i or its parent; optional)")
    parser.add_argument("--preprocessed", default=None, help="nnU-Net preprocessed root for --install_split "
                                                             "(default: $nnUNet_preprocessed)")
    C.add_common_arguments(parser, DATASET_ID, labeled_default=8)
    args = parser.parse_args(argv)
    labeled, strict = C.resolve_budget(args.labeled, args.raw_unlabeled)
    convert(args.input, args.output, args.dataset_id, labeled, strict, args.train_list, args.test_list,
            args.overwrite, args.install_split, args.preprocessed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
