"""The rainfall-runoff pipeline: a checkpoint plus a basin Dataset → internals, simulations and skill.

Everything the cell-state view and the ``xaiscope states`` command need, computed through the fast exact
internals of :mod:`xaiscope.core.states`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from xaiscope.core.checkpoint import Checkpoint, load_checkpoint
from xaiscope.core.errors import XaiscopeError
from xaiscope.core.metrics import kge_components, nse

STATE_NAMES = ("c", "h", "i", "f", "g", "o")
STATE_LONG_NAMES = {
    "c": "LSTM cell state c_t",
    "h": "LSTM hidden state h_t",
    "i": "input gate activation i_t",
    "f": "forget gate activation f_t",
    "g": "cell input (candidate) g_t",
    "o": "output gate activation o_t",
}


# --------------------------------------------------------------------------------------------- loading
@functools.lru_cache(maxsize=16)
def _load_cached(path: str, mtime: float) -> Checkpoint:
    from xaiscope.core.engine import get_engine

    # the process's one copy per weights sha256 (another path with the same weights gives the same object)
    return get_engine().share(load_checkpoint(path))


def load_hydro(path: str | Path) -> Checkpoint:
    """Load a hydrology checkpoint (cached by path and modification time; shared through the engine, so every
    path holding the same weights gives the same :class:`Checkpoint` and model object)."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise XaiscopeError(f"{path}: no such checkpoint; give a checkpoint folder or file (see `xaiscope train hydro`).")
    ckpt = _load_cached(str(path), path.stat().st_mtime)
    if not hasattr(ckpt.model, "lstm"):
        raise XaiscopeError(f"{path}: model kind {ckpt.kind!r} has no LSTM; the cell-state tools need a hydro_lstm checkpoint.")
    return ckpt


def open_basin_data(spec: str | Path | None = None, basin: str | None = None) -> xr.Dataset:
    """Open a basin Dataset from a short spec.

    ``None``/``"demo"``: the bundled basin 01031500; ``"synthetic"`` or ``"synthetic:SEED"``: the synthetic snowy
    basin; a CAMELS folder (with ``basin``); a forcing ``.txt`` file; or a NetCDF file of a basin Dataset.
    """
    from xaiscope.data import camels, synthetic

    if spec is None or str(spec) == "demo":
        ds = camels.demo_basin()
        if basin is not None and str(basin).zfill(8) != ds.attrs["basin_id"]:
            raise XaiscopeError(
                f"basin {basin} is not bundled (the demo data hold basin {ds.attrs['basin_id']} only); point --data "
                "at a CAMELS-US folder that has it."
            )
        return ds
    spec_s = str(spec)
    if spec_s.startswith("synthetic"):
        _, _, seed = spec_s.partition(":")
        try:
            return synthetic.synthetic_basin(seed=int(seed or 0))
        except ValueError as err:
            raise XaiscopeError(f"bad synthetic spec {spec_s!r}: write 'synthetic' or 'synthetic:SEED' ({err})") from err
    path = Path(spec_s).expanduser()
    if not path.exists():
        raise XaiscopeError(
            f"{path}: no such data file or folder. Give 'demo', 'synthetic[:SEED]', a CAMELS-US folder with "
            "--basin, a forcing file, or a NetCDF basin file."
        )
    if path.suffix in (".nc", ".nc4", ".netcdf"):
        try:
            return xr.load_dataset(path)
        except Exception as err:  # netCDF/HDF5 errors come in many types
            raise XaiscopeError(f"{path}: cannot read as NetCDF ({err}).") from err
    if path.is_dir():
        if basin is None:
            raise XaiscopeError(f"{path}: this is a folder; say which basin with --basin (an 8-digit USGS id).")
        return camels.load_basin(path, basin)
    return camels.load_basin(path, basin) if basin else camels.load_basin(path, None)


# ------------------------------------------------------------------------------------------ inputs
def _mean_std(stats: dict, var: str, source: str) -> tuple[float, float]:
    """Mean and std of ``var`` from normalisation ``stats`` ({var: {"mean", "std"}}) that come from ``source``."""
    try:
        return float(stats[var]["mean"]), float(stats[var]["std"])
    except (KeyError, TypeError) as err:
        raise XaiscopeError(
            f"{source} has no normalisation statistics for {var!r}; re-train or add them to its manifest."
        ) from err


