#!/usr/bin/env python
"""Confirmation table: the default trainers on the confirmation folds (LA folds 1 and 2), pooled over their cases.

    python scripts/confirmation_table.py benchmarks/LA_3p5mm [-f 1 2] [--budget 4] [--output_file FILE]

Reads the run records that ``scripts/benchmark_la.sh --fold F --record DIR`` writes under
``DIR/fold_F/budget_<budget>/``. A trainer enters the pooled columns only when every fold has its record (seed 0 by
default); its mean Dice is the mean over all held-out cases of those folds (each fold's block holds different cases),
Δ is against the labelled-only ``nnUNetTrainer`` of the same folds, "gap closed" is Δ over (full supervision −
labelled-only), and the paired Wilcoxon signed-rank test (scipy) compares per-case Dice with labelled-only over the
pooled cases. 95HD is the mean of the folds' case means (voxels of the reference masks).

Below the table, the two default decisions fixed before the confirmation runs (benchmarks/LA_3p5mm/README.md,
"Confirmation") are applied to the records: each reads "pending" until its folds have the records it needs. Fold 0's
records are read from ``DIR/budget_<budget>/`` (where ``benchmark_la.sh`` writes them), the others' from
``DIR/fold_F/``.
"""
import argparse
import glob
import json
import os
import sys
from typing import Dict, List, Sequence

BASELINE = "nnUNetTrainer"
ALL_LABELED = "all"
# (what is decided, trainer A and what A's win means, trainer B and what B's win means, folds): A wins only if its mean
# Dice is higher than B's on every one of the folds, otherwise B wins.
DECISION_RULES = (
    ("CRLN's CPS weight", "nnUNetTrainerCRLN", "0.05 stays the default",
     "nnUNetTrainerCRLN_paperCPSWeight", "the default becomes the paper's 0.5", (1, 2)),
    ("UGPL's loss schedule", "nnUNetTrainerUGPL_sigmoidRamp", "the sigmoid ramps (`_sigmoidRamp`) become the default",
     "nnUNetTrainerUGPL", "the paper's schedule stays the default", (0, 1, 2)),
)


def load_fold_records(folder: str, fold: int, budget: str, seed: int) -> Dict[str, dict]:
    """{trainer: record} of one fold's finished runs at ``budget`` (the fully supervised run under the key
    'nnUNetTrainer@all')."""
    out = {}
    fold_folder = os.path.join(folder, f"fold_{fold}") if fold else folder  # fold 0: the development fold's records
    for tag in (budget, ALL_LABELED):
        for path in sorted(glob.glob(os.path.join(fold_folder, f"budget_{tag}", "*.json"))):
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
            if record.get("status", "ok") != "ok" or record.get("seed", 0) != seed:
                continue
            if record.get("settings", {}).get("fold", fold) != fold:
                raise ValueError(f"{path} holds a run of fold {record['settings']['fold']}, not {fold}")
            out[record["trainer"] + ("@all" if tag == ALL_LABELED else "")] = record
    return out


def pooled_cases(records: Sequence[dict]) -> Dict[str, float]:
    cases: Dict[str, float] = {}
    for r in records:
        for case, dice in r["metrics"]["per_case_dice"].items():
            if case in cases:
                raise ValueError(f"case {case} is held out in two folds: the folds' blocks must be disjoint")
            cases[case] = dice
    return cases


def paired_wilcoxon(a: Dict[str, float], b: Dict[str, float]):
    """(cases where a > b, number of cases, two-sided p) of the paired Wilcoxon signed-rank test over shared cases."""
    from scipy.stats import wilcoxon
    shared = sorted(set(a) & set(b))
    diffs = [a[c] - b[c] for c in shared]
    better = sum(d > 0 for d in diffs)
    if not any(diffs):
        return better, len(shared), 1.0
    return better, len(shared), float(wilcoxon(diffs).pvalue)


def confirmation_rows(by_fold: Dict[int, Dict[str, dict]], trainers: Sequence[str]) -> List[dict]:
    folds = sorted(by_fold)
    rows = []
    complete = lambda name: all(name in by_fold[f] for f in folds)
    base = pooled_cases([by_fold[f][BASELINE] for f in folds]) if complete(BASELINE) else None
    full = pooled_cases([by_fold[f][BASELINE + "@all"] for f in folds]) if complete(BASELINE + "@all") else None
    mean = lambda d: sum(d.values()) / len(d)
    for name in [BASELINE, BASELINE + "@all"] + [t for t in trainers if t != BASELINE]:
        row = {"trainer": name, "per_fold": {f: (100 * by_fold[f][name]["metrics"]["dice"]["mean"]
                                                  if name in by_fold[f] else None) for f in folds}}
        if complete(name):
            cases = pooled_cases([by_fold[f][name] for f in folds])
            row["dice"] = 100 * mean(cases)
            row["hd95"] = sum(by_fold[f][name]["metrics"]["hd95_voxel"]["mean"] for f in folds) / len(folds)
            row["commits"] = sorted({str(by_fold[f][name].get("commit")) for f in folds})
            if base is not None and name != BASELINE:
                row["delta"] = 100 * (mean(cases) - mean(base))
                if full is not None and mean(full) > mean(base) and name != BASELINE + "@all":
                    row["gap_closed"] = (mean(cases) - mean(base)) / (mean(full) - mean(base))
                row["better"], row["n"], row["p"] = paired_wilcoxon(cases, base)
        rows.append(row)
    return rows


