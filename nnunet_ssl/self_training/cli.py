"""``nnUNetv2_ssl_self_train``: offline self-training (labelled-only model -> pseudo-labels -> retrain) in one command.

For one dataset, configuration, plans and fold:

1. the labelled-only model (``--labeled_model``, by default ``nnUNet_results/DatasetXXX/<--labeled_trainer>__
   <plans>__<configuration>``; ``--train_labeled`` trains it with nnU-Net if it has no ``checkpoint_final.pth``)
   predicts every unlabelled case of the fold (the split's ``unlabeled`` cases and the ``imagesUnlabeled`` cases
   of ``nnUNetv2_ssl_preprocess_unlabeled``) with nnU-Net's predictor into a pseudo-label folder of
   ``nnUNet_preprocessed/DatasetXXX`` (``store.py``);
2. nnU-Net trains ``-tr`` (``nnUNetTrainerSelfTraining`` or a subclass) on the labelled plus the pseudo-labelled
   cases, into ``nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>/fold_F``;
3. with ``--rounds R > 1`` the new model relabels and trains again; with ``--finetune_epochs`` a last stage
   fine-tunes on the labelled cases only. Every model but the last is kept in ``self_training_round_<r>/fold_F``
   beside ``fold_F`` (a model folder of its own); ``fold_F`` holds the final model, which ``nnUNetv2_predict -tr
   <trainer> -f F`` loads like any other, and ``self_training.json`` (stages, models, iterations).

Nothing is overwritten without ``--overwrite``: neither a pseudo-label folder made by another model (or with other
predictor settings) nor an earlier self-training run of the fold. Pseudo-labels of the same model and settings are
reused (only their weights are redone if ``--threshold``/``--weighting`` changed).

``--c`` (nnU-Net's "continue") continues a run that was cut off: finished stages are kept, the stage that was
running continues from its ``checkpoint_latest.pth`` (``--save_every`` sets how often a stage writes it), and the
pseudo-labels of the same model are reused. ``fold_F/self_training.json`` is written before every stage (``complete``
false until the last one has finished) and records the settings that make the recipe the experiment it is
(``recipe``); ``--c`` with other such settings is refused.
"""
import argparse
import contextlib
import gc
import glob
import io
import multiprocessing
import os
import shutil
from typing import Dict, List, Optional, Sequence

from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, save_json

from nnunet_ssl.cli_flags import deprecated_aliases
from nnunet_ssl.errors import UserError, exits_on_user_error, resolve_dataset_name

PROG = "nnUNetv2_ssl_self_train"
ROUND_FOLDER = "self_training_round_{}"
SUMMARY_FILE = "self_training.json"
FINAL = "checkpoint_final.pth"
# settings a run continued with --c must share with the interrupted run (args attribute: option)
RECIPE_OPTIONS = {"rounds": "--rounds", "epochs": "--epochs", "iterations_per_epoch": "--iterations_per_epoch",
                  "finetune_epochs": "--finetune_epochs", "finetune_lr": "--finetune_lr",
                  "pseudo_ratio": "--pseudo_ratio", "threshold": "--threshold", "weighting": "--weighting",
                  "disable_tta": "--disable_tta", "step_size": "-step_size"}


# spellings of earlier versions: accepted with a warning (nnunet_ssl.cli_flags)
DEPRECATED = {"--labeled-trainer": "--labeled_trainer", "--labeled-model": "--labeled_model",
              "--train-labeled": "--train_labeled", "--pseudo-ratio": "--pseudo_ratio",
              "--iterations-per-epoch": "--iterations_per_epoch", "--finetune-epochs": "--finetune_epochs",
              "--finetune-lr": "--finetune_lr", "--disable-tta": "--disable_tta", "--step-size": "-step_size",
              "--save-every": "--save_every", "--num-threads": "--threads"}


