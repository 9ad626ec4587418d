import math

import pytest

from nnunet_ssl.ramps import linear_rampup, sigmoid_rampup


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(250, 100) == 1.0
    assert sigmoid_rampup(-3, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(7, 0) == 1.0


def test_linear_rampup_values():
    assert linear_rampup(25, 100) == 0.25
    assert linear_rampup(200, 100) == 1.0
    assert linear_rampup(0, 0) == 1.0
