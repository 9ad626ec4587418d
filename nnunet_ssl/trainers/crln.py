"""``nnUNetTrainerCRLN``: Cooperative Rectification Learning Network (seed 001; spec ``specs/crln.md``).

A weak-to-strong Mean Teacher plus
* a multi-prototype **Dynamic Interaction Module** (DIM): learnable class prototypes ``P`` (1, C, M, F) attend to
  two neighbouring decoder stages (block I, then block II one stage finer); block II's proximity matrices become a
  holistic relationship map ``M(x)`` at the output resolution, trained with nnU-Net's CE + Dice on labelled data
  (the "learning stage");
* **rectification** of the teacher's pseudo-label logits from iteration ``T_rect`` on: ``z + (1 - a)·M(x)``, with a
  scalar ``a`` trained only by its own loss (eq. 16) and optimizer after the main step;
* **CPS**, a ReCo-style InfoNCE on a projection of a fine decoder stage: anchors from uncertain voxels, negatives
  from other classes, positives mixing the class-mean embedding with the teacher's prototypes (eq. 13; P̃ from
  the trained prototype queries, since the raw parameter's channel means never change, see ``prototype_queries``).

The deployed network (``build_network_architecture``) is ``CRLNNet``: the planned U-Net + DIM + ``a``; with deep
supervision off it returns the rectified logits, so stock ``nnUNetv2_predict`` with the exported teacher rectifies.
Defaults follow the authors' code where it differs from the paper (spec §8); the alternatives are attributes.
"""
import dataclasses
import math
import random
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim, \
    maybe_convert_scalar_to_list
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn
from torch.nn import functional as F

from nnunet_ssl.augment.strong import StrongAugmentation
from nnunet_ssl.diagnostics import pseudo_label_dice
from nnunet_ssl.losses.contrastive import info_nce
from nnunet_ssl.losses.prototypes import class_prototypes, draw_members
from nnunet_ssl.losses.pseudo_label import confidence_pseudo_labels, weighted_cross_entropy
from nnunet_ssl.modules.features import decoder_stage_channels
from nnunet_ssl.modules.heads import ProjectionHead
from nnunet_ssl.trainers.base import first_output
from nnunet_ssl.trainers.mean_teacher import nnUNetTrainerMeanTeacher
from nnunet_ssl.trainers.tiny import TINY_SCHEDULE, UnmirroredValidation


