"""Formulas of nnunet_ssl.evaluation.metrics against hand-computed values and against medpy itself."""

import math

import numpy as np
import pytest

from nnunet_ssl.evaluation.metrics import (asd, binary_case_metrics, bootstrap_mean_std, boundary_region_dice, dice,
                                           directed_surface_distances, hd95, jaccard,
                                           keep_largest_connected_component, surface_distance_metrics)


def segment_1d(start, stop, length=30):
    mask = np.zeros(length, dtype=bool)
    mask[start:stop] = True
    return mask


def offset_cubes():
    """Reference cube [4:8]^3 and the same cube shifted by 2 voxels along axis 0."""
    ref = np.zeros((12, 12, 12), dtype=bool)
    ref[4:8, 4:8, 4:8] = True
    pred = np.zeros_like(ref)
    pred[6:10, 4:8, 4:8] = True
    return pred, ref


# ------------------------------------------------------------------------------------------------- Dice / Jaccard
def test_dice_and_jaccard_hand_computed():
    ref = np.array([1, 1, 1, 0, 0])
    pred = np.array([0, 1, 1, 1, 1])
    # |P∩G| = 2, |P| = 4, |G| = 3, |P∪G| = 5
    assert dice(pred, ref) == pytest.approx(4 / 7)
    assert jaccard(pred, ref) == pytest.approx(2 / 5)


def test_dice_and_jaccard_of_offset_cubes():
    pred, ref = offset_cubes()
    # overlap 2x4x4 = 32 voxels, each cube 64 voxels, union 96
    assert dice(pred, ref) == pytest.approx(0.5)
    assert jaccard(pred, ref) == pytest.approx(1 / 3)


def test_masks_of_different_shapes_are_rejected():
    with pytest.raises(ValueError, match="same shape"):
        dice(np.zeros(3), np.zeros(4))


# ------------------------------------------------------------------------------------------------- distances
def test_hd95_and_asd_of_offset_cubes_in_voxels():
    # Each cube has 56 surface voxels (64 minus the 2^3 eroded core). Prediction surface → reference surface, per
    # axis-0 layer of the prediction: a=6: 12 ring voxels at 0, 4 face voxels at 1; a=7: 12 ring at 0;
    # a=8: 12 ring at 1; a=9: 16 face voxels at 2. Sum 48 → asd 48/56 = 6/7. By symmetry the other direction has the
    # same values; of the 112 pooled distances the top 32 are 2, so the 95th percentile is 2.
    pred, ref = offset_cubes()
    assert asd(pred, ref) == pytest.approx(6 / 7)
    assert hd95(pred, ref) == pytest.approx(2.0)


def test_hd95_and_asd_of_offset_cubes_in_mm_with_anisotropic_spacing():
    # Spacing 2 mm along the shift axis, 1 mm in-plane. Per layer: a=6: the 4 face voxels now reach the reference
    # ring of the same layer in-plane at 1 mm (not 2 mm across layers); a=8 ring: 2 mm; a=9 face: 4 mm.
    # Sum 4*1 + 12*2 + 16*4 = 92 → asd = 92/56 = 23/14 mm; pooled top 32 values are 4 mm → hd95 = 4 mm.
    pred, ref = offset_cubes()
    distances_mm = surface_distance_metrics(pred, ref, spacing=(2.0, 1.0, 1.0))
    assert distances_mm["asd"] == pytest.approx(23 / 14)
    assert distances_mm["hd95"] == pytest.approx(4.0)
    # the spacing order matters: the shift axis is axis 0
    assert surface_distance_metrics(pred, ref, spacing=(1.0, 1.0, 2.0))["asd"] != pytest.approx(23 / 14)


