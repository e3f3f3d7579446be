"""Which cell is snow? Correlating LSTM cell states with physical variables, and linear probes.

Three functions, all plain numpy/pandas (no torch, no UI):

- :func:`cell_correlations` -- Pearson r between every (layer, cell) state series and every
  physical variable, at lag 0 and at the lag (0..``max_lag`` steps, the state lagging the variable)
  with the largest ``|r|``. Pairwise-complete: a NaN in either series drops that pair only.
- :func:`best_cell` -- the (layer, cell) with the largest ``|r|`` for one variable.
- :func:`ridge_probe` -- ridge regression from the whole state vector to a target (e.g. SWE),
  cross-validated in contiguous time blocks, reporting out-of-fold R².

Lags are counted in time steps of the state series; for the daily hydrology models a step is a day.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from xaiscope.core.errors import XaiscopeError

try:  # optional: ships with scikit-learn
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - depends on the environment
    threadpool_limits = None

__all__ = ["cell_correlations", "best_cell", "ridge_probe", "DEFAULT_ALPHAS"]

#: Ridge penalties tried by :func:`ridge_probe` (on standardised features).
DEFAULT_ALPHAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3)

# A series whose variance over the paired samples is below this fraction of its mean square
# (after centring on its overall mean) is treated as constant: r is NaN. Float64 round-off in the
# moment sums is ~T * 2e-16, far below this, so only (numerically) constant series are caught.
_CONST_RTOL = 1e-10

# Memory for the lag-shifted copies of the variables (the lags are processed in chunks).
_CHUNK_BYTES = 64 * 2**20


def _single_threaded_blas(func):
    """Run ``func`` with one BLAS thread.

    The matrices here are small (time x a few hundred columns); multi-threaded BLAS gains little on
    them and, on a busy machine (a served dashboard, model training alongside), thread
    oversubscription made the ridge probe tens of times slower. Without threadpoolctl this is a no-op.
    """
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = (threadpool_limits(limits=1, user_api="blas") if threadpool_limits is not None
               else contextlib.nullcontext())
        with ctx:
            return func(*args, **kwargs)
    return wrapper


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------

def _states_matrix(states: Any, layers: Sequence | None, cells: Sequence | None):
    """Return (X (T, L*H) float64, layer labels per column, cell labels per column, time index)."""
    time_index = None
    if isinstance(states, xr.Dataset):
        raise XaiscopeError(
            "cell_correlations: `states` is an xarray Dataset; pass one variable of it, "
            "e.g. states['c'] (cell states) or states['h'] (hidden states)."
        )
    if isinstance(states, xr.DataArray):
        dims = set(states.dims)
        if dims == {"time", "cell"}:
            states = states.expand_dims(layer=[0])
        elif dims != {"time", "layer", "cell"}:
            raise XaiscopeError(
                f"cell_correlations: `states` has dims {tuple(states.dims)}; expected "
                "('time', 'layer', 'cell'). Select a single sample first (e.g. states.isel(sample=0)) "
                "or rename the dimensions."
            )
        states = states.transpose("time", "layer", "cell")
        arr = np.asarray(states.values, dtype=np.float64)
        layer_labels = (np.asarray(states["layer"].values) if "layer" in states.coords
                        else np.arange(arr.shape[1]))
        cell_labels = (np.asarray(states["cell"].values) if "cell" in states.coords
                       else np.arange(arr.shape[2]))
        if "time" in states.coords:
            time_index = pd.Index(states["time"].values)
    else:
        try:
            arr = np.asarray(states, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise XaiscopeError(
                f"cell_correlations: `states` could not be read as a numeric array ({exc}); "
                "pass an xr.DataArray (time, layer, cell) or a numpy array (T, L, H)."
            ) from None
        if arr.ndim == 2:
            arr = arr[:, None, :]
        if arr.ndim != 3:
            raise XaiscopeError(
                f"cell_correlations: `states` has shape {arr.shape}; expected a 3-D array "
                "(time, layer, cell) or a 2-D array (time, cell)."
            )
        layer_labels = np.arange(arr.shape[1])
        cell_labels = np.arange(arr.shape[2])
    if layers is not None:
        layer_labels = np.asarray(layers)
    if cells is not None:
        cell_labels = np.asarray(cells)
    T, L, H = arr.shape
    if len(layer_labels) != L or len(cell_labels) != H:
        raise XaiscopeError(
            f"cell_correlations: got {len(layer_labels)} layer labels and {len(cell_labels)} cell "
            f"labels for states with {L} layers and {H} cells; pass one label per layer/cell."
        )
    X = arr.reshape(T, L * H)
    col_layer = np.repeat(layer_labels, H)
    col_cell = np.tile(cell_labels, L)
    return X, col_layer, col_cell, time_index


def _variable_vector(name: str, value: Any, T: int, time_index: pd.Index | None) -> np.ndarray:
    """One physical variable as a float64 vector of length T, aligned on time where possible."""
    if isinstance(value, xr.DataArray) and value.ndim == 1 and "time" in value.dims \
            and time_index is not None and "time" in value.coords:
        value = value.reindex(time=time_index)
    elif isinstance(value, pd.Series) and isinstance(value.index, pd.DatetimeIndex) \
            and time_index is not None:
        value = value.reindex(time_index)
    try:
        vec = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise XaiscopeError(
            f"cell_correlations: variable {name!r} could not be read as numbers ({exc}); "
            "pass a 1-D numeric array over time."
        ) from None
    vec = np.squeeze(vec) if vec.ndim > 1 else vec
    if vec.ndim != 1 or vec.shape[0] != T:
        raise XaiscopeError(
            f"cell_correlations: variable {name!r} has shape {np.shape(value)} but the states have "
            f"{T} time steps; pass a 1-D array of length {T} (or an xr.DataArray with a 'time' "
            "coordinate, which is aligned on the states' time axis)."
        )
    return vec


# --------------------------------------------------------------------------------------------
# correlations
# --------------------------------------------------------------------------------------------

def _r_from_moments(n, sx, sxx, sy, syy, sxy, min_periods: int):
    """Pearson r (and n) from pairwise sums over the paired samples; NaN where undefined."""
    n, sx, sxx, sy, syy = np.broadcast_arrays(n, sx, sxx, sy, syy)
    with np.errstate(divide="ignore", invalid="ignore"):
        mx, my = sx / n, sy / n
        msx, msy = sxx / n, syy / n
        vx = msx - mx * mx
        vy = msy - my * my
        r = (sxy / n - mx * my) / np.sqrt(vx * vy)
    bad = (n < min_periods) | (vx <= _CONST_RTOL * msx) | (vy <= _CONST_RTOL * msy)
    r[bad] = np.nan
    np.clip(r, -1.0, 1.0, out=r)
    return r, n


def _shifted(B: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """(T, len(lags) * C) matrix whose block j is B delayed by lags[j] steps (zeros = missing)."""
    T, C = B.shape
    out = np.zeros((T, len(lags), C))
    for j, lag in enumerate(lags):
        out[lag:, j] = B[: T - lag]
    return out.reshape(T, len(lags) * C)


def _lagged_r(Xc, MX, Yc, MY, max_lag: int, min_periods: int):
    """r (max_lag+1, K, V) of state[t] with variable[t - lag], and n (K, V) at lag 0.

    Xc, Yc hold the centred series with zeros where missing; MX, MY are the validity masks.
    The variable columns are stacked once per lag, delayed, with zeros (= missing) shifted in, so
    a single matrix product over time yields every pairwise moment for a chunk of lags. When the
    states have no gaps (the usual case) the variable-only moments are prefix sums and the product
    is [X, X**2]^T [Y, MY] instead of the general [X, X**2, MX]^T [Y, Y**2, MY].
    """
    T, K = Xc.shape
    V = Yc.shape[1]
    my = MY.astype(np.float64)
    gap_free = bool(MX.all())
    if gap_free:
        A = np.concatenate([Xc, Xc * Xc], axis=1)                      # (T, 2K)
        B = np.concatenate([Yc, my], axis=1)                           # (T, 2V)
        P = np.concatenate([np.zeros((1, 3 * V)),
                            np.cumsum(np.concatenate([Yc, Yc * Yc, my], axis=1), axis=0)])
    else:
        A = np.concatenate([Xc, Xc * Xc, MX.astype(np.float64)], axis=1)   # (T, 3K)
        B = np.concatenate([Yc, Yc * Yc, my], axis=1)                        # (T, 3V)
    C = B.shape[1]
    chunk = max(1, int(_CHUNK_BYTES // (8 * T * C)))
    r_lags = np.empty((max_lag + 1, K, V))
    for start in range(0, max_lag + 1, chunk):
        lags = np.arange(start, min(start + chunk, max_lag + 1))
        G = (A.T @ _shifted(B, lags)).reshape(A.shape[1], len(lags), C).transpose(1, 0, 2)
        if gap_free:
            ysum = P[T - lags]                                         # (nlag, 3V)
            r, n = _r_from_moments(ysum[:, None, 2 * V:], G[:, :K, V:], G[:, K:, V:],
                                   ysum[:, None, :V], ysum[:, None, V: 2 * V], G[:, :K, :V],
                                   min_periods)
        else:
            r, n = _r_from_moments(G[:, 2 * K:, 2 * V:], G[:, :K, 2 * V:], G[:, K: 2 * K, 2 * V:],
                                   G[:, 2 * K:, :V], G[:, 2 * K:, V: 2 * V], G[:, :K, :V],
                                   min_periods)
        r_lags[lags] = r
        if start == 0:
            n0 = n[0]
    return r_lags, n0


@_single_threaded_blas
def cell_correlations(
    states: xr.DataArray | np.ndarray,
    variables: Mapping[str, Any],
    max_lag: int = 30,
    *,
    layers: Sequence | None = None,
    cells: Sequence | None = None,
    min_periods: int = 3,
) -> pd.DataFrame:
    """Pearson correlation of every (layer, cell) state series with every variable, with lags.

    Parameters
    ----------
    states
        ``xr.DataArray`` with dims ``(time, layer, cell)`` (any order; ``(time, cell)`` is one layer),
        or a numpy array ``(T, L, H)`` / ``(T, H)``.
    variables
        ``{name: 1-D series over time}``. NaN marks missing values; correlations use the
        pairwise-complete samples. An ``xr.DataArray`` with a ``time`` coordinate (or a pandas
        Series with a DatetimeIndex) is aligned on the states' time coordinate, so a whole-record
        ``ds["swe"]`` can be paired with states for a slice of it. Anything else must have length T.
    max_lag
        Largest lag tried (steps; days for daily states). At lag ``k`` the state at step ``t`` is
        paired with the variable at step ``t - k`` (the state lags the variable, as a snow store
        lags the precipitation and temperature that built it).
    layers, cells
        Labels for the rows (default: the DataArray's coordinates, else 0..L-1 / 0..H-1).
    min_periods
        Fewest paired samples for a correlation; below it r is NaN.

    Returns
    -------
    pandas.DataFrame
        One row per (layer, cell, variable), in that order, with columns
        ``layer, cell, variable, r`` (lag 0), ``best_lag`` (lag of largest ``|r|``, smallest lag on
        ties; nullable ``Int64``, ``<NA>`` when every lag is undefined), ``r_best`` (signed r at that
        lag) and ``n`` (paired samples at lag 0). A (numerically) constant series gives r = NaN.
    """
    if not isinstance(variables, Mapping) or len(variables) == 0:
        raise XaiscopeError(
            "cell_correlations: `variables` must be a non-empty dict {name: 1-D series over time}, "
            "e.g. {'swe': ds['swe'], 'prcp': ds['prcp']}."
        )
    X, col_layer, col_cell, time_index = _states_matrix(states, layers, cells)
    T, K = X.shape
    if isinstance(max_lag, bool) or not isinstance(max_lag, (int, np.integer)) or max_lag < 0:
        raise XaiscopeError(f"cell_correlations: max_lag={max_lag!r}; pass an integer >= 0.")
    max_lag = int(max_lag)
    if max_lag >= T:
        raise XaiscopeError(
            f"cell_correlations: max_lag={max_lag} but the states have only {T} time steps; "
            f"pass max_lag < {T} (well below it, so that each lag keeps enough samples)."
        )
    names = [str(k) for k in variables]
    Y = np.column_stack([_variable_vector(k, variables[k], T, time_index) for k in variables])
    V = Y.shape[1]

    # Centre each series on its overall mean: r is shift-invariant and the moment sums
    # below then lose far less precision to cancellation.
    MX = np.isfinite(X)
    MY = np.isfinite(Y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: "Mean of empty slice"
        Xc = np.where(MX, X - np.nanmean(X, axis=0), 0.0)
        Yc = np.where(MY, Y - np.nanmean(Y, axis=0), 0.0)
    Xc = np.nan_to_num(Xc)  # all-NaN columns
    Yc = np.nan_to_num(Yc)
    r_lags, n0 = _lagged_r(Xc, MX, Yc, MY, max_lag, min_periods)
    absr = np.where(np.isnan(r_lags), -1.0, np.abs(r_lags))
    best = absr.argmax(axis=0)                                   # (K, V), first max = smallest lag
    r_best = np.take_along_axis(r_lags, best[None], axis=0)[0]
    best_lag = pd.array(best.ravel(), dtype="Int64")
    best_lag[~np.isfinite(r_best).ravel()] = pd.NA

    return pd.DataFrame({
        "layer": np.repeat(col_layer, V),
        "cell": np.repeat(col_cell, V),
        "variable": np.tile(np.asarray(names, dtype=object), K),
        "r": r_lags[0].ravel(),
        "best_lag": best_lag,
        "r_best": r_best.ravel(),
        "n": n0.ravel().round().astype(np.int64),
    })


def best_cell(df: pd.DataFrame, variable: str = "swe", by: str = "r") -> tuple[Any, Any, float]:
    """The (layer, cell, r) with the largest ``|r|`` for ``variable`` in a :func:`cell_correlations` table.

    ``by="r"`` (default) ranks by the lag-0 correlation; ``by="r_best"`` by the best-lag one.
    Lag 0 is the default because the question is which cell *is* a storage such as SWE: a storage
    state should track the storage on the same day, while best-lag correlations of slowly varying
    series are inflated by autocorrelation and can favour a cell that merely follows it late.
    The returned r is signed (cells can encode a store with either sign).
    """
    if by not in ("r", "r_best"):
        raise XaiscopeError(f"best_cell: by={by!r}; pass 'r' (lag 0) or 'r_best' (best lag).")
    missing = {"layer", "cell", "variable", by} - set(df.columns)
    if missing:
        raise XaiscopeError(
            f"best_cell: the table lacks columns {sorted(missing)}; pass the DataFrame returned by "
            "cell_correlations()."
        )
    sub = df[df["variable"] == variable]
    if sub.empty:
        raise XaiscopeError(
            f"best_cell: no rows for variable {variable!r}; the table holds "
            f"{sorted(map(str, df['variable'].unique()))}. Include it in cell_correlations(variables=...)."
        )
    absr = sub[by].abs()
    if absr.notna().sum() == 0:
        raise XaiscopeError(
            f"best_cell: every correlation with {variable!r} is undefined (NaN): the variable or all "
            "states are constant or missing over the analysed period. Use a longer period."
        )
    row = sub.loc[absr.idxmax()]
    layer, cell = row["layer"], row["cell"]
    layer = layer.item() if hasattr(layer, "item") else layer
    cell = cell.item() if hasattr(cell, "item") else cell
    return layer, cell, float(row[by])


# --------------------------------------------------------------------------------------------
# ridge probe
# --------------------------------------------------------------------------------------------

def _blocks(n: int, k: int) -> list[np.ndarray]:
    """Contiguous blocks of 0..n-1, the first n % k one longer (as sklearn's unshuffled KFold)."""
    return np.array_split(np.arange(n), k)


def _ridge_path(Xtr: np.ndarray, ytr: np.ndarray, alphas: np.ndarray):
    """Standardise on the training rows and solve ridge for every alpha at once via one SVD.

    Returns (mean, scale, y_mean, coefs (p, A)) for coefficients on standardised features.
    """
    mean = Xtr.mean(axis=0)
    scale = Xtr.std(axis=0)
    scale[scale <= 1e-12 * np.maximum(np.abs(mean), 1.0)] = 1.0   # constant feature: stays 0
    Z = (Xtr - mean) / scale
    y_mean = ytr.mean()
    U, s, Vt = np.linalg.svd(Z, full_matrices=False)
    Uty = U.T @ (ytr - y_mean)
    d = s[:, None] / (s[:, None] ** 2 + alphas[None, :])           # (k, A)
    coefs = Vt.T @ (d * Uty[:, None])                              # (p, A)
    return mean, scale, y_mean, coefs


def _predict(X: np.ndarray, fit) -> np.ndarray:
    mean, scale, y_mean, coefs = fit
    return ((X - mean) / scale) @ coefs + y_mean


def _select_alpha(Xtr: np.ndarray, ytr: np.ndarray, alphas: np.ndarray, inner_splits: int) -> int:
    """Index of the alpha with the lowest mean validation MSE over contiguous inner blocks."""
    mse = np.zeros(len(alphas))
    for val in _blocks(len(ytr), inner_splits):
        train = np.ones(len(ytr), bool)
        train[val] = False
        pred = _predict(Xtr[val], _ridge_path(Xtr[train], ytr[train], alphas))
        mse += ((pred - ytr[val, None]) ** 2).mean(axis=0)
    return int(np.argmin(mse))


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    sst = float(((y - y.mean()) ** 2).sum())
    if sst == 0.0:
        return float("nan")
    return 1.0 - float(((y - pred) ** 2).sum()) / sst


@_single_threaded_blas
def ridge_probe(
    states: xr.DataArray | np.ndarray,
    target: Any,
    n_splits: int = 5,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    *,
    inner_splits: int = 4,
    gap: int = 0,
) -> dict[str, Any]:
    """Ridge regression from the state vector to ``target``, cross-validated in time blocks.

    Parameters
    ----------
    states
        ``(time, features)``; an ``xr.DataArray`` with dims ``time`` plus others (e.g.
        ``(time, layer, cell)``) or an array with more than two axes is flattened to features.
    target
        ``(time,)``, e.g. SWE. Time steps where the target or any feature is NaN are dropped first.
    n_splits
        Number of contiguous, unshuffled outer blocks; each is predicted once by a model trained on
        the other blocks (as ``sklearn.model_selection.KFold(n_splits, shuffle=False)``).
    alphas
        Penalties tried (> 0). Features are standardised with the training rows' mean and standard
        deviation only; the intercept is not penalised.
    inner_splits
        Alpha is chosen inside each outer training set by contiguous, unshuffled inner CV with this
        many blocks (lowest mean validation MSE; the smallest alpha on ties). Blocked inner CV is
        used rather than generalised CV because GCV assumes exchangeable samples and under-penalises
        strongly autocorrelated series such as LSTM states.
    gap
        Time steps removed from the outer training set on each side of the test block, to limit
        leakage through autocorrelation at block edges (0 = plain blocked K-fold).

    Returns
    -------
    dict
        ``r2`` pooled out-of-fold R² (1 - SSE/SST over all predicted steps), ``r2_folds`` R² of each
        block (around that block's mean), ``alpha`` chosen by blocked inner CV on all rows and used
        for ``coef`` / ``intercept`` (a final fit on all rows; ``coef`` is per standard deviation of
        each feature, so magnitudes are comparable across cells: the fitted model is
        ``intercept + ((x - feature_mean) / feature_std) @ coef``), ``alpha_folds`` the alpha chosen
        in each outer fold, ``prediction`` (time,) out-of-fold predictions (NaN on dropped steps),
        ``n`` number of steps used, ``features`` labels when ``states`` is a DataArray.
    """
    features = None
    if isinstance(states, xr.DataArray):
        if "time" not in states.dims:
            raise XaiscopeError(
                f"ridge_probe: `states` has dims {tuple(states.dims)}; it needs a 'time' dimension."
            )
        other = [d for d in states.dims if d != "time"]
        if other:
            stacked = states.transpose("time", *other).stack(feature=other)
            features = [tuple(v) if isinstance(v, tuple) else v for v in stacked["feature"].values]
            X = np.asarray(stacked.values, dtype=np.float64)
        else:
            X = np.asarray(states.values, dtype=np.float64)[:, None]
        time_index = pd.Index(states["time"].values) if "time" in states.coords else None
    else:
        X = np.asarray(states, dtype=np.float64)
        if X.ndim == 1:
            X = X[:, None]
        X = X.reshape(X.shape[0], -1)
        time_index = None
    T = X.shape[0]
    if isinstance(target, xr.DataArray) and time_index is not None and "time" in target.coords:
        target = target.reindex(time=time_index)
    y = np.asarray(target, dtype=np.float64)
    y = np.squeeze(y) if y.ndim > 1 else y
    if y.ndim != 1 or y.shape[0] != T:
        raise XaiscopeError(
            f"ridge_probe: `target` has shape {np.shape(target)} but `states` has {T} time steps; "
            f"pass a 1-D target of length {T}."
        )
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise XaiscopeError(f"ridge_probe: n_splits={n_splits!r}; pass an integer >= 2.")
    if isinstance(inner_splits, bool) or not isinstance(inner_splits, (int, np.integer)) \
            or inner_splits < 2:
        raise XaiscopeError(f"ridge_probe: inner_splits={inner_splits!r}; pass an integer >= 2.")
    if isinstance(gap, bool) or not isinstance(gap, (int, np.integer)) or gap < 0:
        raise XaiscopeError(f"ridge_probe: gap={gap!r}; pass an integer >= 0.")
    alphas_arr = np.asarray(list(alphas), dtype=np.float64).ravel()
    if alphas_arr.size == 0 or not np.all(np.isfinite(alphas_arr)) or np.any(alphas_arr <= 0):
        raise XaiscopeError(
            f"ridge_probe: alphas={tuple(alphas)!r}; pass one or more finite penalties > 0, "
            "e.g. (1e-3, 1e-2, 0.1, 1, 10, 100, 1000)."
        )

    keep = np.isfinite(y) & np.isfinite(X).all(axis=1)
    idx = np.flatnonzero(keep)
    Xk, yk = X[keep], y[keep]
    n = len(yk)
    min_rows = 2 * n_splits * inner_splits
    if n < min_rows:
        raise XaiscopeError(
            f"ridge_probe: only {n} time steps have a finite target and finite states; at least "
            f"{min_rows} are needed for {n_splits} outer x {inner_splits} inner blocks. Use a longer "
            "period or fewer splits."
        )

    pred = np.full(n, np.nan)
    r2_folds, alpha_folds = [], []
    for test in _blocks(n, n_splits):
        train = np.ones(n, bool)
        train[max(test[0] - gap, 0): test[-1] + 1 + gap] = False
        if train.sum() < 2 * inner_splits:
            raise XaiscopeError(
                f"ridge_probe: gap={gap} leaves only {int(train.sum())} training steps in a fold; "
                "use a smaller gap or fewer splits."
            )
        Xtr, ytr = Xk[train], yk[train]
        a = _select_alpha(Xtr, ytr, alphas_arr, inner_splits)
        fit = _ridge_path(Xtr, ytr, alphas_arr[a: a + 1])
        pred[test] = _predict(Xk[test], fit)[:, 0]
        r2_folds.append(_r2(yk[test], pred[test]))
        alpha_folds.append(float(alphas_arr[a]))

    a_all = _select_alpha(Xk, yk, alphas_arr, inner_splits)
    mean, scale, y_mean, coefs = _ridge_path(Xk, yk, alphas_arr[a_all: a_all + 1])
    prediction = np.full(T, np.nan)
    prediction[idx] = pred
    return {
        "r2": _r2(yk, pred),
        "r2_folds": r2_folds,
        "alpha": float(alphas_arr[a_all]),
        "alpha_folds": alpha_folds,
        "coef": coefs[:, 0],
        "intercept": float(y_mean),
        "feature_mean": mean,
        "feature_std": scale,
        "prediction": prediction,
        "n": int(n),
        "features": features,
    }
