"""Unlabelled cases as an nnU-Net dataset, so nnU-Net's own loader and augmentation can serve them; the manifest
that records what an unlabelled folder was made from, and the check of it against a trainer's plans."""
import difflib
import json
import os
from typing import Dict, List, Sequence

from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetBaseDataset, infer_dataset_class

from nnunet_ssl.errors import UserError

UNLABELED_RAW_FOLDER = "imagesUnlabeled"
UNLABELED_REFERENCE_RAW_FOLDER = "labelsUnlabeled"  # optional hidden masks, read only by diagnostics
# the folders nnU-Net and this plugin read in a raw dataset folder: never a misspelling of one another
RAW_FOLDER_NAMES = ("imagesTr", "labelsTr", "imagesTs", "labelsTs", UNLABELED_RAW_FOLDER,
                    UNLABELED_REFERENCE_RAW_FOLDER)


def misnamed_folders(raw_dataset_folder: str, expected: str) -> List[str]:
    """Sub-folders of a raw dataset folder named almost like ``expected``: another case, ``_``/``-``, a doubled
    letter or one typo (``imagesUnlabelled``, ``ImagesUnlabeled``, ``images_unlabeled``), which the commands would
    otherwise silently not read."""
    if not isdir(raw_dataset_folder):
        return []

    def norm(name: str) -> str:
        return name.lower().replace("_", "").replace("-", "").replace(" ", "")

    return sorted(d for d in os.listdir(raw_dataset_folder)
                  if d not in RAW_FOLDER_NAMES and isdir(join(raw_dataset_folder, d))
                  and difflib.SequenceMatcher(None, norm(d), norm(expected)).ratio() >= 0.93)


class UnlabeledDataError(UserError):
    """Bad or stale unlabelled data; the message names the file or setting and how to fix it."""


def unlabeled_preprocessed_folder(preprocessed_dataset_base: str, data_identifier: str) -> str:
    """Where ``nnUNetv2_ssl_preprocess_unlabeled`` writes a configuration's unlabelled cases.

    A sibling of nnU-Net's own ``<data_identifier>`` folder, never inside it: nnU-Net lists every case of that
    folder as labelled (``fold='all'``, new splits)."""
    return join(preprocessed_dataset_base, data_identifier + "_unlabeled")


def manifest_file(unlabeled_folder: str) -> str:
    """Case list of an unlabelled folder, kept beside it (a .json inside would confuse infer_dataset_class)."""
    return unlabeled_folder.rstrip("/") + ".json"


def read_manifest(folder: str) -> dict:
    f = manifest_file(folder)
    return load_json(f) if isfile(f) else {"cases": [], "cases_with_reference": []}


def preprocessing_fingerprint(plans_manager, configuration_manager, dataset_json: dict) -> dict:
    """Everything of the plans and dataset.json that the preprocessed unlabelled images depend on.

    Target spacing, axis transpose, normalisation (schemes, mask use, and the labelled cases' intensity statistics
    that CT normalisation uses), resampling functions, preprocessor, image reader and channel names. Patch size,
    batch size and network settings do not change preprocessed data and are left out, so plans that share a
    ``data_identifier`` (as nnU-Net allows) share the folder. JSON types, as stored in the manifest.
    """
    c = configuration_manager.configuration
    fingerprint = {
        "preprocessor_name": configuration_manager.preprocessor_name,
        "spacing": configuration_manager.spacing,
        "transpose_forward": plans_manager.transpose_forward,
        "normalization_schemes": configuration_manager.normalization_schemes,
        "use_mask_for_norm": configuration_manager.use_mask_for_norm,
        "foreground_intensity_properties_per_channel": plans_manager.foreground_intensity_properties_per_channel,
        "resampling_fn_data": c.get("resampling_fn_data"),
        "resampling_fn_data_kwargs": c.get("resampling_fn_data_kwargs"),
        "resampling_fn_seg": c.get("resampling_fn_seg"),
        "resampling_fn_seg_kwargs": c.get("resampling_fn_seg_kwargs"),
        "image_reader_writer": plans_manager.plans.get("image_reader_writer"),
        "channel_names": dataset_json.get("channel_names", dataset_json.get("modality")),
    }
    return json.loads(json.dumps(fingerprint))


