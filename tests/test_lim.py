"""LIM: recovery of a known propagator, covariances against scipy/numpy, adjoint vs finite differences and
torch autograd, stochastic integration vs the Lyapunov solution, hindcast skill on the shipped ERSSTv5 data."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
import xarray as xr

from xaiscope.core import lim as LM
from xaiscope.data import sst as S


def known_system(k=4, seed=0):
    """A stable non-normal L (per month) and a positive-definite Q."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 0.15, (k, k))
    lmat = a - np.diag(np.linspace(0.15, 0.4, k)) - 0.5 * (a + a.T) * 0.5
    assert np.linalg.eigvals(lmat).real.max() < 0
    b = rng.normal(size=(k, k))
    q = b @ b.T * 0.05 + 0.02 * np.eye(k)
    return lmat, q


def small_grid(seed=0):
    lat = np.arange(-20.0, 21.0, 5.0)
    lon = np.arange(150.0, 290.0, 10.0)
    land = np.zeros((lat.size, lon.size), bool)
    land[:3, -3:] = True
    mask = xr.DataArray(land.astype("int8"), dims=("lat", "lon"), coords={"lat": lat, "lon": lon})
    return lat, lon, mask


def field_from_pcs(x, patterns_w, mask, sqrt_w):
    """Maps f = Bᵀx/√w on sea cells (B orthonormal in weighted space)."""
    sea_vals = (x @ patterns_w) / sqrt_w
    t = pd.date_range("1900-01", periods=len(x), freq="MS")
    return S.from_ocean_vectors(sea_vals, mask, time=t)


@pytest.fixture(scope="module")
def generated():
    """A long record generated (exact AR(1) discretisation, scipy) by a known L, Q in 4 spatial patterns."""
    lmat, q = known_system()
    k = lmat.shape[0]
    lat, lon, mask = small_grid()
    sea = mask.values == 0
    sqrt_w = np.sqrt(np.cos(np.radians(np.broadcast_to(lat[:, None], mask.shape))))[sea]
    rng = np.random.default_rng(1)
    b, _ = np.linalg.qr(rng.normal(size=(sea.sum(), k)))
    patterns_w = b.T  # (k, n_sea) orthonormal rows
    c = scipy.linalg.solve_continuous_lyapunov(lmat, -q)
    g = scipy.linalg.expm(lmat)
    noise = np.linalg.cholesky(c - g @ c @ g.T)
    n = 40_000
    x = np.empty((n, k))
    x[0] = np.linalg.cholesky(c) @ rng.standard_normal(k)
    eta = rng.standard_normal((n, k)) @ noise.T
    for i in range(1, n):
        x[i] = g @ x[i - 1] + eta[i]
    field = field_from_pcs(x, patterns_w, mask, sqrt_w)
    return dict(L=lmat, Q=q, C=c, G=g, B=patterns_w, field=field, mask=mask, x=x)


def test_recovers_known_propagator_L_and_Q(generated):
    lim = LM.fit_lim(generated["field"], generated["mask"], n_modes=4)
    assert lim.variance_fraction > 0.999999
    r = lim.eofs @ generated["B"].T  # rotation between fitted EOFs and the true patterns
    np.testing.assert_allclose(r @ r.T, np.eye(4), atol=1e-8)
    g_true_in_fit = r @ generated["G"] @ r.T
    np.testing.assert_allclose(lim.propagator(1), g_true_in_fit, atol=0.02)
    np.testing.assert_allclose(lim.L, r @ generated["L"] @ r.T, atol=0.03)
    np.testing.assert_allclose(lim.propagator(6), r @ scipy.linalg.expm(6 * generated["L"]) @ r.T, atol=0.03)
    q_true = r @ generated["Q"] @ r.T
    assert np.abs(lim.Q - q_true).max() < 0.1 * np.abs(q_true).max()
    assert not lim.noise_repaired


def test_fit_matches_independent_regression_and_eigh(generated):
    field = generated["field"].isel(time=slice(0, 600))
    lim = LM.fit_lim(field, generated["mask"], n_modes=3)
    # EOFs: leading eigenvectors of the weighted covariance (numpy eigh), up to sign
    v = S.to_ocean_vectors(field, generated["mask"]) * lim.sqrt_w
    vals, vecs = np.linalg.eigh(v.T @ v)
    top = vecs[:, ::-1][:, :3].T
    np.testing.assert_allclose(np.abs(np.sum(top * lim.eofs, 1)), 1, atol=1e-8)
    # G(1) = least-squares regression of x[t+1] on x[t] (numpy lstsq); L = logm(G)
    x = lim.encode(field)
    coef, *_ = np.linalg.lstsq(x[:-1], x[1:], rcond=None)
    np.testing.assert_allclose(lim.propagator(1), coef.T, atol=1e-10)
    # Q from the fluctuation-dissipation relation
    c0 = x.T @ x / len(x)
    np.testing.assert_allclose(lim.Q, -(lim.L @ c0 + c0 @ lim.L.T), atol=1e-10)


