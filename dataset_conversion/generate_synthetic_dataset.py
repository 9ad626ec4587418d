#!/usr/bin/env python
"""Generate a small synthetic, anatomy-like nnU-Net v2 raw dataset for semi-supervised experiments and tests.

Layout written to ``raw_root/Dataset{id:03d}_{name}``:

    imagesTr/case_XXXX_{c:04d}.nii.gz   labelsTr/case_XXXX.nii.gz        labelled training cases
    imagesUnlabeled/unl_XXXX_{c:04d}.nii.gz                              unlabelled pool (no labelsTr entry)
    labelsUnlabeled/unl_XXXX.nii.gz     reference masks of the pool, for pseudo-label diagnostics only
    imagesTs/test_XXXX_{c:04d}.nii.gz   labelsTs/test_XXXX.nii.gz        held-out test cases
    dataset.json                        written by nnunetv2's generate_dataset_json (numTraining = labelled cases)

Each case contains an elongated ellipsoid "organ" (class 1) inside a body, smaller structures of classes 2..K
inside (even k) or attached to (odd k) the organ, and unlabelled distractors that copy the intensity of a labelled
tissue: round organ-like blobs without inner structures and small structure-like blobs away from the organ. Only
shape and context separate them from the real structures. A smooth multiplicative bias field (different per
channel) and Gaussian noise make intensity alone unreliable. Every channel is a different contrast of the same
anatomy.

Determinism: every case draws from its own stream ``numpy.random.default_rng([seed, case_index])``. Labelled and
then unlabelled cases take indices 0, 1, 2, ... of one training pool, and test cases take TEST_INDEX_OFFSET + i.
So, for one seed, ``--labeled 4 --unlabeled 12`` and ``--labeled 16 --unlabeled 0`` hold the same 16 training
images (split differently), and the test set does not depend on the label budget: fair few-vs-many-labels runs.

Usage:
    python dataset_conversion/generate_synthetic_dataset.py -d 990 --labeled 10 --unlabeled 10 --test 4
    python dataset_conversion/generate_synthetic_dataset.py -d 991 --dim 2 --shape 64 64 --classes 3
"""
import argparse
import os
import re
import shutil
import tempfile
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunet_ssl.cli_flags import one_spelling_each
from nnunet_ssl.errors import fail

FILE_ENDING = ".nii.gz"
LABELED_PREFIX = "case"
UNLABELED_PREFIX = "unl"
TEST_PREFIX = "test"

# Spacing in numpy (z, y, x) order. z is coarser, as in most clinical volumes.
SPACING_3D_ZYX = (1.5, 1.0, 1.0)
SPACING_2D_YX = (1.0, 1.0)
SLICE_THICKNESS_2D = 1.0

MIN_EDGE_LENGTH = 20  # smaller images often cannot hold an organ, its structures and a distractor
INTENSITY_SCALE = 1000.0  # MR-like arbitrary units
NOISE_STD = 0.07  # in units of INTENSITY_SCALE; the body/organ contrast is ~0.25, i.e. ~3.5 noise std
BIAS_LOG_AMPLITUDE = 0.3  # bias field spans roughly exp(+-0.3) = 0.74 .. 1.35
CASE_ATTEMPTS = 50
TEST_INDEX_OFFSET = 1_000_000  # test cases get their own index range, independent of the training pool size
MIN_CLASS_VOXELS = {2: 6, 3: 12}