class SelfTrainingError(UserError):
    """A user error: the message names the file or setting and the fix."""


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _step_size(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from nnunet_ssl.self_training.weighting import WEIGHTINGS
    p = argparse.ArgumentParser(
        prog=PROG, description="Offline self-training (nnU-Net maintainers' recipe): the labelled-only model of a "
                               "fold predicts the fold's unlabelled cases with nnU-Net's predictor, and nnU-Net "
                               "trains a model on the labelled plus pseudo-labelled cases.")
    p.add_argument("-d", required=True, help="dataset name or id")
    p.add_argument("-c", required=True, help="configuration, e.g. 3d_fullres")
    p.add_argument("-f", required=True, help="fold (a number, or 'all')")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-tr", default="nnUNetTrainerSelfTraining",
                   help="self-training trainer: nnUNetTrainerSelfTraining or a subclass (default: %(default)s)")
    p.add_argument("--labeled_trainer", default="nnUNetTrainer",
                   help="trainer of the labelled-only model (default: %(default)s); its model folder is "
                        "nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>")
    p.add_argument("--labeled_model", default=None, metavar="FOLDER",
                   help="use this model folder (with fold_F/checkpoint_final.pth, plans.json, dataset.json) as "
                        "the labelled-only model instead")
    p.add_argument("--train_labeled", action="store_true",
                   help="train (or finish) the labelled-only model with nnU-Net if it has no checkpoint_final.pth")
    p.add_argument("--rounds", type=_positive(int), default=1,
                   help="self-training rounds; each later round relabels with the previous round's model "
                        "(default: 1)")
    p.add_argument("--threshold", type=_fraction, default=0.0,
                   help="voxels whose confidence (max softmax probability) is below this get weight 0 "
                        "(default: 0, every voxel counts)")
    p.add_argument("--weighting", choices=WEIGHTINGS, default="hard",
                   help="'hard': weight 1 at or above --threshold; 'confidence': (c - 1/C) / (1 - 1/C), i.e. 0 at "
                        "chance level and 1 when certain (default: hard)")
    p.add_argument("--pseudo_ratio", type=_positive(float), default=1.0,
                   help="pseudo-labelled cases per labelled case in every batch; the labelled part is the plans' "
                        "batch size (default: 1)")
    p.add_argument("--epochs", type=_positive(int), default=None,
                   help="epochs of every self-training round (default: the trainer's, nnU-Net's 1000)")
    p.add_argument("--iterations_per_epoch", type=_positive(int), default=None,
                   help="iterations per epoch of the rounds and the fine-tune (default: the trainer's, 250)")
    p.add_argument("--finetune_epochs", type=_non_negative_int, default=0,
                   help="epochs of a last stage on the labelled cases only, from the last round's weights "
                        "(Noisy Student; default: 0, no fine-tune)")
    p.add_argument("--finetune_lr", type=_positive(float), default=1e-3,
                   help="initial learning rate of the fine-tune (poly schedule; default: 0.001)")
    p.add_argument("--disable_tta", action="store_true",
                   help="pseudo-label without test-time mirroring (default: mirroring on, as nnUNetv2_predict)")
    p.add_argument("-step_size", type=_step_size, default=0.5,
                   help="sliding-window step size as a fraction of the patch (default: 0.5)")
    p.add_argument("--validate", choices=("all", "last", "none"), default="all",
                   help="after training, nnU-Net validates every model of the recipe on the fold's validation cases "
                        "('all', default), only the final model ('last'), or none (e.g. when a benchmark scores "
                        "held-out cases itself)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a pseudo-label folder made by another model and an earlier self-training run of "
                        "this fold")
    p.add_argument("--c", dest="continue_training", action="store_true",
                   help="continue a self-training run of this fold that was cut off (as nnUNetv2_train --c): "
                        "finished stages are kept, the interrupted stage continues from its checkpoint_latest.pth, "
                        "pseudo-labels of the same model are reused; the recipe's settings must be the same")
    p.add_argument("--save_every", type=_positive(int), default=None, metavar="N",
                   help="every stage writes checkpoint_latest.pth every N epochs, the point --c continues from "
                        "(default: the trainer's, nnU-Net's 50)")
    p.add_argument("-device", default="cuda", choices=("cuda", "cpu", "mps"), help="default: cuda")
    p.add_argument("-num_gpus", type=_positive(int), default=1, help="GPUs per training stage (DDP; default: 1)")
    p.add_argument("--threads", dest="num_threads", type=_positive(int), default=None, metavar="N",
                   help="torch threads (default as nnUNetv2_train: every core with -device cpu, 1 otherwise); a "
                        "benchmark sharing the CPU with other runs sets 1")
    deprecated_aliases(p, DEPRECATED)
    return p


# ------------------------------------------------------------------------------------------------------- set-up
class Setup:
    """The dataset, plans and fold a run works on."""

    def __init__(self, args):
        from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        for var in (nnUNet_preprocessed, nnUNet_results):
            if not var.is_set():
                raise SelfTrainingError(f"environment variable {var.env_var_name} is not set (see nnU-Net's "
                                        f"documentation/setting_up_paths.md).")
        self.dataset = str(resolve_dataset_name(args.d))
        self.pre_base = join(os.fspath(nnUNet_preprocessed), self.dataset)
        self.plans_identifier, self.configuration = args.p, args.c
        plans_file = join(self.pre_base, self.plans_identifier + ".json")
        if not isfile(plans_file):
            raise SelfTrainingError(f"plans file {plans_file} not found: run `nnUNetv2_plan_and_preprocess -d "
                                    f"{args.d}` (or check -p and nnUNet_preprocessed).")
        self.plans_manager = PlansManager(plans_file)
        if self.configuration not in self.plans_manager.available_configurations:
            raise SelfTrainingError(f"-c {self.configuration} is not a configuration of {plans_file}; available: "
                                    f"{list(self.plans_manager.available_configurations)}.")
        self.configuration_manager = self.plans_manager.get_configuration(self.configuration)
        if self.configuration_manager.previous_stage_name is not None:
            raise SelfTrainingError(f"-c {self.configuration} is a cascade stage: its inputs need the previous stage's "
                                    f"predictions, which offline self-training does not make. Use a configuration "
                                    f"without previous stage (e.g. 3d_fullres or 3d_lowres).")
        self.dataset_json = load_json(join(self.pre_base, "dataset.json"))
        self.label_manager = self.plans_manager.get_label_manager(self.dataset_json)
        if self.label_manager.has_regions:
            raise SelfTrainingError(f"{join(self.pre_base, 'dataset.json')} defines regions (label tuples); "
                                    f"pseudo-labels need mutually exclusive labels.")
        if args.f != "all":
            try:
                int(args.f)
            except ValueError:
                raise SelfTrainingError(f"-f {args.f}: a fold is a number or 'all'.") from None
        self.fold = args.f if args.f == "all" else int(args.f)
        self.data_folder = join(self.pre_base, self.configuration_manager.data_identifier)

    def model_folder(self, trainer: str) -> str:
        from nnunetv2.utilities.file_path_utilities import get_output_folder
        return get_output_folder(self.dataset, trainer, self.plans_identifier, self.configuration)

    def train_command(self, trainer: str) -> str:
        return (f"nnUNetv2_train {self.dataset} {self.configuration} {self.fold} -tr {trainer} "
                f"-p {self.plans_identifier}")


