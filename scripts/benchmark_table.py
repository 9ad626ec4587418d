#!/usr/bin/env python
"""Accuracy table from the run records that ``scripts/benchmark_ssl.py --record DIR`` writes.

    python scripts/benchmark_table.py benchmarks/LA_3p5mm [--readme README.md] [--output_file table.md]

Every finished benchmark run leaves one small JSON (``budget_<tag>/<trainer>__seed<k>.json``: held-out metrics,
per-case Dice, semi-supervised diagnostics, commit, machine, date, iterations, seed). Those files are committed, so
the table can grow over several days and machines; this script rebuilds it from them. With ``--readme`` the table
replaces the text between ``<!-- benchmark-table:<folder name>:start -->`` and ``...:end -->`` in that file.

Rows are (trainer, label budget); runs with several seeds show the mean over seeds and each seed's Dice. The
labelled-only ``nnUNetTrainer`` rows give the seed spread (max - min of its seeds' Dice): a difference to
labelled-only smaller than that spread is marked "within seed spread" instead of being ranked.
"""
import argparse
import glob
import json
import os
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

from nnunet_ssl.cli_flags import deprecated_aliases

BASELINE = "nnUNetTrainer"
ALL_LABELED = "all"


def load_records(folder: str) -> List[dict]:
    records = []
    for path in sorted(glob.glob(os.path.join(folder, "budget_*", "*.json"))):
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        record["budget_tag"] = os.path.basename(os.path.dirname(path))[len("budget_"):]
        records.append(record)
    return records


def group_runs(records: Sequence[dict]) -> Dict[tuple, List[dict]]:
    """{(trainer, budget tag): [records sorted by seed]} of the finished runs."""
    groups = defaultdict(list)
    for r in records:
        if r.get("status", "ok") == "ok":
            groups[(r["trainer"], str(r.get("budget_tag", r["budget"])))].append(r)
    return {k: sorted(v, key=lambda r: r.get("seed", 0)) for k, v in groups.items()}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def seed_spread(groups: Dict[tuple, List[dict]], budget_tag: str) -> Optional[float]:
    """Max - min over seeds of the labelled-only baseline's mean Dice at this budget (None with < 2 seeds)."""
    runs = groups.get((BASELINE, budget_tag), [])
    if len(runs) < 2:
        return None
    dice = [r["metrics"]["dice"]["mean"] for r in runs]
    return max(dice) - min(dice)


def _last(diagnostics: dict, key: str) -> Optional[float]:
    values = [v for v in diagnostics.get(key, []) if v == v]  # drop NaN epochs
    return values[-1] if values else None


def _budget_sort_key(tag: str):
    return (1, 0) if tag == ALL_LABELED else (0, int(tag))


def row_order(groups: Dict[tuple, List[dict]]) -> List[tuple]:
    def key(item):
        trainer, tag = item
        return (_budget_sort_key(tag), trainer != BASELINE, trainer)
    return sorted(groups, key=key)


