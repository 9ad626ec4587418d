#!/usr/bin/env python
"""Accuracy against the label budget: labelled-only, fully supervised and semi-supervised trainers side by side.

    python scripts/benchmark_ssl.py -d 101 -c 3d_fullres --budgets 4 8 16 --epochs 100 --iters-per-epoch 250 \
        --output benchmarks/LA [--trainers nnUNetTrainerMeanTeacher ...] [--val 16] [--fold 0]

For every label budget B the script writes a label-budget split with ``nnUNetv2_ssl_split`` (B labelled training
cases, the other training cases ``unlabeled``, ``--val`` held-out cases; the same held-out block for every budget
because the shuffle depends only on ``--seed``), then trains, each for the same iterations
(``--epochs`` x ``--iters-per-epoch``):

* ``nnUNetTrainer`` on the B labelled cases (stock nnU-Net ignores the ``unlabeled`` list),
* every semi-supervised trainer of ``--trainers`` on the B labelled plus the unlabelled cases,

and once ``nnUNetTrainer`` with all non-held-out training cases labelled (the fully supervised upper bound). Each
trained model predicts the held-out cases with nnU-Net's predictor (``imagesTs``/``labelsTs`` when the raw dataset
has them, else the split's validation cases of ``imagesTr``: ``--test-set``), and ``nnUNetv2_ssl_evaluate``'s code
scores them. Results: ``benchmark_ssl.md`` (rows trainers, columns budgets, Dice % mean ± std over held-out cases),
``benchmark_ssl.png`` (Dice vs number of labelled cases per trainer) and ``benchmark_ssl.json`` in ``--output``.

Trainers are built in-process the way ``nnUNetv2_train`` builds them (``get_trainer_from_args``); the schedule is
set on the instance (``num_epochs``, ``num_iterations_per_epoch``, ``num_val_iterations_per_epoch``) before
``run_training()``. nnU-Net's final validation is skipped (the held-out prediction replaces it).

Your data and results stay untouched: every budget gets its own ``nnUNet_preprocessed`` folder inside ``--output``
whose entries are symbolic links to your preprocessed dataset except ``splits_final.json``, which is the
benchmark's own (your ``splits_final.json`` is never read or written), and its own ``nnUNet_results`` inside
``--output``. Resumable: a run with ``checkpoint_final.pth`` and ``metrics.json`` is skipped, a run with only
``checkpoint_final.pth`` is predicted and evaluated again, a run with ``checkpoint_latest.pth`` continues from it.
Changing the settings of an existing ``--output`` is refused (it would mix runs made with different settings).
"""
import argparse
import gc
import json
import math
import os
import sys
import time
import traceback
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_speed import (construct_trainer, environment, machine_info, resolve_trainer,  # noqa: E402
                             select_device, shutdown_loaders, use_plugin_trainers)

SSL_TRAINERS = ("nnUNetTrainerMeanTeacher", "nnUNetTrainerCRLN", "nnUNetTrainerCDR", "nnUNetTrainerBoCLIS",
                "nnUNetTrainerUGPL")