# --------------------------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------------------------
def _check_arguments(dataset_id, name, num_labeled, num_unlabeled, num_test, shape, dim,
                     num_foreground_classes, num_channels, seed) -> Tuple[int, ...]:
    """Raise ValueError with a message naming the setting and how to fix it; return shape as a tuple of ints."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)) or not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset_id (-d) must be an integer between 1 and 999 (nnU-Net names folders "
                         f"DatasetXXX_Name), got {dataset_id!r}.")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name):
        raise ValueError(f"name (--name) must be non-empty and contain only letters, digits, '_' and '-' "
                         f"(it becomes part of a folder name), got {name!r}.")
    for setting, flag, value, minimum in (("num_labeled", "--labeled", num_labeled, 1),
                                          ("num_unlabeled", "--unlabeled", num_unlabeled, 0),
                                          ("num_test", "--test", num_test, 0),
                                          ("num_foreground_classes", "--classes", num_foreground_classes, 1),
                                          ("num_channels", "--channels", num_channels, 1),
                                          ("seed", "--seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{setting} ({flag}) must be an integer >= {minimum}, got {value!r}.")
    if dim not in (2, 3):
        raise ValueError(f"dim (--dim) must be 2 or 3, got {dim!r}.")
    shape = tuple(shape)
    if len(shape) != dim:
        raise ValueError(f"shape (--shape) must have {dim} values for dim={dim} "
                         f"({'Z Y X' if dim == 3 else 'Y X'}), got {len(shape)} values: {shape}.")
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < MIN_EDGE_LENGTH:
            raise ValueError(f"every shape (--shape) value must be an integer >= {MIN_EDGE_LENGTH} so that the organ, "
                             f"its structures and a distractor fit, got {shape}.")
    return tuple(int(s) for s in shape)


# --------------------------------------------------------------------------------------------------------------
# anatomy
# --------------------------------------------------------------------------------------------------------------
def _random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """Uniformly random rotation matrix (QR of a Gaussian matrix, sign-fixed so det = +1)."""
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _ellipsoid(coords: np.ndarray, center: np.ndarray, semi_axes: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Boolean mask of sum_i (u_i / a_i)^2 <= 1 with u = R^T (x - c); coords has shape (ndim, *image_shape) in mm."""
    offset = coords - center.reshape((-1,) + (1,) * (coords.ndim - 1))
    local = np.tensordot(rotation.T, offset, axes=1)
    radius2 = sum((local[i] / semi_axes[i]) ** 2 for i in range(len(semi_axes)))
    return radius2 <= 1.0


def _contrast_table(num_channels: int, num_foreground_classes: int) -> np.ndarray:
    """Mean intensity per (channel, tissue), tissue 0 = air, 1 = body, 1 + k = class k; fixed for the dataset.

    Channel 0 orders the tissues body < class 1 < class 2 < ...; further channels permute the foreground levels
    (a fixed permutation per channel) so each channel is another contrast of the same anatomy.
    """
    num_tissues = num_foreground_classes + 1  # body + classes
    levels = np.linspace(0.3, 0.3 + 0.25 * num_foreground_classes, num_tissues) if num_foreground_classes > 1 \
        else np.array([0.3, 0.55])
    table = np.zeros((num_channels, num_tissues + 1))
    for c in range(num_channels):
        order = np.arange(num_tissues)
        if c > 0:
            order = np.random.default_rng(c).permutation(num_tissues)  # independent of seed: a channel is a modality
            if np.array_equal(order, np.arange(num_tissues)):
                order = order[::-1]
        table[c, 1:] = levels[order]
    return table


def _sample_organ(rng, coords, extent_mm, ndim):
    """Elongated ellipsoid: semi-axes ratio 1 : ~0.65 : ~0.55 so that round distractors differ in shape."""
    long_axis = rng.uniform(0.34, 0.40) * min(extent_mm)
    ratios = np.array([1.0, rng.uniform(0.6, 0.7), rng.uniform(0.5, 0.6)])[:ndim]
    semi_axes = long_axis * ratios
    center = np.array(extent_mm) / 2 + rng.uniform(-0.12, 0.12, size=ndim) * np.array(extent_mm)
    rotation = _random_rotation(rng, ndim)
    return _ellipsoid(coords, center, semi_axes, rotation), center, semi_axes, rotation


def _sample_structure(rng, coords, organ_center, organ_axes, organ_rotation, class_index, ndim):
    """Class >= 2: even classes sit inside the organ, odd classes are attached to its surface."""
    size = rng.uniform(0.4, 0.5) * organ_axes[1]
    semi_axes = size * rng.uniform(0.8, 1.25, size=ndim)
    direction = rng.normal(size=ndim)
    direction /= np.linalg.norm(direction)
    if class_index % 2 == 0:  # inside: offset up to 45 % of the way to the organ surface
        local_offset = direction * organ_axes * rng.uniform(0.0, 0.45)
    else:  # attached: centre just outside the organ surface along a random direction
        local_offset = direction * (organ_axes + 0.4 * size)
    center = organ_center + organ_rotation @ local_offset
    return _ellipsoid(coords, center, semi_axes, _random_rotation(rng, ndim))


