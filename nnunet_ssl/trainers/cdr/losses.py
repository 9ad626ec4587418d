"""CDR's equations: MCF's base terms [P] (leader, review, sharpening) and the region terms [A] (pooling,
disagreement weights, regional InfoNCE, regional KD).
"""
import math
from typing import Sequence, Tuple

import torch
from torch.nn import functional as F

from nnunet_ssl.losses.contrastive import info_nce


# ------------------------------------------------------------------------------------------- MCF base terms [P]
def squared_dice_loss(probs: torch.Tensor, onehot: torch.Tensor, valid: torch.Tensor = None,
                      eps: float = 1e-5) -> torch.Tensor:
    """MCF's Dice loss ``1 − (2Σpg + ε)/(Σp² + Σg² + ε)`` per foreground class (batch pooled), averaged.

    probs, onehot: (B, C, *spatial); valid: (B, *spatial) bool or None (voxels to count)."""
    p, g = probs[:, 1:].float(), onehot[:, 1:].float()
    if valid is not None:
        p, g = p * valid[:, None], g * valid[:, None]
    dims = [0] + list(range(2, p.ndim))
    dice = (2 * (p * g).sum(dims) + eps) / ((p * p).sum(dims) + (g * g).sum(dims) + eps)
    return (1 - dice).mean()


def leader_is_a(dice_loss_a: torch.Tensor, dice_loss_b: torch.Tensor) -> torch.Tensor:
    """1.0 where network A leads (lower labelled Dice loss; A wins ties), else 0.0 — a tensor, no host sync."""
    return (dice_loss_a <= dice_loss_b).float()


def disagreement_review_loss(probs: torch.Tensor, onehot: torch.Tensor, disagree: torch.Tensor) -> torch.Tensor:
    """MCF's contrastive-difference review ``Σ D·(p − y)² / (ΣD + 1e-16)`` on voxels where the nets disagree.

    (p − y)² is averaged over the foreground channels (for a binary task: (p_fg − y)²). disagree: (B, *spatial)."""
    sq = ((probs[:, 1:].float() - onehot[:, 1:].float()) ** 2).mean(1)
    d = disagree.float()
    return (d * sq).sum() / (d.sum() + 1e-16)


def sharpen(probs: torch.Tensor, temperature: float, dim: int = 1) -> torch.Tensor:
    """``p^{1/T} / Σ_c p^{1/T}`` along ``dim``, detached (a target). Computed as softmax(log p / T) (no underflow)."""
    with torch.no_grad():
        return torch.softmax(torch.log(probs.float().clamp_min(1e-12)) / temperature, dim=dim)


# --------------------------------------------------------------------------------------------- regions [A]
def patch_scaled_region_size(spatial_shape: Sequence[int], regions_along_longest_axis: int = 7) -> int:
    """Window edge that keeps CDR's region grid when the patch changes: the longest patch axis over
    ``regions_along_longest_axis`` (rounded up). 7 gives the spec's 16 at its 112 x 112 x 80 patch (245 regions);
    a fixed 16 at LA's 3.5 mm plans (16 x 28 x 36) gives 6 regions per image, none of which the atrium dominates."""
    if regions_along_longest_axis < 1:
        raise ValueError(f"regions_along_longest_axis must be a positive int, got {regions_along_longest_axis!r}")
    return max(1, math.ceil(max(spatial_shape) / regions_along_longest_axis))


def region_kernel(spatial_shape: Sequence[int], region_size) -> Tuple[int, ...]:
    """Window size per axis: ``region_size`` (int or per-axis), clipped to the patch."""
    sizes = [region_size] * len(spatial_shape) if isinstance(region_size, int) else list(region_size)
    if len(sizes) != len(spatial_shape) or min(sizes) < 1:
        raise ValueError(f"region_size {region_size!r} does not fit a {len(spatial_shape)}D patch "
                         f"{tuple(spatial_shape)}; use a positive int or one per axis.")
    return tuple(min(s, d) for s, d in zip(sizes, spatial_shape))


def region_grid(spatial_shape: Sequence[int], region_size) -> Tuple[int, ...]:
    """Regions per axis: a partial window at the far border counts as a region (ceil)."""
    kernel = region_kernel(spatial_shape, region_size)
    return tuple(math.ceil(d / k) for d, k in zip(spatial_shape, kernel))