def fold_unlabeled_cases(setup: Setup) -> Dict[str, str]:
    """{case: preprocessed folder holding its image} of every unlabelled case of the fold: the split's
    ``unlabeled`` cases and the ``imagesUnlabeled`` cases, checked as the semi-supervised trainers check them."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunet_ssl.data.splits import SPLITS_FILE, check_fold_keeps_labels_hidden, fold_unlabeled_cases, read_splits
    from nnunet_ssl.data.unlabeled_dataset import check_unlabeled_folder, unlabeled_preprocessed_folder
    from nnunet_ssl.self_training.store import image_file
    check_fold_keeps_labels_hidden(setup.pre_base, setup.fold, setup.dataset)
    splits = read_splits(setup.pre_base) or []
    split = splits[setup.fold] if isinstance(setup.fold, int) and setup.fold < len(splits) else {}
    labelled = list(split.get("train", [])) + list(split.get("val", []))
    cases = {c: setup.data_folder for c in fold_unlabeled_cases(setup.pre_base, setup.fold, labelled)}
    unlabeled_folder = unlabeled_preprocessed_folder(setup.pre_base, setup.configuration_manager.data_identifier)
    if isdir(unlabeled_folder):
        manifest = check_unlabeled_folder(unlabeled_folder, setup.plans_manager, setup.configuration_manager,
                                          setup.configuration, setup.dataset_json,
                                          infer_dataset_class(setup.data_folder).get_identifiers(setup.data_folder))
        cases.update({c: unlabeled_folder for c in manifest["cases"]})
    splits_file = join(setup.pre_base, SPLITS_FILE)
    if not cases:
        raise SelfTrainingError(
            f"fold {setup.fold} of {setup.dataset} has no unlabelled cases: "
            + (f"its split in {splits_file} lists no 'unlabeled' cases" if splits
               else f"there is no {splits_file} with 'unlabeled' cases")
            + f" and {unlabeled_folder} does not exist. Hide labels with `nnUNetv2_ssl_split -d {setup.dataset} "
              f"--labeled N`, or put images into nnUNet_raw/{setup.dataset}/imagesUnlabeled and run "
              f"`nnUNetv2_ssl_preprocess_unlabeled -d {setup.dataset} -c {setup.configuration}`.")
    missing = [image_file(folder, c) for c, folder in sorted(cases.items()) if not isfile(image_file(folder, c))]
    if missing:
        raise SelfTrainingError(f"preprocessed image(s) {missing[:3]}{' ...' if len(missing) > 3 else ''} not found "
                                f"(only blosc2 datasets of nnU-Net >= 2.6 are supported). Preprocess again "
                                f"(nnUNetv2_preprocess / nnUNetv2_ssl_preprocess_unlabeled).")
    return cases


def labeled_checkpoint(setup: Setup, args) -> Optional[str]:
    """``checkpoint_final.pth`` of the labelled-only model, or None when --train_labeled will make it."""
    folder = args.labeled_model or setup.model_folder(args.labeled_trainer)
    fold_folder = join(folder, f"fold_{setup.fold}")
    final = join(fold_folder, "checkpoint_final.pth")
    if isfile(final):
        check_model_fits(folder, setup)
        return final
    if args.train_labeled:
        return None
    command = setup.train_command(args.labeled_trainer)
    others = [f for f in ("checkpoint_latest.pth", "checkpoint_best.pth") if isfile(join(fold_folder, f))]
    if others:
        raise SelfTrainingError(f"the labelled-only model {fold_folder} is unfinished: it has {' and '.join(others)} "
                                f"but no checkpoint_final.pth. Finish it with `{command} --c`"
                                + ("" if args.labeled_model else " or pass --train_labeled (which does that)") + ".")
    raise SelfTrainingError(f"no labelled-only model: {final} does not exist. Train it with `{command}`"
                            + ("" if args.labeled_model else ", or pass --train_labeled to let this command do it")
                            + ", or point --labeled_model at a model folder with fold_"
                            + f"{setup.fold}/checkpoint_final.pth.")


def check_model_fits(folder: str, setup: Setup) -> None:
    """The model was trained on arrays preprocessed like this dataset's, with the same labels."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_ssl.data.unlabeled_dataset import preprocessing_fingerprint
    plans_file, dataset_file = join(folder, "plans.json"), join(folder, "dataset.json")
    for f in (plans_file, dataset_file):
        if not isfile(f):
            raise SelfTrainingError(f"{f} not found: {folder} is not an nnU-Net model folder (nnU-Net copies "
                                    f"plans.json and dataset.json there when training starts).")
    model_plans, model_dataset_json = PlansManager(plans_file), load_json(dataset_file)
    if setup.configuration not in model_plans.available_configurations:
        raise SelfTrainingError(f"{plans_file} has no configuration {setup.configuration}.")
    theirs = preprocessing_fingerprint(model_plans, model_plans.get_configuration(setup.configuration),
                                       model_dataset_json)
    ours = preprocessing_fingerprint(setup.plans_manager, setup.configuration_manager, setup.dataset_json)
    differing = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differing:
        raise SelfTrainingError(f"the model in {folder} was trained on data preprocessed differently from "
                                f"{setup.data_folder} ({', '.join(differing)} differ from "
                                f"{join(setup.pre_base, setup.plans_identifier + '.json')}). Use a model trained "
                                f"with these plans, or pass the matching -p.")
    if model_dataset_json["labels"] != setup.dataset_json["labels"]:
        raise SelfTrainingError(f"{dataset_file} has other labels than {join(setup.pre_base, 'dataset.json')}.")


