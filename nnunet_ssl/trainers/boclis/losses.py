"""BoCLIS's equations: uncertainty-weighted aggregation of the teachers (spec §2.2), the reliability-weighted
pseudo-label CE, and the intra/inter-image boundary-patch contrast.
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch.nn import functional as F

from nnunet_ssl.losses.supervised_contrastive import supervised_contrastive_loss


EPS = 1e-8


@dataclass
class TeacherAggregate:
    probabilities: torch.Tensor  # p̄ (B, C, *spatial)
    weights: torch.Tensor        # w_k (K, B, *spatial)
    labels: torch.Tensor         # argmax p̄ (B, *spatial) long
    confidence: torch.Tensor     # max p̄ (B, *spatial)
    reliability: torch.Tensor    # r = 1 - H(p̄)/log C (B, *spatial)


def entropy(probabilities: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy (nats) along ``dim``, with 0·log 0 := 0 (probabilities clamped at 1e-8 inside the log)."""
    return -(probabilities * probabilities.clamp_min(EPS).log()).sum(dim=dim)


def aggregate_teacher_predictions(teacher_probabilities: torch.Tensor, weighting: str = "entropy",
                                  temperature: float = 1.0, normalise_uncertainty: bool = False) -> TeacherAggregate:
    """Uncertainty-weighted aggregation of K teachers' softmax outputs (K, B, C, *spatial) (spec §2.2).

    ``weighting='entropy'``: ``w_k = softmax_k(-U_k / T_u)`` with ``U_k = H(p_k)`` (divided by log C when
    ``normalise_uncertainty``); ``'uniform'``: ``w_k = 1/K`` (ablation). ``r = 1 - H(p̄)/log C``."""
    if teacher_probabilities.ndim < 4:
        raise ValueError(f"teacher probabilities must be (K, B, C, *spatial), got {tuple(teacher_probabilities.shape)}")
    p = teacher_probabilities.float()
    num_classes = p.shape[2]
    if num_classes < 2:
        raise ValueError("aggregation needs at least 2 classes")
    log_c = math.log(num_classes)
    if weighting == "entropy":
        if temperature <= 0:
            raise ValueError(f"aggregation temperature must be > 0, got {temperature}")
        uncertainty = entropy(p, dim=2)
        if normalise_uncertainty:
            uncertainty = uncertainty / log_c
        weights = torch.softmax(-uncertainty / temperature, dim=0)
    elif weighting == "uniform":
        weights = torch.full_like(p[:, :, 0], 1.0 / p.shape[0])
    else:
        raise ValueError(f"aggregation weighting must be 'entropy' or 'uniform', got {weighting!r}")
    merged = (weights[:, :, None] * p).sum(dim=0)
    confidence, labels = merged.max(dim=1)
    reliability = (1.0 - entropy(merged, dim=1) / log_c).clamp(0.0, 1.0)
    return TeacherAggregate(merged, weights, labels, confidence, reliability)


def reliability_weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                                       reliability: torch.Tensor) -> torch.Tensor:
    """``Σ_i r_i·CE_i / Σ_i r_i`` in fp32; 0 (with a graph) when every r is 0."""
    ce = F.cross_entropy(logits.float(), labels.long(), reduction="none")
    r = reliability.float()
    return (r * ce).sum() / r.sum().clamp_min(EPS)


def boclis_contrastive_loss(embeddings: torch.Tensor, image_index: torch.Tensor, class_index: torch.Tensor,
                            region_index: torch.Tensor, temperature: float, anchor_regions: Sequence[int],
                            queue_embeddings: Optional[torch.Tensor] = None,
                            queue_classes: Optional[torch.Tensor] = None,
                            queue_filled: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(intra-image, inter-image) SupCon terms over a batch of patch embeddings (spec §5.2-5.3).

    Anchors: patches whose region is in ``anchor_regions``. Intra: candidates = the other patches of the anchor's
    image, positives = those of its class. Inter: candidates = patches of other images plus queue entries (those
    marked in ``queue_filled``; all when it is None), positives = those of the anchor's class."""
    n = embeddings.shape[0]
    is_anchor = torch.zeros(n, dtype=torch.bool, device=embeddings.device)
    for r in anchor_regions:
        is_anchor |= region_index == r
    same_image = image_index[:, None] == image_index[None, :]
    same_class = class_index[:, None] == class_index[None, :]
    not_self = ~torch.eye(n, dtype=torch.bool, device=embeddings.device)
    intra_candidates = same_image & not_self
    intra = supervised_contrastive_loss(embeddings, embeddings, intra_candidates, intra_candidates & same_class,
                                        temperature, is_anchor)
    candidates, inter_candidates, inter_positives = embeddings, ~same_image, ~same_image & same_class
    if queue_embeddings is not None and queue_embeddings.shape[0] > 0:
        candidates = torch.cat((embeddings, queue_embeddings.to(embeddings.dtype)))
        queue_same_class = class_index[:, None] == queue_classes[None, :]
        queue_usable = torch.ones_like(queue_same_class) if queue_filled is None else \
            queue_filled[None, :].expand_as(queue_same_class)
        inter_candidates = torch.cat((inter_candidates, queue_usable), dim=1)
        inter_positives = torch.cat((inter_positives, queue_same_class & queue_usable), dim=1)
    inter = supervised_contrastive_loss(embeddings, candidates, inter_candidates, inter_positives, temperature,
                                        is_anchor)
    return intra, inter
