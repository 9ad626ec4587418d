"""``CRLNNet``, the network ``nnUNetv2_predict`` loads: the planned U-Net, the Dynamic Interaction Module (DIM,
spec §2) and the rectifier ``a``. Its state-dict key names are what checkpoints store: keep them stable.
"""
import math
from typing import Dict, Optional, Sequence

import torch
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim, maybe_convert_scalar_to_list
from torch import nn
from torch.nn import functional as F

from nnunet_ssl.modules.features import DecoderFeatureTap, decoder_stage_channels
from nnunet_ssl.trainers.crln.losses import rectify_logits


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (the authors' DropPath)."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class PairwiseCrossAttention(nn.Module):
    """One DIM block (spec §2.3): prototypes (queries) attend over voxel tokens (keys/values), softmax over voxels.

    Returns the updated prototypes (B, C, M, d) and, if asked, the proximity matrices (B, C, M, N). The authors'
    LayerNorm over the N voxel positions (shape fixed to the patch) is replaced by a parameter-free normalisation
    over N, so any patch size works."""

    def __init__(self, dim: int, conv_op, drop_path_rate: float = 1 / 30, faithful_reshape: bool = False):
        super().__init__()
        self.dim = dim
        self.faithful_reshape = faithful_reshape
        self.drop_path_rate = drop_path_rate
        self.token_conv = conv_op(dim, dim, 1)
        self.token_norm = nn.LayerNorm(dim)
        self.query_norm = nn.LayerNorm(dim)
        self.kv_norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def _to_sets(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, M, ...) -> (B, M, C, ...): one set of C prototypes per m. The authors reshape (spec §8.4)."""
        b, c, m = x.shape[:3]
        return x.reshape(b, m, c, *x.shape[3:]) if self.faithful_reshape else x.transpose(1, 2)

    def _from_sets(self, x: torch.Tensor) -> torch.Tensor:
        b, m, c = x.shape[:3]
        return x.reshape(b, c, m, *x.shape[3:]) if self.faithful_reshape else x.transpose(1, 2)

    def forward(self, prototypes: torch.Tensor, features: torch.Tensor, return_proximity: bool = True):
        b = features.shape[0]
        tokens = self.token_norm(self.token_conv(features).flatten(2).transpose(1, 2))   # (B, N, d)
        k, v = self.kv(self.kv_norm(tokens)).chunk(2, dim=-1)
        q = self.q(self.query_norm(self._to_sets(prototypes.expand(b, *prototypes.shape[1:]))))  # (B, M, C, d)
        bm = q.shape[:3]
        # attention logits in fp32 (AMP-safe): (B, M*C, N)
        logits = torch.einsum("bqd,bnd->bqn", q.reshape(b, -1, self.dim).float(), k.float()) / math.sqrt(self.dim)
        attended = torch.einsum("bqn,bnd->bqd", torch.softmax(logits, dim=-1), v.float()).to(v.dtype)
        updated = self.proj(attended)
        updated = updated + drop_path(updated, self.drop_path_rate, self.training)   # as coded: no residual to P
        updated = updated + drop_path(self.mlp(self.mlp_norm(updated)), self.drop_path_rate, self.training)
        updated = self._from_sets(updated.reshape(*bm, self.dim))
        if not return_proximity:
            return updated, None
        prox = logits + drop_path(logits, self.drop_path_rate, self.training)
        prox = prox + drop_path(F.layer_norm(prox, prox.shape[-1:]), self.drop_path_rate, self.training)
        return updated, self._from_sets(prox.reshape(*bm, -1))


class HolisticMapHead(nn.Module):
    """Eq. (6): per class, the M proximity maps pass a spatial-aware separable conv (depthwise 3^k -> BN -> ReLU ->
    pointwise -> BN -> ReLU) and a 1x1 conv M -> 1 shared across classes (classes folded into the batch); the
    (B, C) map is upsampled to the output resolution by a transposed conv (kernel = stride) and a ReLU."""

    def __init__(self, num_classes: int, num_prototypes: int, dim: int, upsample: Sequence[int]):
        super().__init__()
        conv = nn.Conv3d if dim == 3 else nn.Conv2d
        norm = nn.BatchNorm3d if dim == 3 else nn.BatchNorm2d
        transp = nn.ConvTranspose3d if dim == 3 else nn.ConvTranspose2d
        m = num_prototypes
        self.spatial = nn.Sequential(conv(m, m, 3, padding=1, groups=m, bias=False), norm(m), nn.ReLU(inplace=True),
                                     conv(m, m, 1, bias=False), norm(m), nn.ReLU(inplace=True))
        self.shared = conv(m, 1, 1)
        self.upsample = transp(num_classes, num_classes, tuple(upsample), tuple(upsample))
        # with PyTorch's random bias the final ReLU can be 0 everywhere from the start (seen on small patches):
        # then M(x), the DIM and `a` never get a gradient. A zero bias keeps about half the outputs alive.
        nn.init.zeros_(self.upsample.bias)

    def forward(self, proximity: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
        b, c, m = proximity.shape[:3]
        maps = proximity.reshape(b * c, m, *spatial_shape).to(self.shared.weight.dtype)
        maps = self.shared(self.spatial(maps)).reshape(b, c, *spatial_shape)
        return F.relu(self.upsample(maps))


class DynamicInteractionModule(nn.Module):
    """Prototypes P (1, C, M, F) + block I (F channels) + block II (next finer stage) + holistic map head."""

    def __init__(self, num_classes: int, num_prototypes: int, channels_block1: int, channels_block2: int, dim: int,
                 upsample: Sequence[int], faithful_reshape: bool = False):
        super().__init__()
        conv = nn.Conv3d if dim == 3 else nn.Conv2d
        self.prototypes = nn.Parameter(torch.zeros(1, num_classes, num_prototypes, channels_block1))  # as coded
        self.block1 = PairwiseCrossAttention(channels_block1, conv, faithful_reshape=faithful_reshape)
        self.query_proj = nn.Linear(channels_block1, channels_block2)  # the authors' 1x1 conv over features
        self.block2 = PairwiseCrossAttention(channels_block2, conv, faithful_reshape=faithful_reshape)
        self.head = HolisticMapHead(num_classes, num_prototypes, dim, upsample)

    def prototype_queries(self) -> torch.Tensor:
        """The prototypes as block I's attention sees them, ``q(LN(P))`` (1, C, M, F).

        The raw parameter P is used only through a LayerNorm, which is blind to a constant added over channels: its
        channel mean never receives a gradient and stays at its initial 0, so the authors' P̃ (channel means of P)
        is constant. The query projection is trained through M(x) and its channel means are not."""
        return self.block1.q(self.block1.query_norm(self.prototypes))

    def forward(self, features_block1: torch.Tensor, features_block2: torch.Tensor, return_proximity=False):
        # block I only refines the prototypes: its map is discarded by the authors, so it is not computed
        prototypes, _ = self.block1(self.prototypes, features_block1, return_proximity=False)
        prototypes, proximity = self.block2(self.query_proj(prototypes), features_block2)
        relation_map = self.head(proximity, features_block2.shape[2:])
        return (relation_map, proximity) if return_proximity else relation_map


class CPSProjectionHead(nn.Module):
    """CPS's projection head as spec §3.1 (the authors' representation head on the last decoder features):
    conv 3^k (C -> M, no bias) -> BatchNorm -> ReLU -> conv 1^k (M -> M).

    The embeddings are not L2-normalised here: the CPS InfoNCE compares cosines, and the class means r̄_c that
    become its positives average the raw embeddings, as in the authors' code."""

    def __init__(self, in_channels: int, out_channels: int, dim: int):
        super().__init__()
        conv = nn.Conv3d if dim == 3 else nn.Conv2d
        norm = nn.BatchNorm3d if dim == 3 else nn.BatchNorm2d
        self.net = nn.Sequential(conv(in_channels, out_channels, 3, padding=1, bias=False), norm(out_channels),
                                 nn.ReLU(inplace=True), conv(out_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Rectifier(nn.Module):
    """The scalar ``a`` of eq. (8), initialised to 0, trained only by eq. (16) with its own optimizer."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(()))

    def forward(self, logits: torch.Tensor, relation_map: torch.Tensor) -> torch.Tensor:
        return rectify_logits(logits, relation_map, self.a)


def negative_stage(stage: int, num_stages: int) -> int:
    """Decoder stage index counted from the end (-1 = full resolution)."""
    return stage - num_stages if stage >= 0 else stage


class CRLNNet(nn.Module):
    """The planned U-Net + DIM + rectifier. ``decoder``/``encoder`` expose the U-Net's, so nnU-Net's
    ``set_deep_supervision_enabled`` and the feature helpers work unchanged. The decoder features come from a
    ``DecoderFeatureTap`` (forward hooks), so the U-Net runs its own forward.

    * ``forward(x)`` with deep supervision on: the U-Net's list (training/validation loss);
      with it off: the rectified logits ``z + (1 - a)·M(x)`` (prediction, final validation).
    * ``forward(x, return_extras=True, dim_batch=n)``: (U-Net output, M(x) of the first n samples or None,
      {decoder stage: features}); the DIM runs only on the first ``dim_batch`` samples (default all)."""

    def __init__(self, unet: nn.Module, num_classes: int, num_prototypes: int = 16, block1_stage: int = -3,
                 block2_stage: int = -2, use_dim: bool = True, faithful_reshape: bool = False):
        super().__init__()
        self.unet = unet
        n_dec = len(unet.decoder.stages)
        dim = convert_conv_op_to_dim(unet.encoder.conv_op)
        strides = [maybe_convert_scalar_to_list(unet.encoder.conv_op, s) for s in unet.encoder.strides]
        # clamp to the stages this network has (block II finer than or equal to block I), so shallow networks
        # (few decoder stages) still get a DIM
        self.block2_stage = max(-n_dec, min(-1, negative_stage(block2_stage, n_dec)))
        self.block1_stage = max(-n_dec, min(self.block2_stage, negative_stage(block1_stage, n_dec)))
        self.dim = None
        if use_dim:
            # decoder stage -j is at encoder stage j-1's resolution: upsample by strides[1..j-1]
            upsample = [1] * dim
            for e in range(1, -self.block2_stage):
                upsample = [u * int(s) for u, s in zip(upsample, strides[e])]
            self.dim = DynamicInteractionModule(
                num_classes, num_prototypes, decoder_stage_channels(unet, self.block1_stage),
                decoder_stage_channels(unet, self.block2_stage), dim, upsample, faithful_reshape)
        self.rectifier = Rectifier()
        # `a` gets no gradient from the main loss (only from eq. 16, synchronised by the trainer): DDP must not wait
        self._ddp_params_and_buffers_to_ignore = ["rectifier.a"]
        self.attach_feature_tap()

    def attach_feature_tap(self):
        """Tap the output of every decoder stage. ``EMATeacher`` drops the hooks a deep copy inherits and calls this
        on its copy, so that a teacher taps its own decoder."""
        n_dec = len(self.unet.decoder.stages)
        self.feature_tap = DecoderFeatureTap(self.unet, range(-n_dec, 0))

    @property
    def decoder(self):
        return self.unet.decoder

    @property
    def encoder(self):
        return self.unet.encoder

    def relation_map(self, features: Dict[int, torch.Tensor], n: Optional[int] = None) -> Optional[torch.Tensor]:
        if self.dim is None or n == 0:
            return None
        return self.dim(features[self.block1_stage][:n], features[self.block2_stage][:n])

    def forward(self, x: torch.Tensor, return_extras: bool = False, dim_batch: Optional[int] = None):
        seg = self.unet(x)
        features = self.feature_tap.pop()  # {decoder stage (-n..-1): its output}
        if return_extras:
            return seg, self.relation_map(features, dim_batch), features
        if self.decoder.deep_supervision:
            return seg
        relation_map = self.relation_map(features)
        return seg if relation_map is None else self.rectifier(seg, relation_map.to(seg.dtype))
