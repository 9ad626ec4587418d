"""UGPL's equations (spec ``ugpl.md``): entropy filter, union pseudo-labels, KL-rectified cross pseudo
supervision, cosine consistency, cross-reliable and prototype alignment terms, and their schedules.
"""
import math
from typing import Dict, Optional, Tuple

import torch
from torch.nn import functional as F

from nnunet_ssl.losses.one_hot import one_hot
from nnunet_ssl.losses.prototypes import class_prototypes, gather_voxel_features, sample_class_voxels
from nnunet_ssl.ramps import sigmoid_rampup


def softmax_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-voxel entropy ``-Σ_c p_c log(p_c + 1e-10)`` of probabilities (B, C, *spatial) -> (B, *spatial)."""
    probs = probs.float()
    return -(probs * torch.log(probs + 1e-10)).sum(1)


def numpy_percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """``np.percentile(values, q)`` (linear interpolation) of all elements; kthvalue instead of torch.quantile,
    which refuses more than 2^24 elements."""
    flat = values.reshape(-1).float()
    if flat.numel() == 0:
        raise ValueError("percentile of an empty set of voxels")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must lie in [0, 100], got {q}")
    pos = q / 100.0 * (flat.numel() - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    v_lo = torch.kthvalue(flat, lo + 1).values
    v_hi = v_lo if hi == lo else torch.kthvalue(flat, hi + 1).values
    return v_lo + (pos - lo) * (v_hi - v_lo)


def entropy_keep_mask(entropy_a: torch.Tensor, entropy_b: torch.Tensor, keep_percent: float,
                      valid: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CCE mask (spec §3.4 steps 3-4): (kept, τ_A, τ_B).

    τ_k is the ``keep_percent``-th percentile of network k's entropy over the valid voxels of the batch; a voxel
    is kept when it lies below its threshold in at least one network (a voxel at τ counts as uncertain)."""
    if valid is None:  # every voxel counts: no boolean selection, no host sync
        tau_a = numpy_percentile(entropy_a, keep_percent)
        tau_b = numpy_percentile(entropy_b, keep_percent)
        return (entropy_a < tau_a) | (entropy_b < tau_b), tau_a, tau_b
    if not valid.any():
        nan = torch.full((), float("nan"), device=entropy_a.device)
        return torch.zeros_like(valid), nan, nan
    tau_a = numpy_percentile(entropy_a[valid], keep_percent)
    tau_b = numpy_percentile(entropy_b[valid], keep_percent)
    kept = ((entropy_a < tau_a) | (entropy_b < tau_b)) & valid
    return kept, tau_a, tau_b


def union_pseudo_labels(probs_a: torch.Tensor, probs_b: torch.Tensor) -> torch.Tensor:
    """Shared pseudo-label (spec §3.4 step 1): agreement; else the foreground one if the other says background;
    else the class its own network is more confident in. For two classes this is ``argmax_A OR argmax_B``."""
    conf_a, a = probs_a.max(1)
    conf_b, b = probs_b.max(1)
    by_confidence = torch.where(conf_a >= conf_b, a, b)
    return torch.where(a == b, a, torch.where(a == 0, b, torch.where(b == 0, a, by_confidence)))


def rescaled_masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, kept: torch.Tensor,
                                  valid: Optional[torch.Tensor] = None, rescale: bool = True) -> torch.Tensor:
    """L_u (spec §3.4 step 5): ``(N / N_kept) · mean_{kept} CE(logits, labels)``; 0 (with a graph) if nothing is
    kept. N counts the valid voxels. Gradient flows into ``logits`` only."""
    ce = F.cross_entropy(logits.float(), labels.long(), reduction="none")
    kept = kept.float()
    n_kept = kept.sum()
    n_valid = float(kept.numel()) if valid is None else valid.float().sum()
    loss = (ce * kept).sum() / n_kept.clamp_min(1.0)
    if rescale:
        loss = loss * n_valid / n_kept.clamp_min(1.0)
    return loss


def kl_rectified_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                               temperature: float = 0.5, weighting: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """L_kl^{j->k} (spec §3.5): ``mean(exp(-KL)·CE(student, argmax teacher)) + mean(KL)``, KL(teacher‖student).

    The teacher is detached; ``w = exp(-KL)`` is not (rectification, as in Zheng & Yang). ``temperature`` only
    sharpens before the argmax and therefore has no effect (kept as the documented reference parameter).
    ``weighting=False``: plain cross pseudo supervision ``mean(CE)``. Returns (loss, mean weight)."""
    if temperature <= 0:
        raise ValueError(f"kl_temperature must be > 0, got {temperature}")
    teacher = teacher_logits.detach().float()
    log_p_student = F.log_softmax(student_logits.float(), 1)
    pseudo = (teacher / temperature).argmax(1)
    ce = F.nll_loss(log_p_student, pseudo, reduction="none")
    if not weighting:
        return ce.mean(), torch.ones((), device=ce.device)
    kl = F.kl_div(log_p_student, F.log_softmax(teacher, 1), reduction="none", log_target=True).sum(1)
    weight = torch.exp(-kl)
    return (weight * ce).mean() + kl.mean(), weight.detach().mean()


def cosine_consistency(probs_a: torch.Tensor, probs_b: torch.Tensor) -> torch.Tensor:
    """L_cos = mean over voxels of ``1 - cos(p_A, p_B)`` along classes (no detach: both networks learn)."""
    return (1.0 - F.cosine_similarity(probs_a.float(), probs_b.float(), dim=1, eps=1e-8)).mean()


