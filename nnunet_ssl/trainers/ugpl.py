"""``nnUNetTrainerUGPL``: dual networks with uncertainty-guided pseudo-labelling (seed 003, spec ``ugpl.md``).

Two students (A = PlainConvUNet, B = ResidualEncoderUNet with a ResNet34-like encoder, from the plans) train on the
same labelled + unlabelled tensors. Per network: nnU-Net's Dice+CE plus α·L_cr (MCF cross-reliable term). Between
them: a union pseudo-label on unlabelled voxels filtered by a per-batch entropy percentile (CCE, L_u rescaled by
N/N_kept), KL-rectified cross pseudo supervision ``mean(exp(-KL)·CE) + mean(KL)`` (symmetric by default), a cosine
consistency term, and on the network that is worse on the labelled batch (the loser) a prototype alignment of its
uncertain voxels' decoder features. Prediction averages both networks' softmax (``DualNetwork``).

The *intended* method is implemented, not the authors' code (spec §6): L_u is CE on logits with gradient, L_c keeps
its gradient (only statistics are under no_grad), entropy is computed on probabilities, the prototype term pushes
classes apart instead of pulling them together.
"""
import math
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.helpers import softmax_helper_dim1
from torch.nn import functional as F

from nnunet_ssl.diagnostics import pseudo_label_dice
from nnunet_ssl.losses.one_hot import one_hot
from nnunet_ssl.losses.prototypes import class_prototypes, gather_voxel_features, sample_class_voxels
from nnunet_ssl.modules.features import DecoderFeatureTap
from nnunet_ssl.ramps import sigmoid_rampup
from nnunet_ssl.trainers.base import first_output
from nnunet_ssl.trainers.dual_base import nnUNetTrainerDualSSL
from nnunet_ssl.trainers.tiny import TINY_SCHEDULE, UnmirroredValidation

# nnU-Net's ResEnc planner preset (residual_encoder_unet_planners.py): a ResNet34-like encoder, the analogue of the
# reference 3D-ResNet34 U-Net (spec §9.1)
# ------------------------------------------------------------------------------------------------ loss formulas
def softmax_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-voxel entropy ``-Σ_c p_c log(p_c + 1e-10)`` of probabilities (B, C, *spatial) -> (B, *spatial)."""
    probs = probs.float()
    return -(probs * torch.log(probs + 1e-10)).sum(1)


def numpy_percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """``np.percentile(values, q)`` (linear interpolation) of all elements; kthvalue instead of torch.quantile,
    which refuses more than 2^24 elements."""
    flat = values.reshape(-1).float()
    if flat.numel() == 0:
        raise ValueError("percentile of an empty set of voxels")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must lie in [0, 100], got {q}")
    pos = q / 100.0 * (flat.numel() - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    v_lo = torch.kthvalue(flat, lo + 1).values
    v_hi = v_lo if hi == lo else torch.kthvalue(flat, hi + 1).values
    return v_lo + (pos - lo) * (v_hi - v_lo)


def entropy_keep_mask(entropy_a: torch.Tensor, entropy_b: torch.Tensor, keep_percent: float,
                      valid: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CCE mask (spec §3.4 steps 3-4): (kept, τ_A, τ_B).

    τ_k is the ``keep_percent``-th percentile of network k's entropy over the valid voxels of the batch; a voxel
    is kept when it lies below its threshold in at least one network (a voxel at τ counts as uncertain)."""
    if valid is None:  # every voxel counts: no boolean selection, no host sync
        tau_a = numpy_percentile(entropy_a, keep_percent)
        tau_b = numpy_percentile(entropy_b, keep_percent)
        return (entropy_a < tau_a) | (entropy_b < tau_b), tau_a, tau_b
    if not valid.any():
        nan = torch.full((), float("nan"), device=entropy_a.device)
        return torch.zeros_like(valid), nan, nan
    tau_a = numpy_percentile(entropy_a[valid], keep_percent)
    tau_b = numpy_percentile(entropy_b[valid], keep_percent)
    kept = ((entropy_a < tau_a) | (entropy_b < tau_b)) & valid
    return kept, tau_a, tau_b


