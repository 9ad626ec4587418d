"""``nnUNetv2_ssl_preprocess_unlabeled``: preprocess ``imagesUnlabeled`` with a dataset's existing plans.

nnU-Net's own preprocessing CLIs need a label for every case, so unlabelled images go through nnU-Net's
preprocessor class (the plans' ``preprocessor_name``) case by case with ``seg_file=None``, into a folder beside
nnU-Net's (see ``unlabeled_preprocessed_folder``). Nothing is ever written into ``nnUNet_raw``. The manifest beside
the folder records the cases and what they were made from (plans identifier, ``preprocessing_fingerprint``), which
the trainers check at training start.
"""
import argparse
import multiprocessing
import os
import re
import shutil
from typing import Dict, List, Optional, Sequence

from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, save_json
from tqdm import tqdm

from nnunet_ssl.data.unlabeled_dataset import (UNLABELED_RAW_FOLDER, UNLABELED_REFERENCE_RAW_FOLDER,
                                               UnlabeledDataError, manifest_file, preprocessing_fingerprint,
                                               unlabeled_preprocessed_folder)
from nnunet_ssl.errors import exits_on_user_error, resolve_dataset_name

PROG = "nnUNetv2_ssl_preprocess_unlabeled"
# nnUNetv2_preprocess's default processes per configuration (4 for any other)
NNUNET_DEFAULT_NP = {"2d": 8, "3d_fullres": 4, "3d_lowres": 8}
__all__ = ["UnlabeledDataError", "collect_unlabeled_cases", "labelled_case_names", "preprocess_unlabeled", "main"]


_SITK_HEADER_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".gipl", ".gipl.gz")


def _read_header(path: str, reader_class) -> tuple:
    """Shape of an image file, reading only the header where SimpleITK can, the whole image otherwise."""
    if path.lower().endswith(_SITK_HEADER_ENDINGS):
        import SimpleITK as sitk
        r = sitk.ImageFileReader()
        r.SetFileName(path)
        r.ReadImageInformation()
        return tuple(r.GetSize()), r.GetNumberOfComponents()
    data, _ = reader_class().read_images((path,))
    return tuple(data.shape[1:]), data.shape[0]


def collect_unlabeled_cases(raw_dataset_folder: str, dataset_json: dict, labeled_identifiers: Sequence[str],
                            reader_class) -> Dict[str, List[str]]:
    """Validate ``imagesUnlabeled`` against ``dataset.json`` and return {case: [channel files in order]}.

    ``reader_class`` is the plans' image reader (used where SimpleITK cannot read just the header).

    Raises ``UnlabeledDataError`` naming the offending file: wrong file ending, missing or extra channels, a case
    name that clashes with a labelled case, files that cannot be read, channels of different shapes.
    """
    folder = join(raw_dataset_folder, UNLABELED_RAW_FOLDER)
    if not isdir(folder):
        raise UnlabeledDataError(f"No unlabelled images: {folder} does not exist. Put unlabelled images there, "
                                 f"named like imagesTr: {{case}}_{{channel:04d}}{dataset_json['file_ending']}.")
    file_ending = dataset_json["file_ending"]
    n_channels = len(dataset_json["channel_names"])
    pattern = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(file_ending) + "$")
    cases: Dict[str, Dict[int, str]] = {}
    for f in sorted(os.listdir(folder)):
        path = join(folder, f)
        if f.startswith(".") or not isfile(path):
            continue
        if not f.endswith(file_ending):
            raise UnlabeledDataError(f"{path}: wrong file ending. dataset.json says file_ending "
                                     f"'{file_ending}'; convert the file or fix its name.")
        m = pattern.match(f)
        if m is None:
            raise UnlabeledDataError(f"{path}: name does not follow {{case}}_{{channel:04d}}{file_ending} "
                                     f"(e.g. case_001_0000{file_ending}).")
        cases.setdefault(m.group("case"), {})[int(m.group("ch"))] = path
    if not cases:
        raise UnlabeledDataError(f"{folder} holds no images ending in {file_ending}.")
    labeled = set(labeled_identifiers)
    out = {}
    for case, channels in cases.items():
        if case in labeled:
            raise UnlabeledDataError(f"{channels[min(channels)]}: case name '{case}' is also a labelled case "
                                     f"(imagesTr/labelsTr). Rename the unlabelled case so names are unique.")
        expected = list(range(n_channels))
        if sorted(channels) != expected:
            missing = sorted(set(expected) - set(channels))
            extra = sorted(set(channels) - set(expected))
            raise UnlabeledDataError(
                f"Unlabelled case '{case}' in {folder} has channels {sorted(channels)} but dataset.json declares "
                f"{n_channels} channel(s) {list(dataset_json['channel_names'].values())}"
                + (f"; missing {[f'{case}_{c:04d}{file_ending}' for c in missing]}" if missing else "")
                + (f"; unexpected {[channels[c] for c in extra]}" if extra else "") + ".")
        files = [channels[c] for c in expected]
        shapes = []
        for f in files:
            try:
                shapes.append(_read_header(f, reader_class))
            except Exception as e:  # the reader's own error is often cryptic: name the file
                raise UnlabeledDataError(f"{f}: cannot be read as an image ({type(e).__name__}: {e}). Replace or "
                                         f"remove the file.") from e
        if len({s for s in shapes}) != 1:
            raise UnlabeledDataError(f"Unlabelled case '{case}': its channel files have different shapes "
                                     f"{dict(zip(files, shapes))}.")
        out[case] = files
    return out


