"""Pseudo-labels: predicted with nnU-Net's predictor, stored as a preprocessed nnU-Net dataset.

Why the preprocessed arrays are predicted directly: ``nnUNetv2_predict`` preprocesses a raw image, runs
``predict_logits_from_preprocessed_data`` (sliding window, Gaussian tile weighting, mirroring) and then resamples
the logits back to the raw image. Training reads the *preprocessed* arrays, so predicting those (the unlabelled
cases are already preprocessed with the same plans) gives exactly the logits ``nnUNetv2_predict`` computes
before its export, with no export-and-re-preprocess round trip (two resamplings of the labels, and time).

Layout, beside nnU-Net's own folders of ``nnUNet_preprocessed/DatasetXXX``::

    <data_identifier>_pseudolabels_fold_<F>/        a preprocessed nnU-Net (blosc2) dataset:
        <case>.b2nd                                 the image: a hard link to the preprocessed image (copy if the
                                                    file system cannot link), never written to
        <case>_seg.b2nd                             channel 0 argmax label, channel 1 weight bucket (weighting.py)
        <case>.pkl                                  class_locations of the pseudo-labels (foreground oversampling)
        confidence/<case>.b2nd                      max softmax probability (1 channel, float16), so the weights
                                                    can be redone without predicting again
    <data_identifier>_pseudolabels_fold_<F>.json    manifest: the model (path, size, mtime, sha256), predictor
                                                    settings, weighting, cases and their source folders, and the
                                                    settings of the training stage that reads the folder

Only the image files (``<case>.b2nd``) of the source folders are read, never their ``_seg.b2nd`` or ``.pkl``:
for cases whose labels a split hides, those hold the hidden labels (and for ``imagesUnlabeled`` cases with
``labelsUnlabeled`` the reference masks).
"""
import datetime
import hashlib
import os
import shutil
from typing import Dict, Optional

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, save_json, write_pickle
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

from nnunet_ssl.data.unlabeled_dataset import manifest_file
from nnunet_ssl.self_training.weighting import WEIGHT_LEVELS, encode_weights, voxel_weights

CONFIDENCE_FOLDER = "confidence"
MANIFEST_FORMAT = 1


def pseudo_label_folder(preprocessed_dataset_base: str, data_identifier: str, fold) -> str:
    return join(preprocessed_dataset_base, f"{data_identifier}_pseudolabels_fold_{fold}")


def read_pseudo_manifest(folder: str) -> Optional[dict]:
    f = manifest_file(folder)
    return load_json(f) if isfile(f) else None


def write_pseudo_manifest(folder: str, manifest: dict) -> None:
    save_json(manifest, manifest_file(folder), sort_keys=False)


def model_fingerprint(checkpoint: str) -> dict:
    """What identifies the model that makes pseudo-labels: its checkpoint's path, size, mtime and sha256."""
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    stat = os.stat(checkpoint)
    return {"checkpoint": os.path.abspath(checkpoint), "size": stat.st_size,
            "mtime": datetime.datetime.fromtimestamp(stat.st_mtime, datetime.timezone.utc).isoformat(),
            "sha256": digest.hexdigest()}


def image_file(source_folder: str, case: str) -> str:
    return join(source_folder, case + ".b2nd")


def read_image(source_folder: str, case: str) -> np.ndarray:
    """The preprocessed image only (never the case's ``_seg.b2nd`` or ``.pkl``)."""
    import blosc2
    return blosc2.open(urlpath=image_file(source_folder, case), mode="r")[:]


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(src, dst)


def _save_array(array: np.ndarray, truncated: str, patch_size) -> None:
    """nnU-Net's blosc2 writer, with the chunking nnU-Net's preprocessor uses for this patch size."""
    blocks, chunks = comp_blosc2_params(array.shape, tuple(patch_size), array.itemsize)
    nnUNetDatasetBlosc2.save_seg(array, truncated, chunks_seg=chunks, blocks_seg=blocks)


def _read_array(path: str) -> np.ndarray:
    import blosc2
    return blosc2.open(urlpath=path, mode="r")[:]


def write_weighted_labels(folder: str, case: str, labels: np.ndarray, confidence: np.ndarray, weighting: dict,
                          num_classes: int, foreground_labels, patch_size) -> float:
    """``<case>_seg.b2nd`` (label, weight bucket) and ``<case>.pkl``; returns the mean weight."""
    weights = voxel_weights(confidence.astype(np.float32), num_classes, weighting["threshold"], weighting["mode"])
    seg = np.stack((labels.astype(np.int16), encode_weights(weights, weighting["levels"])))
    _save_array(seg, join(folder, case + "_seg"), patch_size)
    # foreground oversampling centres patches on voxels that count (weight > 0)
    locations = DefaultPreprocessor._sample_foreground_locations(np.where(weights > 0, labels, 0)[None],
                                                                  list(foreground_labels), seed=1234)
    write_pickle({"class_locations": locations, "shape": tuple(labels.shape)}, join(folder, case + ".pkl"))
    return float(weights.mean())


def reweight_case(folder: str, case: str, weighting: dict, num_classes: int, foreground_labels,
                  patch_size) -> float:
    """Weights from the stored confidences again (a new threshold or weighting, same predictions)."""
    labels = _read_array(join(folder, case + "_seg.b2nd"))[0]
    confidence = _read_array(join(folder, CONFIDENCE_FOLDER, case + ".b2nd"))[0]
    return write_weighted_labels(folder, case, labels, confidence, weighting, num_classes, foreground_labels,
                                 patch_size)


def make_predictor(model_folder: str, fold, device: torch.device, use_mirroring: bool, tile_step_size: float):
    """nnU-Net's predictor for one fold of a trained model folder (``checkpoint_final.pth``)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, use_folds=(fold,),
                                                   checkpoint_name="checkpoint_final.pth")
    return predictor


def predict_case(predictor, image: np.ndarray):
    """(argmax labels, max probability as float16) of one preprocessed image, as nnUNetv2_predict computes them
    before export."""
    with torch.no_grad():
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(image))
        probabilities = predictor.label_manager.apply_inference_nonlin(logits.float())
        labels = predictor.label_manager.convert_probabilities_to_segmentation(probabilities)
        confidence = probabilities.max(0).values
    return labels.cpu().numpy(), confidence.cpu().numpy().astype(np.float16)


def predict_pseudo_labels(predictor, cases: Dict[str, str], folder: str, weighting: dict, patch_size,
                          log=print) -> Dict[str, float]:
    """Predict every case ({case: source folder}) into ``folder`` (created); returns {case: mean weight}."""
    os.makedirs(join(folder, CONFIDENCE_FOLDER))
    label_manager = predictor.label_manager
    mean_weights = {}
    for i, (case, source) in enumerate(sorted(cases.items())):
        labels, confidence = predict_case(predictor, read_image(source, case))
        _link_or_copy(image_file(source, case), join(folder, case + ".b2nd"))
        _save_array(confidence[None], join(folder, CONFIDENCE_FOLDER, case), patch_size)
        mean_weights[case] = write_weighted_labels(folder, case, labels, confidence, weighting,
                                                   label_manager.num_segmentation_heads,
                                                   label_manager.foreground_labels, patch_size)
        log(f"  pseudo-labelled {case} ({i + 1}/{len(cases)}): mean voxel weight {mean_weights[case]:.3f}")
    return mean_weights


def weighting_settings(mode: str, threshold: float) -> dict:
    return {"mode": mode, "threshold": float(threshold), "levels": WEIGHT_LEVELS}
