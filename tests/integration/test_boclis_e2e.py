"""BoCLIS through the stock nnU-Net commands on CPU: train (interrupted after epoch 0), `--c`, predict.

One run per configuration (3d_fullres and 2d), with the tiny resume variant: 2 epochs x 3 iterations."""
import math

import pytest
import torch

from conftest import (DATASET_ID, DATASET_NAME, assert_nested_equal, assert_valid_predictions, load_checkpoint_file,
                      run_cli, train_until_crash)

TRAINER = "nnUNetTrainerBoCLIS_tinyResume"
TEACHERS = ("teacher", "teacher_2", "teacher_3")


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_boclis_train_resume_predict(synthetic_nnunet, configuration):
    env, root = dict(synthetic_nnunet["env"]), synthetic_nnunet["root"]
    train = ["nnUNetv2_train", DATASET_ID, configuration, "0", "-tr", TRAINER, "-device", "cpu"]

    # epoch 0, then a simulated crash right after checkpoint_latest is written
    fold, latest = train_until_crash(synthetic_nnunet, TRAINER, configuration)
    assert tuple(latest["teacher_weights"]) == TEACHERS
    decays = [latest["teacher_weights"][k]["_extra_state"]["decay"] for k in TEACHERS]
    assert decays == [0.999, 0.99, 0.9]
    assert "patch_projection.net.0.weight" in "".join(latest["extra_modules"])
    # the per-class memory queue is on for the 3D 2+2 batch only ('auto'), and it has been filled
    assert ("boclis_class_queue" in latest) == (configuration == "3d_fullres")
    if configuration == "3d_fullres":
        assert latest["boclis_class_queue"]["filled"].any()

    # --c restores student, every teacher, the projection head, the queue and the patch-sampling RNG
    env["NNUNET_SSL_TEST_RECORD_RESUME"] = str(fold / "resumed_state.pt")
    run_cli(train + ["--c"], env)
    resumed = load_checkpoint_file(fold / "resumed_state.pt")
    assert resumed["ssl_step"] == 3 and resumed["current_epoch"] == 1
    assert_nested_equal(resumed["student"], latest["student_weights"])
    assert_nested_equal(resumed["extra_modules"], latest["extra_modules"])
    for k in TEACHERS:
        assert_nested_equal(resumed["all_teachers"][k], latest["teacher_weights"][k])
    assert torch.equal(resumed["method_state"]["boclis_patch_generator"], latest["boclis_patch_generator"])
    if configuration == "3d_fullres":
        assert_nested_equal(resumed["method_state"]["boclis_class_queue"], latest["boclis_class_queue"])

    final = load_checkpoint_file(fold / "checkpoint_final.pth")
    assert final["ssl_step"] == 6 and final["current_epoch"] == 2
    assert all(final["teacher_weights"][k]["_extra_state"]["step"] == 6 for k in TEACHERS)
    # spec §9 default: the student is exported for nnUNetv2_predict
    assert_nested_equal(final["network_weights"], final["student_weights"])
    logging = final["logging"]
    for key in ("unsup_loss", "con_loss", "contrast_patches", "reliability_mean", "conservative_teacher_weight",
                "pseudo_label_dice"):
        assert len(logging[key]) == 2 and all(math.isfinite(v) for v in logging[key]), (key, logging[key])
    assert all(v > 0 for v in logging["contrast_patches"])
    assert all(0 <= v <= 1 for v in logging["reliability_mean"])
    assert (fold / "validation" / "summary.json").is_file()

    # stock prediction: the plain planned network with the exported weights
    out = root / "predictions" / f"{TRAINER}_{configuration}"
    run_cli(["nnUNetv2_predict", "-i", root / "raw" / DATASET_NAME / "imagesTs", "-o", out, "-d", DATASET_ID,
             "-c", configuration, "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
             "--disable_progress_bar", "--disable_tta"], env)  # TTA: 8x the CPU time, no new code path
    assert_valid_predictions(out, synthetic_nnunet)