def resolve_trainer(name: str, option: str):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the lookup prints every folder it searches
            return recursive_find_trainer_class_by_name(name)
    except RuntimeError:
        raise SelfTrainingError(f"{option} {name}: no trainer of this name in nnunetv2 or nnunet_ssl.") from None


# -------------------------------------------------------------------------------------------- pseudo-label folder
def pseudo_labels_to_make(folder: str, fingerprint: Optional[dict], prediction: dict, weighting: dict,
                          cases: Dict[str, str], overwrite: bool, continuing: bool = False) -> str:
    """'predict', 'reweight' or 'keep' for an existing pseudo-label folder; refuses to replace another model's
    (``continuing``: the command runs with --c, which cannot be combined with --overwrite; the fix says so)."""
    from nnunet_ssl.self_training.store import read_pseudo_manifest
    manifest = read_pseudo_manifest(folder)
    if manifest is None and not isdir(folder):
        return "predict"
    if manifest is not None and fingerprint is not None and manifest["model"]["sha256"] == fingerprint["sha256"] \
            and manifest["prediction"] == prediction and manifest["cases"] == cases:
        return "keep" if manifest["weighting"] == weighting else "reweight"
    if overwrite:
        return "predict"
    if manifest is None:
        made = "an unknown model (its manifest is missing)"
    else:
        made = (f"{manifest['model']['checkpoint']} (sha256 {manifest['model']['sha256'][:12]}, predictor "
                f"{manifest['prediction']}, {len(manifest['cases'])} cases)")
    ours = (f"{fingerprint['checkpoint']} (sha256 {fingerprint['sha256'][:12]}, predictor {prediction}, {len(cases)} "
            f"cases)" if fingerprint else "the labelled-only model this command is about to train")
    fix = ("Move the folder and its .json manifest aside (they are made again), or start the run again with "
           "--overwrite instead of --c, which replaces them." if continuing else
           "Pass --overwrite to replace them, or move the folder and its .json manifest aside.")
    raise SelfTrainingError(f"{folder} holds pseudo-labels made by {made}, not by {ours}. {fix}")


def make_pseudo_labels(setup: Setup, args, folder: str, model_folder: str, fingerprint: dict, cases: Dict[str, str],
                       prediction: dict, weighting: dict) -> dict:
    """Predict every case into a scratch folder and swap it in; returns the manifest."""
    import torch
    from tqdm import tqdm
    from nnunet_ssl.data.unlabeled_dataset import manifest_file
    from nnunet_ssl.self_training.store import (MANIFEST_FORMAT, make_predictor, predict_pseudo_labels,
                                                write_pseudo_manifest)
    partial = folder + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    print(f"Pseudo-labelling {len(cases)} case(s) with {fingerprint['checkpoint']} "
          f"(mirroring {'on' if prediction['use_mirroring'] else 'off'}) into {folder}")
    predictor = make_predictor(model_folder, setup.fold, torch.device(args.device), prediction["use_mirroring"],
                               prediction["tile_step_size"])
    # a progress bar as nnU-Net's predictor shows; each case's line (its mean voxel weight) becomes the bar's postfix
    with tqdm(desc="Pseudo-labelling", total=len(cases), unit="case") as bar:
        def progress(line: str) -> None:
            bar.set_postfix_str(line.strip().split(": ", 1)[-1], refresh=False)
            bar.update()
        mean_weights = predict_pseudo_labels(predictor, cases, partial, weighting,
                                             setup.configuration_manager.patch_size, log=progress)
    manifest = {"format": MANIFEST_FORMAT, "dataset": setup.dataset, "plans": setup.plans_identifier,
                "configuration": setup.configuration, "fold": setup.fold, "model": fingerprint,
                "prediction": prediction, "mirror_axes": list(predictor.allowed_mirroring_axes or []),
                "weighting": weighting, "cases": cases, "mean_weight": mean_weights}
    del predictor
    if os.path.lexists(manifest_file(folder)):
        os.remove(manifest_file(folder))
    if os.path.islink(folder):  # e.g. a benchmark's link to the user's folder: only the link goes
        os.remove(folder)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    write_pseudo_manifest(folder, manifest)
    return manifest


