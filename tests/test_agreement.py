"""Agreement metrics against independent computations (numpy weighted covariance, scikit-learn Jaccard, pandas)."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import jaccard_score

from xaiscope.core.agreement import (REGIONS, AgreementError, agreement_map, compare, pattern_correlation,
                                     region_masks, region_shares, sign_agreement, top_mask, topk_jaccard)
from xaiscope.data.sst import demo_sst


@pytest.fixture(scope="module")
def land():
    return demo_sst(with_ssh=False).land_mask


def maps(seed, land, corr=0.5):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(land.shape)
    b = corr * a + rng.standard_normal(land.shape)
    sea = land.values == 0
    mk = lambda v: xr.DataArray(np.where(sea, v, np.nan), dims=("lat", "lon"),  # noqa: E731
                                coords={"lat": land.lat, "lon": land.lon})
    return mk(a), mk(b)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), corr=st.floats(-2, 2))
def test_pattern_correlation_vs_numpy_weighted_cov(seed, corr):
    lm = _LAND  # module-level: hypothesis does not mix with function-scoped fixtures
    a, b = maps(seed, lm, corr)
    ok = np.isfinite(a.values)
    w = np.broadcast_to(np.cos(np.deg2rad(a.lat.values))[:, None], a.shape)[ok]
    c = np.cov(a.values[ok], b.values[ok], aweights=w)
    assert pattern_correlation(a, b) == pytest.approx(c[0, 1] / np.sqrt(c[0, 0] * c[1, 1]), rel=1e-10)


_LAND = demo_sst(with_ssh=False).land_mask


def test_top_mask_covers_k_percent_of_area(land):
    a, _ = maps(1, land)
    t = top_mask(a, 10).values
    w = np.cos(np.deg2rad(a.lat.values))[:, None] * np.ones(a.shape)
    sea = np.isfinite(a.values)
    frac = (w * t).sum() / (w * sea).sum()
    assert 0.10 <= frac < 0.10 + w.max() / (w * sea).sum() + 1e-12
    # every selected cell is at least as large as every unselected sea cell
    assert np.abs(a.values[t]).min() >= np.nanmax(np.abs(a.values[sea & ~t]))


@pytest.mark.parametrize("k", [5, 10, 25])
def test_jaccard_vs_sklearn(land, k):
    a, b = maps(2, land, 0.8)
    ta, tb = top_mask(a, k).values, top_mask(b, k).values
    sea = np.isfinite(a.values)
    w = np.broadcast_to(np.cos(np.deg2rad(a.lat.values))[:, None], a.shape)
    ref = jaccard_score(ta[sea], tb[sea], sample_weight=w[sea])
    assert topk_jaccard(a, b, k) == pytest.approx(ref, rel=1e-12)
    assert topk_jaccard(a, a, k) == pytest.approx(1.0)


def test_sign_agreement_vs_pandas(land):
    a, b = maps(3, land, 0.3)
    df = pd.DataFrame({"a": a.values.ravel(), "b": b.values.ravel(),
                       "w": np.repeat(np.cos(np.deg2rad(a.lat.values)), a.sizes["lon"])}).dropna()
    same = (np.sign(df.a) == np.sign(df.b)).astype(float)
    assert sign_agreement(a, b) == pytest.approx(np.average(same, weights=df.w))
    assert sign_agreement(a, -a) == 0.0


def test_agreement_map_codes(land):
    a, b = maps(4, land, 0.5)
    m = agreement_map(a, b, 10)
    ta, tb = top_mask(a, 10).values, top_mask(b, 10).values
    sea = np.isfinite(a.values)
    assert np.all(np.isnan(m.values[~sea]))
    assert np.all(m.values[sea & ta & tb] == 3) and np.all(m.values[sea & ta & ~tb] == 1)
    assert np.all(m.values[sea & ~ta & tb] == 2) and np.all(m.values[sea & ~ta & ~tb] == 0)
    assert m.attrs["flag_meanings"].split() == ["neither", "only_relevance", "only_sensitivity", "both"]


def test_regions_partition_the_sea_and_known_places(land):
    m = region_masks(land)
    sea = land.values == 0
    np.testing.assert_array_equal(m.values.sum(0), sea.astype(int))
    places = {(0, 200): "equatorial_pacific_waveguide", (45, 180): "north_pacific", (-50, 100): "southern_ocean",
              (30, 320): "atlantic", (25, 270): "atlantic", (-20, 80): "indian_ocean", (40, 230): "eastern_boundary",
              (-30, 280): "eastern_boundary", (-20, 200): "other"}
    for (la, lo), name in places.items():
        assert bool(m.sel(region=name, lat=la, lon=lo)), (la, lo, name)


def test_region_shares_vs_pandas_groupby(land):
    a, _ = maps(5, land)
    m = region_masks(land)
    label = np.full(a.shape, "", dtype=object)
    for r in REGIONS:
        label[m.sel(region=r).values] = r
    df = pd.DataFrame({"v": np.abs(a.values.ravel()), "r": label.ravel()}).dropna()
    ref = (df.groupby("r").v.sum() / df.v.sum()).to_dict()
    got = region_shares(a, m)
    assert sum(got.values()) == pytest.approx(1.0)
    for r in REGIONS:
        assert got[r] == pytest.approx(ref.get(r, 0.0))


def test_errors(land):
    a, b = maps(6, land)
    with pytest.raises(AgreementError, match="different grids"):
        pattern_correlation(a, b.isel(lat=slice(1, None)))
    with pytest.raises(AgreementError, match="k"):
        topk_jaccard(a, b, 0)
    out = compare(a, b, land_mask=land)
    assert set(out["relevance_shares"]) == set(REGIONS)


def test_ground_truth_lim_relevance_matches_adjoint(tmp_path):
    """Truth = a LIM: train the network on LIM-generated SST and compare its relevance with the LIM adjoint."""
    import warnings

    import torch

    from xaiscope.core.lim import fit_lim
    from xaiscope.core.relevance import lrp
    from xaiscope.core.sst_qoi import (SstQoiTrainConfig, checkpoint_inputs, make_qoi_samples, qoi_weights, to_map,
                                       train_sst_qoi)
    from xaiscope.core.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    ds = demo_sst(with_ssh=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lim = fit_lim(ds.sst_anomaly, ds.land_mask, n_modes=10)
    sim = lim.simulate(3000, seed=0).to_dataset(name="sst_anomaly").assign(land_mask=lim.land_mask)
    lag = 3
    cfg = SstQoiTrainConfig(lag=lag, epochs=15, hidden=(16,), dropout=0.0, keep_epochs=(15,))
    train_sst_qoi(sim, tmp_path / "gt", cfg)
    ck = load_checkpoint(tmp_path / "gt" / "epoch_015")
    man = ck.manifest
    s = make_qoi_samples(sim, lag)
    x = checkpoint_inputs(man, sim)[: len(s.y)]
    e = lrp(ck.model, x, rule="epsilon")
    pos = (e.target == s.y) & (s.y == 1)
    adj = lim.adjoint_sensitivity(qoi_weights(sim), lag).values.ravel()[man["sea_cells"]]
    composite = to_map(e.relevance[pos].mean(0), man)
    truth = to_map((adj * s.x[pos]).mean(0), man)  # the LIM's own relevance: adjoint × input anomaly
    r_rel = pattern_correlation(composite, truth)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = ck.model.double()(xt)
    (g,) = torch.autograd.grad((out[:, 1] - out[:, 0]).sum(), xt)
    r_grad = pattern_correlation(to_map(g.numpy().mean(0), man), to_map(adj, man))
    print(f"ground truth lag {lag}: composite LRP vs adjoint x input r={r_rel:.3f}; mean gradient vs adjoint "
          f"r={r_grad:.3f}")
    assert r_rel > 0.6
    assert r_grad > 0.6
