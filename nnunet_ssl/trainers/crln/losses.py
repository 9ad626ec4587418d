"""CRLN's equations (spec ``crln.md``): rectification (eqs. 8, 16), the authors' image-weighted unsupervised
loss, and the contrastive prototype supervision CPS (eqs. 9-14).
"""
from typing import Optional, Tuple

import torch
from torch.nn import functional as F

from nnunet_ssl.losses.contrastive import info_nce
from nnunet_ssl.losses.prototypes import class_prototypes, draw_members


def rectify_logits(logits: torch.Tensor, relation_map: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Eq. (8) as coded: ``z + (1 - a)·M(x)`` on logits; ``a`` is unconstrained (no sigmoid, no clamp)."""
    return logits + (1.0 - a) * relation_map


def rectification_loss(logits: torch.Tensor, relation_map: torch.Tensor, a: torch.Tensor, target: torch.Tensor,
                       seg_loss) -> torch.Tensor:
    """Eq. (16): ``seg_loss(z + (1 - a)·M(x), y)`` on *detached* labelled outputs, so only ``a`` gets a gradient."""
    return seg_loss(rectify_logits(logits.detach().float(), relation_map.detach().float(), a), target)


def image_weighted_nll(logits: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor, threshold: float,
                       ignore_index: int = -1) -> torch.Tensor:
    """Unsupervised loss of the authors' code (spec §1.5): per-voxel CE times the image's reliable fraction
    ``w_b = #(conf >= τ) / #valid``, averaged over the voxels whose weighted loss is > 0 (no hard mask)."""
    ce = F.cross_entropy(logits.float(), labels.long().clamp_min(0), reduction="none")
    valid = labels != ignore_index
    dims = tuple(range(1, labels.ndim))
    reliable = ((confidence >= threshold) & valid).sum(dims).float()
    weight = reliable / valid.sum(dims).float().clamp_min(1.0)
    weighted = ce * valid.float() * weight.view((-1,) + (1,) * (labels.ndim - 1))
    counted = (weighted > 0).sum()
    return weighted.sum() / counted.clamp_min(1)


def prototype_descriptors(prototypes: torch.Tensor) -> torch.Tensor:
    """``P̃_c`` of eq. (13) as coded: each prototype's mean over its feature channels, (1, C, M, F) -> (C, M)."""
    return prototypes[0].mean(dim=-1)


def cps_positive(class_mean: torch.Tensor, prototype_descriptor: Optional[torch.Tensor], xi: float,
                 mode: str = "combined") -> torch.Tensor:
    """Unassertive positive (eq. 13): ``(r̄_c + ξ·P̃_c) / (1 + ξ)``; 'mean' -> r̄_c, 'prototype' -> P̃_c.
    Without prototypes (before T_rect, or no DIM) every mode falls back to the class mean."""
    if prototype_descriptor is None or mode == "mean":
        return class_mean
    if mode == "prototype":
        return prototype_descriptor.to(class_mean)
    if mode != "combined":
        raise ValueError(f"cps positive mode must be 'combined', 'mean' or 'prototype', got {mode!r}")
    return (class_mean + xi * prototype_descriptor.to(class_mean)) / (1.0 + xi)


def sample_cps_indices(labels: torch.Tensor, valid: torch.Tensor, uncertain: torch.Tensor,
                       class_means: torch.Tensor, num_anchors: int, num_negatives: int,
                       class_temperature: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ReCo sampling on flattened voxels (spec §3.3-3.4). labels/valid/uncertain: (N,); class_means (C, D).

    For every class c: ``num_anchors`` anchor indices drawn with replacement from its uncertain valid voxels and
    (num_anchors, num_negatives) negative indices drawn with replacement from valid voxels of the other classes;
    with > 2 classes present the class of each negative is drawn with ``softmax_j(cos(r̄_c, r̄_j) / 0.5)`` over the
    present classes j ≠ c. Returns (anchors (C, A), negatives (C, A, M), usable (C,) bool): a class is usable when
    it has uncertain valid voxels and at least two classes have valid voxels. Everything stays on the device (fixed
    shapes; rows of unusable classes hold placeholder indices)."""
    num_classes = class_means.shape[0]
    classes = torch.arange(num_classes, device=labels.device)
    members = valid[None] & (labels[None] == classes[:, None])                           # (C, N)
    anchors, has_anchor = draw_members(members & uncertain[None], num_anchors)            # (C, A)
    n_draws = num_anchors * num_negatives
    pool_draws, present = draw_members(members, n_draws)                                  # (C, A·M) per class
    usable = has_anchor & (present.sum() >= 2)
    negatives = []
    for c in range(num_classes):
        # rows of the other classes by slicing (a list index would be copied from the host first)
        def others(t):
            return torch.cat((t[:c], t[c + 1:]))

        if num_classes == 2:
            which = torch.zeros((1, n_draws), dtype=torch.long, device=labels.device)
        else:
            sim = F.cosine_similarity(class_means[c][None].float(), others(class_means).float(), dim=1)
            logits = (sim / class_temperature).masked_fill(~others(present), float("-inf"))
            logits = torch.where(others(present).any(), logits, torch.zeros_like(logits))  # unusable: any valid row
            which = torch.multinomial(torch.softmax(logits, dim=0), n_draws, replacement=True)[None]
        negatives.append(others(pool_draws).gather(0, which)[0].view(num_anchors, num_negatives))
    return anchors, torch.stack(negatives), usable


def cps_loss(embeddings: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, uncertain: torch.Tensor,
             num_classes: int, prototype_desc: Optional[torch.Tensor], xi: float, positive_mode: str = "combined",
             num_anchors: int = 256, num_negatives: int = 512, temperature: float = 0.5) -> torch.Tensor:
    """Eq. (14): InfoNCE per class over sampled anchors, mean over the classes that have anchors (0 with a graph
    when none has, or fewer than two classes are present).

    embeddings (N, D) flattened voxels (only anchors carry gradients; positives and negatives are constants, as in
    ReCo); prototype_desc (C, D) or None (positive = class mean). No host-device synchronisation."""
    with torch.no_grad():
        # masked means as one product (zero for absent classes): no boolean selection, no host sync
        emb = embeddings.detach().float()
        class_means, _ = class_prototypes(emb.t()[None], torch.where(valid, labels, -1)[None], num_classes)
    anchor_idx, negative_idx, usable = sample_cps_indices(labels, valid, uncertain, class_means, num_anchors,
                                                          num_negatives, temperature)
    total = embeddings.sum() * 0.0
    for c in range(num_classes):
        pos = cps_positive(class_means[c], None if prototype_desc is None else prototype_desc[c], xi, positive_mode)
        anchors = embeddings[anchor_idx[c]]
        term = info_nce(anchors, pos.expand_as(anchors), emb[negative_idx[c]], temperature)
        total = total + torch.where(usable[c], term, torch.zeros_like(term))
    return total / usable.sum().clamp_min(1)
