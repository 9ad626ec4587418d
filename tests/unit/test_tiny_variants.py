"""The test-only variants' final validation runs without mirroring and leaves the trainer's mirroring axes as
they were (checkpoints and later predictions keep nnU-Net's axes)."""
import pytest

from conftest import load_script
from nnunet_ssl.trainers.boclis import nnUNetTrainerBoCLIS_tiny
from nnunet_ssl.trainers.cdr import nnUNetTrainerCDR_tiny
from nnunet_ssl.trainers.crln import nnUNetTrainerCRLN_tiny
from nnunet_ssl.trainers.mean_teacher import nnUNetTrainerMeanTeacher_demo, nnUNetTrainerMeanTeacher_tiny
from nnunet_ssl.trainers.tiny import UnmirroredValidation
from nnunet_ssl.trainers.ugpl import nnUNetTrainerUGPL_tiny

test_trainers = load_script("tests/trainers/nnunet_ssl_test_trainers.py")  # on nnUNet_extTrainer in the e2e tests


class RecordingValidation:
    def __init__(self):
        self.inference_allowed_mirroring_axes = (0, 1, 2)
        self.seen = None

    def perform_actual_validation(self, save_probabilities=False):
        self.seen = self.inference_allowed_mirroring_axes
        if save_probabilities:
            raise RuntimeError("validation failed")
        return "validated"


class Probe(UnmirroredValidation, RecordingValidation):
    pass


def test_validation_unmirrored_and_axes_restored():
    probe = Probe()
    assert probe.perform_actual_validation() == "validated"
    assert probe.seen is None and probe.inference_allowed_mirroring_axes == (0, 1, 2)
    with pytest.raises(RuntimeError):  # restored on failure too
        probe.perform_actual_validation(save_probabilities=True)
    assert probe.inference_allowed_mirroring_axes == (0, 1, 2)


@pytest.mark.parametrize("trainer", [nnUNetTrainerMeanTeacher_tiny, test_trainers.nnUNetTrainerMeanTeacher_tinyResume,
                                     nnUNetTrainerCRLN_tiny, test_trainers.nnUNetTrainerCRLN_tinyResume,
                                     nnUNetTrainerCDR_tiny, test_trainers.nnUNetTrainerCDR_tinyResume,
                                     nnUNetTrainerUGPL_tiny, test_trainers.nnUNetTrainerUGPL_tinyResume,
                                     nnUNetTrainerBoCLIS_tiny, test_trainers.nnUNetTrainerBoCLIS_tinyResume])
def test_test_variants_validate_unmirrored(trainer):
    assert issubclass(trainer, UnmirroredValidation)


def test_demo_validates_like_nnunet():
    assert not issubclass(nnUNetTrainerMeanTeacher_demo, UnmirroredValidation)


def test_demo_pair_trains_the_same_iterations(monkeypatch):
    """scripts/demo.sh compares labelled-only and CRLN at equal iterations: both demo variants get DEMO_SCHEDULE,
    the labelled-only one (a stock nnUNetTrainer) after nnU-Net's __init__ has set its own defaults."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunet_ssl.trainers.crln import nnUNetTrainerCRLN_demo
    from nnunet_ssl.trainers.labeled_only import nnUNetTrainer_demo
    from nnunet_ssl.trainers.tiny import DEMO_SCHEDULE

    def stock_defaults(self, *args, **kwargs):
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 1000, 250, 50
    monkeypatch.setattr(nnUNetTrainer, "__init__", stock_defaults)
    labeled_only = nnUNetTrainer_demo({}, "2d", 0, {})
    assert {k: getattr(labeled_only, k) for k in DEMO_SCHEDULE} == DEMO_SCHEDULE
    assert nnUNetTrainerCRLN_demo.schedule_overrides == DEMO_SCHEDULE == nnUNetTrainerMeanTeacher_demo.schedule_overrides
    assert not issubclass(nnUNetTrainerCRLN_demo, UnmirroredValidation)


def test_apply_schedule_refuses_a_name_nnunet_does_not_have():
    from nnunet_ssl.trainers.base import apply_schedule

    class Trainer:
        num_epochs = 1000
    trainer = Trainer()
    apply_schedule(trainer, {"num_epochs": 3})
    assert trainer.num_epochs == 3
    with pytest.raises(AttributeError, match="num_epoch'"):
        apply_schedule(trainer, {"num_epoch": 3})  # a typo would otherwise leave nnU-Net's 1000 epochs in place
