"""CRLN's ablations (class attributes of ``nnUNetTrainerCRLN``) and its tiny test/smoke variant."""
import dataclasses

from nnunet_ssl.trainers.crln.trainer import nnUNetTrainerCRLN
from nnunet_ssl.trainers.tiny import DEMO_SCHEDULE, TINY_SCHEDULE, UnmirroredValidation


class nnUNetTrainerCRLN_noStrongView(nnUNetTrainerCRLN):
    """Ablation: no CutMix / noise / intensity; the student sees the weak view."""
    use_strong_view = False


class nnUNetTrainerCRLN_noCutMix(nnUNetTrainerCRLN):
    """Ablation: strong view without CutMix (intensity and noise only)."""
    strong_augmentation = dataclasses.replace(nnUNetTrainerCRLN.strong_augmentation, p_cutmix=0.0)


class nnUNetTrainerCRLN_noDIM(nnUNetTrainerCRLN):
    """Ablation: no prototypes/DIM, hence no rectification; CPS positives are class means."""
    use_dim = False


class nnUNetTrainerCRLN_noCPS(nnUNetTrainerCRLN):
    use_cps = False


class nnUNetTrainerCRLN_paperCPSWeight(nnUNetTrainerCRLN):
    """The paper's and the authors' CPS weight 0.5 (the default is 0.05). Measured before 0.2 on LA's 3.5 mm plans
    (4 labelled, ``scripts/loss_gradients.py`` on the final checkpoint): the CPS gradient norm was about 10x the
    supervised one and its InfoNCE stayed near chance level. Which weight is the default is settled by the
    confirmation rule of docs/methods.md (0.05 stays only if it scores higher on each of LA folds 1 and 2)."""
    cps_weight = 0.5


class nnUNetTrainerCRLN_codeCPSWeight(nnUNetTrainerCRLN_paperCPSWeight):
    """Former name of ``_paperCPSWeight`` (its LA record was measured with the pre-0.2 head and rotation)."""


class nnUNetTrainerCRLN_mlpCPSHead(nnUNetTrainerCRLN):
    """The CPS head used before 0.2: conv1 -> LeakyReLU -> conv1, L2-normalised (spec §3.1: conv3 -> BN -> ReLU ->
    conv1)."""
    cps_head = "mlp"


class nnUNetTrainerCRLN_squareOnlyRotation(nnUNetTrainerCRLN):
    """Before 0.2: the strong view's quarter turns only on square in-plane patches (never on LA's 28 x 36)."""
    strong_augmentation = dataclasses.replace(nnUNetTrainerCRLN.strong_augmentation, rotate_non_square=False)


class nnUNetTrainerCRLN_mlpHeadSquareRotation(nnUNetTrainerCRLN):
    """CRLN as its LA records before 0.2 were measured: the MLP CPS head and quarter turns only on square planes."""
    cps_head = "mlp"
    strong_augmentation = dataclasses.replace(nnUNetTrainerCRLN.strong_augmentation, rotate_non_square=False)


class nnUNetTrainerCRLN_posMean(nnUNetTrainerCRLN):
    """Ablation (Tab. 5 'MR'): CPS positives from the class-mean embedding only."""
    cps_positive = "mean"


class nnUNetTrainerCRLN_posPrototype(nnUNetTrainerCRLN):
    """Ablation (Tab. 5 'LP'): CPS positives from the teacher's prototypes only (class mean before T_rect)."""
    cps_positive = "prototype"


class nnUNetTrainerCRLN_rawPrototypeDescriptor(nnUNetTrainerCRLN):
    """Authors' code: P̃ from the raw prototype parameter (its channel means stay 0, so the positive is the class
    mean, as in ``_posMean``)."""
    cps_prototype_source = "parameter"


class nnUNetTrainerCRLN_singlePrototype(nnUNetTrainerCRLN):
    """Ablation (Fig. 10): one prototype per class (the CPS embedding dim is then 1, as in the code)."""
    num_prototypes = 1


class nnUNetTrainerCRLN_randomXi(nnUNetTrainerCRLN):
    """Paper reading of eq. (13): ξ ~ U(0, λ=0.6) drawn every step."""
    cps_xi_random = True


class nnUNetTrainerCRLN_voxelMask(nnUNetTrainerCRLN):
    """Paper reading of eq. (2): per-voxel confidence mask instead of the per-image reliable fraction."""
    unsup_weighting = "voxel"


class nnUNetTrainerCRLN_faithfulReshape(nnUNetTrainerCRLN):
    """The authors' (C, M) -> (M, C) reshape in the DIM (spec §8.4)."""
    faithful_reshape = True


class nnUNetTrainerCRLN_crlnOptim(nnUNetTrainerCRLN):
    """CRLN's optimizer (SGD 2.5e-3, momentum 0.9, wd 5e-4) and T_rect = 800 iterations."""
    crln_optim = True
    rectification_start_iteration = 800


class nnUNetTrainerCRLN_tiny(UnmirroredValidation, nnUNetTrainerCRLN):
    """2 epochs x 3 iterations; rectification from iteration 3 so both phases run."""
    schedule_overrides = TINY_SCHEDULE
    num_prototypes = 2
    rectification_start_iteration = 3
    cps_num_anchors = 16
    cps_num_negatives = 32


class nnUNetTrainerCRLN_demo(nnUNetTrainerCRLN):
    """The semi-supervised side of ``scripts/demo.sh``: CRLN on the demo's schedule (as ``nnUNetTrainer_demo``)."""
    schedule_overrides = DEMO_SCHEDULE
