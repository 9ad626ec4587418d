"""Per-epoch semi-supervised diagnostics: pseudo-label quality and a progress plot beside nnU-Net's."""
import math
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
import torch


def mean_foreground_dice(pred: torch.Tensor, truth: torch.Tensor, num_classes: int,
                         valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Hard Dice averaged over foreground classes present in ``pred`` or ``truth``, pooled over the batch.

    pred, truth: integer label maps of equal shape; ``valid`` (same shape, bool): the voxels to count (a mask
    rather than boolean indexing, so no host-device sync). Returns NaN (as a tensor) when no foreground class
    occurs, so epoch means can skip it with nanmean."""
    dices = []
    for c in range(1, num_classes):
        p, t = pred == c, truth == c
        if valid is not None:
            p, t = p & valid, t & valid
        denom = p.sum() + t.sum()
        dices.append(torch.where(denom > 0, 2.0 * (p & t).sum() / denom.clamp_min(1), torch.nan))
    if not dices:
        return torch.full((), torch.nan, device=pred.device)
    return torch.nanmean(torch.stack(dices).float())


def pseudo_label_dice(pseudo_labels: torch.Tensor, truth_u: Optional[torch.Tensor], num_classes: int,
                      valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Dice of pseudo-labels against the hidden reference masks (``truth_u``: -1 where a sample has none, or
    None for a batch without any); ``valid`` restricts it further (e.g. to confident voxels). NaN when unknown."""
    if truth_u is None:
        return torch.full((), torch.nan, device=pseudo_labels.device)
    known = truth_u >= 0
    return mean_foreground_dice(pseudo_labels, truth_u, num_classes, known if valid is None else known & valid)


# Panel titles of progress_ssl.png: what each logged key measures, per epoch (mean over the epoch's iterations).
# Keys missing here are shown as they are logged.
SSL_LOG_TITLES: Dict[str, str] = {
    # every teacher method (Mean Teacher, CRLN, BoCLIS) and the dual-network methods
    "unsup_loss": "Unlabelled loss (weighted)",
    "unsup_weight": "Unlabelled loss weight",
    "teacher_confidence": "Mean pseudo-label confidence (max probability)",
    "reliable_fraction": "Share of unlabelled voxels used as reliable",
    "pseudo_label_dice": "Pseudo-label Dice vs hidden labels",
    # CRLN
    "dim_loss": "CRLN: DIM relationship-map loss (labelled)",
    "cps_loss": "CRLN: CPS contrastive loss (weighted)",
    "rect_loss": "CRLN: rectification loss (trains a)",
    "rect_a": "CRLN: rectification weight a",
    "rectification_active": "CRLN: share of iterations with rectification on",
    "reliable_fraction_rectified": "CRLN: share of reliable voxels after rectification",
    "pseudo_label_dice_rectified": "CRLN: rectified pseudo-label Dice vs hidden labels",
    # BoCLIS
    "con_loss": "BoCLIS: patch contrastive loss (weighted)",
    "con_weight": "BoCLIS: contrastive loss weight",
    "con_intra": "BoCLIS: contrast within images",
    "con_inter": "BoCLIS: contrast across images",
    "contrast_patches": "BoCLIS: patches encoded per iteration",
    "reliability_mean": "BoCLIS: mean pseudo-label reliability weight",
    "conservative_teacher_weight": "BoCLIS: aggregation weight of the conservative teacher",
    # CDR
    "sup_b_loss": "Network B: supervised loss",
    "review_loss": "CDR: review loss (disagreeing labelled voxels)",
    "cons_loss": "CDR: voxel consistency loss (weighted)",
    "rkd_loss": "CDR: regional KD loss (weighted)",
    "inter_loss": "CDR: inter-network InfoNCE (weighted)",
    "intra_loss": "CDR: intra-network InfoNCE (weighted)",
    "intra_kd_loss": "CDR: regional KD between the two passes (weighted)",
    "contrast_weight": "CDR: contrastive loss weight",
    "agreement": "Networks A and B: voxel agreement (unlabelled)",
    "a_led": "CDR: share of iterations network A leads",
    "region_disagreement": "CDR: mean region disagreement",
    "inter_nce": "CDR: inter-network InfoNCE (unweighted)",
    "intra_nce": "CDR: intra-network InfoNCE (unweighted)",
    "nce_negative_share": "InfoNCE: share of regions that are negatives (0 = inert)",
    # UGPL
    "cr_loss": "UGPL: cross-reliable loss (labelled)",
    "kl_loss": "UGPL: KL-weighted cross pseudo supervision",
    "cos_loss": "UGPL: cosine consistency loss",
    "proto_loss": "UGPL: prototype alignment loss (weighted)",
    "sup_a": "Network A: supervised loss",
    "sup_b": "Network B: supervised loss",
    "dice_loss_a": "Network A: labelled soft-Dice loss",
    "dice_loss_b": "Network B: labelled soft-Dice loss",
    "loser_is_b": "UGPL: share of iterations network B is the weaker",
    "tau_a": "UGPL: entropy threshold, network A",
    "tau_b": "UGPL: entropy threshold, network B",
    "kept_share": "UGPL: share of voxels the entropy filter keeps",
    "unsup_rescale": "UGPL: unlabelled loss rescale (1 / kept share)",
    "kl_weight_mean": "UGPL: mean KL weight exp(-KL)",
    "proto_weight": "UGPL: prototype loss weight",
    "pseudo_label_dice_kept": "UGPL: pseudo-label Dice on kept voxels",
    # offline self-training
    "pseudo_loss": "Self-training: pseudo-labelled loss",
    "pseudo_weight": "Self-training: mean pseudo-label voxel weight",
}
_PER_CLASS_TITLES = {"reliable_voxels": "UGPL: prototype module, reliable voxels of class {}",
                     "proto_candidates": "UGPL: prototype module, uncertain voxels of class {}"}


def ssl_panel_title(key: str) -> str:
    """A readable title for a logged key (``SSL_LOG_TITLES``; per-class keys ``<kind>_c<k>``), else the key."""
    if key in SSL_LOG_TITLES:
        return SSL_LOG_TITLES[key]
    kind, sep, cls = key.rpartition("_c")
    if sep and cls.isdigit() and kind in _PER_CLASS_TITLES:
        return _PER_CLASS_TITLES[kind].format(cls)
    return key


def plot_ssl_progress(logging: Dict[str, list], keys: Sequence[str], output_file: str) -> None:
    """One panel per semi-supervised key (titled by ``ssl_panel_title``), epochs on x; written next to nnU-Net's
    progress.png."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    keys = [k for k in keys if len(logging.get(k, [])) > 0]
    if not keys:
        return
    ncols = 2
    nrows = int(math.ceil(len(keys) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(12, 2.6 * nrows), squeeze=False)
    for ax, k in zip(axes.ravel(), keys):
        y = np.asarray(logging[k], dtype=float)
        ax.plot(np.arange(len(y)), y, marker="." if len(y) < 30 else None)
        # explicit sizes: nnU-Net's progress.png sets a large global seaborn font scale in the same process
        ax.set_title(ssl_panel_title(k), fontsize=11)
        ax.set_xlabel("epoch", fontsize=9)
        ax.tick_params(labelsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(output_file)
    plt.close(fig)


def nanmean_or_nan(values: Iterable[float]) -> float:
    arr = np.asarray(list(values), dtype=float)
    return float(np.nanmean(arr)) if np.any(~np.isnan(arr)) else float("nan")


def term_gradient_norms(losses: Dict[str, torch.Tensor], params: Sequence[torch.Tensor]) -> Dict[str, float]:
    """L2 norm of each loss term's gradient over ``params`` (one ``autograd.grad`` per term, the graph kept), to
    see which term moves a network: parameters a term does not reach count as 0."""
    params = [p for p in params if p.requires_grad]
    norms = {}
    for name, loss in losses.items():
        if not loss.requires_grad:
            norms[name] = 0.0
            continue
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        norms[name] = math.sqrt(sum(float((g.detach().float() ** 2).sum()) for g in grads if g is not None))
    return norms
