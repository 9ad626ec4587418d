"""UGPL through the stock nnU-Net commands: train (interrupted after epoch 0), `--c`, then predict."""
import numpy as np
import pytest
import torch

from conftest import (assert_nested_equal, assert_valid_predictions, load_checkpoint_file, train_predict,
                      train_until_crash)
from nnunet_ssl.trainers.ugpl import nnUNetTrainerUGPL, prototype_weight

TRAINER = "nnUNetTrainerUGPL_tinyResume"  # tests/trainers: _tiny + crash/record hooks


def test_train_resume_predict_averages_both_networks(synthetic_nnunet, monkeypatch):
    env = synthetic_nnunet["env"]

    # 1. stock nnUNetv2_train, stopped right after epoch 0's checkpoint_latest
    fold, latest = train_until_crash(synthetic_nnunet, TRAINER)
    model = fold.parent
    assert set(latest["extra_optimizers"]) == {"net_b"}  # network B's own SGD
    assert {k.split(".")[0] for k in latest["network_weights"]} == {"net_a", "net_b"}

    # 2. --c (restores both networks, both optimizers, the step counter), then stock nnUNetv2_predict
    resume_env = dict(env, NNUNET_SSL_TEST_RECORD_RESUME=str(fold / "resumed_state.pt"))
    _, pred = train_predict(dict(synthetic_nnunet, env=resume_env), TRAINER, "3d_fullres", ["--c"])
    resumed = load_checkpoint_file(fold / "resumed_state.pt")
    assert resumed["ssl_step"] == 3 and resumed["current_epoch"] == 1
    assert_nested_equal(resumed["student"], latest["student_weights"])
    assert_nested_equal(resumed["extra_optimizers"], latest["extra_optimizers"])
    final = load_checkpoint_file(fold / "checkpoint_final.pth")
    assert final["ssl_step"] == 6 and final["current_epoch"] == 2
    assert_nested_equal(final["network_weights"], final["student_weights"])  # the DualNetwork is exported
    # the two optimizers stepped different parameters: both networks changed from epoch 0 to the end
    for net in ("net_a", "net_b"):
        keys = [k for k in final["student_weights"] if k.startswith(net) and k.endswith("weight")]
        assert any(not torch.equal(final["student_weights"][k], latest["student_weights"][k]) for k in keys)

    # per-epoch diagnostics (spec §9.6); λ_c continued from step 3 after the resume
    logging = final["logging"]
    for key in ("sup_a", "sup_b", "cr_loss", "unsup_loss", "kl_loss", "cos_loss", "proto_loss", "tau_a", "tau_b",
                "kept_share", "unsup_rescale", "loser_is_b", "kl_weight_mean", "proto_weight",
                "reliable_voxels_c1", "proto_candidates_c1", "pseudo_label_dice", "pseudo_label_dice_kept"):
        assert len(logging[key]) == 2, key
    ramp = nnUNetTrainerUGPL.proto_ramp_fraction
    assert logging["proto_weight"][0] == pytest.approx(np.mean([prototype_weight(s, 6, 0.1, ramp) for s in (0, 1, 2)]))
    # a counter reset by the resume would repeat epoch 0's ramp values
    assert logging["proto_weight"][1] == pytest.approx(np.mean([prototype_weight(s, 6, 0.1, ramp) for s in (3, 4, 5)]))
    assert logging["proto_weight"][1] != pytest.approx(logging["proto_weight"][0])
    assert all(0.79 <= v <= 1.0 for v in logging["kept_share"])  # q = 80 keeps between 80 % and 100 %
    assert all(np.isfinite(logging[k]).all() for k in ("unsup_loss", "kl_loss", "cos_loss", "proto_loss"))
    assert (fold / "progress_ssl.png").is_file() and (fold / "validation" / "summary.json").is_file()

    assert_valid_predictions(pred, synthetic_nnunet)

    # 3. nnU-Net's own predictor (as nnUNetv2_predict loads it) returns the mean of both networks' softmax. It
    # accumulates windows in float16, hence the tolerance; no Gaussian weighting (x10) to keep that error small.
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    monkeypatch.setenv("nnUNet_extTrainer", env["nnUNet_extTrainer"])
    predictor = nnUNetPredictor(use_gaussian=False, use_mirroring=False, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), (0,), "checkpoint_final.pth")
    net = predictor.network
    assert type(net.net_a).__name__ == "PlainConvUNet" and type(net.net_b).__name__ == "ResidualEncoderUNet"
    patch = predictor.configuration_manager.patch_size
    data = torch.randn(1, *patch, generator=torch.Generator().manual_seed(0))  # one window, no TTA
    probs = torch.softmax(predictor.predict_logits_from_preprocessed_data(data).float(), 0)
    with torch.no_grad():
        net.eval()
        p_a, p_b = (torch.softmax(n(data[None]), 1)[0] for n in (net.net_a, net.net_b))
    tol = 5e-3
    assert (probs - (p_a + p_b) / 2).abs().max() < tol
    # discriminative: a single network's softmax is far outside that tolerance
    assert (probs - p_a).abs().max() > 10 * tol and (probs - p_b).abs().max() > 10 * tol