def labelled_case_names(raw_dataset_folder: str, dataset_json: dict) -> List[str]:
    """Names of the labelled cases: those of imagesTr (or dataset.json's dataTr) and of every file in labelsTr."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    names = set(get_filenames_of_train_images_and_targets(raw_dataset_folder, dataset_json).keys())
    labels_folder = join(raw_dataset_folder, "labelsTr")
    ending = dataset_json["file_ending"]
    if isdir(labels_folder):
        names.update(f[:-len(ending)] for f in os.listdir(labels_folder) if f.endswith(ending))
    return sorted(names)


def _preprocess_one(args):
    preprocessor, out_trunc, files, seg_file, plans_manager, configuration_manager, dataset_json = args
    preprocessor.run_case_save(out_trunc, files, seg_file, plans_manager, configuration_manager, dataset_json)
    return os.path.basename(out_trunc)


def preprocess_unlabeled(dataset_name_or_id, configurations: Sequence[str] = ("3d_fullres",),
                         plans_identifier: str = "nnUNetPlans", num_processes: int = 1,
                         verbose: bool = True) -> Dict[str, str]:
    """Preprocess every ``imagesUnlabeled`` case for each configuration; returns {configuration: output folder}."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    for var, val in (("nnUNet_raw", nnUNet_raw), ("nnUNet_preprocessed", nnUNet_preprocessed)):
        if not val.is_set():
            raise UnlabeledDataError(f"Environment variable {var} is not set (see nnU-Net's setting_up_paths.md).")
    dataset_name = resolve_dataset_name(dataset_name_or_id)
    raw_folder = join(os.fspath(nnUNet_raw), dataset_name)
    pre_base = join(os.fspath(nnUNet_preprocessed), dataset_name)
    plans_file = join(pre_base, plans_identifier + ".json")
    if not isfile(plans_file):
        raise UnlabeledDataError(f"Plans file {plans_file} not found. Run `nnUNetv2_plan_and_preprocess -d "
                                 f"{dataset_name_or_id}` (or with `-pl`/`-overwrite_plans_name` for "
                                 f"'{plans_identifier}') first, or pass the plans identifier with -p; unlabelled "
                                 f"images are preprocessed with those plans.")
    raw_json_file = join(raw_folder, "dataset.json")
    if not isfile(raw_json_file):
        raise UnlabeledDataError(f"{raw_json_file} not found.")
    dataset_json = load_json(join(pre_base, "dataset.json")) if isfile(join(pre_base, "dataset.json")) \
        else load_json(raw_json_file)
    plans_manager = PlansManager(plans_file)
    available = list(plans_manager.available_configurations)
    for c in configurations:
        if c not in available:
            raise UnlabeledDataError(f"Configuration '{c}' is not in {plans_file}; available: {available}.")

    labeled = labelled_case_names(raw_folder, dataset_json)
    cases = collect_unlabeled_cases(raw_folder, dataset_json, labeled, plans_manager.image_reader_writer_class)
    ref_folder = join(raw_folder, UNLABELED_REFERENCE_RAW_FOLDER)
    references = {c: join(ref_folder, c + dataset_json["file_ending"]) for c in cases
                  if isfile(join(ref_folder, c + dataset_json["file_ending"]))}

    outputs = {}
    for c in configurations:
        cm = plans_manager.get_configuration(c)
        out_folder = unlabeled_preprocessed_folder(pre_base, cm.data_identifier)
        # write into a scratch folder and swap at the end, so a failure never leaves a half-updated folder
        tmp_folder = out_folder + ".partial"
        shutil.rmtree(tmp_folder, ignore_errors=True)
        os.makedirs(tmp_folder)
        preprocessor = cm.preprocessor_class(verbose=False)
        jobs = [(preprocessor, join(tmp_folder, case), files, references.get(case), plans_manager, cm, dataset_json)
                for case, files in cases.items()]
        if verbose:
            print(f"Preprocessing {len(jobs)} unlabelled case(s) for configuration {c} into {out_folder}"
                  + (f" ({len(references)} with hidden reference masks from {ref_folder})" if references else ""))
        # a progress bar like nnU-Net's preprocessing (DefaultPreprocessor.run)
        with tqdm(desc="Preprocessing unlabelled cases", total=len(jobs), disable=not verbose) as pbar:
            if num_processes > 1:
                with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
                    for _ in pool.imap_unordered(_preprocess_one, jobs):
                        pbar.update()
            else:
                for j in jobs:
                    _preprocess_one(j)
                    pbar.update()
        if isfile(manifest_file(out_folder)):  # manifest first: an interrupted swap never leaves a stale one
            os.remove(manifest_file(out_folder))
        shutil.rmtree(out_folder, ignore_errors=True)
        os.replace(tmp_folder, out_folder)
        save_json({"cases": sorted(cases), "cases_with_reference": sorted(references),
                   "plans": plans_identifier, "configuration": c, "data_identifier": cm.data_identifier,
                   "fingerprint": preprocessing_fingerprint(plans_manager, cm, dataset_json)},
                  manifest_file(out_folder))
        outputs[c] = out_folder
    return outputs


