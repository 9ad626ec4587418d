"""Small trainable heads shared by the contrastive methods."""
import torch
from torch import nn
from torch.nn import functional as F


class ProjectionHead(nn.Module):
    """Per-voxel projection ``conv1x1 -> LeakyReLU -> conv1x1`` (2d or 3d), L2-normalised along channels."""

    def __init__(self, in_channels: int, out_channels: int = 64, hidden_channels: int = None, dim: int = 3):
        super().__init__()
        conv = nn.Conv3d if dim == 3 else nn.Conv2d
        hidden_channels = hidden_channels or in_channels
        self.net = nn.Sequential(conv(in_channels, hidden_channels, 1), nn.LeakyReLU(0.01, inplace=True),
                                 conv(hidden_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)
