"""NIH Pancreas-CT (TCIA, 82 CT scans) -> nnU-Net raw dataset (Dataset102_PancreasCT).

Two input formats (``--format``):

* ``dicom``: the original TCIA release, ``-i Pancreas-CT`` holding ``PANCREAS_XXXX/.../*.dcm`` (one series per
  case, read with SimpleITK's ImageSeriesReader) plus ``--labels_folder`` holding ``labelXXXX.nii.gz``. Intensities are
  written in HU. The label must have the image's voxel grid; if its header geometry (origin/direction/spacing)
  differs from the DICOM series the script stops, unless ``--label_geometry_from_image`` is given, which copies the
  image geometry onto the label (checked on fake data only; inspect a few cases visually when using it).
* ``h5``: the MC-Net+ release (``imageXXXX_norm.h5``) or the MCF release (``PANCREAS_XXXX.h5``), datasets
  ``image``/``label``, array axes taken as (x, y, z) like the LA release, spacing ``--h5_spacing`` (default 1 mm:
  the MC-Net+ files are resampled to 1 mm isotropic). These files are already windowed, cropped around the
  ground-truth pancreas and normalised by their authors (see the benchmark spec).

What is done: format conversion, optional HU clipping to [-125, 275] (``--hu_window``, DICOM only; nnU-Net's CT
normalisation already clips to foreground percentiles), the split convention. What is NOT done: no resampling
(choosing the spacing is the nnU-Net planner's job) and no ground-truth-box cropping (it leaks the label into the
test input, so this script does not offer it).

Split conventions (``--convention``; numbers from different conventions are not comparable):

* ``mcnet`` (MC-Net+): lists given with ``--train_list`` (62) and ``--test_list`` (20); the first ``--labeled``
  entries of the train list are labelled.
* ``coranet`` (CoraNet/BCP): training 0001-0063 without 0025 (first ``--labeled`` labelled, i.e. 0001-0012 for
  12), test 0064-0082 without 0070; cases 0025 and 0070 are not written.
* ``mcf`` (MCF/UGPL, fold 0 of ``Flods/``): training 0001-0062 (first ``--labeled`` labelled), test 0063-0082.

Case ids are ``pancreas_XXXX`` with XXXX the number in the source file name.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

import SimpleITK as sitk

# shared helpers from the installed package (setup.py installs this folder as nnunet_ssl.dataset_conversion),
# so this file runs as a script and imports as a module alike
from nnunet_ssl.cli_flags import deprecated_alias
from nnunet_ssl.dataset_conversion import _common as C
from nnunet_ssl.errors import exits_on_user_error

PROG = Path(__file__).name
DATASET_ID = 102
DATASET_NAME = "PancreasCT"
HU_WINDOW = (-125.0, 275.0)
CONVENTIONS = ("mcnet", "coranet", "mcf")
_H5_PATTERNS = (re.compile(r"^image(\d+)_norm\.h5$"), re.compile(r"^PANCREAS_(\d+)\.h5$", re.IGNORECASE))
_DICOM_CASE = re.compile(r"^PANCREAS_(\d+)$", re.IGNORECASE)
_LABEL_FILE = re.compile(r"^label(\d+)\.nii(\.gz)?$")


def case_id(number: int) -> str:
    return f"pancreas_{number:04d}"


def convention_numbers(convention: str, train_list: Optional[str], test_list: Optional[str]):
    """(training numbers in labelling order, test numbers, excluded numbers) of a split convention."""
    if convention == "mcnet":
        if not (train_list and test_list):
            raise C.ConversionError("--convention mcnet needs --train_list and --test_list (MC-Net+'s "
                                    "train.list/test.list; their order is randomised, so it cannot be rebuilt)")

        def numbers(path):
            out = []
            for entry in C.read_case_list(Path(path)):
                found = re.findall(r"\d+", entry)
                if not found:
                    raise C.ConversionError(f"list {path}: entry {entry!r} holds no case number")
                out.append(int(found[-1]))
            return out
        return numbers(train_list), numbers(test_list), []
    if train_list or test_list:
        raise C.ConversionError(f"--convention {convention} has fixed case numbers; --train_list/--test_list are "
                                f"only for --convention mcnet")
    if convention == "coranet":
        return [n for n in range(1, 64) if n != 25], [n for n in range(64, 83) if n != 70], [25, 70]
    if convention == "mcf":
        return list(range(1, 63)), list(range(63, 83)), []
    raise C.ConversionError(f"unknown --convention {convention!r}; choose one of {CONVENTIONS}")


def find_h5_cases(folder: Path) -> dict[int, Path]:
    cases = {}
    for f in sorted(folder.iterdir()):
        for pattern in _H5_PATTERNS:
            m = pattern.match(f.name)
            if m:
                if int(m.group(1)) in cases:
                    raise C.ConversionError(f"two h5 files for case {m.group(1)}: {cases[int(m.group(1))]} and {f}")
                cases[int(m.group(1))] = f
    return cases


def find_dicom_cases(folder: Path, labels_folder: Path) -> dict[int, tuple[Path, Path]]:
    labels = {}
    for f in sorted(labels_folder.iterdir()):
        m = _LABEL_FILE.match(f.name)
        if m:
            labels[int(m.group(1))] = f
    cases = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        m = _DICOM_CASE.match(d.name)
        if m:
            number = int(m.group(1))
            if number not in labels:
                raise C.ConversionError(f"no label{number:04d}.nii.gz in {labels_folder} for DICOM case {d}")
            cases[number] = (d, labels[number])
    return cases


def read_dicom_series(case_folder: Path) -> sitk.Image:
    """The single DICOM series below ``case_folder`` (TCIA nests it two folders deep)."""
    series = []
    for root, _, _ in os.walk(case_folder):
        for series_id in sitk.ImageSeriesReader.GetGDCMSeriesIDs(root) or ():
            series.append((root, series_id))
    if len(series) != 1:
        raise C.ConversionError(f"expected exactly one DICOM series below {case_folder}, found {len(series)}: "
                                f"{series[:3]}")
    root, series_id = series[0]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(root, series_id))
    return reader.Execute()


def convert(input_folder: str, output: Optional[str] = None, dataset_id: int = DATASET_ID,
            source_format: str = "dicom", labels_folder: Optional[str] = None, convention: str = "coranet",
            labeled: int = 12, strict: bool = False, train_list: Optional[str] = None,
            test_list: Optional[str] = None, hu_window: bool = False, h5_spacing: float = 1.0,
            label_geometry_from_image: bool = False, overwrite: bool = False, install_split: bool = False,
            preprocessed: Optional[str] = None) -> Path:
    input_folder = C.require_dir(Path(input_folder).expanduser().resolve(), "Pancreas-CT input folder")
    train_numbers, test_numbers, excluded = convention_numbers(convention, train_list, test_list)
    overlap = sorted(set(train_numbers) & set(test_numbers))
    if overlap:
        raise C.ConversionError(f"cases in both the training and the test list: {overlap}")
    sources = [input_folder]
    if source_format == "dicom":
        if not labels_folder:
            raise C.ConversionError("--format dicom needs --labels_folder (the folder holding labelXXXX.nii.gz)")
        labels_path = C.require_dir(Path(labels_folder).expanduser().resolve(), "Pancreas-CT label folder")
        sources.append(labels_path)
        available = find_dicom_cases(input_folder, labels_path)
    elif source_format == "h5":
        if hu_window:
            raise C.ConversionError("--hu_window applies to DICOM (HU) input only; the h5 releases are already "
                                    "windowed and normalised")
        available = find_h5_cases(input_folder)
    else:
        raise C.ConversionError(f"unknown --format {source_format!r}; choose dicom or h5")
    missing = [n for n in train_numbers + test_numbers if n not in available]
    if missing:
        raise C.ConversionError(f"{len(missing)} case(s) of --convention {convention} not found in {input_folder}: "
                                f"{missing[:8]}{' ...' if len(missing) > 8 else ''}")
    labeled_numbers, unlabeled_numbers = C.take_labeled(train_numbers, labeled, f"the {convention} training set")

    out = C.prepare_output_folder(C.resolve_raw_root(output) / C.dataset_folder_name(dataset_id, DATASET_NAME),
                                  overwrite, sources, install_split, preprocessed)
    number_of = {case_id(n): n for n in available}

    def load_case(cid):
        number = number_of[cid]
        if source_format == "h5":
            h5_file = available[number]
            image, label = C.read_h5_image_label(h5_file)
            spacing = (h5_spacing,) * 3
            return ([C.image_from_xyz_array(image, spacing)], C.image_from_xyz_array(label, spacing),
                    {"image": h5_file, "label": f"{h5_file} (dataset 'label')"})
        dicom_folder, label_path = available[number]
        image = read_dicom_series(dicom_folder)
        if hu_window:
            image = sitk.Clamp(sitk.Cast(image, sitk.sitkFloat32), sitk.sitkFloat32, *HU_WINDOW)
        label = sitk.ReadImage(str(label_path))
        if label.GetSize() != image.GetSize():
            raise C.ConversionError(f"shape mismatch: {label_path} has size {label.GetSize()} but the DICOM series "
                                    f"{dicom_folder} has {image.GetSize()}")
        if label_geometry_from_image:
            label.CopyInformation(image)
        return [image], label, {"image": f"DICOM series {dicom_folder}", "label": label_path}

    plan = ([(case_id(n), "labeled") for n in labeled_numbers] + [(case_id(n), "unlabeled") for n in
                                                                   unlabeled_numbers]
            + [(case_id(n), "test") for n in test_numbers])
    C.write_dataset(out, plan, load_case, channel_names={0: "CT"}, labels={"background": 0, "pancreas": 1},
                    allowed_label_values={0, 1}, strict=strict,
                    protocol={"dataset": "NIH Pancreas-CT (TCIA)", "convention": convention,
                              "source_format": source_format, "source": str(input_folder),
                              "train_list": train_list, "test_list": test_list, "excluded": [case_id(n) for n in
                                                                                             excluded],
                              "hu_window": list(HU_WINDOW) if hu_window else None,
                              "resampled": False, "gt_box_cropped_by_this_script": False,
                              "notes": "h5 sources are already cropped around the ground-truth pancreas by their "
                                       "authors" if source_format == "h5" else "original TCIA geometry"},
                    dataset_json_extra={"dataset_name": C.dataset_folder_name(dataset_id, DATASET_NAME),
                                        "reference": "Roth et al., NIH Pancreas-CT, TCIA",
                                        "license": "CC BY 3.0 (TCIA)"})
    C.finish(out, install_split, preprocessed)
    return out


@exits_on_user_error(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", required=True,
                        help="DICOM root (PANCREAS_XXXX folders) or folder of h5 files")
    parser.add_argument("--format", dest="source_format", choices=("dicom", "h5"), default="dicom")
    parser.add_argument("--labels_folder", default=None, help="folder of labelXXXX.nii.gz (DICOM format only)")
    parser.add_argument("--convention", choices=CONVENTIONS, default="coranet",
                        help="split convention (default: coranet)")
    parser.add_argument("--train-list", default=None, help="MC-Net+ train.list (--convention mcnet)")
    parser.add_argument("--test-list", default=None, help="MC-Net+ test.list (--convention mcnet)")
    parser.add_argument("--hu-window", action="store_true",
                        help=f"clip HU to {list(HU_WINDOW)} (DICOM only; off by default: nnU-Net's CT "
                             f"normalisation clips to foreground percentiles itself)")
    parser.add_argument("--h5-spacing", type=float, default=1.0,
                        help="isotropic spacing in mm for h5 input (not stored in the files; default 1.0)")
    parser.add_argument("--label-geometry-from-image", action="store_true",
                        help="copy the DICOM geometry onto a label whose header disagrees (same voxel grid "
                             "assumed)")
    parser.add_argument("--preprocessed", default=None, help="nnU-Net preprocessed root for --install_split")
    C.add_common_arguments(parser, DATASET_ID, labeled_default=12)
    deprecated_alias(parser, "--labels", "--labels_folder")  # -l/--labels is nnU-Net's list of label values
    args = parser.parse_args(argv)
    labeled, strict = C.resolve_budget(args.labeled, args.raw_unlabeled)
    convert(args.input, args.output, args.dataset_id, args.source_format, args.labels_folder, args.convention,
            labeled, strict, args.train_list, args.test_list, args.hu_window, args.h5_spacing,
            args.label_geometry_from_image, args.overwrite, args.install_split, args.preprocessed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
