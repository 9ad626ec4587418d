"""scripts/loss_gradients.py: which schedule the ramped loss weights of a reloaded checkpoint are computed over."""
import argparse
import importlib.util

from conftest import REPO

spec = importlib.util.spec_from_file_location("loss_gradients", REPO / "scripts" / "loss_gradients.py")
loss_gradients = importlib.util.module_from_spec(spec)
spec.loader.exec_module(loss_gradients)


def options(epochs=None, iterations_per_epoch=None):
    return argparse.Namespace(epochs=epochs, iterations_per_epoch=iterations_per_epoch)


def test_options_win_over_the_checkpoint():
    stored = {"ssl_schedule": {"num_epochs": 8, "num_iterations_per_epoch": 250}}
    assert loss_gradients.run_schedule(options(3, 5), stored) == (
        {"num_epochs": 3, "num_iterations_per_epoch": 5}, "options")
    assert loss_gradients.run_schedule(options(epochs=3), stored) == (
        {"num_epochs": 3, "num_iterations_per_epoch": 250}, "checkpoint and options")


def test_checkpoint_schedule_is_used_when_no_option_is_given():
    stored = {"ssl_schedule": {"num_epochs": 8, "num_iterations_per_epoch": 250}}
    assert loss_gradients.run_schedule(options(), stored) == (
        {"num_epochs": 8, "num_iterations_per_epoch": 250}, "checkpoint")


def test_older_checkpoint_or_none_keeps_the_trainers_schedule():
    assert loss_gradients.run_schedule(options(), {"network_weights": {}}) == ({}, "the trainer's own")
    assert loss_gradients.run_schedule(options(), None) == ({}, "the trainer's own")
