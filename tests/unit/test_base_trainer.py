"""The base trainer's step, views and validation wiring on tiny modules (no plans, no loaders)."""
import pytest
import torch
from torch import nn

from nnunet_ssl.augment.strong import StrongAugmentation
from nnunet_ssl.modules.ema import EMATeacher
from nnunet_ssl.trainers.mean_teacher import nnUNetTrainerMeanTeacher


class SignClassifier(nn.Module):
    """Two-class logits ±scale·(x − offset): the label is (x > offset), so which input and which network a
    prediction came from is readable."""

    def __init__(self, scale: float, offset: float = 0.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))
        self.register_buffer("offset", torch.tensor(offset))

    def forward(self, x):
        return torch.cat((-(x - self.offset), x - self.offset), dim=1) * self.scale


def bare_mean_teacher(student_scale=1.0, teacher_scale=1.0, student_offset=0.0, teacher_offset=0.0, **attrs):
    cls = type("BareMeanTeacher", (nnUNetTrainerMeanTeacher,), dict(attrs))
    t = object.__new__(cls)
    t.network = SignClassifier(student_scale, student_offset)
    t.teachers = {"teacher": EMATeacher(t.network)}
    with torch.no_grad():
        t.teachers["teacher"].module.scale.fill_(teacher_scale)
        t.teachers["teacher"].module.offset.fill_(teacher_offset)
    t.loss = lambda output, target: output.sum() * 0.0
    t.label_manager = type("LM", (), {"num_segmentation_heads": 2})()
    t.device = torch.device("cpu")
    t.is_ddp = False
    t.ssl_step, t.num_epochs, t.num_iterations_per_epoch = 0, 1, 10
    t._compiled_modules, t._compile_modules = {}, False
    return t


def test_mean_teacher_labels_come_from_the_teacher_on_the_weak_view(monkeypatch):
    """Pseudo-labels: the teacher's argmax on the weak view. The four (network, view) pairs give four different
    label maps here, so no two wrong choices can cancel: the teacher thresholds at 0 and the student at 5; the
    strong copy is the weak view + 10. Teacher on weak: (weak > 0), both classes; student on weak: all 0; teacher
    or student on strong: all 1."""
    import nnunet_ssl.trainers.mean_teacher as mt
    seen = []
    real = mt.weighted_cross_entropy
    monkeypatch.setattr(mt, "weighted_cross_entropy", lambda logits, labels, w: (seen.append(labels), real(logits, labels, w))[1])
    t = bare_mean_teacher(student_scale=1.0, teacher_scale=50.0, student_offset=5.0, teacher_offset=0.0,
                          confidence_threshold=0.5,
                          strong_augmentation=StrongAugmentation(p_cutmix=0, p_brightness=0, p_contrast=0, p_noise=0))
    torch.manual_seed(0)
    weak = torch.randn(2, 1, 4, 4, 4)
    t._strong_input_u = weak + 10  # the loader's strong copy
    data_l, target_l = torch.randn(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4)
    expected = (weak[:, 0] > 0).long()
    assert 0 < expected.float().mean() < 1
    wrong = {"student on weak": (weak[:, 0] > 5).long(), "teacher on strong": (weak[:, 0] + 10 > 0).long(),
             "student on strong": (weak[:, 0] + 10 > 5).long()}
    assert all(not torch.equal(expected, w) for w in wrong.values())
    t.compute_losses(data_l, target_l, weak, None)
    assert torch.equal(seen[-1], expected)


def test_strong_view_starts_from_the_loaders_copy():
    t = bare_mean_teacher(strong_augmentation=StrongAugmentation(p_cutmix=0, p_brightness=0, p_contrast=0,
                                                                 p_noise=0))
    weak, copy = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    assert torch.equal(t.strong_view(weak)[0], weak)
    t._strong_input_u = copy
    assert torch.equal(t.strong_view(weak)[0], copy)


def test_step_skips_an_optimizer_without_gradients_under_a_grad_scaler():
    """A second network that the loss leaves out (CDR _singleNetwork) must not reach GradScaler.step, which raises
    'No inf checks were recorded for this optimizer'."""
    t = bare_mean_teacher()
    used, unused = nn.Linear(2, 1), nn.Linear(2, 1)
    t.optimizer = torch.optim.SGD(used.parameters(), lr=0.1)
    t.extra_modules = nn.ModuleDict()
    other = torch.optim.SGD(unused.parameters(), lr=0.1)
    t.optimizers_for_main_loss = lambda: [t.optimizer, other]
    t.grad_scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    before_used, before_unused = used.weight.detach().clone(), unused.weight.detach().clone()
    t.backward_and_step(used(torch.ones(1, 2)).sum())
    assert not torch.equal(used.weight, before_used) and torch.equal(unused.weight, before_unused)
    # what happened before the fix: stepping the gradient-free optimizer through the scaler raises
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(used(torch.ones(1, 2)).sum()).backward()
    with pytest.raises(AssertionError, match="No inf checks"):
        scaler.step(other)


