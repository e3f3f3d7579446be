"""Readers for the CAMELS-US data set (Newman et al. 2015; Addor et al. 2017) in its original folder layout.

Every reader returns an :class:`xarray.Dataset` with a daily ``time`` coordinate, CF-style variable names with
``units``, ``long_name`` (and ``standard_name`` where CF has one) and the basin metadata in ``attrs``.
Bad files raise :class:`~xaiscope.data.errors.DataFileError` (the message names the file, the problem and the
fix); a basin that is not in a CAMELS folder raises :class:`~xaiscope.data.errors.UnknownBasinError`.

Folder layout (as distributed, ``basin_dataset_public_v1p2/``)::

    basin_mean_forcing/<source>/<HUC>/<id>_lump_cida_forcing_leap.txt   (maurer/nldas: <id>_lump_<source>_...)
    usgs_streamflow/<HUC>/<id>_streamflow_qc.txt
    model_output/flow_timeseries/<source>/<HUC>/<id>_<seed>_model_output.txt
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from xaiscope.data.errors import DataError, DataFileError, DataParameterError, UnknownBasinError, reader_boundary

_HINT = ("the file is damaged or not in the CAMELS-US layout; download it again (or compare it with the CAMELS-US "
         "files shipped in xaiscope's assets/camels_us).")

__all__ = [
    "VARIABLE_ATTRS", "read_forcing", "read_streamflow", "read_model_output", "load_basin", "load_basins",
    "demo_basin", "read_basin_list", "normalise_basin_id", "CFS_TO_M3S", "DEMO_BASIN_ID",
]

#: ft3/s -> m3/s
CFS_TO_M3S = 0.0283168
DEMO_BASIN_ID = "01031500"
_DEMO_BASIN_NAME = "Piscataquis River near Dover-Foxcroft, ME"

#: CF metadata of every variable a basin Dataset can hold.
VARIABLE_ATTRS: dict[str, dict[str, str]] = {
    "prcp": {"units": "mm/day", "long_name": "precipitation", "standard_name": "lwe_precipitation_rate"},
    "srad": {"units": "W m-2", "long_name": "incident shortwave radiation (daylight average)",
             "standard_name": "surface_downwelling_shortwave_flux_in_air"},
    "tmax": {"units": "degC", "long_name": "daily maximum air temperature", "standard_name": "air_temperature",
             "cell_methods": "time: maximum"},
    "tmin": {"units": "degC", "long_name": "daily minimum air temperature", "standard_name": "air_temperature",
             "cell_methods": "time: minimum"},
    "tmean": {"units": "degC", "long_name": "daily mean air temperature, (tmax + tmin) / 2",
              "standard_name": "air_temperature", "cell_methods": "time: mean"},
    "vp": {"units": "Pa", "long_name": "water vapour pressure",
           "standard_name": "water_vapor_partial_pressure_in_air"},
    "dayl": {"units": "s", "long_name": "day length (daylight duration)"},
    "qobs": {"units": "mm/day", "long_name": "observed streamflow (runoff depth over the basin area)"},
    "qobs_flag": {"long_name": "USGS streamflow quality flag",
                  "comment": "A: approved, A:e: approved estimated, P: provisional, M: missing"},
    "swe": {"units": "mm", "long_name": "snow water equivalent",
            "standard_name": "lwe_thickness_of_surface_snow_amount"},
    "q_benchmark": {"units": "mm/day", "long_name": "simulated streamflow of the SAC-SMA + Snow-17 benchmark"},
    "raim": {"units": "mm/day", "long_name": "rain plus snowmelt reaching the soil (Snow-17)"},
    "tair": {"units": "degC", "long_name": "mean air temperature used by the benchmark model",
             "standard_name": "air_temperature"},
    "pet": {"units": "mm/day", "long_name": "potential evapotranspiration"},
    "et": {"units": "mm/day", "long_name": "actual evapotranspiration"},
    "soil_moisture": {"units": "mm", "long_name": "soil water storage"},
    "groundwater": {"units": "mm", "long_name": "groundwater storage"},
    "routing_store": {"units": "mm", "long_name": "fast runoff routing storage"},
}

_TIME_ATTRS = {"standard_name": "time", "long_name": "time (day of the daily value)", "axis": "T"}

# forcing column (name before the unit, lower case) -> (variable, accepted units (lower case, no spaces/^))
_FORCING_COLUMNS = {
    "dayl": ("dayl", {"s"}),
    "prcp": ("prcp", {"mm/day", "mm/d", "mm"}),
    "srad": ("srad", {"w/m2", "wm-2"}),
    "tmax": ("tmax", {"c", "degc"}),
    "tmin": ("tmin", {"c", "degc"}),
    "vp": ("vp", {"pa"}),
    "swe": (None, None),   # all zero in the distributed files: not exposed
}
_DATE_COLUMNS = {"year": "year", "mnth": "month", "month": "month", "day": "day", "hr": "hour", "hour": "hour"}

_MODEL_OUTPUT_COLUMNS = {
    "YR": "year", "MNTH": "month", "DY": "day", "HR": "hour",
    "SWE": "swe", "PRCP": "prcp", "RAIM": "raim", "TAIR": "tair", "PET": "pet", "ET": "et",
    "MOD_RUN": "q_benchmark", "OBS_RUN": "qobs",
}

#: A trailing block of exact-zero OBS_RUN values at the end of a model-output record is treated as missing
#: when it holds at least this many zero days and its zero days are at most ``_ZERO_GAP_DAYS`` apart.
_TRAILING_ZERO_MIN_DAYS = 5
_ZERO_GAP_DAYS = 10

_BASIN_ID_RE = re.compile(r"^(\d{8})(?=_)")


# ---------------------------------------------------------------------------------------------- file helpers
def _read_text(path: Path, what: str) -> tuple[str, str]:
    """Return (text, sha256) of a text file, or raise DataFileError."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(path, f"{what} file not found; check the path (and the CAMELS folder layout).")
    if not path.is_file():
        raise DataFileError(path, f"expected a {what} file but this is a folder; pass the .txt file itself.")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataFileError(path, f"cannot read the {what} file ({exc.strerror}); check its permissions.") from exc
    sha = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFileError(
            path, f"not a text file (byte {exc.start} is not UTF-8); the {what} file is corrupted, "
                  "download it again.") from exc
    if "\x00" in text:
        raise DataFileError(path, f"contains NUL bytes; the {what} file is corrupted, download it again.")
    return text, sha


