"""Shared helpers for the dataset conversion scripts (``dataset_conversion/Dataset*.py``).

Every script builds a *plan*: a list of ``(case_id, role)`` pairs plus a function that loads one case as
SimpleITK images. :func:`write_dataset` then validates and writes the cases into an nnU-Net raw dataset and
writes ``dataset.json`` (through nnunetv2's ``generate_dataset_json``), the label-budget split
``splits_ssl.json`` and ``ssl_protocol.json``.

Roles and where they go:

====================  ===================================  ======================================
role                  split-level protocol (default)       ``--raw_unlabeled`` (strict) protocol
====================  ===================================  ======================================
``labeled``           imagesTr + labelsTr, split ``train``  imagesTr + labelsTr, split ``train``
``val``               imagesTr + labelsTr, split ``val``    imagesTr + labelsTr, split ``val``
``unlabeled``         imagesTr + labelsTr, split            imagesUnlabeled + labelsUnlabeled
                      ``unlabeled`` (labels hidden)         (masks for diagnostics only)
``unlabeled_only``    imagesUnlabeled (no label exists)     imagesUnlabeled
``test``              imagesTs (+ labelsTs if labelled)     imagesTs (+ labelsTs if labelled)
====================  ===================================  ======================================

Split format (what ``nnUNetv2_ssl_split`` writes and the trainers read): a list of folds, each
``{"train": [...], "val": [...], "unlabeled": [...]}``. ``unlabeled`` lists cases that are in imagesTr/labelsTr
but whose labels semi-supervised trainers must not read; in the strict protocol it is empty, because those
cases are not in imagesTr at all (they are in imagesUnlabeled). Without a validation role, ``val`` equals
``train`` (nnU-Net's own ``fold='all'`` convention; nnU-Net logs a warning about the overlap, which is intended).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_ssl.cli_flags import one_spelling_each
from nnunet_ssl.errors import UserError

SPLIT_FILE_NAME = "splits_ssl.json"
PROTOCOL_FILE_NAME = "ssl_protocol.json"
FILE_ENDING = ".nii.gz"
ROLES = ("labeled", "val", "unlabeled", "unlabeled_only", "test")
_CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


class ConversionError(UserError):
    """Bad input or refused output; the message names the file/setting and how to fix it."""


# ----------------------------------------------------------------------------------------------- paths
def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 0 < dataset_id < 1000:
        raise ConversionError(f"dataset id must be in 1..999 (nnU-Net uses three digits), got {dataset_id}")
    return f"Dataset{dataset_id:03d}_{name}"


def resolve_raw_root(output: Optional[str]) -> Path:
    """``-o`` if given, else ``$nnUNet_raw``."""
    root = output if output else os.environ.get("nnUNet_raw")
    if not root:
        raise ConversionError("no output folder: pass -o/--output or set the nnUNet_raw environment variable")
    return Path(root).expanduser().resolve()


def _is_within(path: Path, other: Path) -> bool:
    try:
        path.resolve().relative_to(other.resolve())
        return True
    except ValueError:
        return False


def prepare_output_folder(folder: Path, overwrite: bool, sources: Iterable[Path], install_split: bool = False,
                          preprocessed_root: Optional[str] = None) -> Path:
    """Create ``folder``; refuse if it exists (unless ``overwrite``) or overlaps a source folder.

    With ``install_split``, also refuse up front if the split could not be installed afterwards.
    """
    folder = Path(folder).resolve()
    if install_split:
        split_install_target(folder, preprocessed_root)
    for src in sources:
        src = Path(src)
        if _is_within(folder, src) or _is_within(src, folder):
            raise ConversionError(f"output folder {folder} overlaps the source {src}; choose another -o so the "
                                  f"source data is never modified")
    if folder.exists():
        if not overwrite:
            raise ConversionError(f"output dataset {folder} already exists; pass --overwrite to replace it or "
                                  f"choose another dataset id (-d)")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def require_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"missing {what}: {path}")
    return path


def require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ConversionError(f"missing {what}: {path}")
    return path


def read_case_list(path: Path) -> list[str]:
    """One case per line (UA-MT/SSL4MIS list files); blank lines and '#' comments skipped.

    Entries may be paths or carry an extension (``data/BraTS19_x.h5``, ``image0001_norm.h5``): the base name
    without extension is returned. Duplicates are an error.
    """
    path = require_file(path, "case list")
    cases = []
    for line in path.read_text().splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        name = entry.replace("\\", "/").rstrip("/").split("/")[-1]
        for ext in (".nii.gz", ".h5", ".nii"):
            if name.endswith(ext):
                name = name[: -len(ext)]
        cases.append(name)
    duplicates = sorted({c for c in cases if cases.count(c) > 1})
    if duplicates:
        raise ConversionError(f"case list {path} has duplicate entries: {duplicates}")
    if not cases:
        raise ConversionError(f"case list {path} is empty")
    return cases


def check_case_id(case_id: str) -> str:
    if not _CASE_ID_PATTERN.match(case_id):
        raise ConversionError(f"case id {case_id!r} is not usable as an nnU-Net file name (letters, digits, "
                              f"'_' and '-' only)")
    return case_id


# ------------------------------------------------------------------------------------------ images
def image_from_xyz_array(array_xyz: np.ndarray, spacing_xyz: Sequence[float]) -> sitk.Image:
    """Array with axes (x, y, z) (h5 releases, nibabel order) -> SimpleITK image with that spacing.

    SimpleITK's numpy view is (z, y, x), hence the transpose; the origin is 0 and the direction identity.
    """
    if array_xyz.ndim != 3:
        raise ConversionError(f"expected a 3D array, got shape {array_xyz.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array_xyz, (2, 1, 0))))
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    return image


def check_label_values(label: sitk.Image | np.ndarray, allowed: Iterable[int], file) -> None:
    array = sitk.GetArrayViewFromImage(label) if isinstance(label, sitk.Image) else np.asarray(label)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ConversionError(f"label file {file} holds non-integer values; expected integers in "
                                  f"{sorted(allowed)}")
    unexpected = sorted(set(np.unique(array).tolist()) - set(allowed))
    if unexpected:
        raise ConversionError(f"label file {file} holds values {unexpected} outside the expected set "
                              f"{sorted(allowed)}")


def read_h5_image_label(h5_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, label uint8) of an SSL-release h5 file (datasets ``image``/``label``, same 3D shape,
    binary labels), as the LA and Pancreas releases store them."""
    try:
        import h5py
    except ImportError:
        raise ConversionError(f"{h5_file}: reading the h5 releases needs h5py, an optional dependency of nnunet_ssl. "
                              f"Install it with `pip install \"nnunet_ssl[conversion]\"` (or `pip install -e "
                              f"\".[conversion]\"` in the repository, or `pip install h5py`).") from None
    require_file(Path(h5_file), "h5 file")
    with h5py.File(h5_file, "r") as f:
        for key in ("image", "label"):
            if key not in f:
                raise ConversionError(f"{h5_file} has no dataset {key!r} (found {sorted(f.keys())})")
        image, label = f["image"][()], f["label"][()]
    if image.ndim != 3 or image.shape != label.shape:
        raise ConversionError(f"{h5_file}: image shape {image.shape} and label shape {label.shape} must be the "
                              f"same 3D shape")
    check_label_values(label, {0, 1}, f"{h5_file} (dataset 'label')")
    return image.astype(np.float32, copy=False), label.astype(np.uint8)


