"""Sensitivity (adjoint) fields from NetCDF, e.g. ECCO/MITgcm adjoint output converted to a regular grid.

:func:`read_sensitivity` reads one variable with dims ``(lag, lat, lon)`` or ``(time, lat, lon)`` (a single
``(lat, lon)`` map gets ``lag = 0``): ``∂QoI / ∂SST`` per grid cell, dimensionless (QoI in degC per degC of SST,
``units`` "1", "degC/degC", "K/K", "degC degC-1", "K K-1" …). Coordinates are found as for SST files
(``standard_name``, ``units``, ``axis``, then names); latitudes become ascending, longitudes 0..360. With
``like`` (a model-grid Dataset/DataArray) or ``lat``/``lon`` the field is regridded by bilinear interpolation
(periodic in longitude when the source is global) and set to NaN on the target's land. Errors name the file and
say what to do: missing units, units that are not a temperature-per-temperature ratio, a target grid outside the
source domain, curvilinear grids, a missing lag/time dimension.
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from xaiscope.data.errors import DataFileError, reader_boundary
from xaiscope.data.sst import _find_coord, _open, _sha256, regrid

#: Units accepted as "QoI temperature per SST temperature" (spaces removed, lower case).
DIMENSIONLESS_UNITS = {"1", "", "-", "degc/degc", "k/k", "degcdegc-1", "kk-1", "degc-1degc", "k-1k",
                       "degc/k", "k/degc", "dimensionless"}
LAG_NAMES = ("lag", "lags", "lead", "month_lag")


def _units_ok(u) -> bool:
    return str(u).strip().lower().replace(" ", "").replace("°", "deg").replace("^", "").replace("celsius", "c") \
        in DIMENSIONLESS_UNITS


@reader_boundary("a sensitivity NetCDF file", "xaiscope reads CF-style NetCDF files with one dimensionless "
                 "sensitivity field of dims (lag or time, lat, lon) on a regular grid; check the file (ncdump -h).")
def read_sensitivity(path, variable: str | None = None, *, like=None, lat=None, lon=None,
                     units: str | None = None) -> xr.DataArray:
    """Sensitivity maps (lag|time, lat, lon) from ``path``, optionally regridded to ``like``'s grid (or ``lat``,
    ``lon``). ``units`` overrides a missing or unusual ``units`` attribute when you know the field is
    QoI-temperature per SST-temperature."""
    ds = _open(path)
    data_vars = [v for v in ds.data_vars if ds[v].ndim >= 2]
    if variable is None:
        if len(data_vars) != 1:
            raise DataFileError(path, f"holds {len(data_vars)} gridded variables ({', '.join(data_vars) or 'none'}); "
                                      f"pass variable=... to pick the sensitivity field.")
        variable = data_vars[0]
    if variable not in ds:
        raise DataFileError(path, f"has no variable {variable!r}; it has {', '.join(map(str, ds.data_vars))}.")
    la, lo = _find_coord(ds, "lat", path), _find_coord(ds, "lon", path)
    for c, what in ((la, "latitude"), (lo, "longitude")):
        if c not in ds[variable].coords:
            raise DataFileError(path, f"variable {variable!r} (dims {tuple(map(str, ds[variable].dims))}) does not lie "
                                      f"on the file's {what} coordinate {c!r}; give a field with dims (lag or time, "
                                      f"lat, lon).")
    try:
        da = ds[variable].load().astype("float64")
    except (TypeError, ValueError):
        raise DataFileError(path, f"variable {variable!r} does not hold numbers; a sensitivity field holds "
                                  f"floating-point values.") from None
    ds.close()
    if da[la].ndim != 1 or da[lo].ndim != 1:
        raise DataFileError(path, f"latitude/longitude of {variable!r} are 2-D (a curvilinear model grid such as "
                                  f"ECCO's LLC); interpolate it to a regular lat/lon grid first (e.g. xESMF, or "
                                  f"ecco_v4_py's resample_to_latlon).")
    u = units if units is not None else da.attrs.get("units")
    if u is None:
        raise DataFileError(path, f"variable {variable!r} has no units attribute; a sensitivity of an SST QoI to SST "
                                  f"is dimensionless (e.g. 'degC/degC'). Pass units='1' if that is what it is.")
    if not _units_ok(u):
        raise DataFileError(path, f"variable {variable!r} has units {u!r}, not a temperature-per-temperature ratio "
                                  f"(e.g. '1', 'degC/degC', 'K K-1'). Convert it to the change of the QoI per degC of "
                                  f"SST in each cell (a per-area sensitivity times the cell area), or pass units= "
                                  f"if you are sure it already is.")
    rename = {da[la].dims[0]: "lat", da[lo].dims[0]: "lon"}
    da = da.rename(rename)
    other = [d for d in da.dims if d not in ("lat", "lon")]
    if not other:
        da = da.expand_dims(lag=[0])
        lead = "lag"
    elif len(other) > 1:
        raise DataFileError(path, f"variable {variable!r} has dims {da.dims}; expected (lag or time, lat, lon). "
                                  f"Select or average the extra dimensions first.")
    else:
        d = other[0]
        if str(d).lower() in LAG_NAMES:
            da = da.rename({d: "lag"})
            lead = "lag"
        elif np.issubdtype(da[d].dtype, np.datetime64) or str(d).lower() == "time":
            da = da.rename({d: "time"})
            lead = "time"
        else:
            raise DataFileError(path, f"dimension {d!r} of {variable!r} is neither a lag ({', '.join(LAG_NAMES)}) nor "
                                      f"a time; rename it to 'lag' (months) or 'time'.")
    da = da.drop_vars([c for c in da.coords if c not in (lead, "lat", "lon")])
    try:
        latv, lonv = np.asarray(da.lat.values, float), np.asarray(da.lon.values, float)
    except (TypeError, ValueError):
        raise DataFileError(path, "latitude/longitude values are not numbers; the coordinates must be degrees.") \
            from None
    if latv.size == 0 or lonv.size == 0:
        raise DataFileError(path, f"the grid is empty ({latv.size} latitudes × {lonv.size} longitudes).")
    if np.any(np.abs(latv) > 90) or np.any(lonv < -180) or np.any(lonv > 360):
        raise DataFileError(path, "latitudes/longitudes are outside -90..90 / -180..360: not in degrees.")
    da = da.assign_coords(lat=latv, lon=np.mod(lonv, 360.0)).sortby("lat").sortby("lon").transpose(lead, "lat", "lon")
    da.attrs = {"long_name": da.attrs.get("long_name", "sensitivity of the QoI to SST"), "units": "1",
                "original_units": str(u), "source": str(path),
                "files": json.dumps([{"path": str(path), "sha256": _sha256(path)}])}
    da.name = "sensitivity"
    if like is None and lat is None and lon is None:
        return da
    land = None
    if like is not None:
        lat, lon = like.lat.values, like.lon.values
        if isinstance(like, xr.Dataset) and "land_mask" in like:
            land = like["land_mask"]
    elif lat is None or lon is None:
        raise DataFileError(path, "give both lat and lon (or like=) for the target grid.")
    return _to_grid(da, np.asarray(lat, float), np.mod(np.asarray(lon, float), 360), land, path)


def _to_grid(da: xr.DataArray, lat, lon, land, path) -> xr.DataArray:
    same = da.sizes["lat"] == lat.size and da.sizes["lon"] == lon.size and np.allclose(da.lat, lat) and \
        np.allclose(da.lon, lon)
    if not same:
        slat, slon = da.lat.values, da.lon.values
        dlat = np.median(np.diff(slat)) if slat.size > 1 else 0.0
        if lat.min() < slat.min() - dlat / 2 - 1e-9 or lat.max() > slat.max() + dlat / 2 + 1e-9:
            raise DataFileError(path, f"covers latitudes {slat.min()}..{slat.max()} but the model grid needs "
                                      f"{lat.min()}..{lat.max()}; supply a sensitivity field that covers the model "
                                      f"domain (or cut the model domain).")
        dlon = np.median(np.diff(slon)) if slon.size > 1 else 360.0
        global_lon = slon.size * dlon >= 360 - 1e-6
        if not global_lon and (lon.min() < slon.min() - 1e-9 or lon.max() > slon.max() + 1e-9):
            raise DataFileError(path, f"covers longitudes {slon.min()}..{slon.max()} °E but the model grid needs "
                                      f"{lon.min()}..{lon.max()} °E; supply a global field.")
        if global_lon:
            out = regrid(da, lat=np.clip(lat, slat.min(), slat.max()), lon=lon).assign_coords(lat=lat)
        else:
            out = da.interp(lat=np.clip(lat, slat.min(), slat.max()), lon=lon).assign_coords(lat=lat)
        out.attrs = dict(da.attrs, regridded="bilinear to the model grid")
        da = out.rename("sensitivity")
    if land is not None:
        da = da.where(np.asarray(land.values) == 0)
    return da
