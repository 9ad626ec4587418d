"""Shared fixtures: one tiny synthetic nnU-Net dataset, planned and preprocessed once per test session.

End-to-end tests call the real ``nnUNetv2_*`` commands in subprocesses with CPU-friendly settings
(``-device cpu``, ``nnUNet_compile=f``, ``nnUNet_n_proc_DA=0`` for training and prediction only).
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATASET_ID = 990
DATASET_NAME = "Dataset990_SyntheticSSL"
# test-only trainer variants (crash and resume-record hooks), found by nnU-Net through nnUNet_extTrainer
TEST_TRAINERS = REPO / "tests" / "trainers"


# the longest test files (several nnU-Net processes each), started first so that parallel workers
# (scripts/run_tests.sh: one file per worker) finish together; the rest keep pytest's order
LONGEST_FIRST = ("test_ddp.py", "test_cdr_e2e.py", "test_boclis_e2e.py", "test_ugpl_e2e.py", "test_mean_teacher_e2e.py",
                 "test_crln_e2e.py", "test_self_training_e2e.py", "test_benchmark_self_training.py",
                 "test_benchmarks.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: same order in every worker


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread():
    """Unit tests use tiny tensors, where a second intra-op thread only adds overhead (nnU-Net subprocesses
    started by the end-to-end tests set their own thread count)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_script(relative_path: str):
    """Import a script of the repository (e.g. dataset_conversion/*.py) by path."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_checkpoint_file(path):
    import torch
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_nested_equal(a, b, where=""):
    """Nested dicts/lists of tensors and plain values are equal (tensors bit-exactly)."""
    import torch
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_nested_equal(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_nested_equal(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def assert_valid_predictions(prediction_folder: Path, synthetic_nnunet, labels=(0, 1, 2)):
    """One segmentation per test image, with the image's size and only known labels."""
    import numpy as np
    import SimpleITK as sitk
    images = sorted((synthetic_nnunet["root"] / "raw" / DATASET_NAME / "imagesTs").glob("*_0000.nii.gz"))
    assert images
    for img in images:
        seg = sitk.ReadImage(str(Path(prediction_folder) / img.name.replace("_0000.nii.gz", ".nii.gz")))
        assert seg.GetSize() == sitk.ReadImage(str(img)).GetSize()
        assert set(np.unique(sitk.GetArrayFromImage(seg)).tolist()) <= set(labels)


def run_cli(args, env, timeout=900, expect_ok=True):
    """Run a console script from this environment; on failure show its output in the assertion message."""
    cmd = [str(BIN / args[0])] + [str(a) for a in args[1:]]
    proc = subprocess.run(cmd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout)
    if expect_ok:
        assert proc.returncode == 0, (f"{' '.join(cmd)} failed ({proc.returncode})\n--- stdout\n"
                                      f"{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def make_env(root: Path, training: bool) -> dict:
    from nnunet_ssl.cli import ext_trainer_value
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_compile="f", nnUNet_def_n_proc="1",
               nnUNet_extTrainer=ext_trainer_value(str(TEST_TRAINERS)), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    if training:
        # 0 workers is what CPU tests want, but nnUNetv2_plan_and_preprocess fails with it
        env["nnUNet_n_proc_DA"] = "0"
    return env


@pytest.fixture(scope="session")
def synthetic_nnunet(tmp_path_factory):
    """Dataset990: 6 labelled 32^3 cases (split: 2 labelled, 2 hidden-label, 2 validation), 3 imagesUnlabeled
    cases with hidden reference masks, 2 test cases; planned for 2d and 3d_fullres (then a quarter of the
    planned features, ``shrink_network``); unlabelled cases preprocessed; label-budget split written.
    Returns {'root', 'env' (for training/prediction), 'plan_env'}."""
    root = tmp_path_factory.mktemp("nnunet")
    for d in ("raw", "preprocessed", "results"):
        (root / d).mkdir()
    gen = load_script("dataset_conversion/generate_synthetic_dataset.py")
    gen.generate_synthetic_dataset(str(root / "raw"), dataset_id=DATASET_ID, name="SyntheticSSL", num_labeled=6,
                                   num_unlabeled=3, num_test=2, shape=(32, 32, 32), seed=0)
    plan_env = make_env(root, training=False)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "2d", "3d_fullres", "-np", "1",
             "--verify_dataset_integrity"], plan_env)
    run_cli(["nnUNetv2_ssl_preprocess_unlabeled", "-d", DATASET_ID, "-c", "2d", "3d_fullres", "-np", "1"], plan_env)
    run_cli(["nnUNetv2_ssl_split", "-d", DATASET_ID, "--labeled", "2", "--num_val", "2", "--folds", "1"], plan_env)
    shrink_network(root / "preprocessed" / DATASET_NAME)
    return {"root": root, "env": make_env(root, training=True), "plan_env": plan_env}