def test_asd_is_directed_prediction_to_reference():
    ref = segment_1d(10, 20)
    pred = ref.copy()
    pred[25] = True  # an island 6 voxels from the reference surface voxel 19
    # pred surface {10, 19, 25} → ref surface {10, 19}: (0, 0, 6); ref surface → pred surface: (0, 0)
    assert asd(pred, ref) == pytest.approx(2.0)
    assert asd(ref, pred) == pytest.approx(0.0)
    metrics = surface_distance_metrics(pred, ref)
    assert metrics["assd"] == pytest.approx(6 / 5)
    # pooled sorted (0, 0, 0, 0, 6): 95th percentile at position 3.8 → 0.8 * 6
    assert metrics["hd95"] == pytest.approx(4.8)


def test_directed_surface_distances_raise_on_empty_mask():
    with pytest.raises(ValueError, match="empty"):
        directed_surface_distances(np.zeros(5, bool), segment_1d(1, 3, 5))


# ------------------------------------------------------------------------------------------------- empty masks
def test_both_empty_counts_as_perfect():
    empty = np.zeros((4, 4), dtype=bool)
    result = binary_case_metrics(empty, empty, spacing=(1.0, 1.0), band_width=2)
    for key in ("dice", "jaccard", "boundary_dice"):
        assert result[key] == 1.0
    for key in ("hd95_voxel", "asd_voxel", "assd_voxel", "hd95_mm", "asd_mm", "assd_mm"):
        assert result[key] == 0.0


@pytest.mark.parametrize("empty_side", ["pred", "ref"])
def test_one_empty_gives_zero_overlap_and_undefined_distances(empty_side):
    mask = np.zeros((6, 6), dtype=bool)
    mask[2:4, 2:4] = True
    empty = np.zeros_like(mask)
    pred, ref = (empty, mask) if empty_side == "pred" else (mask, empty)
    result = binary_case_metrics(pred, ref, spacing=(1.0, 1.0), band_width=2)
    assert result["dice"] == 0.0 and result["jaccard"] == 0.0 and result["boundary_dice"] == 0.0
    for key in ("hd95_voxel", "asd_voxel", "assd_voxel", "hd95_mm", "asd_mm", "assd_mm"):
        assert math.isnan(result[key])
    assert (result["pred_voxels"], result["ref_voxels"]) == ((0, 4) if empty_side == "pred" else (4, 0))


# ------------------------------------------------------------------------------------------------- boundary Dice
def test_boundary_region_dice_hand_computed():
    ref = segment_1d(10, 20)   # surface voxels 10 and 19
    pred = segment_1d(12, 22)  # surface voxels 12 and 21
    # band around the reference, width 1: {9,10,11,18,19,20}; G∩B = {10,11,18,19}, P∩B = {18,19,20},
    # P∩G∩B = {18,19} → 2*2/(4+3)
    assert boundary_region_dice(pred, ref, 1, around="reference") == pytest.approx(4 / 7)
    # band around both: adds {11,12,13,20,21,22}; G∩B = {10..13,18,19}, P∩B = {12,13,18..21}, P∩G∩B = {12,13,18,19}
    assert boundary_region_dice(pred, ref, 1, around="both") == pytest.approx(8 / 12)
    # plain Dice over the whole masks is 2*8/20 = 0.8: the band concentrates on the boundary errors
    assert dice(pred, ref) == pytest.approx(0.8)


def test_boundary_region_dice_band_in_spacing_units():
    ref, pred = segment_1d(10, 20), segment_1d(12, 22)
    # 0.5 mm voxels: a 0.5 mm band is the 1-voxel band of the previous test
    assert boundary_region_dice(pred, ref, 0.5, spacing=(0.5,), around="reference") == pytest.approx(4 / 7)


def test_boundary_region_dice_edge_cases():
    mask = segment_1d(5, 15)
    assert boundary_region_dice(mask, mask, 2) == 1.0
    assert boundary_region_dice(np.zeros_like(mask), np.zeros_like(mask), 2) == 1.0
    assert boundary_region_dice(np.zeros_like(mask), mask, 2) == 0.0
    with pytest.raises(ValueError, match="around"):
        boundary_region_dice(mask, mask, 2, around="prediction")


