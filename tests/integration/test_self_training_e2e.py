"""Offline self-training through the real commands, on a copy of the synthetic dataset whose hidden labels are
deleted: ``nnUNetv2_ssl_self_train`` trains the labelled-only model (nnU-Net), pseudo-labels with nnU-Net's
predictor, runs two self-training rounds and a labelled-only fine-tune; stock ``nnUNetv2_predict`` loads the
result. Then the refusals: another model's pseudo-labels, an earlier run, a missing or unfinished labelled-only
model, a fold without unlabelled cases. Last, a 2d run cut off in a self-training stage continues with --c."""
import json
import os
import shutil
import time

import numpy as np
import pytest

from conftest import (DATASET_ID, DATASET_NAME, assert_valid_predictions, load_checkpoint_file, make_env,
                      private_copy, run_cli)

TRAINER = "nnUNetTrainerSelfTraining_tiny"
LABELED = "nnUNetTrainerLabeledOnly_tiny"
DATA = "nnUNetPlans_3d_fullres"
PSEUDO = f"{DATA}_pseudolabels_fold_0"
# CPU time: one iteration per stage, no test-time mirroring (8x the forwards; nnU-Net's code, not ours) and nnU-Net's
# final validation (two spawned worker processes) of the final model only
ARGS = ["-d", DATASET_ID, "-c", "3d_fullres", "-f", "0", "--labeled_trainer", LABELED, "--rounds", "2",
        "--epochs", "1", "--iterations_per_epoch", "1", "--finetune_epochs", "1", "--threshold", "0.6",
        "--weighting", "confidence", "--pseudo_ratio", "0.5", "--disable_tta", "--validate", "last", "-device", "cpu"]


def _delete_hidden_labels(root):
    """Every file that holds a hidden label or a label-derived property: the split's 'unlabeled' cases'
    preprocessed segmentations and properties (class_locations), their ground truth and raw labels, and the
    imagesUnlabeled reference masks (raw and preprocessed). Returns (hidden cases, deleted paths)."""
    pre, raw = root / "preprocessed" / DATASET_NAME, root / "raw" / DATASET_NAME
    hidden = json.loads((pre / "splits_final.json").read_text(encoding="utf-8"))[0]["unlabeled"]
    files = [f for c in hidden for f in [*pre.glob(f"nnUNetPlans_*/{c}_seg.b2nd"), *pre.glob(f"nnUNetPlans_*/{c}.pkl"),
                                         pre / "gt_segmentations" / f"{c}.nii.gz", raw / "labelsTr" / f"{c}.nii.gz"]]
    files += [*pre.glob("nnUNetPlans_*_unlabeled/*_seg.b2nd"), *pre.glob("nnUNetPlans_*_unlabeled/*.pkl"),
              *(raw / "labelsUnlabeled").iterdir()]
    for f in files:
        f.unlink()
    return hidden, files


@pytest.fixture(scope="module")
def recipe(synthetic_nnunet, tmp_path_factory):
    root = private_copy(synthetic_nnunet, tmp_path_factory.mktemp("self_training"))
    hidden, deleted = _delete_hidden_labels(root)
    env = make_env(root, training=True)
    started = time.time()
    run_cli(["nnUNetv2_ssl_self_train", *ARGS, "-tr", TRAINER, "--train_labeled"], env)
    results = root / "results" / DATASET_NAME
    return {"root": root, "env": env, "hidden": hidden, "deleted": deleted, "started": started,
            "pre": root / "preprocessed" / DATASET_NAME, "model": results / f"{TRAINER}__nnUNetPlans__3d_fullres"}


def test_stages_and_where_the_models_are(recipe):
    model = recipe["model"]
    summary = json.loads((model / "fold_0" / "self_training.json").read_text(encoding="utf-8"))
    assert [s["stage"] for s in summary["stages"]] == ["labelled-only", "pseudo", "pseudo", "finetune"]
    assert [s["iterations"] for s in summary["stages"]] == [2, 1, 1, 1] and summary["total_iterations"] == 5
    assert summary["complete"] and summary["recipe"]["rounds"] == 2 and summary["recipe"]["labeled_checkpoint_sha256"]
    for r in (1, 2):  # earlier rounds are model folders of their own (not validated: --validate last)
        for f in ("fold_0/checkpoint_final.pth", "plans.json", "dataset.json"):
            assert (model / f"self_training_round_{r}" / f).is_file()
        assert not (model / f"self_training_round_{r}" / "fold_0" / "validation").exists()
    assert (model / "fold_0" / "validation" / "summary.json").is_file()
    final = load_checkpoint_file(model / "fold_0" / "checkpoint_final.pth")
    assert final["trainer_name"] == TRAINER and "teacher_weights" in final and not final["teacher_weights"]
    # the fine-tune is labelled-only (no pseudo-labelled batches), round 2 drew pseudo-labelled batches
    assert np.isnan(final["logging"]["pseudo_weight"]).all()
    round_2 = load_checkpoint_file(model / "self_training_round_2" / "fold_0" / "checkpoint_final.pth")
    assert len(round_2["logging"]["pseudo_weight"]) == 1 and 0 < round_2["logging"]["pseudo_weight"][0] <= 1
    log = next((model / "self_training_round_2" / "fold_0").glob("training_log_*.txt")).read_text(encoding="utf-8")
    assert str(recipe["pre"] / PSEUDO) in log and "Unlabelled stream: 5 cases, batch size 1" in log


