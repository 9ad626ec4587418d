"""``nnUNetTrainerBoCLIS``: K EMA teachers, boundary-guided patch contrast."""
from typing import Dict, Optional, Tuple, Union

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.helpers import softmax_helper_dim1
from torch import nn
from torch.nn import functional as F

from nnunet_ssl.augment.strong import StrongAugmentation
from nnunet_ssl.diagnostics import pseudo_label_dice
from nnunet_ssl.losses.boundary import crop_masked_patches, extract_regions, REGION_NAMES
from nnunet_ssl.modules.ema import EMATeacher
from nnunet_ssl.modules.heads import ProjectionHead
from nnunet_ssl.trainers.base import first_output, nnUNetTrainerSSL, split_batch
from nnunet_ssl.trainers.boclis.losses import (aggregate_teacher_predictions, boclis_contrastive_loss,
                                               reliability_weighted_cross_entropy, TeacherAggregate)
from nnunet_ssl.trainers.boclis.network import (ClassMemoryQueue, contrast_patch_size, encode_patches,
                                                encoder_stage_channels, patch_encoder_depth)


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
    contrast_patch_size: Union[None, int, Tuple[int, ...]] = None  # None: 32³/64², capped by the patch
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
        try:
            return contrast_patch_size(self.contrast_patch_size, self.configuration_manager.patch_size)
        except ValueError as e:
            raise ValueError(f"{type(self).__name__}.{e} ({self.configuration_name} configuration)") from None

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
        out_l, _ = split_batch(output, n_l)
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
