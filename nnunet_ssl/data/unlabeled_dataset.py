"""Unlabelled cases as an nnU-Net dataset, so nnU-Net's own loader and augmentation can serve them."""
from typing import Dict, List

from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetBaseDataset, infer_dataset_class

UNLABELED_RAW_FOLDER = "imagesUnlabeled"
UNLABELED_REFERENCE_RAW_FOLDER = "labelsUnlabeled"  # optional hidden masks, read only by diagnostics


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
