"""scripts/benchmark_speed.py and scripts/benchmark_ssl.py at toy scale on the CPU.

These check the mechanics (what is timed, what is trained, written, skipped and left untouched); the numbers of a
CPU run on 32^3 volumes mean nothing. The 2d configuration keeps the runs short; one torch thread avoids threads
spinning against other processes on a shared CPU.
"""
import json
import subprocess
import sys

import pytest
import torch

from conftest import DATASET_ID, DATASET_NAME, REPO

CPU_ARGS = ["-c", "2d", "-device", "cpu", "--threads", "1"]
# trainer -> the only functions allowed to make the host wait for the device inside compute_losses
SYNC_EXPECTATIONS = {"nnUNetTrainerCDR": (), "nnUNetTrainerCRLN": (), "nnUNetTrainerUGPL": (),
                     "nnUNetTrainerBoCLIS": ("centre_regions", "patch_embeddings"), "nnUNetTrainerSelfTraining": ()}


def run_script(script, args, env, expect_ok=True):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), *[str(a) for a in args]], env=env,
                          capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    if expect_ok:
        assert proc.returncode == 0, (f"{script} failed ({proc.returncode})\n--- stdout\n{proc.stdout[-6000:]}\n"
                                      f"--- stderr\n{proc.stderr[-6000:]}")
    return proc


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_benchmark_speed(synthetic_nnunet, tmp_path):
    root = synthetic_nnunet["root"]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = dict(synthetic_nnunet["env"], TMPDIR=str(scratch))  # the temporary nnUNet_results goes here
    results_before = listing(root / "results")
    out = tmp_path / "speed" / "speed.json"
    preprocessed_before = listing(root / "preprocessed")
    proc = run_script("benchmark_speed.py", ["-d", DATASET_ID, *CPU_ARGS, "--trainers", "nnUNetTrainer",
                                             "nnUNetTrainerMeanTeacher", "nnUNetTrainerNotWrittenYet",
                                             *SYNC_EXPECTATIONS, "--iterations", 2, "--warmup", 0,
                                             "--disable_tta", "--output_file", out], env)
    report = json.loads(out.read_text(encoding="utf-8"))
    results = report["results"]
    assert results["nnUNetTrainerNotWrittenYet"]["status"] == "skipped (not importable)"
    assert "skipping nnUNetTrainerNotWrittenYet" in proc.stdout
    base, mt = results["nnUNetTrainer"], results["nnUNetTrainerMeanTeacher"]
    assert base["status"] == mt["status"] == "ok"
    # same plans: same patch and labelled batch; the Mean Teacher also draws an unlabelled batch
    assert base["patch_size"] == mt["patch_size"] == [32, 32] and base["batch_size"] == mt["batch_size"]
    assert base["streams"] == ["dataloader_train"]
    assert mt["streams"] == ["dataloader_train", "dataloader_unlabeled"] and mt["unlabeled_batch_size"] >= 1
    for r in (base, mt):
        for phase in ("with_data_loading", "without_data_loading"):
            assert r[phase]["iterations"] == 2 and r[phase]["ms_per_iter_mean"] > 0
        # single-threaded loaders (nnUNet_n_proc_DA=0) augment inside next(): waiting is measured, and below 100 %
        assert 0 < r["with_data_loading"]["data_wait_share"] < 1
        assert r["peak_gpu_memory_gib"] is None  # CPU
    assert base["with_data_loading"]["ratio_to_nnUNetTrainer"] == pytest.approx(1.0)
    for phase in ("with_data_loading", "without_data_loading"):
        assert mt[phase]["ratio_to_nnUNetTrainer"] == pytest.approx(
            mt[phase]["ms_per_iter_mean"] / base[phase]["ms_per_iter_mean"])
    # host-device syncs in the loss code: none, except BoCLIS's documented two (connected components on the host,
    # selecting the non-empty patches)
    assert base["loss_code_syncs"] == {"audited": "loss", "count": 0, "sites": {}}
    assert mt["loss_code_syncs"] == {"audited": "compute_losses", "count": 0, "sites": {}}
    for name, allowed in SYNC_EXPECTATIONS.items():
        syncs = results[name]["loss_code_syncs"]
        assert results[name]["status"] == "ok" and syncs["audited"] == "compute_losses"
        assert syncs["count"] == sum(syncs["sites"].values())
        assert all(any(site.endswith(f" in {f}") for f in allowed) for site in syncs["sites"]), syncs
        if not allowed:
            assert syncs["count"] == 0
    machine = report["machine"]
    assert machine["device"] == "cpu" and machine["torch"] == torch.__version__ and machine["cpu_count"] >= 1
    assert machine["torch_threads"] == 1 and machine["date"]
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert "cpu_model" in machine  # None where /proc/cpuinfo has no model name
    table = (tmp_path / "speed" / "speed.md").read_text(encoding="utf-8")
    ratio = f"{mt['without_data_loading']['ratio_to_nnUNetTrainer']:.2f}×"
    assert any(line.startswith("| nnUNetTrainerMeanTeacher | ") and ratio in line for line in table.splitlines())
    boclis_line = next(line for line in table.splitlines() if line.startswith("| nnUNetTrainerBoCLIS | "))
    assert boclis_line.endswith(f"| {results['nnUNetTrainerBoCLIS']['loss_code_syncs']['count']} |")
    assert "nnUNetTrainerNotWrittenYet: skipped" in table and "CPU run" in table
    # offline self-training: the stage's iterations (labelled + pseudo-labelled batch) on pseudo-labels of an
    # untrained model, and the one-off pseudo-labelling of the fold's 5 unlabelled cases reported on its own
    st = results["nnUNetTrainerSelfTraining"]
    assert st["streams"] == ["dataloader_train", "dataloader_unlabeled"] and st["patch_size"] == base["patch_size"]
    assert st["batch_size"] == base["batch_size"] == st["unlabeled_batch_size"]  # --pseudo_ratio 1
    labelling = st["pseudo_labelling"]
    assert labelling["cases"] == 5 and labelling["seconds"] > 0 and not labelling["use_mirroring"]
    assert labelling["seconds_per_case"] == pytest.approx(labelling["seconds"] / 5)
    assert "nnUNetTrainerSelfTraining: before training, pseudo-labelling the 5 unlabelled cases" in table
    # nothing written into the user's nnUNet_results or preprocessed folder (no pseudo-labels there), the
    # temporary folders are gone
    assert listing(root / "results") == results_before
    assert listing(root / "preprocessed") == preprocessed_before
    assert [p for p in scratch.iterdir() if p.name.startswith("nnunet_ssl_speed_")] == []


