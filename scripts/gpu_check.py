#!/usr/bin/env python
"""GPU check: every trainer's speed against ``nnUNetTrainer`` and against its own pass-count floor, peak GPU memory,
3 AMP iterations of every ablation variant, and on a machine with 2 GPUs a ``-num_gpus 2`` run of every method, in
one run that needs no dataset on the machine.

    bash scripts/gpu_check.sh [-o benchmarks/gpu]        # on a CUDA machine with the project installed
    python scripts/gpu_check.py --smoke -o OUT            # the same code on the CPU, tiny plans (test suite)

What it does, in this order (the work folder with nnUNet_raw/preprocessed/results is temporary):

1. Dataset: 2 labelled + 2 unlabelled synthetic cases (``dataset_conversion/generate_synthetic_dataset.py``, one
   foreground class as LA) of the LA median size, preprocessed by nnU-Net's preprocessor with the committed LA
   plans (``benchmarks/gpu/Dataset101_LA_nnUNetPlans.json``, made by ``nnUNetv2_extract_fingerprint`` and
   ``nnUNetv2_plan_experiment`` from the 80 converted LA cases, fingerprint beside it: 3d_fullres, patch
   96 x 128 x 192, batch 2, 6-stage U-Net with 32-320 features at 0.625 mm). Split: 1 labelled training case,
   1 validation case; the unlabelled stream reads ``imagesUnlabeled``.
2. Timing with ``torch.compile`` off (and in step 4 on): ``scripts/benchmark_speed.py``'s ``benchmark_trainer`` for
   each trainer (warm-up + timed iterations with data loading and without, host-sync audit, peak GPU memory) under
   nnU-Net's AMP (autocast + GradScaler on CUDA). Each row gets the ratio to ``nnUNetTrainer`` and to the
   trainer's pass-count floor (README "What an iteration costs", in units of ``nnUNetTrainer``'s iteration):
   Mean Teacher/CRLN 7/3, BoCLIS 3 (its contrast crops are not counted), UGPL and CDR_deepToShallowIntra 2 + 2r,
   CDR (two passes per network) 4 + 4r, r = 1 for ``_sameArch``. r, the cost of the
   residual-encoder network relative to the plain one, is measured in each dual trainer's own run: forward +
   backward of each sub-network (``forward_a``/``forward_b``, compiled when the run compiles, AMP) on the
   concatenated labelled + unlabelled batch, median over a few repetitions.
3. Ablation check: 3 train steps (``benchmark_trainer`` with 1 iteration per phase: one with loading, one without,
   the audited one) of every ``nnUNetTrainer*_*`` class of ``nnunet_ssl.trainers`` except tiny/test/demo ones and
   the timed ones, under AMP with a GradScaler, on a smaller patch (``--check-patch``; compile with
   ``--check-compile``). A variant passes when the steps run and the losses they optimise (``loss``,
   ``total_loss``) are finite.
4. Multi-GPU smoke (``ddp``), on a machine with at least 2 GPUs (on one it is skipped with a message): the tiny
   variant of every method (``*_tiny``: 2 epochs of 3 iterations, nnU-Net's final validation without mirroring)
   trained by ``nnUNetv2_train -num_gpus 2`` on the check configuration (NCCL, one rank per GPU, the global batch
   of 2 split over the ranks), self-training by ``nnUNetv2_ssl_self_train -num_gpus 2`` (labelled-only model, one
   round); a run passes when it exits 0 and wrote ``checkpoint_final.pth``. What the CPU test
   ``tests/integration/test_ddp.py`` cannot show: NCCL, SyncBatchNorm (CRLN's DIM), CUDA devices per rank.
5. Timing with ``torch.compile`` on (``torch._dynamo`` is reset between trainers, so no recompile limit is hit),
   last because compile times are the least predictable. ``--steps`` picks and orders the steps (e.g. ``on`` alone
   for a second run).

A time budget (``--deadline``, set by gpu_check.sh, or ``--budget-s``) keeps the whole run short: an item that
would start with too little time left is recorded as skipped, and one that runs past the deadline is stopped by
an alarm and recorded as such. One failing trainer is recorded with its error and the run goes on. The JSON and
Markdown files are rewritten after every item, so even a killed run leaves its table.

``--smoke`` runs the same code on the CPU with tiny plans derived from the LA plans (4 stages, features / 4,
patch 32^3), a couple of trainers, 1 iteration per phase, compile off, and a CPU GradScaler so that the AMP
optimiser path (scale, unscale per optimiser, step, update) runs; autocast itself stays CUDA-only as in nnU-Net.
"""
import argparse
import contextlib
import copy
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from typing import Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_speed as bs  # noqa: E402
from nnunet_ssl.cli_flags import deprecated_aliases, one_spelling_each  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LA_PLANS = os.path.join(REPO, "benchmarks", "gpu", "Dataset101_LA_nnUNetPlans.json")
LA_FINGERPRINT = os.path.join(REPO, "benchmarks", "gpu", "Dataset101_LA_dataset_fingerprint.json")
DEFAULT_OUTPUT = "gpu_check_results"  # in the current folder: a run never rewrites the committed benchmarks/gpu
DATASET_ID, DATASET_SHORT_NAME = 996, "GPUCheckLA"
BASE_CONFIGURATION = "3d_fullres"
CHECK_CONFIGURATION, SMOKE_CONFIGURATION = "3d_check", "3d_smoke"
COST_VARIANTS = ("nnUNetTrainerCDR_deepToShallowIntra", "nnUNetTrainerCDR_sameArch", "nnUNetTrainerUGPL_sameArch",
                 "nnUNetTrainerBoCLIS_noContrast")
