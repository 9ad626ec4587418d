"""Per-class regions of a label map (whole, centre, edge) and masked, resized patch crops, in 2D and 3D.

Everything works on batches of masks ``(N, *spatial)`` with 2 or 3 spatial axes and stays on the masks' device,
except the optional largest-connected-component step (scipy on the host). Randomness comes only from an explicit
``torch.Generator`` argument (``None`` = torch's global RNG), never from a reseeded global state.

Definitions (BoCLIS spec §4 and its 3D lift in §9; cv2's 2D morphology replaced by pooling):

* **erosion** with a 3×3(×3) all-ones element, ``k`` times = one min-pool with a (2k+1) box. Voxels outside the
  array count as foreground (cv2's default border), so the patch border is not an object boundary.
* **inner boundary** = ``m ∧ ¬erode(m)`` (replaces Canny on the label map; a solid 5³ cube has 98 boundary voxels).
* **whole region** of class c = ``labels == c``; **centre region** = whole eroded ``k`` times, then its largest
  fully-connected component (8 in 2D, 26 in 3D); **edge region** = boundary voxels inside a window around one
  random boundary voxel (half-extent per axis = ``max(1, floor(fraction · (max − min)))`` of all boundary voxels
  of that class), dilated with the face-connected cross (4/6-neighbourhood) and restricted to the class again.
"""
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from nnunet_ssl.masks import keep_largest_connected_component

REGION_NAMES = ("edge", "centre", "whole")


def _check_masks(masks: torch.Tensor) -> int:
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be a bool tensor (N, *spatial), got {masks.dtype}")
    ndim = masks.ndim - 1
    if ndim not in (2, 3):
        raise ValueError(f"masks must be (N, H, W) or (N, D, H, W), got shape {tuple(masks.shape)}")
    return ndim


