"""CDR end to end through the stock CLI: train (interrupted after epoch 0), `--c`, then predict with the ensemble."""
import torch

from conftest import (assert_nested_equal, assert_valid_predictions, load_checkpoint_file, train_predict,
                      train_until_crash)

TRAINER = "nnUNetTrainerCDR_tinyResume"  # tests/trainers: _tiny + crash/record hooks


def test_cdr_train_resume_predict(synthetic_nnunet):
    env = synthetic_nnunet["env"]
    fold, latest = train_until_crash(synthetic_nnunet, TRAINER)
    assert sum(latest["cdr_leader_counts"].values()) == 3
    # both networks, both heads, network B's optimizer (with head B) are in the checkpoint
    assert any(k.startswith("net_a.") for k in latest["student_weights"])
    assert any(k.startswith("net_b.") for k in latest["student_weights"])
    # the default intra term is the two-pass one: one projection head per network, no bottleneck heads
    assert {k.split(".")[0] for k in latest["extra_modules"]} == {"head_a", "head_b"}
    # network B's optimizer: its own parameters, then B's head (two 1x1 convs: weight and bias each)
    groups_b = latest["extra_optimizers"]["net_b"]["param_groups"]
    assert len(groups_b) == 2 and len(groups_b[1]["params"]) == 4

    record = fold / "resumed_state.pt"
    resume_env = dict(env, NNUNET_SSL_TEST_RECORD_RESUME=str(record))
    fold_again, pred = train_predict(dict(synthetic_nnunet, env=resume_env), TRAINER, "3d_fullres", ["--c"])
    assert fold_again == fold
    resumed = load_checkpoint_file(record)  # the trainer's state right after load_checkpoint
    assert resumed["ssl_step"] == 3 and resumed["current_epoch"] == 1
    assert_nested_equal(resumed["student"], latest["student_weights"], "student")
    assert_nested_equal(resumed["extra_modules"], latest["extra_modules"], "heads")
    assert_nested_equal(resumed["extra_optimizers"], latest["extra_optimizers"], "optimizer B")
    assert_nested_equal(resumed["optimizer"], latest["optimizer_state"], "optimizer A")
    assert resumed["leader_counts"] == latest["cdr_leader_counts"]

    final = load_checkpoint_file(fold / "checkpoint_final.pth")
    assert final["ssl_step"] == 6 and final["current_epoch"] == 2
    counts = final["cdr_leader_counts"]
    assert sum(counts.values()) == 6
    # the two networks trained on: they differ from the interrupted state
    w = next(k for k in final["student_weights"] if k.startswith("net_b.") and k.endswith("weight"))
    assert not torch.equal(final["student_weights"][w], latest["student_weights"][w])
    # what prediction loads is the dual ensemble (both networks' weights)
    assert_nested_equal(final["network_weights"], final["student_weights"], "network_weights")
    logging = final["logging"]
    for key in ("agreement", "a_led", "sup_b_loss", "review_loss", "cons_loss", "rkd_loss", "inter_loss",
                "intra_loss", "intra_kd_loss", "inter_nce", "intra_nce", "pseudo_label_dice"):
        assert len(logging[key]) == 2, key
    assert all(0 <= v <= 1 for v in logging["agreement"])
    # per-epoch fraction of steps A led agrees with the step counts (3 steps per epoch)
    assert round(sum(logging["a_led"]) * 3) == counts["a"]
    assert (fold / "progress_ssl.png").is_file() and (fold / "validation" / "summary.json").is_file()

    assert_valid_predictions(pred, synthetic_nnunet)
