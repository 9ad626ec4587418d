"""``nnUNetTrainerBoCLIS``: boundary-guided contrastive learning (seed 002, spec ``specs/boclis.md``).

* K EMA teachers of one student, conservative → radical (α = 0.999, 0.99, 0.9; spec §2.1 [A]), all on the weak view.
  Their softmax outputs are merged per voxel with entropy-softmax weights ``w_k ∝ exp(-H(p_k)/T_u)``; the
  pseudo-label is ``argmax p̄`` and its reliability ``r = 1 - H(p̄)/log C`` (§2.2).
* Student on the strong view (same geometry, intensity-only: no CutMix, spec §3/§9):
  ``L = L_sup + λ_u(t)·L_u + λ_c(t)·L_con`` with ``L_u = Σ r·CE/Σ r + (1 - softDice)`` (deep-supervised like L_sup).
* Boundary-guided patches (``nnunet_ssl/losses/boundary.py``): per image and class an edge, a centre and a whole
  region, from the GT (labelled) or the aggregated pseudo-label (unlabelled); masked crops resized to 32³ / 64²,
  encoded by the student's encoder, global-average-pooled, projected (``ProjectionHead``) to 128-d.
* Supervised-contrastive InfoNCE (τ = 0.07) with edge-patch anchors, intra-image (same image: same class
  positive, other classes negative) plus inter-image (other images and an optional per-class FIFO queue), 1:1.
* Prediction: the plain planned network; ``network_weights`` = the student (spec §9 default), or the most
  conservative teacher with ``nnUNetTrainerBoCLIS_exportTeacher``.

Deviations (spec §9 allows or leaves open): the projection head is the shared ``ProjectionHead`` (1×1 convs with
LeakyReLU, no BatchNorm, L2-normalised) instead of Linear-BN-ReLU-Linear; patches are encoded down to the deepest
encoder stage that keeps ≥ 2 voxels per axis (nnU-Net's bottleneck would be 1 voxel for a 32³ crop, where
InstanceNorm is undefined); the strong view is the weak view plus nnU-Net's intensity transforms (noise, blur,
gamma, ...) and the paper's ColorJitter brightness/contrast (U(0.2, 1.8) on the [0, 1]-mapped image).

Limitation: the patch encoder pass uses the unwrapped student encoder outside DDP's forward, so multi-GPU (DDP)
training is untested and likely needs DDP's ``find_unused_parameters``/static-graph handling; single-GPU is the
supported set-up.
"""
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.helpers import softmax_helper_dim1
from torch import nn
from torch.nn import functional as F

from nnunet_ssl.augment.strong import StrongAugmentation
from nnunet_ssl.diagnostics import pseudo_label_dice
from nnunet_ssl.losses.boundary import REGION_NAMES, crop_masked_patches, extract_regions
from nnunet_ssl.losses.supervised_contrastive import supervised_contrastive_loss
from nnunet_ssl.modules.ema import EMATeacher
from nnunet_ssl.modules.heads import ProjectionHead
from nnunet_ssl.trainers.base import first_output, nnUNetTrainerSSL
from nnunet_ssl.trainers.tiny import TINY_SCHEDULE, UnmirroredValidation

EPS = 1e-8


# ---------------------------------------------------------------------------------------- teacher aggregation
@dataclass
class TeacherAggregate:
    probabilities: torch.Tensor  # p̄ (B, C, *spatial)
    weights: torch.Tensor        # w_k (K, B, *spatial)
    labels: torch.Tensor         # argmax p̄ (B, *spatial) long
    confidence: torch.Tensor     # max p̄ (B, *spatial)
    reliability: torch.Tensor    # r = 1 - H(p̄)/log C (B, *spatial)


