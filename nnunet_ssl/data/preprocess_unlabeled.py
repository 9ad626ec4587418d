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
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, save_json
from tqdm import tqdm

from nnunet_ssl.data.unlabeled_dataset import (UNLABELED_RAW_FOLDER, UNLABELED_REFERENCE_RAW_FOLDER,
                                               UnlabeledDataError, manifest_file, misnamed_folders,
                                               preprocessing_fingerprint, unlabeled_preprocessed_folder)
from nnunet_ssl.errors import exits_on_user_error, resolve_dataset_name, warn

PROG = "nnUNetv2_ssl_preprocess_unlabeled"
# nnUNetv2_preprocess's default processes per configuration (4 for any other)
NNUNET_DEFAULT_NP = {"2d": 8, "3d_fullres": 4, "3d_lowres": 8}
__all__ = ["UnlabeledDataError", "collect_unlabeled_cases", "labelled_case_names", "preprocess_unlabeled", "main"]


_SITK_HEADER_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".gipl", ".gipl.gz")
# readers whose spacing is SimpleITK's header spacing in reversed axis order (the reorienting ones permute axes)
_HEADER_SPACING_READERS = ("SimpleITKIO", "NibabelIO")
# an unlabelled image whose spacing is more than this factor outside the training images' range on some axis is
# refused (a wrong header, a 2D image, another dataset's image); nnU-Net resamples anything closer
SPACING_FACTOR = 10.0


class ImageInfo(NamedTuple):
    """What the checks compare of an image file."""
    shape: Tuple[int, ...]      # spatial size as stored
    dimension: int              # spatial dimensions stored in the file (2 for a 2D image)
    components: int             # values per voxel (1 scalar; 3 for an RGB/vector image)
    spacing: Tuple[float, ...]  # nnU-Net's spacing (axis order and 2D convention of the dataset's reader)


def read_image_info(path: str, reader_class) -> ImageInfo:
    """An image file's :class:`ImageInfo`: from the header alone where SimpleITK can read it and the dataset's
    reader is SimpleITK's or nibabel's (spacing as ``SimpleITKIO`` reports it: reversed, a 2D image gets a first
    axis of 999 x its largest spacing), else from the whole image read with ``reader_class``."""
    if path.lower().endswith(_SITK_HEADER_ENDINGS) and reader_class.__name__ in _HEADER_SPACING_READERS:
        import SimpleITK as sitk
        r = sitk.ImageFileReader()
        r.SetFileName(path)
        r.ReadImageInformation()
        spacing = [abs(float(x)) for x in r.GetSpacing()][::-1]
        if r.GetDimension() == 2:
            spacing = [max(spacing) * 999] + spacing
        elif r.GetDimension() == 4:  # several channels in one file: the first (reversed) axis is the channel
            spacing = spacing[1:]
        return ImageInfo(tuple(r.GetSize()), r.GetDimension(), r.GetNumberOfComponents(), tuple(spacing))
    data, properties = reader_class().read_images((path,))
    return ImageInfo(tuple(data.shape[1:]), data.ndim - 1, data.shape[0],
                     tuple(abs(float(x)) for x in properties["spacing"]))


class DatasetImages(NamedTuple):
    """What an unlabelled image must share with the dataset's training images."""
    channels: List[ImageInfo]      # of one imagesTr case, channel by channel
    example_files: List[str]       # that case's files
    spacing_min: Tuple[float, ...]  # per axis, over the training cases
    spacing_max: Tuple[float, ...]
    spacing_source: str            # where the spacings come from


