#!/usr/bin/env python
"""Accuracy against the label budget: labelled-only, fully supervised and semi-supervised trainers side by side.

    python scripts/benchmark_ssl.py -d 101 -c 3d_fullres --budgets 4 8 16 --epochs 100 --iterations_per_epoch 250 \
        -o bench_work/LA [--trainers nnUNetTrainerMeanTeacher ...] [--num_val 16] [-f 0] [--record DIR]

For every label budget B the script writes a label-budget split with ``nnUNetv2_ssl_split`` (B labelled training
cases, the other training cases ``unlabeled``, ``--num_val`` held-out cases; the same held-out block for every budget
because the shuffle depends only on ``--seed``), then trains, each for the same iterations
(``--epochs`` x ``--iterations_per_epoch``):

* ``nnUNetTrainer`` on the B labelled cases (stock nnU-Net ignores the ``unlabeled`` list),
* every semi-supervised trainer of ``--trainers`` on the B labelled plus the unlabelled cases,

and once ``nnUNetTrainer`` with all non-held-out training cases labelled (the fully supervised upper bound). Each
trained model predicts the held-out cases with nnU-Net's predictor (``imagesTs``/``labelsTs`` when the raw dataset
has them, else the split's validation cases of ``imagesTr``: ``--test_set``), and ``nnUNetv2_ssl_evaluate``'s code
scores them. Results: ``benchmark_ssl.md`` (rows trainers, columns budgets, Dice % mean ± std over held-out cases),
``benchmark_ssl.png`` (Dice vs number of labelled cases per trainer) and ``benchmark_ssl.json`` in ``-o``.

Trainers are built in-process the way ``nnUNetv2_train`` builds them (``get_trainer_from_args``); the schedule is
set on the instance (``num_epochs``, ``num_iterations_per_epoch``, ``num_val_iterations_per_epoch``) before
``run_training()``. nnU-Net's final validation is skipped (the held-out prediction replaces it).

Your data and results stay untouched: every budget gets its own ``nnUNet_preprocessed`` folder inside ``-o``
whose entries are symbolic links to your preprocessed dataset except ``splits_final.json``, which is the
benchmark's own (your ``splits_final.json`` is never read or written), and its own ``nnUNet_results`` inside
``-o``. Resumable: a run with ``checkpoint_final.pth`` and ``metrics.json`` is skipped, a run with only
``checkpoint_final.pth`` is predicted and evaluated again, a run with ``checkpoint_latest.pth`` continues from it.
Changing the settings of an existing ``-o`` is refused (it would mix runs made with different settings).
Before each run a line ``run i/N: trainer, budget, fold, seed`` gives the time elapsed and an estimate of the time
left from the runs finished so far (runs finished by an earlier call are skipped and not counted). Run records
(``--record DIR``) are written only when asked.
"""
import argparse
import gc
import json
import os
import sys
import time
import traceback
from typing import Dict, List, Optional

from nnunet_ssl.cli_flags import deprecated_aliases, elapsed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_speed import (construct_trainer, environment, machine_info, resolve_trainer,  # noqa: E402
                             select_device, shutdown_loaders, use_plugin_trainers)

SELF_TRAINING = "nnUNetTrainerSelfTraining"  # run through nnUNetv2_ssl_self_train (train_self_training)
SSL_TRAINERS = ("nnUNetTrainerMeanTeacher", "nnUNetTrainerCRLN", "nnUNetTrainerCDR", "nnUNetTrainerBoCLIS",
                "nnUNetTrainerUGPL", SELF_TRAINING)
BASELINE = "nnUNetTrainer"
ALL_LABELED = "all"  # budget tag of the fully supervised run
SETTINGS_FILE = "settings.json"
# spellings of earlier versions: accepted with a warning (nnunet_ssl.cli_flags)
DEPRECATED = {"--no-baseline": "--no_baseline", "--record-dir": "--record",
              "--iters-per-epoch": "--iterations_per_epoch",
              "--self-training-labeled-share": "--self_training_labeled_share",
              "--val-iters": "--val_iterations_per_epoch", "--val": "--num_val", "--fold": "-f",
              "--test-set": "--test_set", "--no-full": "--no_full", "--disable-tta": "--disable_tta",
              "--device": "-device", "--num-threads": "--threads", "--output": "-o"}
RUN_FILE = "run.json"