# ================================================================================================ formulas
def rectify_logits(logits: torch.Tensor, relation_map: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Eq. (8) as coded: ``z + (1 - a)·M(x)`` on logits; ``a`` is unconstrained (no sigmoid, no clamp)."""
    return logits + (1.0 - a) * relation_map


def rectification_loss(logits: torch.Tensor, relation_map: torch.Tensor, a: torch.Tensor, target: torch.Tensor,
                       seg_loss) -> torch.Tensor:
    """Eq. (16): ``seg_loss(z + (1 - a)·M(x), y)`` on *detached* labelled outputs, so only ``a`` gets a gradient."""
    return seg_loss(rectify_logits(logits.detach().float(), relation_map.detach().float(), a), target)


def image_weighted_nll(logits: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor, threshold: float,
                       ignore_index: int = -1) -> torch.Tensor:
    """Unsupervised loss of the authors' code (spec §1.5): per-voxel CE times the image's reliable fraction
    ``w_b = #(conf >= τ) / #valid``, averaged over the voxels whose weighted loss is > 0 (no hard mask)."""
    ce = F.cross_entropy(logits.float(), labels.long().clamp_min(0), reduction="none")
    valid = labels != ignore_index
    dims = tuple(range(1, labels.ndim))
    reliable = ((confidence >= threshold) & valid).sum(dims).float()
    weight = reliable / valid.sum(dims).float().clamp_min(1.0)
    weighted = ce * valid.float() * weight.view((-1,) + (1,) * (labels.ndim - 1))
    counted = (weighted > 0).sum()
    return weighted.sum() / counted.clamp_min(1)


def prototype_descriptors(prototypes: torch.Tensor) -> torch.Tensor:
    """``P̃_c`` of eq. (13) as coded: each prototype's mean over its feature channels, (1, C, M, F) -> (C, M)."""
    return prototypes[0].mean(dim=-1)


def cps_positive(class_mean: torch.Tensor, prototype_descriptor: Optional[torch.Tensor], xi: float,
                 mode: str = "combined") -> torch.Tensor:
    """Unassertive positive (eq. 13): ``(r̄_c + ξ·P̃_c) / (1 + ξ)``; 'mean' -> r̄_c, 'prototype' -> P̃_c.
    Without prototypes (before T_rect, or no DIM) every mode falls back to the class mean."""
    if prototype_descriptor is None or mode == "mean":
        return class_mean
    if mode == "prototype":
        return prototype_descriptor.to(class_mean)
    if mode != "combined":
        raise ValueError(f"cps positive mode must be 'combined', 'mean' or 'prototype', got {mode!r}")
    return (class_mean + xi * prototype_descriptor.to(class_mean)) / (1.0 + xi)


def sample_cps_indices(labels: torch.Tensor, valid: torch.Tensor, uncertain: torch.Tensor,
                       class_means: torch.Tensor, num_anchors: int, num_negatives: int,
                       class_temperature: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ReCo sampling on flattened voxels (spec §3.3-3.4). labels/valid/uncertain: (N,); class_means (C, D).

    For every class c: ``num_anchors`` anchor indices drawn with replacement from its uncertain valid voxels and
    (num_anchors, num_negatives) negative indices drawn with replacement from valid voxels of the other classes;
    with > 2 classes present the class of each negative is drawn with ``softmax_j(cos(r̄_c, r̄_j) / 0.5)`` over the
    present classes j ≠ c. Returns (anchors (C, A), negatives (C, A, M), usable (C,) bool): a class is usable when
    it has uncertain valid voxels and at least two classes have valid voxels. Everything stays on the device (fixed
    shapes; rows of unusable classes hold placeholder indices)."""
    num_classes = class_means.shape[0]
    classes = torch.arange(num_classes, device=labels.device)
    members = valid[None] & (labels[None] == classes[:, None])                           # (C, N)
    anchors, has_anchor = draw_members(members & uncertain[None], num_anchors)            # (C, A)
    n_draws = num_anchors * num_negatives
    pool_draws, present = draw_members(members, n_draws)                                  # (C, A·M) per class
    usable = has_anchor & (present.sum() >= 2)
    negatives = []
    for c in range(num_classes):
        # rows of the other classes by slicing (a list index would be copied from the host first)
        def others(t):
            return torch.cat((t[:c], t[c + 1:]))

        if num_classes == 2:
            which = torch.zeros((1, n_draws), dtype=torch.long, device=labels.device)
        else:
            sim = F.cosine_similarity(class_means[c][None].float(), others(class_means).float(), dim=1)
            logits = (sim / class_temperature).masked_fill(~others(present), float("-inf"))
            logits = torch.where(others(present).any(), logits, torch.zeros_like(logits))  # unusable: any valid row
            which = torch.multinomial(torch.softmax(logits, dim=0), n_draws, replacement=True)[None]
        negatives.append(others(pool_draws).gather(0, which)[0].view(num_anchors, num_negatives))
    return anchors, torch.stack(negatives), usable


def cps_loss(embeddings: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, uncertain: torch.Tensor,
             num_classes: int, prototype_desc: Optional[torch.Tensor], xi: float, positive_mode: str = "combined",
             num_anchors: int = 256, num_negatives: int = 512, temperature: float = 0.5) -> torch.Tensor:
    """Eq. (14): InfoNCE per class over sampled anchors, mean over the classes that have anchors (0 with a graph
    when none has, or fewer than two classes are present).

    embeddings (N, D) flattened voxels (only anchors carry gradients; positives and negatives are constants, as in
    ReCo); prototype_desc (C, D) or None (positive = class mean). No host-device synchronisation."""
    with torch.no_grad():
        # masked means as one product (zero for absent classes): no boolean selection, no host sync
        emb = embeddings.detach().float()
        class_means, _ = class_prototypes(emb.t()[None], torch.where(valid, labels, -1)[None], num_classes)
    anchor_idx, negative_idx, usable = sample_cps_indices(labels, valid, uncertain, class_means, num_anchors,
                                                          num_negatives, temperature)
    total = embeddings.sum() * 0.0
    for c in range(num_classes):
        pos = cps_positive(class_means[c], None if prototype_desc is None else prototype_desc[c], xi, positive_mode)
        anchors = embeddings[anchor_idx[c]]
        term = info_nce(anchors, pos.expand_as(anchors), emb[negative_idx[c]], temperature)
        total = total + torch.where(usable[c], term, torch.zeros_like(term))
    return total / usable.sum().clamp_min(1)


# ================================================================================================ network
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
    ``set_deep_supervision_enabled`` and the feature helpers work unchanged.

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

    @property
    def decoder(self):
        return self.unet.decoder

    @property
    def encoder(self):
        return self.unet.encoder

    def _unet_with_features(self, x: torch.Tensor):
        """The U-Net's forward, also returning every decoder stage's output (same loop as ``UNetDecoder``)."""
        skips = self.unet.encoder(x)
        decoder = self.unet.decoder
        low_res, seg_outputs, features = skips[-1], [], {}
        n = len(decoder.stages)
        for s in range(n):
            low_res = decoder.stages[s](torch.cat((decoder.transpconvs[s](low_res), skips[-(s + 2)]), 1))
            features[s - n] = low_res
            if decoder.deep_supervision or s == n - 1:
                seg_outputs.append(decoder.seg_layers[s](low_res))
        seg_outputs = seg_outputs[::-1]
        return (seg_outputs if decoder.deep_supervision else seg_outputs[0]), features

    def relation_map(self, features: Dict[int, torch.Tensor], n: Optional[int] = None) -> Optional[torch.Tensor]:
        if self.dim is None or n == 0:
            return None
        return self.dim(features[self.block1_stage][:n], features[self.block2_stage][:n])

    def forward(self, x: torch.Tensor, return_extras: bool = False, dim_batch: Optional[int] = None):
        if not return_extras and self.decoder.deep_supervision:
            return self.unet(x)
        seg, features = self._unet_with_features(x)
        if return_extras:
            return seg, self.relation_map(features, dim_batch), features
        relation_map = self.relation_map(features)
        return seg if relation_map is None else self.rectifier(seg, relation_map.to(seg.dtype))


# ================================================================================================ trainer
class nnUNetTrainerCRLN(nnUNetTrainerMeanTeacher):
    # --- DIM (spec §2) -----------------------------------------------------------------------------------------
    use_dim: bool = True                  # False: no DIM, no rectification (ablation)
    num_prototypes: int = 16              # M per class (LA setting; Fig. 10)
    dim_block1_stage: int = -3            # decoder stage of block I (decoder.stages, low -> high resolution)
    dim_block2_stage: int = -2            # block II: the next finer stage; its map is upsampled to the output
    faithful_reshape: bool = False        # True: the authors' reshape (C,M)->(M,C) instead of a transpose (§8.4)
    dim_loss_weight: float = 0.5          # 0.5·(CE+Dice)(M(x_l), y)
    # --- rectification (§2.6-2.7) ------------------------------------------------------------------------------
    rectification_start_fraction: float = 0.02        # T_rect as a fraction of all iterations (CRLN: 800 / 40k)
    rectification_start_iteration: Optional[int] = None  # absolute T_rect (e.g. 800), overrides the fraction
    rectifier_lr: float = 2.5e-3          # own SGD for `a` (CRLN's settings)
    rectifier_momentum: float = 0.9
    rectifier_weight_decay: float = 5e-4
    rectification_loss_weight: float = 0.5
    rectifier_recompute: bool = True      # eq. 16 on a fresh eval-mode forward; False reuses the step's outputs
    # --- supervised / unsupervised (§1.5-1.7) ------------------------------------------------------------------
    sup_weight: float = 0.5
    unsup_weight = 0.5
    unsup_rampup = 0.0                    # CRLN: constant weights
    confidence_threshold = 0.97           # τ (strong threshold)
    unsup_weighting: str = "image"        # 'image': authors' per-image reliable fraction; 'voxel': paper's mask
    # §1.4: in-plane rescale U(0.5, 1.5) (always), full-depth box CutMix with area 1 - λ, λ ~ Beta(4, 4),
    # brightness x U(0.75, 1.25) (p 0.8), noise σ 0.1 clipped ±0.2 (p 0.5), rot90 + flip in-plane (p 0.5)
    strong_augmentation = StrongAugmentation(p_rescale=1.0, rescale_range=(0.5, 1.5), p_rot_flip=0.5,
                                             p_cutmix=1.0, cutmix_area_beta=(4.0, 4.0),
                                             cutmix_full_through_plane=True, p_brightness=0.8,
                                             brightness_range=(0.75, 1.25), p_contrast=0.0, p_noise=0.5,
                                             noise_std=0.1, noise_clip=0.2)
    # --- CPS (§3) ----------------------------------------------------------------------------------------------
    use_cps: bool = True
    cps_weight: float = 0.5
    cps_stage: int = -1                   # decoder stage the projection head reads (-1: full resolution)
    cps_weak_threshold: float = 0.7       # γ: unlabelled voxels below it are invalid
    cps_uncertain_threshold: float = 0.97  # anchors: student p_c below it
    cps_temperature: float = 0.5
    cps_num_anchors: int = 256
    cps_num_negatives: int = 512
    cps_positive: str = "combined"        # 'combined' | 'mean' (MR) | 'prototype' (LP)
    # P̃ from 'queries': the teacher's trained prototype queries q(LN(P)); 'parameter': the raw parameter P as
    # coded by the authors, whose channel means stay 0 (P̃ = 0: the positive then equals the class mean)
    cps_prototype_source: str = "queries"
    cps_xi: float = 0.6                   # fixed ξ (code)
    cps_xi_random: bool = False           # paper: ξ ~ U(0, cps_xi_max) per step
    cps_xi_max: float = 0.6               # λ
    # --- optimizer ---------------------------------------------------------------------------------------------
    crln_optim: bool = False              # True: SGD 2.5e-3, momentum 0.9, nesterov, wd 5e-4 (CRLN)

    ssl_log_keys = nnUNetTrainerMeanTeacher.ssl_log_keys + (
        "dim_loss", "cps_loss", "rect_loss", "rect_a", "rectification_active",
        "reliable_fraction_rectified", "pseudo_label_dice_rectified")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.unsup_weighting not in ("image", "voxel"):
            raise ValueError(f"{type(self).__name__}.unsup_weighting must be 'image' or 'voxel', "
                             f"got {self.unsup_weighting!r}")
        if self.cps_prototype_source not in ("queries", "parameter"):
            raise ValueError(f"{type(self).__name__}.cps_prototype_source must be 'queries' or 'parameter', "
                             f"got {self.cps_prototype_source!r}")
        if self.cps_positive not in ("combined", "mean", "prototype"):
            raise ValueError(f"{type(self).__name__}.cps_positive must be 'combined', 'mean' or 'prototype', "
                             f"got {self.cps_positive!r}")
        if self.crln_optim:
            self.initial_lr, self.weight_decay = 2.5e-3, 5e-4
        self._last_rect = (torch.tensor(float("nan")), torch.tensor(float("nan")))
        self._labelled_outputs = None

    # ------------------------------------------------------------------------------------------- architecture
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        unet = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_output_channels, enable_deep_supervision)
        return CRLNNet(unet, num_output_channels, cls.num_prototypes, cls.dim_block1_stage, cls.dim_block2_stage,
                       cls.use_dim, cls.faithful_reshape)

    def build_extra_modules(self) -> Dict[str, nn.Module]:
        if not self.use_cps:
            return {}
        # embedding dim = M so that the prototype descriptors P̃_c (M-vectors) can be mixed into positives
        channels = decoder_stage_channels(self.network, self.cps_stage)
        dim = len(self.configuration_manager.patch_size)
        return {"cps_head": ProjectionHead(channels, self.num_prototypes, self.num_prototypes, dim)}

    def configure_optimizers(self):
        rectifier = {id(p) for p in self.student.rectifier.parameters()}
        params = [p for p in self.network.parameters() if id(p) not in rectifier]
        momentum = 0.9 if self.crln_optim else 0.99
        optimizer = torch.optim.SGD(params, self.initial_lr, weight_decay=self.weight_decay, momentum=momentum,
                                    nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def configure_extra_optimizers(self):
        if not self.use_dim:
            return {}
        opt = torch.optim.SGD(self.student.rectifier.parameters(), self.rectifier_lr,
                              momentum=self.rectifier_momentum, nesterov=True,
                              weight_decay=self.rectifier_weight_decay)
        return {"rectifier": (opt, PolyLRScheduler(opt, self.rectifier_lr, self.num_epochs))}

    @property
    def seg_loss(self):
        """nnU-Net's CE + Dice without deep supervision (the DIM map and eq. 16 are single-resolution)."""
        return getattr(self.loss, "loss", self.loss)

    # ------------------------------------------------------------------------------------------------ schedule
    def rectification_start(self) -> int:
        if self.rectification_start_iteration is not None:
            return int(self.rectification_start_iteration)
        return int(round(self.rectification_start_fraction * self.num_epochs * self.num_iterations_per_epoch))

    def rectification_active(self) -> bool:
        return self.use_dim and self.ssl_step >= self.rectification_start()

    def current_xi(self) -> float:
        return random.uniform(0.0, self.cps_xi_max) if self.cps_xi_random else self.cps_xi

    def validation_forward(self, data: torch.Tensor, network: Optional[nn.Module] = None):
        """The exported teacher as nnUNetv2_predict runs it: full-resolution logits rectified by the DIM's map
        (the coarser deep-supervision outputs, used only by the validation loss, stay as they are)."""
        if self.export_weights != "teacher":
            return super().validation_forward(data, network)
        seg, relation_map, _ = self.teacher_forward(data, return_extras=True)
        if relation_map is None:
            return seg
        full = first_output(seg)
        rectified = self.teacher.module.rectifier(full, relation_map.to(full.dtype))
        return [rectified] + list(seg[1:]) if isinstance(seg, (list, tuple)) else rectified

    # ------------------------------------------------------------------------------------------------- losses
    def make_pseudo_labels(self, data_u):
        """Teacher on the weak view: raw and rectified (labels, confidence, reliable), and the teacher net."""
        teacher = self.teacher.module
        with torch.no_grad():
            seg, relation_map, _ = self.teacher_forward(data_u, return_extras=True)
            logits = first_output(seg).float()
            raw = confidence_pseudo_labels(logits, self.confidence_threshold)
            rectified = None
            if relation_map is not None:
                rectified = confidence_pseudo_labels(teacher.rectifier(logits, relation_map.float()),
                                                     self.confidence_threshold)
        return raw, rectified

    def _pseudo_label_dice(self, labels, truth_u):
        return pseudo_label_dice(labels, truth_u, self.label_manager.num_segmentation_heads)

    def compute_losses(self, data_l, target_l, data_u, truth_u):
        nan = torch.full((), float("nan"), device=data_u.device)
        raw, rectified = self.make_pseudo_labels(data_u)
        active = self.rectification_active() and rectified is not None
        labels_u, conf_u, _ = rectified if active else raw
        diagnostics = {
            "teacher_confidence": conf_u.mean(),
            "reliable_fraction": raw[2].float().mean(),
            "reliable_fraction_rectified": rectified[2].float().mean() if rectified is not None else nan,
            "pseudo_label_dice": self._pseudo_label_dice(raw[0], truth_u),
            "pseudo_label_dice_rectified": self._pseudo_label_dice(rectified[0], truth_u)
            if rectified is not None else nan,
            "rectification_active": torch.tensor(float(active)),
        }
        if self.use_strong_view:
            strong_u, mix = self.strong_view(data_u)
            labels_u, conf_u = mix.apply_to_targets(labels_u, conf_u)
        else:
            strong_u = data_u
        # one student forward over both streams (InstanceNorm is per sample); the DIM sees labelled samples only
        n_l = data_l.shape[0]
        seg, relation_map_l, features = self.network(torch.cat((data_l, strong_u)), return_extras=True,
                                                     dim_batch=n_l)
        out_l = [o[:n_l] for o in seg] if isinstance(seg, (list, tuple)) else seg[:n_l]
        logits = first_output(seg)
        losses = {"sup": self.sup_weight * self.loss(out_l, target_l)}
        if relation_map_l is not None:
            losses["dim"] = self.dim_loss_weight * self.seg_loss(relation_map_l, target_l[0])
            if not self.rectifier_recompute:
                self._labelled_outputs = (first_output(out_l).detach(), relation_map_l.detach())
        if self.unsup_weighting == "image":
            unsup = image_weighted_nll(logits[n_l:], labels_u, conf_u, self.confidence_threshold)
        else:
            unsup = weighted_cross_entropy(logits[n_l:], labels_u, conf_u >= self.confidence_threshold)
        weight = self.current_unsup_weight()
        diagnostics["unsup_weight"] = torch.tensor(weight)
        losses["unsup"] = weight * unsup
        if self.use_cps:
            stage = negative_stage(self.cps_stage, len(self.student.decoder.stages))
            losses["cps"] = self.cps_weight * self.compute_cps(features[stage], logits.detach(),
                                                               target_l[0], labels_u, conf_u, active)
        return losses, diagnostics

    def compute_cps(self, features, logits, target_l, labels_u, conf_u, rectification_active):
        """CPS (eqs. 9-14) on the projection of ``features`` (labelled samples first, then strong unlabelled)."""
        emb = self.extra_modules["cps_head"](features)
        size = emb.shape[2:]
        probs = torch.softmax(logits.float(), 1)
        if tuple(probs.shape[2:]) != tuple(size):  # coarser stage: labels and probabilities at its resolution
            probs = F.interpolate(probs, size=size, mode="nearest")
            target_l = F.interpolate(target_l.float(), size=size, mode="nearest")
            labels_u = F.interpolate(labels_u[:, None].float(), size=size, mode="nearest")[:, 0]
            conf_u = F.interpolate(conf_u[:, None].float(), size=size, mode="nearest")[:, 0]
        labels_l = target_l[:, 0].long()
        valid_l = torch.ones_like(labels_l, dtype=torch.bool)
        if self.label_manager.ignore_label is not None:
            valid_l = labels_l != self.label_manager.ignore_label
        labels = torch.cat((labels_l, labels_u.long())).clamp_min(0)
        valid = torch.cat((valid_l, (conf_u >= self.cps_weak_threshold) & (labels_u >= 0)))
        num_classes = probs.shape[1]
        p_label = probs.gather(1, labels.clamp_max(num_classes - 1)[:, None])[:, 0]
        uncertain = valid & (p_label < self.cps_uncertain_threshold)
        desc = None
        if rectification_active and self.use_dim:
            dim_module = self.teacher.module.dim
            with torch.no_grad():
                desc = prototype_descriptors(dim_module.prototype_queries() if self.cps_prototype_source == "queries"
                                             else dim_module.prototypes)
        flat = emb.flatten(2).transpose(1, 2).reshape(-1, emb.shape[1])
        return cps_loss(flat, labels.flatten(), valid.flatten(), uncertain.flatten(), num_classes, desc,
                        self.current_xi(), self.cps_positive, self.cps_num_anchors, self.cps_num_negatives,
                        self.cps_temperature)

    # --------------------------------------------------------------------------------------- rectifier step
    def after_optimizer_step(self, data_l, target_l, data_u):
        super().after_optimizer_step(data_l, target_l, data_u)  # EMA of every parameter (incl. DIM, prototypes)
        if not self.use_dim:
            return
        self._last_rect = (self.rectifier_step(data_l, target_l[0]), self.student.rectifier.a.detach().clone())
        # the deployed teacher rectifies with the trained `a`, not an average of it
        with torch.no_grad():
            self.teacher.module.rectifier.a.copy_(self.student.rectifier.a)

    def rectifier_step(self, data_l, target) -> torch.Tensor:
        """Eq. (16): one SGD step of ``a`` on ``(CE + Dice)(z_l + (1 - a)·M(x_l), y)``, outputs detached."""
        student = self.student
        if self.rectifier_recompute or self._labelled_outputs is None:
            was_training = student.training
            student.eval()
            try:
                with torch.no_grad(), self.autocast():
                    seg, relation_map, _ = student(data_l, return_extras=True)
            finally:
                student.train(was_training)
            logits = first_output(seg)
        else:
            logits, relation_map = self._labelled_outputs
        self._labelled_outputs = None
        optimizer = self.extra_optimizers["rectifier"]
        optimizer.zero_grad(set_to_none=True)
        loss = self.rectification_loss_weight * rectification_loss(logits, relation_map, student.rectifier.a,
                                                                   target, self.seg_loss)
        loss.backward()
        if self.is_ddp:  # same `a` on every rank
            dist.all_reduce(student.rectifier.a.grad)
            student.rectifier.a.grad /= dist.get_world_size()
        optimizer.step()
        return loss.detach()

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        rect_loss, a = self._last_rect
        out["rect_loss"] = float(rect_loss)
        out["rect_a"] = float(a)
        return out


# ================================================================================================ variants
class nnUNetTrainerCRLN_noStrongView(nnUNetTrainerCRLN):
    """Ablation: no CutMix / noise / intensity; the student sees the weak view."""
    use_strong_view = False


class nnUNetTrainerCRLN_noCutMix(nnUNetTrainerCRLN):
    """Ablation: strong view without CutMix (intensity and noise only)."""
    strong_augmentation = dataclasses.replace(nnUNetTrainerCRLN.strong_augmentation, p_cutmix=0.0)


class nnUNetTrainerCRLN_noDIM(nnUNetTrainerCRLN):
    """Ablation: no prototypes/DIM, hence no rectification; CPS positives are class means."""
    use_dim = False


class nnUNetTrainerCRLN_noCPS(nnUNetTrainerCRLN):
    use_cps = False


class nnUNetTrainerCRLN_posMean(nnUNetTrainerCRLN):
    """Ablation (Tab. 5 'MR'): CPS positives from the class-mean embedding only."""
    cps_positive = "mean"


class nnUNetTrainerCRLN_posPrototype(nnUNetTrainerCRLN):
    """Ablation (Tab. 5 'LP'): CPS positives from the teacher's prototypes only (class mean before T_rect)."""
    cps_positive = "prototype"


class nnUNetTrainerCRLN_rawPrototypeDescriptor(nnUNetTrainerCRLN):
    """Authors' code: P̃ from the raw prototype parameter (its channel means stay 0, so the positive is the class
    mean, as in ``_posMean``)."""
    cps_prototype_source = "parameter"


class nnUNetTrainerCRLN_singlePrototype(nnUNetTrainerCRLN):
    """Ablation (Fig. 10): one prototype per class (the CPS embedding dim is then 1, as in the code)."""
    num_prototypes = 1


class nnUNetTrainerCRLN_randomXi(nnUNetTrainerCRLN):
    """Paper reading of eq. (13): ξ ~ U(0, λ=0.6) drawn every step."""
    cps_xi_random = True


class nnUNetTrainerCRLN_voxelMask(nnUNetTrainerCRLN):
    """Paper reading of eq. (2): per-voxel confidence mask instead of the per-image reliable fraction."""
    unsup_weighting = "voxel"


class nnUNetTrainerCRLN_faithfulReshape(nnUNetTrainerCRLN):
    """The authors' (C, M) -> (M, C) reshape in the DIM (spec §8.4)."""
    faithful_reshape = True


class nnUNetTrainerCRLN_crlnOptim(nnUNetTrainerCRLN):
    """CRLN's optimizer (SGD 2.5e-3, momentum 0.9, wd 5e-4) and T_rect = 800 iterations."""
    crln_optim = True
    rectification_start_iteration = 800


class nnUNetTrainerCRLN_tiny(UnmirroredValidation, nnUNetTrainerCRLN):
    """2 epochs x 3 iterations; rectification from iteration 3 so both phases run."""
    schedule_overrides = TINY_SCHEDULE
    num_prototypes = 2
    rectification_start_iteration = 3
    cps_num_anchors = 16
    cps_num_negatives = 32