def markdown(rows: Sequence[dict], folds: Sequence[int]) -> str:
    head = ("| Trainer | " + " | ".join(f"fold {f} Dice %" for f in folds) +
            " | pooled Dice % | 95HD (voxels) | Δ vs labelled-only | gap closed | better cases (Wilcoxon p) | commit |")
    lines = [head, "|" + "---|" * (len(folds) + 7)]
    fmt = lambda v, spec: "–" if v is None else format(v, spec)
    for r in rows:
        label = "nnUNetTrainer (all labelled)" if r["trainer"].endswith("@all") else (
            "nnUNetTrainer (labelled only)" if r["trainer"] == BASELINE else r["trainer"])
        cells = [fmt(r["per_fold"][f], ".2f") for f in folds]
        if "dice" not in r:
            cells += ["pending"] + ["–"] * 5  # not every fold has its record yet
        else:
            cells += [f"{r['dice']:.2f}", f"{r['hd95']:.2f}", fmt(r.get("delta"), "+.2f"),
                      fmt(None if "gap_closed" not in r else 100 * r["gap_closed"], ".0f") +
                      (" %" if "gap_closed" in r else ""),
                      f"{r['better']} of {r['n']} (p = {r['p']:.3g})" if "p" in r else "–", ", ".join(r["commits"])]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def decision(by_fold: Dict[int, Dict[str, dict]], rule) -> str:
    """One Markdown line: the rule, each fold's mean Dice of A and B, and the outcome (or "pending"). B's win is
    final as soon as one fold has A not higher, whatever the other folds show."""
    what, a, a_wins, b, b_wins, folds = rule
    dice = lambda f, t: 100 * by_fold[f][t]["metrics"]["dice"]["mean"] if t in by_fold.get(f, {}) else None
    parts, lost_on, pending = [], [], False
    for f in folds:
        da, db = dice(f, a), dice(f, b)
        if da is None or db is None:
            parts.append(f"fold {f} pending")
            pending = True
            continue
        parts.append(f"fold {f} {da:.2f} vs {db:.2f}")
        if not da > db:
            lost_on.append(f)
    if lost_on:
        outcome = f"{b_wins} (decided by fold {', '.join(map(str, lost_on))})"
    elif pending:
        outcome = "pending"
    else:
        outcome = a_wins
    return (f"- {what}: `{a}` must score higher than `{b}` on each of folds {', '.join(map(str, folds))}: "
            f"{'; '.join(parts)} → **{outcome}**")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Confirmation table of the default trainers on LA folds 1 and 2 (pooled "
                                            "over their held-out cases) from benchmark records.")
    p.add_argument("folder", help="record folder holding fold_<F>/budget_<B>/*.json (e.g. benchmarks/LA_3p5mm)")
    p.add_argument("-f", type=int, nargs="+", default=[1, 2], dest="folds",
                   help="confirmation folds, as nnUNetv2_predict's -f (default 1 2)")
    p.add_argument("--budget", default="4", help="labelled budget (default 4)")
    p.add_argument("--seed", type=int, default=0, help="training seed of the rows (default 0)")
    p.add_argument("--trainers", nargs="+",
                   default=["nnUNetTrainerMeanTeacher", "nnUNetTrainerCRLN", "nnUNetTrainerCRLN_paperCPSWeight",
                            "nnUNetTrainerCDR", "nnUNetTrainerBoCLIS", "nnUNetTrainerUGPL",
                            "nnUNetTrainerUGPL_sigmoidRamp", "nnUNetTrainerSelfTraining"],
                   help="rows after labelled-only and full supervision")
    p.add_argument("--output_file", default=None, help="write the Markdown table here (default: print it)")
    args = p.parse_args(argv)
    if not os.path.isdir(args.folder):
        p.error(f"{args.folder} is not a folder")
    needed = sorted(set(args.folds).union(*(rule[-1] for rule in DECISION_RULES)))
    by_fold = {f: load_fold_records(args.folder, f, args.budget, args.seed) for f in needed}
    table = markdown(confirmation_rows({f: by_fold[f] for f in args.folds}, args.trainers), args.folds)
    table += ("\nDefault decisions fixed before the confirmation runs (mean Dice %, seed 0):\n\n" +
              "\n".join(decision(by_fold, rule) for rule in DECISION_RULES) + "\n")
    if args.output_file:
        with open(args.output_file, "w", encoding="utf-8") as f:
            f.write(table)
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
