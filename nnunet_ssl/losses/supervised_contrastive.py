"""Supervised-contrastive InfoNCE (Khosla et al. 2020) with several positives per anchor and masked candidate sets.

``info_nce`` (contrastive.py) has one positive per anchor; BoCLIS and other patch/prototype methods need
``-(1/|Pos(a)|) Σ_{p∈Pos(a)} log( e^{s(a,p)/τ} / Σ_{n∈Cand(a)} e^{s(a,n)/τ} )`` with per-anchor candidate sets given
as masks (so no data-dependent indexing is needed). With exactly one positive per anchor and candidates = that
positive plus its negatives, both losses agree.
"""
from typing import Optional

import torch
from torch.nn import functional as F


def supervised_contrastive_loss(anchors: torch.Tensor, candidates: torch.Tensor, candidate_mask: torch.Tensor,
                                positive_mask: torch.Tensor, temperature: float,
                                anchor_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over anchors that have at least one positive (and ``anchor_mask``) of the SupCon term.

    anchors (N, D), candidates (M, D) — cosine similarities, computed in fp32 (AMP-safe);
    candidate_mask (N, M) bool: the denominator set of each anchor (exclude the anchor itself here);
    positive_mask (N, M) bool: positives; only those that are also candidates count (intersected on the device
    rather than checked, which would cost a host-device sync per call).
    Returns 0 with a graph when no anchor has a positive."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if candidate_mask.shape != (anchors.shape[0], candidates.shape[0]) or positive_mask.shape != candidate_mask.shape:
        raise ValueError(f"masks must be (N, M) = ({anchors.shape[0]}, {candidates.shape[0]}), got "
                         f"{tuple(candidate_mask.shape)} and {tuple(positive_mask.shape)}")
    positive_mask = positive_mask & candidate_mask
    a = F.normalize(anchors.float(), dim=-1)
    c = F.normalize(candidates.float(), dim=-1)
    logits = a @ c.t() / temperature
    # rows without candidates are excluded below; give them a finite denominator so no NaN reaches the gradient
    safe_candidates = candidate_mask | ~candidate_mask.any(dim=1, keepdim=True)
    log_denominator = torch.logsumexp(logits.masked_fill(~safe_candidates, float("-inf")), dim=1, keepdim=True)
    log_prob = torch.where(positive_mask, logits - log_denominator, torch.zeros_like(logits))
    n_pos = positive_mask.sum(dim=1)
    per_anchor = log_prob.sum(dim=1) / n_pos.clamp_min(1)
    include = n_pos > 0
    if anchor_mask is not None:
        include = include & anchor_mask
    include = include.float()
    return -(per_anchor * include).sum() / include.sum().clamp_min(1.0)
