"""Segmentation metrics with the semantics of medpy.metric.binary, as used by the SSL papers' test code.

Definitions (medpy 0.5.x, checked against its source):

* ``dice = 2|P∩G| / (|P| + |G|)``, ``jaccard = |P∩G| / |P∪G|`` (medpy ``dc`` / ``jc``).
* Surface of a mask = ``mask XOR binary_erosion(mask, generate_binary_structure(ndim, connectivity))`` with
  connectivity 1 (face neighbours) as medpy's default; voxels on the image edge count as surface (erosion's
  border value is 0).
* Directed surface distances P→G = for every surface voxel of P, the Euclidean distance to the nearest surface voxel
  of G (``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``; spacing ``None`` = voxel units).
* ``hd95`` = 95th percentile (numpy's default linear interpolation) of the union of both directed distance sets
  (medpy ``hd95``).
* ``asd`` = mean of the directed distances **prediction → reference** only (medpy ``asd(result, reference)`` is
  directed; this is what the SSL papers call and report as "ASD").
* ``assd`` = mean of the union of both directed sets (medpy ``assd``), stored as an extra.

Empty masks (medpy raises for distances; the papers' test code writes (0, 0, 0, 0)). Convention here:

* both empty: dice = jaccard = boundary Dice = 1, hd95 = asd = assd = 0 (absence predicted correctly);
* exactly one empty: dice = jaccard = boundary Dice = 0, distances = NaN (undefined). Summaries exclude NaN values
  from means and report how many were excluded, so a missed structure is never rewarded with a 0 mm distance.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from nnunet_ssl.masks import keep_largest_connected_component  # noqa: F401 (part of this module's API)

# medpy's default surface connectivity for hd95/asd/assd
SURFACE_CONNECTIVITY = 1


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient of two binary masks; 1.0 when both are empty (as medpy.dc)."""
    pred, ref = _as_bool_pair(pred, ref)
    denominator = np.count_nonzero(pred) + np.count_nonzero(ref)
    if denominator == 0:
        return 1.0
    return float(2.0 * np.count_nonzero(pred & ref) / denominator)


def jaccard(pred: np.ndarray, ref: np.ndarray) -> float:
    """Jaccard index (IoU) of two binary masks; 1.0 when both are empty (as medpy.jc)."""
    pred, ref = _as_bool_pair(pred, ref)
    union = np.count_nonzero(pred | ref)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(pred & ref) / union)


def surface_voxels(mask: np.ndarray, connectivity: int = SURFACE_CONNECTIVITY) -> np.ndarray:
    """One-voxel-thick inner surface of a binary mask, as medpy extracts it."""
    mask = np.atleast_1d(np.asarray(mask, dtype=bool))
    structure = generate_binary_structure(mask.ndim, connectivity)
    return mask ^ binary_erosion(mask, structure=structure, iterations=1)


def directed_surface_distances(source: np.ndarray, target: np.ndarray, spacing: Optional[Sequence[float]] = None,
                               connectivity: int = SURFACE_CONNECTIVITY) -> np.ndarray:
    """Distances from every surface voxel of ``source`` to the nearest surface voxel of ``target``.

    ``spacing`` None gives voxel units (what the SSL papers report); otherwise physical units per axis.
    Raises ValueError if either mask is empty (the distance is undefined).
    """
    source, target = _as_bool_pair(source, target)
    if not source.any() or not target.any():
        raise ValueError("surface distances are undefined when a mask is empty")
    source, target = _crop_to_union_bbox(source, target)
    distance_to_target_surface = distance_transform_edt(~surface_voxels(target, connectivity),
                                                        sampling=_spacing_or_none(spacing, source.ndim))
    return distance_to_target_surface[surface_voxels(source, connectivity)]


def surface_distance_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Optional[Sequence[float]] = None,
                             connectivity: int = SURFACE_CONNECTIVITY) -> dict:
    """hd95, asd (pred→ref, directed) and assd with the empty-mask convention of this module."""
    pred, ref = _as_bool_pair(pred, ref)
    pred_empty, ref_empty = not pred.any(), not ref.any()
    if pred_empty and ref_empty:
        return {"hd95": 0.0, "asd": 0.0, "assd": 0.0}
    if pred_empty or ref_empty:
        return {"hd95": math.nan, "asd": math.nan, "assd": math.nan}
    pred_to_ref = directed_surface_distances(pred, ref, spacing, connectivity)
    ref_to_pred = directed_surface_distances(ref, pred, spacing, connectivity)
    both = np.concatenate([pred_to_ref, ref_to_pred])
    return {"hd95": float(np.percentile(both, 95)), "asd": float(pred_to_ref.mean()), "assd": float(both.mean())}


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Optional[Sequence[float]] = None) -> float:
    """95th percentile Hausdorff distance (medpy.hd95 semantics; NaN if exactly one mask is empty)."""
    return surface_distance_metrics(pred, ref, spacing)["hd95"]


def asd(pred: np.ndarray, ref: np.ndarray, spacing: Optional[Sequence[float]] = None) -> float:
    """Average surface distance prediction → reference (medpy.asd, directed; NaN if exactly one mask is empty)."""
    return surface_distance_metrics(pred, ref, spacing)["asd"]


