#!/usr/bin/env python
"""Iteration time, peak GPU memory and loader waiting of ``nnUNetTrainer`` and the semi-supervised trainers.

    python scripts/benchmark_speed.py -d 101 -c 3d_fullres [--trainers ...] [--iterations 50] [--warmup 20] \
        [--output_file speed.json]

Every trainer is built in-process the way ``nnUNetv2_train`` builds it (``get_trainer_from_args``: same plans,
configuration, fold, hence the same patch size and labelled batch size), started with ``on_train_start()`` (network,
optimizer, loaders), and timed in two phases:

* with data loading: ``train_step(next(dataloader_train))`` as in nnU-Net's training loop (semi-supervised trainers
  draw their unlabelled batch inside ``train_step``); the time spent inside the loaders' ``next()`` is the share of
  time waiting for data (0 % means the augmentation workers keep up);
* without data loading: the first batch of every stream is moved to the device once and handed out again and again
  (the idea of nnU-Net's ``nnUNetTrainerBenchmark_5epochs_noDataLoading``), so only the device work is timed.

After the timed phases one more (untimed) step runs with ``HostSyncAudit`` (``scripts/sync_audit.py``) around the loss
code (``compute_losses``, or nnU-Net's loss for ``nnUNetTrainer``) and reports how many times, and where, it makes
the host wait for the GPU (``.item()``, ``nonzero``, boolean-mask indexing, host copies); this count is the same on
a CPU as on a GPU.

Warm-up iterations (also covering ``torch.compile``) come before each phase. Peak GPU memory is
``torch.cuda.max_memory_allocated`` over both phases ("n/a" on CPU). No checkpoint is written and no training is
finished (``on_train_end`` is not called; the loaders are shut down directly); the trainers' output folders (logs,
plans copies) go to a temporary ``nnUNet_results`` that is deleted afterwards, so a user's results are never
touched. Trainers that cannot be found (not written yet, or an import error) are reported and skipped.

Offline self-training (``nnUNetTrainerSelfTraining`` or a subclass in ``--trainers``) costs two things, both
reported: the self-training stage's iteration (labelled batch plus pseudo-labelled batch), timed as above, and the
one-off prediction of the fold's unlabelled cases with nnU-Net's predictor before it, reported as seconds per
unlabelled case. The trainer needs a pseudo-label folder, and their content does not matter for timing: a network of
the same plans, initialised and not trained, makes them through ``nnUNetv2_ssl_self_train``'s own code path (the
same predictor, mirroring unless ``--disable_tta``, and storage) into a temporary ``nnUNet_preprocessed`` whose
entries link to yours (your pseudo-label folders excepted); only preprocessed images are read, never a hidden
label, and nothing is written into your preprocessed folder. The temporary folder is deleted afterwards.

Numbers mean something only on a GPU: on a CPU the tiny-dataset run of the test suite checks the mechanics only.
"""
import argparse
import contextlib
import gc
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from datetime import datetime
from typing import Dict, List, Optional, Tuple

from nnunet_ssl.cli_flags import deprecated_aliases

DEFAULT_TRAINERS = ("nnUNetTrainer", "nnUNetTrainerMeanTeacher", "nnUNetTrainerCRLN", "nnUNetTrainerCDR",
                    "nnUNetTrainerBoCLIS", "nnUNetTrainerUGPL")
REFERENCE_TRAINER = "nnUNetTrainer"


# ------------------------------------------------------------------------------------------- shared with benchmark_ssl
def select_device(name: Optional[str], num_threads: Optional[int] = None):
    """torch device with nnU-Net's thread settings (``nnUNetv2_train``: all cores on CPU, one thread with CUDA),
    or ``num_threads`` torch threads (on a shared CPU, 1 avoids threads spinning against other processes)."""
    import multiprocessing

    import torch
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("-device cuda: no CUDA device is visible to torch; use -device cpu")
        torch.set_num_threads(num_threads or 1)
        with contextlib.suppress(RuntimeError):  # interop threads can only be set before any parallel work
            torch.set_num_interop_threads(1)
        return torch.device("cuda")
    if name == "cpu":
        torch.set_num_threads(num_threads or multiprocessing.cpu_count())
        return torch.device("cpu")
    raise SystemExit(f"-device must be 'cuda' or 'cpu', got {name!r}")