def check_same_geometry(reference: sitk.Image, other: sitk.Image, reference_file, other_file,
                        check_physical: bool = True) -> None:
    if reference.GetSize() != other.GetSize():
        raise ConversionError(f"shape mismatch: {other_file} has size {other.GetSize()} but {reference_file} "
                              f"has {reference.GetSize()}")
    if check_physical:
        for what, a, b in (("spacing", reference.GetSpacing(), other.GetSpacing()),
                           ("origin", reference.GetOrigin(), other.GetOrigin()),
                           ("direction", reference.GetDirection(), other.GetDirection())):
            if not np.allclose(a, b, atol=1e-3, rtol=1e-4):
                raise ConversionError(f"{what} mismatch: {other_file} has {tuple(round(x, 4) for x in b)} but "
                                      f"{reference_file} has {tuple(round(x, 4) for x in a)}")


def image_file(folder: Path, case_id: str, channel: int = 0) -> Path:
    return Path(folder) / f"{case_id}_{channel:04d}{FILE_ENDING}"


def label_file(folder: Path, case_id: str) -> Path:
    return Path(folder) / f"{case_id}{FILE_ENDING}"


def folders_for(role: str, strict: bool) -> tuple[str, str]:
    """(image subfolder, label subfolder) of a case with this role."""
    if role in ("labeled", "val"):
        return "imagesTr", "labelsTr"
    if role == "unlabeled":
        return ("imagesUnlabeled", "labelsUnlabeled") if strict else ("imagesTr", "labelsTr")
    if role == "unlabeled_only":
        return "imagesUnlabeled", "labelsUnlabeled"
    if role == "test":
        return "imagesTs", "labelsTs"
    raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")


# A loader returns (channel images, label image or None, {name: source file} for error messages).
CaseLoader = Callable[[str], tuple[list[sitk.Image], Optional[sitk.Image], dict]]


