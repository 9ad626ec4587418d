"""UGPL's ablations (spec §8: class attributes of ``nnUNetTrainerUGPL``) and its tiny test/smoke variant."""
from nnunet_ssl.trainers.tiny import TINY_SCHEDULE, UnmirroredValidation
from nnunet_ssl.trainers.ugpl.trainer import nnUNetTrainerUGPL


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


class nnUNetTrainerUGPL_sigmoidRamp(nnUNetTrainerUGPL):
    """The default before 0.2: L_u, KL and cosine ramped (sigmoid) over the first 10 % of training, the prototype
    weight over the first 40 % (the paper: no ramp, prototype weight over all of training)."""
    unsup_rampup = 0.1
    proto_ramp_fraction = 0.4


class nnUNetTrainerUGPL_noRamp(nnUNetTrainerUGPL):
    """The paper's schedule, which is the default since 0.2 (kept so that commands naming it keep working)."""


class nnUNetTrainerUGPL_tiny(UnmirroredValidation, nnUNetTrainerUGPL):
    """CPU smoke/test variant: 2 epochs x 3 iterations."""
    schedule_overrides = TINY_SCHEDULE
