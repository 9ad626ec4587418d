"""BoCLIS's modules: the patch encoder (the student's own encoder stages) and the per-class memory queue."""
import math
from typing import Sequence, Tuple

import torch
from torch import nn


def _stage_output_size(size: Sequence[int], stride: Sequence[int]) -> Tuple[int, ...]:
    return tuple(int(math.ceil(n / s)) for n, s in zip(size, stride))


def patch_encoder_depth(encoder: nn.Module, patch_size: Sequence[int]) -> int:
    """Number of encoder stages to run on a patch: the deepest whose output keeps >= 2 voxels on every axis
    (InstanceNorm needs more than one voxel; a 32³ crop reaches 1 voxel at nnU-Net's bottleneck)."""
    size, depth = tuple(patch_size), 0
    for stride in encoder.strides:
        stride = stride if isinstance(stride, (list, tuple)) else [stride] * len(size)
        size = _stage_output_size(size, stride)
        if min(size) < 2:
            break
        depth += 1
    if depth == 0:
        raise ValueError(f"contrast patch size {tuple(patch_size)} is too small for this encoder (the first stage "
                         f"already leaves < 2 voxels); raise contrast_patch_size")
    return depth


def contrast_patch_size(requested, training_patch_size: Sequence[int]) -> Tuple[int, ...]:
    """Size the region crops are resized to before encoding. ``requested`` None: the paper's 32³ (64² in 2D), but
    never more than the training patch on an axis; an int (every axis) or a tuple is taken as given.

    The crops are bounding boxes inside one training patch, so resizing them beyond it adds voxels, not detail: at
    LA's 16 x 28 x 36 patch (3.5 mm plans) the 32³ crops were 10x the voxels of the whole training batch and made
    an iteration about 6x as slow as Mean Teacher's."""
    ndim = len(training_patch_size)
    if requested is None:
        return tuple(min(32 if ndim == 3 else 64, int(n)) for n in training_patch_size)
    size = (requested,) * ndim if isinstance(requested, int) else tuple(requested)
    if len(size) != ndim:
        raise ValueError(f"contrast_patch_size {size} must have {ndim} entries for a {ndim}D training patch")
    return tuple(int(s) for s in size)


def encoder_stage_channels(encoder: nn.Module, depth: int) -> int:
    return int(encoder.output_channels[depth - 1])


def encode_patches(encoder: nn.Module, patches: torch.Tensor, depth: int) -> torch.Tensor:
    """Run the first ``depth`` stages of an nnU-Net encoder (stem included) and global-average-pool: (N, C)."""
    x = patches
    if getattr(encoder, "stem", None) is not None:
        x = encoder.stem(x)
    for stage in encoder.stages[:depth]:
        x = stage(x)
    return x.mean(dim=tuple(range(2, x.ndim)))


class ClassMemoryQueue(nn.Module):
    """Per-class FIFO of detached embeddings (C, Q, D) for the inter-image term of small 3D batches."""

    def __init__(self, num_classes: int, size: int, dim: int):
        super().__init__()
        if size <= 0:
            raise ValueError(f"memory queue size must be > 0, got {size}")
        self.register_buffer("embeddings", torch.zeros(num_classes, size, dim))
        self.register_buffer("filled", torch.zeros(num_classes, size, dtype=torch.bool))
        self.register_buffer("pointer", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def push(self, embeddings: torch.Tensor, classes: torch.Tensor):
        """Append each class's new embeddings (in order) at its pointer; beyond ``size`` only the last ones stay.

        Computed on the device for all classes at once (ranks within a class by a cumulative count, then one
        ``index_copy_``), so pushing never waits for the GPU."""
        num_classes, size, dim = self.embeddings.shape
        classes = classes.long()
        member = classes[:, None] == torch.arange(num_classes, device=classes.device)   # (N, C)
        rank = (member.long().cumsum(0) - 1).gather(1, classes[:, None])[:, 0]         # position within its class
        count = member.long().sum(0)
        skipped = (count - size).clamp_min(0)[classes]                                 # older ones that do not fit
        slot = (self.pointer[classes] + rank - skipped) % size
        # the ones that do not fit are written to a scratch row that is dropped afterwards
        target = torch.where(rank >= skipped, classes * size + slot, num_classes * size)
        flat = torch.cat((self.embeddings.view(-1, dim), self.embeddings.new_zeros(1, dim)))
        flat.index_copy_(0, target, embeddings.detach().to(flat.dtype))
        filled = torch.cat((self.filled.view(-1), self.filled.new_zeros(1)))
        filled.index_fill_(0, target, True)
        self.embeddings.copy_(flat[:-1].view_as(self.embeddings))
        self.filled.copy_(filled[:-1].view_as(self.filled))
        self.pointer.copy_((self.pointer + count.clamp_max(size)) % size)

    def slots(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embeddings (C·Q, D), classes (C·Q,), filled (C·Q,) bool) of every slot: fixed shapes, no sync."""
        classes = torch.arange(self.embeddings.shape[0], device=self.embeddings.device)
        classes = classes[:, None].expand_as(self.filled)
        return self.embeddings.flatten(0, 1), classes.flatten(), self.filled.flatten()

    def contents(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (M, D), classes (M,)) of the filled slots only (for inspection; selecting costs a sync)."""
        embeddings, classes, filled = self.slots()
        return embeddings[filled], classes[filled]
