"""The ENSO view: state logic without a browser (against train_enso.predict, convlstm_states and independent numpy /
pandas computations of the Niño 3.4 index, persistence, LIM and skill), and one served-app browser test."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
FIRST = "2013-06"  # a short hindcast keeps the module fast


@pytest.fixture(scope="module")
def view():
    from xaiscope.dashboard.enso import EnsoExplorer

    v = EnsoExplorer(first_start=FIRST)
    assert v.error == "", v.error
    return v


@pytest.fixture(scope="module")
def ds():
    from xaiscope.data.sst import demo_sst

    return demo_sst()


def _nino34_numpy(field: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Niño 3.4 by hand: cos-lat weighted mean over cells with centres in 5°S–5°N, 190–240°E (NaN skipped)."""
    i = (lat >= -5) & (lat <= 5)
    j = (lon >= 190) & (lon <= 240)
    sub = field[..., i, :][..., j]
    w = np.broadcast_to(np.cos(np.deg2rad(lat[i]))[:, None], sub.shape[-2:])
    w = np.where(np.isfinite(sub), w, 0.0)
    return np.nansum(sub * w, axis=(-2, -1)) / w.sum(axis=(-2, -1))


def test_start_months_and_default(view):
    assert view.months[0] == FIRST
    assert view.start in view.months
    assert view.months == sorted(view.months)


@pytest.mark.parametrize("start", ["2014-02", "2015-11", "2017-08"])
def test_forecast_equals_predict(view, ds, start):
    from xaiscope.core.train_enso import make_samples, predict

    m = view.hc.ckpt.manifest
    view.start = start
    t = pd.Timestamp(start)
    first = f"{t - pd.DateOffset(months=m['window'] - 1):%Y-%m}"
    last = f"{t + pd.DateOffset(months=m['n_leads']):%Y-%m}"
    s = make_samples(ds, m["inputs"], m["window"], m["n_leads"], m["normalisation"], (first, last))
    assert list(s.init) == [t]
    ref = predict(view.hc.ckpt.model, s.x)
    sea = ds["land_mask"].values == 0
    for lead in (1, 3, 6):
        view.lead = lead
        fm = view.forecast_map()
        np.testing.assert_allclose(fm.values[sea], ref["map"][0, lead - 1][sea], rtol=1e-4, atol=1e-5)
        assert np.isnan(fm.values[~sea]).all()
        np.testing.assert_allclose(view.forecast_nino().loc[lead, "convlstm"], ref["nino34"][0, lead - 1],
                                   rtol=1e-4, atol=1e-5)
        row = view.series().loc[t + pd.DateOffset(months=lead)]
        np.testing.assert_allclose(row["convlstm"], ref["nino34"][0, lead - 1], rtol=1e-4, atol=1e-5)


def test_observed_and_persistence_series_match_numpy(view, ds):
    obs = pd.Series(_nino34_numpy(ds["sst_anomaly"].values, ds.lat.values, ds.lon.values),
                    index=pd.DatetimeIndex(ds.time.values))
    for lead in (1, 4):
        view.lead = lead
        df = view.series()
        np.testing.assert_allclose(df["observed"].values, obs.reindex(df.index).values, rtol=1e-5, atol=1e-6)
        issued = df.index - pd.DateOffset(months=lead)  # persistence: the value when the forecast was issued
        expected = pd.Series(obs.reindex(issued).values, index=df.index)
        ok = df["persistence"].notna()
        assert ok.sum() > 50
        np.testing.assert_allclose(df["persistence"][ok].values, expected[ok].values, rtol=1e-5, atol=1e-6)


def test_lim_series_matches_map_forecast(view, ds):
    from xaiscope.core.lim import fit_lim

    m = view.hc.ckpt.manifest
    lim = fit_lim(ds["sst_anomaly"], ds["land_mask"], n_modes=20, period=tuple(m["train_period"]))
    view.lead = 2
    inits = pd.DatetimeIndex(["2014-01-01", "2016-07-01"])
    maps = lim.forecast(ds["sst_anomaly"].sel(time=inits), [2])  # (time, lead, lat, lon)
    ref = _nino34_numpy(np.asarray(maps.values)[:, 0], ds.lat.values, ds.lon.values)
    got = view.series()["lim"].reindex(inits + pd.DateOffset(months=2)).values
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_skill_table_matches_numpy(view, ds):
    obs = pd.Series(_nino34_numpy(ds["sst_anomaly"].values, ds.lat.values, ds.lon.values),
                    index=pd.DatetimeIndex(ds.time.values))
    sk = view.skill_frame().set_index(["model", "lead"])
    test = view.hc.ckpt.manifest["test_period"]
    for lead in (1, 5):
        f = pd.Series(view.hc.nino[:, lead - 1], index=view.hc.init + pd.DateOffset(months=lead))
        f = f[(f.index >= test[0]) & (f.index <= pd.Timestamp(test[1]))]
        o = obs.reindex(f.index)
        ok = o.notna()
        r = np.corrcoef(f[ok], o[ok])[0, 1]
        rmse = np.sqrt(np.mean((f[ok] - o[ok]) ** 2))
        np.testing.assert_allclose(sk.loc[("convlstm", lead), "r"], r, rtol=1e-6)
        np.testing.assert_allclose(sk.loc[("convlstm", lead), "rmse"], rmse, rtol=1e-6)
    assert set(sk.index.get_level_values("model")) == {"convlstm", "persistence", "lim"}


