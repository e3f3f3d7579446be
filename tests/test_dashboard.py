"""State logic of the app and of the cell-state view, without a browser.

The numbers the plots get are checked against independent computations: the core's per-step reference loop
(``lstm_internals_loop``), numpy correlations, sklearn's R² (= NSE) and torch's own weight layout.
"""

from __future__ import annotations

import datetime as dt
import io
import json

import holoviews as hv
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

pn = pytest.importorskip("panel")

from xaiscope.core.checkpoint import save_checkpoint  # noqa: E402
from xaiscope.core.models import HydroLSTM  # noqa: E402
from xaiscope.data.synthetic import synthetic_basin  # noqa: E402

INPUTS = ["prcp", "srad", "tmax", "tmin", "vp"]


def make_checkpoint(directory, ds, hidden=6, layers=2, seed=0, window=365):
    torch.manual_seed(seed)
    model = HydroLSTM(n_inputs=len(INPUTS), hidden_size=hidden, num_layers=layers)
    stats = {v: {"mean": float(ds[v].mean()), "std": float(ds[v].std())} for v in [*INPUTS, "qobs"]}
    manifest = {"kind": "hydro_lstm", "config": {"n_inputs": len(INPUTS), "hidden_size": hidden,
                                                 "num_layers": layers},
                "inputs": INPUTS, "target": "qobs", "window": window, "normalisation": stats,
                "data": {"basin_id": ds.attrs.get("basin_id", "")},
                "train_period": ["2000-01-01", "2001-06-30"], "test_period": ["2001-07-01", "2002-12-31"],
                "epoch": 1}
    return save_checkpoint(directory, model, manifest)


@pytest.fixture(scope="module")
def basin():
    return synthetic_basin(seed=3, start="1999-01-01", end="2002-12-31")


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory, basin):
    return make_checkpoint(tmp_path_factory.mktemp("ck") / "hydro_test", basin)


@pytest.fixture(scope="module")
def explorer(ckpt_dir, basin):
    from xaiscope.dashboard.cellstate import CellStateExplorer

    ex = CellStateExplorer(checkpoint=str(ckpt_dir), data=basin, background=False)
    assert ex.error == "", ex.error
    assert ex.ready
    return ex


def reference_states(ckpt, ds, start_idx, end_idx):
    """Internals by the core's slow per-step loop on the checkpoint-normalised inputs."""
    from xaiscope.core import hydro
    from xaiscope.core.states import lstm_internals_loop

    x = hydro.normalised_inputs(ckpt, ds.isel(time=slice(start_idx, end_idx)))
    with torch.no_grad():
        return lstm_internals_loop(ckpt.model.lstm, torch.from_numpy(x)[None])


def test_window_mode_plots_get_the_window_ending_on_the_day(explorer, basin):
    ex = explorer
    ex.param.update(mode="window", layer=1, gate="c", cells=[2, 4])
    ex.date = dt.date(2001, 3, 15)
    data = ex.plot_data()
    times = pd.DatetimeIndex(data["image"]["time"].values)
    assert times[-1] == pd.Timestamp("2001-03-15") and len(times) == 365
    assert data["image"].dims == ("cell", "time") and data["image"].shape == (6, 365)
    end = int(np.searchsorted(basin.time.values, np.datetime64("2001-03-15"))) + 1
    ref = reference_states(ex.ckpt, basin, end - 365, end)
    np.testing.assert_allclose(data["image"].values, ref.c[0, :, 1, :].numpy().T, rtol=1e-4, atol=1e-5)
    assert sorted(data["traces"]) == ["cell 2", "cell 4"]
    np.testing.assert_allclose(data["traces"]["cell 4"].values, ref.c[0, :, 1, 4].numpy(), rtol=1e-4, atol=1e-5)
    # the forcing series the plots get are the dataset's own values for the window
    frame = data["series"]
    np.testing.assert_array_equal(frame["prcp"].to_numpy(), basin["prcp"].values[end - 365:end])


def test_moving_the_day_moves_the_window_and_the_heatmap_title(explorer):
    ex = explorer
    ex.mode = "window"
    ex.date = dt.date(2001, 5, 1)
    first = ex.plot_data()["image"]["time"].values[[0, -1]]
    ex.date = dt.date(2001, 5, 11)
    second = ex.plot_data()["image"]["time"].values[[0, -1]]
    assert (second - first == np.timedelta64(10, "D")).all()
    assert "2001-05-11" in ex._image_title()
    assert "2001-05-11" in ex.status