def pool_regions(x: torch.Tensor, region_size) -> torch.Tensor:
    """Average over non-overlapping windows: (B, C, *spatial) -> (B, C, *grid). Partial border windows average
    the voxels they hold."""
    kernel = region_kernel(x.shape[2:], region_size)
    pool = {2: F.avg_pool2d, 3: F.avg_pool3d}.get(len(kernel))
    if pool is None:
        raise ValueError(f"regions need a 2D or 3D input, got shape {tuple(x.shape)}")
    return pool(x, kernel, kernel, ceil_mode=True)


def region_overlap(fine_len: int, coarse_len: int, kernel: int, device=None) -> torch.Tensor:
    """(coarse_len, regions) share of each region's fine voxels that each coarse voxel covers, along one axis: a
    coarse voxel i spans fine [i·f, (i+1)·f) with f = fine_len / coarse_len; region g spans [g·k, min((g+1)·k, L)).
    Columns sum to 1. Built with tensor ops only (no host sync on CUDA)."""
    f = fine_len / coarse_len
    i = torch.arange(coarse_len, device=device, dtype=torch.float32)[:, None]
    g = torch.arange(math.ceil(fine_len / kernel), device=device, dtype=torch.float32)[None, :]
    lo, hi = g * kernel, torch.clamp((g + 1) * kernel, max=fine_len)
    covered = torch.clamp(torch.minimum((i + 1) * f, hi) - torch.maximum(i * f, lo), min=0)
    return covered / (hi - lo)


def pool_regions_from_coarser(x: torch.Tensor, fine_shape: Sequence[int], region_size) -> torch.Tensor:
    """``pool_regions`` of a coarser feature map (e.g. the bottleneck) on the region grid of ``fine_shape``: each
    region is the area-weighted mean of the coarse voxels it overlaps, as if ``x`` had been upsampled (nearest) to
    ``fine_shape`` first, without building that full-resolution tensor. (B, C, *coarse) -> (B, C, *grid)."""
    if len(fine_shape) != x.dim() - 2:
        raise ValueError(f"fine shape {tuple(fine_shape)} and features {tuple(x.shape)} differ in dimensions")
    kernel = region_kernel(fine_shape, region_size)
    for axis, (fine_len, k) in enumerate(zip(fine_shape, kernel)):
        weights = region_overlap(fine_len, x.shape[2 + axis], k, x.device).to(x.dtype)
        x = torch.movedim(torch.movedim(x, 2 + axis, -1) @ weights, -1, 2 + axis)
    return x


def flatten_regions(pooled: torch.Tensor) -> torch.Tensor:
    """(B, C, *grid) -> (B·R, C); row b·R + r is region r (raster order) of image b, the same in every network."""
    return pooled.flatten(2).transpose(1, 2).reshape(-1, pooled.shape[1])


def voxel_disagreement(probs_a: torch.Tensor, probs_b: torch.Tensor, measure: str = "probability") -> torch.Tensor:
    """Per-voxel disagreement in [0, 1], (B, 1, *spatial): 'probability' = ½Σ_c|p_A − p_B| (for two classes
    |p_A,fg − p_B,fg|), 'argmax' = the decisions differ (MCF's XOR mask)."""
    if measure == "probability":
        return 0.5 * (probs_a.float() - probs_b.float()).abs().sum(1, keepdim=True)
    if measure == "argmax":
        return (probs_a.argmax(1, keepdim=True) != probs_b.argmax(1, keepdim=True)).float()
    raise ValueError(f"disagreement_measure must be 'probability' or 'argmax', got {measure!r}")


def disagreement_weights(region_disagreement: torch.Tensor, beta: float) -> torch.Tensor:
    """Anchor weights ``w_r = 1 + β·mean_{voxels∈r} disagreement``: inconsistent regions count more."""
    return 1.0 + beta * region_disagreement.detach().float()