class BenchmarkError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------------- data set-up
def dataset_paths(dataset: str) -> dict:
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    for var in (nnUNet_raw, nnUNet_preprocessed):
        if not var.is_set():
            raise BenchmarkError(f"environment variable {var.env_var_name} is not set")
    name = maybe_convert_to_dataset_name(dataset)
    raw, pre = join(os.fspath(nnUNet_raw), name), join(os.fspath(nnUNet_preprocessed), name)
    if not os.path.isfile(join(raw, "dataset.json")):
        raise BenchmarkError(f"{join(raw, 'dataset.json')} not found: the held-out images are read from nnUNet_raw")
    if not os.path.isdir(pre):
        raise BenchmarkError(f"{pre} does not exist: run nnUNetv2_plan_and_preprocess -d {dataset} first")
    return {"name": name, "raw": raw, "preprocessed": pre, "dataset_json": load_json(join(raw, "dataset.json"))}


def link_preprocessed(user_folder: str, budget_root: str, dataset_name: str) -> str:
    """A preprocessed dataset folder whose entries link to the user's, except the split file (ours)."""
    target = os.path.join(budget_root, dataset_name)
    os.makedirs(target, exist_ok=True)
    for entry in os.listdir(user_folder):
        link = os.path.join(target, entry)
        if entry == "splits_final.json" or os.path.lexists(link):
            continue
        os.symlink(os.path.abspath(os.path.join(user_folder, entry)), link)
    return target


def write_budget_split(paths: dict, budget_root: str, num_labeled: int, num_val: int, num_folds: int,
                       seed: int) -> List[dict]:
    """``nnUNetv2_ssl_split`` into the budget's own preprocessed folder; an existing split must be identical."""
    from nnunet_ssl.data import splits as ssl_split
    with environment(nnUNet_preprocessed=budget_root):
        try:
            expected = ssl_split.make_label_budget_splits(ssl_split.training_identifiers(paths["name"]),
                                                          num_labeled, num_val, num_folds, seed)
        except ssl_split.SplitError as e:
            raise BenchmarkError(str(e)) from None
        split_file = os.path.join(budget_root, paths["name"], ssl_split.SPLITS_FILE)
        if os.path.isfile(split_file):
            with open(split_file, encoding="utf-8") as f:
                if json.load(f) != expected:
                    raise BenchmarkError(f"{split_file} differs from the split these settings give; it belongs to "
                                         f"another benchmark: use a new -o")
            return expected
        try:
            ssl_split.main(["-d", paths["name"], "--labeled", str(num_labeled), "--num_val", str(num_val), "--folds",
                            str(num_folds), "--seed", str(seed)])
        except SystemExit as e:
            if e.code:
                raise BenchmarkError(f"nnUNetv2_ssl_split --labeled {num_labeled} --num_val {num_val} failed (see "
                                     f"above)") from None
    return expected


def heldout_cases(paths: dict, test_set: str, val_cases: List[str], reference_root: str) -> dict:
    """{'source', 'images': {case: [files]}, 'reference_folder'} of the held-out cases."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    dj, raw = paths["dataset_json"], paths["raw"]
    ending = dj["file_ending"]
    images_ts, labels_ts = os.path.join(raw, "imagesTs"), os.path.join(raw, "labelsTs")
    has_test = os.path.isdir(images_ts) and os.path.isdir(labels_ts) and \
        any(f.endswith(ending) for f in os.listdir(labels_ts))
    if test_set == "test" and not has_test:
        raise BenchmarkError(f"--test_set test: {images_ts} and {labels_ts} (with '{ending}' files) are needed")
    if test_set == "test" or (test_set == "auto" and has_test):
        channels = len(dj.get("channel_names", dj.get("modality", {"0": None})))
        cases = sorted(f[:-len(ending)] for f in os.listdir(labels_ts) if f.endswith(ending))
        images = {c: [os.path.join(images_ts, f"{c}_{i:04d}{ending}") for i in range(channels)] for c in cases}
        missing = [f for files in images.values() for f in files if not os.path.isfile(f)]
        if missing:
            raise BenchmarkError(f"{len(missing)} test image(s) missing for the cases of {labels_ts}, e.g. "
                                 f"{missing[0]}")
        return {"source": "imagesTs/labelsTs", "images": images, "reference_folder": labels_ts}
    files = get_filenames_of_train_images_and_targets(raw, dj)
    reference = os.path.join(reference_root, "reference")
    os.makedirs(reference, exist_ok=True)
    for case in val_cases:  # nnUNetv2_ssl_evaluate scores every file of the reference folder
        link = os.path.join(reference, case + ending)
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(files[case]["label"]), link)
    return {"source": "validation cases of the split (imagesTr/labelsTr)",
            "images": {c: files[c]["images"] for c in val_cases}, "reference_folder": reference}


def foreground_labels(dataset_json: dict) -> List[int]:
    return sorted(v for k, v in dataset_json["labels"].items() if isinstance(v, int) and v != 0 and k != "ignore")


# ------------------------------------------------------------------------------------------------------- one run
def model_folder(results_root: str, dataset_name: str, trainer: str, plans: str, configuration: str) -> str:
    return os.path.join(results_root, dataset_name, f"{trainer}__{plans}__{configuration}")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch before a run. nnU-Net's augmentation workers draw their own seeds, so a
    seed names a repetition rather than making a run bit-reproducible."""
    import random

    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(trainer_class, args, paths, budget_pre_root, results_root, fold_dir, device, seed: int = 0,
          epochs: Optional[int] = None) -> float:
    import torch
    latest = os.path.join(fold_dir, "checkpoint_latest.pth")
    resume = os.path.isfile(latest)
    seed_everything(seed)
    with environment(nnUNet_preprocessed=budget_pre_root, nnUNet_results=results_root):
        trainer = construct_trainer(trainer_class, paths["name"], args.c, args.fold, args.p, device,
                                    continue_training=resume)
        trainer.num_epochs = args.epochs if epochs is None else epochs
        trainer.num_iterations_per_epoch = args.iters_per_epoch
        trainer.num_val_iterations_per_epoch = args.val_iters
        trainer.save_every = 1  # checkpoint_latest.pth after every epoch, so a run that is cut off can continue
        if resume:
            print(f"[benchmark_ssl]   continuing from {latest}")
            trainer.load_checkpoint(latest)
        if device.type == "cuda":
            torch.backends.cudnn.deterministic = False
            torch.backends.cudnn.benchmark = True
        start = time.perf_counter()
        try:
            trainer.run_training()
        finally:
            shutdown_loaders(trainer)
            del trainer  # free the device memory before the next run
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        return time.perf_counter() - start


