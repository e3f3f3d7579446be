"""The LRP-vs-adjoint view: state logic without a browser (the maps against direct core.relevance / core.lim calls,
the metric curves against core.agreement, cases and QoI against a hand-written numpy QoI, provenance against
hashlib), and one served-app browser test."""

from __future__ import annotations

import hashlib
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CKPTS = REPO / "assets" / "checkpoints"


@pytest.fixture(scope="module")
def view():
    from xaiscope.dashboard.lrp import LrpAdjointExplorer

    v = LrpAdjointExplorer()
    assert v.error == "", v.error
    v.__panel__().get_root()  # the plots exist: their sources can be checked
    return v


@pytest.fixture(scope="module")
def ds():
    from xaiscope.data.sst import demo_sst

    return demo_sst(with_ssh=False)


@pytest.fixture(scope="module")
def lim(ds):
    from xaiscope.core.lim import fit_lim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_lim(ds["sst_anomaly"], ds["land_mask"], n_modes=20)


def _model(lag):
    from xaiscope.core import sst_qoi  # noqa: F401
    from xaiscope.core.checkpoint import load_checkpoint

    return load_checkpoint(CKPTS / f"sst_qoi_lag{lag:02d}")


def _qoi_numpy(ds) -> np.ndarray:
    """QoI by hand: cos-lat weighted mean over sea cells with centres in 30–45°N, 210–235°E."""
    lat, lon = ds.lat.values, ds.lon.values
    sst = ds["sst_anomaly"].values
    i = (lat >= 30) & (lat <= 45)
    j = (lon >= 210) & (lon <= 235)
    sub = sst[:, i][:, :, j]
    w = np.broadcast_to(np.cos(np.deg2rad(lat[i]))[:, None], sub.shape[1:])
    w = np.where(np.isfinite(sub).all(0), w, 0.0)
    return np.nansum(sub * w, axis=(1, 2)) / w.sum()


def _inputs(ds, ck) -> np.ndarray:
    """Model inputs by hand: the sea cells of every month divided by the training std."""
    flat = ds["sst_anomaly"].values.reshape(ds.sizes["time"], -1)[:, ck.manifest["sea_cells"]]
    return flat / ck.manifest["normalisation"]["sst_anomaly"]["std"]


def _grid(values, ck, ds) -> np.ndarray:
    out = np.full(ds.sizes["lat"] * ds.sizes["lon"], np.nan)
    out[ck.manifest["sea_cells"]] = values
    return out.reshape(ds.sizes["lat"], ds.sizes["lon"])


def _da(arr, ds):
    return xr.DataArray(arr, dims=("lat", "lon"), coords={"lat": ds.lat.values, "lon": ds.lon.values})


def test_lags_and_months(view, ds):
    assert view.setup.lags == sorted(int(p.name[-2:]) for p in CKPTS.glob("sst_qoi_lag[0-9][0-9]"))
    times = pd.DatetimeIndex(ds.time.values)
    assert view.setup.months[0] == f"{times[max(view.setup.lags)]:%Y-%m}"
    assert view.setup.months[-1] == f"{times[-1]:%Y-%m}"
    q = pd.Series(_qoi_numpy(ds), index=times)
    assert view.month == f"{q[q.index >= times[max(view.setup.lags)]].idxmax():%Y-%m}"


@pytest.mark.parametrize("rule,kw", [("epsilon", {"rule": "epsilon"}), ("zplus", {"rule": "zplus"}),
                                     ("alpha1beta0_zb", {"rule": "alpha1beta0", "first_rule": "zbox"})])
@pytest.mark.parametrize("lag", [0, 6])
def test_month_map_equals_core_lrp(view, ds, rule, kw, lag):
    from xaiscope.core.relevance import lrp

    ck = _model(lag)
    x = _inputs(ds, ck)
    view.param.update(lag=lag, rule=rule, explain="month", month="2014-03")
    n = int(np.flatnonzero(pd.DatetimeIndex(ds.time.values) == pd.Timestamp("2014-03-01"))[0]) - lag
    if kw.get("first_rule") == "zbox":  # bounds: the range of the normalised inputs over the record
        kw = dict(kw, low=x.min(0), high=x.max(0))
    e = lrp(ck.model, x[n:n + 1], **kw)
    ref = _grid(e.relevance[0], ck, ds)
    got = view.relevance_map()
    np.testing.assert_allclose(got.values, ref, rtol=1e-5, atol=1e-7, equal_nan=True)
    img = view.plot_sources()["relevance"]["image"][0]
    np.testing.assert_allclose(img, ref / np.nanmax(np.abs(ref)), rtol=1e-5, atol=1e-7, equal_nan=True)
    checks = view.checks()
    np.testing.assert_allclose(checks["conservation_mean"], e.relevance.sum() / e.logit[0], rtol=1e-6)


def test_positive_composite_equals_core_over_correct_cases(view, ds):
    from xaiscope.core.relevance import lrp

    lag = 3
    ck = _model(lag)
    x = _inputs(ds, ck)
    n = ds.sizes["time"] - lag
    y = (_qoi_numpy(ds)[lag:] > 0).astype(int)
    with torch.no_grad():
        pred = ck.model(torch.as_tensor(x[:n], dtype=torch.float32)).argmax(1).numpy()
    for explain, cls in (("positive", 1), ("negative", 0)):
        rows = np.flatnonzero((pred == cls) & (y == cls))
        assert len(rows) > 50
        view.param.update(lag=lag, rule="epsilon", explain=explain)
        ref = _grid(lrp(ck.model, x[rows], target=cls).relevance.mean(0), ck, ds)
        np.testing.assert_allclose(view.relevance_map().values, ref, rtol=1e-5, atol=1e-8, equal_nan=True)
        assert view.checks()["n_cases"] == len(rows)


@pytest.mark.parametrize("lag", [0, 12])
def test_integrated_gradients_composite_matches_core_autograd_path(view, ds, lag):
    """The view's IG (factored path, float32) against core IG differentiated at each of the 64 step points in
    float64: equal to 1e-5 of the map's max |value| (float32 round-off)."""
    from xaiscope.core.relevance import integrated_gradients

    view.param.update(lag=lag, rule="integrated_gradients", explain="positive")
    rows, e = view.explanation()
    ck = _model(lag)
    x = _inputs(ds, ck)
    ref = integrated_gradients(ck.model, x[rows], target=1, n_steps=64, path="autograd")
    got = view.relevance_map().values
    refm = _grid(ref.relevance.mean(0), ck, ds)
    np.testing.assert_allclose(got, refm, rtol=0, atol=1e-5 * np.nanmax(np.abs(refm)), equal_nan=True)
    c = view.checks()  # the badge: 64 steps leave a Riemann-sum error (lag 12: < 0.05; lag 0: 0.075)
    np.testing.assert_allclose(c["completeness_delta_max_abs"],
                               np.max(np.abs(ref.checks["completeness_delta"])), rtol=1e-4)
    if lag == 12:
        assert c["completeness_delta_max_abs"] < 0.05