def markdown_table(records: Sequence[dict]) -> str:
    groups = group_runs(records)
    if not groups:
        return "No finished runs yet.\n"
    lines = ["| Trainer | labelled | seeds | Dice % | Jaccard % | 95HD (voxels) | ASD (voxels) | Dice vs labelled-only "
             "| pseudo-label Dice (last epoch) | iterations | commit | date | machine |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for trainer, tag in row_order(groups):
        runs = groups[(trainer, tag)]
        m = [r["metrics"] for r in runs]
        dice = [x["dice"]["mean"] for x in m]
        seeds = ", ".join(str(r.get("seed", 0)) for r in runs)
        dice_cell = f"{100 * _mean(dice):.2f}"
        if len(runs) > 1:
            dice_cell += " (" + " / ".join(f"{100 * d:.2f}" for d in dice) + ")"
        else:
            dice_cell += f" ± {100 * m[0]['dice']['std']:.2f}"
        compare = "–"
        base_runs = groups.get((BASELINE, tag), [])
        full_runs = groups.get((BASELINE, ALL_LABELED), [])
        if trainer != BASELINE and base_runs:
            base = _mean([r["metrics"]["dice"]["mean"] for r in base_runs])
            diff = _mean(dice) - base
            spread = seed_spread(groups, tag)
            compare = f"{100 * diff:+.2f}"
            if spread is None:
                compare += " (seed spread unknown)"
            elif abs(diff) <= spread:
                compare += f" (within seed spread {100 * spread:.2f})"
            else:
                compare += f" (beyond seed spread {100 * spread:.2f})"
            if full_runs:
                gap = _mean([r["metrics"]["dice"]["mean"] for r in full_runs]) - base
                if gap > 0:
                    compare += f"; {100 * diff / gap:.0f} % of the gap to full supervision"
        elif trainer == BASELINE and tag != ALL_LABELED and seed_spread(groups, tag) is not None:
            compare = f"seed spread {100 * seed_spread(groups, tag):.2f}"
        elif trainer == BASELINE and tag == ALL_LABELED:
            budgets = sorted({b for t, b in groups if t == BASELINE and b != ALL_LABELED}, key=_budget_sort_key)
            gaps = [(b, _mean(dice) - _mean([r["metrics"]["dice"]["mean"] for r in groups[(BASELINE, b)]]))
                    for b in budgets]
            if len(gaps) == 1:
                compare = f"{100 * gaps[0][1]:+.2f} (the gap)"
            elif gaps:  # one ceiling for every budget: the gap to each budget's labelled-only mean
                compare = "the gap: " + ", ".join(f"{100 * g:+.2f} over {b} labelled" for b, g in gaps)
        pl = [_last(r.get("diagnostics", {}), "pseudo_label_dice") for r in runs]
        pl = [p for p in pl if p is not None]
        machines = sorted({r["machine"]["device_name"] for r in runs})
        dates = sorted({r["machine"]["date"][:10] for r in runs})
        commits = sorted({str(r.get("commit")) for r in runs})
        budget = "all" if tag == ALL_LABELED else tag
        lines.append(
            f"| {trainer} | {budget} | {seeds} | {dice_cell} | {100 * _mean([x['jaccard']['mean'] for x in m]):.2f} | "
            f"{_mean([x['hd95_voxel']['mean'] for x in m]):.2f} | {_mean([x['asd_voxel']['mean'] for x in m]):.2f} | "
            f"{compare} | {f'{100 * _mean(pl):.1f}' if pl else '–'} | "
            f"{', '.join(sorted({str(r['iterations']) for r in runs}))} | {', '.join(commits)} | {', '.join(dates)} | "
            f"{'; '.join(machines)} |")
    first = next(iter(groups.values()))[0]
    s = first.get("settings", {})
    notes = [f"Held-out block: {first['metrics']['dice'].get('n', len(first['metrics']['per_case_dice']))} cases "
             f"({first.get('heldout_source', 'validation cases of the split')}), fold {s.get('fold')} of a split with "
             f"shuffle seed {s.get('seed')}; no run trains on them. Dice/Jaccard: mean over held-out cases "
             f"(± std over cases for single runs; per-seed values in brackets); 95HD/ASD in voxels of the "
             f"reference masks, as the semi-supervised literature reports.",
             f"Dataset {s.get('dataset_name')}, configuration {s.get('configuration')}, plans {s.get('plans')}; "
             f"test-time mirroring {'off' if s.get('disable_tta') else 'on'}."]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def replace_between_markers(text: str, name: str, table: str) -> str:
    start, end = f"<!-- benchmark-table:{name}:start -->", f"<!-- benchmark-table:{name}:end -->"
    if start not in text or end not in text:
        raise ValueError(f"markers {start} / {end} not found")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + start + "\n" + table + end + tail


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmark_table.py", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="record folder written by benchmark_ssl.py --record")
    p.add_argument("--output_file", dest="output", default=None, metavar="FILE.md",
                   help="write the Markdown table to this file (default: print it)")
    p.add_argument("--readme", default=None, help="replace the table between this folder's markers in this file")
    deprecated_aliases(p, {"-o": "--output_file", "--output": "--output_file"})
    args = p.parse_args(argv)
    if not os.path.isdir(args.folder):
        print(f"benchmark_table: error: {args.folder} is not a folder (see benchmark_ssl.py --record)",
              file=sys.stderr)
        return 2
    table = markdown_table(load_records(args.folder))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(table)
    if args.readme:
        with open(args.readme, encoding="utf-8") as f:
            text = f.read()
        try:
            text = replace_between_markers(text, os.path.basename(os.path.normpath(args.folder)), table)
        except ValueError as e:
            print(f"benchmark_table: error: {args.readme}: {e}; add them where the table belongs", file=sys.stderr)
            return 2
        with open(args.readme, "w", encoding="utf-8") as f:
            f.write(text)
    if not args.output and not args.readme:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
