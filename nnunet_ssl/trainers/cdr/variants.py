"""CDR's ablations (class attributes of ``nnUNetTrainerCDR``) and its tiny test/smoke variant."""
from nnunet_ssl.trainers.cdr.trainer import nnUNetTrainerCDR
from nnunet_ssl.trainers.tiny import TINY_SCHEDULE, UnmirroredValidation


class nnUNetTrainerCDR_noRegionalContrast(nnUNetTrainerCDR):
    """MCF base + regional KD, no InfoNCE."""
    use_inter_contrast = False
    use_intra_contrast = False


class nnUNetTrainerCDR_interOnly(nnUNetTrainerCDR):
    use_intra_contrast = False


class nnUNetTrainerCDR_intraOnly(nnUNetTrainerCDR):
    use_inter_contrast = False


class nnUNetTrainerCDR_singleNetwork(nnUNetTrainerCDR):
    """Network A alone: nnU-Net's supervised loss + intra-network regional contrast; predicts with A."""
    single_network = True


class nnUNetTrainerCDR_MCF(nnUNetTrainerCDR):
    """The parent method: MCF's losses only (no region terms)."""
    use_inter_contrast = False
    use_intra_contrast = False
    use_regional_kd = False


class nnUNetTrainerCDR_poolThenSharpen(nnUNetTrainerCDR):
    """Before 0.2: the regional KD target sharpens the region-mean probabilities (a majority vote per region)."""
    regional_kd_sharpen_first = False


class nnUNetTrainerCDR_allRegionNegatives(nnUNetTrainerCDR):
    """Before 0.2: every other region is an InfoNCE negative, also those of the anchor's dominant class."""
    mask_same_class_negatives = False


class nnUNetTrainerCDR_region16(nnUNetTrainerCDR):
    """Before 0.2: 16-voxel windows whatever the patch (6 regions per image at LA's 3.5 mm plans)."""
    region_size = 16


class nnUNetTrainerCDR_leaderStopGrad(nnUNetTrainerCDR):
    """MCF-faithful inter contrast: only the non-leading network is pulled."""
    inter_stop_gradient = "leader"


class nnUNetTrainerCDR_noisyPassIntra(nnUNetTrainerCDR):
    """Before 0.2: the intra term pairs each region with the same region of a second pass of the same network on a
    noisy copy of the input (both passes with gradient; about 1.8x the default's step time)."""
    intra_pair = "noisy_pass"


class nnUNetTrainerCDR_detachedNoisyPass(nnUNetTrainerCDR_noisyPassIntra):
    """``_noisyPassIntra`` with the noisy pass run without gradient, as the target only."""
    intra_noisy_pass_grad = False


class nnUNetTrainerCDR_sameArch(nnUNetTrainerCDR):
    """Both networks from the plans' architecture (two random initialisations) instead of plain + residual."""
    second_network = "same"


class nnUNetTrainerCDR_tiny(UnmirroredValidation, nnUNetTrainerCDR):
    """CPU smoke/test variant: 2 epochs x 3 iterations."""
    schedule_overrides = TINY_SCHEDULE
