"""Monthly gridded SST (and extra fields such as sea-surface height) from CF-style NetCDF, anomalies and ENSO indices.

Conventions of every xarray object this module returns (see docs/ARCHITECTURE.md, "SST"):

* dims ``(time, lat, lon)``; ``time`` is datetime64 at the first day of each month (any CF calendar, 360_day
  included, is mapped to month starts); ``lat`` ascending (degrees north); ``lon`` ascending in **0..360**
  degrees east (Pacific-centred: the Niño boxes and the dateline are not split).
* variables: ``sst`` (absolute sea-surface temperature, degC, ``standard_name = sea_surface_temperature``),
  ``sst_anomaly`` (degC), ``ssh_anomaly`` (m) and ``land_mask`` (``(lat, lon)`` int8, 1 = land, 0 = sea).
  Land cells are NaN in the fields, so NaN-aware reductions never count them.
* attributes: ``source``, ``files`` (JSON list of ``{path, sha256}``, file names only), ``Conventions = "CF-1.8"``,
  ``lon_convention = "0..360"``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import xarray as xr

from xaiscope.data.errors import DataError, DataFileError, DataParameterError, reader_boundary

CONVENTIONS = "CF-1.8"
NINO34_BOX = {"lat": (-5.0, 5.0), "lon": (190.0, 240.0)}  # 5°S–5°N, 170°W–120°W in 0..360
DEFAULT_BAND = (-55.0, 60.0)
PHASES = {-1: "La Niña", 0: "neutral", 1: "El Niño"}
KELVIN = 273.15

_LAT_NAMES = ("lat", "latitude", "y", "nav_lat", "lats", "latitudes", "yt_ocean", "yh", "rlat", "lat_rho", "nlat")
_LON_NAMES = ("lon", "longitude", "x", "nav_lon", "lons", "longitudes", "xt_ocean", "xh", "rlon", "lon_rho", "nlon")
_TIME_NAMES = ("time", "t", "date", "month", "valid_time", "time_counter")
_LAT_UNITS = {"degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn"}
_LON_UNITS = {"degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese"}
_KELVIN_UNITS = {"k", "kelvin", "degk", "deg_k", "degrees_k", "degreek", "kelvins"}
_CELSIUS_UNITS = {"c", "degc", "deg_c", "celsius", "degree_c", "degrees_c", "degreec", "degree_celsius",
                  "degrees_celsius", "°c", "deg c", "degree c", "degrees c"}
_HINT = ("xaiscope reads CF-style NetCDF files of monthly maps with dims (time, lat, lon) on a regular grid; "
         "check the file (e.g. with ncdump -h) or copy it again if it is damaged.")
_LAND_CODES_1X1 = (1, 2, 4)  # geocat LSMASK: 1 land, 2 lake, 4 ice shelf (0 ocean and 3 small island are sea)


# ------------------------------------------------------------------------------------------- helpers
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _norm_units(units) -> str:
    return str(units or "").strip().lower().replace("degrees ", "degrees_").replace("degree ", "degree_")


def _find_coord(ds: xr.Dataset, axis: str, path) -> str:
    """Name of the latitude/longitude/time coordinate: CF ``standard_name``, ``axis`` and ``units`` first,
    then common names."""
    names = {"lat": _LAT_NAMES, "lon": _LON_NAMES, "time": _TIME_NAMES}[axis]
    std = {"lat": "latitude", "lon": "longitude", "time": "time"}[axis]
    cf_axis = {"lat": "Y", "lon": "X", "time": "T"}[axis]
    candidates = list(ds.coords) + [v for v in ds.variables if v not in ds.coords]
    for rule in ("standard_name", "units", "axis", "name"):
        for name in candidates:
            var = ds[name]
            attrs = var.attrs
            if rule == "standard_name" and str(attrs.get("standard_name", "")).lower() == std:
                return name
            if rule == "units":
                u = _norm_units(attrs.get("units")).replace(" ", "")
                if axis == "lat" and u in _LAT_UNITS:
                    return name
                if axis == "lon" and u in _LON_UNITS:
                    return name
                if axis == "time" and np.issubdtype(var.dtype, np.datetime64) or (
                        axis == "time" and var.dtype == object and var.size and hasattr(var.values.flat[0], "year")):
                    return name
            if rule == "axis" and str(attrs.get("axis", "")).upper() == cf_axis:
                return name
            if rule == "name" and str(name).lower() in names:
                return name
    raise DataFileError(
        path, f"no {std} coordinate found (looked for standard_name={std!r}, axis={cf_axis!r}, "
              f"{'units degrees_north' if axis == 'lat' else 'units degrees_east' if axis == 'lon' else 'datetime values'}"
              f" and the names {', '.join(names)}); the file has {', '.join(map(str, candidates)) or 'no variables'}. "
              f"Rename the coordinate or add CF attributes (e.g. with xarray's rename/assign_attrs).")


def _month_starts(values, path) -> pd.DatetimeIndex:
    """Map any datetime-like values (numpy or cftime, any calendar) to the first day of their month."""
    try:
        if np.issubdtype(np.asarray(values).dtype, np.datetime64):
            idx = pd.DatetimeIndex(values)
            out = pd.DatetimeIndex(pd.to_datetime({"year": idx.year, "month": idx.month, "day": 1}))
        else:
            out = pd.DatetimeIndex([pd.Timestamp(int(t.year), int(t.month), 1) for t in values])
    except (AttributeError, TypeError, ValueError) as err:
        raise DataFileError(path, f"time values cannot be read as dates ({err}); the time coordinate needs CF "
                                  f"units such as 'days since 1800-01-01'.") from err
    if out.has_duplicates:
        dup = out[out.duplicated()][0]
        raise DataFileError(path, f"two time steps fall in the same month ({dup:%Y-%m}); xaiscope reads monthly "
                                  f"means only — resample the file to monthly means first.")
    return out


def _standardise(da: xr.DataArray, path, lat: str, lon: str, time: str | None) -> xr.DataArray:
    """Rename to (time, lat, lon), make lat ascending and lon ascending 0..360."""
    for c, what in ((lat, "latitude"), (lon, "longitude")):
        if c not in da.coords:
            raise DataFileError(path, f"variable {da.name!r} (dims {tuple(map(str, da.dims))}) does not lie on the "
                                      f"file's {what} coordinate {c!r}; give a variable with dims (time, lat, lon).")
    if da[lat].ndim != 1 or da[lon].ndim != 1:
        raise DataFileError(path, f"latitude {lat!r} / longitude {lon!r} are 2-D (a curvilinear grid); xaiscope "
                                  f"needs a regular lat/lon grid — regrid the file first (e.g. with xESMF or CDO).")
    rename = {lat: "lat", lon: "lon"}
    if time is not None:
        rename[time] = "time"
    # dims may be named differently from the coordinate variables (e.g. y/x dims with lat/lon coords)
    for coord, new in ((lat, "lat"), (lon, "lon")) + (((time, "time"),) if time else ()):
        dim = da[coord].dims[0]
        if dim != coord:
            da = da.swap_dims({dim: coord})
    da = da.rename(rename)
    extra = [d for d in da.dims if d not in ("lat", "lon") + (("time",) if time is not None else ())]
    for d in extra:
        if da.sizes[d] != 1:
            raise DataFileError(path, f"variable {da.name!r} has an extra dimension {d!r} of size {da.sizes[d]}; "
                                      f"select one level first (e.g. ds.isel({d}=0)).")
        da = da.isel({d: 0}, drop=True)
    da = da.drop_vars([c for c in da.coords if c not in ("time", "lat", "lon")])
    if time is not None:
        da = da.assign_coords(time=_month_starts(da["time"].values, path))
        da = da.sortby("time")
    try:
        latv = np.asarray(da["lat"].values, dtype=float)
        lonv = np.asarray(da["lon"].values, dtype=float)
    except (TypeError, ValueError):
        raise DataFileError(path, "latitude/longitude values are not numbers; the coordinates must be degrees "
                                  "(numbers) — fix the file's coordinate variables.") from None
    if latv.size == 0 or lonv.size == 0:
        raise DataFileError(path, f"the grid is empty ({latv.size} latitudes × {lonv.size} longitudes); the file "
                                  "holds no map.")
    if np.any(np.abs(latv) > 90):
        raise DataFileError(path, f"latitudes outside -90..90 (found {latv.min()}..{latv.max()}); the latitude "
                                  f"coordinate is wrong or is not in degrees.")
    if np.any(lonv < -180) or np.any(lonv > 360):
        raise DataFileError(path, f"longitudes outside -180..360 (found {lonv.min()}..{lonv.max()}); the "
                                  f"longitude coordinate is wrong or is not in degrees.")
    da = da.assign_coords(lat=latv, lon=np.mod(lonv, 360.0))
    da = da.sortby("lat").sortby("lon")
    if pd.Index(da["lon"].values).has_duplicates:
        raise DataFileError(path, "longitudes repeat after mapping to 0..360 (the grid has a cyclic column such "
                                  "as both -180 and 180); drop the duplicate column.")
    da["lat"].attrs = {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"}
    da["lon"].attrs = {"standard_name": "longitude", "units": "degrees_east", "axis": "X"}
    dims = ("time", "lat", "lon") if time is not None else ("lat", "lon")
    return da.transpose(*dims)


def _open(path) -> xr.Dataset:
    path = Path(path)
    if not path.exists():
        raise DataFileError(path, "file not found; give the path of a NetCDF file.")
    try:
        coder = xr.coders.CFDatetimeCoder(use_cftime=True)
        return xr.open_dataset(path, decode_times=coder)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise DataFileError(path, f"cannot be read as NetCDF ({err}); is it a NetCDF-3/4 file?") from err


def _pick_variable(ds: xr.Dataset, variable: str | None, path, prefer: Iterable[str]) -> str:
    fields = [v for v in ds.data_vars if ds[v].ndim >= 2]
    if variable is not None:
        if variable not in ds.data_vars:
            raise DataFileError(path, f"no variable {variable!r}; the file has {', '.join(map(str, ds.data_vars))}.")
        return variable
    for name in fields:
        if str(ds[name].attrs.get("standard_name", "")).lower() in prefer or str(name).lower() in prefer:
            return name
    if len(fields) == 1:
        return fields[0]
    raise DataFileError(path, f"cannot tell which variable to read among {', '.join(map(str, fields)) or 'none'}; "
                              f"pass variable=NAME.")


def _temperature_to_celsius(da: xr.DataArray, path, anomaly: bool, repair_quirk: bool) -> tuple[xr.DataArray, str]:
    """Return the field in degC and a note on what was done."""
    units = _norm_units(da.attrs.get("units"))
    vals = da.values
    finite = vals[np.isfinite(vals)]
    if finite.size == 0:
        raise DataFileError(path, f"variable {da.name!r} holds no finite values (all land/fill).")
    med = float(np.median(finite))
    if anomaly:
        # an anomaly in K equals one in degC; a large offset means it is not an anomaly at all
        if abs(med) > 20:
            raise DataFileError(path, f"variable {da.name!r} was read as an anomaly but its median is {med:.1f} "
                                      f"{units or '(no units)'}; pass anomaly=False to read absolute SST.")
        return da, "anomaly; K and degC differences are equal" if units in _KELVIN_UNITS else ""
    if -300 < med < -200:
        # the GRIB quirk: values near -270 are degC values from which 273.15 was subtracted a second time
        # (or Kelvin data whose offset was applied twice); sea water cannot be below about -2 degC.
        msg = (f"{path}: variable {da.name!r} has a median of {med:.1f} (units {units or 'none'}): values near "
               f"-270 are not possible sea temperatures; they are degC values from which 273.15 was subtracted "
               f"twice (a GRIB-to-NetCDF conversion quirk).")
        if not repair_quirk:
            raise DataFileError(path, msg.split(": ", 1)[1] + " Pass repair_quirk=True to add 273.15 back.")
        warnings.warn(msg + " Added 273.15 back.", UserWarning, stacklevel=4)
        return da + KELVIN, "added 273.15 (double Kelvin offset repaired)"
    if units in _KELVIN_UNITS or (units == "" and 150 < med < 350):
        if not 200 < med < 350:
            raise DataFileError(path, f"variable {da.name!r} says units {units!r} (Kelvin) but its median is "
                                      f"{med:.1f}; fix the units attribute.")
        return da - KELVIN, "converted from K"
    if units and units not in _CELSIUS_UNITS:
        raise DataFileError(path, f"variable {da.name!r} has units {da.attrs.get('units')!r}; xaiscope reads SST in "
                                  f"K or degC — fix the units attribute.")
    if not -5 < med < 40:
        raise DataFileError(path, f"variable {da.name!r} (units {units or 'none'}) has median {med:.1f}, not a "
                                  f"sea temperature in degC; check the units (Kelvin?) or pass anomaly=True.")
    return da, ""


def _looks_like_anomaly(da: xr.DataArray) -> bool:
    text = " ".join(str(da.attrs.get(k, "")) for k in ("long_name", "standard_name", "var_desc", "description"))
    if "anom" in text.lower() or "anom" in str(da.name).lower():
        return True
    vals = da.values
    finite = vals[np.isfinite(vals)]
    return bool(finite.size) and abs(float(np.median(finite))) < 1.0 and float(np.std(finite)) < 3.0


# ------------------------------------------------------------------------------------------- readers
@reader_boundary("a gridded NetCDF field", _HINT)
def read_field(path, variable: str | None = None, *, prefer: Iterable[str] = ()) -> xr.DataArray:
    """One gridded monthly field from a CF-style NetCDF file as ``(time, lat, lon)`` (lat ascending, lon 0..360).

    Coordinates are found by ``standard_name``/``units``/``axis`` attributes first, names second. ``_FillValue``
    and ``missing_value`` become NaN (xarray's CF decoding). The original attributes are kept.
    """
    ds = _open(path)
    name = _pick_variable(ds, variable, path, {p.lower() for p in prefer})
    lat, lon = _find_coord(ds, "lat", path), _find_coord(ds, "lon", path)
    try:
        time = _find_coord(ds, "time", path)
    except DataFileError:
        time = None
    da = ds[name]
    if time is None or time not in da.coords and time not in da.dims:
        raise DataFileError(path, f"variable {name!r} has no time dimension; xaiscope reads monthly time series "
                                  f"of maps (dims time, lat, lon).")
    try:
        values = da.load().astype("float64")
    except (TypeError, ValueError):
        raise DataFileError(path, f"variable {name!r} does not hold numbers ({da.dtype}); xaiscope reads numeric "
                                  f"fields.") from None
    da = _standardise(values, path, lat, lon, time)
    ds.close()
    return da


@reader_boundary("an SST NetCDF file", _HINT)
def read_sst(path, variable: str | None = None, *, anomaly: bool | None = None, repair_quirk: bool = True,
             land_mask: xr.DataArray | None = None) -> xr.Dataset:
    """Monthly SST from any CF-style NetCDF file → Dataset with ``sst`` (degC) or ``sst_anomaly`` (degC)
    and ``land_mask``.

    * Units: K → degC; the GRIB quirk (values near -270, degC with 273.15 subtracted twice) is repaired with a
      warning (``repair_quirk=False`` raises instead); unknown units raise.
    * ``anomaly``: None = detect from ``long_name``/name ("anom") or a median near 0; anomalies keep their values.
    * ``land_mask``: a ``(lat, lon)`` mask (1 land) on the same grid, e.g. from :func:`land_mask_from_landsea`;
      default: cells that are NaN (``_FillValue``) at every time. Land cells are set to NaN.
    """
    da = read_field(path, variable, prefer=("sst", "tos", "sea_surface_temperature", "analysed_sst",
                                            "sea_surface_temperature_anomaly", "ssta", "sst_anom"))
    if anomaly is None:
        anomaly = _looks_like_anomaly(da)
    da, note = _temperature_to_celsius(da, path, anomaly, repair_quirk)
    name = "sst_anomaly" if anomaly else "sst"
    return _finish(da, name, path, land_mask, note)


@reader_boundary("a gridded NetCDF field", _HINT)
def read_extra(path, name: str = "ssh_anomaly", variable: str | None = None, units: str = "m",
               land_mask: xr.DataArray | None = None) -> xr.Dataset:
    """Another monthly field (default: sea-surface-height anomaly in m, e.g. GODAS ``zos``/``sshg``), standardised
    like :func:`read_sst`. ``cm`` and ``mm`` are converted to m when ``units="m"``."""
    da = read_field(path, variable, prefer=("zos", "ssh", "sshg", "sea_surface_height_above_geoid", "adt", "sla"))
    have = _norm_units(da.attrs.get("units"))
    if units == "m" and have in ("cm", "centimeters", "centimetres"):
        da = da / 100.0
    elif units == "m" and have in ("mm", "millimeters", "millimetres"):
        da = da / 1000.0
    elif have and have not in (units, "meters", "metres", "meter", "metre") and units == "m":
        raise DataFileError(path, f"variable {da.name!r} has units {da.attrs.get('units')!r}; expected a height "
                                  f"in m, cm or mm — fix the units attribute.")
    return _finish(da, name, path, land_mask, "", units=units)


_ATTRS = {
    "sst": {"standard_name": "sea_surface_temperature", "long_name": "sea surface temperature", "units": "degC"},
    "sst_anomaly": {"long_name": "sea surface temperature anomaly", "units": "degC"},
    "ssh_anomaly": {"long_name": "sea surface height anomaly", "units": "m"},
}


def _finish(da, name, path, land_mask, note, units=None) -> xr.Dataset:
    path = Path(path)
    if land_mask is None:
        mask = da.isnull().all("time").astype("int8")
    else:
        mask = _check_mask(land_mask, da, path)
    da = da.where(mask == 0)
    attrs = dict(_ATTRS.get(name, {"long_name": name.replace("_", " "), "units": units or da.attrs.get("units", "")}))
    for key in ("long_name",):
        if da.attrs.get(key):
            attrs["original_" + key] = str(da.attrs[key])
    if note:
        attrs["comment"] = note
    da = da.astype("float32").assign_attrs(attrs)
    da.name = name
    ds = xr.Dataset({name: da, "land_mask": mask.rename("land_mask")})
    ds["land_mask"].attrs = land_mask_attrs("all-NaN cells of " + path.name if land_mask is None
                                            else (land_mask.attrs.get("rule", "given mask")))
    ds.attrs = {"Conventions": CONVENTIONS, "lon_convention": "0..360", "source": path.name,
                "files": json.dumps([{"path": path.name, "sha256": _sha256(path)}])}
    return ds


def land_mask_attrs(rule: str) -> dict:
    return {"long_name": "land mask", "flag_values": np.array([0, 1], dtype="int8"),
            "flag_meanings": "sea land", "rule": rule}


def _check_mask(mask: xr.DataArray, da: xr.DataArray, path) -> xr.DataArray:
    if not isinstance(mask, xr.DataArray) or set(mask.dims) != {"lat", "lon"}:
        raise DataParameterError("land_mask", "must be an xarray DataArray with dims (lat, lon), e.g. from "
                                              "land_mask_from_landsea(...).")
    if mask.sizes != {"lat": da.sizes["lat"], "lon": da.sizes["lon"]} or not (
            np.allclose(mask.lat, da.lat) and np.allclose(np.mod(mask.lon, 360), da.lon)):
        raise DataParameterError("land_mask", f"grid ({mask.sizes['lat']}×{mask.sizes['lon']}) differs from the grid "
                                              f"of {Path(path).name} ({da.sizes['lat']}×{da.sizes['lon']}); build the "
                                              f"mask on the field's grid (land_mask_from_landsea(path, lat, lon)).")
    return mask.transpose("lat", "lon").assign_coords(lat=da.lat, lon=da.lon).astype("int8")


# -------------------------------------------------------------------------------------------- grids
def _overlap(src_centres: np.ndarray, src_width: float, dst_centres: np.ndarray, dst_width: float,
             period: float | None = None) -> np.ndarray:
    """(n_dst, n_src) length of the overlap of each destination cell with each source cell (1-D)."""
    s0 = src_centres - src_width / 2
    s1 = src_centres + src_width / 2
    d0 = (dst_centres - dst_width / 2)[:, None]
    d1 = (dst_centres + dst_width / 2)[:, None]
    out = np.zeros((dst_centres.size, src_centres.size))
    shifts = (-period, 0.0, period) if period else (0.0,)
    for sh in shifts:
        out += np.clip(np.minimum(d1, s1[None] + sh) - np.maximum(d0, s0[None] + sh), 0, None)
    return out


def _spacing(values: np.ndarray, what: str) -> float:
    d = np.diff(np.asarray(values, dtype=float))
    if d.size == 0 or not np.allclose(d, d[0], rtol=1e-3):
        raise DataParameterError(what, "must be evenly spaced (a regular grid).")
    return float(d[0])


def land_fraction(landsea: xr.DataArray, lat, lon, land_codes=_LAND_CODES_1X1) -> xr.DataArray:
    """Fraction of each target cell (centres ``lat``, ``lon``, regular spacing) covered by land in a finer
    land-sea code grid, by exact overlap lengths (cos-latitude within a cell neglected)."""
    lat = np.asarray(lat, dtype=float)
    lon = np.mod(np.asarray(lon, dtype=float), 360)
    is_land = np.isin(landsea.values, land_codes).astype(float)
    wy = _overlap(landsea.lat.values.astype(float), _spacing(landsea.lat.values, "landsea lat"), lat,
                  _spacing(lat, "lat"))
    wx = _overlap(np.mod(landsea.lon.values.astype(float), 360), _spacing(landsea.lon.values, "landsea lon"), lon,
                  _spacing(lon, "lon"), period=360.0)
    frac = (wy @ is_land @ wx.T) / (wy.sum(1)[:, None] * wx.sum(1)[None, :])
    return xr.DataArray(frac, dims=("lat", "lon"), coords={"lat": lat, "lon": lon}, name="land_fraction")


@reader_boundary("a land-sea mask", "give a NetCDF file with one (lat, lon) land-sea code field (geocat LSMASK: "
                 "0 ocean, 1 land, 2 lake, 3 small island, 4 ice shelf).")
def land_mask_from_landsea(path, lat, lon, threshold: float = 0.5) -> xr.DataArray:
    """Land mask on the grid ``lat``×``lon`` from a finer land-sea code file (geocat ``LSMASK``: 0 ocean, 1 land,
    2 lake, 3 small island, 4 ice shelf). Codes 1, 2, 4 count as land; a cell is land (1) when **more than**
    ``threshold`` (default half) of its area is land."""
    ds = _open(path)
    name = _pick_variable(ds, None, path, {"lsmask", "landsea", "lsm", "land_sea_mask"})
    la, lo = _find_coord(ds, "lat", path), _find_coord(ds, "lon", path)
    codes = _standardise(ds[name].load(), path, la, lo, None)
    ds.close()
    frac = land_fraction(codes, lat, lon)
    mask = (frac > threshold).astype("int8").rename("land_mask")
    mask.attrs = land_mask_attrs(f"land when more than {threshold:g} of the cell's area is land (codes 1, 2, 4) "
                                 f"in {Path(path).name}")
    return mask


def area_weights(lat) -> np.ndarray:
    """cos(latitude) weights (the area of a regular lat/lon cell up to a constant)."""
    return np.cos(np.deg2rad(np.asarray(lat, dtype=float)))


def box_weights(lat, lon, lat_bounds, lon_bounds, land_mask: xr.DataArray | None = None) -> xr.DataArray:
    """Weights (lat, lon) of an area-weighted box mean: cos(lat) on sea cells whose centres lie in the box
    (bounds inclusive, lon in 0..360 or -180..180; a box may cross 0°E when lon_bounds[0] > lon_bounds[1]),
    0 elsewhere, normalised to sum 1. The mean of a field ``f`` over the box is ``(w * f).sum()``."""
    lat = np.asarray(lat, dtype=float)
    lon_in = np.asarray(lon, dtype=float)
    lon = np.mod(lon_in, 360)
    la0, la1 = lat_bounds
    lo0, lo1 = (float(np.mod(b, 360)) for b in lon_bounds)
    if la0 > la1:
        raise DataParameterError("lat_bounds", f"({la0}, {la1}) is reversed; give (south, north).")
    in_lat = (lat >= la0 - 1e-9) & (lat <= la1 + 1e-9)
    in_lon = ((lon >= lo0 - 1e-9) & (lon <= lo1 + 1e-9)) if lo0 <= lo1 else ((lon >= lo0 - 1e-9) | (lon <= lo1 + 1e-9))
    w = np.where(in_lat[:, None] & in_lon[None, :], area_weights(lat)[:, None], 0.0) * np.ones((1, lon.size))
    if land_mask is not None:
        w = w * (np.asarray(land_mask.values) == 0)
    if w.sum() <= 0:
        raise DataParameterError("lat_bounds/lon_bounds", f"the box {lat_bounds}°N × {lon_bounds}°E holds no sea "
                                                          f"cell of this grid; widen the box.")
    return xr.DataArray(w / w.sum(), dims=("lat", "lon"), coords={"lat": lat, "lon": lon_in}, name="box_weights")


# ---------------------------------------------------------------------------------------- anomalies
def select_band(obj, lat_min: float = DEFAULT_BAND[0], lat_max: float = DEFAULT_BAND[1]):
    """Keep latitudes in [lat_min, lat_max] (default 55°S–60°N)."""
    if lat_min >= lat_max:
        raise DataParameterError("lat_min/lat_max", f"{lat_min} ≥ {lat_max}; give lat_min < lat_max.")
    out = obj.sel(lat=slice(lat_min, lat_max))
    if out.sizes["lat"] == 0:
        raise DataParameterError("lat_min/lat_max", f"no grid latitude in [{lat_min}, {lat_max}].")
    return out


def anomalies(field: xr.DataArray, base_period: tuple[str, str] | None = ("1981-01", "2010-12"),
              detrend: bool = False) -> xr.DataArray:
    """Monthly anomalies: subtract each calendar month's mean over ``base_period`` (None = whole record), then
    optionally remove a least-squares linear trend per cell (fitted over the whole record). NaN stays NaN."""
    if "time" not in field.dims:
        raise DataParameterError("field", "needs a time dimension.")
    base = field if base_period is None else field.sel(time=slice(*base_period))
    months = base.time.dt.month
    if base.sizes["time"] == 0 or len(np.unique(months)) < 12:
        raise DataParameterError("base_period", f"{base_period} does not cover all 12 calendar months of the record "
                                                f"({field.time.values[0]!s:.7}..{field.time.values[-1]!s:.7}); "
                                                f"choose a base period inside it.")
    clim = base.groupby("time.month").mean("time")
    anom = (field.groupby("time.month") - clim).drop_vars("month")
    if detrend:
        t = (anom.time - anom.time[0]).dt.days.astype(float).values / 365.25
        a = anom.values
        ok = np.isfinite(a)
        n = ok.sum(0)
        tt = np.where(ok, t[:, None, None] if a.ndim == 3 else t.reshape((-1,) + (1,) * (a.ndim - 1)), np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN (land) cells
            tm = np.nanmean(tt, 0)
            am = np.nanmean(a, 0)
        cov = np.nansum((tt - tm) * (a - am), 0)
        var = np.nansum((tt - tm) ** 2, 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = np.where((n > 1) & (var > 0), cov / var, 0.0)
        a = a - (am + slope * (tt - tm)) + am
        anom = anom.copy(data=np.where(ok, a, np.nan))
    anom.attrs = dict(field.attrs)
    anom.attrs["long_name"] = "sea surface temperature anomaly" if field.name in ("sst", None) else \
        f"{field.attrs.get('long_name', field.name)} anomaly"
    anom.attrs["comment"] = (f"monthly climatology {base_period[0]}..{base_period[1]}" if base_period
                             else "monthly climatology of the whole record") + ("; linear trend removed" if detrend else "")
    anom.attrs.pop("standard_name", None)
    anom.name = "sst_anomaly" if field.name in ("sst", None) else f"{field.name}_anomaly"
    return anom


def regrid(ds, resolution: float | None = None, *, lat=None, lon=None, land_threshold: float = 0.5):
    """A coarser grid: ``resolution`` (degrees, an integer multiple of the grid spacing) → block means with
    cos-lat weights ignoring NaN (xarray ``coarsen``); or explicit ``lat``/``lon`` centres → bilinear
    interpolation (xarray ``interp``). A ``land_mask`` variable becomes land where more than ``land_threshold``
    of the block is land (coarsen) or by nearest neighbour (interp); fields are NaN there."""
    is_da = isinstance(ds, xr.DataArray)
    ds = ds.to_dataset(name=ds.name or "field") if is_da else ds
    if (resolution is None) == (lat is None and lon is None):
        raise DataParameterError("resolution/lat/lon", "give either resolution (degrees) or target lat and lon.")
    if resolution is not None:
        dy, dx = _spacing(ds.lat.values, "lat"), _spacing(ds.lon.values, "lon")
        fy, fx = resolution / dy, resolution / dx
        if not (np.isclose(fy, round(fy)) and np.isclose(fx, round(fx))) or round(fy) < 1 or round(fx) < 1:
            raise DataParameterError("resolution", f"{resolution}° is not an integer multiple of the grid spacing "
                                                   f"({dy}° × {dx}°); use interpolation (lat=..., lon=...) instead.")
        fy, fx = int(round(fy)), int(round(fx))
        w = xr.DataArray(area_weights(ds.lat), dims="lat", coords={"lat": ds.lat})
        out = {}
        for name, var in ds.data_vars.items():
            if name == "land_mask":
                frac = var.astype(float).coarsen(lat=fy, lon=fx, boundary="trim").mean()
                out[name] = (frac > land_threshold).astype("int8").assign_attrs(var.attrs)
                continue
            ww = w.broadcast_like(var).where(var.notnull())
            num = (var * ww).coarsen(lat=fy, lon=fx, boundary="trim").sum()
            den = ww.coarsen(lat=fy, lon=fx, boundary="trim").sum()
            out[name] = (num / den).where(den > 0).astype(var.dtype).assign_attrs(var.attrs)
        res = xr.Dataset(out, attrs=ds.attrs)
    else:
        if lat is None or lon is None:
            raise DataParameterError("lat/lon", "give both target lat and lon.")
        lat = np.asarray(lat, dtype=float)
        lon = np.mod(np.asarray(lon, dtype=float), 360)
        padded = xr.concat([ds.isel(lon=[-1]).assign_coords(lon=ds.lon[-1:] - 360), ds,
                            ds.isel(lon=[0]).assign_coords(lon=ds.lon[:1] + 360)], "lon")
        out = {}
        for name, var in padded.data_vars.items():
            method = "nearest" if name == "land_mask" else "linear"
            out[name] = var.interp(lat=lat, lon=lon, method=method).astype(var.dtype).assign_attrs(var.attrs)
        res = xr.Dataset(out, attrs=ds.attrs)
    if "land_mask" in res:
        for name in res.data_vars:
            if name != "land_mask":
                res[name] = res[name].where(res["land_mask"] == 0)
    for c in ("lat", "lon"):
        res[c].attrs = ds[c].attrs
    return res[next(iter(res.data_vars))] if is_da else res


# ---------------------------------------------------------------------------------------------- ENSO
def nino34(field: xr.DataArray, land_mask: xr.DataArray | None = None) -> xr.DataArray:
    """Niño 3.4 index: cos-lat weighted mean over 5°S–5°N, 170°W–120°W (cells whose centres lie in the box,
    bounds inclusive; NaN cells skipped). ``field`` is an SST anomaly (time, lat, lon) → index (time), degC."""
    w = box_weights(field.lat, field.lon, NINO34_BOX["lat"], NINO34_BOX["lon"], land_mask)
    ww = w.where(w > 0).broadcast_like(field).where(field.notnull())
    idx = (field * ww).sum(("lat", "lon")) / ww.sum(("lat", "lon"))
    idx.name = "nino34"
    idx.attrs = {"long_name": "Niño 3.4 index (area-weighted SST anomaly, 5°S–5°N, 170°W–120°W)",
                 "units": field.attrs.get("units", "degC")}
    return idx


def oni(index: xr.DataArray) -> xr.DataArray:
    """Oceanic Niño Index: centred 3-month running mean of the Niño 3.4 anomaly (NaN at both ends)."""
    out = index.rolling(time=3, center=True).mean()
    out.name = "oni"
    out.attrs = {"long_name": "Oceanic Niño Index (3-month running mean of Niño 3.4)",
                 "units": index.attrs.get("units", "degC")}
    return out


def enso_phase(index: xr.DataArray, threshold: float = 0.5) -> xr.DataArray:
    """ENSO phase from an index (ONI or Niño 3.4): 1 El Niño (≥ +threshold), -1 La Niña (≤ -threshold),
    0 neutral; NaN index → phase 0 is *not* assumed: the result is float with NaN there."""
    if threshold <= 0:
        raise DataParameterError("threshold", f"must be positive, got {threshold}.")
    v = index.values
    ph = np.where(v >= threshold, 1.0, np.where(v <= -threshold, -1.0, 0.0))
    ph = np.where(np.isfinite(v), ph, np.nan)
    out = index.copy(data=ph)
    out.name = "enso_phase"
    out.attrs = {"long_name": f"ENSO phase (±{threshold:g} degC)", "flag_values": np.array([-1, 0, 1]),
                 "flag_meanings": "la_nina neutral el_nino"}
    return out


# ---------------------------------------------------------------------------------------------- demo
def _assets() -> Path:
    from xaiscope.assets import ASSETS

    return ASSETS


def demo_sst(with_ssh: bool = True, lat_band: tuple[float, float] | None = DEFAULT_BAND) -> xr.Dataset:
    """The shipped ERSSTv5 5° anomalies 1980-01..2018-12 (``sst_anomaly``, degC, detrended) with GODAS
    ``ssh_anomaly`` (m) and the ``land_mask`` built from the shipped 1° land-sea mask (land when more than half
    of a 5° cell is land). Land cells are NaN in both fields."""
    root = _assets() / "ersst"
    f_sst = root / "anom_detrend_ersstv5_198001-201812_Ham-LR.nc"
    probe = read_field(f_sst, "tos")
    mask = land_mask_from_landsea(root / "geocat_landsea_1x1.nc", probe.lat, probe.lon)
    ds = read_sst(f_sst, "tos", anomaly=True, land_mask=mask)
    if with_ssh:
        ssh = read_extra(root / "anom_detrend_sshg_GODAS_198001-201812_Ham-LR.nc", "ssh_anomaly", "zos",
                         land_mask=mask)
        if not ssh.time.equals(ds.time):
            raise DataError("the shipped SST and SSH files cover different months; reinstall xaiscope.")
        ds["ssh_anomaly"] = ssh["ssh_anomaly"]
        files = json.loads(ds.attrs["files"]) + json.loads(ssh.attrs["files"])
        ds.attrs["files"] = json.dumps(files)
    if lat_band is not None:
        ds = select_band(ds, *lat_band)
    ds.attrs["source"] = ("NOAA ERSSTv5 SST anomalies and NCEP GODAS SSH anomalies on a 5° grid (detrended, "
                          "Yaldron/CNN-CD 'Ham-LR' files; see assets/ersst/SOURCES.md)")
    return ds


@reader_boundary("a Niño 3.4 CSV file", "give a CSV with 'datetime' and 'Nino34anom' columns.")
def observed_nino34(path=None) -> xr.DataArray:
    """Observed (NOAA CPC, OISSTv2-based) Niño 3.4 anomalies, monthly 1982-01..2021-04, from the shipped
    ``pythia_enso_data.csv`` (or another CSV with ``datetime`` and ``Nino34anom`` columns)."""
    path = Path(path) if path is not None else _assets() / "enso_indices" / "pythia_enso_data.csv"
    try:
        df = pd.read_csv(path, parse_dates=["datetime"])
    except FileNotFoundError:
        raise DataFileError(path, "file not found.") from None
    except (ValueError, pd.errors.ParserError) as err:
        raise DataFileError(path, f"not a CSV with a 'datetime' column ({err}).") from err
    if "Nino34anom" not in df:
        raise DataFileError(path, f"no 'Nino34anom' column (columns: {', '.join(df.columns)}).")
    t = _month_starts(df["datetime"].values, path)
    out = xr.DataArray(df["Nino34anom"].to_numpy(float), dims="time", coords={"time": t}, name="nino34_observed")
    out.attrs = {"long_name": "observed Niño 3.4 SST anomaly (NOAA CPC, OISSTv2)", "units": "degC",
                 "source": path.name}
    return out


def to_ocean_vectors(field: xr.DataArray, land_mask: xr.DataArray) -> np.ndarray:
    """(time, n_sea) array of the sea cells (row-major lat, lon order) — the state vector of linear models."""
    sea = np.asarray(land_mask.values) == 0
    return np.asarray(field.values).reshape(field.sizes["time"], -1)[:, sea.ravel()]


def from_ocean_vectors(vectors: np.ndarray, land_mask: xr.DataArray, time=None, name: str = "sst_anomaly",
                       attrs: Mapping | None = None) -> xr.DataArray:
    """Inverse of :func:`to_ocean_vectors`: maps with NaN over land (dims (time, lat, lon) or (lat, lon))."""
    sea = (np.asarray(land_mask.values) == 0).ravel()
    vectors = np.asarray(vectors)
    single = vectors.ndim == 1
    v = vectors[None] if single else vectors
    out = np.full((v.shape[0], sea.size), np.nan)
    out[:, sea] = v
    out = out.reshape((v.shape[0],) + land_mask.shape)
    coords = {"lat": land_mask.lat, "lon": land_mask.lon}
    if single:
        return xr.DataArray(out[0], dims=("lat", "lon"), coords=coords, name=name, attrs=dict(attrs or {}))
    if time is None:
        time = np.arange(v.shape[0])
    return xr.DataArray(out, dims=("time", "lat", "lon"), coords={"time": time, **coords}, name=name,
                        attrs=dict(attrs or {}))
