"""BoCLIS's ablations (class attributes of ``nnUNetTrainerBoCLIS``) and its tiny test/smoke variant."""
from nnunet_ssl.trainers.boclis.trainer import nnUNetTrainerBoCLIS
from nnunet_ssl.trainers.tiny import TINY_SCHEDULE, UnmirroredValidation


class nnUNetTrainerBoCLIS_exportTeacher(nnUNetTrainerBoCLIS):
    """Predict with the most conservative teacher (α = 0.999) instead of the student."""
    export_weights = "teacher"


class nnUNetTrainerBoCLIS_singleTeacher(nnUNetTrainerBoCLIS):
    """Ablation: one EMA teacher (α = 0.99), i.e. no conservative-to-radical ensemble."""
    teacher_decays = (0.99,)


class nnUNetTrainerBoCLIS_twoTeachers(nnUNetTrainerBoCLIS):
    """Ablation (spec §2.1): K = 2 with α = 0.999, 0.99."""
    teacher_decays = (0.999, 0.99)


class nnUNetTrainerBoCLIS_uniformAggregation(nnUNetTrainerBoCLIS):
    """Ablation: teachers averaged with equal weights (no uncertainty weighting)."""
    aggregation_weighting = "uniform"


class nnUNetTrainerBoCLIS_randomPatches(nnUNetTrainerBoCLIS):
    """Ablation: anchor windows around a random voxel of the class instead of a boundary voxel."""
    edge_sampling = "random"


class nnUNetTrainerBoCLIS_noContrast(nnUNetTrainerBoCLIS):
    """Ablation: teachers + aggregation + L_u only."""
    use_contrast = False


class nnUNetTrainerBoCLIS_patch32(nnUNetTrainerBoCLIS):
    """The paper's fixed 32³ (64² in 2D) region crops, also where the training patch is smaller on an axis."""
    contrast_patch_size = 32


class nnUNetTrainerBoCLIS_tiny(UnmirroredValidation, nnUNetTrainerBoCLIS):
    """CPU smoke/test variant: 2 epochs x 3 iterations, 16³ / 16² contrast patches."""
    schedule_overrides = {**TINY_SCHEDULE, "contrast_patch_size": 16}
