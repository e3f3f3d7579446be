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
    import holoviews as hv

    view.param.update(start="2015-11", lead=3, projection="platecarree")
    d = view.map_data("forecast")
    assert d["low"] == -d["high"] and d["high"] > 0
    assert d["title"] == "ConvLSTM forecast for 2016-02 (lead 3)"
    np.testing.assert_array_equal(d["source"]["image"][0], view.forecast_map().values)  # lat ascending: bottom row first
    ob = view.observed_map()
    np.testing.assert_allclose(ob.values, ds["sst_anomaly"].sel(time="2016-02-01").values, equal_nan=True)
    np.testing.assert_allclose(view.error_map().values, view.forecast_map().values - ob.values, equal_nan=True)
    ins = view.input_maps()
    assert [f"{t:%Y-%m}" for t in pd.DatetimeIndex(ins.time.values)] == [
        "2015-06", "2015-07", "2015-08", "2015-09", "2015-10", "2015-11"]
    # the plotted image: lon shifted into the Pacific-centred frame, values as the map
    src = view.map_data("input5")["source"]
    img = src["image"][0]
    dx = src["dw"][0] / img.shape[1]
    np.testing.assert_allclose(src["x"][0] + (np.arange(img.shape[1]) + 0.5) * dx, ds.lon.values - 180)
    dy = src["dh"][0] / img.shape[0]
    np.testing.assert_allclose(src["y"][0] + (np.arange(img.shape[0]) + 0.5) * dy, ds.lat.values)
    np.testing.assert_array_equal(img, ds["sst_anomaly"].sel(time="2015-11-01").values)
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
    # states are kept as float16 (relative precision 2**-11)
    expect = ref["c"].values[3, 2, 31][sea]
    np.testing.assert_allclose(view.state_map().values[sea], expect, rtol=1e-3, atol=1e-3 * np.abs(expect).max())
    assert np.isnan(view.state_map().values[~sea]).all()
    view.layer = 0  # 16 channels: the channel is clamped into range
    assert view.channel == m["config"]["hidden"][0] - 1
    view.param.update(state_kind="h", input_month=6)
    expect = ref["h"].values[5, 0, view.channel][sea]
    np.testing.assert_allclose(view.state_map().values[sea], expect, rtol=1e-3, atol=1e-3 * np.abs(expect).max())


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
    root = view.__panel__().get_root()
    assert root is not None
    before = view.__panel__()
    view.param.update(start="2017-01", lead=4)
    assert view.__panel__() is before  # updated in place


def test_stored_hindcast_is_used_and_checked(view, ds, tmp_path, monkeypatch):
    """The demo's hindcast is read from the file shipped beside the weights (its values are checked against
    predict in test_forecast_equals_predict); a file whose key does not match is ignored."""
    from xaiscope.dashboard import enso

    assert view.hc.source.endswith(".nc") and "assets" in view.hc.source and "hindcasts" in view.hc.source
    key = enso.data_key(view.hc.ckpt, ds)
    assert Path(view.hc.source).name == f"{view.hc.ckpt.sha256[:16]}_{key[:16]}.nc"
    # another data key (one changed value) has no stored file: recomputed, then stored in the user cache
    monkeypatch.setenv("XAISCOPE_CACHE_DIR", str(tmp_path))
    ds2 = ds.copy(deep=True)
    ds2["sst_anomaly"][-1, 0, 0] = 9.0
    assert enso.data_key(view.hc.ckpt, ds2) != key
    assert not enso.hindcast_ready(view.hc.ckpt, ds2, "2018-07")
    hc2 = enso.compute_hindcast(view.hc.ckpt, ds2, "2018-07")
    assert hc2.source == "computed"
    stored = list((tmp_path / "enso_hindcasts").glob("*.nc"))
    assert len(stored) == 1
    with xr.open_dataset(stored[0]) as f:
        tampered = f.load()
    np.testing.assert_allclose(tampered["nino34"].values, hc2.nino)
    tampered.attrs["checkpoint_sha256"] = "0" * 64
    tampered.to_netcdf(stored[0])
    assert enso._read_hindcast_file(view.hc.ckpt, enso.data_key(view.hc.ckpt, ds2), hc2.init) is None


