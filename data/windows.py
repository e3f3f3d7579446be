"""Sliding input windows for sequence-to-one rainfall-runoff models (Kratzert et al. 2018).

A window of ``window`` consecutive days of the inputs is paired with the target on its last day. Inputs and
target are normalised with statistics (mean, std) of the training period only; pass the training ``stats`` when
making windows of another period. Windows whose target is NaN are dropped. Windows of a period may reach back
before the period's first day (the inputs there are used, as in neuralhydrology); the first window ends on the
first day of the period that has ``window`` days of inputs in the record.

NaN inputs inside a window that is kept raise :class:`~xaiscope.data.errors.DataError` naming the variable and
the dates, unless a fill rule is asked for:

* ``nan_inputs="ffill"``: carry the last valid value forward (per variable, over the whole record);
* ``nan_inputs="interpolate"``: linear interpolation in time between the nearest valid values.

Neither rule extrapolates: NaNs before a variable's first valid value still raise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr
from numpy.lib.stride_tricks import sliding_window_view

from xaiscope.data.errors import DataError, DataParameterError

__all__ = ["INPUTS", "TARGET", "Windows", "compute_stats", "make_windows", "window_ending"]

#: The five Daymet inputs of Kratzert et al. (2018).
INPUTS = ("prcp", "srad", "tmax", "tmin", "vp")
TARGET = "qobs"
_NAN_RULES = ("raise", "ffill", "interpolate")


@dataclass
class Windows:
    """Model-ready windows: ``x`` (N, window, n_inputs) float32 and ``y`` (N,) float32, both normalised."""

    x: np.ndarray
    y: np.ndarray
    dates: np.ndarray
    inputs: tuple[str, ...]
    target: str
    stats: dict[str, dict[str, float]]
    window: int = 365
    filled: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def denormalise_target(self, y) -> np.ndarray:
        """Map normalised target values (e.g. model predictions) back to the target's units."""
        s = self.stats[self.target]
        return np.asarray(y, dtype=np.float64) * s["std"] + s["mean"]

    def normalise_target(self, y) -> np.ndarray:
        """Map target values in their units to normalised values."""
        s = self.stats[self.target]
        return (np.asarray(y, dtype=np.float64) - s["mean"]) / s["std"]


# --------------------------------------------------------------------------------------------- validation
def _check_dataset(ds) -> None:
    if not isinstance(ds, xr.Dataset):
        raise DataParameterError("ds", f"expected an xarray.Dataset (a basin Dataset), got {type(ds).__name__}.")
    if "time" not in ds.dims:
        raise DataParameterError("ds", "has no 'time' dimension; pass a basin Dataset (load_basin, "
                                       "synthetic_basin).")
    extra = [d for d in ds.dims if d != "time"]
    if extra:
        raise DataParameterError("ds", f"has dimensions {extra} besides time; select one basin first, e.g. "
                                       "ds.sel(basin='01031500').")
    time = ds["time"].values
    if not np.issubdtype(time.dtype, np.datetime64):
        raise DataParameterError("ds", "its time coordinate is not datetime64; decode the times first.")
    if time.size > 1:
        step = np.diff(time.astype("datetime64[ns]"))
        if (step != np.timedelta64(1, "D")).any():
            k = int(np.flatnonzero(step != np.timedelta64(1, "D"))[0])
            raise DataParameterError(
                "ds", f"its time axis is not consecutive days ({str(time[k])[:10]} is followed by "
                      f"{str(time[k + 1])[:10]}); reindex to a daily axis, e.g. "
                      "ds.reindex(time=pd.date_range(start, end, freq='D')).")


def _check_variables(ds: xr.Dataset, variables, what: str) -> tuple[str, ...]:
    if isinstance(variables, str):
        variables = (variables,)
    variables = tuple(variables)
    if not variables:
        raise DataParameterError(what, "is empty; name at least one variable.")
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise DataParameterError(what, f"{missing} not in the dataset; it has {sorted(map(str, ds.data_vars))}.")
    return variables


def _period_slice(ds: xr.Dataset, period, name: str = "period") -> tuple[int, int]:
    """Index range [i0, i1] (inclusive) of ``period`` (None, (start, end), or slice) on ds.time."""
    time = pd.DatetimeIndex(ds["time"].values)
    if period is None:
        return 0, len(time) - 1
    if isinstance(period, slice):
        start, end = period.start, period.stop
    else:
        try:
            start, end = period
        except (TypeError, ValueError):
            raise DataParameterError(name, f"{period!r} is not a (start, end) pair; pass e.g. "
                                           "('1980-10-01', '1995-09-30').") from None
    try:
        t0 = pd.Timestamp(start) if start is not None else time[0]
        t1 = pd.Timestamp(end) if end is not None else time[-1]
    except (ValueError, TypeError):
        raise DataParameterError(name, f"{period!r}: start/end are not dates; use 'YYYY-MM-DD'.") from None
    if t1 < t0:
        raise DataParameterError(name, f"{period!r}: the end is before the start; swap them.")
    i0 = int(time.searchsorted(t0, side="left"))
    i1 = int(time.searchsorted(t1, side="right")) - 1
    if i1 < i0:
        raise DataParameterError(
            name, f"{period!r} holds no day of the data ({str(time[0])[:10]} to {str(time[-1])[:10]}); "
                  "pick dates inside the record.")
    return i0, i1


