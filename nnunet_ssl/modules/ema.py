"""Exponential-moving-average teacher of a student network."""
import copy

import torch
from torch import nn


def unwrap_network(network: nn.Module) -> nn.Module:
    """Strip DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers; parameters stay shared."""
    if isinstance(network, torch.nn.parallel.DistributedDataParallel):
        network = network.module
    if isinstance(network, torch._dynamo.eval_frame.OptimizedModule):
        network = network._orig_mod
    return network


def ema_decay_at(step: int, decay: float) -> float:
    """Decay with warm-up, ``min(1 - 1/(step + 1), decay)``: early teachers follow the student closely."""
    return min(1.0 - 1.0 / (step + 1), decay)


class EMATeacher(nn.Module):
    """A frozen deep copy of the (unwrapped) student whose parameters follow the student's as an EMA.

    ``update(student)`` is called after every optimizer step; ``step`` counts the updates so far and is part of
    the state dict, so a resumed run continues with the same decay. Buffers (e.g. BatchNorm statistics) are
    copied from the student, since nnU-Net's InstanceNorm has none and BatchNorm statistics are not learnt.
    """

    def __init__(self, student: nn.Module, decay: float = 0.99):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(unwrap_network(student))
        self.module.requires_grad_(False)
        # deepcopy also copies forward hooks (e.g. feature taps on the student): the teacher must not fire them;
        # a network that taps its own decoder (CRLNNet) attaches a fresh tap to the copy
        for m in self.module.modules():
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
        for m in self.module.modules():
            if hasattr(m, "attach_feature_tap"):
                m.attach_feature_tap()
        self.step = 0  # kept on the host (no device sync per update) and saved through get_extra_state

    def get_extra_state(self):
        return {"step": self.step, "decay": self.decay}

    def set_extra_state(self, state):
        self.step = int(state["step"])
        self.decay = float(state["decay"])

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, student: nn.Module) -> float:
        """EMA step ``θ_t ← α θ_t + (1 - α) θ_s`` in fp32; returns the decay α used."""
        alpha = ema_decay_at(self.step, self.decay)
        student = unwrap_network(student)
        t_params = list(self.module.parameters())
        s_params = [p.detach() for p in student.parameters()]
        if len(t_params) != len(s_params):
            raise RuntimeError("teacher and student have different parameter lists")
        # one fused kernel per dtype group instead of a Python loop over hundreds of tensors
        torch._foreach_mul_(t_params, alpha)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - alpha)
        for t_buf, s_buf in zip(self.module.buffers(), student.buffers()):
            t_buf.copy_(s_buf)
        self.step += 1
        return alpha
