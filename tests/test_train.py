"""Training samples: sequence-to-sequence sampling agrees with the one-target windows of the data layer."""

import numpy as np
import pandas as pd
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from xaiscope.core.errors import XaiscopeError
from xaiscope.core.train import HydroTrainConfig, _sequence_samples
from xaiscope.data.synthetic import synthetic_basin
from xaiscope.data.windows import compute_stats, make_windows


@pytest.fixture(scope="module")
def basin():
    ds = synthetic_basin(seed=11, start="1990-01-01", end="1993-12-31")
    q = ds.qobs.values.copy()
    q[500:520] = np.nan  # a gap in the observations
    ds["qobs"] = ds.qobs.copy(data=q)
    return ds


def _cfg(**kw):
    return HydroTrainConfig(window=90, train_period=("1990-06-01", "1992-12-31"), **kw)


def test_one_target_per_window_equals_make_windows(basin):
    cfg = _cfg(predict_last_n=1)
    stats = compute_stats(basin, [*cfg.inputs, cfg.target], cfg.train_period)
    x_all, y_all, starts = _sequence_samples(basin, cfg, stats)
    ref = make_windows(basin, inputs=cfg.inputs, target=cfg.target, period=cfg.train_period, window=cfg.window,
                       stats=stats)
    x = sliding_window_view(x_all, cfg.window, axis=0)[starts].transpose(0, 2, 1)
    y = y_all[starts + cfg.window - 1]
    ends = pd.DatetimeIndex(basin.time.values[starts + cfg.window - 1])
    assert np.array_equal(ends.values, ref.dates)
    np.testing.assert_allclose(x, ref.x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y, ref.y, rtol=1e-6, atol=1e-6)


def test_sequence_targets_cover_every_training_day_with_a_full_window(basin):
    cfg = _cfg(predict_last_n=60)
    stats = compute_stats(basin, [*cfg.inputs, cfg.target], cfg.train_period)
    x_all, y_all, starts = _sequence_samples(basin, cfg, stats)
    L, P = cfg.window + cfg.predict_last_n - 1, cfg.predict_last_n
    times = pd.DatetimeIndex(basin.time.values)
    covered = np.zeros(len(times), bool)
    for s in starts:
        block = np.arange(s + L - P, s + L)
        assert block[0] - s >= cfg.window - 1  # every target has a full window of inputs before it
        assert times[block[-1]] <= pd.Timestamp(cfg.train_period[1])
        covered[block] = True
    want = np.isfinite(basin.qobs.values) & (times >= "1990-06-01") & (times <= "1992-12-31")
    want &= np.arange(len(times)) >= cfg.window - 1
    assert covered[want].all()
    assert np.isnan(y_all[~want]).all() and np.isfinite(y_all[want]).all()


def test_too_short_record_is_a_clear_error(basin):
    cfg = HydroTrainConfig(window=365, predict_last_n=365, train_period=("1990-01-01", "1990-12-31"))
    stats = compute_stats(basin, [*cfg.inputs, cfg.target], cfg.train_period)
    with pytest.raises(XaiscopeError, match="no training sequences"):
        _sequence_samples(basin, cfg, stats)
