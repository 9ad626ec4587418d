"""``nnUNetTrainerSSL``: the semi-supervised base every method trainer stands on.

nnU-Net keeps doing what it does (planning, the labelled loader and augmentation, the deep-supervision loss, poly
LR, AMP, compile, logging, checkpoint files, validation, export). This class adds:

* a second loader for unlabelled cases (``imagesUnlabeled`` after ``nnUNetv2_ssl_preprocess_unlabeled`` plus the
  ``unlabeled`` cases of a label-budget split), using nnU-Net's dataset, loader and training transforms (weak view);
* a strong view built on the device (``StrongAugmentation``), returning the masks to mix pseudo-labels alike;
* EMA teachers, extra trainable modules and extra optimizers, all saved in and restored from checkpoints so that
  ``--c`` continues exactly;
* a template ``train_step``: methods implement ``compute_losses`` and return named loss terms and diagnostics,
  which are averaged per epoch into nnU-Net's logger and ``progress_ssl.png``.

Hyperparameters are class attributes (nnU-Net instantiates trainers with a fixed signature); ablations and
tiny test variants are subclasses that override them.
"""
import copy
import dataclasses
import gc
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import isdir, join
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn
from torch.nn.parallel import DistributedDataParallel

from nnunet_ssl.augment.strong import StrongAugmentation
from nnunet_ssl.augment.views import UNLABELED_VIEWS, split_training_transforms
from nnunet_ssl.data.splits import check_fold_keeps_labels_hidden, fold_unlabeled_cases
from nnunet_ssl.data.unlabeled_dataset import (UnlabeledDataError, UnlabeledDataset, check_unlabeled_folder,
                                               unlabeled_preprocessed_folder)
from nnunet_ssl.diagnostics import nanmean_or_nan, plot_ssl_progress
from nnunet_ssl.modules.ema import EMATeacher, unwrap_network
from nnunet_ssl.ramps import sigmoid_rampup
from nnunet_ssl.sync_marker import host_only


def tensors_to_host_floats(values: List) -> List[float]:
    """Scalars (device tensors, host tensors or numbers) as floats with a single device-to-host copy: the step's
    only synchronisation (host values are never sent to the device and back)."""
    on_device = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor) and v.device.type != "cpu"]
    with host_only():  # host values: no device involved
        floats = [None if i in on_device else float(v.detach() if isinstance(v, torch.Tensor) else v)
                  for i, v in enumerate(values)]
    if on_device:
        copied = torch.stack([values[i].detach().float().reshape(()) for i in on_device]).cpu().tolist()
        for i, v in zip(on_device, copied):
            floats[i] = v
    return floats


def first_output(output):
    """Full-resolution output of a network that may return a deep-supervision list."""
    return output[0] if isinstance(output, (list, tuple)) else output


def split_batch(output, n: int):
    """(first ``n`` samples, the rest) of a network output that may be a deep-supervision list."""
    if isinstance(output, (list, tuple)):
        return [o[:n] for o in output], [o[n:] for o in output]
    return output[:n], output[n:]


# what nnUNetTrainerSSL adds to nnU-Net's checkpoint (plus a method's ``method_checkpoint_state``)
SSL_CHECKPOINT_KEYS = ("student_weights", "teacher_weights", "extra_modules", "extra_optimizers", "ssl_step",
                       "ssl_export_weights", "ssl_schedule")


def apply_schedule(trainer: nnUNetTrainer, schedule: Dict[str, object]) -> None:
    """Set schedule attributes (``num_epochs``, ...) after nnU-Net's ``__init__`` gave them its defaults; a name
    nnU-Net's trainer does not have is refused rather than silently added."""
    for k, v in schedule.items():
        if not hasattr(trainer, k):
            raise AttributeError(f"{type(trainer).__name__}: schedule sets unknown attribute '{k}'")
        setattr(trainer, k, v)