def test_online_validation_scores_the_exported_teacher(monkeypatch):
    """checkpoint_best is chosen by nnU-Net's online validation, which must run what is exported (the teacher)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    t = bare_mean_teacher(student_scale=-1.0, teacher_scale=1.0)
    x = torch.randn(2, 1, 4, 4)
    assert torch.equal(t.validation_forward(x), t.teachers["teacher"].module(x))
    seen = []
    original = t.network
    # nnU-Net's validation_step evaluates self.network(data): record what it would evaluate
    monkeypatch.setattr(nnUNetTrainer, "validation_step", lambda self, batch: seen.append(self.network(batch["data"])))
    t.validation_step({"data": x})
    assert torch.equal(seen[0], t.teachers["teacher"].module(x)) and t.network is original
    t.export_weights = "student"
    assert torch.equal(t.validation_forward(x), original(x))
    # exporting the student, validation runs the trained network itself (and does not call itself forever)
    t.validation_step({"data": x})
    assert torch.equal(seen[-1], original(x)) and t.network is original


def _checkpointing_mean_teacher():
    """A bare Mean Teacher with what nnU-Net's save_checkpoint/load_checkpoint read and write."""
    t = bare_mean_teacher(student_scale=2.0, teacher_scale=3.0)
    t.local_rank, t.disable_checkpointing, t.was_initialized = 0, False, True
    t.optimizer = torch.optim.SGD(t.network.parameters(), lr=0.1, momentum=0.9)
    t.grad_scaler = None
    t.logger = type("Logger", (), {"get_checkpoint": lambda self: {"train_losses": [1.0]},
                                   "load_checkpoint": lambda self, c: setattr(self, "loaded", c)})()
    t._best_ema, t.current_epoch, t.inference_allowed_mirroring_axes = 0.5, 4, (0, 1)
    t.my_init_kwargs = {"configuration": "3d_fullres", "fold": 0}
    t.extra_modules, t.extra_optimizers, t.ssl_step, t.export_weights = nn.ModuleDict(), {}, 7, "teacher"
    t.print_to_log_file = lambda *args: None
    t.num_epochs, t.num_iterations_per_epoch = 8, 250
    return t


def test_checkpoint_keys_are_nnunets_plus_ours(tmp_path):
    """Our checkpoint is nnU-Net's (same keys, same values apart from the exported network) plus the
    semi-supervised keys: an nnU-Net release that changes its checkpoint fails here."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunet_ssl.trainers.base import SSL_CHECKPOINT_KEYS
    t = _checkpointing_mean_teacher()
    nnUNetTrainer.save_checkpoint(t, str(tmp_path / "stock.pth"))
    t.save_checkpoint(str(tmp_path / "ours.pth"))
    stock = torch.load(tmp_path / "stock.pth", weights_only=False)
    ours = torch.load(tmp_path / "ours.pth", weights_only=False)
    assert set(ours) == set(stock) | set(SSL_CHECKPOINT_KEYS)
    assert not set(stock) & set(SSL_CHECKPOINT_KEYS)
    for k in set(stock) - {"network_weights"}:
        assert repr(ours[k]) == repr(stock[k]), k
    assert ours["network_weights"]["scale"] == 3.0 and ours["student_weights"]["scale"] == 2.0  # teacher exported
    assert ours["ssl_schedule"] == {"num_epochs": 8, "num_iterations_per_epoch": 250}  # what the ramps ran over


def test_checkpoint_round_trip_and_stock_checkpoint(tmp_path):
    """--c restores student, teacher and step; a stock nnU-Net checkpoint (file or dict) loads the network and the
    teacher starts as a copy of it."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    t = _checkpointing_mean_teacher()
    t.save_checkpoint(str(tmp_path / "ours.pth"))
    nnUNetTrainer.save_checkpoint(t, str(tmp_path / "stock.pth"))  # the student as nnU-Net would write it
    u = _checkpointing_mean_teacher()
    with torch.no_grad():
        u.network.scale.fill_(0.0)
        u.teachers["teacher"].module.scale.fill_(0.0)
    u.ssl_step, u.current_epoch = 0, 0
    u.load_checkpoint(str(tmp_path / "ours.pth"))
    assert (u.network.scale.item(), u.teacher.module.scale.item(), u.ssl_step, u.current_epoch) == (2.0, 3.0, 7, 5)
    for source in (str(tmp_path / "stock.pth"), torch.load(tmp_path / "stock.pth", weights_only=False)):
        v = _checkpointing_mean_teacher()
        v.build_teachers = lambda v=v: {"teacher": EMATeacher(v.network)}
        v.load_checkpoint(source)
        assert v.network.scale.item() == 2.0 and v.teacher.module.scale.item() == 2.0 and v.current_epoch == 5
