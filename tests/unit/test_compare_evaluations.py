"""scripts/compare_evaluations.py: the demo's side-by-side table, on hand-made metrics.json files."""
import importlib.util
import json

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("compare_evaluations", REPO / "scripts" / "compare_evaluations.py")
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def metrics(case_dice, class_dice, hd95):
    """A minimal metrics.json as nnUNetv2_ssl_evaluate writes it (only the fields the table reads)."""
    return {"settings": {"reference_folder": "labelsTs", "label_names": {"1": "organ"}},
            "cases": [{"case": f"c{i}", "mean": {"dice": d}} for i, d in enumerate(case_dice)],
            "summary": {"per_class": {"1": {"dice": {"mean": class_dice}, "hd95_voxel": {"mean": hd95}}},
                        "mean": {"dice": {"mean": class_dice}, "hd95_voxel": {"mean": hd95}}}}


def write(tmp_path, name, m):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(m))
    return f"{name}={path}"


def test_table_values_and_paired_statistics(tmp_path, capsys):
    a = write(tmp_path, "base", metrics([0.5, 0.6, 0.7, 0.8, 0.9], 0.70, 10.0))
    # better on all 5 cases: exact two-sided Wilcoxon p = 2 / 2^5 = 0.0625
    b = write(tmp_path, "ssl", metrics([0.6, 0.65, 0.75, 0.9, 0.95], 0.77, 6.5))
    # worse on 2 of 5, better on 3
    c = write(tmp_path, "mixed", metrics([0.4, 0.7, 0.6, 0.85, 0.95], 0.70, 9.0))
    out = tmp_path / "table.md"
    assert compare.main([a, b, c, "--output_file", str(out)]) == 0
    table = out.read_text(encoding="utf-8")
    assert table == capsys.readouterr().out.rstrip("\n") + "\n"
    assert "| 1 (organ) | 70.00 | 10.00 | 77.00 | 6.50 | 70.00 | 9.00 |" in table
    assert "- ssl vs base: mean Dice +7.00 points; higher on 5 of 5 cases; paired Wilcoxon signed-rank p = 0.0625." \
        in table
    assert "- mixed vs base: mean Dice +0.00 points; higher on 3 of 5 cases;" in table


def test_user_errors_name_the_problem(tmp_path, capsys):
    a = write(tmp_path, "base", metrics([0.5, 0.6], 0.55, 1.0))
    other_cases = metrics([0.5, 0.6], 0.55, 1.0)
    other_cases["cases"][1]["case"] = "x"
    for argv, words in (([a], "at least two"), ([a, str(tmp_path / "base.json")], "NAME=path"),
                        ([a, "b=" + str(tmp_path / "missing.json")], "missing.json"),
                        ([a, write(tmp_path, "other", other_cases)], "different cases")):
        with pytest.raises(SystemExit) as e:
            compare.main(argv)
        assert e.value.code == 2
        assert words in capsys.readouterr().err