def union_pseudo_labels(probs_a: torch.Tensor, probs_b: torch.Tensor) -> torch.Tensor:
    """Shared pseudo-label (spec §3.4 step 1): agreement; else the foreground one if the other says background;
    else the class its own network is more confident in. For two classes this is ``argmax_A OR argmax_B``."""
    conf_a, a = probs_a.max(1)
    conf_b, b = probs_b.max(1)
    by_confidence = torch.where(conf_a >= conf_b, a, b)
    return torch.where(a == b, a, torch.where(a == 0, b, torch.where(b == 0, a, by_confidence)))


def rescaled_masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, kept: torch.Tensor,
                                  valid: Optional[torch.Tensor] = None, rescale: bool = True) -> torch.Tensor:
    """L_u (spec §3.4 step 5): ``(N / N_kept) · mean_{kept} CE(logits, labels)``; 0 (with a graph) if nothing is
    kept. N counts the valid voxels. Gradient flows into ``logits`` only."""
    ce = F.cross_entropy(logits.float(), labels.long(), reduction="none")
    kept = kept.float()
    n_kept = kept.sum()
    n_valid = float(kept.numel()) if valid is None else valid.float().sum()
    loss = (ce * kept).sum() / n_kept.clamp_min(1.0)
    if rescale:
        loss = loss * n_valid / n_kept.clamp_min(1.0)
    return loss


def kl_rectified_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                               temperature: float = 0.5, weighting: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """L_kl^{j->k} (spec §3.5): ``mean(exp(-KL)·CE(student, argmax teacher)) + mean(KL)``, KL(teacher‖student).

    The teacher is detached; ``w = exp(-KL)`` is not (rectification, as in Zheng & Yang). ``temperature`` only
    sharpens before the argmax and therefore has no effect (kept as the documented reference parameter).
    ``weighting=False``: plain cross pseudo supervision ``mean(CE)``. Returns (loss, mean weight)."""
    if temperature <= 0:
        raise ValueError(f"kl_temperature must be > 0, got {temperature}")
    teacher = teacher_logits.detach().float()
    log_p_student = F.log_softmax(student_logits.float(), 1)
    pseudo = (teacher / temperature).argmax(1)
    ce = F.nll_loss(log_p_student, pseudo, reduction="none")
    if not weighting:
        return ce.mean(), torch.ones((), device=ce.device)
    kl = F.kl_div(log_p_student, F.log_softmax(teacher, 1), reduction="none", log_target=True).sum(1)
    weight = torch.exp(-kl)
    return (weight * ce).mean() + kl.mean(), weight.detach().mean()


def cosine_consistency(probs_a: torch.Tensor, probs_b: torch.Tensor) -> torch.Tensor:
    """L_cos = mean over voxels of ``1 - cos(p_A, p_B)`` along classes (no detach: both networks learn)."""
    return (1.0 - F.cosine_similarity(probs_a.float(), probs_b.float(), dim=1, eps=1e-8)).mean()