def test_background_hindcast_shows_progress(ds, tmp_path, monkeypatch):
    import panel as pn

    from xaiscope.dashboard import enso

    monkeypatch.setenv("XAISCOPE_CACHE_DIR", str(tmp_path))
    ds3 = ds.copy(deep=True)
    ds3["sst_anomaly"][-1, 1, 1] = 7.0  # a data key with no stored hindcast
    v = enso.EnsoExplorer(sst=ds3, first_start="2018-04", background=True, precompute_states=False)
    root = v.__panel__()
    if v.hc is None:  # still computing: the page shows the progress bar and a message
        assert any(isinstance(o, pn.indicators.Progress) for o in root.select(pn.indicators.Progress))
    assert v.wait_ready(120)
    assert v._progress.value == 100 and "ready" in v._progress_md.object
    assert v.hc.source == "computed" and v.months[0] == "2018-04"
    assert any(o is v._layout for o in root.objects)  # the layout replaced the progress bar
    assert v.error == ""


def test_state_store_batch_and_background_fill(view, ds):
    """Batched background states equal one sequence at a time (convlstm_states), to float16 precision."""
    from xaiscope.core.convlstm import convlstm_states
    from xaiscope.dashboard.enso import StateStore

    from xaiscope.core.engine import Engine, EngineSettings

    hc = view.hc
    store = StateStore(hc, batch=5, engine=Engine(EngineSettings(device="cpu")))  # its own (empty) cache
    store.compute([3, 7, 11])
    assert store.done[[3, 7, 11]].all() and store.done.sum() == 3
    w = int(hc.ckpt.manifest["window"])
    sea = hc.sea
    for i in (3, 11):
        r = hc.rows[i]
        ref = convlstm_states(hc.ckpt.model, hc.x_all[r - w + 1:r + 1])
        for kind, layer, ch, month in (("h", 2, 17, 6), ("c", 0, 3, 2), ("c", 1, 15, 5)):
            expect = ref[kind].values[month - 1, layer, ch][sea]
            got = store.state_map(i, kind, month, layer, ch)
            np.testing.assert_allclose(got[sea], expect, rtol=1e-3, atol=1e-3 * np.abs(expect).max())
            assert np.isnan(got[~sea]).all()
    with pytest.raises(Exception, match="channels"):
        store.state_map(0, "h", 1, 0, 16)
    store.start_background(first=20).join(300)
    assert store.done.all() and store.seconds_background is not None


