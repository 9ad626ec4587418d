"""InfoNCE on cosine similarities, the contrastive loss every method here uses in some form."""
from typing import Optional

import torch
from torch.nn import functional as F


def info_nce(anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, temperature: float,
             negative_mask: Optional[torch.Tensor] = None,
             anchor_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean InfoNCE ``-log( e^{s(a,p)/τ} / (e^{s(a,p)/τ} + Σ_k e^{s(a,n_k)/τ}) )`` with cosine similarity s.

    anchors (N, D); positives (N, D); negatives (N, K, D) per anchor or (K, D) shared by all anchors.
    ``negative_mask`` (N, K) bool excludes negatives (False = not a negative for that anchor).
    ``anchor_weights`` (N,) scales each anchor's loss before the mean: ``mean_i w_i·l_i`` (None: all 1).
    Computed in fp32 (AMP-safe); returns 0 with a graph when N == 0.
    """
    if anchors.shape[0] == 0:
        return anchors.sum() * 0.0
    a = F.normalize(anchors.float(), dim=-1)
    p = F.normalize(positives.float(), dim=-1)
    n = F.normalize(negatives.float(), dim=-1)
    pos = (a * p).sum(-1, keepdim=True)                                   # (N, 1)
    neg = a @ n.t() if n.ndim == 2 else torch.einsum("nd,nkd->nk", a, n)  # (N, K)
    if negative_mask is not None:
        neg = neg.masked_fill(~negative_mask, float("-inf"))
    logits = torch.cat((pos, neg), dim=1) / temperature
    targets = torch.zeros(a.shape[0], dtype=torch.long, device=a.device)
    if anchor_weights is None:
        return F.cross_entropy(logits, targets)
    return (F.cross_entropy(logits, targets, reduction="none") * anchor_weights.float()).mean()