def test_benchmark_ssl_and_resume(synthetic_nnunet, tmp_path):
    root = synthetic_nnunet["root"]
    env = synthetic_nnunet["env"]
    user_split = root / "preprocessed" / DATASET_NAME / "splits_final.json"
    split_before = user_split.read_bytes()
    results_before = listing(root / "results")
    out = tmp_path / "bench"
    records = tmp_path / "records"
    args = ["-d", DATASET_ID, *CPU_ARGS, "--budgets", 2, "--trainers", "nnUNetTrainerMeanTeacher", "--epochs", 1,
            "--iterations_per_epoch", 1, "--val_iterations_per_epoch", 1, "--num_val", 2, "--disable_tta", "-o", out,
            "--record", records]
    proc = run_script("benchmark_ssl.py", args, env)
    assert proc.stdout.count("[benchmark_ssl] training ") == 3
    # progress: run i/N with trainer, budget, fold, seed; an estimate once a run has finished
    progress = [l for l in proc.stdout.splitlines() if l.startswith("[benchmark_ssl] run ")]
    assert [l.split(" (")[0] for l in progress] == [
        "[benchmark_ssl] run 1/3: nnUNetTrainer, budget 2, fold 0, seed 0",
        "[benchmark_ssl] run 2/3: nnUNetTrainerMeanTeacher, budget 2, fold 0, seed 0",
        "[benchmark_ssl] run 3/3: nnUNetTrainer, budget all, fold 0, seed 0"]
    assert "no estimate until a run has finished" in progress[0]
    assert "left for 2 run(s), from the 1 finished" in progress[1] and "left for 1 run(s), from the 2" in progress[2]
    assert "is deprecated, use" not in proc.stderr  # no old spelling left in the calls it makes
    report = json.loads((out / "benchmark_ssl.json").read_text(encoding="utf-8"))
    # splits: same held-out block; 2 labelled + 2 unlabelled, and all 4 labelled for the upper bound
    split2, split_all = report["splits"]["2"], report["splits"]["all"]
    assert split2["val"] == split_all["val"] and len(split2["val"]) == 2
    assert len(split2["train"]) == 2 and len(split2["unlabeled"]) == 2
    assert sorted(split_all["train"]) == sorted(split2["train"] + split2["unlabeled"]) and split_all["unlabeled"] == []
    assert report["heldout"]["source"] == "imagesTs/labelsTs" and report["heldout"]["n_cases"] == 2
    runs = report["runs"]
    assert set(runs) == {"nnUNetTrainer", "nnUNetTrainerMeanTeacher"}
    assert set(runs["nnUNetTrainer"]) == {"2", "all"} and set(runs["nnUNetTrainerMeanTeacher"]) == {"2"}
    table = (out / "benchmark_ssl.md").read_text(encoding="utf-8").splitlines()
    assert table[0].startswith("| Trainer | labelled | seeds | Dice % | Jaccard % | 95HD (voxels) | ASD (voxels) |")
    for trainer, budget in (("nnUNetTrainer", "2"), ("nnUNetTrainer", "all"), ("nnUNetTrainerMeanTeacher", "2")):
        run = runs[trainer][budget]["0"]  # seed 0
        assert run["status"] == "ok" and run["skipped"] is False and run["train_seconds"] > 0
        # the reported metrics are nnUNetv2_ssl_evaluate's of this run's predictions
        seed_dir = out / f"budget_{budget}" / "seed_0"
        metrics = json.loads((seed_dir / trainer / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
        dice = metrics["summary"]["headline"]["dice"]
        assert run["dice"]["mean"] == dice["mean"] and 0 <= dice["mean"] <= 1 and metrics["summary"]["n_cases"] == 2
        assert run["metrics"]["dice"]["mean"] == pytest.approx(metrics["summary"]["mean"]["dice"]["mean"])
        assert set(run["metrics"]["per_case_dice"]) == set(report["heldout"]["cases"])
        label = "all" if budget == "all" else budget
        row = next(l for l in table if l.startswith(f"| {trainer} | {label} | 0 |"))
        assert f"| {100 * run['metrics']['dice']['mean']:.2f} ± " in row
        fold = seed_dir / "nnUNet_results" / DATASET_NAME / f"{trainer}__nnUNetPlans__2d" / "fold_0"
        debug = json.loads((fold / "debug.json").read_text(encoding="utf-8"))
        assert debug["num_epochs"] == "1" and debug["save_every"] == "1"  # schedule set on the instance
        # the committed record: metrics, commit, machine, iterations, seed
        record = json.loads((records / f"budget_{budget}" / f"{trainer}__seed0.json").read_text(encoding="utf-8"))
        assert record["metrics"] == run["metrics"] and record["seed"] == 0 and record["iterations"] == 1
        assert record["machine"]["device"] == "cpu" and record["commit"] and record["split"] == report["splits"][budget]
    mt_record = json.loads((records / "budget_2" / "nnUNetTrainerMeanTeacher__seed0.json").read_text(encoding="utf-8"))
    assert len(mt_record["diagnostics"]["pseudo_label_dice"]) == 1  # one epoch of the per-epoch diagnostics
    assert (out / "benchmark_ssl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the table rebuilt from the records alone equals the run's own table part
    rebuilt = run_script("benchmark_table.py", [records], env).stdout
    assert next(l for l in rebuilt.splitlines() if l.startswith("| nnUNetTrainerMeanTeacher |")) == \
        next(l for l in table if l.startswith("| nnUNetTrainerMeanTeacher |"))
    # the user's split and results are untouched
    assert user_split.read_bytes() == split_before
    assert listing(root / "results") == results_before

    # second invocation: finished runs are skipped; a run without metrics is predicted again, not retrained
    checkpoints = sorted(out.rglob("checkpoint_final.pth"))
    assert len(checkpoints) == 3
    mtimes = {p: p.stat().st_mtime_ns for p in checkpoints}
    (out / "budget_2" / "seed_0" / "nnUNetTrainer" / "evaluation" / "metrics.json").unlink()
    proc = run_script("benchmark_ssl.py", args, env)
    assert "[benchmark_ssl] training " not in proc.stdout
    assert proc.stdout.count("[benchmark_ssl] skipped ") == 2
    assert proc.stdout.count("; finished earlier)") == 2 and "left for" not in proc.stdout
    assert "nnUNetTrainer (budget 2, seed 0): trained earlier, predicting again" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == mtimes
    rerun = json.loads((out / "benchmark_ssl.json").read_text(encoding="utf-8"))["runs"]
    assert rerun["nnUNetTrainerMeanTeacher"]["2"]["0"]["skipped"] is True
    assert rerun["nnUNetTrainer"]["2"]["0"]["dice"]["mean"] == runs["nnUNetTrainer"]["2"]["0"]["dice"]["mean"]

    # other settings in the same output folder are refused before anything runs
    more_epochs = list(args)
    more_epochs[more_epochs.index("--epochs") + 1] = 2
    proc = run_script("benchmark_ssl.py", more_epochs, env, expect_ok=False)
    assert proc.returncode == 2 and "other settings" in proc.stderr and "epochs" in proc.stderr


def test_benchmark_ssl_refuses_bad_settings_before_writing(synthetic_nnunet, tmp_path):
    """--num_val 0 (nothing held out) and a zero budget: exit 2 with the setting named, no traceback, no output folder
    (a folder with settings.json would make the corrected command fail with 'other settings')."""
    env = synthetic_nnunet["env"]
    for bad, named in ((["--budgets", "2", "--num_val", "0"], "--num_val 0"),
                       (["--budgets", "0", "--num_val", "2"], "--budgets")):
        out = tmp_path / f"bench_{named.strip('-').split()[0]}"
        proc = run_script("benchmark_ssl.py", ["-d", DATASET_ID, *CPU_ARGS, *bad, "--trainers", "--epochs", 1,
                                               "-o", out], env, expect_ok=False)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert named in proc.stderr and "Traceback" not in proc.stderr
        assert not out.exists()


def test_loss_gradients_reports_every_term(synthetic_nnunet, tmp_path):
    root, env = synthetic_nnunet["root"], synthetic_nnunet["env"]
    results_before = listing(root / "results")
    out = tmp_path / "gradients.json"
    proc = run_script("loss_gradients.py", ["-d", DATASET_ID, "-c", "2d", "-tr", "nnUNetTrainerCRLN", "--batches", 2,
                                            "--epochs", 3, "--iterations_per_epoch", 5,
                                            "-device", "cpu", "--threads", 1, "--output_file", out], env)
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["step"] == 0
    assert report["schedule"] == {"num_epochs": 3, "num_iterations_per_epoch": 5, "source": "options"}
    assert len(report["loss_weights"]["unsup_weight"]) == 2  # the ramped weights of the measured step
    assert "loss weights at this step: unsup_weight" in proc.stdout
    terms = report["terms"]
    assert set(terms) == {"sup", "dim", "unsup", "cps"}
    for term, m in terms.items():
        assert len(m["loss"]) == len(m["grad_network"]) == len(m["grad_extra"]) == 2, term
        assert all(g >= 0 and g == g for g in m["grad_network"] + m["grad_extra"]), term
    assert all(g > 0 for g in terms["sup"]["grad_network"])
    assert all(g == 0 for g in terms["sup"]["grad_extra"])  # the supervised loss does not reach the CPS head
    assert all(g > 0 for g in terms["cps"]["grad_extra"])
    assert "| cps |" in proc.stdout
    assert listing(root / "results") == results_before  # the trainer's folder went to a temporary nnUNet_results
    missing = run_script("loss_gradients.py", ["-d", DATASET_ID, "-c", "2d", "-tr", "nnUNetTrainerCRLN",
                                               "--checkpoint", tmp_path / "nope.pth"], env, expect_ok=False)
    assert missing.returncode != 0 and "nope.pth does not exist" in missing.stderr
