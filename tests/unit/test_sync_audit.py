"""The host-sync audit records what makes a GPU step wait for the device, and the shared loss helpers make none;
the two loaders of a semi-supervised trainer share nnU-Net's augmentation workers."""
import os

import pytest
import torch
from torch.nn import functional as F

from nnunet_ssl.diagnostics import mean_foreground_dice, pseudo_label_dice
from nnunet_ssl.losses.one_hot import one_hot
from nnunet_ssl.losses.prototypes import draw_members, sample_class_voxels
from nnunet_ssl.losses.supervised_contrastive import supervised_contrastive_loss
from nnunet_ssl.sync_marker import host_only
from nnunet_ssl.trainers.base import nnUNetTrainerSSL
from nnunet_ssl.trainers.boclis import ClassMemoryQueue

from conftest import load_script

HostSyncAudit = load_script("scripts/sync_audit.py").HostSyncAudit  # a dev tool, not shipped


def operations(audit):
    return [op for op, _ in audit.events]


def test_audit_records_each_kind_of_sync_with_its_location():
    x = torch.randn(4, 5)
    mask = x > 0
    with HostSyncAudit() as audit:
        x.sum().item()
        float(x.max())
        torch.nonzero(mask)
        x[mask]
        y = x.clone()
        y[mask] = 0.0
        torch.unique(torch.tensor([1, 2, 2]))
        x.cpu()
        x.tolist()
        torch.tensor([1.0, 2.0], device=x.device)
    ops = operations(audit)
    assert ops.count("_local_scalar_dense") == 2
    assert "nonzero" in ops and "index.Tensor with a boolean mask" in ops
    assert any(op.startswith("index_put") and "boolean" in op for op in ops)
    assert any("unique" in op for op in ops)
    assert {"Tensor.cpu", "Tensor.tolist", "torch.tensor(device=...)"} <= set(ops)
    assert all(where.startswith("test_sync_audit.py:") for _, where in audit.events)
    assert "test_audit_records_each_kind_of_sync_with_its_location" in audit.format()


def test_audit_ignores_device_only_work_and_host_only_blocks():
    x = torch.randn(4, 5, requires_grad=True)
    mask = x.detach() > 0
    with HostSyncAudit() as audit:
        y = torch.where(mask, x, 0.0) * 2 + x.masked_fill(mask, 1.0)
        y = y[torch.tensor([0, 2])]       # integer indexing needs no count
        y.sum().backward()
        with host_only():
            torch.rand(()).item()          # e.g. a random parameter drawn with a CPU generator
    assert audit.events == [] and audit.format() == "none"


def test_one_hot_matches_functional_one_hot_and_leaves_unlabelled_voxels_empty():
    labels = torch.tensor([[0, 2, 1], [-1, 1, 2]])
    with HostSyncAudit() as audit:
        encoded = one_hot(labels, 3)
    assert audit.events == []
    assert encoded.shape == (2, 3, 3) and encoded.dtype == torch.float32
    reference = F.one_hot(labels.clamp_min(0), 3).movedim(-1, 1).float()
    assert torch.equal(encoded[0], reference[0])
    assert encoded[1, :, 0].tolist() == [0.0, 0.0, 0.0]  # -1: no class
    assert torch.equal(encoded[1, :, 1:], reference[1, :, 1:])
    assert torch.equal(one_hot(labels, 3, dim=-1), reference.movedim(1, -1) * (labels >= 0)[..., None])


def test_pseudo_label_dice_counts_only_known_voxels_without_syncs():
    pred = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0]])
    truth = torch.tensor([[1, 0, 0, 1], [-1, -1, -1, -1]])  # second sample: no hidden reference
    with HostSyncAudit() as audit:
        dice = pseudo_label_dice(pred, truth, 2)
        confident_only = pseudo_label_dice(pred, truth, 2, valid=torch.tensor([[True, False, True, True]] * 2))
    assert audit.events == []
    assert dice.item() == pytest.approx(2 * 2 / (3 + 2))     # sample 0: |P∩T| = 2, |P| = 3, |T| = 2
    assert confident_only.item() == pytest.approx(1.0)        # the false positive is masked out
    known = truth >= 0
    assert dice.item() == pytest.approx(mean_foreground_dice(pred[known], truth[known], 2).item())
    assert torch.isnan(pseudo_label_dice(pred, None, 2))