def _tokenise(lines: Sequence[str], first_line_no: int, ncols: int, path: Path,
              what: str) -> tuple[list[list[str]], np.ndarray]:
    """Split data lines on whitespace; every non-blank line must have ``ncols`` fields."""
    rows, numbers = [], []
    for k, line in enumerate(lines):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != ncols:
            line_no = first_line_no + k
            hint = ("the file looks truncated; download it again" if k >= len(lines) - 2
                    else "fix or remove that line")
            raise DataFileError(
                path, f"line {line_no} has {len(fields)} values but the {what} file has {ncols} columns "
                      f"({hint}).")
        rows.append(fields)
        numbers.append(first_line_no + k)
    if not rows:
        raise DataFileError(path, f"no data rows; the {what} file is empty or truncated, download it again.")
    return rows, np.asarray(numbers)


def _to_float(cells: np.ndarray, line_numbers: np.ndarray, names: Sequence[str], path: Path) -> np.ndarray:
    """Convert a (rows, cols) array of strings to float64, naming the first bad cell on failure."""
    try:
        return cells.astype(np.float64)
    except (ValueError, OverflowError):
        for r in range(cells.shape[0]):
            for c in range(cells.shape[1]):
                try:
                    float(cells[r, c])
                except (ValueError, OverflowError):
                    raise DataFileError(
                        path, f"line {line_numbers[r]}, column {names[c]!r}: {str(cells[r, c])!r} is not a number "
                              "(fix the value or download the file again).") from None
        raise DataFileError(path, "contains values that are not numbers; download the file again.") from None


def _dates(year: np.ndarray, month: np.ndarray, day: np.ndarray, line_numbers: np.ndarray,
           path: Path) -> np.ndarray:
    """Build datetime64[ns] dates from year/month/day columns; check they are valid and strictly increasing."""
    parts = np.stack([year, month, day], axis=1)
    bad = ~np.isfinite(parts).all(axis=1) | (parts != np.round(parts)).any(axis=1)
    bad |= (year < 1700) | (year > 2300) | (month < 1) | (month > 12) | (day < 1) | (day > 31)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise DataFileError(
            path, f"line {line_numbers[r]}: {year[r]:g}-{month[r]:g}-{day[r]:g} is not a valid year-month-day "
                  "(fix the date columns or download the file again).")
    frame = pd.DataFrame({"year": year.astype(np.int64), "month": month.astype(np.int64),
                          "day": day.astype(np.int64)})
    try:
        dates = pd.to_datetime(frame, errors="coerce")
    except (ValueError, OverflowError):  # pragma: no cover - coerce should not raise
        dates = pd.Series(pd.NaT, index=frame.index)
    if dates.isna().any():
        r = int(np.flatnonzero(dates.isna().to_numpy())[0])
        raise DataFileError(
            path, f"line {line_numbers[r]}: {int(year[r])}-{int(month[r]):02d}-{int(day[r]):02d} is not a calendar "
                  "date (fix the date columns or download the file again).")
    values = dates.to_numpy().astype("datetime64[ns]")
    step = np.diff(values)
    wrong = np.flatnonzero(step <= np.timedelta64(0, "ns"))
    if wrong.size:
        r = int(wrong[0]) + 1
        kind = "repeats" if step[wrong[0]] == np.timedelta64(0, "ns") else "comes before"
        raise DataFileError(
            path, f"line {line_numbers[r]}: date {str(values[r])[:10]} {kind} the date on line "
                  f"{line_numbers[r - 1]} ({str(values[r - 1])[:10]}); dates must be unique and in increasing "
                  "order (sort the file and remove duplicated days).")
    return values