def reweight_pseudo_labels(setup: Setup, folder: str, manifest: dict, weighting: dict) -> dict:
    from nnunet_ssl.self_training.store import reweight_case, write_pseudo_manifest
    print(f"Reusing the pseudo-labels in {folder} (same model and predictor); weights redone with {weighting}")
    manifest["weighting"] = None  # marks the folder as half-done until every case is redone
    write_pseudo_manifest(folder, manifest)
    lm = setup.label_manager
    manifest["mean_weight"] = {c: reweight_case(folder, c, weighting, lm.num_segmentation_heads,
                                                lm.foreground_labels, setup.configuration_manager.patch_size)
                               for c in sorted(manifest["cases"])}
    manifest["weighting"] = weighting
    write_pseudo_manifest(folder, manifest)
    return manifest


# ----------------------------------------------------------------------------------------------------- training
def train(setup: Setup, trainer: str, args, validate: bool, continue_training: bool = False) -> None:
    """One nnU-Net training run: nnU-Net's run_training (training, then nnU-Net's final validation), or for a stage
    that is not to be validated the same steps without the validation (DDP runs always validate)."""
    import torch
    from nnunetv2.run import run_training as nnunet
    device = torch.device(args.device)
    print(f"\n=== {setup.train_command(trainer)}{' --c' if continue_training else ''} -device {args.device}"
          f"{'' if validate else ' (without the final validation)'} ===")
    if validate or args.num_gpus > 1:
        nnunet.run_training(setup.dataset, setup.configuration, setup.fold, trainer, setup.plans_identifier,
                            num_gpus=args.num_gpus, continue_training=continue_training, device=device)
    else:
        if torch.cuda.is_available():  # as run_training sets it
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
        trainer_object = nnunet.get_trainer_from_args(setup.dataset, setup.configuration, setup.fold, trainer,
                                                      setup.plans_identifier, continue_training, device=device)
        nnunet.maybe_load_checkpoint(trainer_object, continue_training, False)
        trainer_object.run_training()
        del trainer_object
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()


def trained_iterations(fold_folder: str) -> Optional[int]:
    """Epochs in checkpoint_final.pth x iterations per epoch in nnU-Net's debug.json (None if unknown)."""
    import torch
    debug = join(fold_folder, "debug.json")
    if not isfile(debug):
        return None
    epochs = torch.load(join(fold_folder, "checkpoint_final.pth"), map_location="cpu",
                        weights_only=False)["current_epoch"]
    return int(epochs) * int(load_json(debug)["num_iterations_per_epoch"])


def archive_round(model_folder: str, fold, round_index: int) -> str:
    """Move fold_F of a finished round to self_training_round_<r>/fold_F, a model folder of its own."""
    target = join(model_folder, ROUND_FOLDER.format(round_index))
    os.makedirs(target, exist_ok=True)
    for f in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        if isfile(join(model_folder, f)):
            shutil.copy2(join(model_folder, f), join(target, f))
    os.replace(join(model_folder, f"fold_{fold}"), join(target, f"fold_{fold}"))
    return target


def earlier_runs(model_folder: str, fold) -> List[str]:
    return [d for d in [join(model_folder, f"fold_{fold}")] +
            sorted(glob.glob(join(model_folder, ROUND_FOLDER.format("*"), f"fold_{fold}"))) if isdir(d)]


# --------------------------------------------------------------------------------------------- continuing (--c)
def recipe_settings(args, labeled_folder: str, labeled_fingerprint: Optional[dict]) -> dict:
    """What makes a run the experiment it is; a run continued with --c must have the same (``check_same_recipe``).
    Recorded as ``recipe`` in ``fold_F/self_training.json``."""
    return {"labeled_model": os.path.abspath(labeled_folder),
            "labeled_checkpoint_sha256": labeled_fingerprint["sha256"] if labeled_fingerprint else None,
            **{k: getattr(args, k) for k in RECIPE_OPTIONS}}