def _sample_labelled_anatomy(rng, coords, extent_mm, image_shape, num_foreground_classes):
    """One draw of body mask, label map and organ semi-axes, or None if a class is too small or leaves the body."""
    ndim = len(image_shape)
    body = _ellipsoid(coords, np.array(extent_mm) / 2 + rng.normal(0, 0.02, ndim) * np.array(extent_mm),
                      np.array(extent_mm) * rng.uniform(0.44, 0.5, ndim), _random_rotation(rng, ndim))
    organ, organ_center, organ_axes, organ_rotation = _sample_organ(rng, coords, extent_mm, ndim)
    label = np.zeros(image_shape, dtype=np.uint8)
    label[organ] = 1
    for k in range(2, num_foreground_classes + 1):
        label[_sample_structure(rng, coords, organ_center, organ_axes, organ_rotation, k, ndim)] = k
    counts = np.bincount(label.ravel(), minlength=num_foreground_classes + 1)
    foreground = label > 0
    touches_border = any(np.any(np.take(foreground, [0, -1], axis=a)) for a in range(ndim))
    if np.any(foreground & ~body) or touches_border or np.any(counts[1:] < MIN_CLASS_VOXELS[ndim]):
        return None
    return body, label, organ_axes


def _place_distractors(rng, coords, extent_mm, tissue, body, label, organ_axes, num_foreground_classes) -> int:
    """Paint unlabelled blobs with a labelled tissue's intensity into ``tissue``; return how many were placed.

    Round organ-like blobs (the organ is elongated and always holds/carries the other classes) and small
    structure-like blobs away from the organ (real structures sit in or on the organ): shape and context, not
    intensity, tell them apart.
    """
    ndim = tissue.ndim
    specs = [(2, 0.5 * organ_axes[1] * rng.uniform(0.8, 1.1)) for _ in range(rng.integers(1, 3))]
    specs += [(1 + k, 0.45 * organ_axes[1] * rng.uniform(0.8, 1.2)) for k in range(2, num_foreground_classes + 1)]
    keep_out = ndimage.binary_dilation(label > 0, iterations=2) | ~ndimage.binary_erosion(body, iterations=1)
    placed = 0
    for tissue_value, radius in specs:
        for _ in range(40):
            center = np.array([rng.uniform(0.15, 0.85) * e for e in extent_mm])
            blob = _ellipsoid(coords, center, radius * rng.uniform(0.9, 1.1, ndim), _random_rotation(rng, ndim))
            if blob.sum() >= MIN_CLASS_VOXELS[ndim] and not np.any(blob & keep_out):
                tissue[blob] = tissue_value
                keep_out |= ndimage.binary_dilation(blob, iterations=1)
                placed += 1
                break
            radius *= 0.96  # shrink until it fits in crowded images
    return placed


def _sample_anatomy(rng, image_shape, spacing, num_foreground_classes):
    """Return (tissue map, label map). Tissue 0 air, 1 body, 1 + k class-k tissue (also used by distractors).

    Redraws until every class has enough voxels inside the body and at least one distractor fits.
    """
    coords = np.stack(np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(image_shape, spacing)],
                                  indexing="ij")).astype(np.float32)
    extent_mm = [n * s for n, s in zip(image_shape, spacing)]
    for _ in range(CASE_ATTEMPTS):
        anatomy = _sample_labelled_anatomy(rng, coords, extent_mm, image_shape, num_foreground_classes)
        if anatomy is None:
            continue
        body, label, organ_axes = anatomy
        tissue = np.where(body, 1, 0).astype(np.uint8)
        tissue[label > 0] = label[label > 0] + 1
        if _place_distractors(rng, coords, extent_mm, tissue, body, label, organ_axes, num_foreground_classes):
            return tissue, label
    raise RuntimeError(f"could not place {num_foreground_classes} classes and a distractor inside an image of shape "
                       f"{image_shape} after {CASE_ATTEMPTS} attempts; use a larger --shape or fewer --classes.")


def _bias_field(rng, image_shape) -> np.ndarray:
    """Smooth multiplicative field exp(sum of 3 low-frequency cosines), log-amplitude <= BIAS_LOG_AMPLITUDE."""
    grid = np.stack(np.meshgrid(*[np.linspace(0, 1, n) for n in image_shape], indexing="ij"))
    log_field = np.zeros(image_shape)
    for _ in range(3):
        frequency = rng.uniform(-1.0, 1.0, size=len(image_shape))  # at most one period across the image
        phase = rng.uniform(0, 2 * np.pi)
        log_field += np.cos(2 * np.pi * np.tensordot(frequency, grid, axes=1) + phase)
    log_field *= BIAS_LOG_AMPLITUDE / max(np.abs(log_field).max(), 1e-8)
    return np.exp(log_field)