def _normalise_columns(ds: xr.Dataset, names, stats: dict, what: str = "input",
                       source: str = "the training run") -> np.ndarray:
    """Columns ``names`` of ``ds`` normalised with ``stats`` from ``source``: (T, n) float32, all finite."""
    missing = [v for v in names if v not in ds.data_vars]
    if missing:
        raise XaiscopeError(
            f"the data lack {what} variable(s) {missing} that {source} needs (it needs {list(names)}; the data have "
            f"{sorted(ds.data_vars)})."
        )
    cols = []
    for v in names:
        mean, std = _mean_std(stats, v, source)
        cols.append((ds[v].values.astype(np.float64) - mean) / (std if std > 0 else 1.0))
    x = np.stack(cols, axis=-1).astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        t, j = np.argwhere(bad)[0]
        raise XaiscopeError(
            f"{what} {list(names)[j]!r} is missing (NaN) on {pd.Timestamp(ds.time.values[t]).date()} "
            f"and {int(bad.sum()) - 1} other value(s); fill the gaps in the forcing data first."
        )
    return x


def normalised_inputs(ckpt: Checkpoint, ds: xr.Dataset) -> np.ndarray:
    """The checkpoint's inputs from ``ds`` in the checkpoint's order, normalised with its statistics: (T, n)."""
    return _normalise_columns(ds, ckpt.inputs, ckpt.manifest.get("normalisation", {}),
                              source=f"checkpoint {ckpt.path.name}")


def _denormalise(ckpt: Checkpoint, y: np.ndarray) -> np.ndarray:
    target = ckpt.manifest.get("target", "qobs")
    mean, std = _mean_std(ckpt.manifest.get("normalisation", {}), target, f"checkpoint {ckpt.path}")
    return y * std + mean


def _device(device):
    from xaiscope.core.device import choose_device

    return choose_device(device) if not isinstance(device, torch.device) else device


def _internals_dataset(internals, times, ckpt: Checkpoint, attrs: dict) -> xr.Dataset:
    data_vars = {}
    for name in STATE_NAMES:
        arr = getattr(internals, name)[0]  # (T, L, H)
        if torch.is_tensor(arr):
            arr = arr.detach().to("cpu").numpy()
        data_vars[name] = xr.Variable(
            ("time", "layer", "cell"), arr, {"long_name": STATE_LONG_NAMES[name], "units": "1"}
        )
    L, H = data_vars["c"].shape[1:]
    ds = xr.Dataset(
        data_vars,
        coords={"time": times, "layer": np.arange(L), "cell": np.arange(H)},
        attrs={
            "Conventions": "CF-1.8",
            "checkpoint_sha256": ckpt.sha256,
            "checkpoint": str(ckpt.path),
            "model_kind": ckpt.kind,
            "inputs": json.dumps(ckpt.inputs),
            **attrs,
        },
    )
    return ds


# ----------------------------------------------------------------------------------------- internals
def window_length(ckpt: Checkpoint) -> int:
    return int(ckpt.manifest.get("window", 365))


def window_inputs(ckpt: Checkpoint, ds: xr.Dataset, date) -> tuple[np.ndarray, np.ndarray]:
    """The normalised inputs of the ``window``-day sequence ending on ``date``: ``(x (window, n_in) float32,
    days (window,))``; a clear :class:`XaiscopeError` for a day outside the record or too early for a window."""
    date = pd.Timestamp(date)
    times = pd.DatetimeIndex(ds.time.values)
    n = window_length(ckpt)
    pos = times.searchsorted(date)
    if pos >= len(times) or times[pos] != date:
        raise XaiscopeError(
            f"{date.date()} is not in the data ({times[0].date()} … {times[-1].date()}); pick a day inside the record."
        )
    if pos + 1 < n:
        raise XaiscopeError(
            f"{date.date()} is too early: the model needs {n} days of inputs before it, so the first possible "
            f"day is {times[n - 1].date()}."
        )
    sub = ds.isel(time=slice(pos + 1 - n, pos + 1))
    return normalised_inputs(ckpt, sub), sub.time.values


