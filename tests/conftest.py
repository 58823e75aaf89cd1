"""Shared fixtures: a fixed-seed generator per test, so every statistical check is repeatable."""

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(20261126)