def regional_info_nce(anchors: torch.Tensor, targets: torch.Tensor, temperature: float,
                      weights: torch.Tensor = None, region_class: torch.Tensor = None) -> torch.Tensor:
    """InfoNCE from each region to the same row of ``targets`` (positive); every other row is a negative, except,
    when ``region_class`` (R,) is given, rows whose dominant class is the anchor's (a neighbouring background
    region is no evidence against the anchor being background)."""
    n = anchors.shape[0]
    negatives = ~torch.eye(n, dtype=torch.bool, device=anchors.device)
    if region_class is not None:
        negatives &= region_class[:, None] != region_class[None, :]
    return info_nce(anchors, targets, targets, temperature, negative_mask=negatives, anchor_weights=weights)


def negative_share(num_regions: int, region_class: torch.Tensor = None, num_classes: int = None) -> torch.Tensor:
    """Mean over anchors of the share of the other regions that are its InfoNCE negatives: 1 without class
    masking, 0 when every region of the batch has one dominant class (the InfoNCE is then exactly 0).
    ``region_class`` (R,) long in [0, num_classes). Counted by comparison with ``arange`` (``bincount`` would
    sync with the host on CUDA)."""
    if num_regions < 2:
        return torch.tensor(0.0)
    if region_class is None:
        return torch.tensor(1.0)
    classes = torch.arange(num_classes, device=region_class.device)
    same_class = (region_class[:, None] == classes[None, :]).sum(0)[region_class]
    return ((num_regions - same_class) / (num_regions - 1)).float().mean()


def symmetric_region_nce(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float, weights: torch.Tensor = None,
                         stop_gradient: str = "targets", lead_a: torch.Tensor = None,
                         region_class: torch.Tensor = None):
    """(NCE(z_A → z_B), NCE(z_B → z_A)) for position-aligned regions.

    stop_gradient: 'targets' — the target side is detached, so each direction trains only its anchor network;
    'leader' (MCF-faithful) — the leading network (``lead_a`` 1/0) is detached everywhere, only the other is
    pulled; 'none' — no detaching. ``region_class``: see ``regional_info_nce``."""
    if stop_gradient == "leader":
        if lead_a is None:
            raise ValueError("stop_gradient='leader' needs lead_a")
        # value unchanged, gradient scaled by 0 on the leader's side (no host sync to branch on)
        z_a = lead_a * z_a.detach() + (1 - lead_a) * z_a
        z_b = (1 - lead_a) * z_b.detach() + lead_a * z_b
    elif stop_gradient == "targets":
        return (regional_info_nce(z_a, z_b.detach(), temperature, weights, region_class),
                regional_info_nce(z_b, z_a.detach(), temperature, weights, region_class))
    elif stop_gradient != "none":
        raise ValueError(f"inter_stop_gradient must be 'targets', 'leader' or 'none', got {stop_gradient!r}")
    return (regional_info_nce(z_a, z_b, temperature, weights, region_class),
            regional_info_nce(z_b, z_a, temperature, weights, region_class))


def regional_kd_target(voxel_probs: torch.Tensor, region_size, temperature: float,
                       sharpen_first: bool = True) -> torch.Tensor:
    """The leader's region target (B·R, C): voxel probabilities sharpened at T, then averaged per region, so a
    region that is 30 % confidently foreground gets a foreground target near 0.3. ``sharpen_first=False``
    averages first and sharpens the region mean (before 0.2): a majority vote that sends a 30 % foreground
    region's target to about 0."""
    if sharpen_first:
        return flatten_regions(pool_regions(sharpen(voxel_probs, temperature), region_size))
    return sharpen(flatten_regions(pool_regions(voxel_probs, region_size)), temperature)


def weighted_mse(student: torch.Tensor, target: torch.Tensor, weights: torch.Tensor = None) -> torch.Tensor:
    """``mean_r w_r · mean_c (student − target)²`` over rows r (regions) and columns c (classes)."""
    sq = ((student.float() - target.float()) ** 2).mean(1)
    return (sq * weights).mean() if weights is not None else sq.mean()


def directed_by_leader(lead_a: torch.Tensor, loss_b_from_a: torch.Tensor, loss_a_from_b: torch.Tensor):
    """The term where the non-leader learns from the leader: B's term if A leads, else A's (sync-free select)."""
    return lead_a * loss_b_from_a + (1 - lead_a) * loss_a_from_b