def window_forward(model, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Internals and prediction of a hydro LSTM on windows ``x`` (B, T, n_in) on the model's device:
    ``(h, c, i, f, g, o, y)`` with states ``(B, T, L, H)`` (fast exact internals) and ``y`` (B,) normalised."""
    from xaiscope.core.states import lstm_internals

    internals = lstm_internals(model.lstm, x)
    with torch.inference_mode():
        y = model.head(internals.h[:, -1, -1]).squeeze(-1)
    return (*(getattr(internals, name) for name in ("h", "c", "i", "f", "g", "o")), y)


def window_dataset(ckpt: Checkpoint, ds: xr.Dataset, date, days, internals, y: float) -> xr.Dataset:
    """The window-mode Dataset from one window's internals (an object with ``c, h, i, f, g, o`` arrays
    ``(1, T, L, H)``) and its normalised prediction ``y``."""
    date = pd.Timestamp(date)
    out = _internals_dataset(internals, days, ckpt, {
        "mode": "window", "date": str(date.date()), "window": window_length(ckpt),
        "basin_id": str(ds.attrs.get("basin_id", "")),
    })
    out["qsim"] = xr.Variable((), float(_denormalise(ckpt, np.asarray([y], dtype=np.float32))[0]),
                              {"long_name": f"simulated streamflow on {date.date()}", "units": "mm/day"})
    return out


def window_states(ckpt: Checkpoint, ds: xr.Dataset, date, device=None) -> xr.Dataset:
    """Internals for the ``window``-day sequence that ends on ``date``, from a zero initial state."""
    from types import SimpleNamespace

    x, days = window_inputs(ckpt, ds, date)
    dev = _device(device)
    model = ckpt.model.to(dev)
    h, c, i, f, g, o, y = window_forward(model, torch.from_numpy(x)[None].to(dev))
    internals = SimpleNamespace(h=h, c=c, i=i, f=f, g=g, o=o)
    return window_dataset(ckpt, ds, date, days, internals, float(y.cpu().numpy()[0]))


def continuous_forward(model, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Internals of one sequence ``x`` (1, T, n_in) and the prediction of every day: ``(h, c, i, f, g, o, y)``
    with states ``(1, T, L, H)`` and ``y`` (T,) normalised."""
    from xaiscope.core.states import lstm_internals

    internals = lstm_internals(model.lstm, x)
    with torch.inference_mode():
        y = model.head(internals.h[0, :, -1]).squeeze(-1)
    return (*(getattr(internals, name) for name in ("h", "c", "i", "f", "g", "o")), y)


def continuous_states(ckpt: Checkpoint, ds: xr.Dataset, start=None, end=None, device=None,
                      run=None) -> xr.Dataset:
    """Internals over the whole record (or ``start``..``end``) in one pass from a zero initial state.

    ``run(x) -> (h, c, i, f, g, o, y)`` (``x`` a CPU tensor (1, T, n_in); results as :func:`continuous_forward`,
    tensors or arrays) replaces the model call, e.g. the shared engine's; ``device`` is then unused.
    """
    from types import SimpleNamespace

    sub = ds.sel(time=slice(start, end))
    if sub.sizes["time"] == 0:
        raise XaiscopeError(f"no data between {start} and {end}.")
    x = torch.from_numpy(normalised_inputs(ckpt, sub))[None]
    if run is None:
        dev = _device(device)
        model = ckpt.model.to(dev)

        def run(x):
            return continuous_forward(model, x.to(dev))
    h, c, i, f, g, o, y = run(x)
    y = y.cpu().numpy() if torch.is_tensor(y) else np.asarray(y)
    internals = SimpleNamespace(h=h, c=c, i=i, f=f, g=g, o=o)
    out = _internals_dataset(internals, sub.time.values, ckpt, {
        "mode": "continuous", "start": str(pd.Timestamp(sub.time.values[0]).date()),
        "end": str(pd.Timestamp(sub.time.values[-1]).date()),
        "basin_id": str(ds.attrs.get("basin_id", "")),
    })
    out["qsim"] = xr.Variable(("time",), _denormalise(ckpt, y).astype(np.float32),
                              {"long_name": "simulated streamflow (continuous pass)", "units": "mm/day"})
    return out