def self_training_epochs(args) -> tuple:
    """(labelled-only epochs, self-training epochs): the recipe gets the same total iterations as every other row,
    the labelled-only model's included."""
    labeled = int(round(args.epochs * args.self_training_labeled_share))
    if not 1 <= labeled < args.epochs or abs(labeled - args.epochs * args.self_training_labeled_share) > 1e-6:
        raise BenchmarkError(f"--self_training_labeled_share {args.self_training_labeled_share} of --epochs "
                             f"{args.epochs} must be a whole number of epochs between 1 and {args.epochs - 1}")
    return labeled, args.epochs - labeled


def train_self_training(args, paths, budget_pre_root, seed_dir, results_root, device, seed: int) -> dict:
    """Offline self-training as users run it (``nnUNetv2_ssl_self_train``): a labelled-only nnUNetTrainer for the
    first share of the iterations (its own results folder, so it is not the labelled-only row's model), then the
    command with that model for the rest. A cut-off labelled-only model continues, and so does a cut-off
    self-training stage: the command runs with ``--c`` when this seed has a partial self-training run (finished
    stages and the pseudo-labels of the same model are kept, the stage continues from its ``checkpoint_latest.pth``,
    written every epoch); otherwise with ``--overwrite``, which replaces the budget folder's link to a pseudo-label
    folder of yours (never your folder) and a partial run made before ``--c`` existed (no record of its settings)."""
    from nnunet_ssl.self_training import cli as self_train
    labeled_epochs, pseudo_epochs = self_training_epochs(args)
    labeled_root = os.path.join(seed_dir, "self_training_labeled_only")
    labeled_model = model_folder(labeled_root, paths["name"], BASELINE, args.p, args.c)
    labeled_fold = os.path.join(labeled_model, f"fold_{args.fold}")
    start = time.perf_counter()
    if not os.path.isfile(os.path.join(labeled_fold, "checkpoint_final.pth")):
        print(f"[benchmark_ssl]   labelled-only model of the self-training recipe: {labeled_epochs} epochs")
        train(resolve_trainer(BASELINE)[0], args, paths, budget_pre_root, labeled_root, labeled_fold, device, seed,
              epochs=labeled_epochs)
    seed_everything(seed)
    argv = ["-d", paths["name"], "-c", args.c, "-f", str(args.fold), "-p", args.p, "--labeled_model", labeled_model,
            "--epochs", str(pseudo_epochs), "--iterations_per_epoch", str(args.iters_per_epoch), "--validate", "none",
            "-device", device.type, "--save_every", "1"]
    self_training_model = model_folder(results_root, paths["name"], SELF_TRAINING, args.p, args.c)
    record = self_train.read_run_record(self_training_model, args.fold)
    if self_train.earlier_runs(self_training_model, args.fold) and record and "recipe" in record[0]:
        print(f"[benchmark_ssl]   continuing the cut-off self-training run in {self_training_model} (--c)")
        argv.append("--c")
    else:
        argv.append("--overwrite")
    if args.disable_tta:
        argv.append("--disable_tta")
    if args.num_threads:
        argv += ["--threads", str(args.num_threads)]
    with environment(nnUNet_preprocessed=budget_pre_root, nnUNet_results=results_root):
        summary = self_train.run(self_train.build_parser().parse_args(argv))
    return {"train_seconds": time.perf_counter() - start,
            "self_training": {"stages": [{k: v for k, v in st.items() if k in ("stage", "round", "iterations",
                                                                                "mean_weight")}
                                         for st in summary["stages"]],
                              "total_iterations": summary["total_iterations"]}}