def _daily_index(values: np.ndarray) -> pd.DatetimeIndex:
    return pd.date_range(values[0], values[-1], freq="D", unit="ns")


def _attach(ds: xr.Dataset, name: str, data: np.ndarray, extra: dict | None = None) -> None:
    attrs = dict(VARIABLE_ATTRS[name])
    if extra:
        attrs.update(extra)
    ds[name] = xr.DataArray(data, dims="time", attrs=attrs)


def _files_attr(entries: Sequence[tuple[Path, str]]) -> str:
    return json.dumps([{"path": str(p), "sha256": s} for p, s in entries])


def _basin_id_from_name(path: Path) -> str | None:
    m = _BASIN_ID_RE.match(path.name)
    return m.group(1) if m else None


def normalise_basin_id(basin_id) -> str:
    """Return a CAMELS basin id as an 8-digit string (``1031500`` -> ``"01031500"``)."""
    if isinstance(basin_id, (bool, np.bool_)):
        raise DataParameterError("basin_id", f"{basin_id!r} is not a basin id; pass an 8-digit string "
                                             "such as '01031500'.")
    if isinstance(basin_id, (int, np.integer)):
        if not 0 < int(basin_id) < 10**8:
            raise DataParameterError("basin_id", f"{basin_id!r} is not an 8-digit USGS gauge id; pass a string "
                                                 "such as '01031500'.")
        return f"{int(basin_id):08d}"
    if isinstance(basin_id, str):
        text = basin_id.strip()
        if re.fullmatch(r"\d{8}", text):
            return text
        if re.fullmatch(r"\d{1,7}", text):
            return text.zfill(8)
    raise DataParameterError("basin_id", f"{basin_id!r} is not an 8-digit USGS gauge id; pass a string such as "
                                         "'01031500' (keep the leading zero).")


def _header_float(line: str, line_no: int, what: str, path: Path) -> float:
    try:
        value = float(line.strip())
    except ValueError:
        raise DataFileError(
            path, f"line {line_no} should hold the basin {what} (one number) but reads {line.strip()[:40]!r}; "
                  "a CAMELS forcing file starts with latitude, elevation (m) and area (m2) lines.") from None
    if not np.isfinite(value):
        raise DataFileError(path, f"line {line_no}: the basin {what} is {line.strip()!r}; fix the header.")
    return value