@pytest.mark.parametrize("lag", [0, 3, 12])
def test_adjoint_maps_equal_core_lim(view, ds, lim, lag):
    from xaiscope.data.sst import box_weights

    w = box_weights(ds.lat, ds.lon, (30.0, 45.0), (210.0, 235.0), lim.land_mask)
    ref = lim.adjoint_sensitivity(w, lag).values
    view.param.update(lag=lag, adjoint="sensitivity", source="lim", explain="month", month="2015-01")
    np.testing.assert_allclose(view.adjoint_map().values, ref, rtol=1e-8, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(view.plot_sources()["adjoint"]["image"][0], ref / np.nanmax(np.abs(ref)),
                               rtol=1e-8, atol=1e-12, equal_nan=True)
    # sensitivity × the input anomaly (t − lag), signed for the explained (predicted) class
    view.adjoint = "sensitivity_x_input"
    t_in = pd.Timestamp("2015-01-01") - pd.DateOffset(months=lag)
    anomaly = ds["sst_anomaly"].sel(time=t_in).values
    ck = _model(lag)
    with torch.no_grad():
        x_in = torch.as_tensor(_inputs(ds, ck)[pd.DatetimeIndex(ds.time.values) == t_in], dtype=torch.float32)
        sign = 1.0 if int(ck.model(x_in).argmax(1)[0]) == 1 else -1.0
    np.testing.assert_allclose(view.adjoint_map().values, sign * ref * anomaly, rtol=1e-6, atol=1e-10,
                               equal_nan=True)
    view.adjoint = "sensitivity"


def test_metric_curves_equal_core_agreement(view, ds, lim):
    from xaiscope.core import agreement as A
    from xaiscope.core.relevance import lrp
    from xaiscope.data.sst import box_weights

    view.param.update(rule="epsilon", explain="positive", adjoint="sensitivity", source="lim", k=10.0)
    curves = view.curves()
    assert list(curves.index) == view.setup.lags
    w = box_weights(ds.lat, ds.lon, (30.0, 45.0), (210.0, 235.0), lim.land_mask)
    masks = A.region_masks(ds["land_mask"])
    y_all = _qoi_numpy(ds) > 0
    for lag in (0, 6, 12):
        ck = _model(lag)
        x = _inputs(ds, ck)
        n = ds.sizes["time"] - lag
        with torch.no_grad():
            pred = ck.model(torch.as_tensor(x[:n], dtype=torch.float32)).argmax(1).numpy()
        rows = np.flatnonzero((pred == 1) & y_all[lag:])
        rel = _da(_grid(lrp(ck.model, x[rows], target=1).relevance.mean(0), ck, ds), ds)
        adj = lim.adjoint_sensitivity(w, lag)
        row = curves.loc[lag]
        np.testing.assert_allclose(row.pattern_correlation, A.pattern_correlation(rel, adj), rtol=1e-6)
        np.testing.assert_allclose(row.topk_jaccard, A.topk_jaccard(rel, adj, 10.0), rtol=1e-6)
        np.testing.assert_allclose(row.sign_agreement, A.sign_agreement(rel, adj), rtol=1e-6)
        shares = A.region_shares(rel, masks)
        for r, v in shares.items():
            np.testing.assert_allclose(row[f"relevance_{r}"], v, rtol=1e-6, atol=1e-12)
    src = view.plot_sources()["curves"]
    np.testing.assert_array_equal(src["lag"], curves.index.values)
    np.testing.assert_allclose(src["pattern_correlation"], curves.pattern_correlation.values)
    # the region-share bars of the selected lag
    view.lag = 6
    bars = view.plot_sources()["shares"]
    assert len(bars["x"]) == 2 * len(A.REGIONS)
    got = dict(zip([tuple(f) for f in bars["x"]], bars["share"]))
    from xaiscope.dashboard.lrp import REGION_LABELS

    np.testing.assert_allclose(got[(REGION_LABELS["southern_ocean"], "relevance")],
                               curves.loc[6, "relevance_southern_ocean"])


def test_agreement_map_and_unsupported_cells(view):
    from xaiscope.core.agreement import agreement_map

    view.param.update(lag=3, rule="zplus", explain="positive", adjoint="sensitivity", k=15.0, support=0.2)
    mp = view.maps()
    ref = agreement_map(mp["relevance"], mp["adjoint"], 15.0)
    np.testing.assert_array_equal(mp["agreement"].values, ref.values)
    adj = np.abs(mp["adjoint"].values)
    expect = (ref.values == 1) & (adj < 0.2 * np.nanmax(adj))
    np.testing.assert_array_equal(mp["unsupported"].values, expect)
    assert expect.sum() > 0
    pts = view.plot_sources()["unsupported"]
    assert len(pts["x"]) == expect.sum()
    ii, jj = np.nonzero(expect)
    assert set(zip(np.round(pts["x"], 6), np.round(pts["y"], 6))) == set(
        zip(np.round(mp["relevance"].lon.values[jj] - 180.0, 6), np.round(mp["relevance"].lat.values[ii], 6)))
    assert "cells (×)" in view.note_md()
    view.param.update(k=10.0, support=0.1)


def test_randomisation_check_equals_core(view, ds):
    from xaiscope.core.relevance import randomisation_check

    view.param.update(lag=3, rule="epsilon", explain="positive")
    rows, e = view.explanation()
    df = view.run_randomisation(n_samples=16)
    ck = _model(3)
    x = _inputs(ds, ck)[rows[:16]]
    ref = randomisation_check(ck.model, x, seed=0, target=np.ones(16, dtype=int))  # default: LRP-ε
    np.testing.assert_allclose(df.spearman.values, [r["spearman"] for r in ref], atol=1e-6)
    np.testing.assert_allclose(df.spearman_abs.values, [r["spearman_abs"] for r in ref], atol=1e-6)
    src = view.plot_sources()["randomisation"]
    np.testing.assert_array_equal(src["n_randomised"], [0, 1, 2, 3])
    view.lag = 4  # a new selection drops the old result
    assert len(view.plot_sources()["randomisation"]["spearman"]) == 0


def test_netcdf_export_carries_provenance(view, ds):
    view.param.update(lag=6, rule="alpha1beta0_zb", explain="month", month="2016-02")
    back = xr.open_dataset(view._netcdf(view.maps_dataset()))
    weights = CKPTS / "sst_qoi_lag06" / "epoch_020" / "weights.safetensors"
    assert back.attrs["checkpoint_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert back.attrs["rule"] == "alpha1beta0_zb" and int(back.attrs["lag"]) == 6
    assert back.attrs["month"] == "2016-02" and back.attrs["explain"] == "month"
    assert "zbox" in back.attrs["rule_settings"]
    np.testing.assert_allclose(back["relevance"].values, view.relevance_map().values, equal_nan=True)
    np.testing.assert_allclose(back["input_sst_anomaly"].values,
                               ds["sst_anomaly"].sel(time="2015-08-01").values, equal_nan=True)
    assert list(back["curve_lag"].values) == view.setup.lags


def test_loaded_netcdf_sensitivity(view, lim, ds, tmp_path):
    from xaiscope.data.errors import DataFileError
    from xaiscope.data.sst import box_weights

    w = box_weights(ds.lat, ds.lon, (30.0, 45.0), (210.0, 235.0), lim.land_mask)
    maps = xr.concat([lim.adjoint_sensitivity(w, k).fillna(0.0) for k in (0, 3)], dim="lag").assign_coords(
        lag=[0, 3])
    maps.attrs = {"units": "degC/degC"}
    maps.rename("dqoi_dsst").to_dataset().to_netcdf(tmp_path / "sens.nc")
    view.param.update(lag=3, rule="epsilon", explain="positive", adjoint="sensitivity")
    lim_map = view.adjoint_map().values
    view.load_sensitivity(tmp_path / "sens.nc")
    assert view.source == "file"
    np.testing.assert_allclose(view.adjoint_map().values, lim_map, rtol=1e-8, atol=1e-12, equal_nan=True)
    assert np.isnan(view.curves().loc[6, "pattern_correlation"])  # no map for lag 6 in the file
    view.lag = 6
    assert np.isnan(view.adjoint_map().values).all()
    maps.attrs = {"units": "W m-2"}
    maps.to_dataset(name="s").to_netcdf(tmp_path / "bad.nc")
    with pytest.raises(DataFileError, match="units"):
        view.load_sensitivity(tmp_path / "bad.nc")
    view.source = "lim"


def test_typed_sensitivity_path_is_confined_to_allowed_roots(tmp_path):
    from types import SimpleNamespace

    from xaiscope.core.errors import PathNotAllowedError
    from xaiscope.core.paths import AllowedRoots
    from xaiscope.dashboard.lrp import LrpAdjointExplorer

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    v = LrpAdjointExplorer(checkpoint=[CKPTS / "sst_qoi_lag03"], state=SimpleNamespace(
        allowed_roots=AllowedRoots([allowed])))
    (tmp_path / "outside.nc").write_bytes(b"")
    with pytest.raises(PathNotAllowedError, match="allow-root"):
        v.load_sensitivity(tmp_path / "outside.nc")
    with pytest.raises(PathNotAllowedError):
        v.load_sensitivity(allowed / ".." / "outside.nc")
    assert v.file_sensitivity is None and v.source == "lim"


def test_selection_errors_and_snapping():
    from xaiscope.dashboard.lrp import LrpAdjointExplorer

    v = LrpAdjointExplorer(checkpoint=[CKPTS / "sst_qoi_lag03", CKPTS / "sst_qoi_lag12"], lag=5)
    assert v.setup.lags == [3, 12] and v.lag == 3
    v.lag = 9
    assert v.lag == 12
    v.month = "1950-01"
    assert v.month != "1950-01" and "1950-01" in v.error
    v.month = "2016-02"
    assert v.error == ""
    bad = LrpAdjointExplorer(checkpoint=REPO / "assets" / "checkpoints" / "hydro_01031500")
    assert bad.setup is None and "sst_qoi_mlp" in bad.error
    bad.__panel__()  # renders the alert, does not raise


def _served_doc(scheduled: list):
    """A served session's document, as far as the view asks: it has a session context, and its timeout callbacks are
    collected in ``scheduled`` instead of run."""
    from bokeh.document import Document

    class Doc(Document):
        @property
        def session_context(self):
            return object()

        def add_timeout_callback(self, cb, ms):
            scheduled.append(cb)

    return Doc()


def test_first_visit_drawn_in_two_steps_in_a_served_session(view, monkeypatch):
    """Served, a composite whose curves are not computed yet: first the maps and the selected lag's metrics (other
    lags NaN, title says so), then in a timeout callback the complete curves — equal to the one-step computation."""
    import panel as pn

    from xaiscope.core.engine import get_engine

    view.param.update(lag=5, rule="zplus", explain="negative", adjoint="sensitivity", source="lim")
    full = view.curves().copy()
    rel = view.plot_sources()["relevance"]["image"][0]
    get_engine().cache.clear(("lrp.curves",))
    get_engine().cache.clear(("lrp.explanation",))  # a cold visit (no warm-up ran)
    scheduled = []
    monkeypatch.setattr(pn.state, "curdoc", _served_doc(scheduled))
    view.rule = "epsilon"
    view.rule = "zplus"  # the curves of (zplus, negative) are gone: two steps
    assert len(scheduled) >= 1 and not view.curves_ready()
    src = view.plot_sources()["curves"]
    lags = list(src["lag"])
    i = lags.index(5.0)
    for col in ("pattern_correlation", "topk_jaccard", "sign_agreement"):
        np.testing.assert_allclose(src[col][i], full.loc[5, col], rtol=1e-12)
        assert np.isnan(np.delete(np.asarray(src[col], float), i)).all()
    np.testing.assert_array_equal(view.plot_sources()["relevance"]["image"][0], rel)  # the maps are complete
    assert "computing the other lags" in view._figs["curves"].title.text
    view._refresh(complete=True)  # what the scheduled callback does
    assert view.curves_ready()
    np.testing.assert_allclose(np.asarray(view.plot_sources()["curves"]["pattern_correlation"], float),
                               full["pattern_correlation"].values, rtol=1e-12)
    assert "computing" not in view._figs["curves"].title.text


def test_warm_up_makes_a_first_visit_one_step(view, monkeypatch):
    """The served app computes every rule's composites ahead (warm_up); a first visit whose explanations are cached
    is drawn in one step, with the same curves as a cold one-step computation."""
    import panel as pn

    from xaiscope.core.engine import get_engine
    from xaiscope.dashboard import lrp

    view.param.update(lag=3, rule="epsilon", explain="negative", adjoint="sensitivity", source="lim")
    cache = get_engine().cache
    view.rule = "alpha1beta0_zb"
    cold = view.curves().copy()
    cache.clear(("lrp.curves",))
    cache.clear(("lrp.explanation",))
    view.rule = "epsilon"
    calls, orig = [], lrp.explain_rows
    monkeypatch.setattr(lrp, "explain_rows", lambda *a, **k: (calls.append(a[1]), orig(*a, **k))[1])
    n = lrp.warm_up(view.setup, rules=["alpha1beta0_zb"], explains=("negative",))
    assert n == len(view.setup.lags) == len(calls)
    assert lrp.warm_up(view.setup, rules=["alpha1beta0_zb"], explains=("negative",)) == 0  # cached: none again
    scheduled = []
    monkeypatch.setattr(pn.state, "curdoc", _served_doc(scheduled))
    view.rule = "alpha1beta0_zb"
    assert scheduled == [] and view.curves_ready()  # one step: the curves came with the maps
    np.testing.assert_allclose(np.asarray(view.plot_sources()["curves"]["pattern_correlation"], float),
                               cold["pattern_correlation"].values, rtol=1e-12)
    assert "computing" not in view._figs["curves"].title.text


def test_warm_up_runs_once_per_setup_and_can_be_switched_off(view, monkeypatch):
    from xaiscope.dashboard import lrp

    started = []
    monkeypatch.setattr(lrp.threading, "Thread", lambda target, **kw: type("T", (), {
        "start": lambda self: started.append(target)})())
    monkeypatch.setattr(lrp, "_WARMED", set())
    monkeypatch.setenv("XAISCOPE_LRP_WARMUP", "0")
    lrp._start_warm_up(view.setup)
    assert started == []
    monkeypatch.setenv("XAISCOPE_LRP_WARMUP", "1")
    lrp._start_warm_up(view.setup)
    lrp._start_warm_up(view.setup)
    assert len(started) == 1


def test_sessions_share_checkpoints_setup_and_explanations(monkeypatch):
    """Two views in one process read each checkpoint file once (the load test's hook: a log line per
    ``_load_checkpoint``), hold the same model objects and share the explanations and curves they compute."""
    import logging

    import xaiscope.core.checkpoint as ckmod
    from xaiscope.core.engine import reset_engine
    from xaiscope.dashboard.lrp import LrpAdjointExplorer, default_checkpoints

    reads, load = [], ckmod._load_checkpoint
    log = logging.getLogger("xaiscope.test")

    def counted(path, verify):
        log.info("checkpoint-load %s", path)
        reads.append(str(Path(path).resolve()))
        return load(path, verify)

    monkeypatch.setattr(ckmod, "_load_checkpoint", counted)
    reset_engine()  # a fresh engine: nothing opened yet in this process
    try:
        a = LrpAdjointExplorer(rule="integrated_gradients")
        b = LrpAdjointExplorer(rule="integrated_gradients")
        assert a.error == b.error == ""
        expected = sorted(str(p.resolve()) for p in default_checkpoints())
        assert len(expected) == 13 and sorted(reads) == expected  # every file once, for both views
        assert a.setup is b.setup
        for lag in a.setup.lags:
            assert a.setup.models[lag].ckpt.model is b.setup.models[lag].ckpt.model
        ea, eb = a.explanation(), b.explanation()
        assert ea[1] is eb[1]
        assert a.curves() is b.curves()
        c = LrpAdjointExplorer(checkpoint=[CKPTS / "sst_qoi_lag03", CKPTS / "sst_qoi_lag06"])
        assert c.error == "" and sorted(reads) == expected  # another set of the same files: no new read
        assert c.setup.models[3].ckpt.model is a.setup.models[3].ckpt.model
    finally:
        reset_engine()


def test_layout_updates_in_place(view):
    view.param.update(lag=3, rule="epsilon", explain="positive", adjoint="sensitivity", source="lim")
    layout = view.__panel__()
    before = np.array(view.plot_sources()["relevance"]["image"][0])
    view.param.update(lag=9, rule="gradient_x_input")
    assert view.__panel__() is layout
    after = view.plot_sources()["relevance"]["image"][0]
    assert not np.allclose(before, after, equal_nan=True)
    assert view._figs["relevance"].title.text.startswith("gradient × input, lag 9")
    assert view._lag_span.location == 9.0
    curves = view.plot_sources()["curves"]
    view.lag = 10  # same rule and target: the curves and the (empty) randomisation plot are not sent again
    sent = set(view.timings["sources_sent"])
    assert {"relevance", "adjoint", "agreement", "shares"} <= sent and not {"curves", "randomisation"} & sent
    assert view.plot_sources()["curves"] == curves and view._lag_span.location == 10.0
    view.lag = 10
    view.param.trigger("lag")  # nothing changed: nothing sent
    assert view.timings["sources_sent"] == []


def test_notebook_embedding_with_plain_extension(tmp_path):
    """In a Jupyter kernel with nothing but ``pn.extension()`` the explorer renders (Panel output, no error)."""
    import re

    import nbclient
    import nbformat

    code = ("import panel as pn\n"
            "from xaiscope.dashboard.lrp import LrpAdjointExplorer\n"
            "pn.extension()\n"
            f"v = LrpAdjointExplorer(checkpoint=[{str(CKPTS / 'sst_qoi_lag03')!r}, {str(CKPTS / 'sst_qoi_lag06')!r}], "
            "rule='zplus')\n"
            "v")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code),
                                         nbformat.v4.new_code_cell("v.lag = 6\nprint(v.error == '', v.setup.lags)"),
                                         nbformat.v4.new_code_cell("v")])   # the same explorer shown again
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outs if o.get("output_type") == "error"], [o for o in outs if o.get("output_type") == "error"]
    mimetypes = {m for o in outs for m in o.get("data", {})}
    assert any(re.match(r"application/vnd\.holoviews_exec\.v0\+json", m) for m in mimetypes), mimetypes
    assert "True [3, 6]" in "".join(o.get("text", "") for o in outs)
    assert any(re.match(r"application/vnd\.holoviews_exec\.v0\+json", m) for o in nb.cells[2].outputs
               for m in o.get("data", {})), nb.cells[2].outputs