def read_run_record(model_folder: str, fold) -> Optional[tuple]:
    """(summary, its file) of the newest ``self_training.json`` of a run of this fold: ``fold_F``'s, else (a run cut
    off right after a round was moved aside) the last archived round's; None if there is none."""
    archived = glob.glob(join(model_folder, ROUND_FOLDER.format("*"), f"fold_{fold}", SUMMARY_FILE))
    archived.sort(key=lambda f: int(os.path.basename(os.path.dirname(os.path.dirname(f))).rsplit("_", 1)[1]),
                  reverse=True)
    for f in [join(model_folder, f"fold_{fold}", SUMMARY_FILE)] + archived:
        if isfile(f):
            return load_json(f), f
    return None


def _describe(key: str, value) -> str:
    if key == "disable_tta":
        return "--disable_tta" if value else "no --disable_tta"
    if value is None:
        return f"no {RECIPE_OPTIONS[key]} (the trainer's default)"
    return f"{RECIPE_OPTIONS[key]} {value}"


def check_same_recipe(previous: dict, ours: dict, record_file: str) -> None:
    """--c continues the interrupted run only with the settings it was started with."""
    again = "or start again with --overwrite instead of --c (the earlier run is deleted)"
    theirs_model = previous.get("labeled_model")
    if theirs_model != ours["labeled_model"]:
        raise SelfTrainingError(f"--c: the interrupted run ({record_file}) used the labelled-only model "
                                f"{theirs_model}, this command {ours['labeled_model']}. Point --labeled_model (or "
                                f"--labeled_trainer) at {theirs_model} to continue it, {again}.")
    if ours["labeled_checkpoint_sha256"] is None:
        raise SelfTrainingError(f"--c: the labelled-only model of the interrupted run ({record_file}), "
                                f"{ours['labeled_model']}, has no {FINAL} any more. Restore it to continue the run, "
                                f"{again}.")
    if previous.get("labeled_checkpoint_sha256") != ours["labeled_checkpoint_sha256"]:
        raise SelfTrainingError(f"--c: the labelled-only model {ours['labeled_model']} has changed since the "
                                f"interrupted run ({record_file}) started (sha256 of {FINAL} "
                                f"{str(previous.get('labeled_checkpoint_sha256'))[:12]} then, "
                                f"{ours['labeled_checkpoint_sha256'][:12]} now): its pseudo-labels would differ. "
                                f"Restore that model to continue the run, {again}.")
    for key in RECIPE_OPTIONS:
        theirs = _describe(key, previous.get(key))
        if previous.get(key) != ours[key]:
            raise SelfTrainingError(f"--c: the interrupted run ({record_file}) used {theirs}, this command "
                                    f"{_describe(key, ours[key])}; continuing with it would make another experiment. "
                                    f"Pass {theirs} to continue the run, {again}.")


def stage_plan(args) -> List[tuple]:
    """(stage, round) of every training stage after the labelled-only model."""
    return [("pseudo", r) for r in range(1, args.rounds + 1)] + ([("finetune", None)] if args.finetune_epochs else [])


def stage_name(stage: str, round_index: Optional[int]) -> str:
    return f"self-training round {round_index}" if stage == "pseudo" else "fine-tune"


def write_summary(setup: Setup, args, model_folder: str, recipe: dict, stages: List[dict], complete: bool) -> dict:
    """``fold_F/self_training.json``: written before every stage (``complete`` false, the stage listed without its
    iterations) and at the end; copies left in archived rounds are removed (``read_run_record``)."""
    known = [s["iterations"] for s in stages]
    summary = {"dataset": setup.dataset, "configuration": setup.configuration, "plans": setup.plans_identifier,
               "fold": setup.fold, "trainer": args.tr, "settings": {k: v for k, v in vars(args).items()},
               "recipe": recipe, "complete": complete, "stages": stages,
               "total_iterations": sum(known) if None not in known else None}
    final_fold = join(model_folder, f"fold_{setup.fold}")
    os.makedirs(final_fold, exist_ok=True)
    save_json(summary, join(final_fold, SUMMARY_FILE), sort_keys=False)
    for stale in glob.glob(join(model_folder, ROUND_FOLDER.format("*"), f"fold_{setup.fold}", SUMMARY_FILE)):
        os.remove(stale)
    return summary


def provide_pseudo_labels(setup: Setup, args, folder: str, action: str, source_folder: str, fingerprint: dict,
                          cases: Dict[str, str], prediction: dict, weighting: dict) -> dict:
    """The manifest of the pseudo-labels ``action`` ('predict', 'reweight', 'keep') leaves in ``folder``."""
    from nnunet_ssl.self_training.store import read_pseudo_manifest
    if action == "predict":
        return make_pseudo_labels(setup, args, folder, source_folder, fingerprint, cases, prediction, weighting)
    manifest = read_pseudo_manifest(folder)
    if action == "reweight":
        return reweight_pseudo_labels(setup, folder, manifest, weighting)
    print(f"Reusing the pseudo-labels in {folder} (same model, predictor and weighting)")
    return manifest


