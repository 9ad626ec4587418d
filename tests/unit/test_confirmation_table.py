"""The confirmation table's pooling over folds, Δ, gap and paired test, on hand-made records."""
import json
import os

import pytest

from conftest import load_script

ct = load_script("scripts/confirmation_table.py")


def _record(folder, fold, trainer, per_case, budget="4", hd95=10.0, seed=0):
    """Fold 0's records sit in DIR/budget_B/, the others' in DIR/fold_F/budget_B/, as benchmark_la.sh writes them."""
    path = os.path.join(folder, *([f"fold_{fold}"] if fold else []), f"budget_{budget}")
    os.makedirs(path, exist_ok=True)
    record = {"trainer": trainer, "seed": seed, "status": "ok", "commit": "abc1234", "settings": {"fold": fold},
              "metrics": {"dice": {"mean": sum(per_case.values()) / len(per_case)}, "hd95_voxel": {"mean": hd95},
                          "per_case_dice": per_case}}
    with open(os.path.join(path, f"{trainer}__seed{seed}.json"), "w") as f:
        json.dump(record, f)


def test_pooled_rows_hand_values(tmp_path):
    d = str(tmp_path)
    # labelled-only 0.70 on every case, full supervision 0.90, the method +0.05/+0.10 on fold 1, +0.05/+0.04 on fold 2
    _record(d, 1, "nnUNetTrainer", {"a": 0.7, "b": 0.7}, hd95=12)
    _record(d, 2, "nnUNetTrainer", {"c": 0.7, "d": 0.7}, hd95=8)
    _record(d, 1, "nnUNetTrainer", {"a": 0.9, "b": 0.9}, budget="all")
    _record(d, 2, "nnUNetTrainer", {"c": 0.9, "d": 0.9}, budget="all")
    _record(d, 1, "M", {"a": 0.75, "b": 0.80})
    _record(d, 2, "M", {"c": 0.75, "d": 0.74})
    _record(d, 1, "Half", {"a": 0.8, "b": 0.8})  # fold 2 not finished yet
    by_fold = {f: ct.load_fold_records(d, f, "4", 0) for f in (1, 2)}
    rows = {r["trainer"]: r for r in ct.confirmation_rows(by_fold, ["M", "Half"])}
    base, m = rows["nnUNetTrainer"], rows["M"]
    assert base["dice"] == pytest.approx(70.0) and base["hd95"] == pytest.approx(10.0)
    # pooled mean of (0.75, 0.80, 0.75, 0.74) = 0.76: Δ +6.00 of a 20-point gap = 30 %
    assert m["dice"] == pytest.approx(76.0) and m["delta"] == pytest.approx(6.0)
    assert m["gap_closed"] == pytest.approx(0.30)
    assert m["per_fold"] == {1: pytest.approx(77.5), 2: pytest.approx(74.5)}
    # four positive differences: exact two-sided Wilcoxon p = 2 / 2^4 = 0.125
    assert (m["better"], m["n"]) == (4, 4) and m["p"] == pytest.approx(0.125)
    assert "dice" not in rows["Half"] and rows["Half"]["per_fold"][2] is None
    table = ct.markdown(list(rows.values()), [1, 2])
    assert "| M | 77.50 | 74.50 | 76.00 |" in table and "| pending |" in table


def test_overlapping_blocks_and_wrong_fold_are_refused(tmp_path):
    d = str(tmp_path)
    _record(d, 1, "nnUNetTrainer", {"a": 0.7})
    _record(d, 2, "nnUNetTrainer", {"a": 0.7})
    by_fold = {f: ct.load_fold_records(d, f, "4", 0) for f in (1, 2)}
    with pytest.raises(ValueError, match="held out in two folds"):
        ct.confirmation_rows(by_fold, [])
    _record(d, 3, "nnUNetTrainer", {"x": 0.7})
    path = os.path.join(d, "fold_3", "budget_4", "nnUNetTrainer__seed0.json")
    record = json.load(open(path))
    record["settings"]["fold"] = 1
    json.dump(record, open(path, "w"))
    with pytest.raises(ValueError, match="fold 1, not 3"):
        ct.load_fold_records(d, 3, "4", 0)


def test_default_decisions_follow_the_fixed_rules(tmp_path):
    d = str(tmp_path)
    cps, ugpl = ct.DECISION_RULES
    load = lambda: {f: ct.load_fold_records(d, f, "4", 0) for f in (0, 1, 2)}
    # CPS weight: 0.05 higher on fold 1, fold 2 not run yet -> pending
    _record(d, 1, "nnUNetTrainerCRLN", {"a": 0.85})
    _record(d, 1, "nnUNetTrainerCRLN_paperCPSWeight", {"a": 0.84})
    _record(d, 2, "nnUNetTrainerCRLN", {"c": 0.80})
    line = ct.decision(load(), cps)
    assert "fold 1 85.00 vs 84.00; fold 2 pending" in line and line.endswith("**pending**")
    # a tie on fold 2 is not "higher": the paper's 0.5 becomes the default
    _record(d, 2, "nnUNetTrainerCRLN_paperCPSWeight", {"c": 0.80})
    assert ct.decision(load(), cps).endswith("**the default becomes the paper's 0.5 (decided by fold 2)**")
    _record(d, 2, "nnUNetTrainerCRLN_paperCPSWeight", {"c": 0.79})
    assert ct.decision(load(), cps).endswith("**0.05 stays the default**")
    # UGPL: the ramp must win on fold 0 (read from DIR/budget_4) too; losing there decides it before folds 1 and 2
    _record(d, 0, "nnUNetTrainerUGPL_sigmoidRamp", {"x": 0.83})
    assert ct.decision(load(), ugpl).endswith("**pending**")
    _record(d, 0, "nnUNetTrainerUGPL", {"x": 0.84})
    line = ct.decision(load(), ugpl)
    assert "fold 0 83.00 vs 84.00; fold 1 pending; fold 2 pending" in line
    assert line.endswith("**the paper's schedule stays the default (decided by fold 0)**")
    _record(d, 0, "nnUNetTrainerUGPL", {"x": 0.82})
    for f, case in ((1, "a"), (2, "c")):
        _record(d, f, "nnUNetTrainerUGPL_sigmoidRamp", {case: 0.81})
        _record(d, f, "nnUNetTrainerUGPL", {case: 0.80})
    assert ct.decision(load(), ugpl).endswith("**the sigmoid ramps (`_sigmoidRamp`) become the default**")