def test_map_elements(view, ds):
    import geoviews as gv
    import holoviews as hv

    view.start, view.lead = "2015-11", 3
    el = view.forecast_element()
    assert isinstance(el, gv.Image)
    lo, hi = el.opts.get().kwargs["clim"]
    assert lo == -hi and hi > 0
    ob = view.observed_map()
    np.testing.assert_allclose(ob.values, ds["sst_anomaly"].sel(time="2016-02-01").values, equal_nan=True)
    np.testing.assert_allclose(view.error_map().values, view.forecast_map().values - ob.values, equal_nan=True)
    ins = view.input_maps()
    assert [f"{t:%Y-%m}" for t in pd.DatetimeIndex(ins.time.values)] == [
        "2015-06", "2015-07", "2015-08", "2015-09", "2015-10", "2015-11"]
    # the plotted image: lon shifted into the Pacific-centred frame, values as the map
    img = view.input_element(5)
    np.testing.assert_allclose(img.dimension_values(0, expanded=False), ds.lon.values - 180)
    series = view.series_element()
    assert isinstance(series, hv.Overlay) and len(series) == 4
    assert all(isinstance(c, hv.Curve) for c in series)
    assert pd.Timestamp(view.marker_element().data) == pd.Timestamp("2015-11-01")


def test_coastlines_are_local_and_box_drawn():
    from xaiscope.dashboard import enso

    geoms = enso.coastline_geometries("110m")
    assert len(geoms) > 100
    lons = np.concatenate([np.asarray(g.coords)[:, 0] for g in geoms if g.geom_type == "LineString"])
    assert lons.min() >= -180.001 and lons.max() <= 180.001
    import json

    raw = json.loads((REPO / "assets/natural_earth/110m/physical/ne_110m_coastline.json").read_text())
    assert len(geoms) == len(raw["features"])
    box = enso._nino_box().data
    assert list(box.iloc[0]) == [10, -5, 60, 5]  # 190–240°E in the lon-180 frame


def test_state_maps_match_convlstm_states(view, ds):
    from xaiscope.core.convlstm import convlstm_states

    m = view.hc.ckpt.manifest
    view.start = "2016-03"
    i = int(np.where(pd.DatetimeIndex(ds.time.values) == pd.Timestamp("2016-03-01"))[0][0])
    x = np.stack([ds[v].values[i - 5:i + 1] / m["normalisation"][v]["std"] for v in m["inputs"]], 1)
    ref = convlstm_states(view.hc.ckpt.model, x.astype(np.float32))
    sea = ds["land_mask"].values == 0
    view.param.update(layer=2, channel=31, state_kind="c", input_month=4)
    np.testing.assert_allclose(view.state_map().values[sea], ref["c"].values[3, 2, 31][sea], rtol=1e-4, atol=1e-5)
    view.layer = 0  # 16 channels: the channel is clamped into range
    assert view.channel == m["config"]["hidden"][0] - 1
    view.param.update(state_kind="h", input_month=6)
    np.testing.assert_allclose(view.state_map().values[sea], ref["h"].values[5, 0, view.channel][sea],
                               rtol=1e-4, atol=1e-5)


def test_tap_and_bad_start(view):
    view.set_start(np.datetime64("2014-07-10"))
    assert view.start == "2014-07"
    view.set_start(pd.Timestamp("2016-01-01").value / 1e6)  # Bokeh sends ms since epoch
    assert view.start == "2016-01"
    view.start = "1950-01"
    assert view.start == "2016-01"
    assert "1950-01" in view.error and "scrubber" in view.error
    view.start = "2016-02"
    assert view.error == ""


