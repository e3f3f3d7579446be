"""Sliding windows: against a slow per-window loop with pandas statistics, pandas/xarray gap filling, and
hypothesis over random NaN patterns, windows and periods."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from xaiscope.data.errors import DataError, DataParameterError
from xaiscope.data.windows import INPUTS, TARGET, compute_stats, make_windows, window_ending


def _reference(ds, inputs, target, period, window, stats=None):
    """Slow reference: one window per day of the period, statistics from pandas over the period."""
    frame = ds[list(inputs) + [target]].to_dataframe()
    start, end = (frame.index[0], frame.index[-1]) if period is None else map(pd.Timestamp, period)
    in_period = frame.loc[start:end]
    if stats is None:
        stats = {v: {"mean": in_period[v].mean(), "std": in_period[v].std(ddof=0)} for v in frame.columns}
    xs, ys, dates = [], [], []
    for k, day in enumerate(frame.index):
        if not start <= day <= end or k < window - 1 or np.isnan(frame[target].iloc[k]):
            continue
        block = frame[list(inputs)].iloc[k - window + 1:k + 1]
        xs.append(np.stack([(block[v].to_numpy() - stats[v]["mean"]) / stats[v]["std"] for v in inputs], axis=1))
        ys.append((frame[target].iloc[k] - stats[target]["mean"]) / stats[target]["std"])
        dates.append(day)
    return np.array(xs), np.array(ys), np.array(dates, dtype="datetime64[ns]"), stats


def _assert_matches(w, ref):
    x, y, dates, stats = ref
    assert w.x.dtype == np.float32 and w.y.dtype == np.float32
    assert w.x.shape == x.shape and w.y.shape == y.shape
    np.testing.assert_allclose(w.x, x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(w.y, y, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(w.dates, dates)
    for v, s in stats.items():
        assert w.stats[v]["mean"] == pytest.approx(s["mean"], rel=1e-12)
        assert w.stats[v]["std"] == pytest.approx(s["std"], rel=1e-12)


@pytest.fixture
def ds(small_synthetic_ds):
    return small_synthetic_ds.copy(deep=True)


def test_windows_match_slow_reference(ds):
    period = ("2001-01-01", "2002-06-30")
    w = make_windows(ds, period=period, window=60)
    _assert_matches(w, _reference(ds, INPUTS, TARGET, period, 60))
    assert w.inputs == INPUTS and w.target == TARGET and w.window == 60
    assert w.dates[0] == np.datetime64("2001-01-01")  # inputs before the period are used
    assert len(w) == len(pd.date_range(*period))


def test_first_window_at_record_start(ds):
    w = make_windows(ds, window=30)
    assert w.dates[0] == ds["time"].values[29]
    _assert_matches(w, _reference(ds, INPUTS, TARGET, None, 30))


def test_stats_from_training_period_only(ds):
    train = ("2000-01-01", "2001-12-31")
    stats = compute_stats(ds, ["prcp", "qobs"], train)
    frame = ds[["prcp", "qobs"]].to_dataframe().loc[train[0]:train[1]]
    for v in ("prcp", "qobs"):
        assert stats[v]["mean"] == pytest.approx(frame[v].mean(), rel=1e-12)
        assert stats[v]["std"] == pytest.approx(frame[v].std(ddof=0), rel=1e-12)
    train_w = make_windows(ds, period=train, window=30)
    test_w = make_windows(ds, period=("2002-01-01", "2003-12-31"), window=30, stats=train_w.stats)
    _assert_matches(test_w, _reference(ds, INPUTS, TARGET, ("2002-01-01", "2003-12-31"), 30, stats=train_w.stats))
    # the test period's own statistics differ: they were not used
    own = compute_stats(ds, ["qobs"], ("2002-01-01", "2003-12-31"))
    assert own["qobs"]["mean"] != pytest.approx(train_w.stats["qobs"]["mean"])


def test_nan_targets_are_dropped(ds):
    q = ds["qobs"].values
    q[[100, 101, 500, 1400]] = np.nan
    w = make_windows(ds, window=30)
    dropped = ds["time"].values[[100, 101, 500, 1400]]
    assert not np.isin(dropped, w.dates).any()
    assert len(w) == ds.sizes["time"] - 29 - 4
    _assert_matches(w, _reference(ds, INPUTS, TARGET, None, 30))


def test_nan_inputs_raise_naming_variable_and_dates(ds):
    ds["prcp"].values[[400, 402]] = np.nan
    with pytest.raises(DataError, match=r"'prcp' on 2 day\(s\): 2001-02-04, 2001-02-06.*nan_inputs='ffill'"):
        make_windows(ds, window=30)
    # a NaN input that no kept window uses is fine
    w = make_windows(ds, period=("2002-01-01", "2003-12-31"), window=30,
                     stats=compute_stats(ds, INPUTS + (TARGET,), ("2002-01-01", "2003-12-31")))
    assert w.dates[0] == np.datetime64("2002-01-01")
    # ... also when the only windows that would see it have no target
    ds["qobs"].values[400:400 + 40] = np.nan
    w = make_windows(ds, period=("2001-02-01", "2001-03-31"), window=5)
    assert not np.isin(ds["time"].values[400:440], w.dates).any()


@pytest.mark.parametrize("rule", ["ffill", "interpolate"])
def test_nan_fill_rules_match_pandas_and_xarray(ds, rule):
    holes = [300, 301, 302, 650, 1000]
    ds["srad"].values[holes] = np.nan
    ds["tmax"].values[[301, 900]] = np.nan
    w = make_windows(ds, window=40, nan_inputs=rule)   # statistics of the observed (unfilled) values
    stats = compute_stats(ds, INPUTS + (TARGET,))
    assert w.stats == stats
    filled = ds.copy(deep=True)
    for v in ("srad", "tmax"):
        if rule == "ffill":
            values = ds[v].values.copy()                                      # slow loop reference
            for k in range(1, values.size):
                if np.isnan(values[k]):
                    values[k] = values[k - 1]
            filled[v] = ("time", values)
        else:
            filled[v] = ds[v].interpolate_na("time", method="linear")
    ref = make_windows(filled, window=40, stats=stats)
    np.testing.assert_array_equal(w.x, ref.x)
    np.testing.assert_array_equal(w.y, ref.y)
    assert w.filled == {"srad": 5, "tmax": 2}
    if rule == "interpolate":
        mid = ds["srad"].values[299] + (ds["srad"].values[303] - ds["srad"].values[299]) * 2 / 4
        assert filled["srad"].values[301] == pytest.approx(mid)


def test_fill_rules_do_not_extrapolate(ds):
    ds["vp"].values[:3] = np.nan
    for rule in ("ffill", "interpolate"):
        with pytest.raises(DataError, match="'vp' on 3 day"):
            make_windows(ds, window=10, nan_inputs=rule)


def test_denormalise_target_round_trip(ds):
    w = make_windows(ds, window=30)
    back = w.denormalise_target(w.y)
    np.testing.assert_allclose(back, ds["qobs"].sel(time=w.dates).values, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(w.normalise_target(back), w.y, rtol=1e-5, atol=1e-5)


def test_window_ending_equals_make_windows(ds):
    w = make_windows(ds, window=50)
    for k in (0, 17, len(w) - 1):
        x = window_ending(ds, w.dates[k], stats=w.stats, window=50)
        assert x.shape == (1, 50, len(INPUTS)) and x.dtype == np.float32
        np.testing.assert_array_equal(x[0], w.x[k])
    with pytest.raises(DataParameterError, match="only 10 days of inputs"):
        window_ending(ds, ds["time"].values[9], stats=w.stats, window=50)
    with pytest.raises(DataParameterError, match="not a day of the data"):
        window_ending(ds, "1990-01-01", stats=w.stats, window=50)
    with pytest.raises(DataParameterError, match="stats"):
        window_ending(ds, w.dates[0], stats=None, window=50)
    ds["tmin"].values[60] = np.nan
    with pytest.raises(DataError, match="'tmin' on 1 day"):
        window_ending(ds, ds["time"].values[70], stats=w.stats, window=50)


def test_windows_on_the_real_demo_basin(demo_ds):
    train = ("1980-10-01", "1995-09-30")
    w = make_windows(demo_ds, period=train, window=365)
    assert w.x.shape[1:] == (365, 5)
    # qobs before 1980-10-01 is NaN: the first window ends on the first day with 365 days of forcing
    assert w.dates[0] == np.datetime64("1980-12-30")
    q = demo_ds["qobs"].sel(time=slice(*train))
    assert len(w) == int(q.isel(time=slice(364 - 274, None)).notnull().sum())
    k = 1234
    np.testing.assert_allclose(w.x[k, :, 0], (demo_ds["prcp"].sel(time=slice(None, w.dates[k])).values[-365:]
                                              - w.stats["prcp"]["mean"]) / w.stats["prcp"]["std"], rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"window": 0}, "window"),
    ({"window": 2.5}, "window"),
    ({"nan_inputs": "zero"}, "nan_inputs"),
    ({"inputs": ("prcp", "humidity")}, r"\['humidity'\] not in the dataset"),
    ({"target": "discharge"}, "target"),
    ({"period": ("2003-01-01", "2002-01-01")}, "end is before the start"),
    ({"period": ("1950-01-01", "1950-12-31")}, "holds no day"),
    ({"period": "2001"}, "period"),
    ({"stats": {"prcp": {"mean": 0.0}}}, "stats"),
    ({"stats": {v: {"mean": 0.0, "std": 0.0} for v in (*INPUTS, TARGET)}}, "std must be finite and positive"),
])
def test_bad_arguments(ds, kwargs, match):
    with pytest.raises(DataParameterError, match=match):
        make_windows(ds, **{"window": 30, **kwargs})


def test_bad_datasets(ds):
    with pytest.raises(DataError, match="no window fits"):
        make_windows(ds, period=("2000-01-01", "2000-01-10"), window=30)
    with pytest.raises(DataParameterError, match="not consecutive days"):
        make_windows(ds.isel(time=np.r_[0:100, 101:400]), window=30)
    stacked = xr.concat([ds, ds], dim=pd.Index(["a", "b"], name="basin"))
    with pytest.raises(DataParameterError, match="select one basin"):
        make_windows(stacked, window=30)
    ds["qobs"].values[:] = np.nan
    with pytest.raises(DataError, match="NaN on every day"):
        make_windows(ds, window=30, stats={v: {"mean": 0.0, "std": 1.0} for v in (*INPUTS, TARGET)})
    ds["prcp"].values[:] = 1.0
    with pytest.raises(DataError, match="'prcp' is constant"):
        compute_stats(ds, ["prcp"])


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_random_nan_patterns_windows_and_periods(data):
    n = data.draw(st.integers(10, 80))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    time = pd.date_range("2000-01-01", periods=n, freq="D")
    ds = xr.Dataset({"a": ("time", rng.normal(size=n)), "b": ("time", rng.gamma(2.0, size=n)),
                     "q": ("time", rng.normal(size=n))}, coords={"time": time})
    q_nan = data.draw(st.lists(st.integers(0, n - 1), max_size=n // 2))
    ds["q"].values[q_nan] = np.nan
    window = data.draw(st.integers(1, n))
    i0 = data.draw(st.integers(0, n - 1))
    i1 = data.draw(st.integers(i0, n - 1))
    period = (str(time[i0].date()), str(time[i1].date()))
    stats = {v: {"mean": float(rng.normal()), "std": float(rng.uniform(0.5, 2))} for v in ("a", "b", "q")}
    x, y, dates, _ = _reference(ds, ("a", "b"), "q", period, window, stats=stats)
    if len(y) == 0:
        with pytest.raises(DataError):
            make_windows(ds, inputs=("a", "b"), target="q", period=period, window=window, stats=stats)
        return
    w = make_windows(ds, inputs=("a", "b"), target="q", period=period, window=window, stats=stats)
    _assert_matches(w, (x, y, dates, stats))
