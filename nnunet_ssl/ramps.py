"""Loss-weight schedules shared by every semi-supervised trainer."""
import math


def sigmoid_rampup(current: float, rampup_length: float) -> float:
    """Sigmoid ramp-up ``exp(-5 (1 - x)^2)`` with ``x = clip(current / rampup_length, 0, 1)`` (Laine & Aila 2017).

    A ramp length of 0 means "no ramp": full weight from the first step.
    """
    if rampup_length <= 0:
        return 1.0
    x = min(max(current, 0.0), rampup_length) / rampup_length
    return float(math.exp(-5.0 * (1.0 - x) ** 2))


def linear_rampup(current: float, rampup_length: float) -> float:
    """Linear ramp from 0 to 1 over ``rampup_length`` steps."""
    if rampup_length <= 0:
        return 1.0
    return float(min(max(current, 0.0), rampup_length) / rampup_length)