def test_projection_switch_reprojects_maps(view, ds):
    """Robinson and orthographic maps: each data cell's centre, projected with pyproj (independent of the
    cartopy look-up table), lands on a pixel showing that cell's value; land and the Niño 3.4 box follow."""
    import pyproj

    from xaiscope.dashboard import enso

    def pixel_centres(src):
        img = src["image"][0]
        xs = src["x"][0] + (np.arange(img.shape[1]) + 0.5) * src["dw"][0] / img.shape[1]
        ys = src["y"][0] + (np.arange(img.shape[0]) + 0.5) * src["dh"][0] / img.shape[0]  # row 0 at the bottom
        return img, xs, ys

    view.param.update(start="2015-11", lead=3, projection="platecarree")
    _, xs, _ = pixel_centres(view.map_data("input5")["source"])
    assert abs(xs).max() <= 180  # degrees in the frame x = lon − 180
    field = ds["sst_anomaly"].sel(time="2015-11-01").values
    lat, lon = ds.lat.values, ds.lon.values
    for key, proj4 in (("robinson", "+proj=robin +lon_0=180"), ("orthographic", "+proj=ortho +lon_0=-160 +lat_0=0")):
        assert all(f"{k}={v}" in enso.projection_crs(key).proj4_init for k, v in
                   (a.lstrip("+").split("=") for a in proj4.split()))  # the projection we mean
        view.projection = key
        img, xs, ys = pixel_centres(view.map_data("input5")["source"])
        assert abs(xs).max() > 1e6  # metres, not degrees
        # PROJ directly (pyproj), on the projection's own globe
        tr = pyproj.Transformer.from_crs("EPSG:4326", pyproj.CRS(enso.projection_crs(key).proj4_init),
                                         always_xy=True)
        LON, LAT = np.meshgrid(lon, lat)
        px, py = tr.transform(np.where(LON > 180, LON - 360, LON), LAT)
        ok = np.isfinite(px) & np.isfinite(py) & (LON != 0)  # the 0° cell is split by the frame's seam
        if key == "orthographic":
            ok &= np.abs(((LON - 200 + 180) % 360) - 180) < 70  # the visible hemisphere, off the limb
        jx = np.abs(px[ok][:, None] - xs[None]).argmin(1)
        iy = np.abs(py[ok][:, None] - ys[None]).argmin(1)
        shown = img[iy, jx]
        sea = (ds["land_mask"].values == 0)[ok]
        np.testing.assert_allclose(shown[sea], field[ok][sea], rtol=1e-6)
        assert np.isnan(shown[~sea]).all()  # land: NaN in the data image …
        land = view._land_image(key)["image"][0]
        assert (land[iy, jx][~sea] == 1).all()  # … drawn grey below
        assert np.isnan(land[iy, jx][sea]).all()
        # the Niño 3.4 box: its corners are the projected corners of 190–240°E, 5°S–5°N
        box = enso.projected_lines(key)["box"]
        cx, cy = tr.transform([-170, -120, -120, -170], [-5, -5, 5, 5])
        for x, y in zip(cx, cy):
            assert np.hypot(box[:, 0] - x, box[:, 1] - y).min() < 1e3
        # coastline vertices, back to lon/lat with pyproj, lie on the Natural Earth coastline
        coast = enso.projected_lines(key)["coast"]
        coast = coast[np.isfinite(coast).all(1)][::25]  # lines are separated by NaN rows
        assert len(coast) > 50
        lo, la = tr.transform(coast[:, 0], coast[:, 1], direction="INVERSE")
        fin = np.isfinite(lo) & np.isfinite(la)
        assert fin.mean() > 0.95
        lo, la = lo[fin], la[fin]
        from shapely.geometry import MultiLineString, Point

        ne = MultiLineString([g for line in enso.coastline_geometries() for g in getattr(line, "geoms", [line])])
        assert max(ne.distance(Point(a, b)) for a, b in zip(lo, la)) < 0.1
    view.projection = "platecarree"


def test_projection_and_state_settings_round_trip_in_url(view):
    from panel.io.location import Location
    from urllib.parse import parse_qs

    from xaiscope.dashboard.enso import URL_KEYS

    view.param.update(start="2015-11", layer=2, channel=0, state_kind="h", input_month=6, projection="platecarree")
    loc = Location(search="?start=2016-01&layer=1&channel=3&state=c&month=4&projection=mollweide")
    loc.sync(view, URL_KEYS)
    try:
        assert (view.start, view.layer, view.channel, view.state_kind, view.input_month, view.projection) == (
            "2016-01", 1, 3, "c", 4, "mollweide")
        view.param.update(layer=0, channel=7, state_kind="h", input_month=2, projection="equalearth")
        q = parse_qs(loc.search.lstrip("?"))
        assert (q["layer"], q["channel"], q["state"], q["month"], q["projection"]) == (
            ["0"], ["7"], ["h"], ["2"], ["equalearth"])
    finally:
        loc.unsync(view)
        view.projection = "platecarree"


