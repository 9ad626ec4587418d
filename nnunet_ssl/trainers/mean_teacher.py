"""``nnUNetTrainerMeanTeacher``: weak-to-strong consistency with an EMA teacher (seed 001, eqs. 1-2).

The teacher predicts on the weak view (nnU-Net's spatial augmentation and mirroring); its confident voxels (max
softmax >= τ) become hard pseudo-labels for the student's prediction on the strong view (the weak view plus nnU-Net's
intensity augmentation, CutMix, brightness, contrast and noise; pseudo-labels mixed identically), with CE (+ optional
soft Dice) weighted by a sigmoid ramp-up. It is a useful trainer on its own and
the baseline row of every method's ablation table.
"""
import torch
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.helpers import softmax_helper_dim1

from nnunet_ssl.diagnostics import pseudo_label_dice
from nnunet_ssl.losses.pseudo_label import confidence_pseudo_labels, weighted_cross_entropy
from nnunet_ssl.trainers.base import first_output, nnUNetTrainerSSL, split_batch
from nnunet_ssl.trainers.tiny import DEMO_SCHEDULE, TINY_SCHEDULE, UnmirroredValidation


class nnUNetTrainerMeanTeacher(nnUNetTrainerSSL):
    confidence_threshold = 0.95      # τ
    unsup_weight = 1.0               # λ_u
    unsup_rampup = 0.4               # fraction of training until λ_u is reached
    use_pseudo_label_dice = False    # add soft Dice on the reliable pseudo-labels to the CE

    def make_pseudo_labels(self, data_u):
        """Teacher forward on the weak view: (labels, confidence, reliable mask)."""
        with torch.no_grad():
            logits = first_output(self.teacher_forward(data_u))
        return confidence_pseudo_labels(logits, self.confidence_threshold)

    def compute_losses(self, data_l, target_l, data_u, truth_u):
        labels_u, conf_u, reliable_u = self.make_pseudo_labels(data_u)
        diagnostics = {
            "teacher_confidence": conf_u.mean(),
            "reliable_fraction": reliable_u.float().mean(),
            "pseudo_label_dice": pseudo_label_dice(labels_u, truth_u, self.label_manager.num_segmentation_heads),
        }
        if self.use_strong_view:
            strong_u, mix = self.strong_view(data_u)
            labels_u, reliable_u = mix.apply_to_targets(labels_u, reliable_u)
        else:
            strong_u = data_u
        out_l, out_u = split_batch(self.joint_forward(self.network, data_l, strong_u), data_l.shape[0])
        logits_u = first_output(out_u)
        sup = self.loss(out_l, target_l)
        unsup = weighted_cross_entropy(logits_u, labels_u, reliable_u)
        if self.use_pseudo_label_dice:
            # ddp must match the run: its default (True) all-gathers and fails in single-process training
            dice = MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, batch_dice=True, do_bg=False,
                                               smooth=1e-5, ddp=self.is_ddp)
            unsup = unsup + dice(logits_u, labels_u[:, None], loss_mask=reliable_u[:, None].float())
        weight = self.current_unsup_weight()
        diagnostics["unsup_weight"] = torch.tensor(weight)
        return {"sup": sup, "unsup": weight * unsup}, diagnostics


class nnUNetTrainerMeanTeacher_noStrongView(nnUNetTrainerMeanTeacher):
    """Ablation: teacher and student see the same weak view (classic Mean Teacher with hard pseudo-labels)."""
    use_strong_view = False


class nnUNetTrainerMeanTeacher_withDice(nnUNetTrainerMeanTeacher):
    use_pseudo_label_dice = True


class nnUNetTrainerMeanTeacher_nnUNetView(nnUNetTrainerMeanTeacher):
    """Before 0.2: the teacher labels nnU-Net's fully augmented view (intensity transforms included), and the strong
    view adds the device-side operations to it."""
    unlabeled_view = "nnunet"


class nnUNetTrainerMeanTeacher_exportStudent(nnUNetTrainerMeanTeacher):
    """Predict with the student instead of the EMA teacher."""
    export_weights = "student"


class nnUNetTrainerMeanTeacher_tiny(UnmirroredValidation, nnUNetTrainerMeanTeacher):
    schedule_overrides = TINY_SCHEDULE


class nnUNetTrainerMeanTeacher_demo(nnUNetTrainerMeanTeacher):
    """The demo's schedule (``TRAINER=nnUNetTrainerMeanTeacher_demo bash scripts/demo.sh``)."""
    schedule_overrides = DEMO_SCHEDULE
