#!/usr/bin/env python
"""Side-by-side table of two or more ``nnUNetv2_ssl_evaluate`` results on the same cases (the demo's last step).

    python scripts/compare_evaluations.py labelled-only=eval_a/metrics.json "Mean Teacher=eval_b/metrics.json" \
        [--output_file comparison.md]

Rows are the classes and their mean; each result gets Dice (%) and 95HD (voxels) columns, and every result after
the first gets its Dice difference to the first, the number of cases on which its case-mean Dice is higher, and the
two-sided p-value of a paired Wilcoxon signed-rank test over the cases (scipy), so that a reader can tell a
difference that holds across cases from one carried by a single case.
"""
import argparse
import json
import sys
from typing import Dict, List, Sequence, Tuple

from nnunet_ssl.cli_flags import deprecated_aliases
from nnunet_ssl.errors import UserError, exits_on_user_error

PROG = "compare_evaluations.py"


def load(spec: str) -> Tuple[str, dict]:
    if "=" not in spec:
        raise UserError(f"'{spec}': give each result as NAME=path/to/metrics.json (the metrics.json that "
                        f"nnUNetv2_ssl_evaluate writes)")
    name, path = spec.split("=", 1)
    try:
        with open(path, encoding="utf-8") as f:
            metrics = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read it as nnUNetv2_ssl_evaluate's metrics.json ({e})")
    if "summary" not in metrics or "cases" not in metrics:
        raise UserError(f"{path} is not a metrics.json of nnUNetv2_ssl_evaluate (no 'summary'/'cases'); run the "
                        f"evaluation first")
    return name, metrics


def case_dice(metrics: dict) -> Dict[str, float]:
    """Case -> Dice averaged over the classes (cases where it is undefined are left out)."""
    out = {}
    for case in metrics["cases"]:
        dice = case["mean"].get("dice") if isinstance(case.get("mean"), dict) else None
        if dice is not None:
            out[case["case"]] = float(dice)
    return out


def paired_comparison(first: Dict[str, float], other: Dict[str, float]) -> Tuple[int, int, float]:
    """(cases where other is higher, cases compared, Wilcoxon signed-rank two-sided p; nan if all equal)."""
    from scipy.stats import wilcoxon
    common = sorted(set(first) & set(other))
    diffs = [other[c] - first[c] for c in common]
    better = sum(d > 0 for d in diffs)
    if not any(diffs):
        return better, len(common), float("nan")
    return better, len(common), float(wilcoxon(diffs).pvalue)


def comparison_table(results: List[Tuple[str, dict]]) -> str:
    refs = [m["settings"]["reference_folder"] for _, m in results]
    cases = [sorted(c["case"] for c in m["cases"]) for _, m in results]
    if any(c != cases[0] for c in cases[1:]):
        raise UserError("the results were computed on different cases; compare evaluations of the same reference "
                        "folder")
    classes = list(results[0][1]["summary"]["per_class"])
    header = "| Class | " + " | ".join(f"{n}: Dice % | {n}: 95HD" for n, _ in results) + " |"
    lines = [header, "|---|" + "---|---|" * len(results)]

    def cell(block: dict, key: str, scale: float) -> str:
        value = block.get(key, {}).get("mean")
        return "–" if value is None else f"{scale * value:.2f}"

    names = results[0][1]["settings"].get("label_names", {})
    rows = [(f"{c} ({names[c]})" if c in names else c, [m["summary"]["per_class"][c] for _, m in results])
            for c in classes]
    rows.append(("Mean", [m["summary"]["mean"] for _, m in results]))
    for label, blocks in rows:
        cells = []
        for b in blocks:
            cells += [cell(b, "dice", 100), cell(b, "hd95_voxel", 1)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    first_name, first = results[0]
    first_cases = case_dice(first)
    for name, m in results[1:]:
        diff = 100 * (m["summary"]["mean"]["dice"]["mean"] - first["summary"]["mean"]["dice"]["mean"])
        better, n, p = paired_comparison(first_cases, case_dice(m))
        lines.append(f"- {name} vs {first_name}: mean Dice {diff:+.2f} points; higher on {better} of {n} cases; "
                     f"paired Wilcoxon signed-rank p = {p:.3g}.")
    lines.append(f"- Reference: {refs[0]}; 95HD in voxels.")
    return "\n".join(lines) + "\n"


@exits_on_user_error(PROG)
def main(argv: Sequence[str] = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", metavar="NAME=metrics.json", help="two or more evaluations to compare")
    p.add_argument("--output_file", dest="output", default=None, metavar="FILE.md",
                   help="also write the table to this Markdown file")
    deprecated_aliases(p, {"-o": "--output_file", "--output": "--output_file"})
    args = p.parse_args(argv)
    if len(args.results) < 2:
        raise UserError("give at least two NAME=metrics.json results to compare")
    table = comparison_table([load(s) for s in args.results])
    print(table)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
