"""Shared, generic fixtures of the test suite."""
from __future__ import annotations

import pytest

from xaiscope.assets import ASSETS


@pytest.fixture(scope="session")
def camels_root():
    """The shipped CAMELS-US folder (original layout) with basin 01031500."""
    return ASSETS / "camels_us"


@pytest.fixture(scope="session")
def demo_ds():
    """Basin 01031500 as a basin Dataset (loaded once per session; do not modify it in place)."""
    from xaiscope.data.camels import demo_basin

    return demo_basin()


@pytest.fixture(scope="session")
def small_synthetic_ds():
    """A 4-year synthetic basin (seed 7), small enough for fast tests (do not modify it in place)."""
    from xaiscope.data.synthetic import synthetic_basin

    return synthetic_basin(seed=7, start="2000-01-01", end="2003-12-31")