def test_simulation_reproduces_model_covariances(generated):
    lim = LM.fit_lim(generated["field"], generated["mask"], n_modes=4)
    c = lim.stationary_covariance()
    np.testing.assert_allclose(lim.L @ c + c @ lim.L.T, -lim.Q, atol=1e-10)
    for method, n in (("exact", 20_000), ("euler", 4_000)):
        sim = lim.simulate(n, seed=3, method=method, substeps=10)
        assert sim.dims == ("time", "lat", "lon") and np.isnan(sim.values[:, generated["mask"].values == 1]).all()
        x = lim.encode(sim)
        c_sim = x.T @ x / len(x)
        tol = 0.1 if method == "exact" else 0.2
        assert np.abs(c_sim - c).max() < tol * np.abs(c).max(), method
        lag1 = x[1:].T @ x[:-1] / (len(x) - 1)
        assert np.abs(lag1 - lim.propagator(1) @ c).max() < tol * np.abs(c).max(), method
    # seeded: same seed, same record; different seed, different record
    a, b = lim.simulate(24, seed=5), lim.simulate(24, seed=5)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.allclose(a.values, lim.simulate(24, seed=6).values, equal_nan=True)


def test_negative_q_eigenvalues_warn_and_repair():
    rng = np.random.default_rng(2)
    m = rng.normal(size=(5, 5))
    q = m @ np.diag([3.0, 2.0, 1.0, -0.4, -0.2]) @ np.linalg.inv(m)
    q = 0.5 * (q + q.T)
    vals = np.linalg.eigvalsh(q)
    assert vals.min() < 0
    rep, orig = LM.repair_noise_covariance(q)
    np.testing.assert_allclose(orig, vals)
    assert np.linalg.eigvalsh(rep).min() > -1e-10
    np.testing.assert_allclose(np.trace(rep), np.trace(q))
    # eigenvectors of the positive eigenvalues are kept
    w, v = np.linalg.eigh(q)
    for i in np.where(w > 0)[0]:
        proj = rep @ v[:, i]
        np.testing.assert_allclose(proj / np.linalg.norm(proj), v[:, i] * np.sign(proj @ v[:, i]), atol=1e-8)


def test_fit_warns_when_q_is_not_positive():
    """Short noisy record with many modes: Q gets negative eigenvalues → warning, repaired PSD Q."""
    _, _, mask = small_grid()
    found = False
    for seed in range(30):
        rng = np.random.default_rng(seed)
        t = pd.date_range("1900-01", periods=60, freq="MS")
        f = xr.DataArray(rng.normal(size=(60,) + mask.shape), dims=("time", "lat", "lon"),
                         coords={"time": t, "lat": mask.lat, "lon": mask.lon}).where(mask == 0)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            try:
                lim = LM.fit_lim(f, mask, n_modes=12)
            except LM.LIMError:
                continue
        if lim.noise_repaired:
            assert any(issubclass(w.category, LM.NoiseCovarianceWarning) for w in rec)
            assert np.linalg.eigvalsh(lim.Q).min() > -1e-10
            found = True
            break
    assert found


# --------------------------------------------------------------------------------------- adjoint
@pytest.fixture(scope="module")
def real():
    ds = S.demo_sst(with_ssh=False)
    lim = LM.fit_lim(ds.sst_anomaly, ds.land_mask, n_modes=20, period=("1980-01", "2005-12"))
    return ds, lim


@pytest.mark.parametrize("lag", [0, 1, 6, 12])
def test_adjoint_equals_finite_differences(real, lag):
    ds, lim = real
    ne_pacific = S.box_weights(ds.lat, ds.lon, (25, 40), (200, 230), lim.land_mask)
    sens = lim.adjoint_sensitivity(ne_pacific, lag)
    assert np.isnan(sens.values[lim.land_mask.values == 1]).all()
    x0 = ds.sst_anomaly.sel(time="1997-06").squeeze("time", drop=True)

    def qoi(field):  # run the LIM forward and take the box mean (independent path: maps, not vectors)
        fc = lim.forecast(field, [lag]).isel(lead=0)
        return float((fc.fillna(0) * ne_pacific).sum())

    rng = np.random.default_rng(lag)
    sea = np.argwhere(lim.land_mask.values == 0)
    cells = sea[rng.choice(len(sea), 25, replace=False)]
    eps = 1e-3
    base = x0.values.copy()
    fd = []
    for i, j in cells:
        up, dn = base.copy(), base.copy()
        up[i, j] += eps
        dn[i, j] -= eps
        fd.append((qoi(x0.copy(data=up)) - qoi(x0.copy(data=dn))) / (2 * eps))
    got = sens.values[cells[:, 0], cells[:, 1]]
    scale = np.abs(sens.values[np.isfinite(sens.values)]).max()
    assert np.max(np.abs(got - np.array(fd))) <= 1e-4 * scale


