"""scripts/gpu_check.sh / gpu_check.py: the CPU smoke run through the shell entry point, and the report logic.

The smoke run is the GPU check's own code on tiny plans derived from the committed LA plans (1 iteration per
phase, compile off, CPU GradScaler); a deliberately broken trainer, found through nnU-Net's ``nnUNet_extTrainer``,
checks that one failure is recorded and the others still run and are written. Its multi-GPU step is skipped on a
machine with fewer than 2 GPUs, with the reason in the report.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, load_script

gc = load_script("scripts/gpu_check.py")

BROKEN = "nnUNetTrainerGPUCheckBroken"
BROKEN_MODULE = f'''
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class {BROKEN}(nnUNetTrainer):
    def train_step(self, batch):
        raise RuntimeError("deliberately broken for the gpu_check test")
'''
SMOKE_TRAINERS = ["nnUNetTrainer", BROKEN, "nnUNetTrainerUGPL"]
# one variant of another method than the timed ones (CRLN: EMA teacher, DIM off, its own rectifier optimiser)
SMOKE_VARIANTS = ["nnUNetTrainerCRLN_noDIM"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    ext = tmp / "ext_trainers"
    ext.mkdir()
    (ext / "broken_trainer.py").write_text(BROKEN_MODULE)
    scratch = tmp / "scratch"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(PYTHON=sys.executable, nnUNet_compile="f", nnUNet_extTrainer=str(ext), TMPDIR=str(scratch))
    out = tmp / "out"
    start = time.time()
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--smoke", "-o", str(out), "--trainers",
                           *SMOKE_TRAINERS, "--variants", *SMOKE_VARIANTS, "--steps", "off", "check", "ddp"], env=env, capture_output=True, encoding="utf-8", errors="replace",
                          timeout=600)
    seconds = time.time() - start
    print(f"gpu_check.sh --smoke: {seconds:.1f} s")
    return {"proc": proc, "out": out, "scratch": scratch, "seconds": seconds}


def test_smoke_run_records_every_trainer_and_survives_a_failure(smoke_run):
    proc, out = smoke_run["proc"], smoke_run["out"]
    log = f"--- stdout\n{proc.stdout[-5000:]}\n--- stderr\n{proc.stderr[-5000:]}"
    assert proc.returncode == 1, log  # the broken trainer makes the run report failure ...
    report = json.loads((out / "gpu_check.json").read_text(encoding="utf-8"))  # ... after writing everything
    assert report["finished"] is True and report["settings"]["smoke"] is True
    assert "[gpu_check.sh] total elapsed" in proc.stdout and "[gpu_check] " in proc.stdout
    assert report["elapsed_s"] > 0
    s = report["settings"]
    assert s["plans"] == os.path.join("benchmarks", "gpu", "Dataset101_LA_nnUNetPlans.json")
    assert s["timing_patch"] == [32, 32, 32] and s["batch_size"] == 2
    assert s["steps"] == ["off", "check", "ddp"] and s["compile_modes"] == ["off"]
    assert report["machine"]["device"] == "cpu"
    # the multi-GPU step needs 2 GPUs: skipped, saying why and what covers the trainers' DDP code instead
    assert report["ddp"] == {"skipped": gc.ddp_skip_reason(0)}
    assert "multi-GPU smoke skipped: needs 2 GPUs, this machine has 0" in proc.stdout

    results = report["timing"]["off"]
    assert list(results) == SMOKE_TRAINERS
    broken = results.pop(BROKEN)
    assert broken["status"] == "failed" and "deliberately broken for the gpu_check test" in broken["reason"]
    base = results["nnUNetTrainer"]
    for name, r in results.items():
        assert r["status"] == "ok", (name, r)
        # three train steps (with loading, without, the audited one), through the AMP optimiser path
        assert r["train_steps"] == 3 and r["losses_finite"] is True
        assert r["grad_scaler"] == "torch.amp.grad_scaler.GradScaler"
        for phase in gc.PHASES:
            ms = r[phase]["ms_per_iter_mean"]
            assert isinstance(ms, float) and ms > 0 and r[phase]["iterations"] == 1
            assert r[phase]["ratio_to_nnUNetTrainer"] == pytest.approx(ms / base[phase]["ms_per_iter_mean"])
    # floors: units of nnUNetTrainer's iteration, r measured in UGPL's own run (residual-encoder second network)
    cost = results["nnUNetTrainerUGPL"]["second_network_cost"]
    assert cost["second_network"] == "other_family" and cost["r"] == pytest.approx(
        cost["ms_fwd_bwd_b"] / cost["ms_fwd_bwd_a"]) and cost["r"] > 0
    expected_units = {"nnUNetTrainer": 1.0, "nnUNetTrainerUGPL": 2 + 2 * cost["r"]}
    for name, units in expected_units.items():
        r = results[name]
        assert r["floor"]["units"] == pytest.approx(units)
        for phase in gc.PHASES:
            assert r[phase]["ratio_to_floor"] == pytest.approx(
                r[phase]["ms_per_iter_mean"] / (units * base[phase]["ms_per_iter_mean"]))
        assert r["goals"]["vs_floor"] == (r["without_data_loading"]["ratio_to_floor"] <= 1.15)
        assert r["peak_gpu_memory_gib"] is None and r["peak_gpu_memory_ratio_to_nnUNetTrainer"] is None
    assert results["nnUNetTrainerUGPL"]["floor"]["formula"] == "2 + 2r"

    check = report["ablation_check"]
    assert list(check) == SMOKE_VARIANTS
    for name, r in check.items():
        assert r["status"] == "ok" and r["train_steps"] == 3 and r["losses_finite"] is True, (name, r)

    md = (out / "gpu_check.md").read_text(encoding="utf-8")
    assert "CPU smoke run" in md and "## Speed, torch.compile off" in md and "## Ablation variants" in md
    assert f"- {BROKEN}: failed (RuntimeError: deliberately broken" in md
    ugpl = results["nnUNetTrainerUGPL"]
    ugpl_floor = next(line for line in md.splitlines() if line.startswith("| nnUNetTrainerUGPL | 2 + 2r = "))
    assert f"= {ugpl['floor']['units']:.2f} | {cost['r']:.2f} | " in ugpl_floor
    assert f"{ugpl['without_data_loading']['ratio_to_floor']:.2f}×" in ugpl_floor
    for name in SMOKE_VARIANTS:
        assert f"| {name} | ok | 3 | yes |" in md
    assert "## Multi-GPU smoke: nnUNetv2_train -num_gpus 2" in md and f"Skipped: {gc.ddp_skip_reason(0)}." in md
    # the temporary work folder (raw, preprocessed, results) is gone
    assert [p for p in smoke_run["scratch"].iterdir() if p.name.startswith("nnunet_ssl_gpu_check_")] == []


def test_ablation_variants_and_floors():
    variants = gc.ablation_variants()
    assert set(gc.COST_VARIANTS) <= set(variants)
    assert all(v.startswith("nnUNetTrainer") and "_" in v for v in variants)
    assert not [v for v in variants if any(w in v.lower() for w in ("tiny", "test", "demo"))]
    assert "nnUNetTrainerCRLN_noDIM" in variants and "nnUNetTrainerMeanTeacher_demo" not in variants
    assert set(gc.ablation_variants(exclude=gc.TIMED_TRAINERS)) == set(variants) - set(gc.TIMED_TRAINERS)
    assert set(gc.FLOORS) == set(gc.TIMED_TRAINERS)
    units = {name: f(1.5) for name, (_, _, f) in gc.FLOORS.items()}
    # CDR's default runs two passes per network (4 + 4r), its deep-to-shallow variant one (2 + 2r), as UGPL
    assert units["nnUNetTrainerCDR"] == 10 and units["nnUNetTrainerUGPL"] == 5
    assert units["nnUNetTrainerCDR_deepToShallowIntra"] == 5 and units["nnUNetTrainerCDR_sameArch"] == 10


def _row(ms_with, ms_without, mem, r=None, second="other_family"):
    row = {"status": "ok", "with_data_loading": {"ms_per_iter_mean": ms_with},
           "without_data_loading": {"ms_per_iter_mean": ms_without}, "peak_gpu_memory_gib": mem}
    if r is not None:
        row["second_network_cost"] = {"r": r, "second_network": second}
    return row


def test_floor_ratios_memory_and_goals():
    results = {"nnUNetTrainer": _row(110, 100, 10.0), "nnUNetTrainerMeanTeacher": _row(300, 240, 23.0),
               "nnUNetTrainerUGPL": _row(700, 600, 40.0, r=1.5),
               "nnUNetTrainerUGPL_sameArch": _row(450, 420, 30.0, r=0.9, second="same"),
               "nnUNetTrainerCDR": {"status": "failed", "reason": "RuntimeError: x"}}
    gc.add_floor_ratios(results)
    mt, ugpl, same = (results[k] for k in ("nnUNetTrainerMeanTeacher", "nnUNetTrainerUGPL",
                                           "nnUNetTrainerUGPL_sameArch"))
    assert mt["without_data_loading"]["ratio_to_nnUNetTrainer"] == pytest.approx(2.4)
    assert mt["without_data_loading"]["ratio_to_floor"] == pytest.approx(240 / (100 * 7 / 3))
    assert mt["with_data_loading"]["ratio_to_floor"] == pytest.approx(300 / (110 * 7 / 3))
    assert mt["peak_gpu_memory_ratio_to_nnUNetTrainer"] == pytest.approx(2.3)
    assert mt["goals"] == {"vs_nnUNetTrainer": True, "vs_floor": True, "memory": False}
    assert ugpl["floor"] == {"formula": "2 + 2r", "r": 1.5, "units": 5.0}
    assert ugpl["without_data_loading"]["ratio_to_floor"] == pytest.approx(1.2) and ugpl["goals"] == {
        "vs_floor": False}
    assert same["floor"]["r"] == 1.0 and same["floor"]["units"] == 4.0  # same architecture: r = 1 by definition
    assert results["nnUNetTrainerCDR"] == {"status": "failed", "reason": "RuntimeError: x"}
    table = gc.floor_table(results)
    assert "| nnUNetTrainerUGPL | 2 + 2r = 5.00 | 1.50 | 1.27× | 1.20× | 40.00 | 4.00× | ✗ vs_floor |" in table
    assert "nnUNetTrainerCDR" not in table


def test_time_budget_skips_and_stops():
    skipped = gc.run_item("nnUNetTrainer", None, None, (None, None), deadline=time.time() + 5, min_left_s=60)
    assert skipped["status"] == "skipped (time budget)"
    start = time.time()
    with pytest.raises(gc.TimeBudgetExceeded):
        with gc.alarm_at(time.time() + 0.2):
            while time.time() - start < 5:
                time.sleep(0.01)
    assert time.time() - start < 2


def test_derived_configuration_checks_the_patch():
    plans = json.loads((REPO / "benchmarks" / "gpu" / "Dataset101_LA_nnUNetPlans.json").read_text(encoding="utf-8"))
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [96, 128, 192]
    assert plans["configurations"]["3d_fullres"]["batch_size"] == 2
    smoke = gc.derived_configuration(plans, (32, 32, 32), n_stages=4, feature_divisor=4)
    kw = smoke["architecture"]["arch_kwargs"]
    assert smoke["inherits_from"] == "3d_fullres" and kw["n_stages"] == 4
    assert kw["features_per_stage"] == [8, 16, 32, 64]
    assert len(kw["strides"]) == 4 and len(kw["n_conv_per_stage_decoder"]) == 3
    with pytest.raises(ValueError, match="not divisible"):
        gc.derived_configuration(plans, (40, 64, 64))  # 6 stages: the first axis is reduced 16-fold


def test_generator_loads_without_the_installed_package(monkeypatch):
    """Where the checkout is on PYTHONPATH but not installed, the generator comes from its file."""
    monkeypatch.setitem(sys.modules, "nnunet_ssl.dataset_conversion", None)  # import fails as when not installed
    gen = gc.synthetic_generator()
    assert gen.__file__ == str(REPO / "dataset_conversion" / "generate_synthetic_dataset.py")
    assert callable(gen.generate_synthetic_dataset) and gen.SPACING_3D_ZYX


def test_multi_gpu_commands_and_skip():
    assert gc.ddp_skip_reason(2) is None and gc.ddp_skip_reason(8) is None
    reason = gc.ddp_skip_reason(1)
    assert reason.startswith("needs 2 GPUs, this machine has 1") and "tests/integration/test_ddp.py" in reason
    # every method's tiny variant; nnU-Net's own multi-GPU entry point, self-training through its command
    assert [t.replace("nnUNetTrainer", "").replace("_tiny", "") for t in gc.DDP_TRAINERS] == [
        "MeanTeacher", "CRLN", "CDR", "BoCLIS", "UGPL", "SelfTraining"]
    import nnunet_ssl.trainers as trainers
    assert set(gc.DDP_TRAINERS) | {gc.SELF_TRAINING_LABELED} <= set(trainers.__all__)
    assert gc.ddp_command("nnUNetTrainerCRLN_tiny", "3d_check") == [
        "nnUNetv2_train", str(gc.DATASET_ID), "3d_check", "0", "-tr", "nnUNetTrainerCRLN_tiny", "-num_gpus", "2"]
    st = gc.ddp_command("nnUNetTrainerSelfTraining_tiny", "3d_check")
    assert st[0] == "nnUNetv2_ssl_self_train" and st[-2:] == ["-num_gpus", "2"]
    assert st[st.index("--labeled_trainer") + 1] == gc.SELF_TRAINING_LABELED and "--train_labeled" in st
    from nnunet_ssl.self_training.cli import build_parser
    args = build_parser().parse_args(st[1:])  # the command's options are the command's
    assert args.num_gpus == 2 and args.tr == "nnUNetTrainerSelfTraining_tiny" and args.rounds == 1


def test_gpu_check_sh_needs_the_installed_project(tmp_path):
    """Without nnU-Net and the plugin importable, gpu_check.sh stops with an error naming the fix."""
    fake = tmp_path / "python"
    fake.write_text("#!/usr/bin/env bash\nexit 1\n")
    fake.chmod(0o755)
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--smoke", "-o", str(tmp_path / "out")],
                          env=dict(os.environ, PYTHON=str(fake)), capture_output=True, encoding="utf-8", timeout=60)
    assert proc.returncode == 3 and "gpu_check.sh: error: " in proc.stderr and "pip install -e ." in proc.stderr
    assert not (tmp_path / "out").exists()
