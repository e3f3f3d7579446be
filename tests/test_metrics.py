"""NSE and KGE against independent computations (scikit-learn's R² and the standard library)."""

import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import r2_score

from xaiscope.core.metrics import kge, kge_components, nse

finite = st.floats(min_value=0.01, max_value=500, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=3, max_size=60))
def test_nse_equals_r2_score(pairs):
    obs, sim = map(np.array, zip(*pairs))
    if np.ptp(obs) < 1e-6:
        assert math.isnan(nse(obs, sim)) or np.var(obs) > 0
        return
    # NSE is the coefficient of determination with the observations as truth
    assert nse(obs, sim) == pytest.approx(r2_score(obs, sim), rel=1e-9, abs=1e-9)


def _kge_slow(obs, sim):
    r = statistics.correlation(list(obs), list(sim))
    alpha = statistics.pstdev(sim) / statistics.pstdev(obs)
    beta = statistics.fmean(sim) / statistics.fmean(obs)
    return 1 - math.sqrt((r - 1) ** 2 + (alpha - 1) ** 2 + (beta - 1) ** 2), r, alpha, beta


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=3, max_size=60))
def test_kge_against_statistics_module(pairs):
    obs, sim = map(np.array, zip(*pairs))
    if np.ptp(obs) < 1e-3 or np.ptp(sim) < 1e-3:
        return
    k, r, a, b = _kge_slow(obs, sim)
    c = kge_components(obs, sim)
    assert c["kge"] == pytest.approx(k, rel=1e-7, abs=1e-9)
    assert (c["r"], c["alpha"], c["beta"]) == pytest.approx((r, a, b), rel=1e-7, abs=1e-9)


def test_nan_pairs_dropped_and_perfect_scores():
    obs = np.array([1.0, 2.0, np.nan, 4.0, 3.0])
    sim = np.array([1.0, 2.0, 5.0, 4.0, np.nan])
    assert nse(obs, sim) == 1.0 and kge(obs, sim) == 1.0
    assert nse(obs, np.full(5, np.nanmean(obs))) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="differ in length"):
        nse([1, 2], [1, 2, 3])
