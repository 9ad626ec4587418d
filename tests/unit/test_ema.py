import pytest
import torch
from torch import nn

from nnunet_ssl.modules.ema import EMATeacher, ema_decay_at, unwrap_network


@pytest.mark.parametrize("step,expected", [(0, 0.0), (1, 0.5), (9, 0.9), (99, 0.99), (1000, 0.99)])
def test_decay_warmup(step, expected):
    assert ema_decay_at(step, 0.99) == pytest.approx(expected)


def test_update_values_and_no_gradients():
    student = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        student.weight.fill_(2.0)
    teacher = EMATeacher(student, decay=0.99)
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        student.weight.fill_(4.0)
    assert teacher.update(student) == 0.0          # step 0: teacher = student
    assert teacher.module.weight.item() == pytest.approx(4.0)
    with torch.no_grad():
        student.weight.fill_(0.0)
    assert teacher.update(student) == 0.5          # step 1: 0.5 * 4 + 0.5 * 0
    assert teacher.module.weight.item() == pytest.approx(2.0)
    with torch.no_grad():
        student.weight.fill_(8.0)
    teacher.update(student)                        # step 2: 2/3 * 2 + 1/3 * 8 = 4
    assert teacher.module.weight.item() == pytest.approx(4.0)
    assert teacher.step == 3
    # a loss through the teacher never reaches teacher parameters
    out = teacher(torch.ones(1, 1)).sum()
    assert not out.requires_grad
    assert teacher.module.weight.grad is None


def test_buffers_copied_and_state_roundtrip():
    student = nn.BatchNorm1d(2)
    teacher = EMATeacher(student, 0.9)
    student.running_mean.fill_(3.0)
    teacher.update(student)
    assert torch.equal(teacher.module.running_mean, student.running_mean)
    state = teacher.state_dict()
    other = EMATeacher(nn.BatchNorm1d(2), 0.5)
    other.load_state_dict(state)
    assert other.step == 1 and other.decay == 0.9
    assert torch.equal(other.module.running_mean, teacher.module.running_mean)


def test_unwrap_compiled_module_shares_parameters():
    net = nn.Linear(2, 2)
    compiled = torch.compile(net)
    assert unwrap_network(compiled) is net
    teacher = EMATeacher(compiled, 0.99)
    assert isinstance(teacher.module, nn.Linear)


def test_invalid_decay():
    with pytest.raises(ValueError, match="decay"):
        EMATeacher(nn.Linear(1, 1), 1.0)


def test_teacher_does_not_inherit_student_hooks():
    student = nn.Sequential(nn.Linear(2, 2))
    calls = []
    student[0].register_forward_hook(lambda m, i, o: calls.append(1))
    teacher = EMATeacher(student, 0.9)
    teacher(torch.ones(1, 2))
    assert calls == []
    student(torch.ones(1, 2))
    assert calls == [1]
