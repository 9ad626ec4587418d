"""Find the places where training code makes the host wait for the GPU, on any device (the CPU included).

A development tool of the benchmarks and tests; runtime code only carries the dependency-free marker
``nnunet_ssl.sync_marker.host_only``.

A CUDA step stays fast only while the host can queue kernels ahead of the GPU. Anything that needs a value or a
size computed on the device stops the host until the GPU has caught up: ``.item()``/``float()``/``bool()`` of a
tensor, ``nonzero`` (also behind boolean-mask indexing and one-argument ``torch.where``), ``masked_select``,
``unique``, copies to the host (``.cpu()``, ``.tolist()``), and blocking host-to-device copies of Python data
(``torch.tensor(..., device=...)``). ``torch.cuda.set_sync_debug_mode`` reports these only on a GPU; this audit
records the same operations at torch's dispatch level, so the CPU test suite can check that loss code is free of
them.

    with HostSyncAudit() as audit:
        trainer.compute_losses(...)
    audit.events  # [(operation, 'file.py:line in function'), ...]

On a CPU every tensor lives on the host, so the audit cannot tell host-side bookkeeping (random parameters drawn
with a CPU generator, a batch before it is moved) from device work. Code that deliberately computes on host tensors
says so with ``with host_only():``, which the audit skips; everything else counts. A blocking ``.to(device)`` of a
host tensor is only recognisable on a GPU run; on a CPU, ``torch.tensor``/``torch.as_tensor`` with an explicit
device stand in for it.
"""
import os
import traceback
from collections import Counter
from typing import List, Tuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from nnunet_ssl.sync_marker import host_only, inside_host_only  # noqa: F401 (host_only: re-exported)


def _overloads(*names: str) -> dict:
    """{aten overload: name} for the overloads this torch version has."""
    found = {}
    for name in names:
        packet, _, overload = name.partition(".")
        op = getattr(torch.ops.aten, packet, None)
        op = getattr(op, overload or "default", None) if op is not None else None
        if op is not None:
            found[op] = name
    return found


# outputs whose value or size depends on tensor contents: the host must wait for the device
_VALUE_DEPENDENT = _overloads("_local_scalar_dense", "is_nonzero", "nonzero", "masked_select", "_unique",
                              "_unique2", "unique_dim", "unique_consecutive", "repeat_interleave.Tensor")
# indexing ops that turn a boolean index into positions (nonzero) before they run
_INDEXING = _overloads("index.Tensor", "index_put", "index_put_", "_index_put_impl_")
_HOST_COPY_METHODS = {torch.Tensor.cpu: "Tensor.cpu", torch.Tensor.tolist: "Tensor.tolist",
                      torch.Tensor.numpy: "Tensor.numpy"}
_FACTORIES = {torch.tensor: "torch.tensor(device=...)", torch.as_tensor: "torch.as_tensor(device=...)"}

_HERE = os.path.abspath(__file__)
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


def _caller() -> str:
    """'file.py:line in function' of the innermost frame outside torch and this module."""
    for frame in reversed(traceback.extract_stack()):
        filename = os.path.abspath(frame.filename)
        if filename != _HERE and not filename.startswith(_TORCH_DIR):
            return f"{os.path.basename(filename)}:{frame.lineno} in {frame.name}"
    return "<unknown>"


def _has_bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


class _DispatchRecorder(TorchDispatchMode):
    def __init__(self, events: list):
        super().__init__()
        self.events = events

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if inside_host_only():
            pass
        elif func in _VALUE_DEPENDENT:
            self.events.append((_VALUE_DEPENDENT[func], _caller()))
        elif func in _INDEXING and len(args) > 1 and _has_bool_index(args[1]):
            self.events.append((f"{_INDEXING[func]} with a boolean mask", _caller()))
        return func(*args, **kwargs)


class _FunctionRecorder(TorchFunctionMode):
    def __init__(self, events: list):
        super().__init__()
        self.events = events

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if inside_host_only():
            pass
        elif func in _HOST_COPY_METHODS:
            self.events.append((_HOST_COPY_METHODS[func], _caller()))
        elif func is torch.Tensor.to and _crosses_devices_blocking(args[0], args[1:], kwargs):
            self.events.append(("blocking Tensor.to between host and device", _caller()))
        elif func in _FACTORIES and kwargs.get("device") is not None and not (
                args and isinstance(args[0], torch.Tensor) and args[0].device == torch.device(kwargs["device"])):
            self.events.append((_FACTORIES[func], _caller()))
        return func(*args, **kwargs)


def _crosses_devices_blocking(tensor, args, kwargs) -> bool:
    """``.to`` that copies between the host and another device without ``non_blocking`` (seen on GPU runs only)."""
    target = kwargs.get("device", args[0] if args else None)
    if not isinstance(target, (str, torch.device)) or kwargs.get("non_blocking", False):
        return False
    return (torch.device(target).type == "cpu") != (tensor.device.type == "cpu")


class HostSyncAudit:
    """Context manager that records every host-device synchronisation point (see the module docstring)."""

    def __init__(self):
        self.events: List[Tuple[str, str]] = []
        self._modes = (_FunctionRecorder(self.events), _DispatchRecorder(self.events))

    def __enter__(self):
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        return False

    def summary(self) -> Counter:
        """Counter of (operation, location) pairs."""
        return Counter(self.events)

    def format(self) -> str:
        return "\n".join(f"{n}× {op} at {where}" for (op, where), n in self.summary().most_common()) or "none"


def main(argv=None) -> int:
    """A library of the benchmarks and tests: ``-h`` (or no argument) prints what it does and how to use it."""
    import argparse
    parser = argparse.ArgumentParser(
        prog="sync_audit.py", formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__,
        epilog="Nothing to run on its own: scripts/benchmark_speed.py reports the count of the loss code\n"
               "(column 'host syncs in loss code') and the tests use HostSyncAudit directly.")
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