def test_window_mode_sources_hold_only_the_window_and_the_x_range_follows(explorer, basin):
    from bokeh.models import GridPlot, Image, Span

    ex = explorer
    ex.param.update(mode="window", layer=0, gate="c", cells=[1, 3])
    ex.date = dt.date(2001, 2, 1)
    assert isinstance(ex._plot_pane.object, GridPlot)
    assert isinstance(ex._heat_fig.renderers[0].glyph, Image)
    src = ex.plot_sources()
    t = pd.to_datetime(src["series"]["time"], unit="ms")
    assert len(t) == 365 and t[-1] == pd.Timestamp("2001-02-01")
    end = int(np.searchsorted(basin.time.values, np.datetime64("2001-02-01"))) + 1
    for name in ("prcp", "tmax", "swe", "qobs"):
        np.testing.assert_array_equal(src["series"][name], basin[name].values[end - 365:end])
    ref = reference_states(ex.ckpt, basin, end - 365, end)
    np.testing.assert_allclose(src["heat"]["image"][0], ref.c[0, :, 0, :].numpy().T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(src["traces"]["y1"], ref.c[0, :, 0, 3].numpy(), rtol=1e-4, atol=1e-5)
    assert "y2" not in src["traces"]  # only the two selected cells travel
    # the shared x-range is the window (half a day of margin on each side) and every plot shares it
    day = 86_400_000
    assert ex._xr.start == pytest.approx(src["series"]["time"][0] - day / 2)
    assert ex._xr.end == pytest.approx(src["series"]["time"][-1] + day / 2)
    assert all(f.x_range is ex._xr for f in ex._figs.values())
    # the negative-discharge marks are exactly the window's negative simulated days
    q = src["series"]["qsim"]
    np.testing.assert_array_equal(src["neg"]["time"], src["series"]["time"][q < 0])
    # the selected cells are outlined in the heatmap
    np.testing.assert_array_equal(src["marks"]["y"], [0.5, 1.5, 2.5, 3.5])
    spans = [s for f in ex._figs.values() for s in f.center if isinstance(s, Span) and s.name == "xs-day"]
    assert len(spans) == 6 and not any(s.visible for s in spans)


def test_continuous_mode_scrubbing_moves_only_the_day_marker(explorer):
    ex = explorer
    ex.param.update(mode="continuous", gate="c", layer=0)
    ex.date = dt.date(2000, 6, 1)
    before = ex.plot_sources()
    assert len(before["series"]["time"]) == len(ex._days)
    series_obj, heat_obj = ex._src["series"].data["prcp"], ex._src["heat"].data["image"][0]
    ex.date = dt.date(2000, 9, 1)
    # the whole-record data were not re-sent: the very same arrays are still in the sources
    assert ex._src["series"].data["prcp"] is series_obj and ex._src["heat"].data["image"][0] is heat_obj
    assert {s.location for s in ex._spans} == {pd.Timestamp("2000-09-01").value / 1e6}
    assert all(s.visible for s in ex._spans)
    # the markers and the title are on the canvases' overlay layer: moving them repaints that layer only, not the
    # decades of data below (BokehJS repaints the primary layer when a painter of another level changes)
    assert all(s.level == "overlay" for s in ex._spans) and ex._heat_label.level == "overlay"
    assert "day 2000-09-01" in ex._heat_label.text
    ex.mode = "window"


def test_window_mode_opens_on_the_selected_days_window(ckpt_dir, basin):
    from xaiscope.dashboard.cellstate import CellStateExplorer

    ex = CellStateExplorer(checkpoint=str(ckpt_dir), data=basin, background=False, mode="window",
                           date=dt.date(2002, 1, 20))
    assert ex.ready and ex.date == dt.date(2002, 1, 20)
    t = ex.plot_sources()["series"]["time"]
    assert pd.Timestamp(t[-1], unit="ms") == pd.Timestamp("2002-01-20") and len(t) == 365
    assert ex._xr.end - ex._xr.start == pytest.approx(365 * 86_400_000)
    assert ex._days[ex._player.value] == pd.Timestamp("2002-01-20") == ex._days[ex._player.value_throttled]
    assert ex._slider.value == dt.date(2002, 1, 20)
    # the simulation has finished: the legend and the progress bar no longer say it is running
    assert ex._sim_ready and ("LSTM", "#d53f8c", "solid") in ex.legend_entries()
    assert "running" not in ex.legend_html()
    assert not ex._progress.visible


def test_continuous_mode_matches_the_reference_and_marks_the_day(explorer, basin):
    ex = explorer
    ex.param.update(mode="continuous", gate="f", layer=0)
    ex.date = dt.date(2000, 8, 1)
    data = ex.plot_data()
    ref = reference_states(ex.ckpt, basin, 0, basin.sizes["time"])
    np.testing.assert_allclose(data["image"].values, ref.f[0, :, 0, :].numpy().T, rtol=1e-4, atol=1e-5)
    assert ex._day_ms() == pd.Timestamp("2000-08-01").value / 1e6
    ex.param.update(mode="window", gate="c")


def test_best_snow_cell_is_the_numpy_best_correlated_cell(explorer, basin):
    ex = explorer
    ex.gate = "c"
    layer, cell, r = ex.select_best_cell("swe")
    assert ex.layer == layer and ex.cells == [cell]
    ref = reference_states(ex.ckpt, basin, 0, basin.sizes["time"]).c[0].numpy()  # (T, L, H)
    spin = 365
    swe = basin["swe"].values[spin:]
    best, best_r = None, 0.0
    for lay in range(ref.shape[1]):
        for c in range(ref.shape[2]):
            rr = np.corrcoef(ref[spin:, lay, c], swe)[0, 1]
            if abs(rr) > abs(best_r):
                best, best_r = (lay, c), rr
    assert (layer, cell) == best
    assert r == pytest.approx(best_r, abs=1e-4)


def test_gate_weights_are_the_pytorch_gate_blocks(explorer):
    ex = explorer
    from xaiscope.dashboard import compute

    for layer in (0, 1):
        w = compute.gate_weights(ex.ckpt, layer)
        blocks = torch.chunk(getattr(ex.ckpt.model.lstm, f"weight_ih_l{layer}").detach(), 4, dim=0)
        for g, block in zip("ifgo", blocks):
            np.testing.assert_array_equal(w[g].to_numpy(), block.numpy())
        assert list(w["i"].columns) == (INPUTS if layer == 0 else [f"h0[{j}]" for j in range(6)])


def test_skill_matches_sklearn_r2_and_counts_negative_days(explorer, basin):
    from sklearn.metrics import r2_score

    ex = explorer
    ex.mode = "window"
    ex.date = dt.date(2002, 6, 30)
    ex._update_skill(table=True)
    table = ex._skill_df
    shown = table[(table.period == "shown period") & (table.model == "LSTM")].iloc[0]
    a, b = ex.shown_period()
    obs = basin["qobs"].sel(time=slice(a, b)).values
    sim = ex._qsim.loc[a:b].to_numpy()
    ok = np.isfinite(obs) & np.isfinite(sim)
    assert shown["nse"] == pytest.approx(r2_score(obs[ok], sim[ok]), rel=1e-9, abs=1e-9)
    assert shown["negative_days"] == int((sim[np.isfinite(sim)] < 0).sum())
    assert {"training period", "test period"} <= set(table.period)


def test_downloads_carry_the_checkpoint_sha256(explorer):
    ex = explorer
    text = ex._download_series().getvalue().decode()
    assert f"# checkpoint_sha256: {ex.ckpt.sha256}" in text
    df = pd.read_csv(io.StringIO(text), comment="#", index_col=0)
    assert len(df) == 365 and any(c.startswith("c_l") for c in df.columns)
    nc = ex._download_states().getvalue()
    ds = xr.open_dataset(io.BytesIO(nc))
    assert ds.attrs["checkpoint_sha256"] == ex.ckpt.sha256 and "c" in ds
    corr = ex._download_corr().getvalue().decode()
    assert ex.ckpt.sha256 in corr and "best_lag" in corr


def test_clicking_a_heatmap_row_toggles_the_cell(explorer):
    ex = explorer
    ex.cells = []
    ex._on_tap(x=None, y=3.2)
    assert ex.cells == [3]
    # the legend names the selected cell in the colour of its trace, and only one trace is drawn
    assert ("cell 3", ex._trace_renderers[0].glyph.line_color, "solid") in ex.legend_entries()
    assert [r.visible for r in ex._trace_renderers].count(True) == 1 and "cell 3" in ex._legend_pane.object
    ex._on_tap(x=None, y=2.8)
    assert ex.cells == []
    ex._on_tap(x=None, y=99)
    assert ex.cells == []


def test_broken_checkpoint_gives_a_visible_error_and_recovery(tmp_path, ckpt_dir, basin):
    from xaiscope.dashboard.cellstate import CellStateExplorer
    from xaiscope.dashboard.state import AppState

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text(json.dumps({"format_version": 1, "kind": "hydro_lstm", "config": {}}))
    (broken / "weights.safetensors").write_bytes(b"not a safetensors file")
    state = AppState(checkpoints=[str(broken), str(ckpt_dir)], data=[basin])
    ex = CellStateExplorer(state=state, background=False)
    assert "broken" in state.error and "safetensors" in state.error
    assert ex._alert.visible and "broken" in ex._alert.object
    state.checkpoint = list(state.param.checkpoint.objects)[1]
    assert state.error == "" and ex.ready and not ex._alert.visible


def test_bad_data_spec_is_reported_not_raised(tmp_path):
    from xaiscope.dashboard.sources import parse_data_spec
    from xaiscope.core.errors import XaiscopeError

    with pytest.raises(XaiscopeError, match="does not exist"):
        parse_data_spec(tmp_path / "nope")
    with pytest.raises(XaiscopeError, match="integer seed"):
        parse_data_spec("synthetic:abc")


def test_view_registry_adds_a_view_in_one_line():
    from xaiscope.dashboard.registry import VIEWS, register_view
    import xaiscope.dashboard.app  # noqa: F401 - registers the built-in views

    assert "cells" in VIEWS
    register_view("dummy", "Dummy view", lambda state: pn.pane.Markdown("x"))
    try:
        assert VIEWS["dummy"].title == "Dummy view"
    finally:
        VIEWS.pop("dummy")


def test_create_app_builds_a_template(ckpt_dir, basin):
    from xaiscope.dashboard.app import create_app

    app = create_app(checkpoints=[str(ckpt_dir)], data=[basin])
    assert isinstance(app, pn.template.BaseTemplate)


def test_second_session_reuses_the_cached_simulation(explorer, ckpt_dir, basin, monkeypatch):
    from xaiscope.core import hydro
    from xaiscope.dashboard.cellstate import CellStateExplorer

    def fail(*a, **k):
        raise AssertionError("the per-day simulation was computed again")

    monkeypatch.setattr(hydro, "simulate", fail)
    monkeypatch.setattr(hydro, "continuous_states", fail)
    again = CellStateExplorer(checkpoint=str(ckpt_dir), data=basin, background=False)
    assert again.error == "" and again.ready and again._sim_ready
    pd.testing.assert_series_equal(again._qsim, explorer._qsim)


def test_cache_computes_once_for_concurrent_callers():
    import threading

    from xaiscope.dashboard.sources import LRUCache

    cache = LRUCache(maxsize=4)
    calls, release, results = [], threading.Event(), []

    def slow():
        calls.append("slow")
        release.wait(10)
        return 42

    def fast():
        calls.append("fast")
        return -1

    t1 = threading.Thread(target=lambda: results.append(cache.get_or_compute("k", slow)))
    t1.start()
    while not cache.running("k"):
        threading.Event().wait(0.005)
    t2 = threading.Thread(target=lambda: results.append(cache.get_or_compute("k", fast)))
    t2.start()
    t2.join(0.3)
    assert t2.is_alive()  # waits for the running computation instead of starting its own
    release.set()
    t1.join(10)
    t2.join(10)
    assert calls == ["slow"] and results == [42, 42]


def test_long_records_are_drawn_as_exact_k_day_means():
    """Datashader aggregates wide heatmaps; each column must be the plain mean of its k days (numpy reference)."""
    from xaiscope.dashboard.cellstate import aggregate_days

    rng = np.random.default_rng(3)
    short = rng.normal(size=(365, 7)).astype(np.float32)
    img, k = aggregate_days(short, max_columns=3000)
    assert k == 1 and img.shape == (7, 365) and np.array_equal(img, short.T)
    long = rng.normal(size=(12_784, 20)).astype(np.float32)
    img, k = aggregate_days(long, max_columns=3000)
    assert k == 5 and img.shape == (20, 2557)
    ref = np.stack([long[j * k:(j + 1) * k].mean(axis=0) for j in range(img.shape[1])], axis=1)
    np.testing.assert_allclose(img, ref, rtol=1e-5, atol=1e-6)


def test_continuous_heatmap_of_the_whole_record_is_aggregated(explorer, basin, monkeypatch):
    from xaiscope.dashboard import cellstate

    monkeypatch.setattr(cellstate, "RASTER_MAX_COLUMNS", 500)  # this test record: 1,461 days -> 3-day means
    ex = explorer
    ex.param.update(mode="continuous", gate="c", layer=1)
    ex._refresh()
    n = basin.sizes["time"]
    image = ex._src["heat"].data["image"][0]
    assert ex._days_per_column == 3 and image.shape == (ex.n_cells, -(-n // 3))
    assert ex._src["heat"].data["dw"][0] == pytest.approx(image.shape[1] * 3 * 86_400_000)
    assert "3-day means" in ex._heat_label.text
    daily = ex.plot_data()["image"].values  # the data behind the plot (and its downloads) stay daily
    assert n in daily.shape
    daily_tc = daily if daily.shape[0] == n else daily.T
    np.testing.assert_allclose(image[:, 0], daily_tc[:3].mean(axis=0), rtol=1e-5, atol=1e-6)
    ex.param.update(mode="window")


@pytest.mark.parametrize("m, expected", [(0.9, 1.0), (1.0, 1.0), (1.01, 1.5), (1.7, 2.0), (2.2, 3.0), (4.0, 5.0),
                                         (6.1, 7.5), (8.0, 10.0), (19.18, 20.0), (0.031, 0.05), (0.0, 1.0)])
def test_cell_state_colour_limits_are_nice_and_cover_the_data(m, expected):
    from xaiscope.dashboard.cellstate import nice_ceiling

    assert nice_ceiling(m) == pytest.approx(expected)
    assert nice_ceiling(m) >= m


def test_cell_state_colour_limits_are_symmetric_and_cover_the_window(explorer):
    ex = explorer
    ex.param.update(mode="window", gate="c", layer=0)
    arr = ex._state_array()
    m = float(np.nanmax(np.abs(arr)))
    assert ex._mapper.low == -ex._mapper.high and m <= ex._mapper.high <= 1.5 * m


@pytest.mark.parametrize("lo, hi, zero", [(0.0, 23.7, True), (-21.3, 28.4, False), (3.2, 3.2, False),
                                          (-0.41, 0.93, False), (-2.5, 40.0, True), (0.0, 0.0, True),
                                          (1e-3, 2e-3, False), (-5.0, -1.0, False)])
def test_axis_ranges_are_nice_and_cover_the_data(lo, hi, zero):
    from xaiscope.dashboard.cellstate import nice_ceiling, nice_range

    a, b = nice_range(lo, hi, zero=zero)
    assert a <= lo and b >= hi and b > a
    if zero and lo >= 0:
        assert a == 0.0
    # the limits are whole multiples of a round step (1, 1.5, 2, 3, 5, 7.5 × 10^k): they stay put while the
    # data move inside them
    step = (b - a) / round((b - a) / ((b - a) / 10)) if b > a else 1.0
    for v in (a, b):
        k = v / (nice_ceiling(max(hi - lo, abs(hi), 1e-12) * 1.1) / 10) if not zero else None
        if k is not None:
            assert abs(k - round(k)) < 1e-6, (v, k, step)
    # a data range with no finite value gets a usable default
    assert nice_range(np.nan, np.nan) == (0.0, 1.0)


def test_scrubbing_keeps_server_set_y_ranges_that_cover_each_window(explorer):
    from bokeh.models import Range1d

    ex = explorer
    ex.param.update(mode="window", gate="c", layer=0, cells=[2, 5])
    seen = {}
    for day in (dt.date(2001, 2, 1), dt.date(2001, 2, 2), dt.date(2001, 8, 1)):
        ex.date = day
        src = ex.plot_sources()
        s, tr = src["series"], src["traces"]
        checks = {"prcp": [s["prcp"]], "temp": [s["tmin"], s["tmax"], s["tmean"]], "swe": [s["swe"]],
                  "flow": [s["qobs"], s["q_benchmark"], s["qsim"]], "traces": [tr["y0"], tr["y1"]]}
        for name, cols in checks.items():
            rng = ex._yr[name]
            assert isinstance(rng, Range1d)
            vals = np.concatenate([np.asarray(c, dtype=float) for c in cols])
            vals = vals[np.isfinite(vals)]
            assert rng.start <= vals.min() and rng.end >= vals.max(), (name, rng.start, rng.end)
            # the reset tool returns to the same range
            assert (rng.reset_start, rng.reset_end) == (rng.start, rng.end)
        seen[day] = {k: (r.start, r.end) for k, r in ex._yr.items()}
    # one day apart, the nice limits of the forcing panels do not move (nothing to re-send or lay out)
    a, b = seen[dt.date(2001, 2, 1)], seen[dt.date(2001, 2, 2)]
    assert sum(a[k] == b[k] for k in ("prcp", "temp", "swe", "flow")) >= 3, (a, b)
    # every figure uses its server-set range (none is computed by the browser)
    assert all(isinstance(f.y_range, Range1d) for f in ex._figs.values())


def test_trace_renderers_follow_the_selected_cells(explorer):
    ex = explorer
    ex.param.update(mode="window", gate="h", layer=0)
    ex.cells = [1, 3, 5]  # the test model has 6 cells
    fields = [r.glyph.y for r in ex._trace_renderers]
    assert fields[:3] == ["y0", "y1", "y2"] and set(fields[3:]) == {"y0"}
    assert [r.visible for r in ex._trace_renderers[:4]] == [True, True, True, False]
    arr = ex._state_array()
    np.testing.assert_array_equal(ex._src["traces"].data["y2"], arr[:, 5])
    ex.cells = []
    src = ex.plot_sources()["traces"]
    assert sorted(src) == ["time", "y0"] and np.isnan(src["y0"]).all()
    assert not any(r.visible for r in ex._trace_renderers)


def test_link_date_from_the_url_sets_the_day_and_follows_it(explorer):
    ex = explorer
    ex.mode = "window"
    ex.link_date = dt.date(2001, 3, 5)  # a link opened with ?date=2001-03-05
    assert ex.date == dt.date(2001, 3, 5)
    ex.date = dt.date(2001, 3, 9)  # outside a served page the URL and the picker follow at once
    assert ex.link_date == dt.date(2001, 3, 9) and ex._picker.value == dt.date(2001, 3, 9)


def test_served_app_never_links_panel_resources_to_the_cdn():
    """Even while another session renders in Panel's 'cdn' resource mode, a served app's URLs stay local."""
    from panel.io import resources

    from xaiscope.dashboard.app import serve_resources_locally

    saved = resources.use_cdn
    try:
        with resources.set_resource_mode("cdn"):
            assert resources.get_dist_path().startswith("https://")  # what Panel does on its own
            serve_resources_locally()
            assert not resources.get_dist_path().startswith("http")
            assert not resources.is_cdn_url(resources.get_dist_path())
    finally:
        import panel.reactive as reactive
        import panel.template.base as template_base

        resources.use_cdn = saved
        template_base.use_cdn = saved
        resources.patch_stylesheet = reactive.patch_stylesheet = resources.patch_stylesheet.__wrapped__


def test_served_app_never_rewrites_component_stylesheets_to_the_cdn():
    """A component built while its document has no `dist_url` yet (a session's page being built) gets its
    stylesheets rewritten to the CDN by Panel; in a served xaiscope app they stay on the server."""
    import panel as pn
    import panel.reactive as reactive
    from bokeh.document import Document
    from bokeh.models import ImportedStyleSheet
    from panel.io import resources

    from xaiscope.dashboard.app import serve_resources_locally

    def urls(root):
        return [s.url for s in root.select({"type": ImportedStyleSheet})]

    before = pn.widgets.Button(name="x").get_root(Document())
    assert any(resources.is_cdn_url(u) for u in urls(before))  # what Panel does on its own
    saved = (resources.use_cdn, resources.patch_stylesheet)
    try:
        serve_resources_locally()
        serve_resources_locally()  # idempotent: wraps Panel's function once
        assert resources.patch_stylesheet.__wrapped__ is saved[1]
        after = pn.widgets.Button(name="x").get_root(Document())
        found = urls(after)
        assert found and not any(resources.is_cdn_url(u) or u.startswith("http") for u in found), found
        sheet = ImportedStyleSheet(url=resources.CDN_DIST + "css/loading.css")
        reactive.patch_stylesheet(sheet, resources.CDN_DIST)
        assert sheet.url.startswith(resources.LOCAL_DIST), sheet.url
    finally:
        import panel.template.base as template_base

        resources.use_cdn = template_base.use_cdn = saved[0]
        resources.patch_stylesheet = reactive.patch_stylesheet = saved[1]
