"""The numbers behind the cell-state view, cached on simple keys (checkpoint sha256, dataset key, date, mode).

Pure numpy/pandas/xarray on top of :mod:`xaiscope.core.hydro` and :mod:`xaiscope.core.analysis`; no Panel,
so the view's state logic is testable without a server. Model work (windows, the continuous pass, the
simulation) goes through the shared engine (:func:`xaiscope.core.engine.get_engine`): one model copy per
checkpoint for all sessions, windows of concurrent sessions batched, results in the engine's byte-bounded cache.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from xaiscope.core import analysis, hydro
from xaiscope.core.checkpoint import Checkpoint
from xaiscope.core.engine import NamespacedCache, get_engine

GATES = hydro.STATE_NAMES  # c, h, i, f, g, o
GATE_LABELS = {
    "c": "cell state c",
    "h": "hidden state h",
    "i": "input gate i",
    "f": "forget gate f",
    "g": "cell input g",
    "o": "output gate o",
}
#: Physical variables the cells are compared with (dataset name → label with units).
PHYSICAL = {
    "swe": "snow water equivalent (mm)",
    "prcp": "precipitation (mm/day)",
    "tmean": "mean air temperature (°C)",
    "qobs": "observed streamflow (mm/day)",
    "soil_moisture": "soil moisture (mm)",
}
#: pytorch stacks the four gate blocks of ``weight_ih_l{k}`` in this order.
WEIGHT_GATES = ("i", "f", "g", "o")
MAX_LAG = 30

# views of the engine's result cache (one memory bound for everything the sessions computed)
_RECORDS = NamespacedCache("cellstate.record")
_HEAVY = NamespacedCache("cellstate.heavy")


def clear_caches() -> None:
    """Drop every cached result of the engine (windows, passes, simulations, tables)."""
    get_engine().cache.clear()


def record_frame(ds: xr.Dataset, data_key: str) -> pd.DataFrame:
    """The plotted forcing/flow series of the whole record, indexed by time (missing variables are NaN)."""

    def build():
        t = pd.DatetimeIndex(ds["time"].values, name="time")
        cols = {}
        for name in ("prcp", "tmin", "tmax", "tmean", "swe", "qobs", "q_benchmark", "soil_moisture"):
            if name in ds:
                cols[name] = np.asarray(ds[name].values, dtype=np.float64)
            elif name == "tmean" and "tmax" in ds and "tmin" in ds:
                cols[name] = 0.5 * (ds["tmax"].values + ds["tmin"].values)
            else:
                cols[name] = np.full(len(t), np.nan)
        return pd.DataFrame(cols, index=t)

    return _RECORDS.get_or_compute(("record", data_key), build)


def first_window_day(ckpt: Checkpoint, ds: xr.Dataset) -> pd.Timestamp:
    """The first day with a full input window before it."""
    n = hydro.window_length(ckpt)
    t = ds["time"].values
    if len(t) < n:
        from xaiscope.core.errors import XaiscopeError

        raise XaiscopeError(
            f"the data hold {len(t)} days but checkpoint {ckpt.path.name} needs windows of {n} days; "
            "give a longer record."
        )
    return pd.Timestamp(t[n - 1])


def window(ckpt: Checkpoint, ds: xr.Dataset, data_key: str, date, device=None) -> xr.Dataset:
    """:func:`hydro.window_states` for ``date`` through the engine (batched with other sessions' requests),
    cached on (sha256, data, date, device)."""
    return get_engine().window_states(ckpt, ds, pd.Timestamp(date).normalize(), data_key=data_key, device=device)


def prefetch_windows(ckpt: Checkpoint, ds: xr.Dataset, data_key: str, dates, device=None) -> int:
    """Fill the window cache for ``dates`` (run in a background thread; the missing days go to the engine
    together, as one batch); returns how many were computed."""
    engine = get_engine()
    missing = [d for d in dates if not engine.has_window(ckpt, data_key, d, device)]
    if not missing:
        return 0
    try:
        engine.window_states_many(ckpt, ds, missing, data_key, device)
    except Exception:  # noqa: BLE001 - a prefetch failure only costs a cache miss later
        return 0
    return len(missing)


def continuous(ckpt: Checkpoint, ds: xr.Dataset, data_key: str, device=None) -> xr.Dataset:
    """:func:`hydro.continuous_states` over the whole record through the engine, cached on (sha256, data)."""
    return get_engine().continuous_states(ckpt, ds, data_key=data_key, device=device)


def simulation(ckpt: Checkpoint, ds: xr.Dataset, data_key: str, device=None, chunk_days: int = 1461,
               on_chunk=None) -> pd.Series:
    """:func:`hydro.simulate` over the whole record (one window per day), cached on (sha256, data).

    The record is simulated in chunks of ``chunk_days``; ``on_chunk(done_fraction, last_day)`` reports progress.
    """

    engine = get_engine()

    def build():
        times = pd.DatetimeIndex(ds["time"].values)
        parts = []
        starts = list(range(0, len(times), chunk_days))
        for k, lo in enumerate(starts):
            hi = min(lo + chunk_days, len(times)) - 1
            q = engine.simulate(ckpt, ds, start=times[lo], end=times[hi], device=device)
            parts.append(pd.Series(np.asarray(q.values, dtype=np.float64), index=pd.DatetimeIndex(q["time"].values)))
            if on_chunk is not None:
                on_chunk((k + 1) / len(starts), times[hi])
        return pd.concat(parts).rename("qsim")

    return _HEAVY.get_or_compute(("simulate", ckpt.sha256, data_key, str(device)), build)


def has_simulation(ckpt: Checkpoint, data_key: str, device=None) -> bool:
    return ("simulate", ckpt.sha256, data_key, str(device)) in _HEAVY


def continuous_qsim(ckpt: Checkpoint, ds: xr.Dataset, data_key: str, device=None) -> pd.Series:
    """The discharge of the continuous pass (available at once; differs from :func:`simulation` in spin-up)."""
    st = continuous(ckpt, ds, data_key, device)
    return pd.Series(np.asarray(st["qsim"].values, dtype=np.float64), index=pd.DatetimeIndex(st["time"].values),
                     name="qsim")


def physical_variables(ds: xr.Dataset) -> dict[str, np.ndarray]:
    """The physical variables present in ``ds`` (with ``tmean`` derived when needed)."""
    out = {}
    for name in PHYSICAL:
        if name in ds:
            out[name] = ds[name]
        elif name == "tmean" and "tmax" in ds and "tmin" in ds:
            out[name] = 0.5 * (ds["tmax"] + ds["tmin"])
    return {k: v for k, v in out.items() if np.isfinite(np.asarray(v.values, dtype=float)).sum() > 10}


def correlations(ckpt: Checkpoint, ds: xr.Dataset, data_key: str, gate: str = "c", device=None) -> pd.DataFrame:
    """Long table (layer, cell, variable, r, best_lag, r_best, n) of the continuous-pass ``gate`` series after
    the first window (the spin-up from the zero state is left out)."""

    def build():
        states = continuous(ckpt, ds, data_key, device)
        spin = hydro.window_length(ckpt)
        da = states[gate].isel(time=slice(spin, None))
        return analysis.cell_correlations(da, physical_variables(ds), max_lag=MAX_LAG)

    return _HEAVY.get_or_compute(("corr", ckpt.sha256, data_key, gate, str(device)), build)


def correlation_table(long: pd.DataFrame) -> pd.DataFrame:
    """One row per (layer, cell), columns ``r <var>`` (lag 0), ``best lag <var>``, ``r@lag <var>``."""
    rows = []
    for (layer, cell), grp in long.groupby(["layer", "cell"], sort=True):
        row: dict[str, Any] = {"layer": int(layer), "cell": int(cell)}
        for _, rec in grp.iterrows():
            v = rec["variable"]
            row[f"r {v}"] = float(rec["r"])
            lag = rec["best_lag"]
            row[f"lag {v}"] = int(lag) if pd.notna(lag) else -1
            row[f"r@lag {v}"] = float(rec["r_best"])
        rows.append(row)
    return pd.DataFrame(rows)


def probe(ckpt: Checkpoint, ds: xr.Dataset, data_key: str, gate: str = "c", target: str = "swe",
          device=None) -> dict | None:
    """Ridge probe R² from the whole ``gate`` vector (all layers × cells) to ``target`` (None if absent)."""
    if target not in ds or np.isfinite(ds[target].values).sum() < 50:
        return None

    def build():
        states = continuous(ckpt, ds, data_key, device)
        spin = hydro.window_length(ckpt)
        arr = states[gate].values[spin:]
        X = arr.reshape(arr.shape[0], -1)
        y = np.asarray(ds[target].values[spin:], dtype=np.float64)
        ok = np.isfinite(y)
        return analysis.ridge_probe(X[ok], y[ok])

    return _HEAVY.get_or_compute(("probe", ckpt.sha256, data_key, gate, target, str(device)), build)


def gate_weights(ckpt: Checkpoint, layer: int) -> dict[str, pd.DataFrame]:
    """Input weights of ``layer`` split per gate: {gate: DataFrame rows = cells, columns = inputs}."""
    lstm = ckpt.model.lstm
    w = getattr(lstm, f"weight_ih_l{layer}").detach().cpu().numpy()
    H = lstm.hidden_size
    if layer == 0:
        columns = list(ckpt.inputs) or [f"x{j}" for j in range(w.shape[1])]
    else:
        columns = [f"h{layer - 1}[{j}]" for j in range(w.shape[1])]
    return {
        g: pd.DataFrame(w[k * H:(k + 1) * H], index=pd.RangeIndex(H, name="cell"), columns=columns)
        for k, g in enumerate(WEIGHT_GATES)
    }


def periods(ckpt: Checkpoint) -> dict[str, tuple[str, str]]:
    """Training and test periods recorded in the checkpoint manifest (if any)."""
    out = {}
    for key, label in (("train_period", "training period"), ("test_period", "test period")):
        p = ckpt.manifest.get(key)
        if isinstance(p, (list, tuple)) and len(p) == 2:
            out[label] = (str(p[0]), str(p[1]))
    return out


def skill_table(ckpt: Checkpoint, frame: pd.DataFrame, qsim: pd.Series, shown: tuple) -> pd.DataFrame:
    """NSE/KGE (and r, α, β, n, negative days) of the model and of the SAC-SMA benchmark on the shown period,
    the training period and the test period."""
    rows = []
    spans = {"shown period": shown, **periods(ckpt)}
    for label, (a, b) in spans.items():
        sl = slice(pd.Timestamp(a), pd.Timestamp(b))
        obs = frame["qobs"].loc[sl].to_numpy()
        sim = qsim.loc[sl].to_numpy()
        s = hydro.skill(obs, sim)
        row = {"period": label, "from": str(pd.Timestamp(a).date()), "to": str(pd.Timestamp(b).date()),
               "model": "LSTM", **{k: s[k] for k in ("nse", "kge", "r", "alpha", "beta", "n", "negative_days")}}
        rows.append(row)
        bench = frame["q_benchmark"].loc[sl].to_numpy()
        if np.isfinite(bench).any():
            sb = hydro.skill(obs, bench)
            rows.append({**row, "model": "SAC-SMA + Snow-17",
                         **{k: sb[k] for k in ("nse", "kge", "r", "alpha", "beta", "n", "negative_days")}})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------- exports
def header_lines(meta: dict) -> str:
    """``# key: value`` lines for the top of a CSV export."""
    return "".join(f"# {k}: {v}\n" for k, v in meta.items())


def csv_bytes(df: pd.DataFrame, meta: dict, index: bool = True) -> io.BytesIO:
    """A CSV with a commented header holding ``meta`` (checkpoint sha256, settings)."""
    text = header_lines(meta) + df.to_csv(index=index, float_format="%.6g")
    return io.BytesIO(text.encode("utf-8"))


def netcdf_bytes(ds: xr.Dataset, meta: dict | None = None, as_text: bool = True) -> io.BytesIO:
    """``ds`` as NetCDF (a download) with ``meta`` added to its global attributes.

    Lists and dicts in global or variable attributes become JSON (NetCDF cannot hold them). ``as_text`` writes every
    other ``meta`` value as text and picks the scipy (NetCDF3) writer when the data allow it.
    """
    ds = ds.copy()
    ds.attrs.update({k: (v if not as_text or isinstance(v, (list, dict)) else str(v)) for k, v in (meta or {}).items()})
    ds.attrs = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in ds.attrs.items()}
    for var in ds.variables.values():
        var.attrs = {k: (json.dumps(a) if isinstance(a, (list, dict)) else a) for k, a in var.attrs.items()}
    return io.BytesIO(bytes(ds.to_netcdf(engine="scipy") if as_text and _scipy_ok(ds) else ds.to_netcdf()))


def _scipy_ok(ds: xr.Dataset) -> bool:
    # the scipy engine writes NetCDF3 in memory; it cannot hold int64 or strings, so fall back to netCDF4
    return all(ds[v].dtype.kind in "fiu" and ds[v].dtype.itemsize <= 4 or ds[v].dtype.kind == "M"
               for v in ds.variables)
