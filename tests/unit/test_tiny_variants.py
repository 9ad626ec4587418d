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
