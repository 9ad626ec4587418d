"""CRLN end to end through the stock CLI: train (interrupted after epoch 0), `--c`, then `nnUNetv2_predict`."""
import numpy as np
import torch

from conftest import (DATASET_ID, DATASET_NAME, assert_nested_equal, assert_valid_predictions, load_checkpoint_file,
                      run_cli, train_until_crash)

TRAINER = "nnUNetTrainerCRLN_tinyResume"  # tests/trainers: _tiny + crash/record hooks, checkpoint every epoch


def test_crln_train_resume_predict(synthetic_nnunet):
    env, root = dict(synthetic_nnunet["env"]), synthetic_nnunet["root"]
    train = ["nnUNetv2_train", DATASET_ID, "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"]
    fold, latest = train_until_crash(synthetic_nnunet, TRAINER)
    assert "rectifier" in latest["extra_optimizers"] and "cps_head.net.0.weight" in latest["extra_modules"]

    record = fold / "resumed_state.pt"
    run_cli(train + ["--c"], dict(env, NNUNET_SSL_TEST_RECORD_RESUME=str(record)))
    resumed = load_checkpoint_file(record)  # the trainer's state right after load_checkpoint
    assert resumed["ssl_step"] == 3 and resumed["current_epoch"] == 1 and resumed["teacher_step"] == 3
    assert_nested_equal(resumed["student"], latest["student_weights"], "student")
    assert_nested_equal(resumed["teacher"], latest["teacher_weights"]["teacher"], "teacher")
    assert_nested_equal(resumed["extra_modules"], latest["extra_modules"], "extra_modules")
    assert_nested_equal(resumed["extra_optimizers"], latest["extra_optimizers"], "extra_optimizers")  # a's momentum

    final = load_checkpoint_file(fold / "checkpoint_final.pth")
    assert final["ssl_step"] == 6 and final["current_epoch"] == 2
    exported, student = final["network_weights"], final["student_weights"]
    # the exported teacher carries the DIM and the trained `a` (copied from the student, not averaged)
    assert "dim.prototypes" in exported and exported["dim.prototypes"].shape[:3] == (1, 3, 2)
    assert torch.equal(exported["rectifier.a"], student["rectifier.a"])
    assert exported["rectifier.a"].item() != 0.0  # eq. 16 moved it
    assert not torch.equal(exported["dim.prototypes"], student["dim.prototypes"])  # EMA lags
    logging = final["logging"]
    for key in ("rect_a", "rect_loss", "dim_loss", "cps_loss", "unsup_loss", "reliable_fraction",
                "reliable_fraction_rectified", "pseudo_label_dice", "pseudo_label_dice_rectified"):
        assert len(logging[key]) == 2 and np.all(np.isfinite(logging[key])), key
    assert logging["rectification_active"] == [0.0, 1.0]  # T_rect = 3 = first step of epoch 1
    assert all(0 <= v <= 1 for v in logging["pseudo_label_dice"] + logging["pseudo_label_dice_rectified"])
    assert (fold / "validation" / "summary.json").is_file() and (fold / "progress_ssl.png").is_file()

    # stock predictor: builds CRLNNet from the trainer class and loads network_weights strictly
    out = root / "predictions" / f"{TRAINER}_3d_fullres"
    run_cli(["nnUNetv2_predict", "-i", root / "raw" / DATASET_NAME / "imagesTs", "-o", out, "-d", DATASET_ID,
             "-c", "3d_fullres", "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
             "--disable_progress_bar", "--disable_tta"], env)  # TTA: 8x the CPU time, no new code path
    assert_valid_predictions(out, synthetic_nnunet)
