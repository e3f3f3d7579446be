"""NetCDF sensitivity reader: good files (lag/time, flipped lat, -180..180 lon, finer grid) and bad ones."""

import numpy as np
import pytest
import xarray as xr
from scipy.interpolate import RegularGridInterpolator

from xaiscope.data.errors import DataFileError
from xaiscope.data.sensitivity import read_sensitivity
from xaiscope.data.sst import demo_sst


@pytest.fixture(scope="module")
def grid():
    return demo_sst(with_ssh=False)


def smooth(lat, lon, lag):
    return np.cos(np.deg2rad(lat))[:, None] * np.sin(np.deg2rad(lon))[None, :] * (1 + lag)


def write(path, lat, lon, lags=(0, 3), units="degC/degC", lag_name="lag", flip=False, name="adxx_sst"):
    vals = np.stack([smooth(lat, np.mod(lon, 360), k) for k in lags])
    ds = xr.Dataset({name: ((lag_name, "latitude", "longitude"), vals, {} if units is None else {"units": units})},
                    coords={lag_name: list(lags), "latitude": ("latitude", lat, {"units": "degrees_north"}),
                            "longitude": ("longitude", lon, {"units": "degrees_east"})})
    if flip:
        ds = ds.isel(latitude=slice(None, None, -1))
    ds.to_netcdf(path)
    return path


def test_same_grid_roundtrip(tmp_path, grid):
    p = write(tmp_path / "s.nc", grid.lat.values, grid.lon.values)
    s = read_sensitivity(p, like=grid)
    assert s.dims == ("lag", "lat", "lon") and list(s.lag.values) == [0, 3]
    sea = grid.land_mask.values == 0
    np.testing.assert_allclose(s.sel(lag=3).values[sea], smooth(grid.lat.values, grid.lon.values, 3)[sea])
    assert np.isnan(s.values[:, ~sea]).all()
    assert s.attrs["units"] == "1" and "sha256" in s.attrs["files"]


def test_finer_flipped_pm180_grid_is_interpolated(tmp_path, grid):
    lat = np.arange(-89.5, 90, 1.0)
    lon = np.arange(-179.5, 180, 1.0)
    p = write(tmp_path / "fine.nc", lat, lon, flip=True)
    s = read_sensitivity(p, like=grid)
    assert np.allclose(s.lat, grid.lat) and np.allclose(s.lon, grid.lon)
    # independent bilinear interpolation with scipy on the periodically padded source grid
    lon360 = np.mod(lon, 360)
    order = np.argsort(lon360)
    lonp = np.concatenate([[lon360[order][-1] - 360], lon360[order], [lon360[order][0] + 360]])
    f = smooth(lat, lon360, 0)[:, order]
    f = np.concatenate([f[:, -1:], f, f[:, :1]], axis=1)
    interp = RegularGridInterpolator((lat, lonp), f)
    LA, LO = np.meshgrid(grid.lat.values, grid.lon.values, indexing="ij")
    ref = interp(np.stack([np.clip(LA, lat.min(), lat.max()), LO], -1))
    sea = grid.land_mask.values == 0
    np.testing.assert_allclose(s.sel(lag=0).values[sea], ref[sea], rtol=1e-10, atol=1e-12)


def test_time_dimension_and_units_override(tmp_path, grid):
    ds = xr.Dataset({"sens": (("time", "lat", "lon"), np.ones((2, grid.sizes["lat"], grid.sizes["lon"])))},
                    coords={"time": np.array(["2000-01-01", "2000-02-01"], dtype="datetime64[ns]"),
                            "lat": grid.lat.values, "lon": grid.lon.values})
    ds.to_netcdf(tmp_path / "t.nc")
    with pytest.raises(DataFileError, match="no units"):
        read_sensitivity(tmp_path / "t.nc")
    s = read_sensitivity(tmp_path / "t.nc", units="1")
    assert s.dims == ("time", "lat", "lon")


def test_bad_units(tmp_path, grid):
    p = write(tmp_path / "u.nc", grid.lat.values, grid.lon.values, units="m2 s-1")
    with pytest.raises(DataFileError, match=r"u\.nc.*units 'm2 s-1'"):
        read_sensitivity(p, like=grid)


def test_grid_not_covering_the_model(tmp_path, grid):
    p = write(tmp_path / "np.nc", np.arange(0, 61, 5.0), np.arange(120, 291, 5.0))
    with pytest.raises(DataFileError, match="covers latitudes"):
        read_sensitivity(p, like=grid)
    p = write(tmp_path / "reg.nc", np.arange(-60, 61, 5.0), np.arange(120, 291, 5.0))
    with pytest.raises(DataFileError, match="longitudes"):
        read_sensitivity(p, like=grid)


def test_unknown_dimension_and_two_variables(tmp_path, grid):
    p = write(tmp_path / "d.nc", grid.lat.values, grid.lon.values, lag_name="member")
    with pytest.raises(DataFileError, match="rename it to 'lag'"):
        read_sensitivity(p)
    ds = xr.open_dataset(write(tmp_path / "a.nc", grid.lat.values, grid.lon.values)).load()
    ds["other"] = ds["adxx_sst"] * 2
    ds.to_netcdf(tmp_path / "two.nc")
    with pytest.raises(DataFileError, match="variable="):
        read_sensitivity(tmp_path / "two.nc")
    assert read_sensitivity(tmp_path / "two.nc", "other").max() > 0
