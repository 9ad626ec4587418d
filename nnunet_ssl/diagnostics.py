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


def plot_ssl_progress(logging: Dict[str, list], keys: Sequence[str], output_file: str) -> None:
    """One panel per semi-supervised key, epochs on x; written next to nnU-Net's progress.png."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    keys = [k for k in keys if len(logging.get(k, [])) > 0]
    if not keys:
        return
    ncols = 2
    nrows = int(math.ceil(len(keys) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(12, 3 * nrows), squeeze=False)
    for ax, k in zip(axes.ravel(), keys):
        y = np.asarray(logging[k], dtype=float)
        ax.plot(np.arange(len(y)), y, marker="." if len(y) < 30 else None)
        ax.set_title(k)
        ax.set_xlabel("epoch")
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
