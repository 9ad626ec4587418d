"""The offline self-training row of scripts/benchmark_ssl.py: the recipe gets the same total iterations as every
other row, its labelled-only model included, and that model is its own (not the labelled-only row's); a run cut off
in the self-training stage continues it."""
import json

from conftest import DATASET_ID, DATASET_NAME
from test_benchmarks import CPU_ARGS, listing, run_script


def test_self_training_row_counts_the_labelled_model(synthetic_nnunet, tmp_path):
    root, env = synthetic_nnunet["root"], synthetic_nnunet["env"]
    results_before = listing(root / "results")
    out, records = tmp_path / "bench", tmp_path / "records"
    args = ["-d", DATASET_ID, *CPU_ARGS, "--budgets", 2, "--trainers", "nnUNetTrainerSelfTraining", "--no_full",
            "--no_baseline", "--epochs", 2, "--iterations_per_epoch", 1, "--val_iterations_per_epoch", 1, "--num_val", 2,
            "--disable_tta", "-o", out, "--record", records]
    run_script("benchmark_ssl.py", args, env)
    record = json.loads((records / "budget_2" / "nnUNetTrainerSelfTraining__seed0.json").read_text(encoding="utf-8"))
    assert record["status"] == "ok" and record["iterations"] == 2
    stages = record["self_training"]["stages"]
    assert [(s["stage"], s["iterations"]) for s in stages] == [("labelled-only", 1), ("pseudo", 1)]
    assert record["self_training"]["total_iterations"] == record["iterations"]
    seed_dir = out / "budget_2" / "seed_0"
    labeled = seed_dir / "self_training_labeled_only" / DATASET_NAME / "nnUNetTrainer__nnUNetPlans__2d" / "fold_0"
    assert (labeled / "checkpoint_final.pth").is_file()
    # the labelled-only row's model folder is not used
    assert not (seed_dir / "nnUNet_results" / DATASET_NAME / "nnUNetTrainer__nnUNetPlans__2d").exists()
    final = seed_dir / "nnUNet_results" / DATASET_NAME / "nnUNetTrainerSelfTraining__nnUNetPlans__2d" / "fold_0"
    assert (final / "checkpoint_final.pth").is_file()
    assert listing(root / "results") == results_before

    # a run cut off in the self-training stage continues it with nnUNetv2_ssl_self_train --c (here cut off right after
    # its last epoch's checkpoint: checkpoint_final.pth moved back to checkpoint_latest.pth); the labelled-only model
    # and the pseudo-labels are not made again
    pseudo = out / "budget_2" / "nnUNet_preprocessed" / DATASET_NAME / "nnUNetPlans_2d_pseudolabels_fold_0"
    made = {str(p): p.stat().st_mtime_ns for p in [labeled / "checkpoint_final.pth", *pseudo.rglob("*")]}
    (final / "checkpoint_final.pth").rename(final / "checkpoint_latest.pth")
    proc = run_script("benchmark_ssl.py", args, env)
    assert "continuing the cut-off self-training run" in proc.stdout
    assert "--c: continuing the self-training round 1" in proc.stdout
    assert (final / "checkpoint_final.pth").is_file() and not (final / "checkpoint_latest.pth").exists()
    assert {str(p): p.stat().st_mtime_ns for p in [labeled / "checkpoint_final.pth", *pseudo.rglob("*")]} == made
    record = json.loads((records / "budget_2" / "nnUNetTrainerSelfTraining__seed0.json").read_text(encoding="utf-8"))
    assert record["status"] == "ok" and record["self_training"]["stages"] == stages

    # a share that is not a whole number of epochs is refused before any work
    odd = [a for a in args] + ["--self_training_labeled_share", 0.3]
    odd[odd.index(out)] = tmp_path / "bench_odd"
    proc = run_script("benchmark_ssl.py", odd, env, expect_ok=False)
    assert proc.returncode == 2 and "--self_training_labeled_share" in proc.stderr
    assert not (tmp_path / "bench_odd").exists()