def _render_channel(rng, tissue, contrast_levels) -> np.ndarray:
    levels = contrast_levels * rng.uniform(0.95, 1.05, size=contrast_levels.shape)  # scanner-to-scanner variation
    image = levels[tissue]
    image = ndimage.gaussian_filter(image, sigma=0.5)  # partial-volume blur of the edges
    image = image * _bias_field(rng, tissue.shape) + rng.normal(0.0, NOISE_STD, size=tissue.shape)
    return (np.clip(image, 0, None) * INTENSITY_SCALE).astype(np.float32)


def generate_case(seed: int, case_index: int, shape: Sequence[int], dim: int, num_foreground_classes: int,
                  num_channels: int) -> Tuple[List[np.ndarray], np.ndarray]:
    """Images (one per channel) and label in numpy (z, y, x) order; 2D cases get a leading z axis of length 1."""
    rng = np.random.default_rng([seed, case_index])
    spacing = SPACING_3D_ZYX if dim == 3 else SPACING_2D_YX
    tissue, label = _sample_anatomy(rng, tuple(shape), spacing, num_foreground_classes)
    contrasts = _contrast_table(num_channels, num_foreground_classes)
    images = [_render_channel(rng, tissue, contrasts[c]) for c in range(num_channels)]
    if dim == 2:
        images = [img[None] for img in images]
        label = label[None]
    return images, label


def _write_nifti(array: np.ndarray, path: str, dim: int) -> None:
    image = sitk.GetImageFromArray(array)
    spacing_zyx = SPACING_3D_ZYX if dim == 3 else (SLICE_THICKNESS_2D,) + SPACING_2D_YX
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))  # SimpleITK wants (x, y, z)
    sitk.WriteImage(image, path, useCompression=True)


