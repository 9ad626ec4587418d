"""Class prototypes (masked feature means) and per-class voxel sampling on dense feature maps."""
import math
from typing import Dict, Tuple

import torch
from torch.nn import functional as F

from nnunet_ssl.losses.one_hot import one_hot


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean feature of every class: (prototypes (K, F), voxel counts (K,)).

    features (B, F, *spatial); labels (B, *spatial) long, a negative value marks voxels that belong to no class.
    Classes without voxels get a zero prototype and count 0. Gradient flows into ``features``; the means are
    computed as one matrix product against a one-hot mask, so no masked copy of the feature map is made."""
    if features.shape[0] != labels.shape[0] or features.shape[2:] != labels.shape[1:]:
        raise ValueError(f"features {tuple(features.shape)} and labels {tuple(labels.shape)} do not match "
                         f"(expected (B, F, *spatial) and (B, *spatial))")
    flat_f = features.reshape(features.shape[0], features.shape[1], -1)
    flat_l = labels.reshape(labels.shape[0], -1)
    onehot = one_hot(flat_l, num_classes, dim=-1, dtype=flat_f.dtype)  # (B, N, K); -1 rows are all zero
    sums = torch.bmm(flat_f, onehot).sum(0).t()                         # (K, F)
    counts = onehot.sum((0, 1))
    return sums / counts.clamp_min(1.0).unsqueeze(1), counts


def sample_class_voxels(labels: torch.Tensor, num_classes: int, fraction: float
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random voxels of every class, without replacement, as fixed-shape tensors (no host-device sync).

    Class c gets ``floor(fraction * |{labels == c}|)`` voxels. Returns (indices (C, S) long, flat indices into
    ``labels.reshape(-1)``; taken (C, S) bool, True for the first ``floor(fraction·|c|)`` entries of row c), with
    ``S = floor(fraction · labels.numel())`` (the most any class can get). Each voxel gets a uniform random key,
    other classes' voxels a larger one, and the S smallest keys are kept: a uniform sample of the class's voxels in
    random order, followed by the other classes' voxels (not taken)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"sample fraction must lie in (0, 1], got {fraction}")
    flat = labels.reshape(-1)
    capacity = int(math.floor(fraction * flat.numel()))
    member = flat[None] == torch.arange(num_classes, device=flat.device)[:, None]     # (C, N)
    counts = member.sum(dim=1)
    wanted = torch.floor(counts.double() * fraction).long()                             # as math.floor(f·n)
    keys = torch.rand(member.shape, device=flat.device) + 2.0 * (~member)
    indices = keys.topk(capacity, dim=1, largest=False).indices                        # members first
    taken = torch.arange(capacity, device=flat.device)[None] < wanted[:, None]
    return indices, taken


def draw_members(members: torch.Tensor, num_draws: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``num_draws`` uniform draws with replacement from the True positions of every row of ``members`` (K, N).

    Returns (indices (K, num_draws) long, non_empty (K,) bool). The r-th member of a row is found by a binary search
    in the row's running count, so neither the counts nor the positions ever go to the host. Rows without members
    give index 0 (mark them unusable with ``non_empty``)."""
    running = members.long().cumsum(dim=1)                                   # (K, N), non-decreasing
    counts = running[:, -1:]                                                 # (K, 1)
    rank = (torch.rand(members.shape[0], num_draws, device=members.device) * counts).long()
    rank = torch.minimum(rank, (counts - 1).clamp_min(0))
    index = torch.searchsorted(running, rank + 1)                            # first position with count rank + 1
    non_empty = counts[:, 0] > 0
    return torch.where(non_empty[:, None], index, 0), non_empty


def gather_voxel_features(features: torch.Tensor, flat_indices: torch.Tensor) -> torch.Tensor:
    """Feature vectors (n, F) at flat voxel indices of a (B, F, *spatial) map (indices as for (B, *spatial))."""
    b, f = features.shape[:2]
    voxels_per_sample = features[0, 0].numel()
    flat = features.reshape(b, f, voxels_per_sample)
    return flat[flat_indices // voxels_per_sample, :, flat_indices % voxels_per_sample]
