"""scripts/benchmark_plot.py: Dice per trainer with every run (seed, fold) from the committed run records."""
import json

import pytest

from conftest import load_script

plot_script = load_script("scripts/benchmark_plot.py")


def write(folder, trainer, seed, dice, budget="4", fold=0):
    folder.mkdir(parents=True, exist_ok=True)
    record = {"trainer": trainer, "budget": budget, "seed": seed, "status": "ok", "settings": {"fold": fold},
              "metrics": {"dice": {"mean": dice, "std": 0.05}}}
    (folder / f"{trainer}__seed{seed}.json").write_text(json.dumps(record))


@pytest.fixture
def records(tmp_path):
    write(tmp_path / "budget_4", "nnUNetTrainer", 0, 0.80)
    write(tmp_path / "budget_4", "nnUNetTrainer", 1, 0.79)
    write(tmp_path / "budget_4", "nnUNetTrainerCRLN", 0, 0.84)
    write(tmp_path / "fold_1" / "budget_4", "nnUNetTrainerCRLN", 0, 0.86, fold=1)  # a confirmation fold
    write(tmp_path / "budget_8", "nnUNetTrainerCRLN", 0, 0.90, budget="8")
    write(tmp_path / "budget_all", "nnUNetTrainer", 0, 0.87, budget="all")
    failed = tmp_path / "budget_4" / "nnUNetTrainerUGPL__seed0.json"
    failed.write_text(json.dumps({"trainer": "nnUNetTrainerUGPL", "status": "failed"}))
    return tmp_path


def test_rows_collect_seeds_and_folds(records):
    rows = [plot_script.parse_row(s, "4") for s in
            ("nnUNetTrainer=labelled-only", "nnUNetTrainerCRLN", "nnUNetTrainerUGPL", "nnUNetTrainer@all=full")]
    data = plot_script.dice_rows(plot_script.load_runs(str(records)), rows)
    assert [d["label"] for d in data] == ["labelled-only", "nnUNetTrainerCRLN", "full"]  # UGPL only failed
    base, crln, full = data
    assert base["runs"] == [(0, 0, 80.0), (0, 1, 79.0)]
    assert base["mean"] == pytest.approx(79.5) and base["spread"] == pytest.approx(1.0)
    # fold 0 and fold 1 of budget 4, not budget 8: mean (84 + 86) / 2, spread 2
    assert crln["runs"] == [(0, 0, pytest.approx(84.0)), (1, 0, pytest.approx(86.0))]
    assert crln["mean"] == pytest.approx(85.0) and crln["spread"] == pytest.approx(2.0)
    assert full["runs"] == [(0, 0, pytest.approx(87.0))] and full["spread"] == 0


def test_parse_row():
    assert plot_script.parse_row("nnUNetTrainer@all=full supervision", "4") == \
        {"trainer": "nnUNetTrainer", "budget": "all", "label": "full supervision"}
    assert plot_script.parse_row("nnUNetTrainerCRLN", 8) == \
        {"trainer": "nnUNetTrainerCRLN", "budget": "8", "label": "nnUNetTrainerCRLN"}
    with pytest.raises(ValueError, match="no trainer name"):
        plot_script.parse_row("=label", "4")


def test_main_writes_png_and_refuses_bad_input(records, tmp_path, capsys):
    out = tmp_path / "dice.png"
    assert plot_script.main([str(records), "--output_file", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "no records for nnUNetTrainerSelfTraining" in capsys.readouterr().err
    # -f: only the chosen folds' runs enter a row (CRLN: fold 0's 84 without fold 1's 86)
    assert plot_script.main([str(records), "--output_file", str(out), "-f", "0", "--rows", "nnUNetTrainerCRLN"]) == 0
    assert "nnUNetTrainerCRLN: 84.00 over 1 run(s), spread 0.00" in capsys.readouterr().out
    assert plot_script.main([str(records), "--output_file", str(out), "-f", "1", "--rows", "nnUNetTrainerCRLN"]) == 0
    assert "nnUNetTrainerCRLN: 86.00 over 1 run(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        plot_script.main([str(records), "--output_file", str(tmp_path / "missing" / "x.png")])
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plot_script.main([str(records), "--output_file", str(tmp_path / "y.png"), "--rows", "nnUNetTrainerMCF"])
    assert "nothing written" in capsys.readouterr().err and not (tmp_path / "y.png").exists()