def test_contrastive_loss_and_memory_queue_make_no_syncs():
    torch.manual_seed(0)
    z = torch.randn(6, 4, requires_grad=True)
    classes = torch.tensor([0, 1, 0, 1, 1, 0])
    queue = ClassMemoryQueue(num_classes=2, size=4, dim=4)
    with HostSyncAudit() as audit:
        same = classes[:, None] == classes[None, :]
        not_self = ~torch.eye(6, dtype=torch.bool)
        loss = supervised_contrastive_loss(z, z, not_self, same & not_self, 0.1)
        loss.backward()
        queue.push(z, classes)
        queue.slots()
    assert audit.events == []
    assert z.grad is not None and queue.filled.sum().item() == 6


class _Stub:
    """Just what augmentation_worker_counts reads."""

    def __init__(self, batch_size, unlabeled, mode):
        self.batch_size, self._unlabeled, self.augmentation_workers = batch_size, unlabeled, mode

    def unlabeled_batch_size_per_step(self):
        return self._unlabeled


@pytest.mark.parametrize("budget, batch, unlabeled, mode, expected", [
    ("12", 2, 2, "shared", (6, 6)),
    ("12", 2, 4, "shared", (4, 8)),
    ("1", 2, 2, "shared", (1, 1)),         # each stream needs a worker
    ("0", 2, 2, "shared", (0, 0)),         # in-process loading stays in-process
    ("12", 2, 2, "per_stream", (12, 12)),
])
def test_augmentation_workers_are_shared_between_the_streams(monkeypatch, budget, batch, unlabeled, mode,
                                                              expected):
    monkeypatch.setenv("nnUNet_n_proc_DA", budget)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # nnU-Net caps the budget at the CPU count
    assert nnUNetTrainerSSL.augmentation_worker_counts(_Stub(batch, unlabeled, mode)) == expected


def test_augmentation_workers_setting_is_checked(monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "4")
    with pytest.raises(ValueError, match="augmentation_workers"):
        nnUNetTrainerSSL.augmentation_worker_counts(_Stub(2, 2, "everything"))


def test_sample_class_voxels_takes_exact_counts_without_replacement_and_without_syncs():
    torch.manual_seed(0)
    labels = torch.tensor([[0] * 10 + [1] * 7 + [2] * 3 + [-1] * 4])      # 24 voxels
    with HostSyncAudit() as audit:
        indices, taken = sample_class_voxels(labels, 3, 0.5)
    assert audit.events == []
    assert indices.shape == taken.shape == (3, 12)                         # floor(0.5 · 24)
    assert taken.sum(1).tolist() == [5, 3, 1]                              # floor(0.5 · 10 / 7 / 3)
    flat = labels.reshape(-1)
    for c in range(3):
        chosen = indices[c][taken[c]]
        assert (flat[chosen] == c).all() and len(set(chosen.tolist())) == len(chosen)
    # uniform over the class: every class-1 voxel is drawn about equally often over many samples
    hits = torch.zeros(24)
    for _ in range(700):
        indices, taken = sample_class_voxels(labels, 3, 0.5)
        hits[indices[1][taken[1]]] += 1
    assert ((hits[10:17] > 240) & (hits[10:17] < 360)).all() and hits[:10].sum() == 0  # expected 700 · 3/7 = 300
    with pytest.raises(ValueError, match="fraction"):
        sample_class_voxels(labels, 3, 0.0)


def test_draw_members_draws_with_replacement_from_each_row_without_syncs():
    torch.manual_seed(0)
    members = torch.tensor([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    with HostSyncAudit() as audit:
        index, non_empty = draw_members(members, 3000)
    assert audit.events == []
    assert non_empty.tolist() == [True, False, True] and index.shape == (3, 3000)
    counts = torch.bincount(index[0], minlength=5).tolist()
    assert counts[0] == counts[2] == 0 and all(900 < counts[k] < 1100 for k in (1, 3, 4))
    assert set(index[2].tolist()) == {0}


def test_the_trainers_do_not_import_the_audit():
    """Runtime code carries only the dependency-free marker; the audit is a tool of the benchmarks and tests."""
    import subprocess
    import sys
    code = "import sys, nnunet_ssl.trainers; print(sorted(m for m in sys.modules if 'sync_audit' in m))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8")
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr
