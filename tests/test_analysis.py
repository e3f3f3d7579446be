"""Cell analysis checked against independent computations (scipy, pandas, scikit-learn, lstsq)."""

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings, HealthCheck
from hypothesis import strategies as st
from scipy import stats

from xaiscope.core.analysis import best_cell, cell_correlations, ridge_probe
from xaiscope.core.errors import XaiscopeError


# ------------------------------------------------------------------ slow references

def _ref_r(state: np.ndarray, var: np.ndarray, lag: int) -> tuple[float, int]:
    """pandas' pairwise-complete correlation of state[t] with var[t - lag]."""
    s = pd.Series(state)
    v = pd.Series(var).shift(lag)          # v[t] = var[t - lag]
    ok = s.notna() & v.notna()
    return s.corr(v, min_periods=3), int(ok.sum())


def _random_states(rng, T=200, L=2, H=4):
    return rng.normal(size=(T, L, H)).cumsum(axis=0) + rng.normal(size=(T, L, H))


# ------------------------------------------------------------------ cell_correlations

def test_lag0_and_lagged_r_match_scipy_pearsonr():
    rng = np.random.default_rng(1)
    T, L, H = 300, 2, 5
    X = _random_states(rng, T, L, H)
    variables = {"a": rng.normal(size=T).cumsum(), "b": rng.gamma(2.0, size=T)}
    # make one cell genuinely related to "a" at lag 4 so best lags are not all noise
    X[4:, 1, 2] = 0.8 * variables["a"][:-4] + 0.3 * rng.normal(size=T - 4)
    max_lag = 10
    df = cell_correlations(X, variables, max_lag=max_lag).set_index(["layer", "cell", "variable"])
    for layer, cell in [(0, 0), (0, 3), (1, 2), (1, 4)]:
        for name, var in variables.items():
            row = df.loc[(layer, cell, name)]
            rs = []
            for lag in range(max_lag + 1):
                x, y = X[lag:, layer, cell], var[: T - lag]
                rs.append(stats.pearsonr(x, y).statistic)
            assert row["r"] == pytest.approx(rs[0], abs=1e-10)
            k = int(np.argmax(np.abs(rs)))
            assert row["best_lag"] == k
            assert row["r_best"] == pytest.approx(rs[k], abs=1e-10)
            assert row["n"] == T
    assert df.loc[(1, 2, "a"), "best_lag"] == 4


def test_exact_lagged_copy_is_recovered():
    rng = np.random.default_rng(2)
    T, lag = 400, 7
    prcp = rng.gamma(0.5, 4.0, size=T)
    X = rng.normal(size=(T, 1, 3))
    X[lag:, 0, 1] = -2.5 * prcp[:-lag] + 1.0      # anti-correlated copy, 7 steps late
    df = cell_correlations(X, {"prcp": prcp}, max_lag=15)
    row = df[(df.cell == 1)].iloc[0]
    assert row["best_lag"] == lag
    assert row["r_best"] == pytest.approx(-1.0, abs=1e-12)
    assert abs(row["r"]) < 0.3