class nnUNetTrainerSSL(nnUNetTrainer):
    # --- unlabelled stream ------------------------------------------------------------------------------------
    unlabeled_batch_size: Optional[int] = None  # None: labelled batch size x unlabeled_ratio
    unlabeled_ratio: float = 1.0                 # unlabelled : labelled samples per iteration
    use_split_unlabeled_cases: bool = True       # the `unlabeled` cases of splits_final.json
    use_imagesUnlabeled: bool = True             # cases preprocessed by nnUNetv2_ssl_preprocess_unlabeled
    unlabeled_oversample_foreground_percent: float = 0.0  # unlabelled cases have no label positions to centre on
    # 'shared': the labelled and unlabelled streams split nnU-Net's augmentation workers (nnUNet_n_proc_DA) in
    # proportion to their batch sizes, so two streams do not put twice nnU-Net's processes on the CPU;
    # 'per_stream': each stream gets the full number (for machines with many spare cores)
    augmentation_workers: str = "shared"
    # --- teachers ---------------------------------------------------------------------------------------------
    ema_decay: float = 0.99                      # EMA decay, warmed up as min(1 - 1/(t+1), decay)
    num_teachers_needed: int = 1                 # methods without a teacher (dual students) set 0
    export_weights: str = "teacher"              # what goes into network_weights (nnUNetv2_predict): teacher|student
    compile_teacher: bool = True                 # torch.compile the teacher forward when nnU-Net compiles
    # --- views ----------------------------------------------------------------------------------------------------
    # 'weak': the teacher sees nnU-Net's spatial transforms and mirroring only, and the strong view starts from that
    # view plus nnU-Net's intensity transforms (applied in the loader to a copy); 'nnunet': the teacher sees
    # nnU-Net's full training augmentation and the strong view starts from it (before 0.2)
    unlabeled_view: str = "weak"
    use_strong_view: bool = True                 # False: the student sees the teacher's view (ablation)
    strong_augmentation: StrongAugmentation = StrongAugmentation()  # the method's own ops, on the device
    _strong_input_u: Optional[torch.Tensor] = None  # this step's loader-made strong input (see strong_view)
    # --- unsupervised loss weight -------------------------------------------------------------------------------
    unsup_weight: float = 1.0                    # λ_u
    unsup_rampup: float = 0.4                    # sigmoid ramp length as a fraction of all iterations; 0 = none
    confidence_threshold: float = 0.95           # τ: a pseudo-label voxel is "reliable" above it
    # --- schedule overrides (tiny test variants, short benchmarks) ---------------------------------------------
    schedule_overrides: Dict[str, object] = {}   # e.g. {"num_epochs": 2, "num_iterations_per_epoch": 3}
    # per-epoch means of these train_step keys go to the logger and progress_ssl.png
    ssl_log_keys: Tuple[str, ...] = ("unsup_loss", "unsup_weight", "teacher_confidence", "reliable_fraction",
                                     "pseudo_label_dice")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        apply_schedule(self, self.schedule_overrides)
        if self.export_weights not in ("teacher", "student"):
            raise ValueError(f"{type(self).__name__}.export_weights must be 'teacher' or 'student', "
                             f"got {self.export_weights!r}")
        if self.export_weights == "teacher" and self.num_teachers_needed == 0:
            self.export_weights = "student"
        if self.unlabeled_view not in UNLABELED_VIEWS:
            raise ValueError(f"{type(self).__name__}.unlabeled_view must be one of {UNLABELED_VIEWS}, got "
                             f"{self.unlabeled_view!r}")
        if self.label_manager.has_regions:
            raise NotImplementedError(
                f"{type(self).__name__} needs mutually exclusive labels (softmax pseudo-labels); this dataset uses "
                f"region-based training (tuples in dataset.json 'labels'), which is not supported yet.")
        for k in self.ssl_log_keys:
            self.logger.local_logger.my_fantastic_logging.setdefault(k, [])
        self.dataloader_unlabeled = None
        self.teachers: Dict[str, EMATeacher] = {}
        self.extra_modules = nn.ModuleDict()
        self.extra_optimizers: Dict[str, torch.optim.Optimizer] = {}
        self.extra_lr_schedulers: Dict[str, object] = {}
        self.ssl_step = 0  # optimizer steps so far; drives ramps and method schedules
        self.hidden_truth_cases = set()
        self._compiled_modules = {}
        self._compile_modules = None  # decided on first use by maybe_compiled
        # the CutMix box and CRLN's in-plane operations need to know the slice axis of this configuration
        self.strong_augmentation = dataclasses.replace(self.strong_augmentation,
                                                       through_plane_axis=self.through_plane_axis())

    # ------------------------------------------------------------------------------------------------- set-up
    def through_plane_axis(self) -> Optional[int]:
        """Spatial axis of the patch with the coarsest spacing (3D; axis 0, nnU-Net's usual slice axis after the
        plans' transpose, when the spacing is isotropic); None for 2D configurations."""
        spacing = list(self.configuration_manager.spacing)
        if len(self.configuration_manager.patch_size) != 3 or len(spacing) != 3:
            return None
        return int(np.argmax(spacing)) if max(spacing) > min(spacing) else 0

    def initialize(self):
        super().initialize()
        if self.is_ddp:
            self._rewrap_ddp_for_partial_use()
        self.teachers = self.build_teachers()
        self.extra_modules = nn.ModuleDict(self.build_extra_modules()).to(self.device)
        if self.is_ddp:
            self._broadcast_extra_modules()
        extra_params = [p for p in self.extra_modules.parameters() if p.requires_grad]
        if extra_params:
            # same SGD settings and poly schedule as the network (the scheduler sets every param group's lr)
            self.optimizer.add_param_group({"params": extra_params})
        for name, (opt, sched) in self.configure_extra_optimizers().items():
            self.extra_optimizers[name] = opt
            if sched is not None:
                self.extra_lr_schedulers[name] = sched

    def _rewrap_ddp_for_partial_use(self):
        """DDP only: wrap the network again with ``find_unused_parameters=True``.

        nnU-Net wraps with DDP's defaults, which expect every parameter of ``self.network`` to get a gradient from
        the loss in every iteration; otherwise the next forward fails ("Expected to have finished reduction in
        the prior iteration"). Ours have parameters that do not: CRLN's rectifier ``a`` (its own loss and optimizer
        after the main step), the DIM's block II update (only its proximity maps are used), and whatever an
        ablation switches off. DDP then marks them ready after each forward and leaves their ``.grad`` alone."""
        module = self.network.module
        self.network = None  # the first wrapper and its gradient hooks go before the new one registers its own
        gc.collect()
        device_ids = [self.device.index] if self.device.type == "cuda" else None  # a CPU module takes none
        self.network = DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)

    def _broadcast_extra_modules(self):
        """DDP only: rank 0's extra modules (heads) on every rank. DDP broadcast the network when nnU-Net wrapped
        it; the extra modules are built afterwards from each rank's own random state."""
        for tensor in list(self.extra_modules.parameters()) + list(self.extra_modules.buffers()):
            dist.broadcast(tensor.data, src=0)

    @property
    def student(self) -> nn.Module:
        """The plain student module (no DDP, no compile wrapper); parameters are shared with ``self.network``."""
        return unwrap_network(self.network)

    @property
    def teacher(self) -> Optional[EMATeacher]:
        """The main EMA teacher, or None for methods without one (nnU-Net's debug dump reads every attribute)."""
        return self.teachers.get("teacher")

    def build_teachers(self) -> Dict[str, EMATeacher]:
        """EMA copies of the student, made after DDP's initial broadcast so every rank starts identical."""
        return {"teacher": EMATeacher(self.network, self.ema_decay)} if self.num_teachers_needed else {}

    def build_extra_modules(self) -> Dict[str, nn.Module]:
        """Train-only modules (projection heads, ...); trained by the main optimizer, saved in checkpoints."""
        return {}

    def configure_extra_optimizers(self) -> Dict[str, Tuple[torch.optim.Optimizer, object]]:
        """{name: (optimizer, lr scheduler or None)} for parameters the main optimizer must not touch."""
        return {}

    def sgd_with_poly(self, params, lr: Optional[float] = None, momentum: float = 0.99,
                      weight_decay: Optional[float] = None):
        """nnU-Net's optimizer and schedule (``nnUNetTrainer.configure_optimizers``: Nesterov SGD, momentum 0.99,
        poly LR stepped per epoch) for ``params``; learning rate and weight decay default to the trainer's."""
        lr = self.initial_lr if lr is None else lr
        weight_decay = self.weight_decay if weight_decay is None else weight_decay
        optimizer = torch.optim.SGD(params, lr, weight_decay=weight_decay, momentum=momentum, nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, lr, self.num_epochs)

    def maybe_compiled(self, key: str, module: nn.Module, enabled: bool = True) -> nn.Module:
        """``module`` compiled once (cached under ``key``) when nnU-Net compiles this run, else ``module``.

        For modules called outside ``self.network`` (teachers, dual sub-networks). Whether to compile is decided
        once: ``_do_i_compile`` reads the environment and logs a line per call on some devices."""
        if self._compile_modules is None:
            self._compile_modules = self._do_i_compile()
        if not (enabled and self._compile_modules):
            return module
        if key not in self._compiled_modules:
            self._compiled_modules[key] = torch.compile(module)
        return self._compiled_modules[key]

    def teacher_forward(self, x: torch.Tensor, name: str = "teacher", **kwargs):
        """Forward of teacher ``name`` (compiled when nnU-Net compiles); keyword arguments go to its network."""
        return self.maybe_compiled(name, self.teachers[name].module, self.compile_teacher)(x, **kwargs)

    # ------------------------------------------------------------------------------------------- unlabelled data
    def do_split(self):
        """nnU-Net's split, but never one that trains on labels ``splits_final.json`` hides: fold ``all`` and
        folds beyond the file's list are refused when it has ``unlabeled`` cases (``SplitError``)."""
        check_fold_keeps_labels_hidden(self.preprocessed_dataset_folder_base, self.fold,
                                       self.plans_manager.dataset_name)
        return super().do_split()

    def get_unlabeled_sources(self) -> Dict[str, List[str]]:
        """{preprocessed folder: case identifiers} of every unlabelled case this fold may use.

        The ``imagesUnlabeled`` folder must have been made with these plans (``check_unlabeled_folder``: a stale or
        unverifiable folder, or a case named like a labelled one, is refused with the command that fixes it)."""
        sources: Dict[str, List[str]] = {}
        tr_keys, val_keys = self.do_split()
        if self.use_split_unlabeled_cases:
            split_unlabeled = fold_unlabeled_cases(self.preprocessed_dataset_folder_base, self.fold,
                                                   list(tr_keys) + list(val_keys))
            if split_unlabeled:
                sources[self.preprocessed_dataset_folder] = split_unlabeled
                self.hidden_truth_cases.update(split_unlabeled)
        unl_folder = unlabeled_preprocessed_folder(self.preprocessed_dataset_folder_base,
                                                   self.configuration_manager.data_identifier)
        if self.use_imagesUnlabeled and isdir(unl_folder):
            manifest = check_unlabeled_folder(
                unl_folder, self.plans_manager, self.configuration_manager, self.configuration_name,
                self.dataset_json, self.dataset_class.get_identifiers(self.preprocessed_dataset_folder))
            sources[unl_folder] = list(manifest["cases"])
            self.hidden_truth_cases.update(manifest["cases_with_reference"])
        if not any(sources.values()):
            raise UnlabeledDataError(
                f"{type(self).__name__} found no unlabelled cases for {self.plans_manager.dataset_name}, "
                f"configuration {self.configuration_name}, fold {self.fold}. Either put images into "
                f"nnUNet_raw/{self.plans_manager.dataset_name}/imagesUnlabeled and run `nnUNetv2_ssl_preprocess_"
                f"unlabeled -d {self.plans_manager.dataset_name} -c {self.configuration_name}`, or hide labels of "
                f"training cases with `nnUNetv2_ssl_split -d {self.plans_manager.dataset_name} --labeled N`.")
        return sources

    def build_unlabeled_dataset(self):
        """The unlabelled stream's nnU-Net dataset; a method may serve other cases (e.g. pseudo-labelled ones)."""
        return UnlabeledDataset(self.get_unlabeled_sources())

    def unlabeled_batch_size_per_step(self) -> int:
        return self.unlabeled_batch_size or max(1, int(round(self.batch_size * self.unlabeled_ratio)))

    def augmentation_worker_counts(self) -> Tuple[int, int]:
        """(labelled, unlabelled) augmentation processes; 0 means in-process loading for both."""
        total = get_allowed_n_proc_DA()
        if total == 0 or self.augmentation_workers == "per_stream":
            return total, total
        if self.augmentation_workers != "shared":
            raise ValueError(f"{type(self).__name__}.augmentation_workers must be 'shared' or 'per_stream', got "
                             f"{self.augmentation_workers!r}")
        labeled, unlabeled = self.batch_size, self.unlabeled_batch_size_per_step()
        n_labeled = max(1, int(round(total * labeled / (labeled + unlabeled))))
        return n_labeled, max(1, total - n_labeled)

    def get_dataloaders(self):
        """nnU-Net's labelled loaders (its datasets, transforms, ``nnUNetDataLoader`` and augmenters, validation with
        half the workers) with the labelled stream's share of the augmentation workers, plus the unlabelled stream.

        nnU-Net's own ``get_dataloaders`` reads the worker count from ``get_allowed_n_proc_DA()`` with no argument
        to pass another, so the two loaders are built here from its pieces."""
        n_labeled, n_unlabeled = self.augmentation_worker_counts()
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        patch_size = self.configuration_manager.patch_size
        ds_scales = self._get_deep_supervision_scales()
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        labels = dict(foreground_labels=self.label_manager.foreground_labels, regions=None,  # no regions (__init__)
                      ignore_label=self.label_manager.ignore_label)
        tr_transforms = self.get_training_transforms(patch_size, rotation, ds_scales, mirror_axes, dummy_2d,
                                                     use_mask_for_norm=self.configuration_manager.use_mask_for_norm,
                                                     is_cascaded=self.is_cascaded, **labels)
        val_transforms = self.get_validation_transforms(ds_scales, is_cascaded=self.is_cascaded, **labels)
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        dl_tr, dl_val = (nnUNetDataLoader(dataset, self.batch_size, initial, patch_size, self.label_manager,
                                          oversample_foreground_percent=self.oversample_foreground_percent,
                                          sampling_probabilities=None, pad_sides=None, transforms=transforms,
                                          probabilistic_oversampling=self.probabilistic_oversampling)
                         for dataset, initial, transforms in ((dataset_tr, initial_patch_size, tr_transforms),
                                                              (dataset_val, patch_size, val_transforms)))
        mt_gen_train = self._augmenter(dl_tr, n_labeled, max(6, n_labeled // 2))
        mt_gen_val = self._augmenter(dl_val, max(1, n_labeled // 2) if n_labeled else 0, max(3, n_labeled // 4))
        self.dataloader_unlabeled = self.get_unlabeled_dataloader(n_unlabeled)
        self.print_to_log_file(f"Augmentation workers: {n_labeled} labelled, {n_unlabeled} unlabelled "
                               f"({self.augmentation_workers}; nnUNet_n_proc_DA={get_allowed_n_proc_DA()})")
        return mt_gen_train, mt_gen_val

    def _augmenter(self, loader, n_proc: int, num_cached: int, seeds=None):
        """nnU-Net's augmenter choice: in-process without workers, else its non-deterministic multi-process one;
        started (first batch fetched) as nnU-Net does."""
        if n_proc == 0:
            augmenter = SingleThreadedAugmenter(loader, None)
        else:
            augmenter = NonDetMultiThreadedAugmenter(loader, None, n_proc, num_cached=num_cached, seeds=seeds,
                                                     pin_memory=self.device.type == "cuda", wait_time=0.002)
        next(augmenter)
        return augmenter

    def loader_makes_strong_copy(self) -> bool:
        """Whether the unlabelled loader appends the intensity-augmented copy (weak view + nnU-Net intensity)."""
        return self.unlabeled_view == "weak" and self.use_strong_view

    def get_unlabeled_dataloader(self, n_proc: Optional[int] = None):
        """nnU-Net's loader and transforms on unlabelled cases: the weak view (``unlabeled_view``), followed in
        the image channels by the strong view's starting point when ``loader_makes_strong_copy``. ``n_proc``:
        augmentation workers (default: the unlabelled share of ``augmentation_worker_counts``)."""
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        transforms = self.get_training_transforms(
            self.configuration_manager.patch_size, rotation, self._get_deep_supervision_scales(), mirror_axes,
            dummy_2d, use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=self.is_cascaded,
            foreground_labels=self.label_manager.foreground_labels, regions=None,
            ignore_label=self.label_manager.ignore_label)
        if self.unlabeled_view == "weak":
            transforms, _ = split_training_transforms(transforms, self.num_input_channels,
                                                      self.loader_makes_strong_copy())
        dataset = self.build_unlabeled_dataset()
        batch_size = self.unlabeled_batch_size_per_step()
        loader = nnUNetDataLoader(dataset, batch_size, initial_patch_size, self.configuration_manager.patch_size,
                                  self.label_manager,
                                  oversample_foreground_percent=self.unlabeled_oversample_foreground_percent,
                                  transforms=transforms)
        loader.has_ignore = False  # no label positions to centre patches on
        self.print_to_log_file(f"Unlabelled stream: {len(dataset.identifiers)} cases, batch size {batch_size} "
                               f"({len(self.hidden_truth_cases & set(dataset.identifiers))} with hidden reference "
                               f"masks for diagnostics); teacher view '{self.unlabeled_view}'"
                               + (", strong view from it plus nnU-Net's intensity transforms"
                                  if self.loader_makes_strong_copy() else ""))
        n_proc = self.augmentation_worker_counts()[1] if n_proc is None else n_proc
        seeds = None
        if n_proc:  # seeds differ per DDP rank so ranks draw different unlabelled cases
            base = int(np.random.randint(0, 2 ** 31 - 1 - 1000 * (n_proc + 1) * 64))
            seeds = [base + 1000 * self.local_rank + i for i in range(n_proc)]
        return self._augmenter(loader, n_proc, max(6, n_proc // 2), seeds)

    def _shutdown_unlabeled_loader(self):
        if isinstance(self.dataloader_unlabeled, NonDetMultiThreadedAugmenter):
            self.dataloader_unlabeled._finish()
        self.dataloader_unlabeled = None

    def run_training(self):
        try:
            super().run_training()
        finally:  # also on errors and KeyboardInterrupt: no orphaned worker processes
            self._shutdown_unlabeled_loader()
            for dl in (self.dataloader_train, self.dataloader_val):
                if isinstance(dl, NonDetMultiThreadedAugmenter):
                    dl._finish()

    # --------------------------------------------------------------------------------------------- train step
    def autocast(self):
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def current_unsup_weight(self, base_weight: Optional[float] = None, rampup: Optional[float] = None) -> float:
        """``base_weight · sigmoid_rampup(step, rampup · total iterations)``."""
        base_weight = self.unsup_weight if base_weight is None else base_weight
        rampup = self.unsup_rampup if rampup is None else rampup
        total = self.num_epochs * self.num_iterations_per_epoch
        return base_weight * sigmoid_rampup(self.ssl_step, rampup * total)

    def _to_device(self, x):
        if isinstance(x, list):
            return [i.to(self.device, non_blocking=True) for i in x]
        return x.to(self.device, non_blocking=True)

    def on_unlabeled_batch(self, batch_u: dict) -> None:
        """Called with every unlabelled batch the loader serves, before ``compute_losses``."""

    def hidden_truth(self, batch_u: dict) -> Optional[torch.Tensor]:
        """Reference masks of unlabelled samples whose labels were hidden (diagnostics only), -1 elsewhere."""
        has = [k in self.hidden_truth_cases for k in batch_u["keys"]]
        if not any(has):
            return None
        with host_only():  # the loader's target is still on the host here
            seg = first_output(batch_u["target"])[:, 0].long()
            seg[torch.tensor([not h for h in has])] = -1
        return seg.to(self.device, non_blocking=True)

    def strong_view(self, data_u: torch.Tensor):
        """The method's strong operations (``strong_augmentation``) applied to this step's strong input: the
        loader's intensity-augmented copy of ``data_u`` when there is one, else ``data_u`` itself. Returns (strong
        view, StrongViewParams) so that pseudo-labels can be transformed alike."""
        base = data_u if self._strong_input_u is None else self._strong_input_u
        return self.strong_augmentation(base)

    @staticmethod
    def joint_forward(forward, data_l: torch.Tensor, data_u: torch.Tensor, **kwargs):
        """``forward`` of the labelled and the unlabelled samples as one batch, labelled first: InstanceNorm is per
        sample, so this equals two forwards, with fewer kernel launches and one compiled graph. ``split_batch``
        separates the output again."""
        return forward(torch.cat((data_l, data_u)), **kwargs)

    def compute_losses(self, data_l, target_l, data_u, truth_u) -> Tuple[Dict[str, torch.Tensor],
                                                                         Dict[str, torch.Tensor]]:
        """Method hook. Returns ({name: weighted loss term}, {name: diagnostic}); must include 'sup'.

        ``truth_u`` (reference labels of hidden-label unlabelled samples, -1 elsewhere, or None) may only be used
        for diagnostics."""
        raise NotImplementedError

    def optimizers_for_main_loss(self) -> List[torch.optim.Optimizer]:
        return [self.optimizer]

    def parameters_outside_ddp(self) -> List[nn.Parameter]:
        """Parameters whose gradients DDP does not average (it only sees forwards through ``self.network``)."""
        return list(self.extra_modules.parameters())

    def _sync_gradients_outside_ddp(self):
        if not self.is_ddp:
            return
        world = dist.get_world_size()
        for p in self.parameters_outside_ddp():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world

    def backward_and_step(self, loss: torch.Tensor):
        """One backward of the summed loss, then per optimizer: unscale, clip its parameters (norm 12), step."""
        scaler = self.grad_scaler
        (scaler.scale(loss) if scaler is not None else loss).backward()
        self._sync_gradients_outside_ddp()
        # an optimizer none of whose parameters got a gradient (e.g. a second network an ablation leaves out) is
        # skipped: GradScaler.step refuses an optimizer it recorded no inf checks for
        optimizers = [opt for opt in self.optimizers_for_main_loss()
                      if any(p.grad is not None for g in opt.param_groups for p in g["params"])]
        for opt in optimizers:
            if scaler is not None:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 12)
            scaler.step(opt) if scaler is not None else opt.step()
        if scaler is not None:
            scaler.update()

    def after_optimizer_step(self, data_l, target_l, data_u):
        """EMA update of every teacher; methods add their own post-step work (call super)."""
        for name, teacher in self.teachers.items():
            teacher.update(self.network)

    def ssl_batch(self, batch: dict):
        """(data_l, target_l, data_u, truth_u) on the device for ``compute_losses``: draws this step's unlabelled
        batch and keeps the loader-made strong input in ``_strong_input_u`` (reset it after ``compute_losses``)."""
        batch_u = next(self.dataloader_unlabeled)
        self.on_unlabeled_batch(batch_u)
        data_l = self._to_device(batch["data"])
        target_l = self._to_device(batch["target"])
        data_u = self._to_device(batch_u["data"])
        if self.loader_makes_strong_copy():  # channels: weak view, then the strong view's starting point
            data_u, self._strong_input_u = data_u.split(self.num_input_channels, dim=1)
        return data_l, target_l, data_u, self.hidden_truth(batch_u)

    def train_step(self, batch: dict) -> dict:
        data_l, target_l, data_u, truth_u = self.ssl_batch(batch)
        for opt in self.optimizers_for_main_loss():
            opt.zero_grad(set_to_none=True)
        try:
            with self.autocast():
                losses, diagnostics = self.compute_losses(data_l, target_l, data_u, truth_u)
                total = sum(losses.values())
        finally:
            self._strong_input_u = None
        self.backward_and_step(total)
        self.after_optimizer_step(data_l, target_l, data_u)
        self.ssl_step += 1
        # one device->host copy per step for every logged number
        names = ["loss", "total_loss"] + [f"{k}_loss" if k != "sup" else "sup_loss" for k in losses] + \
            list(diagnostics)
        values = [losses["sup"], total] + list(losses.values()) + list(diagnostics.values())
        return dict(zip(names, tensors_to_host_floats(values)))

    # ------------------------------------------------------------------------------------------------ logging
    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        for sched in self.extra_lr_schedulers.values():
            sched.step(self.current_epoch)
        for teacher in self.teachers.values():
            teacher.train(self.network.training)

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        summary = []
        for k in self.ssl_log_keys:
            vals = [float(o[k]) for o in train_outputs if k in o]
            value = nanmean_or_nan(vals)
            if self.is_ddp:
                gathered = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, vals)
                value = nanmean_or_nan(v for g in gathered for v in g)
            self.logger.log(k, value, self.current_epoch)
            summary.append(f"{k} {np.round(value, 4)}")
        self.print_to_log_file("ssl: " + ", ".join(summary))

    def on_epoch_end(self):
        epoch_logged = self.current_epoch
        super().on_epoch_end()
        if self.local_rank == 0 and epoch_logged >= 0:
            plot_ssl_progress(self.logger.local_logger.my_fantastic_logging, self.ssl_log_keys,
                              join(self.output_folder, "progress_ssl.png"))

    # --------------------------------------------------------------------------------------------- checkpoints
    def _exported_state_dict(self) -> dict:
        if self.export_weights == "teacher" and self.teachers:
            return self.teacher.module.state_dict()
        return self.student.state_dict()

    def nnunet_checkpoint(self) -> dict:
        """nnU-Net's checkpoint (the keys and values of ``nnUNetTrainer.save_checkpoint``, 2.8), with the exported
        weights in ``network_weights``: what ``nnUNetv2_predict`` loads."""
        return {
            "network_weights": self._exported_state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
        }

    def ssl_checkpoint(self) -> dict:
        """The semi-supervised state (``SSL_CHECKPOINT_KEYS`` plus the method's own keys)."""
        return {"student_weights": self.student.state_dict(),
                "teacher_weights": {k: t.state_dict() for k, t in self.teachers.items()},
                "extra_modules": self.extra_modules.state_dict(),
                "extra_optimizers": {k: o.state_dict() for k, o in self.extra_optimizers.items()},
                "ssl_step": self.ssl_step,
                "ssl_export_weights": self.export_weights,
                # the schedule the loss ramps ran over, for tools that reload a checkpoint (scripts/loss_gradients.py);
                # --c keeps the trainer's own, as nnU-Net does
                "ssl_schedule": {"num_epochs": self.num_epochs,
                                 "num_iterations_per_epoch": self.num_iterations_per_epoch},
                **self.method_checkpoint_state()}

    def method_checkpoint_state(self) -> dict:
        """Extra checkpoint keys of a method (queues, running statistics)."""
        return {}

    def load_method_checkpoint_state(self, checkpoint: dict) -> None:
        pass

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus the semi-supervised state, written where and when nnU-Net writes its own."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        torch.save({**self.nnunet_checkpoint(), **self.ssl_checkpoint()}, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """A checkpoint of this trainer (``--c``: everything restored exactly) or a stock nnU-Net one (the network;
        teachers start as copies of it). Takes a file name or the loaded dict (nnunetv2 2.8.1's own
        ``load_checkpoint`` fails on a dict)."""
        if not self.was_initialized:
            self.initialize()
        checkpoint = filename_or_checkpoint
        if not isinstance(checkpoint, dict):
            checkpoint = torch.load(checkpoint, map_location=self.device, weights_only=False)
        self._load_nnunet_checkpoint(checkpoint)
        if "student_weights" not in checkpoint:
            self.print_to_log_file("Checkpoint has no semi-supervised state (stock nnU-Net checkpoint?): teachers "
                                   "start as copies of the loaded network.")
            self.teachers = self.build_teachers()
            self._compiled_modules.clear()  # compiled copies of the replaced teachers
            return
        self.student.load_state_dict(checkpoint["student_weights"])
        for k, state in checkpoint["teacher_weights"].items():
            self.teachers[k].load_state_dict(state)
        self.extra_modules.load_state_dict(checkpoint["extra_modules"])
        for k, state in checkpoint["extra_optimizers"].items():
            self.extra_optimizers[k].load_state_dict(state)
        self.ssl_step = int(checkpoint["ssl_step"])
        self.load_method_checkpoint_state(checkpoint)

    def _load_nnunet_checkpoint(self, checkpoint: dict) -> None:
        """What ``nnUNetTrainer.load_checkpoint`` (2.8) restores from the keys it writes: the network (a
        ``module.`` prefix of DataParallel weights stripped), training progress, logger, optimizer, grad scaler."""
        own_keys = self.student.state_dict().keys()
        self.student.load_state_dict({k[len("module."):] if k not in own_keys and k.startswith("module.") else k: v
                                      for k, v in checkpoint["network_weights"].items()})
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes",
                                                               self.inference_allowed_mirroring_axes)
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.grad_scaler is not None and checkpoint["grad_scaler_state"] is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])

    # ---------------------------------------------------------------------------------------------- validation
    def validation_forward(self, data: torch.Tensor, network: Optional[nn.Module] = None):
        """The forward nnU-Net's online validation scores (and so ``checkpoint_best``'s criterion): what
        ``nnUNetv2_predict`` will load, i.e. the teacher when it is exported, else ``network`` (the trained network,
        ``self.network`` by default)."""
        if self.export_weights == "teacher" and self.teachers:
            return self.teacher_forward(data)
        return (self.network if network is None else network)(data)

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        for teacher in self.teachers.values():  # back to train mode in on_train_epoch_start
            teacher.eval()

    def validation_step(self, batch: dict) -> dict:
        # nnU-Net's validation_step (loss, hard Dice for the EMA pseudo-Dice) calls self.network(data): point it at
        # the exported forward for the duration of the call
        network = self.network
        self.network = lambda data: self.validation_forward(data, network)
        try:
            return super().validation_step(batch)
        finally:
            self.network = network

    def perform_actual_validation(self, save_probabilities: bool = False):
        """Validate what is exported: with ``export_weights='teacher'`` the teacher's weights are loaded into the
        network for the duration (the student is restored afterwards)."""
        if self.export_weights != "teacher" or not self.teachers:
            return super().perform_actual_validation(save_probabilities)
        student_state = copy.deepcopy(self.student.state_dict())
        self.student.load_state_dict(self.teacher.module.state_dict())
        try:
            return super().perform_actual_validation(save_probabilities)
        finally:
            self.student.load_state_dict(student_state)