def test_layout_projection_switch_swaps_maps(view):
    import panel as pn
    from bokeh.plotting import figure

    view.projection = "platecarree"
    view.__panel__()
    pc_grid = view._maps_box.objects[0]
    view.projection = "mollweide"
    grid = view._maps_box.objects[0]
    assert grid is not pc_grid
    pane = grid.objects[0].objects[0]
    assert isinstance(pane, pn.pane.Bokeh) and isinstance(pane.object, figure)
    srcs = view.plot_sources("mollweide")
    assert srcs["input0"]["dw"][0] > 1e7  # metres
    root = view.__panel__().get_root()
    assert root is not None
    view.param.update(start="2016-05")  # shown in mollweide now; the Plate Carrée figures catch up when shown again
    view.projection = "platecarree"
    assert view._maps_box.objects[0] is pc_grid  # built once per projection
    d = view.map_data("forecast")
    np.testing.assert_array_equal(view.plot_sources()["forecast"]["image"][0], d["source"]["image"][0])


def test_maps_update_in_place(view):
    """A start-month or lead change puts new image data, colour limits and titles into the same Bokeh figures;
    the state map follows only while its tab is open (and catches up when it is opened)."""
    view.param.update(projection="platecarree", start="2015-11", lead=3, state_kind="h", layer=2, channel=0,
                      input_month=6)
    view.__panel__()
    figs = view._figs["platecarree"]
    before = {k: f["figure"] for k, f in figs.items()}
    view._tabs.active = 0
    state_title = figs["state"]["figure"].title.text
    view.start = "2016-01"
    assert {k: f["figure"] for k, f in figs.items()} == before
    for slot in view.map_slots():
        if slot == "state":
            continue
        d = view.map_data(slot)
        f = figs[slot]
        np.testing.assert_array_equal(f["source"].data["image"][0], d["source"]["image"][0])
        assert (f["mapper"].low, f["mapper"].high, f["figure"].title.text) == (d["low"], d["high"], d["title"])
    assert figs["forecast"]["figure"].title.text == "ConvLSTM forecast for 2016-04 (lead 3)"
    assert figs["input0"]["figure"].title.text == "input 1: 2015-08"
    assert figs["state"]["figure"].title.text == state_title  # tab closed: not recomputed
    view.lead = 1
    assert figs["forecast"]["figure"].title.text == "ConvLSTM forecast for 2016-02 (lead 1)"
    np.testing.assert_array_equal(figs["error"]["source"].data["image"][0], view.error_map().values)
    # the Niño 3.4 series: lines of the selected lead, the marker at the start month
    ser = view._series
    assert ser["marker"].location == pd.Timestamp("2016-01-01").value / 1e6
    df = view.series()
    np.testing.assert_array_equal(ser["source"].data["convlstm"], df["convlstm"].values)
    np.testing.assert_array_equal(np.asarray(ser["source"].data["time"], dtype="datetime64[ns]"), df.index.values)
    assert "lead 1" in ser["figure"].title.text
    from bokeh.events import Tap

    ser["figure"]._trigger_event(Tap(ser["figure"], x=pd.Timestamp("2014-07-10").value / 1e6, y=0.0))  # a click
    assert view.start == "2014-07" and ser["marker"].location == pd.Timestamp("2014-07-01").value / 1e6
    view.start = "2016-01"
    view._tabs.active = 1  # the states tab: the state map catches up
    assert figs["state"]["figure"].title.text == view.map_data("state")["title"]
    np.testing.assert_allclose(figs["state"]["source"].data["image"][0], view.state_map().values, equal_nan=True)
    view.channel = 5
    assert "channel 5" in figs["state"]["figure"].title.text
    view._tabs.active = 0


def test_two_views_read_the_checkpoint_once_and_share_the_model(ds, monkeypatch):
    """Two ENSO views (two sessions) in one process: the checkpoint file is read once, one model object, one
    hindcast and one store of internal states, all through the engine; the values are the model's own."""
    import xaiscope.core.checkpoint as ck
    import xaiscope.core.engine as eng_mod
    from xaiscope.core.engine import Engine, EngineSettings
    from xaiscope.core.train_enso import predict
    from xaiscope.dashboard.enso import EnsoExplorer

    engine = Engine(EngineSettings(device="cpu"))
    monkeypatch.setattr(eng_mod, "_ENGINE", engine)  # a fresh engine for this test only
    reads = []
    load = ck._load_checkpoint
    monkeypatch.setattr(ck, "_load_checkpoint", lambda path, verify: reads.append(path) or load(path, verify))
    views = [EnsoExplorer(first_start=FIRST, precompute_states=False) for _ in range(2)]
    assert all(v.error == "" for v in views)
    assert len(reads) == 1
    a, b = views
    assert a.hc is b.hc and a.hc.ckpt.model is b.hc.ckpt.model
    assert engine.about()["checkpoints"] == 1
    assert a.hc.ds is b.hc.ds  # the shipped data read once too
    # internal states computed for one session are the other's (one forward pass, through the engine)
    a.param.update(start="2016-03", layer=1, channel=4, state_kind="c", input_month=3)
    b.param.update(start="2016-03", layer=1, channel=4, state_kind="c", input_month=3)
    misses = engine.cache.misses
    sa = a.state_map().values
    assert engine.cache.misses == misses + 1
    np.testing.assert_array_equal(b.state_map().values, sa)
    assert engine.cache.misses == misses + 1
    assert len(engine.about()["models"]) == 1  # the forward pass ran on the engine's one copy
    # the engine's hindcast equals predict on the model (batched differently: float32 round-off)
    i = a.hc.rows[:5]
    w = int(a.hc.ckpt.manifest["window"])
    ref = predict(a.hc.ckpt.model, np.stack([a.hc.x_all[r - w + 1:r + 1] for r in i]))
    from xaiscope.dashboard import enso

    out = enso._forecast(a.hc.ckpt, a.hc.x_all, i, w, engine=engine)
    for k in ("map", "nino34", "phase_logits"):
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-6)


def test_app_hides_hydro_pickers_on_the_enso_view():
    import panel as pn

    from xaiscope.dashboard.app import create_app

    tmpl = create_app()
    side = list(tmpl.sidebar)
    view_w = [w for w in side if isinstance(w, pn.widgets.RadioBoxGroup)][0]
    ckpt_w = [w for w in side if isinstance(w, pn.widgets.Select) and w.name == "Checkpoint"][0]
    data_w = [w for w in side if isinstance(w, pn.widgets.Select) and w.name == "Basin data"][0]
    view_w.value = "cells"
    assert ckpt_w.visible and data_w.visible  # the cell-state view uses them
    for other in ("enso", "lrp", "tracin"):  # views that pick their own checkpoints
        view_w.value = other
        assert not ckpt_w.visible and not data_w.visible, other
        view_w.value = "cells"
        assert ckpt_w.visible and data_w.visible


# ------------------------------------------------------------------------------------------------ browser
sys.path.insert(0, str(Path(__file__).resolve().parent))


