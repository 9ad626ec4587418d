"""The stock nnU-Net commands, end to end, with the tiny Mean Teacher trainer."""

import torch

from conftest import (DATASET_ID, assert_nested_equal, assert_valid_predictions, load_checkpoint_file,
                      run_cli, train_predict, train_until_crash)

TRAINER = "nnUNetTrainerMeanTeacher_tiny"


def _check_run(fold, pred, synthetic_nnunet):
    final = load_checkpoint_file(fold / "checkpoint_final.pth")
    # semi-supervised state is in the checkpoint, and what is exported is the teacher
    for key in ("student_weights", "teacher_weights", "extra_modules", "extra_optimizers", "ssl_step"):
        assert key in final
    assert final["ssl_step"] == 2 * 3 and final["current_epoch"] == 2
    assert final["teacher_weights"]["teacher"]["_extra_state"]["step"] == 6
    assert_nested_equal(final["network_weights"],
                         {k[len("module."):]: v for k, v in final["teacher_weights"]["teacher"].items()
                          if k.startswith("module.")})
    # teacher and student differ after training (EMA lags behind)
    w = next(k for k in final["student_weights"] if k.endswith("weight"))
    assert not torch.equal(final["student_weights"][w], final["network_weights"][w])
    # per-epoch semi-supervised diagnostics: one value per epoch, pseudo-label Dice against hidden truth defined
    logging = final["logging"]
    for key in ("unsup_loss", "teacher_confidence", "reliable_fraction", "pseudo_label_dice", "unsup_weight"):
        assert len(logging[key]) == 2, key
    assert all(0 <= v <= 1 for v in logging["pseudo_label_dice"])
    assert (fold / "progress_ssl.png").is_file() and (fold / "progress.png").is_file()
    assert (fold / "validation" / "summary.json").is_file()
    assert_valid_predictions(pred, synthetic_nnunet)


def test_3d_interrupted_resumed_and_predicted(synthetic_nnunet):
    """Interrupted after epoch 0 of 2 (checkpoint_latest written), `nnUNetv2_train --c` restores teacher, student,
    step counter and optimizer exactly, finishes, and the final checkpoint predicts with nnUNetv2_predict."""
    trainer = "nnUNetTrainerMeanTeacher_tinyResume"
    fold, latest = train_until_crash(synthetic_nnunet, trainer)
    record = fold / "resumed_state.pt"
    fold_, pred = train_predict(synthetic_nnunet, trainer, "3d_fullres",
                                extra_train_args=["--c"], env_overrides={"NNUNET_SSL_TEST_RECORD_RESUME": record})
    assert fold_ == fold
    resumed = load_checkpoint_file(record)  # the trainer's state right after load_checkpoint
    assert resumed["ssl_step"] == 3 and resumed["current_epoch"] == 1 and resumed["teacher_step"] == 3
    assert_nested_equal(resumed["teacher"], latest["teacher_weights"]["teacher"])
    assert_nested_equal(resumed["student"], latest["student_weights"])
    _check_run(fold, pred, synthetic_nnunet)


def test_2d_train_and_predict(synthetic_nnunet):
    fold, pred = train_predict(synthetic_nnunet, TRAINER, "2d")
    _check_run(fold, pred, synthetic_nnunet)


def test_missing_trainer_gives_hint(synthetic_nnunet):
    env = dict(synthetic_nnunet["env"])
    proc = run_cli(["nnUNetv2_ssl_train", DATASET_ID, "3d_fullres", "0", "-tr", "nnUNetTrainerDoesNotExist",
                    "-device", "cpu"], env, expect_ok=False)
    # one error style: a message naming the setting and the fix, exit code 2, no traceback
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "nnUNetv2_ssl_train: error: " in proc.stderr and "Could not find requested nnunet trainer" in proc.stderr
    assert "nnUNet_extTrainer" in proc.stderr and "Check the trainer name" in proc.stderr


def test_stock_predict_needs_ext_trainer(synthetic_nnunet):
    """Without nnUNet_extTrainer, stock nnU-Net cannot find the trainer; the plugin's wrapper sets it."""
    env = {k: v for k, v in synthetic_nnunet["env"].items() if k != "nnUNet_extTrainer"}
    proc = run_cli(["nnUNetv2_train", DATASET_ID, "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"], env,
                   expect_ok=False)
    assert proc.returncode != 0 and "Could not find requested nnunet trainer" in proc.stderr