# -------------------------------------------------------------------------------------------------- stats
def compute_stats(ds: xr.Dataset, variables, period=None) -> dict[str, dict[str, float]]:
    """Mean and (population) standard deviation of each variable over ``period`` (the training period only).

    NaNs are ignored. A variable with no valid value or zero spread in the period raises a DataError.
    """
    _check_dataset(ds)
    variables = _check_variables(ds, variables, "variables")
    i0, i1 = _period_slice(ds, period)
    stats = {}
    for v in variables:
        values = np.asarray(ds[v].values[i0:i1 + 1], dtype=np.float64)
        valid = values[np.isfinite(values)]
        if valid.size == 0:
            raise DataError(f"variable {v!r} has no valid value in period {period!r}; pick a period with data.")
        mean, std = float(valid.mean()), float(valid.std())
        if not std > 0:
            raise DataError(f"variable {v!r} is constant ({mean}) in period {period!r}, so it cannot be normalised; "
                            "drop it from the inputs or use a longer period.")
        stats[v] = {"mean": mean, "std": std}
    return stats


def _check_stats(stats, variables) -> dict[str, dict[str, float]]:
    if not isinstance(stats, dict):
        raise DataParameterError("stats", f"expected a dict like {{'prcp': {{'mean': .., 'std': ..}}}}, got "
                                          f"{type(stats).__name__}.")
    out = {}
    for v in variables:
        try:
            mean, std = float(stats[v]["mean"]), float(stats[v]["std"])
        except (KeyError, TypeError, ValueError):
            raise DataParameterError("stats", f"has no usable 'mean'/'std' for {v!r}; compute them with "
                                              "compute_stats(train_ds, variables, train_period).") from None
        if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
            raise DataParameterError("stats", f"{v!r}: mean={mean}, std={std}; std must be finite and positive.")
        out[v] = {"mean": mean, "std": std}
    return out


# ----------------------------------------------------------------------------------------------- windows
def _input_matrix(ds: xr.Dataset, inputs, nan_inputs: str) -> tuple[np.ndarray, dict[str, int]]:
    """(T, n_inputs) float64 inputs, NaNs filled by the chosen rule (counts of filled values per variable)."""
    frame = pd.DataFrame({v: np.asarray(ds[v].values, dtype=np.float64) for v in inputs})
    frame = frame.replace([np.inf, -np.inf], np.nan)
    before = frame.isna().sum()
    if nan_inputs == "ffill":
        frame = frame.ffill()
    elif nan_inputs == "interpolate":
        frame = frame.interpolate(method="linear", limit_area="inside")
    filled = {v: int(before[v] - frame[v].isna().sum()) for v in inputs if before[v]}
    return frame.to_numpy(), filled


def _nan_report(ds, inputs, matrix, needed: np.ndarray) -> str:
    parts = []
    time = ds["time"].values
    for k, v in enumerate(inputs):
        days = np.flatnonzero(np.isnan(matrix[:, k]) & needed)
        if days.size:
            shown = ", ".join(str(time[d])[:10] for d in days[:5]) + (" …" if days.size > 5 else "")
            parts.append(f"{v!r} on {days.size} day(s): {shown}")
    return "; ".join(parts)