def write_dataset(out_folder: Path, plan: Sequence[tuple[str, str]], load_case: CaseLoader, *,
                  channel_names: dict, labels: dict, allowed_label_values: Iterable[int], strict: bool,
                  protocol: dict, dataset_json_extra: Optional[dict] = None, regions_class_order=None,
                  check_physical_geometry: bool = True, write_split: bool = True) -> dict:
    """Validate and write every case of ``plan``; write dataset.json, splits_ssl.json and ssl_protocol.json.

    Returns the protocol dict as written (with the case lists filled in).
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    ids = [c for c, _ in plan]
    duplicates = sorted({c for c in ids if ids.count(c) > 1})
    if duplicates:
        raise ConversionError(f"cases assigned twice (check the list files): {duplicates}")
    allowed = set(int(v) for v in allowed_label_values)
    by_role = {r: [] for r in ROLES}
    for case_id, role in plan:
        check_case_id(case_id)
        channels, label, sources = load_case(case_id)
        if len(channels) != len(channel_names):
            raise ConversionError(f"case {case_id}: got {len(channels)} channels, expected {len(channel_names)}")
        first = sources.get("image", case_id)
        for c, img in enumerate(channels[1:], start=1):
            check_same_geometry(channels[0], img, first, sources.get(f"image{c}", f"{case_id} channel {c}"),
                                check_physical_geometry)
        image_sub, label_sub = folders_for(role, strict)
        if label is None and role in ("labeled", "val", "unlabeled"):
            raise ConversionError(f"case {case_id} needs a label for role {role!r} but none was found")
        if label is not None:
            check_same_geometry(channels[0], label, first, sources.get("label", f"{case_id} label"),
                                check_physical_geometry)
            check_label_values(label, allowed, sources.get("label", f"{case_id} label"))
        (out_folder / image_sub).mkdir(exist_ok=True)
        for c, img in enumerate(channels):
            sitk.WriteImage(img, str(image_file(out_folder / image_sub, case_id, c)), useCompression=True)
        if label is not None:
            (out_folder / label_sub).mkdir(exist_ok=True)
            label = sitk.Cast(label, sitk.sitkUInt8) if max(allowed) < 256 else label
            sitk.WriteImage(label, str(label_file(out_folder / label_sub, case_id)), useCompression=True)
        by_role[role].append(case_id)

    num_training = len(by_role["labeled"]) + len(by_role["val"]) + (0 if strict else len(by_role["unlabeled"]))
    if num_training == 0:
        raise ConversionError("no labelled training case was written; check the lists and --labeled")

    protocol = dict(protocol)
    protocol.update({
        "mode": "raw-unlabeled" if strict else "split-level",
        "n_labeled": len(by_role["labeled"]),
        "labeled": by_role["labeled"],
        "val": by_role["val"],
        "unlabeled": by_role["unlabeled"],
        "unlabeled_without_labels": by_role["unlabeled_only"],
        "test": by_role["test"],
        "split_file": SPLIT_FILE_NAME if write_split else None,
        "where": {
            "labeled/val": "imagesTr + labelsTr",
            "unlabeled": "imagesUnlabeled + labelsUnlabeled (labels for diagnostics only)" if strict else
            "imagesTr + labelsTr, listed under 'unlabeled' in the split (labels hidden from SSL trainers; they "
            "did take part in nnU-Net planning/fingerprint)",
            "unlabeled_without_labels": "imagesUnlabeled",
            "test": "imagesTs (+ labelsTs where labelled)",
        },
    })
    if write_split:
        split = build_ssl_split(by_role["labeled"], by_role["unlabeled"], by_role["val"], strict)
        save_json(split, out_folder / SPLIT_FILE_NAME)
    save_json(protocol, out_folder / PROTOCOL_FILE_NAME)
    extra = dict(dataset_json_extra or {})
    extra["ssl_protocol"] = {k: protocol[k] for k in ("mode", "n_labeled") if k in protocol}
    extra["ssl_protocol"].update({"convention": protocol.get("convention"), "details": PROTOCOL_FILE_NAME,
                                  "num_unlabeled_raw": len(list((out_folder / "imagesUnlabeled").glob(
                                      f"*_0000{FILE_ENDING}")))})
    generate_dataset_json(str(out_folder), channel_names=channel_names, labels=labels,
                          num_training_cases=num_training, file_ending=FILE_ENDING,
                          regions_class_order=regions_class_order, converted_by="nnunet_ssl dataset_conversion",
                          **extra)
    return protocol


def build_ssl_split(labeled: Sequence[str], unlabeled: Sequence[str], val: Sequence[str],
                    strict: bool) -> list[dict]:
    """One fold: ``train`` = labelled budget, ``val`` = the val cases (or ``train`` if none), ``unlabeled`` =
    hidden-label cases in imagesTr (empty in strict mode: those live in imagesUnlabeled)."""
    if not labeled:
        raise ConversionError("the labelled set is empty; use --labeled >= 1")
    return [{"train": list(labeled), "val": list(val) if val else list(labeled),
             "unlabeled": [] if strict else list(unlabeled)}]


def save_json(obj, path: Path) -> None:
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")


def install_split(raw_dataset_folder: Path, preprocessed_root: Optional[str] = None) -> Path:
    """Copy ``splits_ssl.json`` to ``$nnUNet_preprocessed/DatasetXXX/splits_final.json``; never overwrite."""
    target = split_install_target(raw_dataset_folder, preprocessed_root)
    source = require_file(Path(raw_dataset_folder) / SPLIT_FILE_NAME, "split file")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def split_install_target(raw_dataset_folder: Path, preprocessed_root: Optional[str] = None) -> Path:
    """``$nnUNet_preprocessed/DatasetXXX/splits_final.json``; error if it exists (never overwritten)."""
    root = preprocessed_root or os.environ.get("nnUNet_preprocessed")
    if not root:
        raise ConversionError("--install_split needs the nnUNet_preprocessed environment variable (or "
                              "--preprocessed)")
    target = Path(root).expanduser() / Path(raw_dataset_folder).name / "splits_final.json"
    if target.exists():
        raise ConversionError(f"{target} already exists; not overwriting it. Remove it yourself if the new "
                              f"split should replace it")
    return target


def split_copy_command(raw_dataset_folder: Path) -> str:
    name = Path(raw_dataset_folder).name
    return (f'mkdir -p "$nnUNet_preprocessed/{name}" && cp -n "{Path(raw_dataset_folder) / SPLIT_FILE_NAME}" '
            f'"$nnUNet_preprocessed/{name}/splits_final.json"')


# ------------------------------------------------------------------------------------------- CLI
def add_common_arguments(parser: argparse.ArgumentParser, dataset_id: int, labeled_default: Optional[int],
                         budget: bool = True) -> None:
    parser.add_argument("-o", "--output", default=None,
                        help="nnU-Net raw folder to write into (default: $nnUNet_raw)")
    parser.add_argument("-d", "--dataset-id", type=int, default=dataset_id,
                        help=f"nnU-Net dataset id (default: {dataset_id})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output dataset folder")
    if budget:
        parser.add_argument("--labeled", type=int, default=labeled_default,
                            help=f"number of labelled training cases (default: {labeled_default})")
        parser.add_argument("--raw-unlabeled", nargs="?", type=int, const=-1, default=None, metavar="N_LABELED",
                            help="strict protocol: only the labelled cases go to imagesTr/labelsTr, the other "
                                 "training cases to imagesUnlabeled (their masks to labelsUnlabeled/, diagnostics "
                                 "only). Optional value: the number of labelled cases (same as --labeled)")
        parser.add_argument("--install-split", action="store_true",
                            help="also copy splits_ssl.json to $nnUNet_preprocessed/DatasetXXX/splits_final.json "
                                 "(refuses to overwrite an existing one)")
    # called last by every conversion: the project's option vocabulary (-i, -o, -d; underscores), old spellings warn
    one_spelling_each(parser)


def resolve_budget(labeled: Optional[int], raw_unlabeled: Optional[int]) -> tuple[Optional[int], bool]:
    """(number of labelled cases, strict?) from ``--labeled`` and ``--raw_unlabeled [N]``.

    ``--raw_unlabeled N`` sets the budget itself; a bare ``--raw_unlabeled`` keeps ``--labeled``.
    """
    strict = raw_unlabeled is not None
    if strict and raw_unlabeled != -1:
        labeled = raw_unlabeled
    if labeled is not None and labeled < 1:
        raise ConversionError(f"--labeled/--raw_unlabeled must be >= 1, got {labeled}")
    return labeled, strict


def take_labeled(pool: Sequence[str], n_labeled: int, what: str) -> tuple[list[str], list[str]]:
    """First ``n_labeled`` of ``pool`` (list order, the literature convention) and the rest."""
    if n_labeled > len(pool):
        raise ConversionError(f"--labeled {n_labeled} exceeds the {len(pool)} cases of {what}")
    return list(pool[:n_labeled]), list(pool[n_labeled:])


def finish(out_folder: Path, install: bool, preprocessed_root: Optional[str] = None,
           split_written: bool = True) -> None:
    print(f"wrote {out_folder}")
    if not split_written:
        return
    if install:
        print(f"installed split: {install_split(out_folder, preprocessed_root)}")
    else:
        print("to use the label-budget split, after nnUNetv2_plan_and_preprocess run:\n  "
              + split_copy_command(out_folder))