# ------------------------------------------------------------------------------------------------- readers
@reader_boundary("a CAMELS-US forcing file", _HINT)
def read_forcing(path) -> xr.Dataset:
    """Read a CAMELS basin-mean forcing file (``*_lump_*forcing*.txt``: daymet, maurer, nldas, *_extended).

    The file has three header lines (latitude, elevation in m, area in m2), a column-name line and one row per
    day (space- or tab-separated). Columns are matched case-insensitively on the name before the unit, so
    ``PRCP(mm/day)`` and ``prcp(mm/day)`` both give ``prcp``. The ``swe(mm)`` column (all zero in CAMELS) is
    dropped. Missing days between the first and the last date are filled with NaN (said in ``attrs['comment']``).
    """
    path = Path(path)
    text, sha = _read_text(path, "forcing")
    lines = text.splitlines()
    if len(lines) < 5:
        raise DataFileError(
            path, f"only {len(lines)} lines; a CAMELS forcing file has 3 header lines (latitude, elevation, area), "
                  "a column-name line and one line per day. The file is truncated: download it again.")
    latitude = _header_float(lines[0], 1, "latitude", path)
    elevation = _header_float(lines[1], 2, "elevation", path)
    area_m2 = _header_float(lines[2], 3, "area", path)
    if not -90 <= latitude <= 90:
        raise DataFileError(path, f"line 1: latitude {latitude} is outside [-90, 90]; fix the header.")
    if area_m2 <= 0:
        raise DataFileError(path, f"line 3: basin area {area_m2} m2 is not positive; fix the header.")

    names = lines[3].split()
    variables: dict[int, str] = {}
    date_cols: dict[str, int] = {}
    for k, name in enumerate(names):
        m = re.fullmatch(r"([A-Za-z_]+)(?:\((.*)\))?", name)
        key = m.group(1).lower() if m else name.lower()
        unit = (m.group(2) or "").lower().replace(" ", "").replace("^", "") if m else ""
        if key in _DATE_COLUMNS:
            date_cols.setdefault(_DATE_COLUMNS[key], k)
        elif key in _FORCING_COLUMNS:
            var, units = _FORCING_COLUMNS[key]
            if var is None:
                continue
            if unit and unit not in units:
                raise DataFileError(
                    path, f"line 4: column {name!r} is in {m.group(2)!r} but xaiscope expects "
                          f"{sorted(units)[0]!r}; convert the column or use an original CAMELS file.")
            if var in variables.values():
                raise DataFileError(path, f"line 4: column {key!r} appears twice; remove the duplicate.")
            variables[k] = var
    missing = [c for c in ("year", "month", "day") if c not in date_cols]
    missing += [v for v in ("dayl", "prcp", "srad", "tmax", "tmin", "vp") if v not in variables.values()]
    if missing:
        raise DataFileError(
            path, f"line 4 (column names) lacks {', '.join(missing)}; found {names!r}. A CAMELS forcing file has "
                  "'Year Mnth Day Hr dayl(s) prcp(mm/day) srad(W/m2) swe(mm) tmax(C) tmin(C) vp(Pa)'.")

    rows, line_numbers = _tokenise(lines[4:], 5, len(names), path, "forcing")
    cells = np.asarray(rows, dtype=str)
    values = _to_float(cells, line_numbers, names, path)
    time = _dates(values[:, date_cols["year"]], values[:, date_cols["month"]], values[:, date_cols["day"]],
                  line_numbers, path)
    for k, var in variables.items():
        bad = ~np.isfinite(values[:, k])
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise DataFileError(path, f"line {line_numbers[r]}, column {names[k]!r}: value {str(cells[r, k])!r} is not "
                                      "finite; forcing data may not have gaps (fix the value).")

    ds = xr.Dataset(coords={"time": ("time", time, _TIME_ATTRS)})
    for var in ("prcp", "srad", "tmax", "tmin", "vp", "dayl"):
        k = next(col for col, v in variables.items() if v == var)
        _attach(ds, var, values[:, k])
    _attach(ds, "tmean", (ds["tmax"].values + ds["tmin"].values) / 2.0)

    basin_id = _basin_id_from_name(path)
    attrs = {}
    if basin_id:
        attrs["basin_id"] = basin_id
    known = {"daymet", "maurer", "nldas", "maurer_extended", "nldas_extended"}
    source = next((part for part in reversed(path.parent.parts) if part in known), None) \
        or next((k for k in sorted(known, key=len, reverse=True) if k in path.name), "unknown source")
    attrs.update({
        "latitude": latitude, "elevation": elevation, "area": area_m2 / 1e6,
        "source": f"CAMELS-US basin-mean forcing ({source}), Newman et al. (2015), file {path.name}",
        "files": _files_attr([(path, sha)]), "Conventions": "CF-1.8",
    })
    full = _daily_index(time)
    if len(full) != len(time):
        ds = ds.reindex(time=full)
        ds["time"].attrs.update(_TIME_ATTRS)
        attrs["comment"] = (f"{len(full) - len(time)} days missing from the forcing file were filled with NaN")
    ds.attrs.update(attrs)
    return ds