def shrink_network(preprocessed: Path, divisor: int = 4) -> None:
    """Divide the features per stage of every configuration's U-Net in ``nnUNetPlans.json`` (8-64 instead of 32-256
    at 32^3; plans files are meant to be edited so). Stages, kernels and patch stay as planned, so every code path is
    the same; convolutions cost about divisor^2 less CPU time, which is most of an end-to-end test's time."""
    import json
    plans_file = preprocessed / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    for configuration in plans["configurations"].values():
        arch = configuration.get("architecture", {}).get("arch_kwargs", {})
        if "features_per_stage" in arch:
            arch["features_per_stage"] = [max(1, f // divisor) for f in arch["features_per_stage"]]
    plans_file.write_text(json.dumps(plans, indent=1))


def private_copy(synthetic_nnunet, root: Path) -> Path:
    """The session's planned and preprocessed synthetic dataset copied under ``root`` (raw/, preprocessed/, an empty
    results/), for tests that change it."""
    import shutil
    for d in ("raw", "preprocessed"):
        shutil.copytree(synthetic_nnunet["root"] / d / DATASET_NAME, root / d / DATASET_NAME)
    (root / "results").mkdir()
    return root


def train_until_crash(synthetic_nnunet, trainer: str, configuration: str = "3d_fullres"):
    """Stock nnUNetv2_train of a ``_tinyResume`` test trainer, cut off by its simulated crash right after epoch 0's
    checkpoint_latest (3 iterations). Returns (fold folder, that checkpoint) for the test's ``--c`` half."""
    fold = synthetic_nnunet["root"] / "results" / DATASET_NAME / f"{trainer}__nnUNetPlans__{configuration}" / "fold_0"
    crash_env = dict(synthetic_nnunet["env"], NNUNET_SSL_TEST_CRASH_AFTER_EPOCH="0")
    proc = run_cli(["nnUNetv2_train", DATASET_ID, configuration, "0", "-tr", trainer, "-device", "cpu"], crash_env,
                   expect_ok=False)
    assert proc.returncode != 0 and "simulated crash" in proc.stderr, proc.stderr[-3000:]
    latest = load_checkpoint_file(fold / "checkpoint_latest.pth")
    assert latest["current_epoch"] == 1 and latest["ssl_step"] == 3
    return fold, latest


def train_predict(synthetic_nnunet, trainer: str, configuration: str = "3d_fullres", extra_train_args=(),
                  env_overrides=None):
    """Train a tiny trainer with stock nnUNetv2_train, then predict the test images with stock nnUNetv2_predict.

    Returns (fold folder, prediction folder)."""
    env, root = dict(synthetic_nnunet["env"]), synthetic_nnunet["root"]
    env.update({k: str(v) for k, v in (env_overrides or {}).items()})
    run_cli(["nnUNetv2_train", DATASET_ID, configuration, "0", "-tr", trainer, "-device", "cpu",
             *extra_train_args], env)
    fold = root / "results" / DATASET_NAME / f"{trainer}__nnUNetPlans__{configuration}" / "fold_0"
    out = root / "predictions" / f"{trainer}_{configuration}"
    run_cli(["nnUNetv2_predict", "-i", root / "raw" / DATASET_NAME / "imagesTs", "-o", out, "-d", DATASET_ID,
             "-c", configuration, "-tr", trainer, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
             "--disable_progress_bar", "--disable_tta"], env)  # TTA: 8x the CPU time, no new code path
    return fold, out