# ------------------------------------------------------------------------------------------------- LCC
def test_largest_connected_component_removes_small_island():
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[1:5, 1:5, 1:5] = True  # 64 voxels
    mask[8, 8, 8] = True        # island
    kept = keep_largest_connected_component(mask)
    assert kept.sum() == 64 and not kept[8, 8, 8]
    assert mask[8, 8, 8]  # input untouched


def test_largest_connected_component_uses_full_connectivity():
    mask = np.zeros((5, 5), dtype=bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours: one component with full connectivity
    mask[3:5, 4] = True             # a 2-voxel component elsewhere
    kept_full = keep_largest_connected_component(mask)
    # both components have 2 voxels; the tie goes to the first in scan order, the diagonal pair
    assert kept_full[0, 0] and kept_full[1, 1] and not kept_full[3, 4]
    mask[2, 2] = True  # the diagonal chain grows to 3 voxels only under full connectivity
    kept_full = keep_largest_connected_component(mask)
    assert kept_full.sum() == 3
    assert keep_largest_connected_component(mask, connectivity=1).sum() == 2


def test_largest_connected_component_of_empty_mask_is_empty():
    assert not keep_largest_connected_component(np.zeros((3, 3), bool)).any()


# ------------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_is_deterministic_per_seed_and_close_to_plain_mean():
    values = np.random.default_rng(1).normal(0.85, 0.05, size=40)
    first = bootstrap_mean_std(values, 1000, seed=3)
    assert first == bootstrap_mean_std(values, 1000, seed=3)
    assert first != bootstrap_mean_std(values, 1000, seed=4)
    standard_error = values.std() / np.sqrt(values.size)
    # the mean of resample means deviates from the sample mean by ~ standard_error / sqrt(1000)
    assert abs(first["mean"] - values.mean()) < 0.2 * standard_error
    # the std of resample means estimates the standard error of the mean
    assert first["std"] == pytest.approx(standard_error, rel=0.2)
    assert first["n_resamples"] == 1000


def test_bootstrap_excludes_undefined_values():
    values = np.array([1.0, np.nan, 3.0, np.nan])
    result = bootstrap_mean_std(values, 200, seed=0)
    assert 1.0 <= result["mean"] <= 3.0
    assert result["n_resamples"] + result["n_resamples_all_undefined"] == 200
    # resamples that drew only the two NaN cases are dropped: probability 1/16 each
    assert 0 < result["n_resamples_all_undefined"] < 40


def test_bootstrap_of_constant_values_has_zero_std():
    result = bootstrap_mean_std([0.7] * 5, 50, seed=0)
    assert result["mean"] == pytest.approx(0.7) and result["std"] == pytest.approx(0.0)


# ------------------------------------------------------------------------------------------------- medpy
def random_blob(rng, shape, threshold):
    from scipy.ndimage import gaussian_filter
    return gaussian_filter(rng.random(shape), 1.5) > threshold


@pytest.mark.parametrize("seed", range(6))
def test_metrics_match_medpy_on_random_blobs(seed):
    medpy_binary = pytest.importorskip("medpy.metric.binary")
    rng = np.random.default_rng(seed)
    shape = (18, 16, 12)
    # thresholds above 0.5 give several blobs, some touching the image edge
    pred, ref = random_blob(rng, shape, 0.52), random_blob(rng, shape, 0.52)
    assert pred.any() and ref.any()
    spacing = (2.5, 0.7, 1.3)
    assert dice(pred, ref) == pytest.approx(medpy_binary.dc(pred, ref))
    assert jaccard(pred, ref) == pytest.approx(medpy_binary.jc(pred, ref))
    for unit_spacing in (None, spacing):
        ours = surface_distance_metrics(pred, ref, unit_spacing)
        assert ours["hd95"] == pytest.approx(medpy_binary.hd95(pred, ref, voxelspacing=unit_spacing))
        assert ours["asd"] == pytest.approx(medpy_binary.asd(pred, ref, voxelspacing=unit_spacing))
        assert ours["assd"] == pytest.approx(medpy_binary.assd(pred, ref, voxelspacing=unit_spacing))