@pytest.mark.parametrize("states_have_gaps", [True, False])   # general and gap-free code paths
def test_nan_pairwise_complete_matches_pandas(states_have_gaps):
    rng = np.random.default_rng(3)
    T, L, H = 250, 2, 3
    X = _random_states(rng, T, L, H)
    if states_have_gaps:
        X[rng.random(size=X.shape) < 0.1] = np.nan
    swe = np.abs(rng.normal(size=T).cumsum())
    swe[rng.random(T) < 0.2] = np.nan               # NaN in the variable
    swe[100:140] = np.nan                           # and a long gap
    max_lag = 6
    df = cell_correlations(X, {"swe": swe}, max_lag=max_lag).set_index(["layer", "cell"])
    for layer in range(L):
        for cell in range(H):
            ref = [_ref_r(X[:, layer, cell], swe, lag) for lag in range(max_lag + 1)]
            row = df.loc[(layer, cell)]
            assert row["r"] == pytest.approx(ref[0][0], abs=1e-10)
            assert row["n"] == ref[0][1]
            rs = np.array([r for r, _ in ref])
            k = int(np.nanargmax(np.abs(rs)))
            assert row["best_lag"] == k
            assert row["r_best"] == pytest.approx(rs[k], abs=1e-10)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    T=st.integers(20, 80),
    H=st.integers(1, 4),
    max_lag=st.integers(0, 8),
    nan_frac=st.floats(0.0, 0.4),
    seed=st.integers(0, 2**31 - 1),
    offset=st.sampled_from([0.0, 1e4, -3e6]),
)
def test_property_against_pandas(T, H, max_lag, nan_frac, seed, offset):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(T, 1, H)) + offset
    v = rng.normal(size=T) * 5 + offset
    X[rng.random(X.shape) < nan_frac] = np.nan
    v[rng.random(T) < nan_frac] = np.nan
    df = cell_correlations(X, {"v": v}, max_lag=max_lag)
    for cell in range(H):
        row = df.iloc[cell]
        ref = np.array([_ref_r(X[:, 0, cell], v, lag)[0] for lag in range(max_lag + 1)])
        if np.isnan(ref[0]):
            assert np.isnan(row["r"])
        else:
            assert row["r"] == pytest.approx(ref[0], abs=1e-8)
        if np.all(np.isnan(ref)):
            assert np.isnan(row["r_best"]) and pd.isna(row["best_lag"])
        else:
            assert abs(row["r_best"]) == pytest.approx(np.nanmax(np.abs(ref)), abs=1e-8)
            assert abs(row["r_best"]) >= abs(np.nan_to_num(row["r"])) - 1e-12