def test_downloads_carry_provenance(view, tmp_path):
    view.param.update(start="2015-11", lead=2)
    for ds_ in (view.maps_dataset(), view.series_dataset()):
        b = view._netcdf(ds_)
        back = xr.open_dataset(b)
        assert back.attrs["checkpoint_sha256"] == view.hc.ckpt.sha256
        assert back.attrs["start_month"] == "2015-11" and int(back.attrs["lead"]) == 2
    maps = xr.open_dataset(view._netcdf(view.maps_dataset()))
    np.testing.assert_allclose(maps["forecast"].values, view.forecast_map().values, equal_nan=True)
    assert maps.attrs["verifying_month"] == "2016-01"


def test_wrong_checkpoint_kind_shows_error():
    from xaiscope.dashboard.enso import EnsoExplorer

    v = EnsoExplorer(checkpoint=REPO / "assets" / "checkpoints" / "hydro_01031500")
    assert v.hc is None
    assert "enso_convlstm" in v.error and "hydro" in v.error
    v.__panel__()  # renders the alert, does not raise


def test_layout_renders(view):
    import panel as pn

    root = view.__panel__().get_root()
    assert root is not None
    before = view.__panel__()
    view.param.update(start="2017-01", lead=4)
    assert view.__panel__() is before  # updated in place


# ------------------------------------------------------------------------------------------------ browser
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.mark.browser
def test_browser_scrub_and_switch_leads(tmp_path):
    from browser_utils import CHROMIUM, TITLES_JS, browser_page, served_app

    if not CHROMIUM.exists():
        pytest.skip("needs /usr/bin/chromium")
    with served_app(log_path=tmp_path / "server.log", timeout=180) as (url, _, log):
        with browser_page() as page:
            page.goto(url + "?view=enso&start=2015-11&lead=3", timeout=240_000)
            page.wait_for_function(
                "(t) => { const f = " + TITLES_JS + "; return f().some(s => s.includes(t)); }",
                arg="ConvLSTM forecast for 2016-02 (lead 3)", timeout=240_000)
            page.get_by_role("button", name="1", exact=True).first.click()
            page.wait_for_function(
                "(t) => { const f = " + TITLES_JS + "; return f().some(s => s.includes(t)); }",
                arg="ConvLSTM forecast for 2015-12 (lead 1)", timeout=60_000)
            page.locator(".noUi-handle").first.focus()  # the start-month slider: one month on
            page.keyboard.press("ArrowRight")
            page.wait_for_function(
                "(t) => { const f = " + TITLES_JS + "; return f().some(s => s.includes(t)); }",
                arg="ConvLSTM forecast for 2016-01 (lead 1)", timeout=60_000)
            page.goto(url + "?view=enso&start=2016-06&lead=6", timeout=240_000)
            page.wait_for_function(
                "(t) => { const f = " + TITLES_JS + "; return f().some(s => s.includes(t)); }",
                arg="ConvLSTM forecast for 2016-12 (lead 6)", timeout=240_000)
            page.wait_for_timeout(1000)
            assert page.external_requests == []
            assert page.console_errors == [], page.console_errors


def test_coastlines_line_up_with_the_land_of_the_maps(view):
    """Coastline vertices, in the same plot frame as the map images, fall next to land cells of the map."""
    from xaiscope.dashboard import enso

    img = view._image(view.input_maps().isel(time=0).rename("sst_anomaly"), "t")
    xs, ys = img.dimension_values(0, expanded=False), img.dimension_values(1, expanded=False)
    land = view.hc.ds["land_mask"].values.astype(bool)  # (lat, lon) on the image's grid
    assert land.shape == (len(ys), len(xs))
    pts = np.concatenate(enso.to_plot_frame(enso.coastline_geometries("110m")))
    pts = pts[(pts[:, 1] > ys.min()) & (pts[:, 1] < ys.max())]
    # nearest grid cell, with a one-cell margin either way (5° cells, coastlines lie on cell edges)
    ix = np.abs(((pts[:, :1] - xs[None, :]) + 180) % 360 - 180).argmin(1)
    iy = np.abs(pts[:, 1:] - ys[None, :]).argmin(1)
    near = np.zeros(len(pts), bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near |= land[np.clip(iy + dy, 0, len(ys) - 1), (ix + dx) % len(xs)]
    assert near.mean() > 0.8, near.mean()  # 0.87 when right; 0.51 with the frame shift forgotten
    # and the frame is shifted by 180°: the Greenwich meridian sits at the frame's edges
    cape = enso.to_plot_frame([__import__("shapely.geometry", fromlist=["LineString"]).LineString(
        [(18.5, -34.4), (20.0, -34.8)])])[0]
    assert cape[0, 0] == pytest.approx(18.5 - 180)