def predict(model_dir, heldout, prediction_folder, args, device) -> float:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    start = time.perf_counter()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=not args.disable_tta,
                                perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_dir, use_folds=(args.fold,),
                                                   checkpoint_name="checkpoint_final.pth")
    os.makedirs(prediction_folder, exist_ok=True)
    cases = sorted(heldout["images"])
    predictor.predict_from_files_sequential([heldout["images"][c] for c in cases],
                                            [os.path.join(prediction_folder, c) for c in cases],
                                            save_probabilities=False, overwrite=True)
    return time.perf_counter() - start


def evaluate(heldout, prediction_folder, evaluation_folder, paths) -> dict:
    from nnunet_ssl.evaluation.evaluate import evaluate_folders, write_outputs
    result = evaluate_folders(heldout["reference_folder"], prediction_folder,
                              labels=foreground_labels(paths["dataset_json"]),
                              file_ending=paths["dataset_json"]["file_ending"],
                              dataset_json=os.path.join(paths["raw"], "dataset.json"))
    write_outputs(result, evaluation_folder, overwrite=True)
    return result


def dice_summary(metrics: dict) -> dict:
    summary = metrics["summary"]
    per_class = {label: {"mean": entry["dice"]["mean"], "std": entry["dice"]["std"]}
                 for label, entry in summary["per_class"].items()}
    return {"mean": summary["headline"]["dice"]["mean"], "std": summary["headline"]["dice"]["std"],
            "n_cases": summary["n_cases"], "per_class": per_class}


def metric_summary(metrics: dict) -> dict:
    """Mean and std over held-out cases of the class-mean Dice, Jaccard, 95HD and ASD (voxels and mm), and the
    per-case Dice (so tables can be re-aggregated, e.g. paired differences between runs)."""
    mean = metrics["summary"]["mean"]
    out = {k: {"mean": mean[k]["mean"], "std": mean[k]["std"]}
           for k in ("dice", "jaccard", "hd95_voxel", "asd_voxel", "hd95_mm", "asd_mm") if k in mean}
    out["per_case_dice"] = {c["case"]: c["mean"]["dice"] for c in metrics["cases"]}
    return out


def ssl_diagnostics(fold_dir: str) -> dict:
    """Per-epoch semi-supervised diagnostics (pseudo-label Dice against the hidden labels, reliable fraction,
    teacher confidence, unsupervised loss) from the final checkpoint's log; {} for supervised runs."""
    import torch
    final = os.path.join(fold_dir, "checkpoint_final.pth")
    if not os.path.isfile(final):
        return {}
    logging = torch.load(final, map_location="cpu", weights_only=False).get("logging", {})
    keys = [k for k in ("pseudo_label_dice", "reliable_fraction", "teacher_confidence", "unsup_loss",
                        "unsup_weight", "mean_fg_dice", "val_losses", "train_losses") if logging.get(k)]
    return {k: [float(v) for v in logging[k]] for k in keys}


def git_commit() -> Optional[str]:
    import subprocess
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")


def run_tag(trainer_name: str, seed: int) -> str:
    return f"{trainer_name}__seed{seed}"


def write_record(record_dir: Optional[str], budget_tag: str, record: dict) -> None:
    """The run's result as one small JSON under ``record_dir/budget_<tag>/`` (fold 0) or
    ``record_dir/fold_<F>/budget_<tag>/`` (meant to be committed)."""
    if not record_dir or record.get("status") != "ok":
        return
    fold = record.get("settings", {}).get("fold", 0)
    # fold 0 is the development fold (its records stay where they always were); confirmation folds get their own
    # folder so that records of different held-out blocks never overwrite each other
    folder = os.path.join(record_dir, *([f"fold_{fold}"] if fold else []), f"budget_{budget_tag}")
    os.makedirs(folder, exist_ok=True)
    keep = {k: v for k, v in record.items() if k not in ("model_folder", "run_folder", "skipped")}
    with open(os.path.join(folder, run_tag(record["trainer"], record["seed"]) + ".json"), "w",
              encoding="utf-8") as f:
        json.dump(keep, f, indent=2)


