"""The export of the single-network ablation (the full method exports ``DualNetwork``)."""
from nnunet_ssl.modules.dual import DualNetwork


class FirstNetworkOnly(DualNetwork):
    """Export of the single-network ablation: same state-dict keys as ``DualNetwork``, predicts with net A."""

    def forward(self, x):
        return self.net_a(x)
