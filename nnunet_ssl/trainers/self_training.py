"""``nnUNetTrainerSelfTraining``: the training stages of offline self-training (``nnUNetv2_ssl_self_train``).

The pseudo-labelled cases come from the folder ``nnunet_ssl.self_training.store`` writes for this fold
(``<data_identifier>_pseudolabels_fold_<F>`` in ``nnUNet_preprocessed/DatasetXXX``), and the stage's settings from
its manifest, because nnU-Net constructs trainers with a fixed signature. Stages:

* ``pseudo``: every iteration draws nnU-Net's labelled batch and ``unlabeled_ratio`` x as many pseudo-labelled
  cases, both through nnU-Net's loader and training augmentation (the base's second loader, here with nnU-Net's
  foreground oversampling on the pseudo-labels). Loss: nnU-Net's deep-supervision Dice + CE on the labelled
  batch plus ``unsup_weight`` x the same loss on the pseudo-labels with per-voxel weights (``weighting.py``).
  Trained from scratch, as the recipe retrains.
* ``finetune``: starts from a checkpoint's weights and trains on the labelled cases only, with nnU-Net's own
  loader and train step (Noisy Student's last step).

No teacher: what is exported for ``nnUNetv2_predict`` is the trained network (a plain nnU-Net architecture).
The trainer never reads hidden labels: the pseudo-label folder holds only links to the images, the pseudo-labels
and their confidences.
"""
import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ssl.self_training.store import pseudo_label_folder, read_pseudo_manifest
from nnunet_ssl.self_training.weighting import WeightedPseudoLabelLoss, decode_weights
from nnunet_ssl.trainers.base import apply_schedule, first_output, nnUNetTrainerSSL, split_batch
from nnunet_ssl.trainers.tiny import TINY_SCHEDULE, UnmirroredValidation

STAGES = ("pseudo", "finetune")


class nnUNetTrainerSelfTraining(nnUNetTrainerSSL):
    num_teachers_needed = 0
    unsup_weight = 1.0            # weight of the pseudo-labelled loss; pseudo-labels are fixed, so no ramp
    finetune_initial_lr = 1e-3    # fine-tune stage, unless the manifest sets it
    ssl_log_keys = ("pseudo_loss", "pseudo_weight")
    # pseudo-labelled cases get nnU-Net's full training augmentation, as labelled cases do (no teacher/strong views)
    unlabeled_view = "nnunet"
    use_strong_view = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pseudo_label_folder = pseudo_label_folder(self.preprocessed_dataset_folder_base,
                                                       self.configuration_manager.data_identifier, fold)
        manifest = read_pseudo_manifest(self.pseudo_label_folder)
        if manifest is None or manifest.get("weighting") is None:
            raise RuntimeError(
                f"{type(self).__name__} trains on the pseudo-labels in {self.pseudo_label_folder}, which "
                f"{'do not exist' if manifest is None else 'are being re-weighted (interrupted?)'}. Run "
                f"`nnUNetv2_ssl_self_train -d {self.plans_manager.dataset_name} -c {configuration} -f {fold} -tr "
                f"{type(self).__name__}`: it makes them and runs this trainer.")
        self.pseudo_manifest = manifest
        settings = manifest.get("training", {})
        self.stage = settings.get("stage", "pseudo")
        if self.stage not in STAGES:
            raise RuntimeError(f"{self.pseudo_label_folder}.json: training stage {self.stage!r} is not one of "
                               f"{STAGES}")
        for attr in ("num_epochs", "num_iterations_per_epoch", "save_every"):
            if settings.get(attr) is not None:
                setattr(self, attr, int(settings[attr]))
        if settings.get("pseudo_ratio") is not None:
            self.unlabeled_ratio = float(settings["pseudo_ratio"])
        self.init_checkpoint = settings.get("init_checkpoint")
        if self.stage == "finetune":
            self.initial_lr = float(settings.get("initial_lr") or self.finetune_initial_lr)
        self.pseudo_loss = None
        self._pseudo_target = None

    @property
    def unlabeled_oversample_foreground_percent(self) -> float:
        """Pseudo-labelled cases are sampled like labelled ones: nnU-Net's foreground oversampling."""
        return self.oversample_foreground_percent

    def initialize(self):
        super().initialize()
        loss = WeightedPseudoLabelLoss(self.configuration_manager.batch_dice, ddp=self.is_ddp,
                                       levels=self.pseudo_manifest["weighting"]["levels"])
        self.pseudo_loss = DeepSupervisionWrapper(loss, self.loss.weight_factors) \
            if self.enable_deep_supervision else loss
        model = self.pseudo_manifest["model"]
        if self.stage == "pseudo":
            self.print_to_log_file(f"Self-training: labelled cases plus the pseudo-labels in "
                                   f"{self.pseudo_label_folder} ({len(self.pseudo_manifest['cases'])} cases) made by "
                                   f"{model['checkpoint']} "
                                   f"(sha256 {model['sha256'][:12]}), weighting {self.pseudo_manifest['weighting']}")
        else:
            self.print_to_log_file("Self-training fine-tune: labelled cases only")
        if self.init_checkpoint:
            # a resumed run (--c) loads its own checkpoint after this
            weights = torch.load(self.init_checkpoint, map_location="cpu", weights_only=False)["network_weights"]
            self.student.load_state_dict(weights)
            self.print_to_log_file(f"Network initialised from {self.init_checkpoint}")

    # --------------------------------------------------------------------------------------------- data
    def build_unlabeled_dataset(self):
        folder, cases = self.pseudo_label_folder, sorted(self.pseudo_manifest["cases"])
        missing = [c for c in cases if not isfile(join(folder, c + "_seg.b2nd"))]
        if missing:
            raise RuntimeError(f"{folder}: pseudo-labels of {missing} are missing; run nnUNetv2_ssl_self_train with "
                               f"--overwrite to make them again.")
        return infer_dataset_class(folder)(folder, cases)

    def get_dataloaders(self):
        if self.stage == "finetune":  # labelled cases only, through nnU-Net's own loaders
            return nnUNetTrainer.get_dataloaders(self)
        return super().get_dataloaders()

    def on_unlabeled_batch(self, batch_u: dict) -> None:
        self._pseudo_target = self._to_device(batch_u["target"])

    # --------------------------------------------------------------------------------------------- train step
    def train_step(self, batch: dict) -> dict:
        if self.stage == "finetune":
            return nnUNetTrainer.train_step(self, batch)
        return super().train_step(batch)

    def compute_losses(self, data_l, target_l, data_u, truth_u):
        out_l, out_u = split_batch(self.joint_forward(self.network, data_l, data_u), data_l.shape[0])
        target_u = self._pseudo_target
        sup = self.loss(out_l, target_l)
        pseudo = self.pseudo_loss(out_u, target_u)
        weights = decode_weights(first_output(target_u)[:, 1], self.pseudo_manifest["weighting"]["levels"])
        return {"sup": sup, "pseudo": self.unsup_weight * pseudo}, {"pseudo_weight": weights.mean()}


class nnUNetTrainerSelfTraining_tiny(UnmirroredValidation, nnUNetTrainerSelfTraining):
    schedule_overrides = TINY_SCHEDULE


class nnUNetTrainerLabeledOnly_tiny(UnmirroredValidation, nnUNetTrainer):
    """Stock nnU-Net training for 1 epoch of 2 iterations: the labelled-only first model of the self-training test,
    which only has to exist (an iteration costs seconds of CPU there)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        apply_schedule(self, {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1})