def test_autograd_on_torch_lim_equals_adjoint(real):
    ds, lim = real
    w = S.box_weights(ds.lat, ds.lon, (25, 40), (200, 230), lim.land_mask)
    wt = torch.as_tensor(w.values)
    x0 = torch.as_tensor(ds.sst_anomaly.isel(time=100).fillna(0).values, dtype=torch.float64)
    step = lim.torch_step()
    for lag in (1, 3, 9):
        g = LM.autograd_sensitivity(step, x0, lambda f: (f * wt).sum(), lag).numpy()
        ref = lim.adjoint_sensitivity(w, lag).values
        sea = lim.land_mask.values == 0
        np.testing.assert_allclose(g[sea], ref[sea], rtol=1e-8, atol=1e-12 * np.abs(ref[sea]).max())
        assert np.all(g[~sea] == 0)
    # the torch step is the LIM's one-month forecast
    f1 = step(x0).numpy()
    ref1 = lim.forecast(ds.sst_anomaly.isel(time=100), [1]).isel(lead=0).values
    np.testing.assert_allclose(f1[sea], ref1[sea], atol=1e-10)


def test_autograd_sensitivity_on_a_nonlinear_model_matches_finite_differences():
    torch.manual_seed(0)
    a = torch.randn(6, 6, dtype=torch.float64) * 0.4
    step = lambda x: torch.tanh(a @ x)  # noqa: E731
    qoi = lambda x: x[0] + 0.5 * x[3]  # noqa: E731
    x0 = torch.randn(6, dtype=torch.float64)
    g = LM.autograd_sensitivity(step, x0, qoi, 3)

    def run(x):
        for _ in range(3):
            x = step(x)
        return float(qoi(x))

    fd = [(run(x0 + 1e-6 * torch.eye(6, dtype=torch.float64)[i]) - run(x0 - 1e-6 * torch.eye(6, dtype=torch.float64)[i]))
          / 2e-6 for i in range(6)]
    np.testing.assert_allclose(g.numpy(), fd, rtol=1e-6, atol=1e-9)
    with pytest.raises(LM.LIMError, match="scalar"):
        LM.autograd_sensitivity(step, x0, lambda x: x, 1)


def test_forecast_index_equals_nino34_of_forecast_maps(real):
    ds, lim = real
    init = ds.sst_anomaly.sel(time=slice("2014-01", "2014-06"))
    idx = lim.forecast_index(init, [1, 4])
    maps = lim.forecast(init, [1, 4])
    for lead in (1, 4):
        ref = S.nino34(maps.sel(lead=lead))
        np.testing.assert_allclose(idx.sel(lead=lead).values, ref.values, rtol=1e-10)


def test_hindcast_beats_persistence_on_test_years(real):
    ds, lim = real
    obs = S.nino34(ds.sst_anomaly)
    fc = lim.forecast_index(ds.sst_anomaly, range(1, 7))
    skill = LM.lead_skill(fc, obs, "2010-01", "2018-12")
    pers = LM.lead_skill(LM.persistence_forecast(obs), obs, "2010-01", "2018-12")
    assert (skill.n == 108).all()
    # persistence skill by lead from pandas shift (independent of lead_skill's bookkeeping)
    s = obs.to_series()
    for lead in (1, 3, 6):
        both = pd.DataFrame({"o": s, "p": s.shift(lead)})["2010-01":"2018-12"].dropna()
        assert np.isclose(pers.loc[lead, "r"], np.corrcoef(both.o, both.p)[0, 1])
    assert (skill.loc[3:, "r"] > pers.loc[3:, "r"]).all()
    assert (skill.loc[3:, "rmse"] < pers.loc[3:, "rmse"]).all()


def test_bad_inputs(real):
    ds, lim = real
    with pytest.raises(LM.LIMError, match="too few"):
        LM.fit_lim(ds.sst_anomaly.isel(time=slice(0, 20)), ds.land_mask, n_modes=20)
    with pytest.raises(LM.LIMError, match="gaps"):
        LM.fit_lim(ds.sst_anomaly.isel(time=np.r_[0:100, 150:250]), ds.land_mask, n_modes=5)
    on_land = S.box_weights(ds.lat, ds.lon, (25, 40), (200, 230))  # no land mask: fine (all sea)
    sahara = S.box_weights(ds.lat, ds.lon, (15, 25), (0, 20))
    lim.adjoint_sensitivity(on_land, 1)
    with pytest.raises(LM.LIMError, match="land"):
        lim.adjoint_sensitivity(sahara, 1)
    with pytest.raises(LM.LIMError, match="lag"):
        lim.propagator(-1)
