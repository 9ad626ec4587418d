"""Offline self-training: the weight formula, its storage in a segmentation channel, the weighted loss, and the
decisions the command makes about an existing pseudo-label folder (hand-computed values)."""
import math

import numpy as np
import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from nnunet_ssl.self_training.cli import SelfTrainingError, pseudo_labels_to_make
from nnunet_ssl.self_training.store import write_pseudo_manifest
from nnunet_ssl.self_training.weighting import (WeightedPseudoLabelLoss, decode_weights, encode_weights,
                                                voxel_weights)
from nnunet_ssl.trainers.self_training import (nnUNetTrainerLabeledOnly_tiny, nnUNetTrainerSelfTraining,
                                               nnUNetTrainerSelfTraining_tiny)
from nnunet_ssl.trainers.tiny import UnmirroredValidation

CONF = np.array([0.5, 0.6, 0.75, 0.9, 1.0])


def test_hard_weights_are_the_threshold():
    assert voxel_weights(CONF, 2).tolist() == [1, 1, 1, 1, 1]                  # tau 0: the plain recipe
    assert voxel_weights(CONF, 2, threshold=0.75).tolist() == [0, 0, 1, 1, 1]  # at the threshold counts


def test_confidence_weights_hand_computed():
    # C = 2: w = (c - 1/2) / (1/2) = 2c - 1
    assert voxel_weights(CONF, 2, weighting="confidence") == pytest.approx([0.0, 0.2, 0.5, 0.8, 1.0])
    assert voxel_weights(CONF, 2, 0.7, "confidence") == pytest.approx([0.0, 0.0, 0.5, 0.8, 1.0])
    # C = 3: w = (c - 1/3) / (2/3); c = 0.5 -> 0.25, c = 0.2 (below chance) -> 0
    assert voxel_weights(np.array([0.5, 0.2, 1.0]), 3, weighting="confidence") == pytest.approx([0.25, 0.0, 1.0])
    with pytest.raises(ValueError):
        voxel_weights(CONF, 2, weighting="soft")


def test_weight_buckets_round_trip():
    w = np.array([1.0, 0.8, 0.5, 0.25, 0.04, 0.0])
    buckets = encode_weights(w, levels=10)
    assert buckets.tolist() == [0, 2, 5, 8, 10, 10]    # round((1 - w) * 10), 7.5 rounds up
    assert decode_weights(buckets, 10) == pytest.approx([1.0, 0.8, 0.5, 0.2, 0.0, 0.0])
    # padding (-1, turned into 0 by nnU-Net's loader) is full weight; torch decodes alike
    assert decode_weights(torch.tensor([0, 2, 10, 12]), 10).tolist() == pytest.approx([1.0, 0.8, 0.0, 0.0])


def _target(labels, weights, levels=10):
    """(1, 2, N) two-channel target: labels and weight buckets."""
    return torch.tensor(np.stack([labels, encode_weights(np.array(weights), levels)]))[None]


def test_weighted_loss_hand_computed():
    # voxel 0: logits (0, 0) -> p = (1/2, 1/2), label 0, weight 1; voxel 1: (ln 3, 0) -> p = (3/4, 1/4), label 1,
    # weight 0.5
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    target = _target([0, 1], [1.0, 0.5])
    ce = (1.0 * math.log(2) + 0.5 * math.log(4)) / 1.5
    # Dice of class 1: intersect 1/4 * 1 * 1/2, predicted 1/2 * 1 + 1/4 * 1/2, reference 1 * 1/2
    smooth = 1e-5
    dice = (2 * 0.125 + smooth) / (0.5 + 0.625 + smooth)
    loss = WeightedPseudoLabelLoss(batch_dice=False)(logits, target)
    assert loss.item() == pytest.approx(ce - dice, rel=1e-6)


def test_binary_weights_equal_nnunet_loss_with_ignore_label():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 6)
    labels = torch.randint(0, 3, (2, 4, 5, 6))
    weights = (torch.rand(2, 4, 5, 6) > 0.3).float()
    target = torch.stack([labels, torch.tensor(encode_weights(weights.numpy(), 10))], 1)
    ignore = 3
    nnunet = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                            weight_dice=1, ignore_label=ignore, dice_class=MemoryEfficientSoftDiceLoss)
    expected = nnunet(logits, torch.where(weights > 0, labels, ignore)[:, None])
    assert WeightedPseudoLabelLoss(batch_dice=True)(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    # all weights 1: nnU-Net's plain loss on the pseudo-labels
    plain = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                           dice_class=MemoryEfficientSoftDiceLoss)(logits, labels[:, None])
    full = torch.stack([labels, torch.zeros_like(labels)], 1)
    assert WeightedPseudoLabelLoss(batch_dice=True)(logits, full).item() == pytest.approx(plain.item(), rel=1e-5)


def test_trainer_contract():
    assert nnUNetTrainerSelfTraining.num_teachers_needed == 0
    assert nnUNetTrainerSelfTraining.unlabeled_view == "nnunet" and not nnUNetTrainerSelfTraining.use_strong_view
    for test_variant in (nnUNetTrainerSelfTraining_tiny, nnUNetTrainerLabeledOnly_tiny):
        assert issubclass(test_variant, UnmirroredValidation)


def test_command_defaults_are_the_plain_recipe():
    from nnunet_ssl.self_training.cli import build_parser
    args = build_parser().parse_args(["-d", "1", "-c", "3d_fullres", "-f", "0"])
    assert not args.disable_tta and args.step_size == 0.5                  # nnUNetv2_predict's mirroring and step
    assert (args.threshold, args.weighting, args.pseudo_ratio) == (0, "hard", 1)   # every voxel, 1:1 batches
    assert (args.rounds, args.finetune_epochs) == (1, 0)
    assert args.tr == "nnUNetTrainerSelfTraining" and args.labeled_trainer == "nnUNetTrainer"


