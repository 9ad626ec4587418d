#!/usr/bin/env python
"""Which loss term moves the network: the gradient norm of each weighted term of a semi-supervised trainer.

    python scripts/loss_gradients.py -d 101 -c 3d_fullres -p nnUNetPlans -tr nnUNetTrainerCRLN \
        [--checkpoint .../fold_0/checkpoint_final.pth] [--batches 4] [--output_file gradients.json]

The trainer is built as ``nnUNetv2_train`` builds it and started with ``on_train_start()`` (network, optimizer,
loaders; nothing is trained), optionally loaded from a checkpoint of a run (weights, teacher, step counter and
therefore the loss weights of that moment). For each of ``--batches`` real training batches (labelled plus
unlabelled, through the trainer's own loaders and augmentation) it runs the trainer's ``compute_losses`` and reports,
per term (the weighted values that training sums), the loss and the L2 norm of its gradient over the network's
parameters (the student; for dual-network trainers both networks) and over the method's extra modules
(projection heads). A term whose gradient dwarfs the supervised one drives training (e.g. a contrastive loss that
the network cannot satisfy, so its gradient never fades). The trainer's output folder goes to a temporary
``nnUNet_results`` that is deleted afterwards; the checkpoint is only read.

Ramped loss weights depend on the run's schedule (step / (epochs x iterations per epoch)), which nnU-Net does not
store: it comes from ``--epochs``/``--iterations_per_epoch``, else from the checkpoint's ``ssl_schedule`` (in
checkpoints since 2026-12-05), else the trainer's own (nnU-Net's 1000 x 250, at which a 2000-iteration run's
checkpoint is measured with ramp weights near 0: pass the run's schedule for older checkpoints). The weights of
that step are reported with the terms.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

from nnunet_ssl.cli_flags import deprecated_aliases

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_speed import (construct_trainer, environment, resolve_trainer, select_device,  # noqa: E402
                             shutdown_loaders, use_plugin_trainers)


def measure(trainer, n_batches: int) -> Tuple[Dict[str, Dict[str, List[float]]], Dict[str, List[float]]]:
    """({term: {"loss": [...], "grad_network": [...], "grad_extra": [...]}}, {logged loss weight: [...]}) over
    ``n_batches`` training batches."""
    import torch
    from nnunet_ssl.diagnostics import term_gradient_norms
    network_params = list(trainer.network.parameters())
    extra_params = list(trainer.extra_modules.parameters()) if hasattr(trainer, "extra_modules") else []
    out: Dict[str, Dict[str, List[float]]] = {}
    weights: Dict[str, List[float]] = {}
    for _ in range(n_batches):
        batch = next(trainer.dataloader_train)
        try:
            with trainer.autocast():
                losses, diagnostics = trainer.compute_losses(*trainer.ssl_batch(batch))
        finally:
            trainer._strong_input_u = None
        losses = {k: v.float() for k, v in losses.items()}
        for key, params in (("grad_network", network_params), ("grad_extra", extra_params)):
            for term, norm in term_gradient_norms(losses, params).items():
                out.setdefault(term, {}).setdefault(key, []).append(norm)
        for term, value in losses.items():
            out[term].setdefault("loss", []).append(float(value.detach()))
        for key, value in diagnostics.items():
            if key.endswith("weight") and value.numel() == 1:
                weights.setdefault(key, []).append(float(value))
        del losses, diagnostics
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out, weights


def run_schedule(args, checkpoint: Optional[dict]) -> Tuple[Dict[str, int], str]:
    """(schedule attributes to set on the trainer, where they come from): options, else the checkpoint's
    ``ssl_schedule``, else nothing (the trainer's own)."""
    stored = (checkpoint or {}).get("ssl_schedule") or {}
    schedule, sources = {}, set()
    for attr, option in (("num_epochs", args.epochs), ("num_iterations_per_epoch", args.iterations_per_epoch)):
        if option is not None:
            schedule[attr] = option
            sources.add("options")
        elif attr in stored:
            schedule[attr] = int(stored[attr])
            sources.add("checkpoint")
    if not schedule:
        return schedule, "the trainer's own"
    return schedule, " and ".join(sorted(sources))


def format_table(measured: Dict[str, Dict[str, List[float]]]) -> str:
    def cell(values):
        return f"{sum(values) / len(values):.3g} ({min(values):.3g} to {max(values):.3g})"
    lines = ["| term | weighted loss | gradient norm, network | gradient norm, extra modules |", "|---|---|---|---|"]
    for term, m in measured.items():
        lines.append(f"| {term} | {cell(m['loss'])} | {cell(m['grad_network'])} | {cell(m['grad_extra'])} |")
    return "\n".join(lines) + "\n\nmean (min to max) over the batches"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loss_gradients.py",
                                description="Gradient norm of each loss term of a semi-supervised trainer.")
    p.add_argument("-d", required=True, help="dataset name or id (planned and preprocessed)")
    p.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-f", dest="fold", type=int, metavar="F", default=0,
                   help="fold whose split the loaders use (default 0)")
    p.add_argument("-tr", required=True, help="semi-supervised trainer class (it needs compute_losses)")
    p.add_argument("--checkpoint", default=None, help="a checkpoint of that trainer to load (default: initialised)")
    p.add_argument("--batches", type=int, default=4, help="training batches to measure (default 4)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of the run whose checkpoint is loaded (ramped loss weights depend on it; default: the "
                        "checkpoint's ssl_schedule, else the trainer's own)")
    p.add_argument("--iterations_per_epoch", type=int, default=None, metavar="N",
                   help="iterations per epoch of that run (default: as --epochs)")
    p.add_argument("-device", dest="device", choices=("cuda", "cpu"), default=None, help="default: cuda if available")
    p.add_argument("--threads", dest="num_threads", type=int, metavar="N", default=None,
                   help="torch threads on the CPU")
    p.add_argument("--output_file", dest="output", default=None, metavar="FILE.json",
                   help="also write the numbers as JSON here")
    deprecated_aliases(p, {"--fold": "-f", "--iterations-per-epoch": "--iterations_per_epoch", "--device": "-device",
                           "--num-threads": "--threads", "-o": "--output_file", "--output": "--output_file"})
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for option, value in (("--batches", args.batches), ("--epochs", args.epochs),
                          ("--iterations_per_epoch", args.iterations_per_epoch)):
        if value is not None and value < 1:
            raise SystemExit(f"{option} must be >= 1, got {value}")
    if args.checkpoint is not None and not os.path.isfile(args.checkpoint):
        raise SystemExit(f"--checkpoint {args.checkpoint} does not exist")
    from nnunetv2.paths import nnUNet_preprocessed
    if not nnUNet_preprocessed.is_set():
        raise SystemExit("nnUNet_preprocessed is not set; point it at the folder with the planned dataset")
    use_plugin_trainers()
    trainer_class, reason = resolve_trainer(args.tr)
    if trainer_class is None:
        raise SystemExit(f"-tr {args.tr}: {reason}")
    if not hasattr(trainer_class, "compute_losses"):
        raise SystemExit(f"-tr {args.tr} has no compute_losses (not a semi-supervised trainer of nnunet_ssl)")
    device = select_device(args.device, args.num_threads)
    import torch
    from nnunet_ssl.trainers.base import apply_schedule
    checkpoint = None
    if args.checkpoint is not None:
        checkpoint = torch.load(args.checkpoint, map_location=device, weights_only=False)
    schedule, schedule_source = run_schedule(args, checkpoint)
    results_folder = tempfile.mkdtemp(prefix="nnunet_ssl_gradients_results_")
    try:
        with environment(nnUNet_results=results_folder):
            trainer = construct_trainer(trainer_class, args.d, args.c, args.fold, args.p, device)
            apply_schedule(trainer, schedule)
            schedule = {"num_epochs": trainer.num_epochs, "num_iterations_per_epoch": trainer.num_iterations_per_epoch}
            try:
                trainer.on_train_start()
                if checkpoint is not None:
                    trainer.load_checkpoint(checkpoint)
                trainer.on_train_epoch_start()  # train mode and the learning rate of the (loaded) epoch
                step = trainer.ssl_step
                measured, weights = measure(trainer, args.batches)
            finally:
                shutdown_loaders(trainer)
    finally:
        shutil.rmtree(results_folder, ignore_errors=True)
    state = f"checkpoint {args.checkpoint}" if args.checkpoint else "initialised network"
    print(f"\n{args.tr}, {state}, {args.batches} training batches of dataset {args.d} ({args.c}, {args.p}); step "
          f"{step} of {schedule['num_epochs']} x {schedule['num_iterations_per_epoch']} iterations ({schedule_source})"
          "\n")
    print(format_table(measured))
    if weights:
        print("loss weights at this step: " + ", ".join(f"{k} {sum(v) / len(v):.4g}" for k, v in weights.items()))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"trainer": args.tr, "checkpoint": args.checkpoint, "dataset": args.d, "configuration": args.c,
                       "plans": args.p, "fold": args.fold, "batches": args.batches, "step": step,
                       "schedule": dict(schedule, source=schedule_source), "loss_weights": weights,
                       "terms": measured}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