def test_pseudo_labels_where_the_trainer_reads_them(recipe):
    from nnunet_ssl.self_training.store import model_fingerprint, read_image, read_pseudo_manifest
    from nnunet_ssl.self_training.weighting import encode_weights, voxel_weights
    import blosc2
    pre, folder = recipe["pre"], recipe["pre"] / PSEUDO
    manifest = read_pseudo_manifest(str(folder))
    # made by round 1's model (round 2 relabelled)
    round_1 = recipe["model"] / "self_training_round_1" / "fold_0" / "checkpoint_final.pth"
    assert manifest["model"]["checkpoint"] == str(round_1)
    assert manifest["model"]["sha256"] == model_fingerprint(str(round_1))["sha256"]
    assert manifest["prediction"] == {"use_mirroring": False, "tile_step_size": 0.5, "use_gaussian": True}
    assert manifest["training"]["stage"] == "finetune"
    unlabelled = {f"unl_{i:04d}" for i in range(3)}
    assert manifest["cases"] == {**{c: str(pre / DATA) for c in recipe["hidden"]},
                                 **{c: str(pre / f"{DATA}_unlabeled") for c in unlabelled}}
    for case, source in manifest["cases"].items():
        image = read_image(source, case)
        assert np.array_equal(read_image(str(folder), case), image)  # the trainer's image is the preprocessed one
        seg = blosc2.open(str(folder / f"{case}_seg.b2nd"))[:]
        confidence = blosc2.open(str(folder / "confidence" / f"{case}.b2nd"))[:][0]
        assert seg.shape == (2, *image.shape[1:]) and set(np.unique(seg[0])) <= {0, 1, 2}
        assert (confidence >= 1 / 3 - 1e-3).all() and (confidence <= 1).all()
        # the weight channel is the formula applied to the stored confidences
        expected = encode_weights(voxel_weights(confidence.astype(np.float32), 3, 0.6, "confidence"))
        assert np.array_equal(seg[1], expected)
        assert (folder / f"{case}.pkl").is_file()
    # nothing was written into nnUNet_raw or the preprocessed folders of nnU-Net and nnUNetv2_ssl_preprocess_unlabeled
    written = [f for d in (recipe["root"] / "raw", pre / DATA, pre / f"{DATA}_unlabeled", pre / "gt_segmentations")
               for f in d.rglob("*") if f.stat().st_mtime >= recipe["started"]]
    assert not written


