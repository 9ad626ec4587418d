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


def sample_class_voxels(labels: torch.Tensor, num_classes: int, fraction: float) -> Dict[int, torch.Tensor]:
    """Random voxels of every class, without replacement: {class: flat indices into labels.reshape(-1)}.

    Class c gets ``floor(fraction * |{labels == c}|)`` voxels; classes where that is 0 are left out."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"sample fraction must lie in (0, 1], got {fraction}")
    flat = labels.reshape(-1)
    samples = {}
    for c in range(num_classes):
        idx = torch.nonzero(flat == c).squeeze(1)
        n = int(math.floor(fraction * idx.numel()))
        if n > 0:
            samples[c] = idx[torch.randperm(idx.numel(), device=idx.device)[:n]]
    return samples


def gather_voxel_features(features: torch.Tensor, flat_indices: torch.Tensor) -> torch.Tensor:
    """Feature vectors (n, F) at flat voxel indices of a (B, F, *spatial) map (indices as for (B, *spatial))."""
    b, f = features.shape[:2]
    voxels_per_sample = features[0, 0].numel()
    flat = features.reshape(b, f, voxels_per_sample)
    return flat[flat_indices // voxels_per_sample, :, flat_indices % voxels_per_sample]