def _max_pool(x: torch.Tensor, kernel: Sequence[int]) -> torch.Tensor:
    """Stride-1 'same' max-pool of (N, 1, *spatial); the implicit -inf padding ignores outside voxels."""
    pool = F.max_pool3d if x.ndim == 5 else F.max_pool2d
    return pool(x, kernel_size=tuple(kernel), stride=1, padding=tuple(k // 2 for k in kernel))


def erode(masks: torch.Tensor, iterations: int = 1) -> torch.Tensor:
    """Binary erosion with the 3×3(×3) box, ``iterations`` times; outside the array counts as foreground."""
    ndim = _check_masks(masks)
    if iterations <= 0:
        return masks.clone()
    kernel = (2 * iterations + 1,) * ndim  # k erosions with a 3-box = one erosion with a (2k+1)-box
    return ~(_max_pool((~masks)[:, None].float(), kernel)[:, 0] > 0.5)


def dilate(masks: torch.Tensor, iterations: int = 1, structure: str = "cross") -> torch.Tensor:
    """Binary dilation, ``iterations`` times, with the face-connected ``'cross'`` or the full ``'box'`` element."""
    ndim = _check_masks(masks)
    if iterations <= 0:
        return masks.clone()
    x = masks[:, None].float()
    if structure == "box":
        x = _max_pool(x, (2 * iterations + 1,) * ndim)
    elif structure == "cross":
        for _ in range(iterations):
            # the cross is the union of the three axis-aligned 3-voxel lines
            x = torch.stack([_max_pool(x, tuple(3 if a == axis else 1 for a in range(ndim)))
                             for axis in range(ndim)]).amax(0)
    else:
        raise ValueError(f"structure must be 'cross' or 'box', got {structure!r}")
    return x[:, 0] > 0.5


def inner_boundary(masks: torch.Tensor) -> torch.Tensor:
    """Voxels of the mask with a background voxel in their 3×3(×3) neighbourhood: ``m ∧ ¬erode(m)``."""
    return masks & ~erode(masks, 1)


def mask_extents(masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bounding boxes of (N, *spatial) masks: (lo, hi) inclusive (N, ndim) long, and ``non_empty`` (N,) bool.

    Empty masks get lo = hi = 0."""
    ndim = _check_masks(masks)
    lo, hi = [], []
    for axis in range(ndim):
        others = tuple(1 + a for a in range(ndim) if a != axis)
        occupied = masks.any(dim=others) if others else masks          # (N, S_axis)
        size = occupied.shape[1]
        first = occupied.int().argmax(dim=1)
        last = size - 1 - occupied.flip(1).int().argmax(dim=1)
        lo.append(first)
        hi.append(last)
    non_empty = masks.flatten(1).any(dim=1)
    lo, hi = torch.stack(lo, 1), torch.stack(hi, 1)
    return torch.where(non_empty[:, None], lo, 0), torch.where(non_empty[:, None], hi, 0), non_empty


def sample_voxels(candidates: torch.Tensor, generator: Optional[torch.Generator] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """One uniformly drawn True voxel per mask: (coordinates (N, ndim) long, found (N,) bool).

    Draws N uniform numbers (on the generator's device) and picks the r-th True voxel in scan order by a cumulative
    count, so no per-mask host round trip is needed. Empty masks give coordinates 0 and ``found`` False."""
    _check_masks(candidates)
    n = candidates.shape[0]
    flat = candidates.flatten(1)
    counts = flat.sum(dim=1)
    gen_device = generator.device if generator is not None else candidates.device
    u = torch.rand(n, generator=generator, device=gen_device).to(candidates.device, non_blocking=True)
    rank = torch.minimum((u * counts).long(), (counts - 1).clamp_min(0))
    # int32 is exact for up to 2^31 voxels and halves the memory of the running count
    running = flat.cumsum(dim=1, dtype=torch.int32)
    index = (running > rank[:, None]).int().argmax(dim=1)
    coords = torch.stack(torch.unravel_index(index, candidates.shape[1:]), dim=1)
    found = counts > 0
    return torch.where(found[:, None], coords, 0), found


def window_masks(centres: torch.Tensor, half_extents: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Boxes ``centre ± half_extent`` (inclusive, clipped to the array) as (N, *spatial) bool masks."""
    ndim = len(spatial_shape)
    window = None
    for axis, size in enumerate(spatial_shape):
        coords = torch.arange(size, device=centres.device)
        inside = (coords >= centres[:, axis:axis + 1] - half_extents[:, axis:axis + 1]) & \
                 (coords <= centres[:, axis:axis + 1] + half_extents[:, axis:axis + 1])  # (N, size)
        shape = [centres.shape[0]] + [1] * ndim
        shape[1 + axis] = size
        inside = inside.view(shape)
        window = inside if window is None else window & inside
    return window


def whole_regions(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, *spatial) integer labels -> (B, C, *spatial) bool class masks; negative labels (ignore) are in none."""
    if labels.dtype.is_floating_point:
        raise TypeError(f"labels must be an integer label map, got {labels.dtype}")
    classes = torch.arange(num_classes, device=labels.device).view(1, num_classes, *([1] * (labels.ndim - 1)))
    return labels[:, None] == classes


def centre_regions(whole: torch.Tensor, erosion_iterations: int, keep_largest_component: bool = True
                   ) -> torch.Tensor:
    """Class masks (B, C, *spatial) eroded ``erosion_iterations`` times, each reduced to its largest
    fully-connected component (8 in 2D, 26 in 3D; on the host via scipy, one transfer for the whole batch)."""
    lead, spatial = whole.shape[:-_spatial_ndim(whole)], whole.shape[-_spatial_ndim(whole):]
    masks = erode(whole.reshape(-1, *spatial), erosion_iterations)
    if keep_largest_component:
        host = masks.cpu().numpy()
        kept = np.stack([keep_largest_connected_component(m) if m.any() else m for m in host])
        masks = torch.from_numpy(kept).to(whole.device, non_blocking=True)
    return masks.reshape(*lead, *spatial)


def _spatial_ndim(regions: torch.Tensor) -> int:
    # (B, C, *spatial): 2 or 3 spatial axes
    if regions.ndim not in (4, 5):
        raise ValueError(f"expected class masks (B, C, H, W) or (B, C, D, H, W), got shape {tuple(regions.shape)}")
    return regions.ndim - 2


def edge_regions(whole: torch.Tensor, window_fraction: float = 0.25, dilation_iterations: int = 3,
                 seed_from: str = "boundary", generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Boundary-guided edge regions of (B, C, *spatial) class masks (spec §4.3 / §9).

    ``seed_from='boundary'``: window around a random inner-boundary voxel, boundary voxels in it dilated
    ``dilation_iterations`` times (cross) and kept inside the class. ``seed_from='region'`` (ablation "no boundary
    sampling"): window around a random voxel anywhere in the class, with the window sized from the class's extent,
    keeping the class voxels inside the window."""
    nd = _spatial_ndim(whole)
    lead, spatial = whole.shape[:-nd], whole.shape[-nd:]
    masks = whole.reshape(-1, *spatial)
    if seed_from == "boundary":
        band = inner_boundary(masks)
    elif seed_from == "region":
        band = masks
    else:
        raise ValueError(f"seed_from must be 'boundary' or 'region', got {seed_from!r}")
    centres, found = sample_voxels(band, generator)
    lo, hi, _ = mask_extents(band)
    half = torch.floor(window_fraction * (hi - lo).float()).long().clamp_min(1)
    edge = band & window_masks(centres, half, spatial) & found.view(-1, *([1] * nd))
    if seed_from == "boundary":
        edge = dilate(edge, dilation_iterations, "cross") & masks
    return edge.reshape(*lead, *spatial)


def extract_regions(labels: torch.Tensor, num_classes: int, centre_erosion_iterations: int = 4,
                    keep_largest_component: bool = True, edge_window_fraction: float = 0.25,
                    edge_dilation_iterations: int = 3, edge_seed_from: str = "boundary",
                    generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """{'edge', 'centre', 'whole'}: (B, C, *spatial) bool region masks of every class of a label map."""
    whole = whole_regions(labels, num_classes)
    return {"edge": edge_regions(whole, edge_window_fraction, edge_dilation_iterations, edge_seed_from, generator),
            "centre": centre_regions(whole, centre_erosion_iterations, keep_largest_component),
            "whole": whole}


def crop_masked_patches(images: torch.Tensor, masks: torch.Tensor, image_index: torch.Tensor,
                        size: Sequence[int]) -> torch.Tensor:
    """Bounding-box crops of ``images[image_index] · mask``, resized to ``size`` with (bi/tri)linear interpolation.

    images (B, C_in, *spatial); masks (N, *spatial) bool, non-empty; image_index (N,) long. Returns
    (N, C_in, *size); equal to ``F.interpolate(crop, size, mode='(bi|tri)linear', align_corners=False)`` of each
    masked crop, done as one ``grid_sample`` for all patches (no per-patch host round trip)."""
    ndim = _check_masks(masks)
    if images.ndim != ndim + 2 or tuple(images.shape[2:]) != tuple(masks.shape[1:]):
        raise ValueError(f"images {tuple(images.shape)} and masks {tuple(masks.shape)} do not match")
    if len(size) != ndim:
        raise ValueError(f"patch size {tuple(size)} must have {ndim} entries")
    lo, hi, _ = mask_extents(masks)
    spatial = masks.shape[1:]
    axes = []
    for axis in range(ndim):
        extent = float(spatial[axis])
        # normalised coordinates (align_corners=False) of the crop's outer pixel edges and of the output centres
        start = 2.0 * lo[:, axis].float() / extent - 1.0
        stop = 2.0 * (hi[:, axis].float() + 1.0) / extent - 1.0
        out = (2.0 * torch.arange(size[axis], device=masks.device, dtype=torch.float32) + 1.0) / size[axis] - 1.0
        coords = (start + stop)[:, None] / 2 + (stop - start)[:, None] / 2 * out  # (N, size[axis])
        # clamp to the centres of the first/last crop voxels, like F.interpolate, so nothing outside the box leaks in
        first = (2.0 * lo[:, axis].float() + 1.0) / extent - 1.0
        last = (2.0 * hi[:, axis].float() + 1.0) / extent - 1.0
        coords = torch.maximum(torch.minimum(coords, last[:, None]), first[:, None])
        shape = [masks.shape[0]] + [1] * ndim
        shape[1 + axis] = size[axis]
        axes.append(coords.view(shape).expand(masks.shape[0], *size))
    grid = torch.stack(axes[::-1], dim=-1)  # grid_sample wants (x, y[, z]) = last spatial axis first
    masked = images[image_index] * masks[:, None].to(images.dtype)
    return F.grid_sample(masked, grid.to(masked.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