# ------------------------------------------------------------------------------------------------ browser
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.mark.browser
def test_browser_switch_lag_and_rule(tmp_path):
    from browser_utils import CHROMIUM, TITLES_JS, browser_page, served_app

    if not CHROMIUM.exists():
        pytest.skip("needs /usr/bin/chromium")
    wait = "(t) => { const f = " + TITLES_JS + "; return f().some(s => s.includes(t)); }"
    with served_app(log_path=tmp_path / "server.log", timeout=180) as (url, _, log):
        with browser_page() as page:
            page.goto(url + "?view=lrp&lag=3&rule=epsilon&explain=positive", timeout=240_000)
            page.wait_for_function(wait, arg="LRP ε, lag 3: positive composite", timeout=240_000)
            page.get_by_role("button", name="LRP z⁺", exact=True).click()
            page.wait_for_function(wait, arg="LRP z⁺, lag 3: positive composite", timeout=60_000)
            page.locator(".noUi-handle").first.focus()  # the lag slider: one lag on
            page.keyboard.press("ArrowRight")
            page.wait_for_function(wait, arg="LRP z⁺, lag 4: positive composite", timeout=60_000)
            page.wait_for_function("() => window.location.search.includes('lag=4')", timeout=30_000)
            assert "rule=zplus" in page.url
            page.get_by_role("button", name="integrated gradients", exact=True).click()
            page.wait_for_function(wait, arg="integrated gradients, lag 4: positive composite", timeout=120_000)
            # a first visit: the maps at once, the curves of the other lags a moment later (title says so until then)
            page.wait_for_function("() => { const f = " + TITLES_JS + "; return f().some(s => s === "
                                   "'Agreement by lag: integrated gradients, positive composite'); }", timeout=60_000)
            page.goto(url + "?view=lrp&lag=12&rule=gradient_x_input&explain=month&month=2016-02", timeout=240_000)
            page.wait_for_function(wait, arg="gradient × input, lag 12: 2016-02", timeout=240_000)
            page.wait_for_timeout(1000)
            assert page.external_requests == []
            assert page.console_errors == [], page.console_errors


def test_one_view_drawn_again_into_a_new_document(view):
    """A notebook cell displaying the same explorer again makes a new Bokeh document: it must draw (Bokeh refuses
    one model in two documents — the sliders' tick formatters were shared) and follow the view's changes."""
    from bokeh.document import Document
    from bokeh.models import CustomJSTickFormatter, Slider

    docs, roots = [Document(), Document()], []
    for d in docs:                                       # as a notebook output does: render, then add to its document
        roots.append(view.__panel__().get_root(d))
        d.add_root(roots[-1])                            # raised "Models must be owned by only a single document"
    fmts = [[s.format for s in r.select({"type": Slider}) if isinstance(s.format, CustomJSTickFormatter)]
            for r in roots]
    assert fmts[0] and len(fmts[0]) == len(fmts[1]) and not {id(f) for f in fmts[0]} & {id(f) for f in fmts[1]}
    assert sorted(f.code for f in fmts[0]) == sorted(f.code for f in fmts[1])
    view.param.update(lag=5, rule="epsilon")
    assert view._figs["relevance"].document is docs[1]          # the plots follow the latest output
    assert view._figs["relevance"].title.text.startswith("LRP ε, lag 5")
