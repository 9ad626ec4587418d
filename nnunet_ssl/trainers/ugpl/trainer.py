"""``nnUNetTrainerUGPL``: two students with uncertainty-guided pseudo-labels (``DualNetwork`` export)."""
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.helpers import softmax_helper_dim1

from nnunet_ssl.diagnostics import pseudo_label_dice
from nnunet_ssl.modules.features import DecoderFeatureTap
from nnunet_ssl.trainers.base import first_output, split_batch
from nnunet_ssl.trainers.dual_base import nnUNetTrainerDualSSL
from nnunet_ssl.trainers.ugpl.losses import (cosine_consistency, cross_reliable_losses, entropy_keep_mask,
                                             kl_rectified_cross_entropy, loser_is_b, prototype_alignment_loss,
                                             prototype_weight, rescaled_masked_cross_entropy, softmax_entropy,
                                             union_pseudo_labels)


class nnUNetTrainerUGPL(nnUNetTrainerDualSSL):
    # network pair (spec §9.1): 'other_family' = A PlainConvUNet + B ResidualEncoderUNet (ResNet34-like encoder),
    # 'same' = the plans' architecture twice (two independent He initialisations)
    second_network = "other_family"
    # supervised extras
    cr_weight = 0.5                  # α on L_cr
    cr_conf_threshold = 0.6
    # Cross Consistency Enhancement
    entropy_filter = True
    entropy_keep_percent = 80.0      # τ percentile: each network marks this share confident (spec §7.1; code: 20)
    unsup_rescale = True             # N / N_kept
    unsup_weight = 1.0               # w_u on L_u^A + L_u^B
    # sigmoid ramp of the unsupervised terms (L_u, KL and cosine) over this fraction of training. Paper and code: 0
    # (full weight from step 0); `_sigmoidRamp` ramps over the first 10 %, so that at step 0 the networks do not
    # train at full weight on each other's random predictions (docs/methods.md, UGPL's ramp)
    unsup_rampup = 0.0
    # KL-rectified cross pseudo supervision
    use_kl = True
    kl_direction = "symmetric"       # 'symmetric' | 'a_to_b' (code: teacher A, student B) | 'b_to_a'
    kl_weight = 1.0                  # per direction
    kl_region = "all"                # 'all' (labelled + unlabelled, as the code) | 'unlabelled'
    kl_temperature = 0.5             # no effect on hard pseudo-labels (spec §3.5)
    kl_weighting = True              # False: w ≡ 1 and no +KL term
    cos_weight = 1.0
    # prototype alignment
    proto_weight_max = 0.1
    proto_ramp_fraction = 1.0        # paper and code: sigmoid ramp over all of training (`_sigmoidRamp`: 40 %)
    proto_on = "loser"               # 'loser' | 'both'
    proto_sample_fraction = 0.01     # ρ
    proto_margin = 1.0
    proto_separation = "hinge"       # 'hinge' | 'code_pull' (authors' sign bug) | 'none'
    proto_push_candidates = True

    ssl_log_keys = nnUNetTrainerDualSSL.ssl_log_keys + (
        "cr_loss", "kl_loss", "cos_loss", "proto_loss", "sup_a", "sup_b", "dice_loss_a", "dice_loss_b",
        "loser_is_b", "tau_a", "tau_b", "kept_share", "unsup_rescale", "kl_weight_mean", "proto_weight",
        "pseudo_label_dice_kept")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._check_settings()
        # per-class voxel counts of the prototype module (§9.6); the number of classes is only known here
        num_classes = self.label_manager.num_segmentation_heads
        per_class = tuple(f"{kind}_c{c}" for kind in ("reliable_voxels", "proto_candidates")
                          for c in range(num_classes))
        self.ssl_log_keys = type(self).ssl_log_keys + per_class
        for k in per_class:
            self.logger.local_logger.my_fantastic_logging.setdefault(k, [])
        self.feature_taps: Dict[str, DecoderFeatureTap] = {}
        if self.proto_separation == "code_pull":
            self.print_to_log_file("UGPL: proto_separation='code_pull' reproduces the authors' sign bug (prototypes "
                                   "pulled together); use it only to measure that bug.")

    def _check_settings(self):
        name = type(self).__name__
        choices = {"kl_direction": ("symmetric", "a_to_b", "b_to_a"), "kl_region": ("all", "unlabelled"),
                   "proto_on": ("loser", "both"), "proto_separation": ("hinge", "code_pull", "none")}
        for attr, allowed in choices.items():
            if getattr(self, attr) not in allowed:
                raise ValueError(f"{name}.{attr} must be one of {allowed}, got {getattr(self, attr)!r}")
        if not 0.0 < self.entropy_keep_percent <= 100.0:
            raise ValueError(f"{name}.entropy_keep_percent must lie in (0, 100], got {self.entropy_keep_percent}")
        if not 0.0 < self.proto_sample_fraction <= 1.0:
            raise ValueError(f"{name}.proto_sample_fraction must lie in (0, 1], got {self.proto_sample_fraction}")
        if self.kl_temperature <= 0:
            raise ValueError(f"{name}.kl_temperature must be > 0, got {self.kl_temperature}")

    def initialize(self):
        super().initialize()
        # full-resolution decoder features (input of the segmentation layer) of both networks
        self.feature_taps = {"a": DecoderFeatureTap(self.student.net_a, [-1]),
                             "b": DecoderFeatureTap(self.student.net_b, [-1])}

    def validation_step(self, batch: dict) -> dict:
        out = super().validation_step(batch)
        for tap in self.feature_taps.values():
            tap.pop()  # validation forwards fill the taps too; do not keep those tensors alive
        return out

    # ------------------------------------------------------------------------------------------------ losses
    def compute_losses(self, data_l, target_l, data_u, truth_u):
        n_l = data_l.shape[0]
        x = torch.cat((data_l, data_u))  # both networks see the same tensors (spec §2)
        out_a = self.forward_a(x)
        feat_a = self.feature_taps["a"].pop()[-1]
        out_b = self.forward_b(x)
        feat_b = self.feature_taps["b"].pop()[-1]
        sup_a = self.loss(split_batch(out_a, n_l)[0], target_l)
        sup_b = self.loss(split_batch(out_b, n_l)[0], target_l)
        seg_l = first_output(target_l)[:, 0]
        losses, diagnostics = self.ugpl_terms(first_output(out_a), first_output(out_b), feat_a, feat_b, seg_l,
                                              ignore_label=self.label_manager.ignore_label,
                                              batch_dice=self.configuration_manager.batch_dice, truth_u=truth_u)
        diagnostics.update(sup_a=sup_a.detach(), sup_b=sup_b.detach())
        return {"sup": sup_a + sup_b, **losses}, diagnostics

    def _total_iterations(self) -> int:
        return self.num_epochs * self.num_iterations_per_epoch

    def _labelled_dice_losses(self, logits_l: Tuple[torch.Tensor, torch.Tensor], seg_l: torch.Tensor,
                              valid_l: torch.Tensor, batch_dice: bool) -> torch.Tensor:
        """Full-resolution soft Dice loss (nnU-Net's, foreground only) of A and B on the labelled part."""
        dice = MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, batch_dice=batch_dice, do_bg=False,
                                           smooth=1e-5, ddp=False)
        target = torch.where(valid_l, seg_l, torch.zeros_like(seg_l))[:, None]
        values = torch.stack([dice(z.float(), target, loss_mask=valid_l[:, None].float()) for z in logits_l])
        if getattr(self, "is_ddp", False):
            # every rank must pick the same loser
            dist.all_reduce(values)
            values /= dist.get_world_size()
        return values

    @staticmethod
    def _loser(b_loses: torch.Tensor, outputs_a: Tuple[torch.Tensor, ...], outputs_b: Tuple[torch.Tensor, ...]):
        """('loser', *the losing network's tensors): selected on the device when both networks' tensors have the
        same shapes (the gradient reaches only the selected ones), else decided on the host (one sync)."""
        if all(a.shape == b.shape for a, b in zip(outputs_a, outputs_b)):
            return ("loser",) + tuple(torch.where(b_loses, b, a) for a, b in zip(outputs_a, outputs_b))
        return ("loser",) + (outputs_b if bool(b_loses) else outputs_a)

    def ugpl_terms(self, logits_a: torch.Tensor, logits_b: torch.Tensor, feat_a: torch.Tensor,
                   feat_b: torch.Tensor, seg_l: torch.Tensor, ignore_label: Optional[int] = None,
                   batch_dice: bool = True, truth_u: Optional[torch.Tensor] = None
                   ) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """Every UGPL term except nnU-Net's supervised loss, from full-resolution logits (B_l + B_u, C, ...) and
        decoder features of both networks; the first ``len(seg_l)`` samples are the labelled ones.

        Returns ({'cr', 'unsup', 'kl', 'cos', 'proto'}: weighted losses, diagnostics). Runs outside autocast:
        entropies, percentiles, KL and the prototype sums over many voxels need float32 (spec §9.3)."""
        with torch.autocast(logits_a.device.type, enabled=False):
            return self._ugpl_terms_fp32(logits_a, logits_b, feat_a, feat_b, seg_l, ignore_label, batch_dice,
                                         truth_u)

    def _ugpl_terms_fp32(self, logits_a, logits_b, feat_a, feat_b, seg_l, ignore_label, batch_dice, truth_u):
        n_l = seg_l.shape[0]
        num_classes = logits_a.shape[1]
        nan = torch.full((), float("nan"), device=logits_a.device)
        probs_a = torch.softmax(logits_a.float(), 1)
        probs_b = torch.softmax(logits_b.float(), 1)
        seg_l = seg_l.long()
        valid_l = seg_l >= 0
        if ignore_label is not None:
            valid_l &= seg_l != ignore_label
        losses, diag = {}, {}

        # supervised extra: L_cr (labelled, full resolution)
        cr_a, cr_b = cross_reliable_losses(probs_a[:n_l], probs_b[:n_l], seg_l, self.cr_conf_threshold, valid_l)
        losses["cr"] = self.cr_weight * (cr_a + cr_b)

        # winner / loser by labelled soft Dice (no gradient)
        with torch.no_grad():
            dice_losses = self._labelled_dice_losses((logits_a[:n_l], logits_b[:n_l]), seg_l, valid_l, batch_dice)
        b_loses = loser_is_b(dice_losses[0], dice_losses[1])
        diag.update(dice_loss_a=dice_losses[0], dice_loss_b=dice_losses[1], loser_is_b=b_loses.float())

        # CCE: union pseudo-label, entropy-percentile mask (statistics only, fp32, no gradient)
        z_a_u, z_b_u = logits_a[n_l:], logits_b[n_l:]
        with torch.no_grad():
            p_a_u, p_b_u = probs_a[n_l:].detach(), probs_b[n_l:].detach()
            pseudo = union_pseudo_labels(p_a_u, p_b_u)
            if self.entropy_filter:
                kept, tau_a, tau_b = entropy_keep_mask(softmax_entropy(p_a_u), softmax_entropy(p_b_u),
                                                       self.entropy_keep_percent)
            else:
                kept, tau_a, tau_b = torch.ones_like(pseudo, dtype=torch.bool), nan, nan
            kept_share = kept.float().mean()
        ramp = self.current_unsup_weight(1.0, self.unsup_rampup)  # shared by L_u, KL and cosine
        unsup_weight = ramp * self.unsup_weight
        l_u = sum(rescaled_masked_cross_entropy(z, pseudo, kept, rescale=self.unsup_rescale) for z in (z_a_u, z_b_u))
        losses["unsup"] = unsup_weight * l_u
        rescale = torch.where(kept_share > 0, 1.0 / kept_share.clamp_min(1e-12), nan) if self.unsup_rescale \
            else torch.ones_like(kept_share)
        diag.update(tau_a=tau_a, tau_b=tau_b, kept_share=kept_share, reliable_fraction=kept_share,
                    unsup_rescale=rescale, unsup_weight=torch.tensor(unsup_weight),
                    teacher_confidence=(0.5 * (p_a_u + p_b_u)).max(1).values.mean())

        # KL-rectified cross pseudo supervision
        region = slice(None) if self.kl_region == "all" else slice(n_l, None)
        kl_loss, weights = logits_a.new_zeros(()).float(), []
        if self.use_kl:
            directions = {"symmetric": ((logits_a, logits_b), (logits_b, logits_a)), "a_to_b": ((logits_a, logits_b),),
                          "b_to_a": ((logits_b, logits_a),)}[self.kl_direction]
            for teacher, student in directions:
                term, w = kl_rectified_cross_entropy(student[region], teacher[region], self.kl_temperature,
                                                     self.kl_weighting)
                kl_loss = kl_loss + self.kl_weight * term
                weights.append(w)
        diag["kl_weight_mean"] = torch.stack(weights).mean() if weights else nan
        losses["kl"] = ramp * kl_loss
        losses["cos"] = ramp * self.cos_weight * cosine_consistency(probs_a, probs_b) if self.cos_weight else \
            logits_a.new_zeros(()).float()

        # prototype alignment on the loser's unlabelled features
        proto_weight = prototype_weight(self.ssl_step, self._total_iterations(), self.proto_weight_max,
                                        self.proto_ramp_fraction)
        proto_loss = logits_a.new_zeros(()).float()
        reliable_counts = torch.zeros(num_classes, device=logits_a.device)
        candidate_counts = torch.zeros(num_classes, device=logits_a.device)
        nets = {"loser": [self._loser(b_loses, (z_a_u, feat_a), (z_b_u, feat_b))],
                "both": [("a", z_a_u, feat_a), ("b", z_b_u, feat_b)]}[self.proto_on]
        if proto_weight > 0:
            reliable_labels = torch.where(kept, pseudo, torch.full_like(pseudo, -1))
            for _, z_u, feat in nets:
                with torch.no_grad():
                    own = z_u.argmax(1)
                    candidates = torch.where(kept, torch.full_like(own, -1), own)
                term, stats = prototype_alignment_loss(
                    feat[n_l:], reliable_labels, candidates, num_classes, self.proto_sample_fraction,
                    self.proto_margin, self.proto_separation, self.proto_push_candidates)
                proto_loss = proto_loss + term
                reliable_counts, candidate_counts = stats["reliable_counts"], stats["candidate_counts"]
        losses["proto"] = proto_weight * proto_loss
        diag["proto_weight"] = torch.tensor(proto_weight)
        for c in range(num_classes):
            diag[f"reliable_voxels_c{c}"] = reliable_counts[c]
            diag[f"proto_candidates_c{c}"] = candidate_counts[c]

        # pseudo-label quality against hidden reference labels (diagnostics only): over every voxel, as every
        # trainer logs it (comparable across rows), and over the entropy-kept voxels that the CE term uses
        diag["pseudo_label_dice"] = pseudo_label_dice(pseudo, truth_u, num_classes)
        diag["pseudo_label_dice_kept"] = pseudo_label_dice(pseudo, truth_u, num_classes, kept)
        return losses, diag
