"""Two segmentation networks deployed as one: what dual-student methods (CDR, UGPL) export for prediction."""
import math

import torch
from torch import nn
from torch.nn import functional as F


def average_log_probs(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """``log((softmax(a) + softmax(b)) / 2)`` along channels, computed stably.

    The result is a valid logit: softmax of it is the averaged probability, argmax is the ensemble's decision, so
    nnU-Net's predictor and validation consume it unchanged."""
    stacked = torch.stack((F.log_softmax(logits_a.float(), 1), F.log_softmax(logits_b.float(), 1)))
    return torch.logsumexp(stacked, dim=0) - math.log(2.0)


class DualNetwork(nn.Module):
    """``net_a`` and ``net_b`` side by side; ``forward`` averages their probabilities (per deep-supervision level).

    Training code calls ``net_a``/``net_b`` directly; only prediction and validation use ``forward``."""

    def __init__(self, net_a: nn.Module, net_b: nn.Module):
        super().__init__()
        self.net_a = net_a
        self.net_b = net_b

    def set_deep_supervision(self, enabled: bool) -> None:
        for net in (self.net_a, self.net_b):
            net.decoder.deep_supervision = enabled

    def forward(self, x: torch.Tensor):
        out_a, out_b = self.net_a(x), self.net_b(x)
        if isinstance(out_a, (list, tuple)):
            return [average_log_probs(a, b) for a, b in zip(out_a, out_b)]
        return average_log_probs(out_a, out_b)