TIMED_TRAINERS = bs.DEFAULT_TRAINERS + COST_VARIANTS
SMOKE_TRAINERS = ("nnUNetTrainer", "nnUNetTrainerMeanTeacher", "nnUNetTrainerUGPL")
SMOKE_VARIANTS = ("nnUNetTrainerMeanTeacher_noStrongView", "nnUNetTrainerCRLN_noDIM")
NOT_ABLATIONS = re.compile("tiny|test|demo", re.IGNORECASE)
# the multi-GPU smoke: the tiny variant of every method's default trainer (self-training through its command)
DDP_GPUS = 2
DDP_TRAINERS = ("nnUNetTrainerMeanTeacher_tiny", "nnUNetTrainerCRLN_tiny", "nnUNetTrainerCDR_tiny",
                "nnUNetTrainerBoCLIS_tiny", "nnUNetTrainerUGPL_tiny", "nnUNetTrainerSelfTraining_tiny")
SELF_TRAINING_LABELED = "nnUNetTrainerLabeledOnly_tiny"

# README "What an iteration costs": formula, whether it needs r, units of one nnUNetTrainer iteration as f(r)
FLOORS: Dict[str, Tuple[str, bool, Callable[[Optional[float]], float]]] = {
    "nnUNetTrainer": ("1", False, lambda r: 1.0),
    "nnUNetTrainerMeanTeacher": ("7/3", False, lambda r: 7 / 3),
    "nnUNetTrainerCRLN": ("7/3", False, lambda r: 7 / 3),
    "nnUNetTrainerBoCLIS": ("3 (+ crops, not counted)", False, lambda r: 3.0),
    "nnUNetTrainerBoCLIS_noContrast": ("3", False, lambda r: 3.0),
    "nnUNetTrainerUGPL": ("2 + 2r", True, lambda r: 2 + 2 * r),
    "nnUNetTrainerUGPL_sameArch": ("2 + 2r, r = 1", True, lambda r: 2 + 2 * r),
    # CDR's default runs two passes per network (the paper's intra term); the deep-to-shallow variant one
    "nnUNetTrainerCDR": ("4 + 4r", True, lambda r: 4 + 4 * r),
    "nnUNetTrainerCDR_sameArch": ("4 + 4r, r = 1", True, lambda r: 4 + 4 * r),
    "nnUNetTrainerCDR_deepToShallowIntra": ("2 + 2r", True, lambda r: 2 + 2 * r),
}
SINGLE_STUDENT = ("nnUNetTrainerMeanTeacher", "nnUNetTrainerCRLN", "nnUNetTrainerBoCLIS",
                  "nnUNetTrainerBoCLIS_noContrast")
GOALS = {"vs_nnUNetTrainer_max": 2.5, "vs_nnUNetTrainer_trainers": ("nnUNetTrainerMeanTeacher", "nnUNetTrainerCRLN"),
         "vs_floor_max": 1.15, "memory_vs_nnUNetTrainer_max": 2.2, "memory_trainers": SINGLE_STUDENT}
PHASES = ("with_data_loading", "without_data_loading")
FINITE_LOSS_KEYS = ("loss", "total_loss")  # nnU-Net's (supervised) loss, the semi-supervised trainers' total


# --------------------------------------------------------------------------------------------------- selection
def ablation_variants(exclude: Sequence[str] = ()) -> List[str]:
    """Every ``nnUNetTrainer*_*`` class the plugin exports, except tiny/test/demo variants and ``exclude``."""
    import nnunet_ssl.trainers as trainers
    return sorted(n for n in trainers.__all__ if n.startswith("nnUNetTrainer") and "_" in n
                  and not NOT_ABLATIONS.search(n) and n not in exclude)