def boundary_band(mask_for_boundary: np.ndarray, band_width: float, spacing: Optional[Sequence[float]] = None,
                  connectivity: int = SURFACE_CONNECTIVITY) -> np.ndarray:
    """Voxels within ``band_width`` (Euclidean, voxels or spacing units) of the mask's surface voxels."""
    surface = surface_voxels(mask_for_boundary, connectivity)
    if not surface.any():
        return np.zeros_like(surface)
    distance = distance_transform_edt(~surface, sampling=_spacing_or_none(spacing, surface.ndim))
    return distance <= band_width


def boundary_region_dice(pred: np.ndarray, ref: np.ndarray, band_width: float = 3,
                         spacing: Optional[Sequence[float]] = None, around: str = "both") -> float:
    """Dice restricted to a band around the boundaries: ``2|P∩G∩B| / (|P∩B| + |G∩B|)``.

    ``B`` is the set of voxels within ``band_width`` of the reference surface (``around="reference"``) or of the
    reference or prediction surface (``around="both"``, default, BoCLIS spec §7: ``dilate(∂G, r) ∪ dilate(∂P, r)``,
    recommended r = 3). Surfaces are medpy's one-voxel inner surfaces; the band is a Euclidean ball dilation, so
    ``band_width`` is in voxels when ``spacing`` is None, else in the units of ``spacing``.
    Both masks empty → 1.0; exactly one empty → 0.0.
    """
    if around not in ("both", "reference"):
        raise ValueError(f"around must be 'both' or 'reference', got {around!r}")
    if band_width < 0:
        raise ValueError(f"band_width must be >= 0, got {band_width}")
    pred, ref = _as_bool_pair(pred, ref)
    if not pred.any() and not ref.any():
        return 1.0
    # Only voxels of P∪G enter the formula and every surface lies inside their bounding box, so cropping is exact.
    pred, ref = _crop_to_union_bbox(pred, ref)
    band = boundary_band(ref, band_width, spacing)
    if around == "both":
        band |= boundary_band(pred, band_width, spacing)
    pred_in_band, ref_in_band = pred & band, ref & band
    denominator = np.count_nonzero(pred_in_band) + np.count_nonzero(ref_in_band)
    if denominator == 0:  # only reachable with an empty band (cannot happen for non-empty masks)
        return 1.0
    return float(2.0 * np.count_nonzero(pred_in_band & ref_in_band) / denominator)


def binary_case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Optional[Sequence[float]], band_width: float,
                        band_around: str = "both") -> dict:
    """All per-class metrics of one case: overlap, distances in voxels and in spacing units (mm), boundary Dice."""
    pred, ref = _as_bool_pair(pred, ref)
    result = {"dice": dice(pred, ref), "jaccard": jaccard(pred, ref)}
    for unit, unit_spacing in (("voxel", None), ("mm", spacing)):
        for name, value in surface_distance_metrics(pred, ref, unit_spacing).items():
            result[f"{name}_{unit}"] = value
    result["boundary_dice"] = boundary_region_dice(pred, ref, band_width, None, band_around)
    result["pred_voxels"] = int(np.count_nonzero(pred))
    result["ref_voxels"] = int(np.count_nonzero(ref))
    return result


def bootstrap_mean_std(values: Sequence[float], n_resamples: int, seed: int) -> dict:
    """Mean ± std over bootstrap resamples of cases (CRLN protocol: resample cases with replacement, average each
    resample, report mean and population std (ddof=0) of the resample averages).

    NaN values (undefined distances) are excluded within each resample; resamples made only of NaN are dropped and
    counted. The same seed draws the same case indices for every metric, so metrics stay paired.
    """
    values = np.asarray(values, dtype=float)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if values.ndim != 1 or values.size == 0:
        raise ValueError("bootstrap needs a non-empty 1D sequence of per-case values")
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, values.size, size=(n_resamples, values.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples, handled below
        resample_means = np.nanmean(values[indices], axis=1)
    valid = resample_means[~np.isnan(resample_means)]
    if valid.size == 0:
        return {"mean": math.nan, "std": math.nan, "n_resamples": 0, "n_resamples_all_undefined": n_resamples}
    return {"mean": float(valid.mean()), "std": float(valid.std()), "n_resamples": int(valid.size),
            "n_resamples_all_undefined": int(n_resamples - valid.size)}


def _as_bool_pair(a: np.ndarray, b: np.ndarray):
    a = np.atleast_1d(np.asarray(a, dtype=bool))
    b = np.atleast_1d(np.asarray(b, dtype=bool))
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def _crop_to_union_bbox(a: np.ndarray, b: np.ndarray, margin: int = 1):
    """Crop both masks to the bounding box of their union plus a margin (speed only; results are unchanged because
    every surface voxel lies inside the box and erosion treats outside-array voxels as background)."""
    union = a | b
    if not union.any():
        return a, b
    slices = []
    for axis in range(union.ndim):
        other_axes = tuple(i for i in range(union.ndim) if i != axis)
        nonzero = np.flatnonzero(union.any(axis=other_axes))
        slices.append(slice(max(nonzero[0] - margin, 0), min(nonzero[-1] + margin + 1, union.shape[axis])))
    slices = tuple(slices)
    return a[slices], b[slices]


def _spacing_or_none(spacing: Optional[Sequence[float]], ndim: int):
    if spacing is None:
        return None
    spacing = np.asarray(spacing, dtype=np.float64).ravel()
    if spacing.size != ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {spacing.size} values but the masks have {ndim} dimensions")
    if np.any(spacing <= 0):
        raise ValueError(f"spacing must be positive, got {tuple(spacing)}")
    return spacing