BASELINE = "nnUNetTrainer"
ALL_LABELED = "all"  # budget tag of the fully supervised run
SETTINGS_FILE = "settings.json"
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
        expected = ssl_split.make_label_budget_splits(ssl_split.training_identifiers(paths["name"]), num_labeled,
                                                      num_val, num_folds, seed)
        split_file = os.path.join(budget_root, paths["name"], ssl_split.SPLITS_FILE)
        if os.path.isfile(split_file):
            with open(split_file, encoding="utf-8") as f:
                if json.load(f) != expected:
                    raise BenchmarkError(f"{split_file} differs from the split these settings give; it belongs to "
                                         f"another benchmark: use a new --output")
            return expected
        try:
            ssl_split.main(["-d", paths["name"], "--labeled", str(num_labeled), "--num-val", str(num_val), "--folds",
                            str(num_folds), "--seed", str(seed)])
        except SystemExit as e:
            if e.code:
                raise BenchmarkError(f"nnUNetv2_ssl_split --labeled {num_labeled} --val {num_val} failed (see "
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
        raise BenchmarkError(f"--test-set test: {images_ts} and {labels_ts} (with '{ending}' files) are needed")
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


def train(trainer_class, args, paths, budget_pre_root, results_root, fold_dir, device) -> float:
    import torch
    latest = os.path.join(fold_dir, "checkpoint_latest.pth")
    resume = os.path.isfile(latest)
    with environment(nnUNet_preprocessed=budget_pre_root, nnUNet_results=results_root):
        trainer = construct_trainer(trainer_class, paths["name"], args.c, args.fold, args.p, device,
                                    continue_training=resume)
        trainer.num_epochs = args.epochs
        trainer.num_iterations_per_epoch = args.iters_per_epoch
        trainer.num_val_iterations_per_epoch = args.val_iters
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


def run_one(trainer_name, budget, args, paths, budget_dir, heldout, device) -> dict:
    """Train (or continue), predict and evaluate one trainer at one budget, skipping finished work."""
    run_dir = os.path.join(budget_dir, trainer_name)
    results_root = os.path.join(budget_dir, "nnUNet_results")
    model_dir = model_folder(results_root, paths["name"], trainer_name, args.p, args.c)
    fold_dir = os.path.join(model_dir, f"fold_{args.fold}")
    final = os.path.join(fold_dir, "checkpoint_final.pth")
    metrics_file = os.path.join(run_dir, "evaluation", "metrics.json")
    record = {"trainer": trainer_name, "budget": budget, "model_folder": model_dir, "run_folder": run_dir}
    run_file = os.path.join(run_dir, RUN_FILE)
    if os.path.isfile(final) and os.path.isfile(metrics_file):
        print(f"[benchmark_ssl] skipped {trainer_name} (budget {budget}): finished earlier ({final})")
        with open(metrics_file, encoding="utf-8") as f:
            dice = dice_summary(json.load(f))
        previous = {}
        if os.path.isfile(run_file):
            with open(run_file, encoding="utf-8") as f:
                previous = json.load(f)
        return {**previous, **record, "status": "ok", "skipped": True, "dice": dice}
    trainer_class, reason = resolve_trainer(trainer_name)
    if trainer_class is None:
        print(f"[benchmark_ssl] skipping {trainer_name}: {reason}")
        return {**record, "status": "skipped (not importable)", "reason": reason}
    os.makedirs(run_dir, exist_ok=True)
    try:
        if os.path.isfile(final):
            print(f"[benchmark_ssl] {trainer_name} (budget {budget}): trained earlier, predicting again")
            record["train_seconds"] = None
        else:
            print(f"[benchmark_ssl] training {trainer_name} (budget {budget}): {args.epochs} epochs x "
                  f"{args.iters_per_epoch} iterations")
            record["train_seconds"] = train(trainer_class, args, paths, os.path.join(budget_dir, "nnUNet_preprocessed"),
                                            results_root, fold_dir, device)
        prediction_folder = os.path.join(run_dir, "predictions")
        record["predict_seconds"] = predict(model_dir, heldout, prediction_folder, args, device)
        metrics = evaluate(heldout, prediction_folder, os.path.dirname(metrics_file), paths)
        record.update(status="ok", skipped=False, dice=dice_summary(metrics))
    except Exception as e:  # one failing trainer must not cost the others' results
        traceback.print_exc()
        record.update(status="failed", reason=f"{type(e).__name__}: {e}")
    with open(run_file, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    return record


# ------------------------------------------------------------------------------------------------------ report
def _cell(run: Optional[dict]) -> str:
    if run is None:
        return "–"
    if run["status"] != "ok":
        return run["status"].split(" ")[0]
    dice = run["dice"]
    if dice["mean"] is None or (isinstance(dice["mean"], float) and math.isnan(dice["mean"])):
        return "n/a"
    return f"{100 * dice['mean']:.2f} ± {100 * dice['std']:.2f}"


def row_label(trainer: str) -> str:
    return f"{trainer} (labelled only)" if trainer == BASELINE else trainer


def markdown_report(report: dict) -> str:
    s, m = report["settings"], report["machine"]
    budgets, runs = s["budgets"], report["runs"]
    n_all = report["num_training_cases"]
    header = [f"Labelled cases: {b} ({100 * b / n_all:.0f} %)" for b in budgets] + [f"all {n_all} labelled"]
    lines = ["| Trainer | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for trainer in [BASELINE] + s["ssl_trainers"]:
        cells = [_cell(runs.get(trainer, {}).get(str(b))) for b in budgets]
        cells.append(_cell(runs.get(trainer, {}).get(ALL_LABELED)) if trainer == BASELINE else "–")
        lines.append(f"| {row_label(trainer)} | " + " | ".join(cells) + " |")
    notes = [f"Dataset {s['dataset_name']}, configuration {s['configuration']}, plans {s['plans']}, fold "
             f"{s['fold']}; every run {s['epochs']} epochs x {s['iters_per_epoch']} iterations = "
             f"{s['epochs'] * s['iters_per_epoch']} iterations ({s['val_iters']} validation iterations per epoch).",
             f"Held-out set: {report['heldout']['n_cases']} cases, {report['heldout']['source']}; Dice % = mean ± std "
             f"(ddof=0) over cases of the per-case mean over the foreground classes "
             f"{report['heldout']['labels']}; test-time mirroring {'off' if s['disable_tta'] else 'on'}.",
             f"{n_all} training cases outside the split's validation block; at budget B the semi-supervised trainers "
             f"see the other {n_all} - B of them without labels (plus imagesUnlabeled, if preprocessed).",
             f"Machine: {m['device_name']}, torch {m['torch']}, nnU-Net {m['nnunetv2']}, {m['date']}. "
             f"Single runs (no repetitions over seeds)."]
    for trainer, by_budget in runs.items():
        for budget, run in by_budget.items():
            if run["status"] != "ok":
                notes.append(f"{trainer}, budget {budget}: {run['status']} ({run.get('reason', '')})")
    if m["device"] == "cpu":
        notes.append("CPU run at toy scale: checks the mechanics only.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def plot_report(report: dict, filename: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with plt.style.context("default"):  # nnU-Net's progress plots set a large seaborn font scale globally
        _plot(report, filename, plt)


def _plot(report: dict, filename: str, plt) -> None:
    s, runs, n_all = report["settings"], report["runs"], report["num_training_cases"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for trainer in [BASELINE] + s["ssl_trainers"]:
        points = [(b, runs.get(trainer, {}).get(str(b))) for b in s["budgets"]]
        points = [(b, r["dice"]) for b, r in points if r and r["status"] == "ok" and r["dice"]["mean"] is not None]
        if points:
            xs = [b for b, _ in points]
            ax.errorbar(xs, [100 * d["mean"] for _, d in points], yerr=[100 * d["std"] for _, d in points],
                        marker="o", capsize=3, label=row_label(trainer))
    full = runs.get(BASELINE, {}).get(ALL_LABELED)
    if full and full["status"] == "ok" and full["dice"]["mean"] is not None:
        ax.axhline(100 * full["dice"]["mean"], color="k", linestyle="--",
                   label=f"{BASELINE}, all {n_all} labelled")
    ax.set_xlabel("labelled training cases")
    ax.set_ylabel("Dice (%) on held-out cases")
    ax.set_xticks(s["budgets"])
    ax.set_title(f"{s['dataset_name']} {s['configuration']}, {s['epochs'] * s['iters_per_epoch']} iterations per run",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(filename, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[2].replace("\n", " "))
    p.add_argument("-d", required=True, help="dataset name or id (planned and preprocessed; raw data in nnUNet_raw)")
    p.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("--budgets", type=int, nargs="+", required=True, help="numbers of labelled training cases")
    p.add_argument("--trainers", nargs="+", default=list(SSL_TRAINERS),
                   help=f"semi-supervised trainers (default: {' '.join(SSL_TRAINERS)}); {BASELINE} labelled-only "
                        f"and fully supervised are always run")
    p.add_argument("--epochs", type=int, required=True, help="epochs of every run")
    p.add_argument("--iters-per-epoch", type=int, default=250, help="training iterations per epoch (default 250)")
    p.add_argument("--val-iters", type=int, default=10,
                   help="nnU-Net validation iterations per epoch (logging/checkpoint_best only; default 10)")
    p.add_argument("--val", type=int, default=None,
                   help="held-out (validation) cases of the split (default 20%% of the training cases)")
    p.add_argument("-f", "--fold", type=int, default=0, help="which validation block of the split (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split's shuffle (default 0)")
    p.add_argument("--test-set", choices=("auto", "test", "val"), default="auto",
                   help="held-out cases: imagesTs/labelsTs ('test'), the split's validation cases ('val'), or "
                        "'auto' (test if the dataset has labelsTs, default)")
    p.add_argument("--no-full", action="store_true", help="skip the fully supervised nnUNetTrainer run")
    p.add_argument("--disable-tta", action="store_true", help="predict without test-time mirroring")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if available")
    p.add_argument("--num-threads", type=int, default=None,
                   help="torch threads (default as nnUNetv2_train: all cores on CPU, 1 with CUDA)")
    p.add_argument("-o", "--output", required=True, help="benchmark folder (all runs, predictions, reports)")
    return p


def check_settings(output: str, settings: dict) -> None:
    """Refuse to mix runs with different settings in one --output (budgets and trainers may be added)."""
    path = os.path.join(output, SETTINGS_FILE)
    fixed = {k: v for k, v in settings.items() if k not in ("budgets", "ssl_trainers", "no_full")}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        diff = sorted(k for k in set(fixed) | set(old) if fixed.get(k) != old.get(k))
        if diff:
            raise BenchmarkError(f"{output} holds runs made with other settings ({', '.join(diff)}: "
                                 f"{[old.get(k) for k in diff]} there, {[fixed.get(k) for k in diff]} now); use "
                                 f"another --output")
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
    if args.epochs < 1 or args.iters_per_epoch < 1 or args.val_iters < 1:
        raise BenchmarkError("--epochs, --iters-per-epoch and --val-iters must be at least 1")
    use_plugin_trainers()
    paths = dataset_paths(args.d)
    device = select_device(args.device, args.num_threads)
    output = os.path.abspath(args.output)
    user_results = os.environ.get("nnUNet_results")
    if user_results and os.path.commonpath([output, os.path.abspath(user_results)]) == os.path.abspath(user_results):
        raise BenchmarkError(f"--output {output} lies inside nnUNet_results ({user_results}); choose a folder of "
                             f"its own so the benchmark cannot mix with your trainings")
    num_training = len(training_identifiers(paths["name"]))
    num_val = args.val if args.val is not None else max(1, int(round(0.2 * num_training)))
    budgets = sorted(set(args.budgets))
    ssl_trainers = [t for t in dict.fromkeys(args.trainers) if t != BASELINE]
    num_all = num_training - num_val
    if any(b > num_all for b in budgets):
        raise BenchmarkError(f"--budgets {budgets}: with {num_training} training cases and --val {num_val} at most "
                             f"{num_all} can be labelled")
    settings = {"dataset": str(args.d), "dataset_name": paths["name"], "configuration": args.c, "plans": args.p,
                "fold": args.fold, "seed": args.seed, "num_val": num_val, "epochs": args.epochs,
                "iters_per_epoch": args.iters_per_epoch, "val_iters": args.val_iters, "test_set": args.test_set,
                "disable_tta": args.disable_tta, "budgets": budgets, "ssl_trainers": ssl_trainers,
                "no_full": args.no_full}
    check_settings(output, settings)

    plan = [(str(b), b, [BASELINE] + ssl_trainers) for b in budgets]
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

    runs: Dict[str, Dict[str, dict]] = {}
    for tag, num_labeled, trainers in plan:
        for trainer in trainers:
            runs.setdefault(trainer, {})[tag] = run_one(trainer, num_labeled, args, paths, budget_dirs[tag],
                                                        heldout, device)

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
    return 0 if all(r["status"] != "failed" for t in runs.values() for r in t.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