def cpu_model():
    """The CPU's model name (Linux ``/proc/cpuinfo``), or None: CPU timings compare only on the same model."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info(device) -> dict:
    import torch
    from importlib.metadata import PackageNotFoundError, version
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    def package_version(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    info = {"date": datetime.now().astimezone().isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "nnunetv2": package_version("nnunetv2"),
            "nnunet_ssl": package_version("nnunet_ssl"), "cpu_count": os.cpu_count(),
            "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu_name": platform.processor() or platform.machine(), "cpu_model": cpu_model(),
            # the vector instructions torch's CPU kernels use: the same model name can come with different ones
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads(),
            "device": str(device),
            "nnUNet_n_proc_DA": get_allowed_n_proc_DA(), "nnUNet_compile": os.environ.get("nnUNet_compile")}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    cudnn=torch.backends.cudnn.version())
    else:
        info["device_name"] = f"CPU ({info['cpu_name']}, {info['cpu_cores_usable'] or info['cpu_count']} cores)"
    return info


def use_plugin_trainers() -> None:
    """Let nnU-Net's trainer lookup (training and prediction) find the plugin's trainers."""
    from nnunet_ssl.cli import set_ext_trainer_env
    set_ext_trainer_env()


def resolve_trainer(name: str):
    """(trainer class, None), or (None, why not) when nnU-Net's lookup cannot find or import it."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the lookup prints every folder it searches
            return recursive_find_trainer_class_by_name(name), None
    except Exception as e:  # not written yet (RuntimeError) or a module that fails to import
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "Could not find requested nnunet trainer" in message:
            message = "no trainer class of this name in nnunetv2 or nnunet_ssl (not written yet?)"
        return None, f"{type(e).__name__}: {message}"


def construct_trainer(trainer_class, dataset: str, configuration: str, fold, plans_identifier: str, device,
                      continue_training: bool = False):
    """What ``nnunetv2.run.run_training.get_trainer_from_args`` does, for a class we already hold."""
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    base = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(dataset))
    plans_file = join(base, plans_identifier + ".json")
    if not os.path.isfile(plans_file):
        raise SystemExit(f"{plans_file} does not exist: run nnUNetv2_plan_and_preprocess for dataset {dataset} "
                         f"(or check -p and nnUNet_preprocessed)")
    plans = load_json(plans_file)
    plans["continue_training"] = continue_training
    dataset_json = load_json(join(base, "dataset.json"))
    return trainer_class(plans=plans, configuration=configuration, fold=fold, dataset_json=dataset_json,
                         device=device)


