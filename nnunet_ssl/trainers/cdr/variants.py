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


class nnUNetTrainerCDR_deepToShallowIntra(nnUNetTrainerCDR):
    """Spec §4.3's cheaper alternative (the default of the last 0.2 development builds): the intra term contrasts
    each region's last-decoder-stage embedding with the same region seen by the bottleneck in the same pass (its own
    projection head), no second pass, no intra KD and no dropout, as its LA records were measured; about 0.55x the
    two-pass step time on LA's CPU plans."""
    intra_pair = "deep_to_shallow"
    dropout_p = 0.0


class nnUNetTrainerCDR_noIntraKD(nnUNetTrainerCDR):
    """Ablation: the two-pass intra term with InfoNCE only (no regional KD between the passes)."""
    use_intra_kd = False


class nnUNetTrainerCDR_noDropout(nnUNetTrainerCDR):
    """Ablation: no dropout on the last decoder stage (the two passes differ by the input noise only)."""
    dropout_p = 0.0


class nnUNetTrainerCDR_noisyPassIntra(nnUNetTrainerCDR):
    """The two-pass intra term as measured before 0.2 (its LA record): InfoNCE only, no KD, no dropout."""
    use_intra_kd = False
    dropout_p = 0.0


class nnUNetTrainerCDR_detachedNoisyPass(nnUNetTrainerCDR_noisyPassIntra):
    """``_noisyPassIntra`` with the noisy pass run without gradient, as the target only."""
    intra_noisy_pass_grad = False


class nnUNetTrainerCDR_sameArch(nnUNetTrainerCDR):
    """Both networks from the plans' architecture (two random initialisations) instead of plain + residual."""
    second_network = "same"


class nnUNetTrainerCDR_tiny(UnmirroredValidation, nnUNetTrainerCDR):
    """CPU smoke/test variant: 2 epochs x 3 iterations."""
    schedule_overrides = TINY_SCHEDULE