def run_locations(trainer_name, args, paths, budget_dir, seed: int) -> tuple:
    """(seed folder, run folder, nnUNet_results, model folder, fold folder, final checkpoint, metrics file)."""
    seed_dir = os.path.join(budget_dir, f"seed_{seed}")
    run_dir = os.path.join(seed_dir, trainer_name)
    results_root = os.path.join(seed_dir, "nnUNet_results")
    model_dir = model_folder(results_root, paths["name"], trainer_name, args.p, args.c)
    fold_dir = os.path.join(model_dir, f"fold_{args.fold}")
    final = os.path.join(fold_dir, "checkpoint_final.pth")
    metrics_file = os.path.join(run_dir, "evaluation", "metrics.json")
    return seed_dir, run_dir, results_root, model_dir, fold_dir, final, metrics_file


def finished_earlier(trainer_name, args, paths, budget_dir, seed: int) -> bool:
    """The run was trained, predicted and evaluated by an earlier call (``run_one`` skips it)."""
    *_, final, metrics_file = run_locations(trainer_name, args, paths, budget_dir, seed)
    return os.path.isfile(final) and os.path.isfile(metrics_file)


class Progress:
    """``run i/N: trainer, budget, fold, seed`` before each run, with the time elapsed and an estimate of the time
    left: the mean duration of the runs finished in this call times the runs still to do. Runs finished by an
    earlier call (``finished_earlier``, skipped in seconds) count for neither."""

    def __init__(self, finished_earlier: List[bool], clock=time.monotonic, out=print):
        self.finished_earlier, self.total = list(finished_earlier), len(finished_earlier)
        self.clock, self.out = clock, out
        self.begin = clock()
        self.index, self.durations, self.run_start = 0, [], None

    def start(self, trainer: str, budget_tag: str, fold: int, seed: int) -> None:
        i = self.index
        self.index += 1
        self.run_start = self.clock()
        line = (f"[benchmark_ssl] run {i + 1}/{self.total}: {trainer}, budget {budget_tag}, fold {fold}, seed {seed} "
                f"(elapsed {elapsed(self.run_start - self.begin)}")
        if self.finished_earlier[i]:
            self.out(f"{line}; finished earlier)")
            return
        remaining = sum(not done for done in self.finished_earlier[i:])
        if self.durations:
            mean = sum(self.durations) / len(self.durations)
            estimate = (f"about {elapsed(mean * remaining)} left for {remaining} run(s), from the "
                        f"{len(self.durations)} finished")
        else:
            estimate = "no estimate until a run has finished"
        self.out(f"{line}; {estimate})")

    def finish(self, counted: bool = True) -> None:
        """``counted``: the run did its work (a trainer that could not be imported took no time)."""
        if counted and not self.finished_earlier[self.index - 1]:
            self.durations.append(self.clock() - self.run_start)

    def done(self) -> None:
        self.out(f"[benchmark_ssl] {self.total} run(s) done in {elapsed(self.clock() - self.begin)}")