# ------------------------------------------------------------------------------------------------------- plans
def derived_configuration(plans: dict, patch_size: Sequence[int], n_stages: Optional[int] = None,
                          feature_divisor: int = 1, batch_size: Optional[int] = None,
                          base: str = BASE_CONFIGURATION) -> dict:
    """A configuration inheriting ``base`` (same preprocessed data) with another patch, and optionally fewer
    stages and features: the base architecture's first ``n_stages`` stages."""
    cfg = plans["configurations"][base]
    arch = copy.deepcopy(cfg["architecture"])
    kw = arch["arch_kwargs"]
    n = n_stages or kw["n_stages"]
    kw["n_stages"] = n
    for k in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage"):
        kw[k] = list(kw[k])[:n]
    kw["n_conv_per_stage_decoder"] = list(kw["n_conv_per_stage_decoder"])[:n - 1]
    kw["features_per_stage"] = [max(1, f // feature_divisor) for f in kw["features_per_stage"]]
    for axis, size in enumerate(patch_size):
        reduction = math.prod(s[axis] for s in kw["strides"])
        if size % reduction:
            raise ValueError(f"patch {list(patch_size)}: axis {axis} ({size}) is not divisible by the network's "
                             f"downsampling {reduction}")
    return {"inherits_from": base, "patch_size": [int(s) for s in patch_size],
            "batch_size": batch_size or cfg["batch_size"], "architecture": arch}


def raw_shape_for(plans: dict, median_shape: Sequence[float], generator_spacing: Sequence[float],
                  min_edge: int) -> Tuple[int, ...]:
    """Raw image shape (numpy axes of the written images) that preprocessing resamples to ``median_shape``
    (plans' transposed axes at the base configuration's spacing)."""
    spacing = plans["configurations"][BASE_CONFIGURATION]["spacing"]
    back = plans["transpose_backward"]
    return tuple(max(min_edge, math.ceil(median_shape[back[i]] * spacing[back[i]] / generator_spacing[i]))
                 for i in range(len(back)))


def synthetic_generator():
    """``dataset_conversion/generate_synthetic_dataset.py``: installed as ``nnunet_ssl.dataset_conversion``; where
    the checkout is on PYTHONPATH but not installed, loaded from its file."""
    try:
        from nnunet_ssl.dataset_conversion import generate_synthetic_dataset
        return generate_synthetic_dataset
    except ImportError:
        path = os.path.join(REPO, "dataset_conversion", "generate_synthetic_dataset.py")
        spec = importlib.util.spec_from_file_location("generate_synthetic_dataset", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def prepare_dataset(root: str, smoke: bool, check_patch: Sequence[int]) -> dict:
    """Synthetic raw data, the LA plans (plus derived configurations) and the fingerprint they were planned from,
    nnU-Net's preprocessing of every case (in this process: a pool of fresh interpreters costs more than 4 cases),
    and a 1-labelled/1-validation split; returns what the timing needs."""
    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    from nnunet_ssl.data.preprocess_unlabeled import preprocess_unlabeled
    from nnunet_ssl.data.splits import make_label_budget_splits, write_splits
    gen = synthetic_generator()

    plans = load_json(LA_PLANS)
    base = plans["configurations"][BASE_CONFIGURATION]
    if smoke:
        plans["configurations"][SMOKE_CONFIGURATION] = derived_configuration(plans, (32, 32, 32), n_stages=4,
                                                                             feature_divisor=4)
        timing_cfg = check_cfg = SMOKE_CONFIGURATION
        median = [1.25 * s for s in plans["configurations"][SMOKE_CONFIGURATION]["patch_size"]]
    else:
        plans["configurations"][CHECK_CONFIGURATION] = derived_configuration(plans, check_patch)
        timing_cfg, check_cfg = BASE_CONFIGURATION, CHECK_CONFIGURATION
        median = base["median_image_size_in_voxels"]
    shape = raw_shape_for(plans, median, gen.SPACING_3D_ZYX, gen.MIN_EDGE_LENGTH)
    raw_folder = gen.generate_synthetic_dataset(os.path.join(root, "raw"), dataset_id=DATASET_ID,
                                                name=DATASET_SHORT_NAME, num_labeled=2, num_unlabeled=2,
                                                num_test=0, shape=shape, num_foreground_classes=1, seed=0)
    name = os.path.basename(raw_folder)
    pre = os.path.join(root, "preprocessed", name)
    os.makedirs(pre, exist_ok=True)
    plans["dataset_name"] = name
    save_json(plans, os.path.join(pre, "nnUNetPlans.json"), sort_keys=False)
    shutil.copy(LA_FINGERPRINT, os.path.join(pre, "dataset_fingerprint.json"))
    shutil.copy(os.path.join(raw_folder, "dataset.json"), os.path.join(pre, "dataset.json"))
    dataset_json = load_json(os.path.join(pre, "dataset.json"))
    plans_manager = PlansManager(os.path.join(pre, "nnUNetPlans.json"))
    cm = plans_manager.get_configuration(BASE_CONFIGURATION)
    out = os.path.join(pre, cm.data_identifier)
    os.makedirs(out, exist_ok=True)
    preprocessor = cm.preprocessor_class(verbose=False)
    cases = get_filenames_of_train_images_and_targets(raw_folder, dataset_json)
    for case, files in cases.items():
        preprocessor.run_case_save(os.path.join(out, case), files["images"], files["label"], plans_manager, cm,
                                   dataset_json)
    preprocess_unlabeled(DATASET_ID, (BASE_CONFIGURATION,), num_processes=1, verbose=False)
    write_splits(make_label_budget_splits(sorted(cases), num_labeled=1, num_val=1, num_folds=1), pre)
    return {"dataset": name, "raw_shape_zyx": list(shape), "timing_configuration": timing_cfg,
            "check_configuration": check_cfg,
            "timing_patch": plans["configurations"][timing_cfg].get("patch_size", base["patch_size"]),
            "check_patch": plans["configurations"][check_cfg].get("patch_size", base["patch_size"]),
            "batch_size": plans["configurations"][timing_cfg].get("batch_size", base["batch_size"])}


# ------------------------------------------------------------------------------------------------ measurements
def second_network_cost(trainer, repetitions: int, synchronize) -> Optional[dict]:
    """r: forward + backward time of the dual trainer's second network over its first, on the concatenated
    labelled + unlabelled batch (the input both get in a train step), under the trainer's autocast and compile;
    median over ``repetitions``."""
    import torch
    if not hasattr(trainer, "forward_b"):
        return None
    x = torch.cat((trainer._to_device(next(trainer.dataloader_train)["data"]),
                   trainer._to_device(next(trainer.dataloader_unlabeled)["data"])))
    ms = {}
    for key, forward in (("a", trainer.forward_a), ("b", trainer.forward_b)):
        seconds = []
        for _ in range(repetitions):  # no warm-up: the train steps just ran both networks on this shape
            synchronize()
            start = time.perf_counter()
            with trainer.autocast():
                out = forward(x)
                loss = sum(o.float().mean() for o in (out if isinstance(out, (list, tuple)) else [out]))
            loss.backward()
            synchronize()
            seconds.append(time.perf_counter() - start)
        ms[key] = 1000 * statistics.median(seconds)
    trainer.student.zero_grad(set_to_none=True)
    return {"ms_fwd_bwd_a": ms["a"], "ms_fwd_bwd_b": ms["b"], "r": ms["b"] / ms["a"], "repetitions": repetitions,
            "second_network": trainer.second_network}


def make_hooks(device, cpu_grad_scaler: bool, r_repetitions: int):
    """``prepare``/``after`` hooks for ``benchmark_speed.benchmark_trainer``: a CPU GradScaler (smoke), a record
    of the losses every train step returns, and r for dual trainers (``r_repetitions`` > 0)."""
    import torch

    def prepare(trainer):
        if cpu_grad_scaler and trainer.grad_scaler is None and device.type == "cpu":
            trainer.grad_scaler = torch.amp.GradScaler("cpu")
        trainer._gpu_check_losses = []
        step = trainer.train_step

        def recorded_step(batch):
            out = step(batch)
            trainer._gpu_check_losses.append({k: float(v) for k, v in out.items() if k.endswith("loss")})
            return out

        trainer.train_step = recorded_step

    def after(trainer, result):
        losses = trainer._gpu_check_losses
        result["train_steps"] = len(losses)
        result["last_losses"] = losses[-1] if losses else {}
        # the optimised totals: other "*_loss" entries may be NaN by design (a term that does not apply yet)
        result["losses_finite"] = bool(losses) and all(math.isfinite(v) for step in losses for k, v in step.items()
                                                       if k in FINITE_LOSS_KEYS)
        result["grad_scaler"] = type(trainer.grad_scaler).__module__ + "." + type(trainer.grad_scaler).__name__ \
            if trainer.grad_scaler is not None else None
        if r_repetitions and hasattr(trainer, "forward_b"):
            sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
            try:  # the timings above stay valid if this extra measurement fails
                result["second_network_cost"] = second_network_cost(trainer, r_repetitions, sync)
            except Exception as e:
                traceback.print_exc()
                result["second_network_cost_error"] = f"{type(e).__name__}: {e}"

    return prepare, after


# ------------------------------------------------------------------------------------------------ multi-GPU
def ddp_command(trainer: str, configuration: str, num_gpus: int = DDP_GPUS) -> List[str]:
    """The command that trains ``trainer`` on ``num_gpus`` GPUs (fold 0 of the check dataset)."""
    if trainer.startswith("nnUNetTrainerSelfTraining"):
        return ["nnUNetv2_ssl_self_train", "-d", str(DATASET_ID), "-c", configuration, "-f", "0", "-tr", trainer,
                "--labeled_trainer", SELF_TRAINING_LABELED, "--train_labeled", "--rounds", "1", "--disable_tta",
                "--validate", "last", "-device", "cuda", "-num_gpus", str(num_gpus)]
    return ["nnUNetv2_train", str(DATASET_ID), configuration, "0", "-tr", trainer, "-num_gpus", str(num_gpus)]


def ddp_skip_reason(gpu_count: int, num_gpus: int = DDP_GPUS) -> Optional[str]:
    if gpu_count >= num_gpus:
        return None
    return (f"needs {num_gpus} GPUs, this machine has {gpu_count}: the -num_gpus {num_gpus} runs were not made "
            f"(tests/integration/test_ddp.py checks the trainers under DDP on the CPU with gloo; NCCL, SyncBatchNorm "
            f"and speed scaling need a multi-GPU machine)")


def run_ddp_item(trainer: str, configuration: str, results_folder: str, deadline: Optional[float],
                 min_left_s: float, timeout_s: float = 900) -> dict:
    """One ``-num_gpus 2`` training in a subprocess (nnU-Net spawns the ranks); never raises."""
    import subprocess
    left = None if deadline is None else deadline - time.time()
    if left is not None and left < min_left_s:
        return {"status": "skipped (time budget)", "reason": f"{max(left, 0):.0f} s left, {min_left_s:.0f} s needed"}
    command = ddp_command(trainer, configuration)
    console_script = os.path.join(os.path.dirname(sys.executable), command[0])  # this environment's, if on no PATH
    if os.path.isfile(console_script):
        command[0] = console_script
    start = time.time()
    try:
        proc = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace",
                              timeout=min(timeout_s, left) if left is not None else timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "stopped (time budget)", "command": " ".join(command), "seconds": time.time() - start}
    except OSError as e:
        return {"status": "failed", "reason": f"{type(e).__name__}: {e}", "command": " ".join(command)}
    final = os.path.join(results_folder, f"Dataset{DATASET_ID:03d}_{DATASET_SHORT_NAME}",
                         f"{trainer}__nnUNetPlans__{configuration}", "fold_0", "checkpoint_final.pth")
    ok = proc.returncode == 0 and os.path.isfile(final)
    result = {"status": "ok" if ok else "failed", "command": " ".join(command), "seconds": time.time() - start,
              "returncode": proc.returncode, "checkpoint_final": os.path.isfile(final)}
    if not ok:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()
        result["reason"] = (tail[-1] if tail else f"exit code {proc.returncode}")[:300]
        result["output_tail"] = (proc.stdout[-3000:], proc.stderr[-3000:])
    return result


def ddp_table(ddp: dict) -> str:
    if "skipped" in ddp:
        return f"Skipped: {ddp['skipped']}.\n"
    lines = ["| Trainer | status | seconds | note |", "|---" * 4 + "|"]
    for name, r in ddp.get("runs", {}).items():
        lines.append("| " + " | ".join([name, r["status"], _num(r.get("seconds"), ".0f"),
                                        r.get("reason", "")[:160].replace("|", "/")]) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------ report
def floor_r(result: dict) -> Optional[float]:
    """r for a trainer's floor: 1 for a same-architecture second network, else the one measured in its run."""
    cost = result.get("second_network_cost")
    if cost is None:
        return None
    return 1.0 if cost["second_network"] == "same" else cost["r"]


def add_floor_ratios(results: Dict[str, dict]) -> None:
    """Ratios to ``nnUNetTrainer`` (benchmark_speed.add_ratios), to each trainer's floor, and of peak memory;
    goal checks on the phase without data loading (device work, what the floors count)."""
    bs.add_ratios(results)
    ref = results.get(bs.REFERENCE_TRAINER, {})
    ref_ok = ref.get("status") == "ok"
    for name, r in results.items():
        if r.get("status") != "ok":
            continue
        if name in FLOORS:
            formula, needs_r, units = FLOORS[name]
            rr = floor_r(r)
            value = None if needs_r and rr is None else units(rr)
            r["floor"] = {"formula": formula, "r": rr, "units": value}
            for phase in PHASES:
                base = ref[phase]["ms_per_iter_mean"] if ref_ok else None
                r[phase]["ratio_to_floor"] = r[phase]["ms_per_iter_mean"] / (value * base) \
                    if base and value else None
        mem, ref_mem = r.get("peak_gpu_memory_gib"), ref.get("peak_gpu_memory_gib") if ref_ok else None
        r["peak_gpu_memory_ratio_to_nnUNetTrainer"] = mem / ref_mem if mem is not None and ref_mem else None
        no_loading = r["without_data_loading"]
        goals = {}
        if name in GOALS["vs_nnUNetTrainer_trainers"] and no_loading.get("ratio_to_nnUNetTrainer") is not None:
            goals["vs_nnUNetTrainer"] = no_loading["ratio_to_nnUNetTrainer"] <= GOALS["vs_nnUNetTrainer_max"]
        if no_loading.get("ratio_to_floor") is not None:
            goals["vs_floor"] = no_loading["ratio_to_floor"] <= GOALS["vs_floor_max"]
        if name in GOALS["memory_trainers"] and r["peak_gpu_memory_ratio_to_nnUNetTrainer"] is not None:
            goals["memory"] = r["peak_gpu_memory_ratio_to_nnUNetTrainer"] <= GOALS["memory_vs_nnUNetTrainer_max"]
        r["goals"] = goals


def _num(value, fmt, suffix=""):
    return "n/a" if value is None else format(value, fmt) + suffix


def floor_table(results: Dict[str, dict]) -> str:
    header = ["Trainer", "floor (units)", "r", "× floor with loading", "× floor no loading", "peak GPU mem (GiB)",
              "× nnUNetTrainer mem", "goals (no loading)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in results.items():
        if r.get("status") != "ok":
            continue
        floor = r.get("floor", {})
        units = floor.get("units")
        goals = ", ".join(f"{'✓' if ok else '✗'} {g}" for g, ok in r["goals"].items()) or "–"
        lines.append("| " + " | ".join([
            name, f"{floor.get('formula', '–')} = {_num(units, '.2f')}" if floor else "–",
            _num(floor.get("r"), ".2f"), _num(r["with_data_loading"].get("ratio_to_floor"), ".2f", "×"),
            _num(r["without_data_loading"].get("ratio_to_floor"), ".2f", "×"), _num(r["peak_gpu_memory_gib"], ".2f"),
            _num(r["peak_gpu_memory_ratio_to_nnUNetTrainer"], ".2f", "×"), goals]) + " |")
    return "\n".join(lines) + "\n"


def check_table(check: Dict[str, dict]) -> str:
    lines = ["| Variant | status | train steps | losses finite | peak GPU mem (GiB) | note |", "|---" * 6 + "|"]
    for name, r in check.items():
        ok = r.get("status") == "ok"
        lines.append("| " + " | ".join([
            name, r["status"], str(r.get("train_steps", "–")), ("yes" if r.get("losses_finite") else "NO") if ok
            else "–", _num(r.get("peak_gpu_memory_gib"), ".2f"), r.get("reason", "")[:160].replace("|", "/")]) + " |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: str, report: dict) -> Tuple[str, str]:
    """(JSON file, Markdown file), both replaced atomically."""
    os.makedirs(out_dir, exist_ok=True)
    s, info = report["settings"], report["machine"]
    cs = s.get("check", {})
    md = [f"# GPU check ({'CPU smoke run: mechanics only, the numbers mean nothing' if s['smoke'] else 'GPU run'})",
          "",
          f"{info.get('device_name')}, torch {info.get('torch')} (CUDA {info.get('cuda')}), nnU-Net "
          f"{info.get('nnunetv2')}, {info.get('date')}; plans {os.path.basename(s['plans'])}, configuration "
          f"{s.get('timing_configuration')} (patch {s.get('timing_patch')}, batch {s.get('batch_size')}), "
          f"{s['warmup']} warm-up + {s['iters']} timed iterations per phase, AMP "
          f"({'autocast + GradScaler' if info.get('device') == 'cuda' else 'CPU GradScaler, no autocast'}), "
          f"nnUNet_n_proc_DA={info.get('nnUNet_n_proc_DA')}. Elapsed: {report['elapsed_s']:.0f} s"
          f"{'' if report.get('finished') else ' (unfinished)'}.", ""]
    for mode, results in report["timing"].items():
        md += [f"## Speed, torch.compile {mode}", "", bs.format_table(results),
               f"Floors (README \"What an iteration costs\"), memory and goals (MT/CRLN ≤ "
               f"{GOALS['vs_nnUNetTrainer_max']}× nnUNetTrainer, ≤ {GOALS['vs_floor_max']}× own floor, "
               f"single-student peak memory ≤ {GOALS['memory_vs_nnUNetTrainer_max']}×), torch.compile {mode}:", "",
               floor_table(results)]
    if report.get("ddp"):
        md += [f"## Multi-GPU smoke: nnUNetv2_train -num_gpus {DDP_GPUS} of every method's tiny variant", "",
               ddp_table(report["ddp"])]
    if report["ablation_check"]:
        md += [f"## Ablation variants: 3 AMP train steps each (configuration {cs.get('configuration')}, patch "
               f"{cs.get('patch')}, torch.compile {cs.get('compile')})", "", check_table(report["ablation_check"])]
    json_file, md_file = os.path.join(out_dir, "gpu_check.json"), os.path.join(out_dir, "gpu_check.md")
    for path, text in ((json_file, json.dumps(report, indent=2)), (md_file, "\n".join(md))):
        with open(path + ".partial", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".partial", path)
    return json_file, md_file


# ------------------------------------------------------------------------------------------------ time budget
class TimeBudgetExceeded(BaseException):
    """Not an Exception: ``except Exception`` blocks in the code it interrupts must not swallow it."""


@contextlib.contextmanager
def alarm_at(deadline: Optional[float]):
    """Raise TimeBudgetExceeded in the main thread when the wall clock passes ``deadline`` (epoch seconds)."""
    if deadline is None or not hasattr(signal, "setitimer"):
        yield
        return

    def handler(signum, frame):
        raise TimeBudgetExceeded("stopped at the time budget's deadline")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(deadline - time.time(), 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_item(name: str, args_ns, device, hooks, deadline: Optional[float], min_left_s: float) -> dict:
    """``benchmark_trainer`` for one trainer class name; never raises (failures and the budget are recorded)."""
    left = None if deadline is None else deadline - time.time()
    if left is not None and left < min_left_s:
        return {"status": "skipped (time budget)", "reason": f"{max(left, 0):.0f} s left, {min_left_s:.0f} s needed"}
    trainer_class, reason = bs.resolve_trainer(name)
    if trainer_class is None:
        return {"status": "skipped (not importable)", "reason": reason}
    start = time.time()
    try:
        with alarm_at(deadline):
            result = {"status": "ok", **bs.benchmark_trainer(trainer_class, args_ns, device, *hooks)}
    except TimeBudgetExceeded as e:
        result = {"status": "stopped (time budget)", "reason": str(e)}
    except Exception as e:  # one broken trainer must not cost the numbers of the others
        traceback.print_exc()
        result = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
    result["seconds"] = time.time() - start
    return result


# -------------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", default=DEFAULT_OUTPUT, dest="output",
                   help=f"output folder for gpu_check.json/.md (default ./{DEFAULT_OUTPUT}; the committed records "
                        "are in benchmarks/gpu)")
    p.add_argument("--smoke", action="store_true", help="CPU run on tiny plans (mechanics only)")
    p.add_argument("--trainers", nargs="+", default=None,
                   help=f"timed trainers (default: {' '.join(TIMED_TRAINERS)}; smoke: {' '.join(SMOKE_TRAINERS)})")
    p.add_argument("--variants", nargs="*", default=None,
                   help="ablation variants to check (default: every nnUNetTrainer*_* of nnunet_ssl.trainers but "
                        f"tiny/test/demo ones and the timed ones; smoke: {' '.join(SMOKE_VARIANTS)})")
    p.add_argument("--steps", nargs="+", choices=("off", "check", "ddp", "on"), default=None,
                   help="what to run, in this order: timing with torch.compile off, the ablation check, the "
                        f"-num_gpus {DDP_GPUS} smoke (skipped with fewer GPUs), timing with compile on (default: off "
                        "check ddp on, the least predictable last; smoke: off check)")
    p.add_argument("--iterations", type=int, default=None, dest="iters",
                   help="timed iterations per phase (default 5; smoke 1)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up iterations per phase (default 2; smoke 0)")
    p.add_argument("--check-patch", type=int, nargs=3, default=(64, 64, 64),
                   help="patch of the ablation check (default 64 64 64; smoke: the smoke patch)")
    p.add_argument("--check-compile", action="store_true", help="run the ablation check with torch.compile too")
    p.add_argument("--deadline", type=float, default=None, help="epoch seconds by which the run must be done")
    p.add_argument("--budget-s", type=float, default=None, help="seconds from now (if no --deadline)")
    p.add_argument("--min-item-s", type=float, default=None,
                   help="do not start a trainer with less time left (default 20; smoke 0)")
    p.add_argument("-device", choices=("cuda", "cpu"), default=None, dest="device",
                   help="default: cuda, cpu with --smoke")
    p.add_argument("--work", default=None, dest="work_dir",
                   help="folder for raw/preprocessed/results (default: temporary, deleted at the end)")
    deprecated_aliases(p, {"--output": "-o", "--iters": "--iterations", "--device": "-device", "--work-dir": "--work"})
    one_spelling_each(p)  # --check-patch -> --check_patch etc., the hyphenated spellings still accepted
    return p


def main(argv=None) -> int:
    t0 = time.time()
    args = build_parser().parse_args(argv)
    smoke = args.smoke
    deadline = args.deadline if args.deadline is not None else \
        (t0 + args.budget_s if args.budget_s is not None else None)
    trainers = list(args.trainers or (SMOKE_TRAINERS if smoke else TIMED_TRAINERS))
    variants = list(args.variants if args.variants is not None else
                    (SMOKE_VARIANTS if smoke else ablation_variants(exclude=trainers)))
    steps = args.steps or (["off", "check"] if smoke else ["off", "check", "ddp", "on"])
    modes = [m for m in steps if m not in ("check", "ddp")]
    iters = args.iters if args.iters is not None else (1 if smoke else 5)
    warmup = args.warmup if args.warmup is not None else (0 if smoke else 2)
    min_left = args.min_item_s if args.min_item_s is not None else (0 if smoke else 20)

    def log(message):
        print(f"[gpu_check] {time.time() - t0:6.1f} s  {message}", flush=True)

    bs.use_plugin_trainers()
    device = bs.select_device(args.device or ("cpu" if smoke else "cuda"), 1 if smoke else None)
    work = args.work_dir or tempfile.mkdtemp(prefix="nnunet_ssl_gpu_check_")
    paths = {k: os.path.join(work, k) for k in ("raw", "preprocessed", "results")}
    for p in paths.values():
        os.makedirs(p, exist_ok=True)
    env = dict(nnUNet_raw=paths["raw"], nnUNet_preprocessed=paths["preprocessed"], nnUNet_results=paths["results"])
    if smoke:
        env["nnUNet_n_proc_DA"] = os.environ.get("nnUNet_n_proc_DA", "0")
    report = {"settings": {"smoke": smoke, "plans": os.path.relpath(LA_PLANS, REPO), "trainers": trainers,
                           "steps": steps, "compile_modes": modes, "iters": iters, "warmup": warmup,
                           "deadline": deadline,
                           "floors": {k: v[0] for k, v in FLOORS.items()}, "goals": GOALS},
              "machine": {}, "timing": {}, "ablation_check": {}, "ddp": {}, "elapsed_s": 0.0,
              "finished": False}
    out = args.output

    def save():
        report["elapsed_s"] = time.time() - t0
        for results in report["timing"].values():
            add_floor_ratios(results)
        return write_report(out, report)

    try:
        with bs.environment(**env):
            report["machine"] = m = bs.machine_info(device)
            log(f"{m['device_name']}, torch {m['torch']} (CUDA {m['cuda']}), nnU-Net {m['nnunetv2']}, "
                f"nnUNet_n_proc_DA={m['nnUNet_n_proc_DA']}; budget: "
                f"{'none' if deadline is None else f'{deadline - time.time():.0f} s left'}")
            log(f"preparing the synthetic dataset in {work}")
            data = prepare_dataset(work, smoke, args.check_patch)
            report["settings"].update(data)
            report["settings"]["check"] = {"configuration": data["check_configuration"],
                                           "patch": data["check_patch"],
                                           "compile": "on" if args.check_compile else "off", "variants": variants}
            log(f"dataset ready: {data['dataset']}, raw shape {data['raw_shape_zyx']}")
            timing_hooks = make_hooks(device, cpu_grad_scaler=True, r_repetitions=max(iters, 1))
            check_hooks = make_hooks(device, cpu_grad_scaler=True, r_repetitions=0)
            timing_args = argparse.Namespace(d=str(DATASET_ID), c=data["timing_configuration"], p="nnUNetPlans",
                                             fold=0, iters=iters, warmup=warmup)
            check_args = argparse.Namespace(d=str(DATASET_ID), c=data["check_configuration"], p="nnUNetPlans",
                                            fold=0, iters=1, warmup=0)

            def run(kind, mode, name, args_ns, hooks, table):
                with bs.environment(nnUNet_compile="t" if mode == "on" else "f"):
                    table[name] = run_item(name, args_ns, device, hooks, deadline, min_left)
                if mode == "on":
                    import torch
                    torch.compiler.reset()  # no recompile limit across trainers; the on-disk caches stay
                r = table[name]
                log(f"{kind} {name} (compile {mode}): {r['status']} ({r.get('seconds', 0):.1f} s)"
                    + (f" - {r['reason']}" if "reason" in r else ""))
                save()

            for step in steps:
                if step == "ddp":
                    import torch
                    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
                    reason = ddp_skip_reason(gpus)
                    if reason is not None:
                        report["ddp"] = {"skipped": reason}
                        log(f"multi-GPU smoke skipped: {reason}")
                        save()
                        continue
                    report["ddp"] = {"gpus": gpus, "configuration": data["check_configuration"], "runs": {}}
                    for name in DDP_TRAINERS:
                        with bs.environment(nnUNet_compile="f"):
                            r = run_ddp_item(name, data["check_configuration"], paths["results"], deadline, min_left)
                        report["ddp"]["runs"][name] = r
                        log(f"-num_gpus {DDP_GPUS} {name}: {r['status']} ({r.get('seconds', 0):.1f} s)"
                            + (f" - {r['reason']}" if "reason" in r else ""))
                        save()
                elif step == "check":
                    for name in variants:
                        run("ablation check", "on" if args.check_compile else "off", name, check_args,
                            check_hooks, report["ablation_check"])
                else:
                    results = report["timing"].setdefault(step, {})
                    for name in trainers:
                        run("timing", step, name, timing_args, timing_hooks, results)
        report["finished"] = True
    finally:
        json_file, md_file = save()
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
        log(f"wrote {json_file} and {md_file}; elapsed {time.time() - t0:.1f} s")
    rows = list(report["ablation_check"].values()) + [r for t in report["timing"].values() for r in t.values()] + \
        list(report["ddp"].get("runs", {}).values())
    bad = [r for r in rows if r["status"] == "failed" or (r["status"] == "ok" and not r.get("losses_finite", True))]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
