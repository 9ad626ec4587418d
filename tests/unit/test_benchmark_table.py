"""scripts/benchmark_table.py: the accuracy table rebuilt from committed run records."""
import json

import pytest

from conftest import load_script

table_script = load_script("scripts/benchmark_table.py")


def record(trainer, seed, dice, budget, pseudo=None):
    return {"trainer": trainer, "budget": budget, "seed": seed, "status": "ok", "iterations": 2000,
            "commit": "abc1234", "heldout_source": "validation cases of the split",
            "machine": {"device_name": "CPU (x86_64, 2 cores)", "date": "2026-12-01T05:00:00+00:00"},
            "settings": {"fold": 0, "seed": 0, "dataset_name": "Dataset101_LA", "configuration": "3d_fullres",
                         "plans": "nnUNetPlans_3p5", "disable_tta": False},
            "metrics": {"dice": {"mean": dice, "std": 0.05}, "jaccard": {"mean": dice - 0.1, "std": 0.05},
                        "hd95_voxel": {"mean": 10.0, "std": 1.0}, "asd_voxel": {"mean": 2.0, "std": 1.0},
                        "per_case_dice": {"a": dice, "b": dice}},
            "diagnostics": {} if pseudo is None else {"pseudo_label_dice": [0.5, float("nan"), pseudo]}}


@pytest.fixture
def records(tmp_path):
    runs = [("nnUNetTrainer", 0, 0.84, "8", None), ("nnUNetTrainer", 1, 0.845, "8", None),
            ("nnUNetTrainerMeanTeacher", 0, 0.86, "8", 0.8), ("nnUNetTrainerCRLN", 0, 0.842, "8", 0.7),
            ("nnUNetTrainer", 0, 0.875, "all", None)]
    for trainer, seed, dice, tag, pseudo in runs:
        folder = tmp_path / f"budget_{tag}"
        folder.mkdir(exist_ok=True)
        (folder / f"{trainer}__seed{seed}.json").write_text(json.dumps(record(trainer, seed, dice, tag, pseudo)))
    return tmp_path


def row(table, trainer, budget):
    return next(l for l in table.splitlines() if l.startswith(f"| {trainer} | {budget} |"))


def test_rows_seed_spread_and_gap(records):
    table = table_script.markdown_table(table_script.load_records(str(records)))
    base = row(table, "nnUNetTrainer", "8")
    assert "| 0, 1 | 84.25 (84.00 / 84.50) |" in base and "seed spread 0.50" in base
    # +1.75 beyond the 0.50 spread; the gap to full supervision is 87.5 - 84.25 = 3.25 -> 54 %
    mt = row(table, "nnUNetTrainerMeanTeacher", "8")
    assert "+1.75 (beyond seed spread 0.50); 54 % of the gap" in mt and "| 80.0 |" in mt
    crln = row(table, "nnUNetTrainerCRLN", "8")
    assert "-0.05 (within seed spread 0.50)" in crln
    assert "+3.25 (the gap)" in row(table, "nnUNetTrainer", "all")
    assert "| 2000 | abc1234 | 2026-12-01 | CPU (x86_64, 2 cores) |" in mt
    # labelled-only rows first, then the methods alphabetically, the fully supervised row last
    order = [l.split(" | ")[0][2:] for l in table.splitlines() if l.startswith("| nnUNet")]
    assert order == ["nnUNetTrainer", "nnUNetTrainerCRLN", "nnUNetTrainerMeanTeacher", "nnUNetTrainer"]


def test_full_supervision_row_gives_the_gap_of_every_budget(records):
    folder = records / "budget_4"
    folder.mkdir()
    for seed, dice in ((0, 0.79), (1, 0.80)):
        (folder / f"nnUNetTrainer__seed{seed}.json").write_text(json.dumps(record("nnUNetTrainer", seed, dice, "4")))
    table = table_script.markdown_table(table_script.load_records(str(records)))
    # 87.5 - 79.5 = 8.00 over 4 labelled, 87.5 - 84.25 = 3.25 over 8 labelled, in budget order
    assert "| the gap: +8.00 over 4 labelled, +3.25 over 8 labelled |" in row(table, "nnUNetTrainer", "all")


def test_readme_markers_are_replaced_and_missing_markers_refused(records, tmp_path):
    readme = tmp_path / "README.md"
    name = records.name
    readme.write_text(f"intro\n<!-- benchmark-table:{name}:start -->\nOLD TABLE\n<!-- benchmark-table:{name}:end -->\nend\n")
    assert table_script.main([str(records), "--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert "OLD TABLE" not in text and text.startswith("intro\n") and text.endswith("end\n")
    assert "| nnUNetTrainerMeanTeacher | 8 |" in text
    readme.write_text("no markers\n")
    assert table_script.main([str(records), "--readme", str(readme)]) == 2
    assert readme.read_text(encoding="utf-8") == "no markers\n"
