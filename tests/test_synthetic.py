"""Synthetic snowy basin: water balance, seeding, structure, and physical plausibility against independent
formulas and the real Daymet record of basin 01031500."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from xaiscope.data.errors import DataError, DataParameterError
from xaiscope.data.synthetic import DEFAULT_PARAMS, synthetic_basin

STORES = ("swe", "soil_moisture", "groundwater", "routing_store")


def _residual(ds):
    storage = sum(ds[s].values for s in STORES)
    delta = np.diff(np.concatenate([[ds.attrs["initial_storage"]], storage]))
    return ds["prcp"].values - ds["et"].values - ds["qobs"].values - delta


@pytest.fixture(scope="module")
def long_ds():
    return synthetic_basin(seed=0)


def test_water_balance_closes(long_ds):
    res = _residual(long_ds)
    assert np.abs(res).max() < 1e-9
    assert abs(res.sum()) < 1e-8   # over 35 years: no drift


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       smax=st.floats(20, 600), beta=st.floats(0.3, 5), ddf=st.floats(0.5, 8), k_base=st.floats(0.001, 0.5),
       k_perc=st.floats(0.001, 0.5), t_snow=st.floats(-3, 3), spinup=st.integers(0, 400))
def test_water_balance_and_signs_for_any_parameters(seed, smax, beta, ddf, k_base, k_perc, t_snow, spinup):
    ds = synthetic_basin(seed=seed, start="2001-01-01", end="2002-06-30", smax=smax, beta=beta, ddf=ddf,
                         k_base=k_base, k_perc=k_perc, t_snow=t_snow, spinup_days=spinup)
    assert np.abs(_residual(ds)).max() < 1e-9 * max(1.0, float(ds["prcp"].sum()))
    for v in (*STORES, "prcp", "et", "qobs", "pet", "srad", "vp", "dayl"):
        assert (ds[v].values >= 0).all(), v
    assert (ds["soil_moisture"].values <= smax + 1e-9).all()
    assert (ds["et"].values <= ds["pet"].values + 1e-12).all()


def test_seeding(small_synthetic_ds):
    again = synthetic_basin(seed=7, start="2000-01-01", end="2003-12-31")
    xr.testing.assert_identical(again, small_synthetic_ds)
    other = synthetic_basin(seed=8, start="2000-01-01", end="2003-12-31")
    for v in ("prcp", "tmax", "qobs", "swe"):
        assert not np.array_equal(other[v].values, small_synthetic_ds[v].values), v
    assert other.attrs["basin_id"] == "synthetic-8"


def test_same_structure_as_a_basin_dataset(small_synthetic_ds, demo_ds):
    ds = small_synthetic_ds
    shared = set(demo_ds.data_vars) - {"q_benchmark"}   # no benchmark model for a synthetic basin
    assert shared <= set(ds.data_vars)
    assert {"soil_moisture", "swe"} <= set(ds.data_vars)
    assert ds["time"].dtype == demo_ds["time"].dtype and list(ds.dims) == ["time"]
    for v in shared:
        for key in ("units", "long_name", "standard_name"):
            assert ds[v].attrs.get(key) == demo_ds[v].attrs.get(key), (v, key)
    for key in ("basin_id", "latitude", "elevation", "area", "source", "files", "Conventions"):
        assert key in ds.attrs
    assert ds.sizes["time"] == len(pd.date_range("2000-01-01", "2003-12-31"))


def test_snowy_like_northern_maine(long_ds, demo_ds):
    peaks = long_ds["swe"].groupby("time.year").max().values
    assert (peaks > 100).all() and np.median(peaks) > 200          # a substantial pack every winter
    august = long_ds["swe"].sel(time=long_ds["time.month"] == 8)
    assert float(august.max()) == 0.0                               # melted out by summer
    annual_p = long_ds["prcp"].groupby("time.year").sum().mean()
    real_p = demo_ds["prcp"].groupby("time.year").sum().mean()
    assert abs(float(annual_p) / float(real_p) - 1) < 0.25
    # monthly mean temperature within 3 degC of the real Daymet climatology of 01031500
    syn = long_ds["tmean"].groupby("time.month").mean().values
    real = demo_ds["tmean"].groupby("time.month").mean().values
    assert np.abs(syn - real).max() < 3.0
    # spring (April/May) snowmelt flood: the highest monthly mean flow
    q = long_ds["qobs"].groupby("time.month").mean().values
    assert int(np.argmax(q)) + 1 in (4, 5)


def test_day_length_matches_daymet(demo_ds):
    """Day length from latitude vs the Daymet dayl of basin 01031500 (45.06 N), an independent record."""
    ds = synthetic_basin(seed=1, start="2001-01-01", end="2001-12-31", latitude=demo_ds.attrs["latitude"])
    real = demo_ds["dayl"].sel(time=slice("2001-01-01", "2001-12-31")).values
    assert np.abs(ds["dayl"].values / real - 1).max() < 0.01


def test_weather_statistics_follow_the_parameters(long_ds):
    p = DEFAULT_PARAMS
    wet = long_ds["prcp"].values > 0
    # stationary wet fraction of the two-state Markov chain
    pi = p["p_wet_after_dry"] / (1 - p["p_wet_after_wet"] + p["p_wet_after_dry"])
    assert abs(wet.mean() - pi) < 0.02
    assert abs(long_ds["prcp"].values[wet].mean() / p["wet_day_mean"] - 1) < 0.05
    p_ww = (wet[1:] & wet[:-1]).sum() / wet[:-1].sum()
    assert abs(p_ww - p["p_wet_after_wet"]) < 0.02
    # the temperature anomaly about the seasonal sinusoid is AR(1) with the asked lag-1 autocorrelation
    doy = long_ds["time.dayofyear"].values
    seasonal = p["t_mean"] - p["t_amplitude"] * np.cos(2 * np.pi * (doy - p["t_coldest_doy"]) / 365.25)
    anomaly = long_ds["tmean"].values - seasonal
    assert abs(pd.Series(anomaly).autocorr(1) - p["t_ar1"]) < 0.03
    assert abs(anomaly.std() - p["t_sigma"]) < 0.2
    # vapour pressure below saturation at tmax (Alduchov & Eskridge 1996 formula, independent of ours)
    es_tmax = 610.94 * np.exp(17.625 * long_ds["tmax"].values / (long_ds["tmax"].values + 243.04))
    assert (long_ds["vp"].values < es_tmax).all()
    # cloudy wet days get less sunshine than dry days of the same month
    srad = long_ds["srad"].to_series()
    month = long_ds["time.month"].to_series()
    wet_s = pd.Series(wet, index=srad.index)
    by = srad.groupby([month, wet_s]).mean().unstack()
    assert (by[True] < by[False]).all()
    assert (long_ds["tmax"].values > long_ds["tmin"].values).all()


@pytest.mark.parametrize("kwargs, parameter", [
    ({"nonsense": 1.0}, "nonsense"),
    ({"smax": -5.0}, "smax"),
    ({"p_wet_after_dry": 1.2}, "p_wet_after_dry"),
    ({"latitude": 95.0}, "latitude"),
    ({"dtr_wet": 20.0}, "dtr_wet"),
    ({"ddf": float("nan")}, "ddf"),
    ({"seed": -1}, "seed"),
    ({"seed": "a"}, "seed"),
    ({"start": "2000-01-01", "end": "1999-01-01"}, "end"),
    ({"start": "not a date"}, "start"),
])
def test_bad_parameters_raise_one_clear_error(kwargs, parameter):
    with pytest.raises(DataParameterError) as info:
        synthetic_basin(**kwargs)
    assert parameter in str(info.value)
    assert isinstance(info.value, DataError)