def make_windows(ds: xr.Dataset, inputs=INPUTS, target: str = TARGET, period=None, window: int = 365,
                 stats=None, nan_inputs: str = "raise") -> Windows:
    """Windows of ``window`` days ending on every day of ``period`` that has a valid target.

    ``stats`` defaults to :func:`compute_stats` over ``period`` (right for the training period; pass the
    training stats for validation/test periods). See the module docstring for the NaN rules.
    """
    _check_dataset(ds)
    inputs = _check_variables(ds, inputs, "inputs")
    target = _check_variables(ds, target, "target")
    if len(target) != 1:
        raise DataParameterError("target", f"{target!r}: name exactly one target variable.")
    target = target[0]
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise DataParameterError("window", f"{window!r} is not a positive whole number of days.")
    window = int(window)
    if nan_inputs not in _NAN_RULES:
        raise DataParameterError("nan_inputs", f"{nan_inputs!r} is not one of {_NAN_RULES}.")
    i0, i1 = _period_slice(ds, period)
    stats = compute_stats(ds, inputs + (target,), period) if stats is None \
        else _check_stats(stats, inputs + (target,))
    n_time = ds.sizes["time"]
    first_end = max(i0, window - 1)
    if first_end > i1:
        raise DataError(
            f"no window fits: period {period!r} ends before day {window} of the record "
            f"({str(ds['time'].values[min(window - 1, n_time - 1)])[:10]}); the first window needs {window} days of "
            "inputs. Use a later period or a shorter window.")

    matrix, filled = _input_matrix(ds, inputs, nan_inputs)
    y_all = np.asarray(ds[target].values, dtype=np.float64)
    ends = np.arange(first_end, i1 + 1)
    ends = ends[np.isfinite(y_all[ends])]
    if ends.size == 0:
        raise DataError(f"target {target!r} is NaN on every day of period {period!r} that has {window} days of "
                        "inputs; pick a period with observations.")

    # NaN inputs inside kept windows: count NaN days per window with a cumulative sum (no loop over windows)
    nan_rows = np.isnan(matrix).any(axis=1)
    if nan_rows.any():
        csum = np.concatenate([[0], np.cumsum(nan_rows)])
        bad = (csum[ends + 1] - csum[ends + 1 - window]) > 0
        if bad.any():
            diff = np.zeros(n_time + 1, dtype=np.int64)  # mark days covered by bad windows
            np.add.at(diff, ends[bad] + 1 - window, 1)
            np.add.at(diff, ends[bad] + 1, -1)
            needed = np.cumsum(diff[:-1]) > 0
            hint = ("pass nan_inputs='ffill' or 'interpolate' to fill them" if nan_inputs == "raise"
                    else f"nan_inputs={nan_inputs!r} cannot fill NaNs before the first valid value; "
                         "start the period later")
            raise DataError(f"NaN inputs inside the windows: {_nan_report(ds, inputs, matrix, needed)}; {hint}.")

    mean = np.array([stats[v]["mean"] for v in inputs])
    std = np.array([stats[v]["std"] for v in inputs])
    normed = ((matrix - mean) / std).astype(np.float32)
    view = sliding_window_view(normed, window, axis=0)       # (T - window + 1, n_inputs, window), no copy
    x = np.ascontiguousarray(view[ends - (window - 1)].transpose(0, 2, 1))
    y = ((y_all[ends] - stats[target]["mean"]) / stats[target]["std"]).astype(np.float32)
    dates = ds["time"].values[ends].astype("datetime64[ns]")
    return Windows(x=x, y=y, dates=dates, inputs=inputs, target=target, stats=stats, window=window, filled=filled)


def window_ending(ds: xr.Dataset, date, inputs=INPUTS, stats=None, window: int = 365) -> np.ndarray:
    """The normalised input window ``(1, window, n_inputs)`` float32 that ends on ``date``."""
    _check_dataset(ds)
    inputs = _check_variables(ds, inputs, "inputs")
    if stats is None:
        raise DataParameterError("stats", "missing; pass the training statistics (Windows.stats or "
                                          "compute_stats(ds, inputs, train_period)).")
    stats = _check_stats(stats, inputs)
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise DataParameterError("window", f"{window!r} is not a positive whole number of days.")
    time = pd.DatetimeIndex(ds["time"].values)
    try:
        when = pd.Timestamp(date)
    except (ValueError, TypeError):
        raise DataParameterError("date", f"{date!r} is not a date; use 'YYYY-MM-DD'.") from None
    k = time.get_indexer([when])[0]
    if k < 0:
        raise DataParameterError("date", f"{str(when)[:10]} is not a day of the data ({str(time[0])[:10]} to "
                                         f"{str(time[-1])[:10]}).")
    if k < window - 1:
        raise DataParameterError("date", f"{str(when)[:10]} has only {k + 1} days of inputs before it; the "
                                         f"window needs {window}. Pick {str(time[window - 1])[:10]} or later.")
    block = np.stack([np.asarray(ds[v].values[k - window + 1:k + 1], dtype=np.float64) for v in inputs], axis=1)
    if not np.isfinite(block).all():
        needed = np.zeros(len(time), dtype=bool)
        needed[k - window + 1:k + 1] = True
        full = np.stack([np.asarray(ds[v].values, dtype=np.float64) for v in inputs], axis=1)
        raise DataError(f"NaN inputs in the window ending {str(when)[:10]}: {_nan_report(ds, inputs, full, needed)}.")
    mean = np.array([stats[v]["mean"] for v in inputs])
    std = np.array([stats[v]["std"] for v in inputs])
    return ((block - mean) / std).astype(np.float32)[None]