# true once a plot's x range lies in projected metres (Plate Carrée and the series axes never start below -1e6)
PROJECTED_RANGE_JS = """() => {
  for (const doc of (window.Bokeh && Bokeh.documents) || []) {
    for (const m of doc._all_models ? doc._all_models.values() : doc.all_models) {
      if (typeof m.start === "number" && typeof m.end === "number" && m.start < -1e6 && m.end > 1e6) return true;
    }
  }
  return false;
}"""


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
            # the checkpoint / basin pickers of the hydrology views are hidden here
            assert not page.get_by_text("Basin data", exact=True).is_visible()
            # another projection: the maps are redrawn in projected metres, and the URL keeps it
            page.locator("select").filter(has_text="Robinson").first.select_option(label="Robinson")
            page.wait_for_function(PROJECTED_RANGE_JS, timeout=120_000)
            page.wait_for_function("() => window.location.search.includes('projection=robinson')", timeout=30_000)
            page.goto(url + "?view=enso&start=2016-06&lead=6&layer=1&channel=3&state=c&month=4"
                      "&projection=orthographic", timeout=240_000)
            page.wait_for_function(
                "(t) => { const f = " + TITLES_JS + "; return f().some(s => s.includes(t)); }",
                arg="ConvLSTM forecast for 2016-12 (lead 6)", timeout=240_000)
            page.wait_for_function(PROJECTED_RANGE_JS, timeout=60_000)
            page.get_by_text("Internal states", exact=True).first.click()
            page.wait_for_function(
                "(t) => { const f = " + TITLES_JS + "; return f().some(s => s.includes(t)); }",
                arg="ConvLSTM c layer 1 channel 3, input month 4 (2016-04)", timeout=120_000)
            page.wait_for_timeout(1000)
            assert page.external_requests == []
            assert page.console_errors == [], page.console_errors


def test_coastlines_line_up_with_the_land_of_the_maps(view):
    """Coastline vertices, in the same plot frame as the map images, fall next to land cells of the map."""
    from xaiscope.dashboard import enso

    src = view.map_image(view.input_maps().isel(time=0).values, "platecarree")
    n_y, n_x = src["image"][0].shape
    xs = src["x"][0] + (np.arange(n_x) + 0.5) * src["dw"][0] / n_x
    ys = src["y"][0] + (np.arange(n_y) + 0.5) * src["dh"][0] / n_y
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


def test_two_sessions_render_without_sharing_bokeh_models(ds):
    """Each browser session has its own Bokeh document; a model shared between two (a module-level tick
    formatter did this) makes the second session fail with 'Models must be owned by only a single document'."""
    from bokeh.document import Document

    from xaiscope.dashboard.enso import EnsoExplorer

    roots = []
    for _ in range(2):
        v = EnsoExplorer(sst=ds)
        doc = Document()
        root = v.__panel__().get_root(doc)
        doc.add_root(root)
        roots.append(root)
    objects = [{id(m) for m in r.references()} for r in roots]
    assert not objects[0] & objects[1]


def test_background_result_for_a_closed_page_is_dropped(view):
    """Work finished after its page was closed (Bokeh tore the document down) is not scheduled on that document."""
    import weakref

    from bokeh.document import Document

    class Context:  # a served session's context (only its presence matters here)
        pass

    ctx = Context()
    doc = Document()
    doc._session_context = weakref.ref(ctx)
    old, view._doc = view._doc, doc
    try:
        ran, queued = [], []
        view._on_doc(lambda: ran.append(1))  # open: scheduled on the document's loop, not run here
        assert ran == [] and len(doc.session_callbacks) == 1
        doc.add_next_tick_callback = queued.append
        view._on_doc(lambda: ran.append(2))
        queued.pop()()  # run on the loop while the page is open: it runs
        assert ran == [2]
        view._on_doc(lambda: ran.append(3))
        doc.callbacks.destroy()  # what Bokeh does when the session ends
        queued.pop()()  # queued before the close, run after it: does nothing
        view._on_doc(lambda: ran.append(4))  # after the close: no error, nothing scheduled
        assert ran == [2] and queued == []
    finally:
        view._doc = old


def test_one_view_drawn_again_into_a_new_document(view):
    """A notebook cell displaying the same explorer again makes a new Bokeh document: it draws, and the maps follow
    the view's changes there."""
    from bokeh.document import Document

    docs = [Document(), Document()]
    for d in docs:                                       # as a notebook output does: render, then add to its document
        d.add_root(view.__panel__().get_root(d))
    view.param.update(projection="platecarree", lead=2)
    view.start = "2016-03"
    f = view._figs["platecarree"]["forecast"]
    assert f["figure"].document is docs[1]
    np.testing.assert_array_equal(f["source"].data["image"][0], view.map_data("forecast")["source"]["image"][0])
