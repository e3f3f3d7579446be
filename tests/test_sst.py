"""SST reader, anomalies, regridding and ENSO indices: real shipped files and seeded synthetic NetCDF files,
compared with independent computations (numpy loops, pandas, scipy)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.interpolate
import scipy.signal
import scipy.stats
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from xaiscope.assets import ASSETS
from xaiscope.data import sst as S
from xaiscope.data.errors import DataError, DataFileError, DataParameterError

ERSST = ASSETS / "ersst"


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def demo():
    return S.demo_sst()


def synthetic_truth(seed=0, n_months=36, start="2001-01"):
    """Seeded SST in degC on an ascending 0..360 grid with a land block (NaN): the truth the files encode."""
    rng = np.random.default_rng(seed)
    lat = np.arange(-30.0, 31.0, 3.0)
    lon = np.arange(0.0, 360.0, 6.0)
    t = pd.date_range(start, periods=n_months, freq="MS")
    base = 26 - 0.01 * lat[:, None] ** 2 + 0 * lon[None]
    season = 2 * np.sin(2 * np.pi * (t.month.values - 1) / 12)[:, None, None]
    vals = base[None] + season + rng.normal(0, 0.7, (n_months, lat.size, lon.size))
    land = np.zeros((lat.size, lon.size), bool)
    land[4:9, 10:20] = True
    vals[:, land] = np.nan
    return xr.DataArray(vals, dims=("time", "lat", "lon"), coords={"time": t, "lat": lat, "lon": lon}), land


def write_variant(tmp_path, truth, *, lat_name="lat", lon_name="lon", time_name="time", descending=False,
                  lon180=False, kelvin=False, quirk=False, attrs=True, var="sst", fill=True, calendar=None):
    """Write ``truth`` in a different dress; the reader must undo every change."""
    da = truth.copy()
    units = "degC"
    if kelvin:
        da, units = da + 273.15, "K"
    if quirk:
        da, units = da - 273.15, "K"  # degC values with the Kelvin offset subtracted again
    if lon180:
        da = da.assign_coords(lon=((da.lon + 180) % 360) - 180).sortby("lon")
    if descending:
        da = da.isel(lat=slice(None, None, -1))
    da = da.rename({"lat": lat_name, "lon": lon_name, "time": time_name})
    da.attrs = {"units": units, "long_name": "sea surface temperature"}
    ds = da.to_dataset(name=var)
    if attrs:
        ds[lat_name].attrs = {"standard_name": "latitude", "units": "degrees_north"}
        ds[lon_name].attrs = {"standard_name": "longitude", "units": "degrees_east"}
        ds[time_name].attrs = {"standard_name": "time"}
    enc = {var: {"_FillValue": -999.0, "dtype": "float32"}} if fill else {}
    if calendar:
        enc[time_name] = {"calendar": calendar, "units": "days since 1900-01-01"}
    path = tmp_path / "sst_variant.nc"
    ds.to_netcdf(path, encoding=enc)
    return path


# ----------------------------------------------------------------------------------------- real data
def test_demo_grid_mask_and_provenance(demo):
    assert demo.sst_anomaly.dims == ("time", "lat", "lon")
    assert demo.sizes == {"time": 468, "lat": 24, "lon": 72}
    assert np.all(np.diff(demo.lat) > 0) and demo.lat[0] == -55 and demo.lat[-1] == 60
    assert np.all(np.diff(demo.lon) > 0) and demo.lon.min() >= 0 and demo.lon.max() < 360
    assert demo.time.values[0] == np.datetime64("1980-01-01") and demo.time.values[-1] == np.datetime64("2018-12-01")
    land = demo.land_mask.values == 1
    # land only where the field is NaN, at every month, in both fields
    assert np.array_equal(np.isnan(demo.sst_anomaly.values).all(0), land)
    assert np.array_equal(np.isnan(demo.ssh_anomaly.values).all(0), land)
    assert not np.isnan(demo.sst_anomaly.values[:, ~land]).any()
    # a plausible land share for 55S-60N (Earth: ~29% land, more in the north): 20-35%
    assert 0.2 < land.mean() < 0.35
    # the Nino 3.4 box is sea; central Sahara (20N, 10E) and Amazon (5S, 300E) are land
    assert not land[(demo.lat.values >= -5) & (demo.lat.values <= 5)][:, (demo.lon.values >= 190) & (demo.lon.values <= 240)].any()
    assert demo.land_mask.sel(lat=20, lon=10).item() == 1 and demo.land_mask.sel(lat=-5, lon=300).item() == 1
    files = json.loads(demo.attrs["files"])
    assert {f["path"] for f in files} == {"anom_detrend_ersstv5_198001-201812_Ham-LR.nc",
                                          "anom_detrend_sshg_GODAS_198001-201812_Ham-LR.nc"}
    assert demo.sst_anomaly.attrs["units"] == "degC" and demo.ssh_anomaly.attrs["units"] == "m"


def test_demo_values_equal_the_raw_file_reordered(demo):
    raw = xr.open_dataset(ERSST / "anom_detrend_ersstv5_198001-201812_Ham-LR.nc", decode_times=False)
    vals = raw.tos.values  # already ascending lat, 0..355 lon
    sea = demo.land_mask.values == 0
    np.testing.assert_array_equal(demo.sst_anomaly.values[:, sea], vals[:, sea])


def test_nino34_matches_observed_oisst(demo):
    idx = S.nino34(demo.sst_anomaly)
    obs = S.observed_nino34()
    a, b = xr.align(idx, obs)
    assert a.sizes["time"] == 444  # 1982-01 .. 2018-12
    r = scipy.stats.pearsonr(a.values, b.values)[0]
    assert r >= 0.95, r


def test_land_mask_rule_against_supersampled_reference():
    """Land fraction by exact overlaps == mean over the 1° codes refined to 0.5° (each 5° cell is then exactly
    10×10 half-degree cells)."""
    codes = xr.open_dataset(ERSST / "geocat_landsea_1x1.nc").LSMASK.load()
    lat = np.arange(-55.0, 61.0, 5.0)
    lon = np.arange(0.0, 360.0, 5.0)
    frac = S.land_fraction(codes.rename(None), lat, lon).values
    land = np.isin(codes.values, (1, 2, 4)).astype(float)
    fine = np.repeat(np.repeat(land, 2, 0), 2, 1)  # 0.5° grid, lat edges -90.., lon edges 0..
    # roll lon so that the 0.5° column starting at -2.5° comes first
    fine = np.roll(fine, 5, axis=1)
    ref = np.empty((lat.size, lon.size))
    for i, la in enumerate(lat):
        r0 = int((la - 2.5 + 90) * 2)
        for j in range(lon.size):
            ref[i, j] = fine[r0:r0 + 10, j * 10:(j + 1) * 10].mean()
    np.testing.assert_allclose(frac, ref, atol=1e-12)
    mask = S.land_mask_from_landsea(ERSST / "geocat_landsea_1x1.nc", lat, lon)
    np.testing.assert_array_equal(mask.values, (ref > 0.5).astype("int8"))


def test_raw_2deg_file_descending_lat_and_nan_land():
    ds = S.read_sst(ERSST / "sst.mnmean.nc")
    assert "sst" in ds and np.all(np.diff(ds.lat) > 0)
    raw = xr.open_dataset(ERSST / "sst.mnmean.nc")
    ref = raw.sst.values[:, ::-1, :]
    np.testing.assert_array_equal(np.isnan(ds.sst.values), np.isnan(ref) | ds.land_mask.values.astype(bool)[None])
    np.testing.assert_allclose(ds.sst.values, ref, equal_nan=True)
    np.testing.assert_array_equal(ds.land_mask.values, np.isnan(ref).all(0))


def test_observed_nino34_against_pandas():
    obs = S.observed_nino34()
    df = pd.read_csv(ASSETS / "enso_indices" / "pythia_enso_data.csv")
    np.testing.assert_array_equal(obs.values, df["Nino34anom"].values)
    assert str(obs.time.values[0])[:10] == "1982-01-01"


# ------------------------------------------------------------------------------------- synthetic files
VARIANTS = [
    dict(),
    dict(lat_name="latitude", lon_name="longitude", descending=True),
    dict(lat_name="nav_lat", lon_name="nav_lon", time_name="t", attrs=False, lon180=True),
    dict(lat_name="y", lon_name="x", kelvin=True, descending=True, lon180=True),
    dict(var="tos", calendar="360_day", fill=False),
    dict(lat_name="lats", lon_name="lons", attrs=True, kelvin=True, calendar="noleap"),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={v[k]}" for k in v) or "plain")
def test_reader_undoes_every_dress(tmp_path, variant):
    truth, land = synthetic_truth(seed=len(variant))
    path = write_variant(tmp_path, truth, **variant)
    ds = S.read_sst(path, anomaly=False)
    np.testing.assert_array_equal(ds.lat.values, truth.lat.values)
    np.testing.assert_array_equal(ds.lon.values, truth.lon.values)
    np.testing.assert_array_equal(ds.time.values.astype("datetime64[D]"), truth.time.values.astype("datetime64[D]"))
    np.testing.assert_allclose(ds.sst.values, truth.values, atol=2e-5, equal_nan=True)
    np.testing.assert_array_equal(ds.land_mask.values, land.astype("int8"))
    assert ds.sst.attrs["units"] == "degC"


def test_negative_kelvin_quirk_is_repaired_with_a_warning(tmp_path):
    truth, _ = synthetic_truth(seed=3)
    path = write_variant(tmp_path, truth, quirk=True)
    with pytest.warns(UserWarning, match="273.15 was subtracted"):
        ds = S.read_sst(path, anomaly=False)
    np.testing.assert_allclose(ds.sst.values, truth.values, atol=2e-5, equal_nan=True)
    with pytest.raises(DataFileError, match="subtracted twice.*repair_quirk=True"):
        S.read_sst(path, anomaly=False, repair_quirk=False)


def test_anomaly_detection_and_ssh_units(tmp_path):
    truth, _ = synthetic_truth(seed=4)
    anom = truth - truth.mean("time")
    path = write_variant(tmp_path, anom)
    ds = S.read_sst(path)
    assert "sst_anomaly" in ds
    cm = anom.to_dataset(name="ssh")
    cm["ssh"].attrs["units"] = "cm"
    p2 = tmp_path / "ssh.nc"
    cm.to_netcdf(p2)
    ssh = S.read_extra(p2)
    np.testing.assert_allclose(ssh.ssh_anomaly.values, anom.values / 100, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("mutate, match", [
    (lambda ds: ds.rename({"lat": "foo"}).drop_vars("foo").assign_coords(foo=("foo", np.arange(21.0))),
     "no latitude coordinate"),
    (lambda ds: ds.assign(sst=ds.sst.assign_attrs(units="furlongs")), "units 'furlongs'"),
    (lambda ds: ds.assign(sst=(ds.sst + 273.15).assign_attrs(units="degC")), "not a sea temperature"),
    (lambda ds: ds.assign(sst=(ds.sst).assign_attrs(units="K")), "Kelvin"),
    (lambda ds: ds.assign_coords(time=np.repeat(ds.time.values[:18], 2)), "same month"),
    (lambda ds: ds.assign_coords(lat=ds.lat * 10), "latitudes outside"),
    (lambda ds: ds.isel(time=0).drop_vars("time"), "no time dimension"),
])
def test_bad_files_give_one_clear_error(tmp_path, mutate, match):
    truth, _ = synthetic_truth(seed=5)
    ds = truth.to_dataset(name="sst")
    ds.sst.attrs["units"] = "degC"
    ds.lat.attrs = {"units": "degrees_north"}
    ds.lon.attrs = {"units": "degrees_east"}
    path = tmp_path / "bad.nc"
    mutate(ds).to_netcdf(path)
    with pytest.raises(DataFileError, match=match) as info:
        S.read_sst(path, anomaly=False)
    assert "bad.nc" in str(info.value)


def test_missing_and_non_netcdf_files(tmp_path):
    with pytest.raises(DataFileError, match="file not found"):
        S.read_sst(tmp_path / "nope.nc")
    junk = tmp_path / "junk.nc"
    junk.write_text("not a netcdf file")
    with pytest.raises(DataFileError, match="junk.nc"):
        S.read_sst(junk)


# ---------------------------------------------------------------------------------------- anomalies
def test_anomalies_against_pandas_groupby_and_scipy_detrend():
    truth, land = synthetic_truth(seed=6, n_months=60, start="1999-01")
    anom = S.anomalies(truth, base_period=("2000-01", "2002-12"))
    i, j = 2, 3
    s = pd.Series(truth.values[:, i, j], index=pd.DatetimeIndex(truth.time.values))
    base = s["2000-01":"2002-12"]
    clim = base.groupby(base.index.month).mean()
    ref = s.values - clim.loc[s.index.month].values
    np.testing.assert_allclose(anom.values[:, i, j], ref, atol=1e-12)
    assert np.isnan(anom.values[:, land]).all()
    det = S.anomalies(truth, base_period=None, detrend=True)
    full = s.values - s.groupby(s.index.month).transform("mean").values
    # scipy detrends against the sample index; months are not equally long, so use day-based time as we do
    t = (s.index - s.index[0]).days.values / 365.25
    coef = np.polyfit(t, full, 1)
    np.testing.assert_allclose(det.values[:, i, j], full - np.polyval(coef, t) + full.mean(), atol=1e-10)
    # with equal spacing it is scipy.signal.detrend up to the mean
    np.testing.assert_allclose(det.values[:, i, j] - det.values[:, i, j].mean(),
                               scipy.signal.detrend(full), atol=0.02)
    with pytest.raises(DataParameterError, match="base_period"):
        S.anomalies(truth, base_period=("1950-01", "1960-12"))


# ----------------------------------------------------------------------------------------- indices
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), nan_frac=st.floats(0, 0.3))
def test_nino34_equals_slow_loop(seed, nan_frac):
    rng = np.random.default_rng(seed)
    lat = np.arange(-20.0, 21.0, 2.5)
    lon = np.arange(-180.0, 180.0, 5.0)  # a -180..180 grid: box is 170W..120W
    vals = rng.normal(size=(5, lat.size, lon.size))
    vals[rng.random(vals.shape) < nan_frac] = np.nan
    da = xr.DataArray(vals, dims=("time", "lat", "lon"), coords={"time": np.arange(5), "lat": lat, "lon": lon})
    got = S.nino34(da).values
    for k in range(5):
        num = den = 0.0
        for a, la in enumerate(lat):
            for b, lo in enumerate(lon):
                if -5 <= la <= 5 and -170 <= lo <= -120 and np.isfinite(vals[k, a, b]):
                    num += np.cos(np.radians(la)) * vals[k, a, b]
                    den += np.cos(np.radians(la))
        ref = num / den if den else np.nan
        # atol: a box mean near zero is a cancellation of O(1) terms (summation order moves it by ~1e-17)
        np.testing.assert_allclose(got[k], ref, rtol=1e-12, atol=1e-15, equal_nan=True)


def test_oni_and_phase_against_pandas():
    rng = np.random.default_rng(1)
    t = pd.date_range("2000-01", periods=40, freq="MS")
    x = xr.DataArray(rng.normal(0, 1, 40), dims="time", coords={"time": t})
    o = S.oni(x)
    np.testing.assert_allclose(o.values, pd.Series(x.values).rolling(3, center=True).mean().values, equal_nan=True)
    ph = S.enso_phase(o)
    v = o.values
    for a, p in zip(v, ph.values):
        if np.isnan(a):
            assert np.isnan(p)
        else:
            assert p == (1 if a >= 0.5 else -1 if a <= -0.5 else 0)
    with pytest.raises(DataParameterError, match="threshold"):
        S.enso_phase(o, threshold=0)


def test_box_weights_cross_greenwich_and_errors():
    lat = np.arange(-10.0, 11.0, 5.0)
    lon = np.arange(0.0, 360.0, 10.0)
    w = S.box_weights(lat, lon, (-5, 5), (-20, 20))
    on = w.values > 0
    assert set(lon[on.any(0)]) == {0.0, 10.0, 20.0, 340.0, 350.0}
    assert np.isclose(w.sum(), 1)
    with pytest.raises(DataParameterError, match="no sea cell"):
        S.box_weights(lat, lon, (40, 50), (0, 10))


# ----------------------------------------------------------------------------------------- regrid
def test_regrid_coarsen_and_interp():
    truth, land = synthetic_truth(seed=8, n_months=3)
    ds = xr.Dataset({"sst": truth, "land_mask": xr.DataArray(land.astype("int8"), dims=("lat", "lon"),
                                                             coords={"lat": truth.lat, "lon": truth.lon})})
    with pytest.raises(DataParameterError, match="integer multiple"):
        S.regrid(ds, 9.0)
    out = S.regrid(ds, 12.0)  # 4 lat cells × 2 lon cells per block
    v, lat = truth.values, truth.lat.values
    ny, nx = lat.size // 4, truth.lon.size // 2
    assert out.sst.shape == (3, ny, nx)
    for i in range(ny):
        for j in range(nx):
            block = v[:, 4 * i:4 * i + 4, 2 * j:2 * j + 2]
            lblock = land[4 * i:4 * i + 4, 2 * j:2 * j + 2]
            w = np.cos(np.radians(lat[4 * i:4 * i + 4]))[:, None] * np.ones((1, 2))
            island = lblock.mean() > 0.5
            assert out.land_mask.values[i, j] == island
            if island:
                assert np.isnan(out.sst.values[:, i, j]).all()
                continue
            ok = np.isfinite(block)
            ref = np.nansum(block * w, (1, 2)) / (ok * w).sum((1, 2))
            np.testing.assert_allclose(out.sst.values[:, i, j], ref, rtol=1e-10)
    # interpolation across the periodic seam vs scipy on a field without land
    sea = truth.fillna(20.0)
    tl, tn = np.array([-10.2, 0.0, 7.7]), np.array([1.0, 180.5, 358.0])
    got = S.regrid(sea, lat=tl, lon=tn).values
    ext_lon = np.concatenate([[sea.lon.values[-1] - 360], sea.lon.values, [sea.lon.values[0] + 360]])
    ext = np.concatenate([sea.values[:, :, -1:], sea.values, sea.values[:, :, :1]], axis=2)
    for k in range(3):
        f = scipy.interpolate.RegularGridInterpolator((sea.lat.values, ext_lon), ext[k])
        ref = f(np.stack(np.meshgrid(tl, tn, indexing="ij"), -1))
        np.testing.assert_allclose(got[k], ref, rtol=1e-10)


def test_select_band():
    truth, _ = synthetic_truth()
    out = S.select_band(truth, -10, 20)
    assert out.lat.min() >= -10 and out.lat.max() <= 20
    with pytest.raises(DataParameterError, match="lat_min"):
        S.select_band(truth, 20, -10)


def test_ocean_vector_round_trip(demo):
    vec = S.to_ocean_vectors(demo.sst_anomaly.isel(time=slice(0, 4)), demo.land_mask)
    assert not np.isnan(vec).any() and vec.shape == (4, int((demo.land_mask == 0).sum()))
    back = S.from_ocean_vectors(vec, demo.land_mask, demo.time[:4])
    np.testing.assert_array_equal(back.values, demo.sst_anomaly.values[:4])