def dataset_images(raw_dataset_folder: str, preprocessed_dataset_base: str, dataset_json: dict,
                   reader_class) -> Optional[DatasetImages]:
    """Dimensionality and components of the training images (the first imagesTr case's headers) and the range of
    their spacings (nnU-Net's ``dataset_fingerprint.json``, written by ``nnUNetv2_plan_and_preprocess``, else the
    imagesTr headers). ``None`` if the dataset has no training images to compare with."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    try:
        cases = get_filenames_of_train_images_and_targets(raw_dataset_folder, dataset_json)
    except (OSError, KeyError):
        return None
    cases = {k: v for k, v in sorted(cases.items()) if v["images"] and all(isfile(f) for f in v["images"])}
    if not cases:
        return None

    def info(path):
        try:
            return read_image_info(path, reader_class)
        except Exception as e:  # a broken training image: name it, as for the unlabelled ones
            raise UnlabeledDataError(f"{path}: cannot be read as an image ({_one_line(e)}); the unlabelled images "
                                     f"are checked against the training images.") from e

    example = next(iter(cases.values()))["images"]
    channels = [info(f) for f in example]
    fingerprint = join(preprocessed_dataset_base, "dataset_fingerprint.json")
    spacings = load_json(fingerprint).get("spacings") if isfile(fingerprint) else None
    source = fingerprint
    if not spacings:
        spacings = [info(case["images"][0]).spacing for case in cases.values()]
        source = f"the headers of {join(raw_dataset_folder, 'imagesTr')}"
    if len({len(s) for s in spacings}) != 1:
        return DatasetImages(channels, example, (), (), source)
    spacing_min = tuple(float(min(abs(s[a]) for s in spacings)) for a in range(len(spacings[0])))
    spacing_max = tuple(float(max(abs(s[a]) for s in spacings)) for a in range(len(spacings[0])))
    return DatasetImages(channels, example, spacing_min, spacing_max, source)


def _one_line(e: Exception) -> str:
    """A reader's exception in one line (SimpleITK's messages span several)."""
    return f"{type(e).__name__}: " + " ".join(str(e).split())


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _image_kind(info: ImageInfo) -> str:
    return f"{info.dimension}D image" + (f" with {info.components} components per voxel" if info.components > 1
                                         else "")


def check_against_dataset(files: Sequence[str], infos: Sequence[ImageInfo], reference: DatasetImages) -> None:
    """Refuse an unlabelled case whose images cannot belong to the dataset: another dimensionality (a 2D image among
    3D ones), another number of components per voxel (an RGB/vector image among scalar ones), or a spacing more than
    ``SPACING_FACTOR`` times outside the training images' range on some axis."""
    for channel, (f, got) in enumerate(zip(files, infos)):
        want = reference.channels[min(channel, len(reference.channels) - 1)]
        example = reference.example_files[min(channel, len(reference.example_files) - 1)]
        if (got.dimension, got.components) != (want.dimension, want.components):
            raise UnlabeledDataError(
                f"{f}: a {_image_kind(got)}, but the training images of this dataset are "
                f"{_image_kind(want).replace('image', 'images')} (e.g. {example}). nnU-Net cannot use both in one "
                f"dataset: remove the file from {UNLABELED_RAW_FOLDER} or convert it like the training images.")
    spacing = infos[0].spacing
    lo, hi = reference.spacing_min, reference.spacing_max
    if len(lo) != len(spacing):
        return
    off = [a for a in range(len(spacing)) if spacing[a] > hi[a] * SPACING_FACTOR or spacing[a] < lo[a] / SPACING_FACTOR]
    if off:
        raise UnlabeledDataError(
            f"{files[0]}: spacing {_fmt(spacing)} (nnU-Net's axis order) is more than {SPACING_FACTOR:g}x outside the "
            f"training images' spacings {_fmt(lo)} to {_fmt(hi)} on axis {', '.join(map(str, off))} (from "
            f"{reference.spacing_source}). nnU-Net resamples smaller differences, but this is a wrong header or an "
            f"image of another kind: fix its spacing or remove it from {UNLABELED_RAW_FOLDER}.")


def _warn_misnamed(raw_dataset_folder: str, expected: str, what: str) -> None:
    for name in misnamed_folders(raw_dataset_folder, expected):
        warn(PROG, f"{join(raw_dataset_folder, name)} is ignored: did you mean {expected}? Only {expected} is "
                   f"read {what}; rename the folder (or move its files) to use them.")


def collect_unlabeled_cases(raw_dataset_folder: str, dataset_json: dict, labeled_identifiers: Sequence[str],
                            reader_class, reference: Optional[DatasetImages] = None) -> Dict[str, List[str]]:
    """Validate ``imagesUnlabeled`` against ``dataset.json`` and return {case: [channel files in order]}.

    ``reader_class`` is the plans' image reader (used where SimpleITK cannot read just the header); ``reference``
    (:func:`dataset_images`) what the images must share with the training images.

    Raises ``UnlabeledDataError`` naming the offending file: a missing folder (with the near-miss folder name found
    instead, e.g. ``imagesUnlabelled``), wrong file ending, missing or extra channels, a case name that clashes with
    a labelled case, files that cannot be read, channels of different shapes, and, with ``reference``, another
    dimensionality, number of components per voxel or a spacing far outside the training images' range.
    """
    folder = join(raw_dataset_folder, UNLABELED_RAW_FOLDER)
    if not isdir(folder):
        near = misnamed_folders(raw_dataset_folder, UNLABELED_RAW_FOLDER)
        if near:
            raise UnlabeledDataError(f"{folder} does not exist, but {join(raw_dataset_folder, near[0])} does: did "
                                     f"you mean {UNLABELED_RAW_FOLDER}? Rename the folder to {UNLABELED_RAW_FOLDER}.")
        raise UnlabeledDataError(f"No unlabelled images: {folder} does not exist. Put unlabelled images there, "
                                 f"named like imagesTr: {{case}}_{{channel:04d}}{dataset_json['file_ending']}.")
    _warn_misnamed(raw_dataset_folder, UNLABELED_RAW_FOLDER, "for unlabelled images")
    _warn_misnamed(raw_dataset_folder, UNLABELED_REFERENCE_RAW_FOLDER, "for the reference masks of unlabelled images")
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
        infos = []
        for f in files:
            try:
                infos.append(read_image_info(f, reader_class))
            except Exception as e:  # the reader's own error is often cryptic: name the file
                raise UnlabeledDataError(f"{f}: cannot be read as an image ({_one_line(e)}). Replace or remove the "
                                         f"file.") from e
        if reference is not None:
            check_against_dataset(files, infos, reference)
        shapes = [(i.shape, i.components) for i in infos]
        if len(set(shapes)) != 1:
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
    reader_class = plans_manager.image_reader_writer_class
    cases = collect_unlabeled_cases(raw_folder, dataset_json, labeled, reader_class,
                                    dataset_images(raw_folder, pre_base, dataset_json, reader_class))
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
