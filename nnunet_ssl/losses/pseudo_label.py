"""Losses against teacher pseudo-labels."""
from typing import Optional

import torch
import torch.nn.functional as F


def confidence_pseudo_labels(logits: torch.Tensor, threshold: float):
    """Hard pseudo-labels from teacher logits (B, C, *spatial): (labels, confidence, reliable mask).

    ``confidence`` is the max softmax probability; ``reliable`` is ``confidence >= threshold``."""
    probs = torch.softmax(logits.float(), dim=1)
    confidence, labels = probs.max(dim=1)
    return labels, confidence, confidence >= threshold


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                           voxel_weight: Optional[torch.Tensor] = None, ignore_index: int = -1) -> torch.Tensor:
    """Per-voxel CE (fp32) times ``voxel_weight``, averaged over all non-ignored voxels.

    With a 0/1 confidence mask as weight this is FixMatch's masked loss (eq. 2 of seed 001): unreliable voxels
    count as zero but stay in the denominator, so the loss does not grow when few voxels are reliable."""
    ce = F.cross_entropy(logits.float(), labels.long(), reduction="none", ignore_index=ignore_index)
    valid = (labels != ignore_index).float()
    if voxel_weight is not None:
        ce = ce * voxel_weight.float()
    return (ce * valid).sum() / valid.sum().clamp_min(1.0)