def cross_reliable_losses(probs_a: torch.Tensor, probs_b: torch.Tensor, seg: torch.Tensor,
                          threshold: float = 0.6, valid: Optional[torch.Tensor] = None
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """MCF's L_cr on labelled voxels (spec §3.2): (L_cr^A, L_cr^B).

    ``conf_k = argmax p_k ≠ 0 ∧ max p_k ≥ threshold``; ``M = conf_A XOR conf_B`` (no gradient, valid voxels only);
    ``L_cr^k = Σ_M ½‖p_k − onehot(y)‖² / (|M| + 1e-16)``, which is ``(p_fg − y)²`` for two classes."""
    with torch.no_grad():
        def confident(p):
            conf, cls = p.max(1)
            return (cls != 0) & (conf >= threshold)
        mask = confident(probs_a) ^ confident(probs_b)
        if valid is not None:
            mask = mask & valid
        mask = mask.float()
        target = one_hot(seg.long().clamp_min(0) * mask.long(), probs_a.shape[1])
    denom = mask.sum() + 1e-16
    losses = []
    for p in (probs_a, probs_b):
        sq = 0.5 * ((p.float() - target) ** 2).sum(1)
        losses.append((sq * mask).sum() / denom)
    return losses[0], losses[1]


def _unit_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # the 1e-12 keeps the gradient finite for a candidate sitting exactly on its prototype
    return torch.sqrt(((a - b) ** 2).sum(-1) + 1e-12)


def prototype_alignment_loss(features: torch.Tensor, reliable_labels: torch.Tensor, candidate_labels: torch.Tensor,
                             num_classes: int, sample_fraction: float = 0.01, margin: float = 1.0,
                             separation: str = "hinge", push_candidates: bool = True
                             ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """L_c (spec §3.7) on one network's features (B, F, *spatial); labels (B, *spatial), -1 = not in the set.

    Prototypes μ̂_c: L2-normalised means of the raw features of reliable voxels of class c. Per class with a
    prototype, ``floor(fraction·|U_c|)`` uncertain candidates are drawn and L2-normalised;
    ``pull = Σ_c mean d(f̂, sg μ̂_c)``, ``push = Σ_c mean max(0, m − min_{k≠c} d(f̂, sg μ̂_k))``,
    ``sep = mean_{c<k} max(0, m − d(μ̂_c, μ̂_k))`` (prototypes not detached). ``separation='code_pull'`` replaces
    sep by ``+mean d(μ̂_c, μ̂_k)`` (the authors' sign bug, for ablation); 'none' drops it.
    With no candidate sampled at all, L_c is 0. Returns (loss, stats: reliable / candidate counts per class)."""
    if separation not in ("hinge", "code_pull", "none"):
        raise ValueError(f"proto_separation must be 'hinge', 'code_pull' or 'none', got {separation!r}")
    features = features.float()
    protos, reliable_counts = class_prototypes(features, reliable_labels, num_classes)
    present = reliable_counts > 0
    unit = F.normalize(protos, dim=1, eps=1e-12)
    anchors = unit.detach()
    candidate_counts = torch.stack([(candidate_labels == c).sum() for c in range(num_classes)]).float()
    stats = {"reliable_counts": reliable_counts.detach(), "candidate_counts": candidate_counts}
    # fixed-shape sampling and masked means: nothing here waits for the device
    indices, taken = sample_class_voxels(candidate_labels, num_classes, sample_fraction)   # (C, S)
    taken = taken & present[:, None]                 # only classes with a prototype pull their candidates
    if indices.shape[1] == 0:
        return features.sum() * 0.0, stats
    size = indices.shape[1]
    cand = F.normalize(gather_voxel_features(features, indices.reshape(-1)), dim=1, eps=1e-12)
    cand = cand.view(num_classes, size, -1)                                                 # (C, S, F)
    n_taken = taken.sum(dim=1).clamp_min(1)
    pull = _unit_distance(cand, anchors[:, None, :])                                       # (C, S)
    loss = ((pull * taken).sum(dim=1) / n_taken).sum()
    if push_candidates:
        to_each = _unit_distance(cand[:, :, None, :], anchors[None, None, :, :])            # (C, S, C)
        own = torch.eye(num_classes, dtype=torch.bool, device=features.device)
        other_present = present[None, :] & ~own                                            # (C, C): k ≠ c, present
        to_each = to_each.masked_fill(~other_present[:, None, :], float("inf"))
        push = F.relu(margin - to_each.min(dim=2).values)                                  # 0 without other class
        loss = loss + ((push * taken).sum(dim=1) / n_taken).sum()
    if separation != "none":
        upper = torch.ones(num_classes, num_classes, dtype=torch.bool, device=features.device).triu(1)
        pair = present[:, None] & present[None, :] & upper                                 # c < k, both present
        d = _unit_distance(unit[:, None, :], unit[None, :, :])                              # (C, C)
        term = F.relu(margin - d) if separation == "hinge" else d
        loss = loss + (term * pair).sum() / pair.sum().clamp_min(1)
    # with no candidate sampled at all, L_c is 0
    return torch.where(taken.any(), loss, features.sum() * 0.0), stats


def prototype_weight(step: int, total_steps: int, max_weight: float = 0.1, ramp_fraction: float = 1.0) -> float:
    """λ_c(s) = max · exp(−5 (1 − min(s / (ramp_fraction·total), 1))²)."""
    return max_weight * sigmoid_rampup(step, ramp_fraction * total_steps)


def loser_is_b(dice_loss_a, dice_loss_b):
    """The loser has the higher labelled Dice loss; on a tie A loses (the reference's V-Net). Floats give a bool,
    tensors a bool tensor (no host sync)."""
    return dice_loss_b > dice_loss_a