@exits_on_user_error(PROG)
def main(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Preprocess nnUNet_raw/DatasetXXX/imagesUnlabeled with the dataset's existing nnU-Net plans, "
                    "into nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled/ (an existing folder is "
                    "replaced once all cases are done).")
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-c", nargs="+", default=["3d_fullres"], help="configurations (default: 3d_fullres)")
    parser.add_argument("-p", dest="plans_name", default="nnUNetPlans",
                        help="plans identifier (default: nnUNetPlans)")
    # nnUNetv2_preprocess spells it -plans_name: accepted as nnU-Net's own spelling
    parser.add_argument("-plans_name", dest="plans_name", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("-np", type=int, nargs="+", default=None,
                        help="number of processes: one for all configurations or one per configuration (default as "
                             "nnUNetv2_preprocess: 8 for 2d, 4 for 3d_fullres, 8 for 3d_lowres, 4 otherwise)")
    args = parser.parse_args(argv)
    num_processes = args.np or [NNUNET_DEFAULT_NP.get(c, 4) for c in args.c]
    if len(num_processes) == 1:
        num_processes = num_processes * len(args.c)
    if len(num_processes) != len(args.c):
        parser.error(f"-np gives {len(num_processes)} numbers for {len(args.c)} configurations "
                     f"(-c {' '.join(args.c)}); give one number, or one per configuration")
    if len(set(num_processes)) == 1:
        preprocess_unlabeled(args.d, args.c, args.plans_name, num_processes[0])
    else:
        for configuration, n in zip(args.c, num_processes):
            preprocess_unlabeled(args.d, [configuration], args.plans_name, n)


if __name__ == "__main__":
    main()
