"""Trainer variants only the tests use: the tiny variants plus a simulated crash and a record of the state right
after ``--c``. nnU-Net finds them through ``nnUNet_extTrainer``, to which ``tests/conftest.py`` adds this folder.

Driven by environment variables (nnU-Net passes trainers no other arguments):
``NNUNET_SSL_TEST_CRASH_AFTER_EPOCH=k`` raises after epoch k's ``checkpoint_latest`` is written;
``NNUNET_SSL_TEST_RECORD_RESUME=file`` saves the trainer's state right after ``load_checkpoint``.
"""
import os

import torch

from nnunet_ssl.trainers.boclis import nnUNetTrainerBoCLIS_tiny
from nnunet_ssl.trainers.cdr import nnUNetTrainerCDR_tiny
from nnunet_ssl.trainers.crln import nnUNetTrainerCRLN_tiny
from nnunet_ssl.trainers.mean_teacher import nnUNetTrainerMeanTeacher_tiny
from nnunet_ssl.trainers.self_training import nnUNetTrainerSelfTraining_tiny
from nnunet_ssl.trainers.tiny import UnmirroredValidation
from nnunet_ssl.trainers.ugpl import nnUNetTrainerUGPL_tiny


class ResumeTestHooks(UnmirroredValidation):
    """Crash after an epoch, record the state after ``load_checkpoint`` (see the module docstring); a checkpoint
    after every epoch."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.save_every = 1

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
            torch.save(self.resume_record(), record)

    def resume_record(self) -> dict:
        return {"ssl_step": self.ssl_step, "current_epoch": self.current_epoch,
                "student": self.student.state_dict(),
                "teacher": dict(self.teacher.state_dict()) if self.teachers else {},
                "teacher_step": self.teacher.step if self.teachers else None,
                "extra_modules": self.extra_modules.state_dict(),
                "extra_optimizers": {k: o.state_dict() for k, o in self.extra_optimizers.items()}}


class nnUNetTrainerMeanTeacher_tinyResume(ResumeTestHooks, nnUNetTrainerMeanTeacher_tiny):
    pass


class nnUNetTrainerCRLN_tinyResume(ResumeTestHooks, nnUNetTrainerCRLN_tiny):
    pass


class nnUNetTrainerBoCLIS_tinyResume(ResumeTestHooks, nnUNetTrainerBoCLIS_tiny):
    def resume_record(self) -> dict:  # every teacher and the method state too
        return {**super().resume_record(), "all_teachers": {k: t.state_dict() for k, t in self.teachers.items()},
                "method_state": self.method_checkpoint_state()}


class nnUNetTrainerCDR_tinyResume(ResumeTestHooks, nnUNetTrainerCDR_tiny):
    def resume_record(self) -> dict:  # leader statistics and network A's optimizer too
        return {**super().resume_record(), "leader_counts": dict(self.leader_counts),
                "optimizer": self.optimizer.state_dict()}


class nnUNetTrainerUGPL_tinyResume(ResumeTestHooks, nnUNetTrainerUGPL_tiny):
    pass


class nnUNetTrainerSelfTraining_tinyResume(ResumeTestHooks, nnUNetTrainerSelfTraining_tiny):
    """A self-training stage of ``nnUNetv2_ssl_self_train`` cut off and continued with ``--c``."""
