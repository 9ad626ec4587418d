"""``host_only()``: marks code that deliberately works on host tensors (random parameters drawn with a CPU
generator, a batch before it is moved to the device).

The marker only counts how deep the current thread is inside such blocks; it costs nothing at run time and needs
no torch. The host-sync audit of the benchmarks and tests (``scripts/sync_audit.py``) skips what it marks.
"""
import contextlib
import threading

_STATE = threading.local()


@contextlib.contextmanager
def host_only():
    """Marks code that works on host tensors only (e.g. random parameters from a CPU generator)."""
    _STATE.depth = getattr(_STATE, "depth", 0) + 1
    try:
        yield
    finally:
        _STATE.depth -= 1


def inside_host_only() -> bool:
    """Whether the current thread runs inside a ``host_only()`` block."""
    return getattr(_STATE, "depth", 0) > 0