@contextlib.contextmanager
def environment(**values):
    """Set environment variables for the duration (nnU-Net reads its paths lazily), then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def shutdown_loaders(trainer) -> None:
    """Stop the augmentation workers of every ``dataloader*`` attribute (what ``on_train_end`` does for two)."""
    from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    for name, loader in list(vars(trainer).items()):
        if name.startswith("dataloader") and isinstance(loader, (NonDetMultiThreadedAugmenter,
                                                                 MultiThreadedAugmenter)):
            with contextlib.redirect_stdout(io.StringIO()):
                loader._finish()
            setattr(trainer, name, None)


# ----------------------------------------------------------------------------------------------------- timing
class TimedLoader:
    """Iterator proxy that adds the time spent in ``next()`` (waiting for the loader) to ``wait_s``."""

    def __init__(self, loader):
        self.loader = loader
        self.wait_s = 0.0

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        batch = next(self.loader)
        self.wait_s += time.perf_counter() - start
        return batch

    def __getattr__(self, name):
        return getattr(self.loader, name)


class RepeatedBatch:
    """Hands out the same (device-resident) batch forever: timing without data loading."""

    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        return self

    def __next__(self):
        return self.batch


def _to_device(value, device):
    import torch
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def training_streams(trainer) -> List[str]:
    """Names of the loader attributes a train step draws from (``dataloader_train`` first)."""
    names = [k for k, v in vars(trainer).items()
             if k.startswith("dataloader") and k != "dataloader_val" and v is not None and hasattr(v, "__next__")]
    return sorted(names, key=lambda k: (k != "dataloader_train", k))


def _statistics(seconds: List[float]) -> dict:
    import numpy as np
    ms = np.asarray(seconds) * 1000
    return {"ms_per_iter_mean": float(ms.mean()), "ms_per_iter_median": float(np.median(ms)),
            "ms_per_iter_std": float(ms.std()), "iterations": len(ms)}


def _run_phase(trainer, n_warmup: int, n_iters: int, synchronize) -> Tuple[dict, float]:
    """Warm-up, then timed ``train_step(next(dataloader_train))``; returns (statistics, loader wait seconds)."""
    for _ in range(n_warmup):
        trainer.train_step(next(trainer.dataloader_train))
    synchronize()
    streams = training_streams(trainer)
    originals = {k: getattr(trainer, k) for k in streams}
    timed = {k: TimedLoader(v) for k, v in originals.items()}
    for k, v in timed.items():
        setattr(trainer, k, v)
    seconds = []
    try:
        for _ in range(n_iters):
            start = time.perf_counter()
            trainer.train_step(next(trainer.dataloader_train))
            synchronize()
            seconds.append(time.perf_counter() - start)
    finally:
        for k, v in originals.items():
            setattr(trainer, k, v)
    return _statistics(seconds), sum(t.wait_s for t in timed.values())


def audit_loss_code(trainer) -> dict:
    """One extra (untimed) train step with ``HostSyncAudit`` (``scripts/sync_audit.py``) around the loss code: the
    semi-supervised trainers' ``compute_losses`` (every forward and loss before the backward), or nnU-Net's loss
    for ``nnUNetTrainer``. Returns the number of host-device synchronisation points and where they are."""
    from sync_audit import HostSyncAudit  # scripts/, next to this script
    audit = HostSyncAudit()
    name = "compute_losses" if hasattr(trainer, "compute_losses") else "loss"
    original = getattr(trainer, name)

    def audited(*args, **kwargs):
        with audit:
            return original(*args, **kwargs)

    setattr(trainer, name, audited)
    try:
        trainer.train_step(next(trainer.dataloader_train))
    finally:
        if name == "compute_losses":
            delattr(trainer, name)  # back to the class's method
        else:
            setattr(trainer, name, original)
    return {"audited": name, "count": len(audit.events),
            "sites": {f"{op} at {where}": n for (op, where), n in audit.summary().most_common()}}


def benchmark_trainer(trainer_class, args, device, prepare=None, after=None) -> dict:
    """Time one trainer (see the module docstring). Optional hooks for scripts building on this one:
    ``prepare(trainer)`` runs after construction, before ``on_train_start``; ``after(trainer, result)`` runs after
    the timed phases, the audit and the memory readings, and may add entries to ``result``."""
    import torch
    cuda = device.type == "cuda"

    def synchronize():
        if cuda:
            torch.cuda.synchronize(device)

    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer = construct_trainer(trainer_class, args.d, args.c, args.fold, args.p, device)
    try:
        if prepare is not None:
            prepare(trainer)
        trainer.on_train_start()
        trainer.on_train_epoch_start()  # network.train(), learning rate of epoch 0 (as the training loop does)
        streams = training_streams(trainer)
        result = {"batch_size": trainer.batch_size, "patch_size": list(trainer.configuration_manager.patch_size),
                  "streams": streams}
        if getattr(trainer, "dataloader_unlabeled", None) is not None:
            result["unlabeled_batch_size"] = len(next(trainer.dataloader_unlabeled)["keys"])

        with_loading, wait_s = _run_phase(trainer, args.warmup, args.iters, synchronize)
        total_s = with_loading["ms_per_iter_mean"] * with_loading["iterations"] / 1000
        with_loading["data_wait_share"] = wait_s / total_s if total_s > 0 else float("nan")
        result["with_data_loading"] = with_loading

        # first batch of every stream, moved to the device once (the unlabelled stream's target stays on the host:
        # a train step reads it there, for diagnostics only)
        loaders = {k: getattr(trainer, k) for k in streams}
        for k, loader in loaders.items():
            batch = dict(next(loader))
            for key in ("data", "target") if k == "dataloader_train" else ("data",):
                batch[key] = _to_device(batch[key], device)
            setattr(trainer, k, RepeatedBatch(batch))
        synchronize()
        try:
            result["without_data_loading"], _ = _run_phase(trainer, args.warmup, args.iters, synchronize)
        finally:
            for k, loader in loaders.items():
                setattr(trainer, k, loader)
        result["loss_code_syncs"] = audit_loss_code(trainer)
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30 if cuda else None
        result["peak_gpu_memory_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2 ** 30 if cuda else None
        if after is not None:
            after(trainer, result)
        return result
    finally:
        shutdown_loaders(trainer)
        del trainer
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ self-training
def is_self_training(trainer_class) -> bool:
    from nnunet_ssl.trainers.self_training import nnUNetTrainerSelfTraining
    return issubclass(trainer_class, nnUNetTrainerSelfTraining)


def untrained_model(args, device, folder: str) -> str:
    """A model folder (``plans.json``, ``dataset.json``, ``fold_F/checkpoint_final.pth``) of ``nnUNetTrainer``'s
    network for these plans, initialised and not trained, with the mirroring axes nnU-Net's training would record:
    it predicts like a trained model of the same plans costs (its output is meaningless)."""
    from batchgenerators.utilities.file_and_folder_operations import join, save_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer logs its plans
        trainer = construct_trainer(nnUNetTrainer, args.d, args.c, args.fold, args.p, device)
        trainer.initialize()
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    os.makedirs(join(folder, f"fold_{args.fold}"))
    save_json(trainer.plans_manager.plans, join(folder, "plans.json"), sort_keys=False)
    save_json(trainer.dataset_json, join(folder, "dataset.json"), sort_keys=False)
    trainer.save_checkpoint(join(folder, f"fold_{args.fold}", "checkpoint_final.pth"))
    del trainer
    gc.collect()
    return folder


def prepare_self_training(trainer_name: str, args, device, work_dir: str) -> Tuple[str, dict]:
    """A temporary ``nnUNet_preprocessed`` (links to the user's dataset folder, without its pseudo-label folders)
    with pseudo-labels of an untrained model made as ``nnUNetv2_ssl_self_train`` makes them; returns (its path, the
    timing of the pseudo-labelling)."""
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunet_ssl.self_training import cli as self_train
    from nnunet_ssl.self_training.store import (model_fingerprint, pseudo_label_folder, weighting_settings,
                                                write_pseudo_manifest)
    dataset = maybe_convert_to_dataset_name(args.d)
    user_base = join(os.fspath(nnUNet_preprocessed), dataset)
    pre_root = join(work_dir, "nnUNet_preprocessed")
    os.makedirs(join(pre_root, dataset))
    for entry in os.listdir(user_base):
        if "_pseudolabels_fold_" not in entry:  # the user's pseudo-labels are neither read nor replaced
            os.symlink(os.path.abspath(join(user_base, entry)), join(pre_root, dataset, entry))
    argv = ["-d", dataset, "-c", args.c, "-f", str(args.fold), "-p", args.p, "-tr", trainer_name,
            "-device", device.type] + (["--disable_tta"] if args.disable_tta else [])
    cli_args = self_train.build_parser().parse_args(argv)
    with environment(nnUNet_preprocessed=pre_root):
        setup = self_train.Setup(cli_args)
        cases = self_train.fold_unlabeled_cases(setup)
        model = untrained_model(args, device, join(work_dir, "untrained_model"))
        fingerprint = model_fingerprint(join(model, f"fold_{args.fold}", "checkpoint_final.pth"))
        folder = pseudo_label_folder(setup.pre_base, setup.configuration_manager.data_identifier, setup.fold)
        prediction = {"use_mirroring": not cli_args.disable_tta, "tile_step_size": cli_args.step_size,
                      "use_gaussian": True}
        start = time.perf_counter()
        manifest = self_train.make_pseudo_labels(setup, cli_args, folder, model, fingerprint, cases, prediction,
                                                 weighting_settings(cli_args.weighting, cli_args.threshold))
        seconds = time.perf_counter() - start
        manifest["training"] = {"stage": "pseudo", "round": 1, "trainer": trainer_name, "num_epochs": None,
                                "num_iterations_per_epoch": None, "pseudo_ratio": cli_args.pseudo_ratio}
        write_pseudo_manifest(folder, manifest)
    return pre_root, {"cases": len(cases), "seconds": seconds, "seconds_per_case": seconds / len(cases),
                      "use_mirroring": prediction["use_mirroring"], "tile_step_size": prediction["tile_step_size"],
                      "model": "nnUNetTrainer network of these plans, initialised, not trained"}


def benchmark_self_training(trainer_class, trainer_name: str, args, device) -> dict:
    """``benchmark_trainer`` on pseudo-labels of an untrained model, plus the time that pseudo-labelling took."""
    work_dir = tempfile.mkdtemp(prefix="nnunet_ssl_speed_self_training_")
    try:
        pre_root, labelling = prepare_self_training(trainer_name, args, device, work_dir)
        with environment(nnUNet_preprocessed=pre_root):
            result = benchmark_trainer(trainer_class, args, device)
        result["pseudo_labelling"] = labelling
        return result
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)  # links are removed, never followed


# ------------------------------------------------------------------------------------------------------ report
def add_ratios(results: Dict[str, dict]) -> None:
    ref = results.get(REFERENCE_TRAINER, {})
    for r in results.values():
        if r.get("status") != "ok":
            continue
        for phase in ("with_data_loading", "without_data_loading"):
            base = ref.get(phase, {}).get("ms_per_iter_mean") if ref.get("status") == "ok" else None
            r[phase]["ratio_to_nnUNetTrainer"] = r[phase]["ms_per_iter_mean"] / base if base else None


def format_table(results: Dict[str, dict]) -> str:
    def num(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    header = ["Trainer", "batch (l+u)", "ms/it with loading", "ratio", "ms/it no loading", "ratio",
              "waiting for data", "peak GPU mem (GiB)", "host syncs in loss code"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for name, r in results.items():
        if r.get("status") != "ok":
            notes.append(f"{name}: {r['status']} ({r.get('reason', '')})")
            continue
        w, n = r["with_data_loading"], r["without_data_loading"]
        batch = f"{r['batch_size']}+{r['unlabeled_batch_size']}" if "unlabeled_batch_size" in r else \
            str(r["batch_size"])
        lines.append("| " + " | ".join([
            name, batch, f"{w['ms_per_iter_mean']:.1f} ± {w['ms_per_iter_std']:.1f}",
            num(w["ratio_to_nnUNetTrainer"], ".2f") + ("×" if w["ratio_to_nnUNetTrainer"] else ""),
            f"{n['ms_per_iter_mean']:.1f} ± {n['ms_per_iter_std']:.1f}",
            num(n["ratio_to_nnUNetTrainer"], ".2f") + ("×" if n["ratio_to_nnUNetTrainer"] else ""),
            f"{100 * w['data_wait_share']:.1f} %", num(r["peak_gpu_memory_gib"], ".2f"),
            str(r["loss_code_syncs"]["count"])]) + " |")
        notes.extend(f"{name}: {n}× {site}" for site, n in r["loss_code_syncs"]["sites"].items())
        if "pseudo_labelling" in r:
            p = r["pseudo_labelling"]
            notes.append(f"{name}: before training, pseudo-labelling the {p['cases']} unlabelled cases with nnU-Net's "
                         f"predictor (mirroring {'on' if p['use_mirroring'] else 'off'}) takes "
                         f"{p['seconds_per_case']:.2f} s per case ({p['seconds']:.1f} s, once per round; timed with "
                         f"an untrained model of the same plans)")
    return "\n".join(lines) + ("\n\n" + "\n".join(f"- {n}" for n in notes) if notes else "") + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark_speed.py",
                                description=__doc__.split("\n\n")[0] + " Writes a Markdown table and JSON.")
    p.add_argument("-d", required=True, help="dataset name or id (planned and preprocessed)")
    p.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-f", dest="fold", type=int, metavar="F", default=0,
                   help="fold whose split the loaders use (default 0)")
    p.add_argument("--trainers", nargs="+", default=list(DEFAULT_TRAINERS),
                   help=f"trainer class names (default: {' '.join(DEFAULT_TRAINERS)}); ratios are to "
                        f"{REFERENCE_TRAINER}")
    p.add_argument("--iterations", dest="iters", type=int, metavar="N", default=50,
                   help="timed iterations per phase (default 50)")
    p.add_argument("--warmup", type=int, default=20,
                   help="untimed iterations before each phase (default 20; enough for torch.compile)")
    p.add_argument("--disable_tta", action="store_true",
                   help="self-training trainers: pseudo-label without test-time mirroring (as nnUNetv2_ssl_self_train "
                        "--disable_tta; default: mirroring on)")
    p.add_argument("-device", dest="device", choices=("cuda", "cpu"), default=None, help="default: cuda if available")
    p.add_argument("--threads", dest="num_threads", type=int, metavar="N", default=None,
                   help="torch threads (default as nnUNetv2_train: all cores on CPU, 1 with CUDA)")
    p.add_argument("--output_file", dest="output", default="benchmark_speed.json", metavar="FILE.json",
                   help="JSON output file (default benchmark_speed.json); the table goes next to it as .md")
    p.add_argument("--keep_results", action="store_true",
                   help="keep the temporary nnUNet_results folder with the trainers' logs (its path is printed)")
    deprecated_aliases(p, {"--fold": "-f", "--iters": "--iterations", "--disable-tta": "--disable_tta",
                           "--device": "-device", "--num-threads": "--threads", "-o": "--output_file",
                           "--output": "--output_file", "--keep-results": "--keep_results"})
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        raise SystemExit("--iterations must be >= 1 and --warmup >= 0")
    from nnunetv2.paths import nnUNet_preprocessed
    if not nnUNet_preprocessed.is_set():
        raise SystemExit("nnUNet_preprocessed is not set; point it at the folder with the planned dataset")
    use_plugin_trainers()
    device = select_device(args.device, args.num_threads)
    results_folder = tempfile.mkdtemp(prefix="nnunet_ssl_speed_results_")
    results: Dict[str, dict] = {}
    try:
        with environment(nnUNet_results=results_folder):
            for name in args.trainers:
                trainer_class, reason = resolve_trainer(name)
                if trainer_class is None:
                    print(f"[benchmark_speed] skipping {name}: {reason}")
                    results[name] = {"status": "skipped (not importable)", "reason": reason}
                    continue
                print(f"[benchmark_speed] {name}: {args.warmup} warm-up + {args.iters} timed iterations per phase")
                try:
                    if is_self_training(trainer_class):
                        result = benchmark_self_training(trainer_class, name, args, device)
                    else:
                        result = benchmark_trainer(trainer_class, args, device)
                    results[name] = {"status": "ok", **result}
                except Exception as e:  # one broken trainer must not cost the numbers of the others
                    traceback.print_exc()
                    results[name] = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
    finally:
        if args.keep_results:
            print(f"[benchmark_speed] trainer logs kept in {results_folder}")
        else:
            shutil.rmtree(results_folder, ignore_errors=True)
    add_ratios(results)
    info = machine_info(device)
    table = format_table(results)
    header = (f"Speed benchmark: dataset {args.d}, configuration {args.c}, plans {args.p}, fold {args.fold}; "
              f"{args.iters} timed iterations after {args.warmup} warm-up per phase; {info['device_name']}, "
              f"torch {info['torch']}, nnU-Net {info['nnunetv2']}, nnUNet_n_proc_DA={info['nnUNet_n_proc_DA']} "
              f"(augmentation workers, shared by the two loaders of the semi-supervised trainers; 0: loading in the "
              f"main process), {info['date']}.")
    if device.type != "cuda":
        header += " CPU run: timings check the mechanics only, they say nothing about GPU training."
    report = {"settings": {"dataset": args.d, "configuration": args.c, "plans": args.p, "fold": args.fold,
                           "iters": args.iters, "warmup": args.warmup, "trainers": args.trainers,
                           "disable_tta": args.disable_tta,
                           "reference_trainer": REFERENCE_TRAINER},
              "machine": info, "results": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    md_file = os.path.splitext(args.output)[0] + ".md"
    with open(md_file, "w", encoding="utf-8") as f:
        f.write(header + "\n\n" + table)
    print("\n" + header + "\n\n" + table)
    print(f"Wrote {args.output} and {md_file}")
    return 0 if all(r["status"] != "failed" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
