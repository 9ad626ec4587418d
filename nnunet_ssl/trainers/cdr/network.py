"""The export of the single-network ablation (the full method exports ``DualNetwork``) and the training-time
dropout of CDR's networks."""
from torch import nn
from torch.nn import functional as F

from nnunet_ssl.modules.dual import DualNetwork
from nnunet_ssl.modules.ema import unwrap_network


def add_training_dropout(network: nn.Module, p: float):
    """Channel dropout (``dropout2d``/``dropout3d``) with rate ``p`` on the output of the last decoder stage, in
    training mode only, as MCF's VNet drops its last decoder features before the output conv. A forward hook, so
    nnU-Net's network, its state dict and the exported model stay unchanged (no dropout at prediction). Returns the
    hook handle, or None for ``p == 0``."""
    if p <= 0:
        return None
    if p >= 1:
        raise ValueError(f"dropout_p must be in [0, 1), got {p!r}")
    stage = unwrap_network(network).decoder.stages[-1]

    def hook(module, inputs, output):
        if not module.training:
            return None
        dropout = F.dropout3d if output.dim() == 5 else F.dropout2d
        return dropout(output, p, training=True)

    return stage.register_forward_hook(hook)


class FirstNetworkOnly(DualNetwork):
    """Export of the single-network ablation: same state-dict keys as ``DualNetwork``, predicts with net A."""

    def forward(self, x):
        return self.net_a(x)