def entropy(probabilities: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy (nats) along ``dim``, with 0·log 0 := 0 (probabilities clamped at 1e-8 inside the log)."""
    return -(probabilities * probabilities.clamp_min(EPS).log()).sum(dim=dim)


def aggregate_teacher_predictions(teacher_probabilities: torch.Tensor, weighting: str = "entropy",
                                  temperature: float = 1.0, normalise_uncertainty: bool = False) -> TeacherAggregate:
    """Uncertainty-weighted aggregation of K teachers' softmax outputs (K, B, C, *spatial) (spec §2.2).

    ``weighting='entropy'``: ``w_k = softmax_k(-U_k / T_u)`` with ``U_k = H(p_k)`` (divided by log C when
    ``normalise_uncertainty``); ``'uniform'``: ``w_k = 1/K`` (ablation). ``r = 1 - H(p̄)/log C``."""
    if teacher_probabilities.ndim < 4:
        raise ValueError(f"teacher probabilities must be (K, B, C, *spatial), got {tuple(teacher_probabilities.shape)}")
    p = teacher_probabilities.float()
    num_classes = p.shape[2]
    if num_classes < 2:
        raise ValueError("aggregation needs at least 2 classes")
    log_c = math.log(num_classes)
    if weighting == "entropy":
        if temperature <= 0:
            raise ValueError(f"aggregation temperature must be > 0, got {temperature}")
        uncertainty = entropy(p, dim=2)
        if normalise_uncertainty:
            uncertainty = uncertainty / log_c
        weights = torch.softmax(-uncertainty / temperature, dim=0)
    elif weighting == "uniform":
        weights = torch.full_like(p[:, :, 0], 1.0 / p.shape[0])
    else:
        raise ValueError(f"aggregation weighting must be 'entropy' or 'uniform', got {weighting!r}")
    merged = (weights[:, :, None] * p).sum(dim=0)
    confidence, labels = merged.max(dim=1)
    reliability = (1.0 - entropy(merged, dim=1) / log_c).clamp(0.0, 1.0)
    return TeacherAggregate(merged, weights, labels, confidence, reliability)


def reliability_weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                                       reliability: torch.Tensor) -> torch.Tensor:
    """``Σ_i r_i·CE_i / Σ_i r_i`` in fp32; 0 (with a graph) when every r is 0."""
    ce = F.cross_entropy(logits.float(), labels.long(), reduction="none")
    r = reliability.float()
    return (r * ce).sum() / r.sum().clamp_min(EPS)


# ------------------------------------------------------------------------------------- patch embedding + loss
def _stage_output_size(size: Sequence[int], stride: Sequence[int]) -> Tuple[int, ...]:
    return tuple(int(math.ceil(n / s)) for n, s in zip(size, stride))


def patch_encoder_depth(encoder: nn.Module, patch_size: Sequence[int]) -> int:
    """Number of encoder stages to run on a patch: the deepest whose output keeps >= 2 voxels on every axis
    (InstanceNorm needs more than one voxel; a 32³ crop reaches 1 voxel at nnU-Net's bottleneck)."""
    size, depth = tuple(patch_size), 0
    for stride in encoder.strides:
        stride = stride if isinstance(stride, (list, tuple)) else [stride] * len(size)
        size = _stage_output_size(size, stride)
        if min(size) < 2:
            break
        depth += 1
    if depth == 0:
        raise ValueError(f"contrast patch size {tuple(patch_size)} is too small for this encoder (the first stage "
                         f"already leaves < 2 voxels); raise contrast_patch_size")
    return depth


def encoder_stage_channels(encoder: nn.Module, depth: int) -> int:
    return int(encoder.output_channels[depth - 1])


def encode_patches(encoder: nn.Module, patches: torch.Tensor, depth: int) -> torch.Tensor:
    """Run the first ``depth`` stages of an nnU-Net encoder (stem included) and global-average-pool: (N, C)."""
    x = patches
    if getattr(encoder, "stem", None) is not None:
        x = encoder.stem(x)
    for stage in encoder.stages[:depth]:
        x = stage(x)
    return x.mean(dim=tuple(range(2, x.ndim)))


def boclis_contrastive_loss(embeddings: torch.Tensor, image_index: torch.Tensor, class_index: torch.Tensor,
                            region_index: torch.Tensor, temperature: float, anchor_regions: Sequence[int],
                            queue_embeddings: Optional[torch.Tensor] = None,
                            queue_classes: Optional[torch.Tensor] = None,
                            queue_filled: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(intra-image, inter-image) SupCon terms over a batch of patch embeddings (spec §5.2-5.3).

    Anchors: patches whose region is in ``anchor_regions``. Intra: candidates = the other patches of the anchor's
    image, positives = those of its class. Inter: candidates = patches of other images plus queue entries (those
    marked in ``queue_filled``; all when it is None), positives = those of the anchor's class."""
    n = embeddings.shape[0]
    is_anchor = torch.zeros(n, dtype=torch.bool, device=embeddings.device)
    for r in anchor_regions:
        is_anchor |= region_index == r
    same_image = image_index[:, None] == image_index[None, :]
    same_class = class_index[:, None] == class_index[None, :]
    not_self = ~torch.eye(n, dtype=torch.bool, device=embeddings.device)
    intra_candidates = same_image & not_self
    intra = supervised_contrastive_loss(embeddings, embeddings, intra_candidates, intra_candidates & same_class,
                                        temperature, is_anchor)
    candidates, inter_candidates, inter_positives = embeddings, ~same_image, ~same_image & same_class
    if queue_embeddings is not None and queue_embeddings.shape[0] > 0:
        candidates = torch.cat((embeddings, queue_embeddings.to(embeddings.dtype)))
        queue_same_class = class_index[:, None] == queue_classes[None, :]
        queue_usable = torch.ones_like(queue_same_class) if queue_filled is None else \
            queue_filled[None, :].expand_as(queue_same_class)
        inter_candidates = torch.cat((inter_candidates, queue_usable), dim=1)
        inter_positives = torch.cat((inter_positives, queue_same_class & queue_usable), dim=1)
    inter = supervised_contrastive_loss(embeddings, candidates, inter_candidates, inter_positives, temperature,
                                        is_anchor)
    return intra, inter


class ClassMemoryQueue(nn.Module):
    """Per-class FIFO of detached embeddings (C, Q, D) for the inter-image term of small 3D batches."""

    def __init__(self, num_classes: int, size: int, dim: int):
        super().__init__()
        if size <= 0:
            raise ValueError(f"memory queue size must be > 0, got {size}")
        self.register_buffer("embeddings", torch.zeros(num_classes, size, dim))
        self.register_buffer("filled", torch.zeros(num_classes, size, dtype=torch.bool))
        self.register_buffer("pointer", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def push(self, embeddings: torch.Tensor, classes: torch.Tensor):
        """Append each class's new embeddings (in order) at its pointer; beyond ``size`` only the last ones stay.

        Computed on the device for all classes at once (ranks within a class by a cumulative count, then one
        ``index_copy_``), so pushing never waits for the GPU."""
        num_classes, size, dim = self.embeddings.shape
        classes = classes.long()
        member = classes[:, None] == torch.arange(num_classes, device=classes.device)   # (N, C)
        rank = (member.long().cumsum(0) - 1).gather(1, classes[:, None])[:, 0]         # position within its class
        count = member.long().sum(0)
        skipped = (count - size).clamp_min(0)[classes]                                 # older ones that do not fit
        slot = (self.pointer[classes] + rank - skipped) % size
        # the ones that do not fit are written to a scratch row that is dropped afterwards
        target = torch.where(rank >= skipped, classes * size + slot, num_classes * size)
        flat = torch.cat((self.embeddings.view(-1, dim), self.embeddings.new_zeros(1, dim)))
        flat.index_copy_(0, target, embeddings.detach().to(flat.dtype))
        filled = torch.cat((self.filled.view(-1), self.filled.new_zeros(1)))
        filled.index_fill_(0, target, True)
        self.embeddings.copy_(flat[:-1].view_as(self.embeddings))
        self.filled.copy_(filled[:-1].view_as(self.filled))
        self.pointer.copy_((self.pointer + count.clamp_max(size)) % size)

    def slots(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embeddings (C·Q, D), classes (C·Q,), filled (C·Q,) bool) of every slot: fixed shapes, no sync."""
        classes = torch.arange(self.embeddings.shape[0], device=self.embeddings.device)
        classes = classes[:, None].expand_as(self.filled)
        return self.embeddings.flatten(0, 1), classes.flatten(), self.filled.flatten()

    def contents(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (M, D), classes (M,)) of the filled slots only (for inspection; selecting costs a sync)."""
        embeddings, classes, filled = self.slots()
        return embeddings[filled], classes[filled]


# --------------------------------------------------------------------------------------------------- trainer
class nnUNetTrainerBoCLIS(nnUNetTrainerSSL):
    # teachers, conservative -> radical; the first is "teacher" (what export_weights='teacher' exports)
    teacher_decays: Tuple[float, ...] = (0.999, 0.99, 0.9)
    aggregation_weighting: str = "entropy"      # 'entropy' (spec) | 'uniform' (ablation)
    aggregation_temperature: float = 1.0        # T_u
    normalise_uncertainty: bool = False         # divide U_k by log C before the softmax
    confidence_threshold: float = 0.8           # optional FixMatch-style hard mask on max p̄ (and diagnostics)
    use_confidence_mask: bool = False
    # unsupervised loss
    unsup_weight: float = 1.0                   # λ_u max
    unsup_rampup: float = 0.4
    use_pseudo_label_dice: bool = True          # L_u = weighted CE + soft Dice
    # intensity only (weak and strong share geometry): torchvision's ColorJitter(brightness=0.8, contrast=0.8) on
    # grey images, i.e. factors U(0.2, 1.8) always applied (saturation and hue do nothing to grey images)
    strong_augmentation = StrongAugmentation(p_cutmix=0.0, p_brightness=1.0, brightness_range=(0.2, 1.8),
                                             p_contrast=1.0, contrast_range=(0.2, 1.8), p_noise=0.0)
    # contrastive loss
    use_contrast: bool = True
    contrast_weight: float = 0.1                # λ_c max
    contrast_rampup: float = 0.4
    contrast_temperature: float = 0.07          # τ
    contrast_patch_size: Union[None, int, Tuple[int, ...]] = None  # None: 32³ (3d) / 64² (2d); int: every axis
    contrast_projection_dim: int = 128
    contrast_anchor_regions: Tuple[str, ...] = ("edge",)
    contrast_include_background: bool = True
    contrast_intra_weight: float = 1.0
    contrast_inter_weight: float = 1.0
    # region extraction
    edge_sampling: str = "boundary"             # 'boundary' (spec) | 'random' (ablation: any voxel of the class)
    edge_window_fraction: float = 0.25
    edge_dilation_iterations: int = 3
    centre_erosion_iterations: int = 4
    centre_largest_component: bool = True
    patch_sampling_seed: Optional[int] = None   # None: non-deterministic; an int makes patch sampling repeatable
    # per-class memory queue: 'auto' = on for 3D with at most 4 images per step
    memory_queue: str = "auto"                  # 'auto' | 'on' | 'off'
    memory_queue_size: int = 256
    export_weights: str = "student"             # spec §9 default; *_exportTeacher exports the conservative one
    ssl_log_keys = nnUNetTrainerSSL.ssl_log_keys + (
        "con_loss", "con_weight", "con_intra", "con_inter", "contrast_patches", "reliability_mean",
        "conservative_teacher_weight")

    # ---------------------------------------------------------------------------------------------- set-up
    def initialize(self):
        super().initialize()
        self.patch_generator = torch.Generator()
        if self.patch_sampling_seed is None:
            self.patch_generator.seed()
        else:
            self.patch_generator.manual_seed(int(self.patch_sampling_seed))
        self.class_queue = None
        if self.use_contrast and self._memory_queue_enabled():
            self.class_queue = ClassMemoryQueue(self.label_manager.num_segmentation_heads, self.memory_queue_size,
                                                self.contrast_projection_dim).to(self.device)

    def _memory_queue_enabled(self) -> bool:
        if self.memory_queue not in ("auto", "on", "off"):
            raise ValueError(f"{type(self).__name__}.memory_queue must be 'auto', 'on' or 'off', "
                             f"got {self.memory_queue!r}")
        if self.memory_queue != "auto":
            return self.memory_queue == "on"
        images = self.batch_size + self.unlabeled_batch_size_per_step()
        return len(self.configuration_manager.patch_size) == 3 and images <= 4

    def teacher_names(self) -> Tuple[str, ...]:
        return ("teacher",) + tuple(f"teacher_{k + 1}" for k in range(1, len(self.teacher_decays)))

    def build_teachers(self) -> Dict[str, EMATeacher]:
        decays = tuple(float(a) for a in self.teacher_decays)
        if not decays or any(a < b for a, b in zip(decays, decays[1:])):
            raise ValueError(f"{type(self).__name__}.teacher_decays must be a non-empty tuple ordered from "
                             f"conservative (large) to radical (small), got {self.teacher_decays}")
        return {name: EMATeacher(self.network, decay) for name, decay in zip(self.teacher_names(), decays)}

    def _patch_size(self) -> Tuple[int, ...]:
        ndim = len(self.configuration_manager.patch_size)
        size = self.contrast_patch_size or (32 if ndim == 3 else 64)
        size = (size,) * ndim if isinstance(size, int) else tuple(size)
        if len(size) != ndim:
            raise ValueError(f"{type(self).__name__}.contrast_patch_size {size} must have {ndim} entries for the "
                             f"{self.configuration_name} configuration")
        return tuple(int(s) for s in size)

    def build_extra_modules(self) -> Dict[str, nn.Module]:
        if not self.use_contrast:
            return {}
        encoder = self.student.encoder
        self.patch_encoder_depth = patch_encoder_depth(encoder, self._patch_size())
        channels = encoder_stage_channels(encoder, self.patch_encoder_depth)
        ndim = len(self.configuration_manager.patch_size)
        return {"patch_projection": ProjectionHead(channels, self.contrast_projection_dim, channels, dim=ndim)}

    # ---------------------------------------------------------------------------------------------- losses
    def aggregate_teachers(self, data_u: torch.Tensor) -> TeacherAggregate:
        with torch.no_grad():
            probs = torch.stack([torch.softmax(first_output(self.teacher_forward(data_u, name)).float(), dim=1)
                                 for name in self.teachers])
            return aggregate_teacher_predictions(probs, self.aggregation_weighting, self.aggregation_temperature,
                                                 self.normalise_uncertainty)

    def pseudo_label_loss(self, output, n_labeled: int, labels: torch.Tensor, reliability: torch.Tensor):
        """L_u on every deep-supervision output with nnU-Net's weights; targets downsampled like nnU-Net's."""
        outputs = output if isinstance(output, (list, tuple)) else [output]
        if isinstance(output, (list, tuple)) and isinstance(self.loss, DeepSupervisionWrapper):
            weights = self.loss.weight_factors
        else:
            weights = (1.0,)
        dice = MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1,
                                           batch_dice=self.configuration_manager.batch_dice, do_bg=False,
                                           smooth=1e-5, ddp=self.is_ddp)
        total = 0.0
        for weight, out in zip(weights, outputs):
            if weight == 0:
                continue
            logits = out[n_labeled:]
            lab, rel = labels, reliability
            if tuple(logits.shape[2:]) != tuple(labels.shape[1:]):
                lab = F.interpolate(labels[:, None].float(), logits.shape[2:], mode="nearest-exact")[:, 0].long()
                rel = F.interpolate(reliability[:, None].float(), logits.shape[2:], mode="nearest-exact")[:, 0]
            term = reliability_weighted_cross_entropy(logits, lab, rel)
            if self.use_pseudo_label_dice:
                term = term + 1.0 + dice(logits, lab[:, None])  # nnU-Net's Dice loss is -softDice
            total = total + weight * term
        return total

    def patch_embeddings(self, images: torch.Tensor, labels: torch.Tensor):
        """Embeddings (N, D) of every non-empty region patch, with their image, class and region indices."""
        num_classes = self.label_manager.num_segmentation_heads
        regions = extract_regions(labels, num_classes, self.centre_erosion_iterations,
                                  self.centre_largest_component, self.edge_window_fraction,
                                  self.edge_dilation_iterations,
                                  "boundary" if self.edge_sampling == "boundary" else "region",
                                  self.patch_generator)
        masks = torch.stack([regions[r] for r in REGION_NAMES], dim=2)  # (B, C, R, *spatial)
        b, c, r = masks.shape[:3]
        grid = torch.meshgrid(*(torch.arange(n, device=images.device) for n in (b, c, r)), indexing="ij")
        image_idx, class_idx, region_idx = (g.reshape(-1) for g in grid)
        masks = masks.flatten(0, 2)
        valid = masks.flatten(1).any(dim=1)
        if not self.contrast_include_background:
            valid &= class_idx != 0
        keep = valid.nonzero()[:, 0]  # one host sync: only non-empty patches are encoded
        image_idx, class_idx, region_idx = image_idx[keep], class_idx[keep], region_idx[keep]
        if keep.numel() == 0:
            return None, image_idx, class_idx, region_idx
        patches = crop_masked_patches(images, masks[keep], image_idx, self._patch_size())
        features = encode_patches(self.student.encoder, patches, self.patch_encoder_depth)
        head = self.extra_modules["patch_projection"]
        z = head(features.view(*features.shape, *([1] * (images.ndim - 2)))).flatten(1)
        return z, image_idx, class_idx, region_idx

    def patch_contrastive_loss(self, images: torch.Tensor, labels: torch.Tensor):
        z, image_idx, class_idx, region_idx = self.patch_embeddings(images, labels)
        nan = torch.full((), float("nan"), device=self.device)
        if z is None:
            zero = sum(p.sum() for p in self.extra_modules.parameters()) * 0.0
            return zero, nan, nan, 0
        queue_z, queue_c, queue_filled = self.class_queue.slots() if self.class_queue is not None else (None,) * 3
        anchors = [REGION_NAMES.index(name) for name in self.contrast_anchor_regions]
        intra, inter = boclis_contrastive_loss(z, image_idx, class_idx, region_idx, self.contrast_temperature,
                                               anchors, queue_z, queue_c, queue_filled)
        if self.class_queue is not None:
            self.class_queue.push(z, class_idx)
        loss = self.contrast_intra_weight * intra + self.contrast_inter_weight * inter
        return loss, intra.detach(), inter.detach(), z.shape[0]

    def compute_losses(self, data_l, target_l, data_u, truth_u):
        n_l = data_l.shape[0]
        aggregate = self.aggregate_teachers(data_u)
        labels_u, reliability_u = aggregate.labels, aggregate.reliability
        if self.use_confidence_mask:
            reliability_u = reliability_u * (aggregate.confidence >= self.confidence_threshold)
        diagnostics = {
            "teacher_confidence": aggregate.confidence.mean(),
            "reliable_fraction": (aggregate.confidence >= self.confidence_threshold).float().mean(),
            "reliability_mean": reliability_u.mean(),
            "conservative_teacher_weight": aggregate.weights[0].mean(),
            "pseudo_label_dice": pseudo_label_dice(labels_u, truth_u, self.label_manager.num_segmentation_heads),
        }
        strong_u, mix = self.strong_view(data_u)
        labels_u, reliability_u = mix.apply_to_targets(labels_u, reliability_u)
        images = torch.cat((data_l, strong_u))
        output = self.network(images)
        out_l = [o[:n_l] for o in output] if isinstance(output, (list, tuple)) else output[:n_l]
        sup = self.loss(out_l, target_l)
        unsup_weight = self.current_unsup_weight()
        losses = {"sup": sup,
                  "unsup": unsup_weight * self.pseudo_label_loss(output, n_l, labels_u, reliability_u)}
        diagnostics["unsup_weight"] = torch.tensor(unsup_weight)
        nan = torch.tensor(float("nan"))
        diagnostics.update(con_weight=nan, con_intra=nan, con_inter=nan, contrast_patches=nan)
        if self.use_contrast:
            labels_l = target_l[0][:, 0].long()
            if self.label_manager.has_ignore_label:
                labels_l = torch.where(labels_l == self.label_manager.ignore_label, -1, labels_l)
            con, intra, inter, n_patches = self.patch_contrastive_loss(images, torch.cat((labels_l, labels_u)))
            con_weight = self.current_unsup_weight(self.contrast_weight, self.contrast_rampup)
            losses["con"] = con_weight * con
            diagnostics.update(con_weight=torch.tensor(con_weight), con_intra=intra, con_inter=inter,
                               contrast_patches=torch.tensor(float(n_patches)))
        return losses, diagnostics

    # ------------------------------------------------------------------------------------------ checkpoints
    def method_checkpoint_state(self) -> dict:
        state = {"boclis_patch_generator": self.patch_generator.get_state()}
        if self.class_queue is not None:
            state["boclis_class_queue"] = self.class_queue.state_dict()
        return state

    def load_method_checkpoint_state(self, checkpoint: dict) -> None:
        if "boclis_patch_generator" in checkpoint:
            self.patch_generator.set_state(checkpoint["boclis_patch_generator"])
        if self.class_queue is not None and "boclis_class_queue" in checkpoint:
            self.class_queue.load_state_dict(checkpoint["boclis_class_queue"])


# ------------------------------------------------------------------------------------------------ variants
class nnUNetTrainerBoCLIS_exportTeacher(nnUNetTrainerBoCLIS):
    """Predict with the most conservative teacher (α = 0.999) instead of the student."""
    export_weights = "teacher"


class nnUNetTrainerBoCLIS_singleTeacher(nnUNetTrainerBoCLIS):
    """Ablation: one EMA teacher (α = 0.99), i.e. no conservative-to-radical ensemble."""
    teacher_decays = (0.99,)


class nnUNetTrainerBoCLIS_twoTeachers(nnUNetTrainerBoCLIS):
    """Ablation (spec §2.1): K = 2 with α = 0.999, 0.99."""
    teacher_decays = (0.999, 0.99)


class nnUNetTrainerBoCLIS_uniformAggregation(nnUNetTrainerBoCLIS):
    """Ablation: teachers averaged with equal weights (no uncertainty weighting)."""
    aggregation_weighting = "uniform"


class nnUNetTrainerBoCLIS_randomPatches(nnUNetTrainerBoCLIS):
    """Ablation: anchor windows around a random voxel of the class instead of a boundary voxel."""
    edge_sampling = "random"


class nnUNetTrainerBoCLIS_noContrast(nnUNetTrainerBoCLIS):
    """Ablation: teachers + aggregation + L_u only."""
    use_contrast = False


class nnUNetTrainerBoCLIS_tiny(UnmirroredValidation, nnUNetTrainerBoCLIS):
    """CPU smoke/test variant: 2 epochs x 3 iterations, 16³ / 16² contrast patches."""
    schedule_overrides = {**TINY_SCHEDULE, "contrast_patch_size": 16}

