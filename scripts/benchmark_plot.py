#!/usr/bin/env python
"""Plot of held-out Dice per trainer, every run a point, from the run records of ``benchmark_ssl.py --record``.

    python scripts/benchmark_plot.py benchmarks/LA_3p5mm --output_file docs/img/la_dice.png [--budget 4]
        [--rows nnUNetTrainer "nnUNetTrainerCRLN=CRLN" "nnUNetTrainer@all=full supervision" ...]

Reads ``budget_<tag>/*.json`` (fold of the records' split, usually 0) and ``fold_<F>/budget_<tag>/*.json`` (the
other held-out folds), so one row shows the spread over seeds and folds: a point per run (marker and colour by
fold), a bar for the mean over all runs, a line from the lowest to the highest run. A row is
``TRAINER[@BUDGET][=LABEL]``: the trainer's runs at ``--budget`` (or at BUDGET, e.g. ``@all`` for full supervision),
labelled LABEL (default: the trainer name). Rows without records are left out and named on stderr. ``-f 0`` keeps
only the development fold's runs (a figure titled for one fold must not average in the others).
"""
import argparse
import glob
import json
import os
import sys
import textwrap
from typing import List, Optional, Sequence

DEFAULT_ROWS = ("nnUNetTrainer=labelled-only nnU-Net", "nnUNetTrainerSelfTraining", "nnUNetTrainerMeanTeacher",
                "nnUNetTrainerCRLN", "nnUNetTrainerCDR", "nnUNetTrainerBoCLIS", "nnUNetTrainerUGPL",
                "nnUNetTrainer@all=full supervision (all labels)")
FOLD_STYLE = {0: ("o", "tab:blue"), 1: ("s", "tab:orange"), 2: ("^", "tab:green")}


def load_runs(folder: str) -> List[dict]:
    """Every finished run record under ``folder`` with ``budget_tag`` and ``fold`` set (from the path and the
    record's settings)."""
    paths = glob.glob(os.path.join(folder, "budget_*", "*.json")) + \
        glob.glob(os.path.join(folder, "fold_*", "budget_*", "*.json"))
    runs = []
    for path in sorted(paths):
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
        if r.get("status", "ok") != "ok":
            continue
        r["budget_tag"] = os.path.basename(os.path.dirname(path))[len("budget_"):]
        parent = os.path.basename(os.path.dirname(os.path.dirname(path)))
        r["fold"] = int(parent[len("fold_"):]) if parent.startswith("fold_") else \
            int(r.get("settings", {}).get("fold", 0))
        runs.append(r)
    return runs


def parse_row(spec: str, budget: str) -> dict:
    """``TRAINER[@BUDGET][=LABEL]`` -> {trainer, budget, label}."""
    name, _, label = spec.partition("=")
    trainer, _, row_budget = name.partition("@")
    if not trainer:
        raise ValueError(f"row {spec!r}: no trainer name (expected TRAINER[@BUDGET][=LABEL])")
    return {"trainer": trainer, "budget": row_budget or str(budget), "label": label or trainer}


def dice_rows(runs: Sequence[dict], rows: Sequence[dict]) -> List[dict]:
    """For each row with runs: its label, the runs as (fold, seed, Dice %) sorted by fold and seed, the mean over
    all runs and the spread (max - min; 0 for one run). Rows without runs are left out."""
    out = []
    for row in rows:
        points = sorted((r["fold"], int(r.get("seed", 0)), 100.0 * r["metrics"]["dice"]["mean"]) for r in runs
                        if r["trainer"] == row["trainer"] and r["budget_tag"] == row["budget"])
        if not points:
            continue
        dice = [p[2] for p in points]
        out.append({"label": row["label"], "trainer": row["trainer"], "budget": row["budget"], "runs": points,
                    "mean": sum(dice) / len(dice), "spread": max(dice) - min(dice)})
    return out


def plot(rows: Sequence[dict], output: str, title: Optional[str] = None) -> None:
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8.5, 0.5 * len(rows) + 1.6))
    seen_folds = set()
    for i, row in enumerate(rows):
        y = len(rows) - 1 - i
        dice = [d for _, _, d in row["runs"]]
        ax.plot([min(dice), max(dice)], [y, y], color="0.6", lw=1, zorder=1)
        ax.plot([row["mean"]] * 2, [y - 0.3, y + 0.3], color="k", lw=2, zorder=2)
        for fold, seed, d in row["runs"]:
            marker, colour = FOLD_STYLE.get(fold, ("D", "tab:red"))
            ax.scatter([d], [y], marker=marker, color=colour, s=36, zorder=3,
                       label=None if fold in seen_folds else f"fold {fold}, one point per seed")
            seen_folds.add(fold)
        n = len(row["runs"])
        ax.annotate(f"{row['mean']:.2f}" + (f"  ({n} runs, spread {row['spread']:.2f})" if n > 1 else "  (1 run)"),
                    (max(dice), y), xytext=(8, -3), textcoords="offset points", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r["label"] for r in reversed(rows)], fontsize=9)
    lo = min(min(d for _, _, d in r["runs"]) for r in rows)
    hi = max(max(d for _, _, d in r["runs"]) for r in rows)
    ax.set_xlim(lo - 1.0, hi + 4.5)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("held-out Dice % (bar: mean over runs; line: lowest to highest run)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(textwrap.fill(title, 100), fontsize=10)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmark_plot.py", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="record folder written by benchmark_ssl.py --record")
    p.add_argument("--output_file", required=True, metavar="FILE.png", help="the PNG file to write")
    p.add_argument("--budget", default="4", metavar="B",
                   help="label budget of the rows without @BUDGET (as confirmation_table.py; default 4)")
    p.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), help="TRAINER[@BUDGET][=LABEL] ...")
    p.add_argument("-f", type=int, nargs="+", default=None, dest="folds", metavar="F",
                   help="only the runs of these held-out folds, as nnUNetv2_predict's -f (default: every fold)")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    if not os.path.isdir(args.folder):
        p.error(f"{args.folder} is not a folder (give the folder that benchmark_ssl.py --record wrote)")
    try:
        rows = [parse_row(s, args.budget) for s in args.rows]
    except ValueError as e:
        p.error(str(e))
    out_dir = os.path.dirname(os.path.abspath(args.output_file))
    if not os.path.isdir(out_dir):
        p.error(f"--output_file {args.output_file}: folder {out_dir} does not exist")
    runs = [r for r in load_runs(args.folder) if args.folds is None or r["fold"] in args.folds]
    data = dice_rows(runs, rows)
    missing = [r["label"] for r in rows if r["label"] not in {d["label"] for d in data}]
    if missing:
        print(f"benchmark_plot.py: no records for {', '.join(missing)} (left out)", file=sys.stderr)
    if not data:
        p.error(f"no finished run in {args.folder} matches the rows; nothing written")
    plot(data, args.output_file, args.title)
    for d in data:
        print(f"{d['label']}: {d['mean']:.2f} over {len(d['runs'])} run(s), spread {d['spread']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