@reader_boundary("a CAMELS-US streamflow file", _HINT)
def read_streamflow(path, area_km2: float) -> xr.Dataset:
    """Read a USGS streamflow file of CAMELS (``*_streamflow_qc.txt``: gauge year month day Q flag).

    Q (ft3/s) is converted to ``qobs`` in mm/day over ``area_km2``; negative values (-999) become NaN. The quality
    flag is kept as ``qobs_flag``. Missing days between the first and last date become NaN with flag ``M``.
    """
    path = Path(path)
    try:
        area = float(area_km2)
    except (TypeError, ValueError):
        raise DataParameterError("area_km2", f"{area_km2!r} is not a number; pass the basin area in km2 "
                                             "(the forcing file header holds it in m2).") from None
    if not np.isfinite(area) or area <= 0:
        raise DataParameterError("area_km2", f"{area_km2!r} is not a positive basin area; pass the area in km2.")
    text, sha = _read_text(path, "streamflow")
    names = ["gauge", "year", "month", "day", "Q", "flag"]
    rows, line_numbers = _tokenise(text.splitlines(), 1, 6, path, "streamflow")
    cells = np.asarray(rows, dtype=str)
    gauges = np.unique(cells[:, 0])
    if gauges.size != 1:
        raise DataFileError(path, f"holds several gauge ids ({', '.join(gauges[:5])}); a streamflow file must "
                                  "hold one basin — split it per gauge.")
    gauge = str(gauges[0])
    values = _to_float(cells[:, 1:5], line_numbers, names[1:5], path)
    time = _dates(values[:, 0], values[:, 1], values[:, 2], line_numbers, path)
    q_cfs = values[:, 3]
    if np.isinf(q_cfs).any():
        r = int(np.flatnonzero(np.isinf(q_cfs))[0])
        raise DataFileError(path, f"line {line_numbers[r]}: discharge {str(cells[r, 4])!r} is not finite; fix the value.")
    q_cfs = np.where(q_cfs < 0, np.nan, q_cfs)
    qobs = q_cfs * CFS_TO_M3S * 86400.0 / (area * 1e6) * 1000.0

    ds = xr.Dataset(coords={"time": ("time", time, _TIME_ATTRS)})
    _attach(ds, "qobs", qobs, {"comment": f"USGS discharge (ft3/s) * {CFS_TO_M3S} * 86400 / area; "
                                          "negative values (-999, missing) are NaN"})
    ds["qobs_flag"] = xr.DataArray(cells[:, 5].astype(object), dims="time", attrs=VARIABLE_ATTRS["qobs_flag"])
    full = _daily_index(time)
    if len(full) != len(time):
        ds = ds.reindex(time=full)
        ds["qobs_flag"] = ds["qobs_flag"].fillna("M")
        ds["time"].attrs.update(_TIME_ATTRS)
    basin_id = gauge if re.fullmatch(r"\d{8}", gauge) else _basin_id_from_name(path)
    if basin_id:
        ds.attrs["basin_id"] = basin_id
    ds.attrs.update({"area": area, "source": f"USGS daily streamflow as distributed with CAMELS-US, file {path.name}",
                     "files": _files_attr([(path, sha)]), "Conventions": "CF-1.8"})
    return ds


def _trailing_zero_block(q: np.ndarray) -> np.ndarray:
    """Boolean mask of the trailing block of exact zeros in ``q`` that is treated as missing (see read_model_output)."""
    mask = np.zeros(q.shape, dtype=bool)
    if q.size == 0 or q[-1] != 0.0:
        return mask
    zeros = np.flatnonzero(q == 0.0)
    gaps = np.diff(zeros)
    breaks = np.flatnonzero(gaps > _ZERO_GAP_DAYS)
    block = zeros[breaks[-1] + 1:] if breaks.size else zeros
    if block.size >= _TRAILING_ZERO_MIN_DAYS:
        mask[block] = True
    return mask


