"""Per-voxel weights of pseudo-labels, how they are stored, and the loss that uses them.

A pseudo-labelled case's segmentation has two channels: the argmax label, and the voxel's weight as a *bucket*
``b = round((1 - w) * levels)``, so ``b = 0`` is full weight. nnU-Net's loader and augmentation treat both
channels as label maps (nearest-label resampling, padding -1 turned into 0), so the weights stay aligned with the
labels through cropping, rotation, scaling, mirroring and deep-supervision downsampling; padded voxels come out as
background with full weight, exactly as nnU-Net trains the padding of labelled cases. ``levels`` is small because
nnU-Net's label resampling costs one pass per distinct value in a channel.

Weight of a voxel with confidence ``c`` (max softmax probability) among ``C`` classes and threshold ``tau``::

    hard:        w = 1[c >= tau]
    confidence:  w = 1[c >= tau] * clip((c - 1/C) / (1 - 1/C), 0, 1)     (0 at chance level, 1 when certain)

With ``tau = 0`` and ``hard`` every voxel counts fully: the maintainers' plain recipe.
"""
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.helpers import softmax_helper_dim1
from torch import nn

WEIGHTINGS = ("hard", "confidence")
WEIGHT_LEVELS = 10  # weights are stored in steps of 1/10

Array = Union[np.ndarray, torch.Tensor]


def voxel_weights(confidence: np.ndarray, num_classes: int, threshold: float = 0.0,
                  weighting: str = "hard") -> np.ndarray:
    """Weights in [0, 1] from confidences (see the module docstring for the formula)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    confidence = np.asarray(confidence, dtype=np.float32)
    keep = (confidence >= threshold).astype(np.float32)
    if weighting == "hard":
        return keep
    chance = 1.0 / num_classes
    return keep * np.clip((confidence - chance) / (1.0 - chance), 0.0, 1.0)


def encode_weights(weights: np.ndarray, levels: int = WEIGHT_LEVELS) -> np.ndarray:
    """Weight buckets ``round((1 - w) * levels)`` (halves rounded up), int16."""
    return np.floor((1.0 - np.asarray(weights, dtype=np.float64)) * levels + 0.5).astype(np.int16)


def decode_weights(buckets: Array, levels: int = WEIGHT_LEVELS) -> Array:
    """Weights ``1 - b / levels`` from buckets (numpy or torch, float32)."""
    if isinstance(buckets, torch.Tensor):
        return 1.0 - buckets.float().clamp(0, levels) / levels
    return (1.0 - np.clip(buckets, 0, levels) / levels).astype(np.float32)


class WeightedPseudoLabelLoss(nn.Module):
    """nnU-Net's Dice + CE on pseudo-labels, each voxel weighted: ``sum(w ce) / sum(w) + soft Dice(loss_mask=w)``.

    ``target`` is a two-channel pseudo-label map (label, weight bucket) as the loader serves it. With 0/1 weights
    this is nnU-Net's ``DC_and_CE_loss`` with the zero-weight voxels as its ignore label (tested); with all weights
    1 it is nnU-Net's plain loss on the pseudo-labels. The Dice is nnU-Net's ``MemoryEfficientSoftDiceLoss``
    with the weights as its (soft) loss mask, and the same settings as nnU-Net's loss of the labelled cases."""

    def __init__(self, batch_dice: bool, ddp: bool = False, levels: int = WEIGHT_LEVELS):
        super().__init__()
        self.levels = levels
        self.dice = MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, batch_dice=batch_dice,
                                                do_bg=False, smooth=1e-5, ddp=ddp)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels = target[:, 0].long()
        weights = decode_weights(target[:, 1], self.levels)
        ce = F.cross_entropy(logits.float(), labels, reduction="none")
        ce = (ce * weights).sum() / weights.sum().clamp_min(1e-8)
        return ce + self.dice(logits, labels[:, None], loss_mask=weights[:, None])