def _short(value, limit: int = 70) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_unlabeled_folder(folder: str, plans_manager, configuration_manager, configuration_name: str,
                           dataset_json: dict, labelled_cases: Sequence[str]) -> dict:
    """The manifest of an unlabelled folder, once it is known to fit a trainer's plans and data.

    Refuses (``UnlabeledDataError``, naming the command that fixes it): a folder without manifest, a manifest
    without fingerprint (written before fingerprints were recorded: it cannot be checked), a fingerprint that
    differs from ``preprocessing_fingerprint`` of these plans (re-planned since), and unlabelled cases that have the
    name of a labelled case (``labelled_cases``, e.g. after the dataset was converted again).
    """
    fix = (f"Run `nnUNetv2_ssl_preprocess_unlabeled -d {plans_manager.dataset_name} -c {configuration_name} -p "
           f"{plans_manager.plans_name}` (it replaces the folder).")
    mf = manifest_file(folder)
    if not isfile(mf):
        raise UnlabeledDataError(f"{folder} has no case list {mf}, so which cases it holds and what it was made "
                                 f"from are unknown. {fix}")
    manifest = load_json(mf)
    recorded = manifest.get("fingerprint")
    if recorded is None:
        raise UnlabeledDataError(f"{mf} was written by an older nnunet_ssl and does not record the plans and "
                                 f"preprocessing settings {folder} was made with, so it cannot be checked against "
                                 f"the current plans. {fix}")
    expected = preprocessing_fingerprint(plans_manager, configuration_manager, dataset_json)
    differing = [k for k in sorted(set(expected) | set(recorded)) if expected.get(k) != recorded.get(k)]
    if differing:
        changes = "; ".join(f"{k} was {_short(recorded.get(k))}, is {_short(expected.get(k))}" for k in differing)
        raise UnlabeledDataError(f"{folder} is stale: the plans changed since it was preprocessed (then plans "
                                 f"'{manifest.get('plans')}', configuration '{manifest.get('configuration')}'; now "
                                 f"plans '{plans_manager.plans_name}', configuration '{configuration_name}'): "
                                 f"{changes}. {fix}")
    clash = sorted(set(manifest["cases"]) & set(labelled_cases))
    if clash:
        raise UnlabeledDataError(f"{mf}: unlabelled case(s) {clash[:10]}{' ...' if len(clash) > 10 else ''} have the "
                                 f"name of labelled case(s) in imagesTr (was the dataset converted again?). Rename or "
                                 f"remove them in imagesUnlabeled so names are unique, then: {fix}")
    return manifest


class UnlabeledDataset(nnUNetBaseDataset):
    """Cases from several preprocessed folders, served without ``class_locations``.

    ``sources`` maps folder -> identifiers. The unlabelled loader never oversamples foreground, so each case's
    ``class_locations`` is replaced by an empty dict (preprocessing without a segmentation does not compute it,
    and for labelled cases hidden by a label-budget split it would leak label positions into patch sampling).
    """

    def __init__(self, sources: Dict[str, List[str]]):
        self._case_to_dataset = {}
        for folder, identifiers in sources.items():
            if not identifiers:
                continue
            ds = infer_dataset_class(folder)(folder, list(identifiers))
            for i in identifiers:
                if i in self._case_to_dataset:
                    raise RuntimeError(f"Unlabelled case '{i}' is listed twice (second time in {folder}). Case "
                                       f"names must be unique across imagesTr and imagesUnlabeled.")
                self._case_to_dataset[i] = ds
        identifiers = sorted(self._case_to_dataset)
        folder = next(iter(sources)) if sources else None
        super().__init__(folder, identifiers)

    def load_case(self, identifier):
        data, seg, seg_prev, properties = self._case_to_dataset[identifier].load_case(identifier)
        properties = dict(properties)
        properties["class_locations"] = {}
        return data, seg, seg_prev, properties

    @staticmethod
    def save_case(data, seg, properties, output_filename_truncated):
        raise NotImplementedError("UnlabeledDataset is read-only")

    @staticmethod
    def get_identifiers(folder: str) -> List[str]:
        return infer_dataset_class(folder).get_identifiers(folder)