@reader_boundary("a CAMELS-US model output file", _HINT)
def read_model_output(path) -> xr.Dataset:
    """Read a CAMELS SAC-SMA + Snow-17 benchmark file (``*_model_output.txt``).

    Header ``YR MNTH DY HR SWE PRCP RAIM TAIR PET ET MOD_RUN OBS_RUN`` (whitespace-separated). Variables: ``swe``
    (Snow-17, mm), ``prcp``, ``raim``, ``tair``, ``pet``, ``et``, ``q_benchmark`` (MOD_RUN) and ``qobs`` (OBS_RUN).
    Negative OBS_RUN values are missing (NaN). A trailing block of exact zeros of OBS_RUN — at least 5 zero days
    that end the record, each within 10 days of the next — is missing data, not a dry spell, and is also NaN
    (the variable's ``comment`` says how many days).
    """
    path = Path(path)
    text, sha = _read_text(path, "model output")
    lines = text.splitlines()
    first = next((k for k, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise DataFileError(path, "empty file; download the model output file again.")
    header = lines[first].split()
    upper = [h.upper() for h in header]
    missing = [c for c in _MODEL_OUTPUT_COLUMNS if c not in upper]
    if missing:
        raise DataFileError(
            path, f"line {first + 1} (column names) lacks {', '.join(missing)}; found {header[:14]!r}. A CAMELS "
                  "model output file starts with 'YR MNTH DY HR SWE PRCP RAIM TAIR PET ET MOD_RUN OBS_RUN'.")
    if len(set(upper)) != len(upper):
        raise DataFileError(path, f"line {first + 1}: repeated column names in {header!r}; fix the header.")
    rows, line_numbers = _tokenise(lines[first + 1:], first + 2, len(header), path, "model output")
    cells = np.asarray(rows, dtype=str)
    values = _to_float(cells, line_numbers, header, path)
    col = {_MODEL_OUTPUT_COLUMNS[u]: k for k, u in enumerate(upper) if u in _MODEL_OUTPUT_COLUMNS}
    time = _dates(values[:, col["year"]], values[:, col["month"]], values[:, col["day"]], line_numbers, path)
    for var in ("swe", "prcp", "raim", "tair", "pet", "et", "q_benchmark", "qobs"):
        v = values[:, col[var]]
        if np.isinf(v).any():
            r = int(np.flatnonzero(np.isinf(v))[0])
            raise DataFileError(path, f"line {line_numbers[r]}: {header[col[var]]} value {str(cells[r, col[var]])!r} "
                                      "is not finite; fix the value.")

    ds = xr.Dataset(coords={"time": ("time", time, _TIME_ATTRS)})
    for var in ("swe", "prcp", "raim", "tair", "pet", "et", "q_benchmark"):
        v = values[:, col[var]]
        if var != "tair":
            v = np.where(v < 0, np.nan, v)  # -999 and other negative fill values of non-negative quantities
        _attach(ds, var, v)
    ds["swe"].attrs["comment"] = "simulated by Snow-17 (CAMELS benchmark), not observed"
    qobs = values[:, col["qobs"]].copy()
    comment = "OBS_RUN of the CAMELS benchmark file; negative values (missing) are NaN"
    qobs[qobs < 0] = np.nan
    trailing = _trailing_zero_block(np.nan_to_num(qobs, nan=-1.0))
    if trailing.any():
        days = np.flatnonzero(trailing)
        qobs[trailing] = np.nan
        comment += (f"; {days.size} exact-zero days at the end of the record ({str(time[days[0]])[:10]} to "
                    f"{str(time[days[-1]])[:10]}) are missing observations, not dry days, and are NaN")
    _attach(ds, "qobs", qobs, {"comment": comment})
    full = _daily_index(time)
    if len(full) != len(time):
        ds = ds.reindex(time=full)
        ds["time"].attrs.update(_TIME_ATTRS)
    basin_id = _basin_id_from_name(path)
    if basin_id:
        ds.attrs["basin_id"] = basin_id
    ds.attrs.update({"source": f"CAMELS-US SAC-SMA + Snow-17 benchmark output (Newman et al. 2015), file {path.name}",
                     "files": _files_attr([(path, sha)]), "Conventions": "CF-1.8"})
    return ds


# ----------------------------------------------------------------------------------------- folder loaders
def _camels_root(root: Path) -> Path:
    if (root / "basin_mean_forcing").is_dir():
        return root
    nested = root / "basin_dataset_public_v1p2"
    if (nested / "basin_mean_forcing").is_dir():
        return nested
    raise DataFileError(
        root, "not a CAMELS-US folder: it has no basin_mean_forcing/ subfolder. Pass the folder that holds "
              "basin_mean_forcing/, usgs_streamflow/ and model_output/ (basin_dataset_public_v1p2), or a path "
              "straight to a *_lump_*forcing*.txt file.")


def _find_forcing(root: Path, basin_id: str, forcing: str) -> Path:
    base = root / "basin_mean_forcing"
    sources = sorted(p.name for p in base.iterdir() if p.is_dir())
    if forcing not in sources:
        raise DataParameterError(
            "forcing", f"{forcing!r} is not in {base}; available forcing sources: {', '.join(sources) or 'none'}.")
    hits = sorted((base / forcing).rglob(f"{basin_id}_lump_*forcing*.txt"))
    if not hits:
        known = sorted({m for p in (base / forcing).rglob("*_lump_*forcing*.txt")
                        if (m := _basin_id_from_name(p))})
        sample = ", ".join(known[:5]) + (" …" if len(known) > 5 else "")
        raise UnknownBasinError(
            f"basin {basin_id!r} is not in {root} (no basin_mean_forcing/{forcing}/*/{basin_id}_lump_*forcing*.txt); "
            f"{len(known)} basins are there ({sample or 'none'}). Check the id (8 digits, leading zero kept) or "
            "the folder.")
    if len(hits) > 1:
        raise DataFileError(base / forcing, f"several forcing files for basin {basin_id}: "
                                            f"{', '.join(str(h) for h in hits)}; keep only one.")
    return hits[0]


def _pick_model_output(candidates: list[Path], forcing: str) -> Path | None:
    if not candidates:
        return None
    same_source = [p for p in candidates if forcing in p.parts]
    pool = same_source or candidates
    seed05 = [p for p in pool if "_05_" in p.name]
    return sorted(seed05 or pool)[0]


def _locate(root, basin_id, forcing: str) -> tuple[str, Path, Path | None, Path | None]:
    root = Path(root)
    if root.is_file() or root.suffix == ".txt":
        forcing_file = root
        file_id = _basin_id_from_name(forcing_file)
        if basin_id is not None:
            basin_id = normalise_basin_id(basin_id)
            if file_id and file_id != basin_id:
                raise DataParameterError(
                    "basin_id", f"{basin_id!r} does not match the forcing file {forcing_file} (basin {file_id}); "
                                "pass basin_id=None or the matching file.")
        basin_id = basin_id or file_id
        if basin_id is None:
            raise DataParameterError(
                "basin_id", f"cannot tell the basin of {forcing_file} (the name does not start with an 8-digit "
                            "id); pass basin_id='01234567'.")
        if not forcing_file.exists():
            raise DataFileError(forcing_file, "forcing file not found; check the path.")
        folder = forcing_file.parent
        flows = sorted(folder.glob(f"{basin_id}_streamflow_qc.txt"))
        models = sorted(folder.glob(f"{basin_id}_*model_output.txt"))
        return basin_id, forcing_file, (flows[0] if flows else None), _pick_model_output(models, forcing)
    if basin_id is None:
        raise DataParameterError("basin_id", f"missing; pass the 8-digit id of a basin in {root}.")
    basin_id = normalise_basin_id(basin_id)
    if not root.exists():
        raise DataFileError(root, "folder not found; pass the CAMELS-US folder (basin_dataset_public_v1p2).")
    root = _camels_root(root)
    forcing_file = _find_forcing(root, basin_id, forcing)
    flows = sorted((root / "usgs_streamflow").rglob(f"{basin_id}_streamflow_qc.txt")) \
        if (root / "usgs_streamflow").is_dir() else []
    models = sorted((root / "model_output").rglob(f"{basin_id}_*_model_output.txt")) \
        if (root / "model_output").is_dir() else []
    return basin_id, forcing_file, (flows[0] if flows else None), _pick_model_output(models, forcing)


def _camels_name(root: Path, basin_id: str) -> str | None:
    """Gauge name from camels_name.txt (``gauge_id;huc_02;gauge_name``) when the folder has it."""
    for folder in (root, root.parent):
        f = folder / "camels_name.txt"
        if f.is_file():
            try:
                table = pd.read_csv(f, sep=";", dtype=str)
            except Exception:  # noqa: BLE001 - an unreadable optional name table just means "no name"
                return None
            if {"gauge_id", "gauge_name"} <= set(table.columns):
                hit = table.loc[table["gauge_id"].str.strip() == basin_id, "gauge_name"]
                return str(hit.iloc[0]).strip() if len(hit) else None
    return None


@reader_boundary("a CAMELS-US basin", _HINT)
def load_basin(root, basin_id=None, forcing: str = "daymet") -> xr.Dataset:
    """One CAMELS-US basin as a basin Dataset (see docs/ARCHITECTURE.md) on the forcing's daily time axis.

    ``root`` is a CAMELS folder in its original layout (files are found by glob; the HUC is not assumed) or a path
    straight to a forcing file with the streamflow / model output files next to it. ``qobs`` comes from the USGS
    streamflow file when there is one, else from OBS_RUN of the model output; ``swe`` and ``q_benchmark`` come
    from the model output (NaN outside its period; both are left out when there is no model output file).
    """
    if not isinstance(forcing, str) or not forcing:
        raise DataParameterError("forcing", f"{forcing!r} is not a forcing source name; use 'daymet', 'maurer' "
                                            "or 'nldas'.")
    basin_id, forcing_file, flow_file, model_file = _locate(root, basin_id, forcing)
    ds = read_forcing(forcing_file)
    files = json.loads(ds.attrs["files"])
    sources = [f"CAMELS-US basin-mean forcing ({forcing}), Newman et al. (2015)"]
    model = None
    if model_file is not None:
        model = read_model_output(model_file).reindex(time=ds.time)
        files += json.loads(model.attrs["files"])
        sources.append("SAC-SMA + Snow-17 benchmark output")
    nan = np.full(ds.sizes["time"], np.nan)
    if flow_file is not None:
        flow = read_streamflow(flow_file, ds.attrs["area"]).reindex(time=ds.time)
        files += json.loads(flow.attrs["files"])
        sources.append("USGS streamflow")
        ds["qobs"] = flow["qobs"]
        ds["qobs_flag"] = flow["qobs_flag"].fillna("M")
    elif model is not None:
        ds["qobs"] = model["qobs"]
        ds["qobs"].attrs["comment"] = ("no USGS streamflow file found; taken from " +
                                       model["qobs"].attrs["comment"])
    else:
        _attach(ds, "qobs", nan, {"comment": "no streamflow file found (usgs_streamflow or model_output): all NaN"})
    if model is not None:
        ds["swe"] = model["swe"]
        ds["q_benchmark"] = model["q_benchmark"]
    ds["time"].attrs.update(_TIME_ATTRS)
    ds.attrs["basin_id"] = basin_id
    if Path(root).is_dir():
        name = _camels_name(_camels_root(Path(root)), basin_id)
    else:
        name = _camels_name(Path(forcing_file).parent, basin_id)
    if name:
        ds.attrs["basin_name"] = name
    ds.attrs["source"] = "; ".join(sources)
    ds.attrs["files"] = json.dumps(files)
    ds.attrs["forcing"] = forcing
    return ds


@reader_boundary("a basin list", "write one 8-digit basin id per line.")
def read_basin_list(path) -> list[str]:
    """Basin ids from a basin-list file (one id per line, as neuralhydrology keeps them; ``#`` starts a comment)."""
    path = Path(path)
    text, _ = _read_text(path, "basin list")
    ids = []
    for k, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            ids.append(normalise_basin_id(entry))
        except DataParameterError:
            raise DataFileError(path, f"line {k}: {entry!r} is not an 8-digit basin id; write one id such as "
                                      "01031500 per line.") from None
    if not ids:
        raise DataFileError(path, "holds no basin ids; write one 8-digit id per line.")
    return ids


def load_basins(root, basins, forcing: str = "daymet") -> xr.Dataset:
    """Several basins stacked along a ``basin`` dimension (outer join on time).

    ``basins`` is a list of ids or the path of a basin-list file. Per-basin metadata (latitude, elevation, area,
    basin_name) become coordinates along ``basin``.
    """
    if isinstance(basins, (str, os.PathLike)) and not (isinstance(basins, str) and re.fullmatch(r"\d{1,8}", basins)):
        ids = read_basin_list(basins)
    elif isinstance(basins, (str, int, np.integer)):
        ids = [normalise_basin_id(basins)]
    else:
        try:
            ids = [normalise_basin_id(b) for b in basins]
        except TypeError:
            raise DataParameterError("basins", f"{basins!r} is neither a list of basin ids nor a basin-list "
                                               "file.") from None
    if not ids:
        raise DataParameterError("basins", "empty; pass at least one basin id.")
    dupes = sorted({b for b in ids if ids.count(b) > 1})
    if dupes:
        raise DataParameterError("basins", f"repeats {', '.join(dupes)}; list each basin once.")
    members = [load_basin(root, b, forcing=forcing) for b in ids]
    meta = {key: [m.attrs.get(key, np.nan) for m in members] for key in ("latitude", "elevation", "area")}
    names = [m.attrs.get("basin_name", "") for m in members]
    files = [f for m in members for f in json.loads(m.attrs["files"])]
    all_vars = list(dict.fromkeys(v for m in members for v in m.data_vars))
    var_attrs = {}
    for m in members:
        for v in m.data_vars:
            var_attrs.setdefault(v, dict(m[v].attrs))
    for k, m in enumerate(members):
        m.attrs = {}
        for v in all_vars:
            if v not in m.data_vars:  # e.g. no model output (swe, q_benchmark) or no USGS file (qobs_flag)
                fill = np.full(m.sizes["time"], "", dtype=object) if v == "qobs_flag" \
                    else np.full(m.sizes["time"], np.nan)
                members[k][v] = xr.DataArray(fill, dims="time")
    ds = xr.concat(members, dim=pd.Index(ids, name="basin"), join="outer", combine_attrs="drop_conflicts",
                   data_vars="all", coords="different", compat="equals")
    ds["time"].attrs.update(_TIME_ATTRS)
    for var in ds.data_vars:
        ds[var].attrs = {k: v for k, v in var_attrs[var].items() if k != "comment"}
    if "qobs_flag" in ds:
        ds["qobs_flag"] = ds["qobs_flag"].fillna("")
    ds = ds.assign_coords(
        latitude=("basin", np.asarray(meta["latitude"], float), {"units": "degrees_north", "standard_name": "latitude"}),
        elevation=("basin", np.asarray(meta["elevation"], float), {"units": "m", "long_name": "mean basin elevation"}),
        area=("basin", np.asarray(meta["area"], float), {"units": "km2", "long_name": "basin area"}),
        basin_name=("basin", np.asarray(names, dtype=object), {"long_name": "gauge name"}),
    )
    ds["basin"].attrs.update({"long_name": "USGS gauge id (8 digits)", "cf_role": "timeseries_id"})
    ds.attrs = {"source": f"CAMELS-US ({forcing} forcing), {len(ids)} basins", "files": json.dumps(files),
                "forcing": forcing, "Conventions": "CF-1.8"}
    return ds


def demo_basin() -> xr.Dataset:
    """Basin 01031500 (Piscataquis River near Dover-Foxcroft, ME) from the shipped ``assets/camels_us/`` folder."""
    from xaiscope.assets import ASSETS

    ds = load_basin(ASSETS / "camels_us", DEMO_BASIN_ID)
    ds.attrs.setdefault("basin_name", _DEMO_BASIN_NAME)
    return ds
