"""Per-epoch semi-supervised diagnostics: pseudo-label quality and a progress plot beside nnU-Net's."""
import math
from typing import Dict, Iterable, Sequence

import numpy as np
import torch


def mean_foreground_dice(pred: torch.Tensor, truth: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Hard Dice averaged over foreground classes present in ``pred`` or ``truth``, pooled over the batch.

    pred, truth: integer label maps of equal shape. Returns NaN (as a tensor) when no foreground class occurs,
    so epoch means can skip it with nanmean."""
    dices = []
    for c in range(1, num_classes):
        p, t = pred == c, truth == c
        denom = p.sum() + t.sum()
        dices.append(torch.where(denom > 0, 2.0 * (p & t).sum() / denom.clamp_min(1), torch.nan))
    if not dices:
        return torch.tensor(torch.nan, device=pred.device)
    return torch.nanmean(torch.stack(dices).float())


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