# --------------------------------------------------------------------------------------------------------- main
def run(args) -> dict:
    """The whole recipe; returns the summary written to ``fold_F/self_training.json``."""
    import torch
    from nnunet_ssl.cli import set_ext_trainer_env
    from nnunet_ssl.self_training.store import (model_fingerprint, pseudo_label_folder, weighting_settings,
                                                write_pseudo_manifest)
    from nnunet_ssl.trainers.self_training import nnUNetTrainerSelfTraining

    continuing = getattr(args, "continue_training", False)
    if continuing and args.overwrite:
        raise SelfTrainingError("--c continues an interrupted run and --overwrite deletes it to start again: pass "
                                "one of them.")
    if args.labeled_model and args.train_labeled:
        raise SelfTrainingError("--train_labeled trains the labelled-only model in its nnUNet_results folder; it "
                                "cannot be combined with --labeled_model (train that model yourself).")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SelfTrainingError("-device cuda, but torch sees no GPU; pass -device cpu (slow) or -device mps.")
    set_ext_trainer_env()  # training and prediction look trainers up by name
    setup = Setup(args)
    trainer_class = resolve_trainer(args.tr, "-tr")
    if not issubclass(trainer_class, nnUNetTrainerSelfTraining):
        raise SelfTrainingError(f"-tr {args.tr} is not nnUNetTrainerSelfTraining or a subclass of it.")
    cases = fold_unlabeled_cases(setup)
    checkpoint = labeled_checkpoint(setup, args)
    if checkpoint is None:
        resolve_trainer(args.labeled_trainer, "--labeled_trainer")
    labeled_folder = args.labeled_model or setup.model_folder(args.labeled_trainer)
    fingerprint = model_fingerprint(checkpoint) if checkpoint else None
    model_folder = setup.model_folder(args.tr)
    final_fold = join(model_folder, f"fold_{setup.fold}")
    plan = stage_plan(args)
    earlier = earlier_runs(model_folder, setup.fold)
    previous = None
    if earlier and continuing:
        record = read_run_record(model_folder, setup.fold)
        if record is None or "recipe" not in record[0]:
            raise SelfTrainingError(
                f"--c: {', '.join(earlier)} hold(s) a self-training run of fold {setup.fold} without a record of its "
                f"settings ({join(final_fold, SUMMARY_FILE)} with 'recipe'): it was cut off before its first stage "
                f"or made by an older version. Start it again with --overwrite instead of --c.")
        previous = record[0]
        check_same_recipe(previous["recipe"], recipe_settings(args, labeled_folder, fingerprint), record[1])
    elif earlier and not args.overwrite:
        raise SelfTrainingError(f"{', '.join(earlier)} hold(s) an earlier self-training run of fold {setup.fold}. "
                                f"Pass --c to continue it (a run that was cut off), --overwrite to replace it (the "
                                f"folders are deleted), or use another -tr.")
    folder = pseudo_label_folder(setup.pre_base, setup.configuration_manager.data_identifier, setup.fold)
    prediction = {"use_mirroring": not args.disable_tta, "tile_step_size": args.step_size, "use_gaussian": True}
    weighting = weighting_settings(args.weighting, args.threshold)
    # round 1's pseudo-labels (the labelled-only model's) are checked before any work, unless round 1 is finished
    # (with --c: in its archive folder, or still in fold_F when the run was cut off before moving it there)
    first_folder = final_fold if len(plan) == 1 else join(model_folder, ROUND_FOLDER.format(1), f"fold_{setup.fold}")
    first_done = previous is not None and (isfile(join(first_folder, FINAL)) or isfile(join(final_fold, FINAL)))
    action = None if first_done else pseudo_labels_to_make(folder, fingerprint, prediction, weighting, cases,
                                                           args.overwrite, continuing)
    # ------------------------------------------------------------------ checks done: from here on, work is done
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    elif args.device == "cpu":  # as nnUNetv2_train does
        torch.set_num_threads(multiprocessing.cpu_count())
    else:
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    if args.overwrite:
        for d in earlier:
            shutil.rmtree(d)
    elif continuing and not earlier:
        print(f"--c: no earlier self-training run of fold {setup.fold} in {model_folder}; starting one")
    if checkpoint is None:
        train(setup, args.labeled_trainer, args, validate=args.validate == "all",
              continue_training=isfile(join(labeled_folder, f"fold_{setup.fold}", "checkpoint_latest.pth")))
        checkpoint = join(labeled_folder, f"fold_{setup.fold}", FINAL)
        fingerprint = model_fingerprint(checkpoint)
        action = "predict"
    recipe = recipe_settings(args, labeled_folder, fingerprint)
    stages = [{"stage": "labelled-only", "model": os.path.abspath(join(labeled_folder, f"fold_{setup.fold}")),
               "iterations": trained_iterations(join(labeled_folder, f"fold_{setup.fold}"))}]
    recorded = {(s.get("stage"), s.get("round")): s for s in (previous or {}).get("stages", [])}
    source_folder, source_fp = labeled_folder, fingerprint   # the model that labels the next round
    labeller = None                                          # (folder, fingerprint) that labelled the last round
    manifest, trained = None, 0
    for i, (kind, r) in enumerate(plan):
        last = i == len(plan) - 1
        where = final_fold if last else join(model_folder, ROUND_FOLDER.format(i + 1), f"fold_{setup.fold}")
        name = stage_name(kind, r)
        if continuing and not last and not isfile(join(where, FINAL)) and isfile(join(final_fold, FINAL)):
            print(f"--c: {final_fold} holds the finished {name}; moving it to {where}")
            if isdir(where):  # nothing finished in there
                shutil.rmtree(where)
            archive_round(model_folder, setup.fold, i + 1)
        if kind == "pseudo":
            labeller = (source_folder, source_fp)
        if isfile(join(where, FINAL)):  # finished by the interrupted run (--c)
            print(f"--c: the {name} finished earlier ({where}): kept")
            entry = dict(recorded.get((kind, r)) or {"stage": kind, **({"round": r} if r else {})})
            stages.append({**entry, "model": os.path.abspath(where), "iterations": trained_iterations(where)})
            if kind == "pseudo":
                source_folder, source_fp = os.path.dirname(where), None
            action = None
            continue
        if kind == "pseudo":
            if source_fp is None:
                source_fp = model_fingerprint(join(source_folder, f"fold_{setup.fold}", FINAL))
                labeller = (source_folder, source_fp)
            if action is None:  # the source model was trained before this call: its pseudo-labels may be there
                action = pseudo_labels_to_make(folder, source_fp, prediction, weighting, cases, True)
            manifest = provide_pseudo_labels(setup, args, folder, action, source_folder, source_fp, cases,
                                             prediction, weighting)
            manifest["training"] = {"stage": "pseudo", "round": r, "trainer": args.tr, "num_epochs": args.epochs,
                                    "num_iterations_per_epoch": args.iterations_per_epoch,
                                    "pseudo_ratio": args.pseudo_ratio, "save_every": args.save_every}
            entry = {"stage": "pseudo", "round": r, "pseudo_labels": folder, "pseudo_labels_by": source_fp,
                     "mean_weight": sum(manifest["mean_weight"].values()) / len(manifest["mean_weight"])}
        else:
            if manifest is None:  # every round finished earlier: the trainer reads the last round's manifest
                if labeller[1] is None:
                    labeller = (labeller[0], model_fingerprint(join(labeller[0], f"fold_{setup.fold}", FINAL)))
                manifest = provide_pseudo_labels(
                    setup, args, folder, pseudo_labels_to_make(folder, labeller[1], prediction, weighting, cases, True),
                    labeller[0], labeller[1], cases, prediction, weighting)
            init_checkpoint = join(source_folder, f"fold_{setup.fold}", FINAL)
            manifest["training"] = {"stage": "finetune", "trainer": args.tr, "num_epochs": args.finetune_epochs,
                                    "num_iterations_per_epoch": args.iterations_per_epoch,
                                    "initial_lr": args.finetune_lr, "init_checkpoint": init_checkpoint,
                                    "save_every": args.save_every}
            entry = {"stage": "finetune", "init_checkpoint": init_checkpoint}
        write_pseudo_manifest(folder, manifest)
        entry.update(model=os.path.abspath(where), iterations=None)
        stages.append(entry)
        write_summary(setup, args, model_folder, recipe, stages, complete=False)
        resume = continuing and any(isfile(join(final_fold, f)) for f in ("checkpoint_latest.pth",
                                                                           "checkpoint_best.pth"))
        if resume:
            print(f"--c: continuing the {name} from its checkpoint in {final_fold}")
        validate = args.validate == "all" or (last and args.validate == "last") \
            if kind == "pseudo" else args.validate != "none"
        train(setup, args.tr, args, validate=validate, continue_training=resume)
        trained += 1
        entry["iterations"] = trained_iterations(final_fold)
        if not last:
            source_folder, source_fp = archive_round(model_folder, setup.fold, i + 1), None
        action = "predict"  # the next round's pseudo-labels come from the model just trained
    summary = write_summary(setup, args, model_folder, recipe, stages, complete=True)
    if not trained and previous is not None:
        print(f"\n--c: the self-training run of fold {setup.fold} had finished; nothing to train (summary "
              f"rewritten).")
    print("\nSelf-training done. Iterations: " + " + ".join(f"{s['stage']} {s['iterations']}" for s in stages)
          + f" = {summary['total_iterations']}")
    print(f"Final model: {final_fold} (nnUNetv2_predict -d {setup.dataset} -c {setup.configuration} -p "
          f"{setup.plans_identifier} -tr {args.tr} -f {setup.fold} ..., with nnUNet_extTrainer set as by "
          f"nnUNetv2_ssl_env)")
    return summary


@exits_on_user_error(PROG)
def main(argv: Optional[Sequence[str]] = None) -> None:
    run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