def test_hidden_labels_were_never_read(recipe):
    """The recipe ran on a copy without any hidden label (the segmentation files of the split's 'unlabeled'
    cases, their properties and raw labels, the imagesUnlabeled reference masks): reading one would have failed.
    nnU-Net's own loader indeed cannot load a hidden case there."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    assert len(recipe["hidden"]) == 2 and len(recipe["deleted"]) >= 2 * 5 + 3
    assert not any(f.exists() for f in recipe["deleted"])
    with pytest.raises(Exception):
        nnUNetDatasetBlosc2(str(recipe["pre"] / DATA), [recipe["hidden"][0]]).load_case(recipe["hidden"][0])


def test_final_model_predicts_with_stock_nnunetv2_predict(recipe):
    root = recipe["root"]
    out = root / "predictions"
    run_cli(["nnUNetv2_predict", "-i", root / "raw" / DATASET_NAME / "imagesTs", "-o", out, "-d", DATASET_ID,
             "-c", "3d_fullres", "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
             "--disable_progress_bar", "--disable_tta"], recipe["env"])
    assert_valid_predictions(out, {"root": root})


def _snapshot(folder):
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _main(recipe, monkeypatch, argv):
    """The command in this process (a subprocess would import torch and nnU-Net again): its exit code."""
    from nnunet_ssl.self_training.cli import main
    for k, v in recipe["env"].items():
        if k.startswith("nnUNet_"):
            monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    return e.value.code


def test_other_models_pseudo_labels_are_not_overwritten(recipe, monkeypatch, capsys):
    """Another trainer name (no earlier run) but the labelled-only model: the folder holds round 1's labels."""
    folder, manifest = recipe["pre"] / PSEUDO, recipe["pre"] / f"{PSEUDO}.json"
    before = _snapshot(folder) | {"manifest": manifest.stat().st_mtime_ns}
    assert _main(recipe, monkeypatch, [*ARGS, "-tr", "nnUNetTrainerSelfTraining"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("nnUNetv2_ssl_self_train: error: ")
    assert str(folder) in err and "self_training_round_1" in err and "--overwrite" in err
    assert _snapshot(folder) | {"manifest": manifest.stat().st_mtime_ns} == before
    assert not (recipe["root"] / "results" / DATASET_NAME / "nnUNetTrainerSelfTraining__nnUNetPlans__3d_fullres"
                ).exists()


def test_earlier_run_is_not_overwritten(recipe, monkeypatch, capsys):
    before = _snapshot(recipe["model"])
    assert _main(recipe, monkeypatch, [*ARGS, "-tr", TRAINER]) == 2
    err = capsys.readouterr().err
    assert str(recipe["model"] / "fold_0") in err and "--overwrite" in err
    assert _snapshot(recipe["model"]) == before


def test_missing_or_unfinished_labelled_only_model(recipe, monkeypatch, capsys, tmp_path):
    model = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    argv = ["-d", DATASET_ID, "-c", "3d_fullres", "-f", "0", "-tr", TRAINER, "-device", "cpu", "--labeled_model", model]
    assert _main(recipe, monkeypatch, argv) == 2
    err = capsys.readouterr().err
    assert str(model / "fold_0" / "checkpoint_final.pth") in err and "nnUNetv2_train" in err
    (model / "fold_0").mkdir(parents=True)
    (model / "fold_0" / "checkpoint_latest.pth").write_bytes(b"")
    assert _main(recipe, monkeypatch, argv) == 2
    err = capsys.readouterr().err
    assert "unfinished" in err and str(model / "fold_0") in err and "--c" in err
    # and the default folder of --labeled_trainer: a hint at --train_labeled
    assert _main(recipe, monkeypatch, argv[:-2] + ["--labeled_trainer", "nnUNetTrainer"]) == 2
    err = capsys.readouterr().err
    assert "nnUNetTrainer__nnUNetPlans__3d_fullres" in err and "--train_labeled" in err


def test_fold_without_unlabelled_cases(recipe, monkeypatch, capsys):
    """A dataset whose split hides no labels and that has no imagesUnlabeled folder."""
    pre = recipe["pre"].parent / "Dataset991_NoUnlabelled"
    pre.mkdir()
    for f in ("dataset.json", "nnUNetPlans.json"):
        shutil.copy(recipe["pre"] / f, pre / f)
    split = json.loads((recipe["pre"] / "splits_final.json").read_text(encoding="utf-8"))[0]
    (pre / "splits_final.json").write_text(json.dumps([{"train": split["train"], "val": split["val"]}]))
    before = sorted(os.listdir(pre))
    assert _main(recipe, monkeypatch, ["-d", "991", *ARGS[2:], "-tr", TRAINER]) == 2
    err = capsys.readouterr().err
    assert "no unlabelled cases" in err and str(pre / "splits_final.json") in err and f"{DATA}_unlabeled" in err
    assert sorted(os.listdir(pre)) == before


# ------------------------------------------------------------------------------------------ --c: a cut-off run
# 2d (its own model folders and pseudo-label folder, so the 3d recipe above is untouched); the resume variant
# writes checkpoint_latest.pth every epoch and crashes after epoch k when NNUNET_SSL_TEST_CRASH_AFTER_EPOCH=k
RESUME = "nnUNetTrainerSelfTraining_tinyResume"
ARGS_2D = ["-d", DATASET_ID, "-c", "2d", "-f", "0", "-tr", RESUME, "--labeled_trainer", LABELED, "--epochs", "2",
           "--iterations_per_epoch", "1", "--finetune_epochs", "1", "--disable_tta", "--validate", "none",
           "-device", "cpu", "--threads", "1"]


def _run(recipe, monkeypatch, argv, **env):
    """The command's run() in this process (training included): its summary."""
    from nnunet_ssl.self_training.cli import build_parser, run
    for k, v in [*recipe["env"].items(), *env.items()]:
        if k.startswith("nnUNet_") or k in env:
            monkeypatch.setenv(k, v)
    return run(build_parser().parse_args([str(a) for a in argv]))


def _with(argv, option, value):
    argv = list(argv)
    argv[argv.index(option) + 1] = value
    return argv


def test_cut_off_stage_continues_with_c(recipe, monkeypatch, capsys, tmp_path):
    """Round 1 is cut off right after its first epoch's checkpoint_latest.pth; --c continues it from there (epoch 1,
    not from scratch) without making the labelled-only model or the pseudo-labels again, then runs the fine-tune;
    --c on the finished run trains nothing. Refused: a plain rerun, --c with another recipe setting, --c with
    --overwrite."""
    results = recipe["root"] / "results" / DATASET_NAME
    model, pseudo = results / f"{RESUME}__nnUNetPlans__2d", recipe["pre"] / "nnUNetPlans_2d_pseudolabels_fold_0"
    labelled = results / f"{LABELED}__nnUNetPlans__2d" / "fold_0" / "checkpoint_final.pth"
    fold = model / "fold_0"
    with pytest.raises(RuntimeError, match="simulated crash after epoch 0"):
        _run(recipe, monkeypatch, [*ARGS_2D, "--train_labeled"], NNUNET_SSL_TEST_CRASH_AFTER_EPOCH="0")
    monkeypatch.delenv("NNUNET_SSL_TEST_CRASH_AFTER_EPOCH")
    assert (fold / "checkpoint_latest.pth").is_file() and not (fold / "checkpoint_final.pth").exists()
    assert json.loads((fold / "self_training.json").read_text(encoding="utf-8"))["complete"] is False
    made = {str(p): p.stat().st_mtime_ns for p in [labelled, *pseudo.rglob("*")]}
    assert len(made) > 5

    before = _snapshot(model)
    capsys.readouterr()
    assert _main(recipe, monkeypatch, ARGS_2D) == 2
    err = capsys.readouterr().err
    assert str(fold) in err and "--c to continue" in err and "--overwrite" in err
    assert _main(recipe, monkeypatch, [*ARGS_2D, "--c", "--overwrite"]) == 2
    assert "pass one of them" in capsys.readouterr().err
    assert _main(recipe, monkeypatch, [*_with(ARGS_2D, "--epochs", "3"), "--c"]) == 2
    err = capsys.readouterr().err
    assert "--epochs 2" in err and "--epochs 3" in err and str(fold / "self_training.json") in err
    assert _main(recipe, monkeypatch, [*ARGS_2D, "--c", "--threshold", "0.5"]) == 2
    assert "--threshold 0.0" in capsys.readouterr().err
    assert _snapshot(model) == before

    record = tmp_path / "resume.pt"
    summary = _run(recipe, monkeypatch, [*ARGS_2D, "--c"], NNUNET_SSL_TEST_RECORD_RESUME=str(record))
    out = capsys.readouterr().out
    assert "Reusing the pseudo-labels" in out and "continuing the self-training round 1" in out
    assert load_checkpoint_file(record)["current_epoch"] == 1        # loaded after epoch 0, not started again
    round_1 = load_checkpoint_file(model / "self_training_round_1" / "fold_0" / "checkpoint_final.pth")
    assert round_1["current_epoch"] == 2 and len(round_1["logging"]["train_losses"]) == 2
    assert {str(p): p.stat().st_mtime_ns for p in [labelled, *pseudo.rglob("*")]} == made
    assert (fold / "checkpoint_final.pth").is_file() and summary["complete"]
    assert [(s["stage"], s["iterations"]) for s in summary["stages"]] == [("labelled-only", 2), ("pseudo", 2),
                                                                         ("finetune", 1)]
    assert summary["stages"][1]["mean_weight"] == pytest.approx(1.0)  # --threshold 0, hard weights
    assert json.loads((fold / "self_training.json").read_text(encoding="utf-8")) == json.loads(json.dumps(summary))
    assert not (model / "self_training_round_1" / "fold_0" / "self_training.json").exists()

    before = {k: v for k, v in _snapshot(model).items() if not k.endswith("self_training.json")}
    again = _run(recipe, monkeypatch, [*ARGS_2D, "--c"])
    assert "had finished; nothing to train" in capsys.readouterr().out
    assert {k: v for k, v in _snapshot(model).items() if not k.endswith("self_training.json")} == before
    assert again["stages"] == summary["stages"] and again["complete"]