def data_key(ckpt: Checkpoint, ds: xr.Dataset) -> str:
    """sha256 of what a simulation depends on besides the weights: the normalised inputs and their days."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(normalised_inputs(ckpt, ds)).tobytes())
    h.update(np.asarray(ds.time.values, dtype="datetime64[ns]").tobytes())
    h.update(str(window_length(ckpt)).encode())
    return h.hexdigest()


def cache_dir() -> Path:
    """Where computed simulations are kept: ``$XAISCOPE_CACHE_DIR`` or ``~/.cache/xaiscope``."""
    return Path(os.environ.get("XAISCOPE_CACHE_DIR") or Path.home() / ".cache" / "xaiscope")


def _simulation_files(ckpt: Checkpoint, key: str) -> list[Path]:
    """Places a full-record simulation may lie: beside the weights (shipped) and in the user cache."""
    name = f"{ckpt.sha256[:16]}_{key[:16]}.nc"
    places = []
    weights = ckpt.extra.get("weights_path")
    if weights is not None:
        places.append(Path(weights).parent / "simulations" / name)
    places.append(cache_dir() / "simulations" / name)
    return places


def _read_full_simulation(ckpt: Checkpoint, key: str) -> np.ndarray | None:
    for f in _simulation_files(ckpt, key):
        if f.exists():
            try:
                with xr.open_dataset(f) as sim:
                    if sim.attrs.get("checkpoint_sha256") == ckpt.sha256 and sim.attrs.get("data_key") == key:
                        return sim["qsim"].values.astype(np.float32)
            except (OSError, ValueError, KeyError):
                continue  # a damaged cache file is recomputed, never trusted
    return None


def save_full_simulation(ckpt: Checkpoint, ds: xr.Dataset, directory: str | Path | None = None,
                         device=None, predict=None) -> Path:
    """Simulate the whole record and store it (default: the user cache; or ``directory``, e.g. to ship it)."""
    key = data_key(ckpt, ds)
    sim = simulate(ckpt, ds, device=device, cache=False, predict=predict)
    out = (Path(directory) if directory else cache_dir() / "simulations") / _simulation_files(ckpt, key)[-1].name
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    sim.to_dataset().assign_attrs(checkpoint_sha256=ckpt.sha256, data_key=key,
                                  basin_id=str(ds.attrs.get("basin_id", ""))).to_netcdf(tmp)
    tmp.replace(out)
    return out


def simulate(ckpt: Checkpoint, ds: xr.Dataset, start=None, end=None, device=None,
             batch_size: int = 2048, cache: bool = True, progress=None, predict=None) -> xr.DataArray:
    """Each day's discharge predicted from its own ``window``-day input sequence (as in training).

    Days in ``start``..``end`` without a full window of inputs before them are NaN. With ``cache``, a stored
    full-record simulation of the same checkpoint (sha256) and inputs (:func:`data_key`) is used when there is one
    (shipped beside the weights or in :func:`cache_dir`), and a computed full record is stored there.
    ``progress(fraction)`` is called after each batch. ``predict(windows) -> (B,)`` (windows ``(B, window, n_in)``
    float32 NumPy, normalised; result normalised) replaces the model call, e.g. the shared engine's batched,
    out-of-memory-safe forward (:meth:`xaiscope.core.engine.Engine.predictor`); ``device`` is then unused.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    n = window_length(ckpt)
    times = pd.DatetimeIndex(ds.time.values)
    lo = 0 if start is None else times.searchsorted(pd.Timestamp(start))
    hi = len(times) if end is None else times.searchsorted(pd.Timestamp(end), side="right")
    target = ckpt.manifest.get("target", "qobs")
    attrs = {"long_name": f"simulated {target} (one {n}-day window per day)", "units": "mm/day",
             "checkpoint_sha256": ckpt.sha256}

    def wrap(values):
        return xr.DataArray(values, coords={"time": times[lo:hi]}, dims="time", name="qsim", attrs=attrs)

    use_cache = cache and bool(ckpt.sha256)
    if use_cache:
        key = data_key(ckpt, ds)
        full = _read_full_simulation(ckpt, key)
        if full is not None and len(full) == len(times):
            if progress:
                progress(1.0)
            return wrap(full[lo:hi])
        if lo == 0 and hi == len(times):
            try:
                save_full_simulation(ckpt, ds, device=device, predict=predict)
                full = _read_full_simulation(ckpt, key)
            except OSError:  # read-only home: compute without storing
                full = None
            if full is not None:
                if progress:
                    progress(1.0)
                return wrap(full)

    x_all = normalised_inputs(ckpt, ds)
    out = np.full(hi - lo, np.nan, dtype=np.float32)
    first = max(lo, n - 1)
    if first < hi:
        windows = sliding_window_view(x_all, n, axis=0)  # (T-n+1, n_in, n)
        if predict is None:
            from xaiscope.core.device import exact_math

            dev = _device(device)
            model = ckpt.model.to(dev).eval()

            def predict(arr):
                # exact float32: PyTorch lets cuDNN use TF32 by default, which moved one day's discharge by ~5e-5
                # relative on an H100; only the engine's predictor uses TF32, checked against exact (TF32_OPS)
                with torch.inference_mode(), exact_math():
                    return model(torch.from_numpy(arr).to(dev)).reshape(-1).cpu().numpy()
        preds = []
        for b in range(first, hi, batch_size):
            e = min(b + batch_size, hi)
            preds.append(np.asarray(predict(windows[b - n + 1: e - n + 1].transpose(0, 2, 1).copy())).reshape(-1))
            if progress:
                progress((e - first) / (hi - first))
        out[first - lo:] = _denormalise(ckpt, np.concatenate(preds))
    return wrap(out)


def skill(obs, sim) -> dict:
    """NSE, KGE (with r, alpha, beta), the number of compared days and of negative (impossible) simulated days."""
    obs = np.asarray(obs, dtype=np.float64)
    sim = np.asarray(sim, dtype=np.float64)
    ok = np.isfinite(obs) & np.isfinite(sim)
    return {"nse": nse(obs, sim), **kge_components(obs, sim), "n": int(ok.sum()),
            "negative_days": int(np.sum(sim[np.isfinite(sim)] < 0))}
