"""Tiny variants for tests and smoke runs on a CPU: 2 epochs of 3 iterations, 1 validation iteration."""
import os

import torch

from nnunet_ssl.trainers.mean_teacher import nnUNetTrainerMeanTeacher

TINY_SCHEDULE = {"num_epochs": 2, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 1}


class UnmirroredValidation:
    """Mixin for test variants: the final validation predicts without mirroring, which costs 8x the CPU time
    (2^3 flips) and adds no code path of ours; the checkpoints keep nnU-Net's mirroring axes."""

    def perform_actual_validation(self, save_probabilities: bool = False):
        axes, self.inference_allowed_mirroring_axes = self.inference_allowed_mirroring_axes, None
        try:
            return super().perform_actual_validation(save_probabilities)
        finally:
            self.inference_allowed_mirroring_axes = axes


class nnUNetTrainerMeanTeacher_tiny(UnmirroredValidation, nnUNetTrainerMeanTeacher):
    schedule_overrides = TINY_SCHEDULE


class ResumeTestHooks(UnmirroredValidation):
    """Mixin for resume tests (validating like UnmirroredValidation), driven by environment variables (nnU-Net
    passes no other arguments):
    NNUNET_SSL_TEST_CRASH_AFTER_EPOCH=k raises after epoch k's checkpoint_latest is written;
    NNUNET_SSL_TEST_RECORD_RESUME=file saves the trainer's state right after load_checkpoint."""

    def on_epoch_end(self):
        epoch = self.current_epoch
        super().on_epoch_end()
        crash = os.environ.get("NNUNET_SSL_TEST_CRASH_AFTER_EPOCH")
        if crash is not None and epoch == int(crash):
            raise RuntimeError(f"simulated crash after epoch {epoch}")

    def load_checkpoint(self, filename_or_checkpoint):
        super().load_checkpoint(filename_or_checkpoint)
        record = os.environ.get("NNUNET_SSL_TEST_RECORD_RESUME")
        if record:
            torch.save({"ssl_step": self.ssl_step, "current_epoch": self.current_epoch,
                        "student": self.student.state_dict(),
                        "teacher": {k: v for k, v in self.teacher.state_dict().items()} if self.teachers else {},
                        "teacher_step": self.teacher.step if self.teachers else None,
                        "extra_modules": self.extra_modules.state_dict(),
                        "extra_optimizers": {k: o.state_dict() for k, o in self.extra_optimizers.items()}},
                       record)


class nnUNetTrainerMeanTeacher_tinyResume(ResumeTestHooks, nnUNetTrainerMeanTeacher):
    schedule_overrides = {**TINY_SCHEDULE, "save_every": 1}


class nnUNetTrainerMeanTeacher_demo(nnUNetTrainerMeanTeacher):
    """The README demo: 4 epochs of 25 iterations, a few minutes on a 2-core CPU at 32^3."""
    schedule_overrides = {"num_epochs": 4, "num_iterations_per_epoch": 25, "num_val_iterations_per_epoch": 4}