def cross_reliable_losses(probs_a: torch.Tensor, probs_b: torch.Tensor, seg: torch.Tensor,
                          threshold: float = 0.6, valid: Optional[torch.Tensor] = None
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """MCF's L_cr on labelled voxels (spec §3.2): (L_cr^A, L_cr^B).

    ``conf_k = argmax p_k ≠ 0 ∧ max p_k ≥ threshold``; ``M = conf_A XOR conf_B`` (no gradient, valid voxels only);
    ``L_cr^k = Σ_M ½‖p_k − onehot(y)‖² / (|M| + 1e-16)``, which is ``(p_fg − y)²`` for two classes."""
    with torch.no_grad():
        def confident(p):
            conf, cls = p.max(1)
            return (cls != 0) & (conf >= threshold)
        mask = confident(probs_a) ^ confident(probs_b)
        if valid is not None:
            mask = mask & valid
        mask = mask.float()
        target = one_hot(seg.long().clamp_min(0) * mask.long(), probs_a.shape[1])
    denom = mask.sum() + 1e-16
    losses = []
    for p in (probs_a, probs_b):
        sq = 0.5 * ((p.float() - target) ** 2).sum(1)
        losses.append((sq * mask).sum() / denom)
    return losses[0], losses[1]


def _unit_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # the 1e-12 keeps the gradient finite for a candidate sitting exactly on its prototype
    return torch.sqrt(((a - b) ** 2).sum(-1) + 1e-12)


def prototype_alignment_loss(features: torch.Tensor, reliable_labels: torch.Tensor, candidate_labels: torch.Tensor,
                             num_classes: int, sample_fraction: float = 0.01, margin: float = 1.0,
                             separation: str = "hinge", push_candidates: bool = True
                             ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """L_c (spec §3.7) on one network's features (B, F, *spatial); labels (B, *spatial), -1 = not in the set.

    Prototypes μ̂_c: L2-normalised means of the raw features of reliable voxels of class c. Per class with a
    prototype, ``floor(fraction·|U_c|)`` uncertain candidates are drawn and L2-normalised;
    ``pull = Σ_c mean d(f̂, sg μ̂_c)``, ``push = Σ_c mean max(0, m − min_{k≠c} d(f̂, sg μ̂_k))``,
    ``sep = mean_{c<k} max(0, m − d(μ̂_c, μ̂_k))`` (prototypes not detached). ``separation='code_pull'`` replaces
    sep by ``+mean d(μ̂_c, μ̂_k)`` (the authors' sign bug, for ablation); 'none' drops it.
    With no candidate sampled at all, L_c is 0. Returns (loss, stats: reliable / candidate counts per class)."""
    if separation not in ("hinge", "code_pull", "none"):
        raise ValueError(f"proto_separation must be 'hinge', 'code_pull' or 'none', got {separation!r}")
    features = features.float()
    protos, reliable_counts = class_prototypes(features, reliable_labels, num_classes)
    present = reliable_counts > 0
    unit = F.normalize(protos, dim=1, eps=1e-12)
    anchors = unit.detach()
    candidate_counts = torch.stack([(candidate_labels == c).sum() for c in range(num_classes)]).float()
    stats = {"reliable_counts": reliable_counts.detach(), "candidate_counts": candidate_counts}
    # fixed-shape sampling and masked means: nothing here waits for the device
    indices, taken = sample_class_voxels(candidate_labels, num_classes, sample_fraction)   # (C, S)
    taken = taken & present[:, None]                 # only classes with a prototype pull their candidates
    if indices.shape[1] == 0:
        return features.sum() * 0.0, stats
    size = indices.shape[1]
    cand = F.normalize(gather_voxel_features(features, indices.reshape(-1)), dim=1, eps=1e-12)
    cand = cand.view(num_classes, size, -1)                                                 # (C, S, F)
    n_taken = taken.sum(dim=1).clamp_min(1)
    pull = _unit_distance(cand, anchors[:, None, :])                                       # (C, S)
    loss = ((pull * taken).sum(dim=1) / n_taken).sum()
    if push_candidates:
        to_each = _unit_distance(cand[:, :, None, :], anchors[None, None, :, :])            # (C, S, C)
        own = torch.eye(num_classes, dtype=torch.bool, device=features.device)
        other_present = present[None, :] & ~own                                            # (C, C): k ≠ c, present
        to_each = to_each.masked_fill(~other_present[:, None, :], float("inf"))
        push = F.relu(margin - to_each.min(dim=2).values)                                  # 0 without other class
        loss = loss + ((push * taken).sum(dim=1) / n_taken).sum()
    if separation != "none":
        upper = torch.ones(num_classes, num_classes, dtype=torch.bool, device=features.device).triu(1)
        pair = present[:, None] & present[None, :] & upper                                 # c < k, both present
        d = _unit_distance(unit[:, None, :], unit[None, :, :])                              # (C, C)
        term = F.relu(margin - d) if separation == "hinge" else d
        loss = loss + (term * pair).sum() / pair.sum().clamp_min(1)
    # with no candidate sampled at all, L_c is 0
    return torch.where(taken.any(), loss, features.sum() * 0.0), stats


def prototype_weight(step: int, total_steps: int, max_weight: float = 0.1, ramp_fraction: float = 1.0) -> float:
    """λ_c(s) = max · exp(−5 (1 − min(s / (ramp_fraction·total), 1))²)."""
    return max_weight * sigmoid_rampup(step, ramp_fraction * total_steps)


def loser_is_b(dice_loss_a, dice_loss_b):
    """The loser has the higher labelled Dice loss; on a tie A loses (the reference's V-Net). Floats give a bool,
    tensors a bool tensor (no host sync)."""
    return dice_loss_b > dice_loss_a


# ----------------------------------------------------------------------------------------------------- trainer
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
    # sigmoid ramp of the unsupervised terms (L_u, KL and cosine) over this fraction of training: at step 0 they
    # would otherwise train both networks at full weight on each other's random predictions (paper and code: 0,
    # the `_noRamp` variant)
    unsup_rampup = 0.1
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
    proto_ramp_fraction = 0.4        # paper: over all of training, when the learning rate is already near zero
    proto_on = "loser"               # 'loser' | 'both'
    proto_sample_fraction = 0.01     # ρ
    proto_margin = 1.0
    proto_separation = "hinge"       # 'hinge' | 'code_pull' (authors' sign bug) | 'none'
    proto_push_candidates = True

    ssl_log_keys = nnUNetTrainerDualSSL.ssl_log_keys + (
        "cr_loss", "kl_loss", "cos_loss", "proto_loss", "sup_a", "sup_b", "dice_loss_a", "dice_loss_b",
        "loser_is_b", "tau_a", "tau_b", "kept_share", "unsup_rescale", "kl_weight_mean", "proto_weight",
        "pseudo_label_dice_all")

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

        def labelled(out):
            return [o[:n_l] for o in out] if isinstance(out, (list, tuple)) else out[:n_l]
        sup_a = self.loss(labelled(out_a), target_l)
        sup_b = self.loss(labelled(out_b), target_l)
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

        # pseudo-label quality against hidden reference labels (diagnostics only)
        diag["pseudo_label_dice"] = pseudo_label_dice(pseudo, truth_u, num_classes, kept)
        diag["pseudo_label_dice_all"] = pseudo_label_dice(pseudo, truth_u, num_classes)
        return losses, diag


# ------------------------------------------------------------------------------------------ ablations (spec §8)
class nnUNetTrainerUGPL_noEntropyFilter(nnUNetTrainerUGPL):
    entropy_filter = False  # every unlabelled voxel kept: N/N_kept = 1, no candidates, L_c = 0


class nnUNetTrainerUGPL_noKL(nnUNetTrainerUGPL):
    use_kl = False


class nnUNetTrainerUGPL_klUnweighted(nnUNetTrainerUGPL):
    kl_weighting = False  # w ≡ 1, no +KL: plain cross pseudo supervision


class nnUNetTrainerUGPL_noProto(nnUNetTrainerUGPL):
    proto_weight_max = 0.0


class nnUNetTrainerUGPL_noCR(nnUNetTrainerUGPL):
    cr_weight = 0.0


class nnUNetTrainerUGPL_noCos(nnUNetTrainerUGPL):
    cos_weight = 0.0


class nnUNetTrainerUGPL_keep20(nnUNetTrainerUGPL):
    entropy_keep_percent = 20.0  # the authors' percentile


class nnUNetTrainerUGPL_klOneWay(nnUNetTrainerUGPL):
    kl_direction = "a_to_b"  # the authors' direction: A (V-Net analogue) teaches B


class nnUNetTrainerUGPL_sameArch(nnUNetTrainerUGPL):
    second_network = "same"


class nnUNetTrainerUGPL_protoCodeSign(nnUNetTrainerUGPL):
    proto_separation = "code_pull"  # measures the authors' sign bug
    proto_push_candidates = False


class nnUNetTrainerUGPL_noRamp(nnUNetTrainerUGPL):
    """Paper and code: unsupervised terms at full weight from step 0, prototype weight ramped over all training."""
    unsup_rampup = 0.0
    proto_ramp_fraction = 1.0


class nnUNetTrainerUGPL_tiny(UnmirroredValidation, nnUNetTrainerUGPL):
    """CPU smoke/test variant: 2 epochs x 3 iterations."""
    schedule_overrides = TINY_SCHEDULE