def test_constant_series_give_nan_without_warnings():
    rng = np.random.default_rng(4)
    T = 120
    X = rng.normal(size=(T, 1, 3))
    X[:, 0, 0] = 0.1                               # constant cell (0.1 is inexact in binary)
    X[:, 0, 2] = np.nan                            # all-missing cell
    variables = {"const": np.full(T, 273.15), "v": rng.normal(size=T)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = cell_correlations(X, variables, max_lag=5)
    by = df.set_index(["cell", "variable"])
    assert df.loc[df.variable == "const", "r"].isna().all()
    assert df.loc[df.variable == "const", "best_lag"].isna().all()
    assert np.isnan(by.loc[(0, "v"), "r"]) and np.isnan(by.loc[(2, "v"), "r"])
    assert by.loc[(2, "v"), "n"] == 0
    ref = stats.pearsonr(X[:, 0, 1], variables["v"]).statistic
    assert by.loc[(1, "v"), "r"] == pytest.approx(ref, abs=1e-12)


def test_series_constant_only_on_the_paired_samples_gives_nan():
    # varies where the variable is missing, constant where both are present: r is undefined
    rng = np.random.default_rng(10)
    T = 300
    for c in (0.1, 0.7, 273.15):
        x = np.full(T, c)
        x[:10] = rng.normal(size=10) * 50
        y = rng.normal(size=T)
        y[:10] = np.nan
        df = cell_correlations(x[:, None, None], {"y": y}, max_lag=0)
        assert np.isnan(df["r"].iloc[0]) and pd.isna(df["best_lag"].iloc[0])
        assert df["n"].iloc[0] == T - 10


def test_dataarray_labels_dim_order_and_time_alignment():
    rng = np.random.default_rng(5)
    time = pd.date_range("2000-01-01", periods=200, freq="D")
    values = _random_states(rng, 200, 2, 3)
    da = xr.DataArray(values, dims=("time", "layer", "cell"),
                      coords={"time": time, "layer": [0, 1], "cell": [10, 11, 12]})
    full_time = pd.date_range("1999-06-01", "2001-01-01", freq="D")
    swe_full = xr.DataArray(rng.normal(size=len(full_time)).cumsum(), dims="time",
                            coords={"time": full_time})
    df = cell_correlations(da.transpose("cell", "time", "layer"), {"swe": swe_full}, max_lag=3)
    assert list(df.columns) == ["layer", "cell", "variable", "r", "best_lag", "r_best", "n"]
    assert list(zip(df.layer, df.cell)) == [(l, c) for l in (0, 1) for c in (10, 11, 12)]
    swe_aligned = swe_full.sel(time=time).values
    row = df[(df.layer == 1) & (df.cell == 11)].iloc[0]
    assert row["r"] == pytest.approx(np.corrcoef(values[:, 1, 1], swe_aligned)[0, 1], abs=1e-10)


def test_cell_correlations_errors_name_the_problem():
    X = np.zeros((50, 1, 2))
    with pytest.raises(XaiscopeError, match="'swe'.*length 50"):
        cell_correlations(X, {"swe": np.zeros(49)})
    with pytest.raises(XaiscopeError, match="max_lag=60"):
        cell_correlations(X, {"swe": np.zeros(50)}, max_lag=60)
    with pytest.raises(XaiscopeError, match="max_lag"):
        cell_correlations(X, {"swe": np.zeros(50)}, max_lag=-1)
    with pytest.raises(XaiscopeError, match="non-empty dict"):
        cell_correlations(X, {})
    da = xr.DataArray(np.zeros((3, 50, 1, 2)), dims=("sample", "time", "layer", "cell"))
    with pytest.raises(XaiscopeError, match="isel\\(sample=0\\)"):
        cell_correlations(da, {"swe": np.zeros(50)})
    with pytest.raises(XaiscopeError, match="Dataset"):
        cell_correlations(da.to_dataset(name="c"), {"swe": np.zeros(50)})


# ------------------------------------------------------------------ best_cell

def test_best_cell_finds_storage_cell_at_lag0_and_lagged_cell_by_r_best():
    rng = np.random.default_rng(6)
    T = 500
    swe = np.maximum(np.sin(np.arange(T) * 2 * np.pi / 365) * 100, 0) + rng.normal(size=T)
    X = rng.normal(size=(T, 2, 4))
    X[:, 1, 3] = -0.01 * swe + 0.01 * rng.normal(size=T)      # the snow cell (negative sign)
    X[20:, 0, 1] = swe[:-20]                                  # same series, 20 days late
    df = cell_correlations(X, {"swe": swe, "noise": rng.normal(size=T)}, max_lag=30)
    layer, cell, r = best_cell(df, "swe")
    assert (layer, cell) == (1, 3)
    assert r == pytest.approx(np.corrcoef(X[:, 1, 3], swe)[0, 1], abs=1e-12)
    assert r < -0.99
    assert best_cell(df, "swe", by="r_best")[:2] == (0, 1)
    assert isinstance(layer, int) and isinstance(cell, int)


def test_best_cell_errors():
    df = cell_correlations(np.random.default_rng(0).normal(size=(40, 1, 2)),
                           {"prcp": np.random.default_rng(1).normal(size=40)}, max_lag=2)
    with pytest.raises(XaiscopeError, match="'swe'.*prcp"):
        best_cell(df, "swe")
    with pytest.raises(XaiscopeError, match="by="):
        best_cell(df, "prcp", by="lag")
    const = cell_correlations(np.ones((40, 1, 2)), {"prcp": np.arange(40.0)}, max_lag=2)
    with pytest.raises(XaiscopeError, match="undefined"):
        best_cell(const, "prcp")


# ------------------------------------------------------------------ ridge_probe

def _sklearn_reference(X, y, n_splits, inner_splits, alphas):
    """Blocked nested CV refitted the slow way with scikit-learn."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import mean_squared_error, r2_score
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def choose(Xtr, ytr):
        scores = []
        for a in alphas:
            mses = []
            for tr, va in KFold(inner_splits, shuffle=False).split(Xtr):
                m = make_pipeline(StandardScaler(), Ridge(alpha=a)).fit(Xtr[tr], ytr[tr])
                mses.append(mean_squared_error(ytr[va], m.predict(Xtr[va])))
            scores.append(np.mean(mses))
        return alphas[int(np.argmin(scores))]

    pred = np.empty_like(y)
    folds, chosen = [], []
    for tr, te in KFold(n_splits, shuffle=False).split(X):
        a = choose(X[tr], y[tr])
        m = make_pipeline(StandardScaler(), Ridge(alpha=a)).fit(X[tr], y[tr])
        pred[te] = m.predict(X[te])
        folds.append(r2_score(y[te], pred[te]))
        chosen.append(a)
    a_all = choose(X, y)
    final = make_pipeline(StandardScaler(), Ridge(alpha=a_all)).fit(X, y)
    return {"r2": r2_score(y, pred), "r2_folds": folds, "alpha_folds": chosen, "alpha": a_all,
            "coef": final[-1].coef_, "prediction": pred}


def test_ridge_probe_matches_sklearn_nested_blocked_cv():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(7)
    T, p = 400, 12
    X = rng.normal(size=(T, p)).cumsum(axis=0) * rng.uniform(0.1, 10, size=p)
    y = X @ rng.normal(size=p) * 0.05 + rng.normal(size=T) * 3
    alphas = (1e-3, 1e-1, 1.0, 10.0, 1e2, 1e3, 1e4)
    ref = _sklearn_reference(X, y, 5, 3, alphas)
    out = ridge_probe(X, y, n_splits=5, alphas=alphas, inner_splits=3)
    assert out["alpha_folds"] == ref["alpha_folds"]
    assert out["alpha"] == ref["alpha"]
    assert out["r2"] == pytest.approx(ref["r2"], abs=1e-8)
    np.testing.assert_allclose(out["r2_folds"], ref["r2_folds"], atol=1e-8)
    np.testing.assert_allclose(out["prediction"], ref["prediction"], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(out["coef"], ref["coef"], rtol=1e-7, atol=1e-9)


def test_ridge_single_alpha_matches_augmented_lstsq_with_gap_and_nans():
    rng = np.random.default_rng(8)
    T, p, alpha, gap, k = 240, 6, 3.0, 10, 4
    X = rng.normal(size=(T, p)) * [1, 5, 0.1, 2, 3, 1] + [0, 100, -5, 1, 0, 2]
    y = X @ rng.normal(size=p) + rng.normal(size=T)
    y[[5, 77, 150]] = np.nan
    X[200, 2] = np.nan
    out = ridge_probe(X, y, n_splits=k, alphas=(alpha,), gap=gap)

    keep = np.isfinite(y) & np.isfinite(X).all(axis=1)
    Xk, yk = X[keep], y[keep]
    n = len(yk)
    pred = np.empty(n)
    # contiguous blocks, the first n % k one longer (sklearn's unshuffled KFold convention)
    sizes = [n // k + (i < n % k) for i in range(k)]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for i in range(k):
        te = np.arange(starts[i], starts[i + 1])
        tr = np.setdiff1d(np.arange(n), np.arange(max(starts[i] - gap, 0), starts[i + 1] + gap))
        mu, sd = Xk[tr].mean(0), Xk[tr].std(0)
        Z = (Xk[tr] - mu) / sd
        A = np.vstack([np.column_stack([np.ones(len(tr)), Z]),
                       np.column_stack([np.zeros(p), np.sqrt(alpha) * np.eye(p)])])
        b = np.concatenate([yk[tr], np.zeros(p)])
        w = np.linalg.lstsq(A, b, rcond=None)[0]
        pred[te] = w[0] + ((Xk[te] - mu) / sd) @ w[1:]
    np.testing.assert_allclose(out["prediction"][keep], pred, rtol=1e-9, atol=1e-9)
    assert np.isnan(out["prediction"][~keep]).all()
    assert out["n"] == n
    sst = ((yk - yk.mean()) ** 2).sum()
    assert out["r2"] == pytest.approx(1 - ((yk - pred) ** 2).sum() / sst, abs=1e-10)
    # final fit on all rows reproduces the stated model
    refit = out["intercept"] + ((Xk - out["feature_mean"]) / out["feature_std"]) @ out["coef"]
    mu, sd = Xk.mean(0), Xk.std(0)
    A = np.vstack([np.column_stack([np.ones(n), (Xk - mu) / sd]),
                   np.column_stack([np.zeros(p), np.sqrt(alpha) * np.eye(p)])])
    w = np.linalg.lstsq(A, np.concatenate([yk, np.zeros(p)]), rcond=None)[0]
    np.testing.assert_allclose(refit, w[0] + ((Xk - mu) / sd) @ w[1:], rtol=1e-9, atol=1e-9)


def test_probe_noise_vs_informative_states():
    rng = np.random.default_rng(9)
    T = 1500
    swe = np.maximum(np.sin(np.arange(T) * 2 * np.pi / 365) * 80, 0) + rng.gamma(1.0, size=T)
    noise_states = rng.normal(size=(T, 2, 20))
    assert ridge_probe(noise_states, swe)["r2"] < 0.05
    states = rng.normal(size=(T, 2, 20))
    states[:, 1, 7] = 0.02 * swe - 3.0
    da = xr.DataArray(states, dims=("time", "layer", "cell"),
                      coords={"time": pd.date_range("1990-01-01", periods=T), "layer": [0, 1],
                              "cell": np.arange(20)})
    out = ridge_probe(da, swe)
    assert out["r2"] > 0.99 and min(out["r2_folds"]) > 0.99
    assert out["features"][int(np.argmax(np.abs(out["coef"])))] == (1, 7)


def test_ridge_probe_errors():
    X = np.random.default_rng(0).normal(size=(100, 3))
    with pytest.raises(XaiscopeError, match="length 100"):
        ridge_probe(X, np.zeros(90))
    with pytest.raises(XaiscopeError, match="n_splits"):
        ridge_probe(X, np.zeros(100), n_splits=1)
    with pytest.raises(XaiscopeError, match="alphas"):
        ridge_probe(X, np.zeros(100), alphas=(0.0, 1.0))
    with pytest.raises(XaiscopeError, match="only 20 time steps"):
        y = np.full(100, np.nan)
        y[:20] = 1.0
        ridge_probe(X, y)


# ------------------------------------------------------------------ real demo basin

def _degree_day_snow(prcp: np.ndarray, tmean: np.ndarray, ddf: float = 3.0) -> np.ndarray:
    """A textbook degree-day snow store (mm): accumulate below 0 degC, melt ddf mm per degC above."""
    store, out = 0.0, np.empty_like(prcp)
    for t, (p, temp) in enumerate(zip(prcp, tmean)):
        if temp < 0.0:
            store += p
        else:
            store = max(store - ddf * temp, 0.0)
        out[t] = store
    return out


def test_demo_basin_snow_cell_is_found():
    camels = pytest.importorskip("xaiscope.data.camels")
    ds = camels.demo_basin()
    prcp, tmean = ds["prcp"].values, ds["tmean"].values
    rng = np.random.default_rng(11)
    T = ds.sizes["time"]
    states = rng.normal(size=(T, 2, 20)) * 0.3
    states[:, 1, 5] = np.tanh(_degree_day_snow(prcp, tmean) / 150.0)   # a saturating snow cell
    states[:, 0, 2] = np.convolve(prcp, np.ones(10) / 10, mode="full")[:T]  # a rain memory cell
    da = xr.DataArray(states, dims=("time", "layer", "cell"),
                      coords={"time": ds["time"].values, "layer": [0, 1], "cell": np.arange(20)})
    sl = slice("1990-10-01", "2000-09-30")
    df = cell_correlations(da.sel(time=sl), {"swe": ds["swe"], "prcp": ds["prcp"],
                                             "tmean": ds["tmean"]}, max_lag=30)
    layer, cell, r = best_cell(df, "swe")
    assert (layer, cell) == (1, 5)
    ref = pd.Series(da.sel(time=sl).values[:, 1, 5]).corr(pd.Series(ds["swe"].sel(time=sl).values))
    assert r == pytest.approx(ref, abs=1e-10) and r > 0.8
    rain = df[(df.layer == 0) & (df.cell == 2) & (df.variable == "prcp")].iloc[0]
    assert 1 <= rain["best_lag"] <= 9          # a 10-day running mean peaks inside its window
    probe = ridge_probe(da.sel(time=sl), ds["swe"].sel(time=sl))
    assert probe["r2"] > 0.5