# --------------------------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------------------------
def generate_synthetic_dataset(raw_root: str, dataset_id: int = 990, name: str = "SyntheticSSL",
                               num_labeled: int = 10, num_unlabeled: int = 10, num_test: int = 4,
                               shape: Sequence[int] = (32, 32, 32), dim: int = 3, num_foreground_classes: int = 2,
                               num_channels: int = 1, seed: int = 0, overwrite: bool = False) -> str:
    """Write the dataset to ``raw_root/Dataset{dataset_id:03d}_{name}`` and return that folder.

    Refuses to touch an existing dataset folder unless ``overwrite=True``; with overwrite only that folder is
    replaced, and only after the new dataset was written completely (into a hidden sibling folder first).
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    shape = _check_arguments(dataset_id, name, num_labeled, num_unlabeled, num_test, shape, dim,
                             num_foreground_classes, num_channels, seed)
    if not raw_root:
        raise ValueError("raw_root (-o/--output) is empty; pass a folder or set $nnUNet_raw.")
    raw_root = os.path.abspath(raw_root)
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    dataset_folder = os.path.join(raw_root, folder_name)
    if os.path.lexists(dataset_folder) and not overwrite:
        raise FileExistsError(f"{dataset_folder} already exists; nothing was written. Pass overwrite=True "
                              f"(--overwrite) to replace this dataset folder, or choose another -d/--name.")
    if os.path.islink(dataset_folder) or (os.path.lexists(dataset_folder) and not os.path.isdir(dataset_folder)):
        raise FileExistsError(f"{dataset_folder} exists but is not a plain folder; refusing to replace it.")
    if os.path.isdir(raw_root):
        same_id = sorted(d for d in os.listdir(raw_root) if d.startswith(f"Dataset{dataset_id:03d}_")
                         and d != folder_name and os.path.isdir(os.path.join(raw_root, d)))
        if same_id:  # nnU-Net resolves -d by id and fails when two folders share it
            raise FileExistsError(f"{raw_root} already holds {same_id[0]} with dataset id {dataset_id:03d}; "
                                  f"nnU-Net needs unique ids, choose another -d.")
    os.makedirs(raw_root, exist_ok=True)

    # Write into a hidden sibling first (nnU-Net only looks at folders named Dataset*), then swap in.
    staging = tempfile.mkdtemp(prefix=f".{folder_name}.partial-", dir=raw_root)
    try:
        # (images folder, labels folder, case name prefix, number of cases, case index of the first case)
        splits = [("imagesTr", "labelsTr", LABELED_PREFIX, num_labeled, 0),
                  ("imagesUnlabeled", "labelsUnlabeled", UNLABELED_PREFIX, num_unlabeled, num_labeled),
                  ("imagesTs", "labelsTs", TEST_PREFIX, num_test, TEST_INDEX_OFFSET)]
        for images_dir, labels_dir, prefix, count, first_index in splits:
            if count == 0:
                continue
            os.makedirs(os.path.join(staging, images_dir))
            os.makedirs(os.path.join(staging, labels_dir))
            for i in range(count):
                case = f"{prefix}_{i:04d}"
                images, label = generate_case(seed, first_index + i, shape, dim, num_foreground_classes,
                                              num_channels)
                for c, image in enumerate(images):
                    _write_nifti(image, os.path.join(staging, images_dir, f"{case}_{c:04d}{FILE_ENDING}"), dim)
                _write_nifti(label, os.path.join(staging, labels_dir, f"{case}{FILE_ENDING}"), dim)

        labels = {"background": 0, **{f"class_{k}": k for k in range(1, num_foreground_classes + 1)}}
        generate_dataset_json(
            staging,
            channel_names={str(c): f"synthetic_contrast_{c}" for c in range(num_channels)},
            labels=labels,
            num_training_cases=num_labeled,
            file_ending=FILE_ENDING,
            dataset_name=folder_name,
            description=("Synthetic anatomy-like dataset for semi-supervised nnU-Net tests: labelled cases in "
                         "imagesTr/labelsTr, unlabelled pool in imagesUnlabeled (reference masks in "
                         "labelsUnlabeled, for diagnostics only), test cases in imagesTs/labelsTs."),
            license="CC0 (synthetic)",
            converted_by="dataset_conversion/generate_synthetic_dataset.py",
            numUnlabeled=num_unlabeled,
            numTest=num_test,
            synthetic_generator={"seed": seed, "shape": list(shape), "dim": dim,
                                 "num_foreground_classes": num_foreground_classes, "num_channels": num_channels},
        )
        if os.path.isdir(dataset_folder):  # overwrite=True was checked above
            shutil.rmtree(dataset_folder)
        os.rename(staging, dataset_folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dataset_folder


def main(argv: Optional[Sequence[str]] = None) -> str:
    prog = os.path.basename(__file__)
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default=os.environ.get("nnUNet_raw"),
                        help="nnU-Net raw folder to write into (default: $nnUNet_raw)")
    parser.add_argument("-d", "--dataset_id", type=int, default=990, help="dataset id, 1-999 (default: 990)")
    parser.add_argument("--name", default="SyntheticSSL",
                        help="dataset name; the folder is DatasetXXX_<name> (default: SyntheticSSL)")
    parser.add_argument("--labeled", type=int, default=10,
                        help="labelled training cases in imagesTr/labelsTr (default: 10)")
    parser.add_argument("--unlabeled", type=int, default=10,
                        help="unlabelled cases in imagesUnlabeled (default: 10)")
    parser.add_argument("--test", type=int, default=4, help="test cases in imagesTs/labelsTs (default: 4)")
    parser.add_argument("--shape", type=int, nargs="+", default=None,
                        help="image shape in numpy order: Z Y X for --dim 3, Y X for --dim 2 "
                             "(default: 32 32 32, or 32 32 for --dim 2)")
    parser.add_argument("--dim", type=int, choices=(2, 3), default=3,
                        help="3: volumes; 2: single-slice NIfTI images, planned as nnU-Net '2d' (default: 3)")
    parser.add_argument("--classes", type=int, default=2, help="number of foreground classes (default: 2)")
    parser.add_argument("--channels", type=int, default=1,
                        help="number of input channels, each a different contrast (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing folder of this dataset (only that folder)")
    one_spelling_each(parser)  # -o, -d as nnU-Net writes them; --output/--dataset_id still accepted with a warning
    args = parser.parse_args(argv)
    if not args.output:
        fail(prog, "no output folder: pass -o/--output or set the nnUNet_raw environment variable.")
    shape = args.shape if args.shape is not None else [32] * args.dim
    try:
        folder = generate_synthetic_dataset(args.output, dataset_id=args.dataset_id, name=args.name,
                                            num_labeled=args.labeled, num_unlabeled=args.unlabeled,
                                            num_test=args.test, shape=shape, dim=args.dim,
                                            num_foreground_classes=args.classes, num_channels=args.channels,
                                            seed=args.seed, overwrite=args.overwrite)
    except (ValueError, FileExistsError, RuntimeError) as error:  # the messages name the setting and the fix
        fail(prog, error)
    print(f"wrote {folder}")
    return folder


if __name__ == "__main__":
    main()
