"""progress_ssl.png: every logged key of every trainer gets a readable panel title."""
import matplotlib

matplotlib.use("agg")

import pytest

from nnunet_ssl.diagnostics import SSL_LOG_TITLES, plot_ssl_progress, ssl_panel_title
from nnunet_ssl.trainers import (nnUNetTrainerBoCLIS, nnUNetTrainerCDR, nnUNetTrainerCRLN, nnUNetTrainerMeanTeacher,
                                 nnUNetTrainerUGPL)
from nnunet_ssl.trainers.self_training import nnUNetTrainerSelfTraining


@pytest.mark.parametrize("trainer", [nnUNetTrainerMeanTeacher, nnUNetTrainerCRLN, nnUNetTrainerCDR,
                                     nnUNetTrainerBoCLIS, nnUNetTrainerUGPL, nnUNetTrainerSelfTraining])
def test_every_logged_key_has_a_title(trainer):
    missing = [k for k in trainer.ssl_log_keys if k not in SSL_LOG_TITLES]
    assert not missing, f"{trainer.__name__}: add titles for {missing} to SSL_LOG_TITLES"


def test_titles():
    assert ssl_panel_title("nce_negative_share") == "InfoNCE: share of regions that are negatives (0 = inert)"
    assert ssl_panel_title("reliable_voxels_c1") == "UGPL: prototype module, reliable voxels of class 1"
    assert ssl_panel_title("proto_candidates_c0") == "UGPL: prototype module, uncertain voxels of class 0"
    assert ssl_panel_title("something_new") == "something_new"      # unknown keys stay readable as logged
    assert ssl_panel_title("other_c1") == "other_c1"


def test_plot_uses_titles(tmp_path, monkeypatch):
    import matplotlib.axes
    seen = []
    original = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda ax, label, *a, **k: (seen.append(label), original(ax, label, *a, **k))[1])
    out = tmp_path / "progress_ssl.png"
    plot_ssl_progress({"unsup_loss": [1.0, 0.5], "nce_negative_share": [0.1, 0.07], "empty": []},
                      ("unsup_loss", "nce_negative_share", "empty"), str(out))
    assert out.is_file()
    assert seen == ["Unlabelled loss (weighted)", "InfoNCE: share of regions that are negatives (0 = inert)"]
