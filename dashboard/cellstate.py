"""The cell-state view: what the LSTM of a rainfall-runoff model keeps in its cells, day by day.

``CellStateExplorer(checkpoint=..., data=...)`` works on its own in a notebook (after ``pn.extension()``) and
inside the app (``CellStateExplorer(state=AppState(...))``).

Two modes:

* **window** — for the selected day, the ``window``-day input sequence that ends that day (as the model sees it
  when it predicts that day's discharge, from a zero state) and every cell state, hidden state and gate in it;
* **continuous** — one pass over the whole record, the selected day marked by a vertical line.

Plots update in place: each plot is a ``hv.DynamicMap`` fed by an ``hv.streams.Pipe``; scrubbing sends new
data down the pipes (window mode) or moves the day marker (continuous mode). Expensive results (simulation,
continuous pass, correlations, ridge probe) are computed once per checkpoint and dataset and cached.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
import xarray as xr
import holoviews.plotting.bokeh  # noqa: F401 - registers the bokeh options without notebook output
from holoviews.operation.datashader import rasterize
from holoviews.streams import Pipe, Tap

from xaiscope.core import analysis, hydro
from xaiscope.dashboard import compute
from xaiscope.dashboard.state import AppState, describe_error

log = logging.getLogger("xaiscope.dashboard")

if hv.Store.current_backend != "bokeh" or not hv.Store.options(backend="bokeh"):
    hv.Store.set_current_backend("bokeh")
hv.Store.set_current_backend("bokeh")

# rasterize() regrids datetime axes in float nanoseconds; the default tolerance rejects the round-off
hv.config.image_rtol = max(float(getattr(hv.config, "image_rtol", 0.0) or 0.0), 1e-2)

COLORS = {
    "prcp": "#2b6cb0", "tmean": "#c05621", "tband": "#fbd38d", "swe": "#4fa3c7", "qobs": "#1a202c",
    "qsim": "#d53f8c", "qbench": "#718096", "neg": "#e53e3e", "day": "#e53e3e",
}
CELL_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
               "#bcbd22", "#7f7f7f"]
_PREFETCH = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xaiscope-prefetch")
RASTERIZE_ABOVE = 2000  # days; longer heatmaps are rasterised with datashader
MAX_TRACES = 10


def _empty_frame() -> pd.DataFrame:
    idx = pd.DatetimeIndex([pd.Timestamp("2000-01-01"), pd.Timestamp("2000-01-02")], name="time")
    cols = ["prcp", "tmin", "tmax", "tmean", "swe", "qobs", "q_benchmark", "qsim", "soil_moisture"]
    return pd.DataFrame({c: [np.nan, np.nan] for c in cols}, index=idx)


def _empty_image() -> xr.DataArray:
    t = pd.date_range("2000-01-01", periods=2)
    return xr.DataArray(np.zeros((2, 2)), coords={"cell": [0, 1], "time": t}, dims=("cell", "time"), name="c")


class CellStateExplorer(pn.viewable.Viewer):
    """Cell states, hidden states and gates of a hydrology LSTM over a date scrubber.

    Parameters
    ----------
    checkpoint : path of a checkpoint (folder/file) or a loaded ``Checkpoint`` (ignored when ``state`` is given).
    data : basin data: a ``--data`` spec ("demo", "synthetic", a CAMELS folder#basin, a file) or an
        ``xr.Dataset`` (ignored when ``state`` is given).
    device : torch device preference.
    state : a shared :class:`AppState` (the app passes its own).
    """

    state = param.ClassSelector(class_=AppState, doc="the shared checkpoint/data state")
    mode = param.Selector(default="window", objects=["window", "continuous"],
                          doc="window: the input window ending on the day; continuous: one pass over the record")
    date = param.CalendarDate(default=None, allow_None=True, doc="selected day")
    layer = param.Integer(default=0, bounds=(0, None))
    gate = param.Selector(default="c", objects=list(compute.GATES), doc="which internal to show")
    cells = param.List(default=[], item_type=int, doc="selected cells (of the selected layer)")
    presentation = param.Boolean(default=False, doc="large fonts and thick lines")

    error = param.String(default="", doc="last error shown to the user")
    status = param.String(default="")

    def __init__(self, checkpoint=None, data=None, device=None, state: AppState | None = None, **params):
        if state is None:
            state = AppState(checkpoints=checkpoint, data=data, device=device)
        self._background = bool(params.pop("background", True))
        super().__init__(state=state, **params)
        self.timings: dict[str, float] = {}
        self._frame = _empty_frame()
        self._view_frame = self._frame
        self._states: xr.Dataset | None = None
        self._corr_long: pd.DataFrame | None = None
        self._prepared_key = None
        self._layout = None
        self._tabs = None
        self._prefetching = None
        self._sim_ready = False
        self._qsim = pd.Series(dtype=float)
        self._token = 0
        self._build_streams()
        self._build_widgets()
        self._plot_pane = pn.pane.HoloViews(self._build_plots(), sizing_mode="stretch_width", linked_axes=True)
        self.state.param.watch(self._on_source, ["ckpt", "ds", "error"])
        self.param.watch(self._on_date, ["date"])
        self.param.watch(self._on_view_change, ["layer", "gate"])
        self.param.watch(self._on_mode, ["mode"])
        self.param.watch(self._on_cells, ["cells"])
        self.param.watch(self._on_presentation, ["presentation"])
        self._on_source()

    # ------------------------------------------------------------------------------------ properties
    @property
    def ckpt(self):
        return self.state.ckpt

    @property
    def ds(self):
        return self.state.ds

    @property
    def ready(self) -> bool:
        return self._prepared_key is not None and self._prepared_key == self._source_key()

    def _source_key(self):
        if self.ckpt is None or self.ds is None:
            return None
        return (self.ckpt.sha256, self.state.data_key, str(self.state.device))

    @property
    def n_layers(self) -> int:
        return int(self.ckpt.model.lstm.num_layers) if self.ckpt is not None else 1

    @property
    def n_cells(self) -> int:
        return int(self.ckpt.model.lstm.hidden_size) if self.ckpt is not None else 1

    # ------------------------------------------------------------------------------------ streams
    def _build_streams(self) -> None:
        self._series_pipe = Pipe(data=self._frame)
        self._image_pipe = Pipe(data={"image": _empty_image(), "title": "", "marks": []})
        self._traces_pipe = Pipe(data={})
        self._day_pipe = Pipe(data=pd.Timestamp("2000-01-01"))
        self._marks_pipe = Pipe(data=[])

    # ------------------------------------------------------------------------------------ widgets
    def _build_widgets(self) -> None:
        w = pn.widgets
        self._mode_w = w.RadioButtonGroup.from_param(self.param.mode, name="", button_type="primary",
                                                     button_style="outline", width=220)
        self._slider = w.DateSlider(name="Day", start=dt.date(2000, 1, 1), end=dt.date(2000, 1, 3),
                                    value=dt.date(2000, 1, 2), sizing_mode="stretch_width", min_width=300,
                                    format="%Y-%m-%d")
        self._player = w.Player(name="", start=0, end=1, value=0, interval=400, loop_policy="once",
                                show_loop_controls=False, width=330, height=40, show_value=False,
                                visible_buttons=["slower", "previous", "reverse", "pause", "play", "next",
                                                 "faster"])
        self._picker = w.DatePicker(name="", width=130)
        self._layer_w = w.Select(name="Layer", options=[0], value=0, width=90)
        self._gate_w = w.RadioButtonGroup(name="Internal", options={v: k for k, v in {
            "c": "c", "h": "h", "i": "i", "f": "f", "g": "g", "o": "o"}.items()}, value="c",
            button_type="primary", button_style="outline", width=260)
        self._cells_w = w.MultiChoice(name="Cells (click heatmap rows, or type)", options=[], value=[],
                                      max_items=MAX_TRACES, sizing_mode="stretch_width", min_width=240)
        self._best_btn = w.Button(name="Select the best snow cell", button_type="success",
                                  disabled=True)
        self._status_md = pn.pane.Markdown("", sizing_mode="stretch_width", css_classes=["xs-status"],
                                           margin=(0, 10))
        self._alert = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width")
        self._warn = pn.pane.Alert("", alert_type="warning", visible=False, sizing_mode="stretch_width")
        self._progress = pn.indicators.Progress(name="progress", value=0, max=100, active=False,
                                                visible=False, sizing_mode="stretch_width", bar_color="info")
        self._progress_md = pn.pane.Markdown("", visible=False)
        self._title_md = pn.pane.Markdown("", sizing_mode="stretch_width", margin=(0, 10))
        self._skill_md = pn.pane.Markdown("", sizing_mode="stretch_width", margin=(0, 10))
        self._skill_table = w.Tabulator(pd.DataFrame(), disabled=True, show_index=False, layout="fit_data_table",
                                        sizing_mode="stretch_width", height=210)
        self._corr_table = w.Tabulator(pd.DataFrame(), disabled=True, show_index=False, selectable=1,
                                       layout="fit_data_table", height=340, sizing_mode="stretch_width",
                                       pagination=None, name="correlations")
        self._probe_md = pn.pane.Markdown("", sizing_mode="stretch_width")
        self._best_md = pn.pane.Markdown("", sizing_mode="stretch_width")
        self._weights_pane = pn.pane.HoloViews(self._build_weights(), sizing_mode="stretch_width",
                                               linked_axes=False)
        dl = dict(button_type="light", sizing_mode="stretch_width", embed=False)
        self._dl_series = w.FileDownload(callback=self._download_series, filename="xaiscope_series.csv",
                                         label="Plotted series and states (CSV)", **dl)
        self._dl_states = w.FileDownload(callback=self._download_states, filename="xaiscope_internals.nc",
                                         label="All internals of this mode (NetCDF)", **dl)
        self._dl_corr = w.FileDownload(callback=self._download_corr, filename="xaiscope_correlations.csv",
                                       label="Cell correlations (CSV)", **dl)
        self._dl_weights = w.FileDownload(callback=self._download_weights, filename="xaiscope_gate_weights.csv",
                                          label="Gate input weights (CSV)", **dl)
        self._dl_skill = w.FileDownload(callback=self._download_skill, filename="xaiscope_skill.csv",
                                        label="Skill table (CSV)", **dl)

        self._slider.param.watch(lambda e: self._set_date(e.new), "value_throttled")
        self._picker.param.watch(lambda e: self._set_date(e.new), "value")
        self._player.param.watch(self._on_player, "value")
        self._layer_w.param.watch(lambda e: setattr(self, "layer", int(e.new)), "value")
        self._gate_w.param.watch(lambda e: setattr(self, "gate", e.new), "value")
        self._cells_w.param.watch(lambda e: setattr(self, "cells", sorted(int(c) for c in e.new)), "value")
        self._best_btn.on_click(lambda e: self.select_best_cell())
        self._corr_table.param.watch(self._on_table_select, "selection")

    # ------------------------------------------------------------------------------------ plots
    def _opts(self) -> dict:
        big = self.presentation
        return {"fontscale": 1.6 if big else 1.0, "lw": 3.5 if big else 1.5, "h": 1.45 if big else 1.0}

    def _build_plots(self):
        """The stacked, shared-x plots. Forcing and flow hold the whole record (sent once per source); the
        heatmap and the traces are re-fed on every day change; in window mode the heatmap's framewise x-range
        (shared with every plot) moves all plots to the window, in continuous mode a day marker moves."""
        o = self._opts()
        lw, fs, hk = o["lw"], o["fontscale"], o["h"]
        cont = self.mode == "continuous"
        common = dict(responsive=True, fontscale=fs, show_grid=True, toolbar="right",
                      default_tools=["xpan", "xwheel_zoom", "box_zoom", "reset", "save"],
                      active_tools=["xwheel_zoom"])
        forcing = dict(common)
        if not cont and self.ready:
            a, b = self.shown_period()
            forcing["xlim"] = (a, b)  # the forcing plots never refresh while scrubbing; the x-range moves

        def prcp(data):
            return hv.Spikes(data.reset_index(), "time", ("prcp", "mm/day"), label="precipitation")

        def temp(data):
            d = data.reset_index()
            band = hv.Area(d, "time", [("tmin", "°C"), ("tmax", "tmax")], label="tmin–tmax")
            return band * hv.Curve(d, "time", ("tmean", "°C"), label="tmean") * hv.HLine(0)

        def swe(data):
            d = data.reset_index()
            return hv.Area(d, "time", ("swe", "mm"), label="snow water equivalent")

        def flow(data):
            d = data.reset_index()
            q = "mm/day"
            sim_label = "LSTM" if self._sim_ready else "LSTM (continuous pass; per-day simulation running)"
            obs = hv.Curve(d, "time", [("qobs", q)], label="observed").redim(qobs=q)
            bench = hv.Curve(d, "time", [("q_benchmark", q)], label="SAC-SMA + Snow-17").redim(q_benchmark=q)
            sim = hv.Curve(d, "time", [("qsim", q)], label=sim_label).redim(qsim=q)
            neg = d[d["qsim"] < 0]
            negp = hv.Scatter(neg, "time", [("qsim", q)], label="negative (impossible)").redim(qsim=q)
            return (obs.opts(color=COLORS["qobs"], line_width=lw * 0.9)
                    * bench.opts(color=COLORS["qbench"], line_width=lw * 0.8, line_dash="dotted")
                    * sim.opts(color=COLORS["qsim"], line_width=lw * 0.9)
                    * negp.opts(color=COLORS["neg"], size=7 * hk, marker="x"))

        def image(data):
            da = data["image"]
            return hv.Image((da["time"].values, da["cell"].values, da.values), kdims=["time", "cell"],
                            vdims=[hv.Dimension("value", label=str(da.name))])

        def image_marks(data):
            return image(data) * hv.HLines(np.asarray(data["marks"], dtype=float))

        def traces(data):
            curves = {k: hv.Curve((v.index.values, v.values), "time", "value") for k, v in data.items()}
            if not curves:
                curves = {"none": hv.Curve([], "time", "value")}
            return hv.NdOverlay(curves, kdims=["cell"])

        def marks(data):
            return hv.HLines(np.asarray(data, dtype=float))

        p_prcp = hv.DynamicMap(prcp, streams=[self._series_pipe]).opts(
            hv.opts.Spikes(color=COLORS["prcp"], line_width=lw * (0.6 if cont else 1.3), height=int(110 * hk),
                           xaxis=None, title="Precipitation", **forcing))
        p_temp = hv.DynamicMap(temp, streams=[self._series_pipe]).opts(
            hv.opts.Area(color=COLORS["tband"], alpha=0.6, line_width=0),
            hv.opts.Curve(color=COLORS["tmean"], line_width=lw * 0.8),
            hv.opts.HLine(color="#4a5568", line_width=1, line_dash="dotted"),
            hv.opts.Overlay(height=int(120 * hk), xaxis=None, title="Air temperature (band tmin–tmax, 0 °C dotted)",
                            show_legend=False, **forcing))
        p_swe = hv.DynamicMap(swe, streams=[self._series_pipe]).opts(
            hv.opts.Area(color=COLORS["swe"], alpha=0.7, line_width=lw * 0.5, height=int(110 * hk), xaxis=None,
                         title=self._swe_title(), **forcing))
        p_flow = hv.DynamicMap(flow, streams=[self._series_pipe]).opts(
            hv.opts.Overlay(height=int(170 * hk), xaxis=None, title="Streamflow",
                            legend_position="top_left", legend_opts={"background_fill_alpha": 0.6},
                            legend_cols=2, **forcing))
        cmap, clim = self._color_for_gate()
        img_opts = hv.opts.Image(cmap=cmap, clim=clim, colorbar=True, height=int(240 * hk), tools=["hover", "tap"],
                                 ylabel="cell", xaxis=None, framewise=True, hooks=[self._title_hook],
                                 colorbar_opts={"width": 10}, symmetric=(self.gate == "c"), **common)
        hl_opts = hv.opts.HLines(color="#111111", line_width=1.5 * hk, alpha=0.9)
        if cont and len(getattr(self, "_days", ())) > RASTERIZE_ABOVE:
            img = hv.DynamicMap(image, streams=[self._image_pipe])
            img = rasterize(img, aggregator="mean", width=1400, height=max(self.n_cells * 4, 40), dynamic=True)
            self._tap = Tap(source=img, x=None, y=None)
            heat = img.opts(img_opts) * hv.DynamicMap(marks, streams=[self._marks_pipe]).opts(hl_opts)
        else:
            heat = hv.DynamicMap(image_marks, streams=[self._image_pipe]).opts(img_opts, hl_opts)
            self._tap = Tap(source=heat, x=None, y=None)
        self._tap.add_subscriber(self._on_tap)
        p_tr = hv.DynamicMap(traces, streams=[self._traces_pipe]).opts(
            hv.opts.Curve(line_width=lw, tools=["hover"], framewise=True),
            hv.opts.NdOverlay(height=int(190 * hk), legend_position="right", title="Selected cells",
                              xlabel="date", framewise=True, **common))
        self._figs = {}
        p_prcp = p_prcp.opts(hooks=[self._capture("prcp")])
        p_temp = p_temp.opts(hv.opts.Overlay(hooks=[self._capture("temp")]))
        p_swe = p_swe.opts(hooks=[self._capture("swe")])
        p_flow = p_flow.opts(hv.opts.Overlay(hooks=[self._capture("flow")]))
        plots = [p_prcp, p_temp, p_swe, p_flow, heat, p_tr]
        self._spans = []
        if cont:
            hook = self._day_span_hook
            plots = [p.opts(hooks=[hook]) for p in plots]
        return hv.Layout(plots).cols(1).opts(shared_axes=True)

    def _capture(self, name: str):
        def hook(plot, element):
            self._figs[name] = plot.state
            if self.mode == "window" and self.ready and self.date is not None:
                self._fit_y_ranges({name: plot.state})
        return hook

    def _fit_y_ranges(self, figs: dict | None = None) -> None:
        """Window mode: move the shared x-range to the window and fit the y-axes of the forcing and flow plots
        to it (cheap range patches; the plots themselves are not re-rendered)."""
        figs = self._figs if figs is None else figs
        a, b = self.shown_period()
        for fig in figs.values():
            fig.x_range.start = float((a - pd.Timedelta(hours=12)).value / 1e6)
            fig.x_range.end = float((b + pd.Timedelta(hours=12)).value / 1e6)
        f = self._frame.loc[a:b]
        q = pd.concat([f["qobs"], f["q_benchmark"], self._qsim.loc[a:b]])
        spans = {
            "prcp": (0.0, f["prcp"].max()),
            "temp": (f["tmin"].min(), f["tmax"].max()),
            "swe": (0.0, f["swe"].max()),
            "flow": (min(0.0, q.min()), q.max()),
        }
        for name, (lo, hi) in spans.items():
            fig = figs.get(name)
            if fig is None or not np.isfinite(lo) or not np.isfinite(hi):
                continue
            if hi <= lo:
                hi = lo + 1.0
            pad = 0.06 * (hi - lo)
            fig.y_range.start = float(lo - (pad if name == "temp" or lo < 0 else 0.0))
            fig.y_range.end = float(hi + pad)

    def _defer_fit(self) -> None:
        """Fit the ranges again once the browser has the freshly built plots (their first render sets the
        union of all shared ranges)."""
        doc = pn.state.curdoc
        if self.mode != "window" or doc is None or doc.session_context is None:
            return

        def fit():
            if self.mode == "window" and self.ready:
                with pn.io.hold(doc):
                    self._fit_y_ranges()

        doc.add_timeout_callback(fit, 400)

    def _title_hook(self, plot, element) -> None:
        """The heatmap title names the shown day (tests and the latency benchmark read it in the browser)."""
        title = self._image_title()
        self._heat_fig = plot.state
        if plot.state.title is not None and plot.state.title.text != title:
            plot.state.title.text = title

    def _day_span_hook(self, plot, element) -> None:
        """Put one bokeh Span (the selected day) into each figure; moving it is a one-number patch."""
        from bokeh.models import Span

        fig = plot.state
        if any(getattr(r, "name", "") == "xs-day" for r in fig.center):
            return
        lw = self._opts()["lw"]
        span = Span(location=self._day_ms(), dimension="height", line_color=COLORS["day"], line_dash="dashed",
                    line_width=max(1.5, lw), line_alpha=0.9, name="xs-day")
        fig.add_layout(span)
        self._spans.append(span)

    def _day_ms(self) -> float:
        if self.date is None:
            return 0.0
        return float(pd.Timestamp(self.date).value / 1e6)

    def _swe_title(self) -> str:
        if self.ds is not None and str(self.ds.attrs.get("basin_id", "")).startswith("synthetic"):
            return "Snow water equivalent (true, synthetic basin)"
        return "Snow water equivalent (Snow-17 model, CAMELS)"

    def _build_weights(self, weights: dict | None = None):
        """Four heatmaps (W_i, W_f, W_g, W_o) of the selected layer: rows = cells, columns = inputs."""
        fs = self._opts()["fontscale"]
        if not weights:
            return hv.Div("<i>Gate weights appear when a checkpoint is open.</i>")
        vmax = max(float(np.abs(df.values).max()) for df in weights.values()) or 1.0
        plots = []
        for g in compute.WEIGHT_GATES:
            df = weights[g]
            long = df.stack().rename("weight").reset_index()
            long.columns = ["cell", "input", "weight"]
            long["cell"] = long["cell"].map(lambda c: f"{c:02d}")
            hm = hv.HeatMap(long, ["input", "cell"], "weight").opts(
                cmap="RdBu_r", clim=(-vmax, vmax), colorbar=(g == "o"), tools=["hover"],
                width=250 if g != "o" else 320, height=int(430 * (1.3 if self.presentation else 1)), xrotation=45,
                fontscale=fs, title=f"W_{g}: {compute.GATE_LABELS[g]}", invert_yaxis=True,
                ylabel="cell" if g == "i" else "", xlabel="input")
            plots.append(hm)
        return hv.Layout(plots).cols(4).opts(shared_axes=False)

    def _color_for_gate(self):
        if self.gate in ("i", "f", "o"):
            return "viridis", (0.0, 1.0)
        if self.gate in ("g", "h"):
            return "RdBu_r", (-1.0, 1.0)
        return "RdBu_r", (np.nan, np.nan)

    def _image_title(self) -> str:
        label = compute.GATE_LABELS[self.gate]
        when = (f"window ending {self.date}" if self.mode == "window" else f"whole record, day {self.date}")
        return f"{label}, layer {self.layer} — {when} (click a row to select a cell)"

    # ------------------------------------------------------------------------------------ panel
    def __panel__(self):
        if self._layout is None:
            self._layout = self._make_layout()
        return self._layout

    def _make_layout(self):
        controls = pn.Column(
            pn.Row(self._mode_w, self._layer_w, pn.Column(pn.pane.Markdown("**Internal**", margin=(0, 5)),
                                                        self._gate_w, margin=0),
                   self._best_btn, align="center"),
            pn.Row(self._slider, self._picker, self._player, align="center", sizing_mode="stretch_width"),
            self._cells_w,
            sizing_mode="stretch_width",
        )
        self._tabs = tabs = pn.Tabs(
            ("Which cell is snow?", pn.Column(self._best_md, self._probe_md, self._corr_table,
                                              sizing_mode="stretch_width")),
            ("Gate input weights", pn.Column(
                pn.pane.Markdown(
                    "Input weights of the selected layer, one heatmap per gate (rows = cells, columns = inputs; "
                    "PyTorch order i, f, g, o of `weight_ih`). Inputs are normalised with the checkpoint's "
                    "training statistics, so the weights are comparable across inputs."),
                self._weights_pane, sizing_mode="stretch_width")),
            ("Skill", pn.Column(self._skill_md, self._skill_table, sizing_mode="stretch_width")),
            ("Downloads", pn.Column(
                pn.pane.Markdown("Each file carries the checkpoint's sha256 and the current settings "
                                 "(CSV: `#` header lines; NetCDF: global attributes)."),
                self._dl_series, self._dl_states, self._dl_corr, self._dl_weights, self._dl_skill,
                max_width=520)),
            dynamic=False, sizing_mode="stretch_width",
        )
        tabs.param.watch(lambda e: self._update_skill(table=True) if e.new == 2 else None, "active")
        return pn.Column(self._title_md, self._alert, self._warn, self._progress_md, self._progress, controls,
                         self._status_md, self._plot_pane, tabs, sizing_mode="stretch_width",
                         css_classes=["xs-cellstate"])

    # ------------------------------------------------------------------------------------ errors
    def _show_error(self, message: str) -> None:
        self.error = message
        self._alert.object = message
        self._alert.visible = bool(message)

    def _guard(self, what: str, fn, *args):
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - the app must keep running
            log.error("%s failed", what, exc_info=True)
            self._show_error(f"{what}: {describe_error(err)}")
            return None

    # ------------------------------------------------------------------------------------ source change
    def _on_source(self, *_):
        st = self.state
        if st.error:
            self._show_error(st.error)
        else:
            self._show_error("")
        if st.ckpt is None or st.ds is None:
            self._prepared_key = None
            self._title_md.object = "### No model or data open"
            self._set_controls_enabled(False)
            return
        self._guard("Opening the checkpoint and data", self._setup_source)

    def _setup_source(self) -> None:
        ckpt, ds = self.ckpt, self.ds
        self._frame = compute.record_frame(ds, self.state.data_key)
        first = compute.first_window_day(ckpt, ds).date()
        last = pd.Timestamp(ds["time"].values[-1]).date()
        self._days = pd.DatetimeIndex(ds["time"].values)
        self._first_idx = int(self._days.searchsorted(pd.Timestamp(first)))
        self.param.date.bounds = (first, last)
        with param.parameterized.discard_events(self):
            if self.date is None or not (first <= self.date <= last):
                self.date = self._default_date(first, last)
            self.layer = min(self.layer, self.n_layers - 1)
            self.cells = [c for c in self.cells if c < self.n_cells]
        self._slider.param.update(start=first, end=last, value=self.date)
        self._picker.param.update(start=first, end=last, value=self.date)
        self._player.param.update(start=self._first_idx, end=len(self._days) - 1, value=self._day_index())
        self._layer_w.options = list(range(self.n_layers))
        self._layer_w.value = self.layer
        self._cells_w.options = list(range(self.n_cells))
        self._cells_w.value = list(self.cells)
        basin = ds.attrs.get("basin_name") or ""
        bid = ds.attrs.get("basin_id", "")
        trained = str((ckpt.manifest.get("data") or {}).get("basin_id", ""))
        self._title_md.object = (
            f"### {bid} {('— ' + basin) if basin else ''}\n"
            f"Checkpoint **{ckpt.label}** · sha256 `{ckpt.sha256[:12]}` · inputs {', '.join(ckpt.inputs)} · "
            f"{self.n_layers} layer(s) × {self.n_cells} cells · window {hydro.window_length(ckpt)} days"
        )
        if trained and bid and trained != bid:
            self._warn.object = (f"This checkpoint was trained on basin **{trained}** but the data shown are basin "
                                 f"**{bid}**: the states show how the model responds to another basin's weather.")
            self._warn.visible = True
        else:
            self._warn.visible = False
        self._set_controls_enabled(False)
        self._prepare()

    def _default_date(self, first: dt.date, last: dt.date) -> dt.date:
        """A telling default day: the day of the deepest snowpack in the last 5 years, else the last day."""
        swe = self._frame["swe"]
        recent = swe.loc[pd.Timestamp(last) - pd.Timedelta(days=5 * 365):]
        recent = recent.loc[pd.Timestamp(first):]
        if recent.notna().any() and recent.max() > 0:
            return recent.idxmax().date()
        return last

    def _set_controls_enabled(self, on: bool) -> None:
        for widget in (self._mode_w, self._slider, self._player, self._picker, self._layer_w, self._gate_w,
                       self._cells_w, self._best_btn):
            widget.disabled = not on

    # ------------------------------------------------------------------------------------ preparation
    def _quick_steps(self):
        ckpt, ds, key, dev = self.ckpt, self.ds, self.state.data_key, self.state.device
        return [
            ("Continuous pass over the record…", lambda: compute.continuous(ckpt, ds, key, dev)),
            ("Correlating every cell with snow, rain, temperature and flow…",
             lambda: compute.correlations(ckpt, ds, key, self.gate, dev)),
        ]

    def _slow_steps(self):
        ckpt, ds, key, dev = self.ckpt, self.ds, self.state.data_key, self.state.device
        return [
            ("Simulating every day from its own input window", "sim",
             lambda cb: compute.simulation(ckpt, ds, key, dev, on_chunk=cb)),
            ("Fitting the ridge probe (state vector → SWE)", "probe",
             lambda cb: compute.probe(ckpt, ds, key, "c", "swe", dev)),
        ]

    def _in_server(self) -> bool:
        doc = pn.state.curdoc
        return bool(self._background and doc is not None and doc.session_context is not None)

    def _prepare(self) -> None:
        self._token += 1
        key = self._source_key()
        self._sim_ready = compute.has_simulation(self.ckpt, self.state.data_key, self.state.device)
        if self._in_server():
            token = self._token

            async def run():
                await self._prepare_async(token, key)

            pn.state.execute(run)
            return
        for _, step in self._quick_steps():
            step()
        self._finish_prepare(key)
        for _, what, step in self._slow_steps():
            step(None)
            self._slow_done(what)

    def _show_progress(self, label: str, fraction: float) -> None:
        self._progress.param.update(visible=True, active=True, value=int(100 * fraction))
        self._progress_md.param.update(object=f"**{label}** ({100 * fraction:.0f} %)", visible=True)

    async def _prepare_async(self, token: int, key) -> None:
        loop = asyncio.get_running_loop()
        try:
            quick = self._quick_steps()
            for k, (label, step) in enumerate(quick):
                self._show_progress(label, k / len(quick))
                await asyncio.sleep(0.01)
                await asyncio.to_thread(step)
                if token != self._token:
                    return
            self._guard("Preparing the view", self._finish_prepare, key)
            for label, what, step in self._slow_steps():
                self._show_progress(label + "…", 0.0)
                await asyncio.sleep(0.01)

                def report(frac, day, label=label):
                    if token == self._token:
                        loop.call_soon_threadsafe(
                            self._show_progress, f"{label} (up to {pd.Timestamp(day).date()})…", frac)

                await asyncio.to_thread(step, report)
                if token != self._token:
                    return
                self._guard("Finishing " + label.lower(), self._slow_done, what)
        except Exception as err:  # noqa: BLE001
            log.error("preparing the cell-state view failed", exc_info=True)
            self._show_error(f"Preparing the view: {describe_error(err)}")
        finally:
            if token == self._token:
                self._progress.param.update(visible=False, active=False)
                self._progress_md.visible = False

    def _finish_prepare(self, key) -> None:
        self._prepared_key = key
        if self._sim_ready:
            self._qsim = compute.simulation(self.ckpt, self.ds, self.state.data_key, self.state.device)
        else:
            self._qsim = compute.continuous_qsim(self.ckpt, self.ds, self.state.data_key, self.state.device)
        self._set_controls_enabled(True)
        self._rebuild_plots()
        self._update_corr()
        self._update_probe()
        self._update_weights()
        if not self.cells and self._corr_long is not None and "swe" in set(self._corr_long["variable"]):
            self.select_best_cell()  # start on the snow cell: the view's headline question
        self._refresh()
        self._defer_fit()

    def _slow_done(self, what: str) -> None:
        if what == "sim":
            self._qsim = compute.simulation(self.ckpt, self.ds, self.state.data_key, self.state.device)
            self._sim_ready = True
            self._refresh()
        elif what == "probe":
            self._update_probe()

    # ------------------------------------------------------------------------------------ updates
    def _day_index(self) -> int:
        return int(self._days.searchsorted(pd.Timestamp(self.date)))

    def _set_date(self, value) -> None:
        if value is None:
            return
        if isinstance(value, dt.datetime):
            value = value.date()
        lo, hi = self.param.date.bounds
        value = min(max(value, lo), hi)
        if value != self.date:
            self.date = value

    def _on_player(self, event) -> None:
        if not hasattr(self, "_days"):
            return
        idx = int(min(max(event.new, 0), len(self._days) - 1))
        self._set_date(self._days[idx].date())

    def _on_date(self, *_):
        if not hasattr(self, "_days") or self.date is None:
            return
        # keep the widgets in step without re-triggering
        self._slider.value = self.date
        self._picker.value = self.date
        idx = self._day_index()
        if self._player.value != idx:
            self._player.value = idx
        if self.ready:
            self._guard("Updating the day", self._refresh, "date")

    def _on_view_change(self, *events):
        names = {e.name for e in events}
        if "layer" in names:
            self._layer_w.value = self.layer
            self.cells = [c for c in self.cells if c < self.n_cells]
            self._update_weights()
        if "gate" in names:
            self._gate_w.value = self.gate
            self._rebuild_plots()
        if self.ready:
            if "gate" in names:
                self._guard("Computing correlations", self._update_corr)
            self._guard("Updating the plots", self._refresh)

    def _on_mode(self, *_):
        self._rebuild_plots()
        if self.ready:
            self._guard("Switching mode", self._refresh)
            self._defer_fit()

    def _on_presentation(self, *_):
        self._rebuild_plots()
        if self.ready:
            self._update_weights()
            self._refresh()

    def _rebuild_plots(self):
        self._plot_pane.object = self._build_plots()

    def _on_cells(self, *_):
        cells = sorted({int(c) for c in self.cells if 0 <= int(c) < self.n_cells})[:MAX_TRACES]
        if cells != list(self.cells):
            self.cells = cells
            return
        if list(self._cells_w.value) != cells:
            self._cells_w.value = cells
        if self.ready:
            self._guard("Updating the traces", self._refresh, "cells")

    def _on_tap(self, x=None, y=None, **_):
        if y is None:
            return
        cell = int(round(float(y)))
        if not 0 <= cell < self.n_cells:
            return
        cells = list(self.cells)
        cells = [c for c in cells if c != cell] if cell in cells else cells + [cell]
        self.cells = sorted(cells)

    def _on_table_select(self, event):
        df = self._corr_table.value
        if not event.new or df is None or df.empty:
            return
        row = df.iloc[event.new[0]]
        self.layer = int(row["layer"])
        self.cells = [int(row["cell"])]

    def select_best_cell(self, variable: str = "swe") -> tuple[int, int, float] | None:
        """Select the cell whose state correlates best (|r|, lag 0) with ``variable``; returns (layer, cell, r)."""
        if self._corr_long is None:
            return None
        try:
            layer, cell, r = analysis.best_cell(self._corr_long, variable)
        except Exception as err:  # noqa: BLE001
            log.error("best cell failed", exc_info=True)
            self._show_error(f"Best {variable} cell: {describe_error(err)}")
            return None
        with param.parameterized.batch_call_watchers(self):
            self.layer = int(layer)
            self.cells = [int(cell)]
        sub = self._corr_long[(self._corr_long.layer == layer) & (self._corr_long.cell == cell)
                              & (self._corr_long.variable == variable)].iloc[0]
        lag = sub["best_lag"]
        self._best_md.object = (
            f"**Best {variable} cell: layer {layer}, cell {cell}** — r = {r:+.3f} at lag 0"
            + (f"; best r = {sub['r_best']:+.3f} with the state lagging by {int(lag)} days" if pd.notna(lag) else "")
            + f" ({compute.GATE_LABELS[self.gate]} of the continuous pass, spin-up year left out).")
        return int(layer), int(cell), float(r)

    # ------------------------------------------------------------------------------------ data for plots
    def window_data(self) -> xr.Dataset:
        return compute.window(self.ckpt, self.ds, self.state.data_key, self.date, self.state.device)

    def shown_states(self) -> xr.Dataset:
        if self.mode == "window":
            return self.window_data()
        return compute.continuous(self.ckpt, self.ds, self.state.data_key, self.state.device)

    def shown_period(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        if self.mode == "window":
            end = pd.Timestamp(self.date)
            n = hydro.window_length(self.ckpt)
            idx = self._day_index()
            return self._days[idx - n + 1], end
        return self._days[0], self._days[-1]

    def plot_data(self) -> dict:
        """Everything the plots get for the current settings (used by the plots and the tests)."""
        t0 = time.perf_counter()
        states = self.shown_states()
        a, b = self.shown_period()
        frame = self._frame.loc[a:b].copy()
        frame["qsim"] = self._qsim.reindex(frame.index).to_numpy()
        arr = states[self.gate].isel(layer=self.layer)  # (time, cell)
        image = xr.DataArray(arr.values.T, coords={"cell": np.arange(arr.shape[1]), "time": arr["time"].values},
                             dims=("cell", "time"), name=f"{self.gate} (layer {self.layer})")
        traces = {f"cell {c}": pd.Series(arr.values[:, c], index=pd.DatetimeIndex(arr["time"].values))
                  for c in self.cells}
        self.timings["compute_ms"] = 1000 * (time.perf_counter() - t0)
        return {"series": frame, "image": image, "traces": traces, "day": pd.Timestamp(self.date),
                "marks": list(self.cells), "states": states}

    def _prefetch(self, ahead: int = 3) -> None:
        """Compute the windows of the next and previous days in the background (scrubbing hits the cache)."""
        if not self._background or (self._prefetching is not None and not self._prefetching.done()):
            return
        idx = self._day_index()
        days = [self._days[i] for i in [idx + k for k in range(1, ahead + 1)] + [idx - 1]
                if self._first_idx <= i < len(self._days)]
        ckpt, ds, key, dev = self.ckpt, self.ds, self.state.data_key, self.state.device
        self._prefetching = _PREFETCH.submit(compute.prefetch_windows, ckpt, ds, key, days, dev)

    def _series_frame(self) -> pd.DataFrame:
        frame = self._frame.copy()
        frame["qsim"] = self._qsim.reindex(frame.index).to_numpy()
        return frame

    def _refresh(self, what: str = "all") -> None:
        """Push the current data into the plots (in place)."""
        if not self.ready or self.date is None:
            return
        t0 = time.perf_counter()
        data = self.plot_data()
        with pn.io.hold():
            if what == "all":
                self._series_pipe.send(self._series_frame())
            if what in ("all", "date"):
                if self.mode == "continuous":
                    for span in self._spans:
                        span.location = self._day_ms()
                    fig = getattr(self, "_heat_fig", None)
                    if fig is not None and fig.title is not None:
                        fig.title.text = self._image_title()
                    if what == "all":
                        self._image_pipe.send({"image": data["image"], "title": self._image_title(),
                                               "marks": data["marks"]})
                        self._marks_pipe.send(data["marks"])
                        self._traces_pipe.send(data["traces"])
                else:
                    self._image_pipe.send({"image": data["image"], "title": self._image_title(),
                                           "marks": data["marks"]})
                    self._traces_pipe.send(data["traces"])
                    self._fit_y_ranges()
            elif what == "cells":
                self._traces_pipe.send(data["traces"])
                if self.mode == "continuous":
                    self._marks_pipe.send(data["marks"])
                else:
                    self._image_pipe.send({"image": data["image"], "title": self._image_title(),
                                           "marks": data["marks"]})
            if self.mode == "window" or what == "all":
                self._update_skill(table=(what == "all"))
            self.timings["update_ms"] = 1000 * (time.perf_counter() - t0)
            self._status_md.object = self._status_text(data)
        self.status = self._status_md.object
        if self.mode == "window" and what in ("all", "date"):
            self._prefetch()
        for name, dl in (("series", self._dl_series), ("internals", self._dl_states)):
            ext = "csv" if name == "series" else "nc"
            dl.filename = f"xaiscope_{name}_{self._file_tag()}.{ext}"

    def _file_tag(self) -> str:
        bid = str(self.ds.attrs.get("basin_id", "basin")).replace(":", "-")
        return f"{bid}_{self.mode}_{self.date}_{self.gate}_l{self.layer}"

    def _status_text(self, data) -> str:
        a, b = self.shown_period()
        qday = self._qsim.get(pd.Timestamp(self.date), np.nan)
        obs = self._frame["qobs"].get(pd.Timestamp(self.date), np.nan)
        swe = self._frame["swe"].get(pd.Timestamp(self.date), np.nan)
        bits = [f"**{self.date}**", f"shown {a.date()} … {b.date()}",
                f"Q obs {obs:.2f} · LSTM {qday:.2f} mm/day", f"SWE {swe:.0f} mm" if np.isfinite(swe) else "",
                f"<span class='xs-ms'>computed in {self.timings.get('compute_ms', 0):.0f} ms, "
                f"updated in {self.timings.get('update_ms', 0):.0f} ms</span>"]
        return " · ".join(b for b in bits if b)

    def _update_skill(self, table: bool = True) -> None:
        """Skill of the shown period (text every time; the table only when visible or asked for)."""
        if not self.ready:
            return
        a, b = self.shown_period()
        if not self._sim_ready:
            self._skill_md.object = ("Skill (NSE, KGE) appears when the per-day simulation of the record is done "
                                     "(progress bar above).")
            return
        table_visible = self._tabs is not None and self._tabs.active == 2
        if table or table_visible or getattr(self, "_skill_df", None) is None:
            df = compute.skill_table(self.ckpt, self._frame, self._qsim, (a, b))
            self._skill_df = df
            self._skill_table.value = df.round(3)
        sl = slice(a, b)
        s_ = hydro.skill(self._frame["qobs"].loc[sl].to_numpy(), self._qsim.loc[sl].to_numpy())
        shown = {"nse": s_["nse"], "kge": s_["kge"], "n": s_["n"], "negative_days": s_["negative_days"]}
        neg_total = int((self._qsim < 0).sum())
        neg = int(shown["negative_days"])
        flag = (f" · <span style='color:#c53030'>**{neg} day(s) with negative simulated discharge** "
                "(physically impossible; red × in the flow plot)</span>" if neg else " · no negative discharge")
        self._skill_md.object = (
            f"**Shown period {a.date()} … {b.date()}: NSE {shown['nse']:.3f} · KGE {shown['kge']:.3f}** "
            f"(n = {int(shown['n'])} days with observations){flag}. Whole record: {neg_total} negative day(s).")

    def _update_corr(self) -> None:
        long = compute.correlations(self.ckpt, self.ds, self.state.data_key, self.gate, self.state.device)
        self._corr_long = long
        table = compute.correlation_table(long)
        self._corr_table.value = table.round(3)
        self._best_btn.disabled = "swe" not in set(long["variable"])
        self._best_md.object = self._best_md.object or (
            "Table: Pearson r of every cell (continuous pass, spin-up year left out) with each physical variable "
            "at lag 0, the lag (days, state lagging the variable, 0–30) with the largest |r| and r at that lag. "
            "Click a row to select that cell; sort by clicking a column header.")

    def _update_probe(self) -> None:
        key = ("probe", self.ckpt.sha256, self.state.data_key, "c", "swe", str(self.state.device))
        if "swe" not in self.ds:
            self._probe_md.object = "Ridge probe: the data have no SWE series."
            return
        if key not in compute._HEAVY:
            self._probe_md.object = "Ridge probe (all cell states → SWE): computing…"
            return
        pr = compute.probe(self.ckpt, self.ds, self.state.data_key, "c", "swe", self.state.device)
        folds = ", ".join(f"{v:.2f}" for v in pr.get("r2_folds", []))
        n_feat = self.n_layers * self.n_cells
        self._probe_md.object = (
            f"**Ridge probe, all {n_feat} cell states c → SWE: R² = {pr['r2']:.3f}** "
            f"(out of fold, {len(pr.get('r2_folds', []))} contiguous time blocks: {folds}; α = {pr['alpha']:g}). "
            "A high R² means snow can be read linearly from the cell states even when no single cell holds it.")

    def _update_weights(self) -> None:
        if self.ckpt is None:
            return
        self._weights = compute.gate_weights(self.ckpt, self.layer)
        self._weights_pane.object = self._build_weights(self._weights)

    # ------------------------------------------------------------------------------------ downloads
    def _meta(self) -> dict:
        ck = self.ckpt
        return {
            "generator": "xaiscope cell-state view",
            "checkpoint": str(ck.path), "checkpoint_sha256": ck.sha256, "checkpoint_label": ck.label,
            "basin_id": str(self.ds.attrs.get("basin_id", "")), "data": str(self.state.dataset),
            "mode": self.mode, "date": str(self.date), "layer": self.layer, "internal": self.gate,
            "cells": list(self.cells), "window_days": hydro.window_length(ck),
            "created": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
        }

    def series_table(self) -> pd.DataFrame:
        data = self.plot_data()
        df = data["series"].copy()
        arr = data["states"][self.gate].isel(layer=self.layer).to_pandas()
        arr.columns = [f"{self.gate}_l{self.layer}_cell{c:02d}" for c in arr.columns]
        return df.join(arr)

    def _download_series(self):
        return self._guard("Download", lambda: compute.csv_bytes(self.series_table(), self._meta()))

    def _download_states(self):
        def make():
            ds = self.shown_states().copy()
            a, b = self.shown_period()
            frame = self._frame.loc[a:b]
            for name in ("prcp", "tmean", "swe", "qobs"):
                ds[f"data_{name}"] = ("time", frame[name].reindex(pd.DatetimeIndex(ds.time.values)).to_numpy())
            return compute.netcdf_bytes(ds, self._meta())
        return self._guard("Download", make)

    def _download_corr(self):
        return self._guard("Download", lambda: compute.csv_bytes(self._corr_long, {**self._meta(),
                                                                                      "max_lag_days": compute.MAX_LAG},
                                                                 index=False))

    def _download_weights(self):
        def make():
            frames = []
            for g, df in compute.gate_weights(self.ckpt, self.layer).items():
                d = df.copy()
                d.insert(0, "gate", g)
                frames.append(d.reset_index())
            return compute.csv_bytes(pd.concat(frames), self._meta(), index=False)
        return self._guard("Download", make)

    def _download_skill(self):
        return self._guard("Download", lambda: compute.csv_bytes(self._skill_df, self._meta(), index=False))