def run_one(trainer_name, budget, args, paths, budget_dir, heldout, device, seed: int = 0,
            context: Optional[dict] = None) -> dict:
    """Train (or continue), predict and evaluate one trainer at one budget and seed, skipping finished work."""
    seed_dir, run_dir, results_root, model_dir, fold_dir, final, metrics_file = run_locations(
        trainer_name, args, paths, budget_dir, seed)
    record = {"trainer": trainer_name, "budget": budget, "seed": seed, "model_folder": model_dir,
              "run_folder": run_dir}
    run_file = os.path.join(run_dir, RUN_FILE)
    if os.path.isfile(final) and os.path.isfile(metrics_file):
        print(f"[benchmark_ssl] skipped {trainer_name} (budget {budget}, seed {seed}): finished earlier ({final})")
        with open(metrics_file, encoding="utf-8") as f:
            metrics = json.load(f)
        previous = {}
        if os.path.isfile(run_file):
            with open(run_file, encoding="utf-8") as f:
                previous = json.load(f)
        return {**previous, **record, "status": "ok", "skipped": True, "dice": dice_summary(metrics),
                "metrics": metric_summary(metrics)}
    trainer_class, reason = resolve_trainer(trainer_name)
    if trainer_class is None:
        print(f"[benchmark_ssl] skipping {trainer_name}: {reason}")
        return {**record, "status": "skipped (not importable)", "reason": reason}
    os.makedirs(run_dir, exist_ok=True)
    record.update(context or {})
    try:
        pre_root = os.path.join(budget_dir, "nnUNet_preprocessed")
        if os.path.isfile(final):
            print(f"[benchmark_ssl] {trainer_name} (budget {budget}, seed {seed}): trained earlier, predicting again")
            record["train_seconds"] = None
        else:
            print(f"[benchmark_ssl] training {trainer_name} (budget {budget}, seed {seed}): {args.epochs} epochs x "
                  f"{args.iters_per_epoch} iterations")
            if trainer_name == SELF_TRAINING:
                record.update(train_self_training(args, paths, pre_root, seed_dir, results_root, device, seed))
            else:
                record["train_seconds"] = train(trainer_class, args, paths, pre_root, results_root, fold_dir, device,
                                                seed)
        prediction_folder = os.path.join(run_dir, "predictions")
        record["predict_seconds"] = predict(model_dir, heldout, prediction_folder, args, device)
        metrics = evaluate(heldout, prediction_folder, os.path.dirname(metrics_file), paths)
        record.update(status="ok", skipped=False, dice=dice_summary(metrics), metrics=metric_summary(metrics),
                      diagnostics=ssl_diagnostics(fold_dir))
    except Exception as e:  # one failing trainer must not cost the others' results
        traceback.print_exc()
        record.update(status="failed", reason=f"{type(e).__name__}: {e}")
    with open(run_file, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    return record


# ------------------------------------------------------------------------------------------------------ report
def flat_runs(runs: Dict[str, Dict[str, Dict[str, dict]]]) -> List[dict]:
    """{trainer: {budget tag: {seed: record}}} -> records tagged with their budget."""
    return [{**r, "budget_tag": tag} for by_tag in runs.values() for tag, by_seed in by_tag.items()
            for r in by_seed.values()]


def markdown_report(report: dict) -> str:
    from benchmark_table import markdown_table
    records = flat_runs(report["runs"])
    notes = [f"{report['num_training_cases']} training cases outside the held-out block; at budget B the "
             f"semi-supervised trainers see the other {report['num_training_cases']} - B of them without labels "
             f"(plus imagesUnlabeled, if preprocessed)."]
    notes += [f"{r['trainer']}, budget {r['budget_tag']}, seed {r['seed']}: {r['status']} ({r.get('reason', '')})"
              for r in records if r["status"] != "ok"]
    if report["machine"]["device"] == "cpu":
        notes.append("CPU run.")
    return markdown_table(records) + "\n".join(f"- {n}" for n in notes) + "\n"


def plot_report(report: dict, filename: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with plt.style.context("default"):  # nnU-Net's progress plots set a large seaborn font scale globally
        _plot(report, filename, plt)


def _plot(report: dict, filename: str, plt) -> None:
    from benchmark_table import group_runs
    s, n_all = report["settings"], report["num_training_cases"]
    groups = group_runs(flat_runs(report["runs"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for trainer in [BASELINE] + s["ssl_trainers"]:
        points = [(b, groups.get((trainer, str(b)))) for b in s["budgets"]]
        points = [(b, [r["metrics"]["dice"]["mean"] for r in rs]) for b, rs in points if rs]
        if points:
            ax.errorbar([b for b, _ in points], [100 * sum(d) / len(d) for _, d in points],
                        yerr=[100 * (max(d) - min(d)) / 2 for _, d in points], marker="o", capsize=3,
                        label=row_label(trainer))
    full = groups.get((BASELINE, ALL_LABELED))
    if full:
        ax.axhline(100 * sum(r["metrics"]["dice"]["mean"] for r in full) / len(full), color="k", linestyle="--",
                   label=f"{BASELINE}, all {n_all} labelled")
    ax.set_xlabel("labelled training cases")
    ax.set_ylabel("Dice (%) on held-out cases (error bar: seed range)")
    ax.set_xticks(s["budgets"])
    ax.set_title(f"{s['dataset_name']} {s['configuration']}, {s['epochs'] * s['iters_per_epoch']} iterations per run",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(filename, dpi=120)
    plt.close(fig)


def row_label(trainer: str) -> str:
    return f"{trainer} (labelled only)" if trainer == BASELINE else trainer


# --------------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark_ssl.py", description=__doc__.split("\n\n")[2].replace("\n", " "))
    p.add_argument("-d", required=True, help="dataset name or id (planned and preprocessed; raw data in nnUNet_raw)")
    p.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("--budgets", type=int, nargs="+", required=True, help="numbers of labelled training cases")
    p.add_argument("--trainers", nargs="*", default=list(SSL_TRAINERS),
                   help=f"semi-supervised trainers (default: {' '.join(SSL_TRAINERS)}); {BASELINE} labelled-only "
                        f"and fully supervised are run too unless --no_baseline / --no_full")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="training seeds: every run is repeated once per seed (default: 0)")
    p.add_argument("--no_baseline", action="store_true", help="skip the labelled-only nnUNetTrainer runs")
    p.add_argument("--record", dest="record_dir", default=None, metavar="DIR",
                   help="also write each finished run's result (metrics, diagnostics, commit, machine, date, "
                        "iterations, seed) as a small JSON under this folder, e.g. benchmarks/LA_3p5mm, so that "
                        "results can be committed and tables rebuilt with scripts/benchmark_table.py (default: no "
                        "records)")
    p.add_argument("--epochs", type=int, required=True, help="epochs of every run")
    p.add_argument("--iterations_per_epoch", dest="iters_per_epoch", type=int, metavar="N", default=250,
                   help="training iterations per epoch (default 250)")
    p.add_argument("--self_training_labeled_share", type=float, default=0.5, metavar="SHARE",
                   help=f"{SELF_TRAINING}: share of the iterations spent on its labelled-only model; the "
                        f"self-training stage gets the rest (default 0.5)")
    p.add_argument("--val_iterations_per_epoch", dest="val_iters", type=int, metavar="N", default=10,
                   help="nnU-Net validation iterations per epoch (logging/checkpoint_best only; default 10)")
    p.add_argument("--num_val", dest="val", type=int, metavar="N", default=None,
                   help="held-out (validation) cases of the split (default 20%% of the training cases)")
    p.add_argument("-f", dest="fold", type=int, metavar="F", default=0,
                   help="which validation block of the split (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split's shuffle (default 0)")
    p.add_argument("--test_set", choices=("auto", "test", "val"), default="auto",
                   help="held-out cases: imagesTs/labelsTs ('test'), the split's validation cases ('val'), or "
                        "'auto' (test if the dataset has labelsTs, default)")
    p.add_argument("--no_full", action="store_true", help="skip the fully supervised nnUNetTrainer run")
    p.add_argument("--disable_tta", action="store_true", help="predict without test-time mirroring")
    p.add_argument("-device", dest="device", choices=("cuda", "cpu"), default=None, help="default: cuda if available")
    p.add_argument("--threads", dest="num_threads", type=int, metavar="N", default=None,
                   help="torch threads (default as nnUNetv2_train: all cores on CPU, 1 with CUDA)")
    p.add_argument("-o", dest="output", required=True, metavar="OUT",
                   help="benchmark folder (all runs, predictions, reports)")
    deprecated_aliases(p, DEPRECATED)
    return p


def check_settings(output: str, settings: dict) -> None:
    """Refuse to mix runs with different settings in one -o folder (budgets and trainers may be added)."""
    path = os.path.join(output, SETTINGS_FILE)
    fixed = {k: v for k, v in settings.items() if k not in ("budgets", "ssl_trainers", "no_full", "seeds",
                                                                   "no_baseline")}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        diff = sorted(k for k in set(fixed) | set(old) if fixed.get(k) != old.get(k))
        if diff:
            raise BenchmarkError(f"{output} holds runs made with other settings ({', '.join(diff)}: "
                                 f"{[old.get(k) for k in diff]} there, {[fixed.get(k) for k in diff]} now); use "
                                 f"another -o")
    else:
        os.makedirs(output, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(fixed, f, indent=2)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except BenchmarkError as e:
        print(f"benchmark_ssl: error: {e}", file=sys.stderr)
        return 2


def _main(args) -> int:
    from nnunet_ssl.data.splits import training_identifiers
    if args.fold < 0:
        # the benchmark writes its own split with folds 0..fold, so every run has a fold whose labels stay hidden;
        # a negative index would silently pick another block
        raise BenchmarkError(f"-f {args.fold}: give the held-out block's index, 0 or more")
    if args.epochs < 1 or args.iters_per_epoch < 1 or args.val_iters < 1:
        raise BenchmarkError("--epochs, --iterations_per_epoch and --val_iterations_per_epoch must be at least 1")
    use_plugin_trainers()
    paths = dataset_paths(args.d)
    device = select_device(args.device, args.num_threads)
    output = os.path.abspath(args.output)
    user_results = os.environ.get("nnUNet_results")
    if user_results and os.path.commonpath([output, os.path.abspath(user_results)]) == os.path.abspath(user_results):
        raise BenchmarkError(f"-o {output} lies inside nnUNet_results ({user_results}); choose a folder of "
                             f"its own so the benchmark cannot mix with your trainings")
    if SELF_TRAINING in args.trainers:
        self_training_epochs(args)  # refuse a share that is not a whole number of epochs before any work
    num_training = len(training_identifiers(paths["name"]))
    num_val = args.val if args.val is not None else max(1, int(round(0.2 * num_training)))
    budgets = sorted(set(args.budgets))
    ssl_trainers = [t for t in dict.fromkeys(args.trainers) if t != BASELINE]
    num_all = num_training - num_val
    if num_val < 1:  # nnU-Net validates every epoch; refused before anything is written to -o
        raise BenchmarkError(f"--num_val {num_val}: hold out at least 1 case (the held-out block is scored and nnU-Net "
                             f"validates on it every epoch)")
    if min(budgets) < 1:
        raise BenchmarkError(f"--budgets {budgets}: every label budget must be at least 1 labelled case")
    if any(b > num_all for b in budgets):
        raise BenchmarkError(f"--budgets {budgets}: with {num_training} training cases and --num_val {num_val} at most "
                             f"{num_all} can be labelled")
    settings = {"dataset": str(args.d), "dataset_name": paths["name"], "configuration": args.c, "plans": args.p,
                "fold": args.fold, "seed": args.seed, "num_val": num_val, "epochs": args.epochs,
                "iters_per_epoch": args.iters_per_epoch, "val_iters": args.val_iters, "test_set": args.test_set,
                "disable_tta": args.disable_tta, "budgets": budgets, "ssl_trainers": ssl_trainers,
                "no_full": args.no_full, "seeds": sorted(set(args.seeds)), "no_baseline": args.no_baseline}
    check_settings(output, settings)

    plan = [(str(b), b, ([] if args.no_baseline else [BASELINE]) + ssl_trainers) for b in budgets]
    if not args.no_full:
        plan.append((ALL_LABELED, num_all, [BASELINE]))
    splits, budget_dirs = {}, {}
    for tag, num_labeled, _ in plan:
        budget_dirs[tag] = os.path.join(output, f"budget_{tag}")
        pre_root = os.path.join(budget_dirs[tag], "nnUNet_preprocessed")
        link_preprocessed(paths["preprocessed"], pre_root, paths["name"])
        splits[tag] = write_budget_split(paths, pre_root, num_labeled, num_val, args.fold + 1, args.seed)[args.fold]
    val_cases = splits[plan[0][0]]["val"]
    if any(s["val"] != val_cases for s in splits.values()):
        raise BenchmarkError("the budgets' splits hold out different cases (internal error)")
    heldout = heldout_cases(paths, args.test_set, val_cases, output)

    context = {"commit": git_commit(), "machine": machine_info(device),
               "iterations": args.epochs * args.iters_per_epoch,
               "settings": {k: v for k, v in settings.items() if k not in ("budgets", "ssl_trainers", "seeds")}}
    runs: Dict[str, Dict[str, dict]] = {}
    jobs = [(tag, num_labeled, trainer, seed) for tag, num_labeled, trainers in plan for trainer in trainers
            for seed in settings["seeds"]]
    progress = Progress([finished_earlier(trainer, args, paths, budget_dirs[tag], seed)
                         for tag, _, trainer, seed in jobs])
    for tag, num_labeled, trainer, seed in jobs:
        progress.start(trainer, tag, args.fold, seed)
        record = run_one(trainer, num_labeled, args, paths, budget_dirs[tag], heldout, device, seed,
                         {**context, "split": splits[tag], "heldout_source": heldout["source"]})
        progress.finish(counted=record.get("status") != "skipped (not importable)")
        write_record(args.record_dir, tag, record)
        runs.setdefault(trainer, {}).setdefault(tag, {})[str(seed)] = record
    progress.done()

    report = {"settings": settings, "machine": machine_info(device), "num_training_cases": num_all,
              "heldout": {"source": heldout["source"], "n_cases": len(heldout["images"]),
                          "cases": sorted(heldout["images"]), "labels": foreground_labels(paths["dataset_json"])},
              "splits": {tag: s for tag, s in splits.items()}, "runs": runs}
    with open(os.path.join(output, "benchmark_ssl.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    table = markdown_report(report)
    with open(os.path.join(output, "benchmark_ssl.md"), "w", encoding="utf-8") as f:
        f.write(table)
    plot_report(report, os.path.join(output, "benchmark_ssl.png"))
    print("\n" + table)
    print(f"Wrote {os.path.join(output, 'benchmark_ssl.md')}, benchmark_ssl.png and benchmark_ssl.json")
    return 0 if all(r["status"] != "failed" for r in flat_runs(runs)) else 1


if __name__ == "__main__":
    sys.exit(main())
