"""``nnUNetTrainerCRLN``: a weak-to-strong Mean Teacher plus the DIM's map, rectification and CPS."""
import random
from typing import Dict, Optional

import torch
import torch.distributed as dist
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn
from torch.nn import functional as F

from nnunet_ssl.augment.strong import StrongAugmentation
from nnunet_ssl.diagnostics import pseudo_label_dice
from nnunet_ssl.losses.pseudo_label import confidence_pseudo_labels, weighted_cross_entropy
from nnunet_ssl.modules.features import decoder_stage_channels
from nnunet_ssl.modules.heads import ProjectionHead
from nnunet_ssl.trainers.base import first_output, split_batch
from nnunet_ssl.trainers.crln.losses import cps_loss, image_weighted_nll, prototype_descriptors, rectification_loss
from nnunet_ssl.trainers.crln.network import CPSProjectionHead, CRLNNet, negative_stage
from nnunet_ssl.trainers.mean_teacher import nnUNetTrainerMeanTeacher


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
    # the paper's 0.5 (`_paperCPSWeight`) let CPS drive nnU-Net's network on LA fold 0 (3.5 mm plans): its gradient
    # was ~10x the supervised one at the end of training, its InfoNCE near chance level, held-out Dice 3 points
    # lower. Pre-registered rule: 0.05 stays only if it scores higher than 0.5 on each of LA folds 1 and 2.
    cps_weight: float = 0.05
    cps_stage: int = -1                   # decoder stage the projection head reads (-1: full resolution)
    # 'spec': conv3 -> BN -> ReLU -> conv1, unnormalised (§3.1, the authors' head); 'mlp': conv1 -> LeakyReLU ->
    # conv1, L2-normalised (the head used before 0.2, kept to reproduce its records)
    cps_head: str = "spec"
    cps_weak_threshold: float = 0.7       # γ: unlabelled voxels below it are invalid
    cps_uncertain_threshold: float = 0.97  # anchors: student p_c below it
    cps_temperature: float = 0.5
    cps_num_anchors: int = 256
    cps_num_negatives: int = 512
    cps_positive: str = "combined"        # 'combined' | 'mean' (MR) | 'prototype' (LP)
    # Deviation from the authors' code (spec §3.5 builds P̃ from the raw prototype parameter P): P̃ comes from the
    # teacher's trained prototype queries q(LN(P)). P is used only through a LayerNorm, so its channel means never
    # receive a gradient and stay at their initial 0; the authors' P̃ is then 0 and their positive the class mean
    # (the 'MR' ablation). 'parameter' (`_rawPrototypeDescriptor`) restores the code's choice.
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
        if self.cps_head not in ("spec", "mlp"):
            raise ValueError(f"{type(self).__name__}.cps_head must be 'spec' or 'mlp', got {self.cps_head!r}")
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
        if self.cps_head == "mlp":
            return {"cps_head": ProjectionHead(channels, self.num_prototypes, self.num_prototypes, dim)}
        return {"cps_head": CPSProjectionHead(channels, self.num_prototypes, dim)}

    def configure_optimizers(self):
        rectifier = {id(p) for p in self.student.rectifier.parameters()}
        params = [p for p in self.network.parameters() if id(p) not in rectifier]
        return self.sgd_with_poly(params, momentum=0.9 if self.crln_optim else 0.99)

    def configure_extra_optimizers(self):
        if not self.use_dim:
            return {}
        return {"rectifier": self.sgd_with_poly(self.student.rectifier.parameters(), self.rectifier_lr,
                                                self.rectifier_momentum, self.rectifier_weight_decay)}

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
        # one student forward over both streams; the DIM sees labelled samples only
        n_l = data_l.shape[0]
        seg, relation_map_l, features = self.joint_forward(self.network, data_l, strong_u, return_extras=True,
                                                           dim_batch=n_l)
        out_l, _ = split_batch(seg, n_l)
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