# --------------------------------------------------------------------- what to do with an existing folder
MODEL_A = {"checkpoint": "/m/a.pth", "sha256": "a" * 64}
MODEL_B = {"checkpoint": "/m/b.pth", "sha256": "b" * 64}
PRED = {"use_mirroring": True, "tile_step_size": 0.5, "use_gaussian": True}
HARD = {"mode": "hard", "threshold": 0.0, "levels": 10}
CASES = {"c1": "/pre/x", "u1": "/pre/x_unlabeled"}


def _existing(tmp_path, **changes):
    folder = str(tmp_path / "pl")
    (tmp_path / "pl").mkdir()
    write_pseudo_manifest(folder, {"model": MODEL_A, "prediction": PRED, "weighting": HARD, "cases": CASES,
                                   **changes})
    return folder


def test_new_folder_is_predicted(tmp_path):
    assert pseudo_labels_to_make(str(tmp_path / "pl"), MODEL_A, PRED, HARD, CASES, False) == "predict"


def test_same_model_is_reused_and_reweighted(tmp_path):
    folder = _existing(tmp_path)
    assert pseudo_labels_to_make(folder, MODEL_A, PRED, HARD, CASES, False) == "keep"
    soft = dict(HARD, mode="confidence")
    assert pseudo_labels_to_make(folder, MODEL_A, PRED, soft, CASES, False) == "reweight"


@pytest.mark.parametrize("model, prediction, cases", [
    (MODEL_B, PRED, CASES),                               # another model
    (MODEL_A, dict(PRED, use_mirroring=False), CASES),    # other predictor settings
    (MODEL_A, PRED, {"c1": "/pre/x"}),                    # other cases
    (None, PRED, CASES),                                  # the labelled-only model is yet to be trained
])
def test_other_pseudo_labels_need_overwrite(tmp_path, model, prediction, cases):
    folder = _existing(tmp_path)
    with pytest.raises(SelfTrainingError, match="--overwrite") as e:
        pseudo_labels_to_make(folder, model, prediction, HARD, cases, False)
    assert folder in str(e.value) and "/m/a.pth" in str(e.value)
    assert pseudo_labels_to_make(folder, model, prediction, HARD, cases, True) == "predict"


def test_folder_without_manifest_needs_overwrite(tmp_path):
    (tmp_path / "pl").mkdir()
    with pytest.raises(SelfTrainingError, match="manifest is missing"):
        pseudo_labels_to_make(str(tmp_path / "pl"), MODEL_A, PRED, HARD, CASES, False)


def test_other_pseudo_labels_under_c_point_at_overwrite_instead(tmp_path):
    folder = _existing(tmp_path)
    with pytest.raises(SelfTrainingError, match="--overwrite instead of --c") as e:
        pseudo_labels_to_make(folder, MODEL_B, PRED, HARD, CASES, False, continuing=True)
    assert "Pass --overwrite to replace" not in str(e.value)


# --------------------------------------------------------------------- --c: the same recipe or a clear refusal
def _recipe(**changes):
    from nnunet_ssl.self_training.cli import build_parser, recipe_settings
    args = build_parser().parse_args(["-d", "1", "-c", "3d_fullres", "-f", "0", "--rounds", "2", "--epochs", "5"])
    return {**recipe_settings(args, "/r/nnUNetTrainer__nnUNetPlans__3d_fullres", MODEL_A), **changes}


@pytest.mark.parametrize("changes, expected", [
    ({"epochs": 6}, ["--epochs 5", "--epochs 6"]),
    ({"epochs": None}, ["--epochs 5", "no --epochs (the trainer's default)"]),
    ({"rounds": 1}, ["--rounds 2", "--rounds 1"]),
    ({"disable_tta": True}, ["used no --disable_tta, this command --disable_tta"]),
    ({"weighting": "confidence"}, ["--weighting hard", "--weighting confidence"]),
    ({"labeled_model": "/other"}, ["/r/nnUNetTrainer__nnUNetPlans__3d_fullres", "/other", "--labeled_model"]),
    ({"labeled_checkpoint_sha256": "b" * 64}, ["has changed", "aaaaaaaaaaaa", "bbbbbbbbbbbb"]),
    ({"labeled_checkpoint_sha256": None}, ["no checkpoint_final.pth any more"]),
])
def test_c_refuses_another_recipe(changes, expected):
    from nnunet_ssl.self_training.cli import check_same_recipe
    check_same_recipe(_recipe(), _recipe(), "/r/run/fold_0/self_training.json")  # the same: continue
    with pytest.raises(SelfTrainingError) as e:
        check_same_recipe(_recipe(), _recipe(**changes), "/r/run/fold_0/self_training.json")
    message = str(e.value)
    assert message.startswith("--c: ") and "--overwrite instead of --c" in message
    for text in expected:
        assert text in message
    if "labeled" not in next(iter(changes)):
        assert "/r/run/fold_0/self_training.json" in message


def test_c_and_overwrite_are_refused_together():
    from nnunet_ssl.self_training.cli import build_parser, run
    args = build_parser().parse_args(["-d", "1", "-c", "3d_fullres", "-f", "0", "--c", "--overwrite"])
    assert args.continue_training and args.c == "3d_fullres"   # nnU-Net's --c does not clash with -c
    with pytest.raises(SelfTrainingError, match="pass one of them"):
        run(args)
