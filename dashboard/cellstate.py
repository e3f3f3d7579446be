"""The cell-state view: what the LSTM of a rainfall-runoff model keeps in its cells, day by day.

``CellStateExplorer(checkpoint=..., data=...)`` works on its own in a notebook (after ``pn.extension()``) and
inside the app (``CellStateExplorer(state=AppState(...))``).

Two modes:

* **window** — for the selected day, the ``window``-day input sequence that ends that day (as the model sees it
  when it predicts that day's discharge, from a zero state) and every cell state, hidden state and gate in it;
  every shared-x plot holds only that window (about 365 points) and the x-range follows it;
* **continuous** — one pass over the whole record, the selected day marked by a vertical line.

The stacked plots are plain Bokeh figures (one shared x-range) shown through ``pn.pane.Bokeh``. Scrubbing only
replaces the ``data`` of their ``ColumnDataSource``s (window mode: a few kB per day) or moves the day marker
(continuous mode: one number per plot), so a day change is one small patch message and no glyph is rebuilt.
Expensive results (simulation, continuous pass, correlations, ridge probe) are computed once per checkpoint and
dataset and cached in the process (see :mod:`xaiscope.dashboard.compute`).
"""

from __future__ import annotations

import asyncio
import html
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
import colorcet
from bokeh.events import Tap
from bokeh.layouts import gridplot
from bokeh.models import (BasicTicker, ColorBar, ColumnDataSource, FixedTicker, HoverTool, Label, LinearColorMapper,
                          Range1d, Span, TapTool)
from bokeh.palettes import Viridis256
from bokeh.plotting import figure


from xaiscope.core import analysis, hydro
from xaiscope.dashboard import compute
from xaiscope.dashboard.bokeh_speedups import BokehSpeedups
from xaiscope.dashboard.session import SessionClosed, doc_closed, run_in_doc
from xaiscope.dashboard.state import AppState, describe_error

log = logging.getLogger("xaiscope.dashboard")
timing_log = logging.getLogger("xaiscope.dashboard.timings")  # DEBUG: server time of every scrub step

if hv.Store.current_backend != "bokeh" or not hv.Store.options(backend="bokeh"):
    hv.Store.set_current_backend("bokeh")
hv.Store.set_current_backend("bokeh")


COLORS = {
    "prcp": "#2b6cb0", "tmean": "#c05621", "tband": "#fbd38d", "swe": "#4fa3c7", "qobs": "#1a202c",
    "qsim": "#d53f8c", "qbench": "#718096", "neg": "#e53e3e", "day": "#e53e3e",
}
CELL_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
               "#bcbd22", "#7f7f7f"]
_PREFETCH = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xaiscope-prefetch")
MAX_TRACES = 10
# The date picker, the URL, the skill of the shown period and the download names follow the scrubber once the day
# has rested this long (see _after_rest): redrawing the picker's calendar, a URL round trip and the skill text cost
# the browser and the server more than the plots themselves on every step of a scrub.
RESTED_MS = 400
RASTER_MAX_COLUMNS = 3000  # heatmaps wider than this (days) are drawn as k-day means aggregated by Datashader


def nice_ceiling(m: float) -> float:
    """The smallest of 1, 1.5, 2, 3, 5, 7.5 × 10^k that is ≥ m: colour limits that stay put while scrubbing (so
    colours compare from day to day, and the colour bar is not laid out again on every step)."""
    if not np.isfinite(m) or m <= 0:
        return 1.0
    k = np.floor(np.log10(m))
    for step in (1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0):
        v = float(step * 10.0 ** k)
        if v >= m * (1 - 1e-12):
            return v
    return float(10.0 ** (k + 1))


def nice_range(lo: float, hi: float, zero: bool = False) -> tuple[float, float]:
    """Axis limits for the data range ``lo``…``hi`` rounded outward to a nice step (a tenth of the
    :func:`nice_ceiling` of the span; ``zero``: from 0 for quantities that cannot be negative, unless the data
    are). Computed on the server so that the axes stay put while scrubbing: a range that only changes when the
    data leave it is neither re-sent nor laid out again, and the browser has no automatic range to report back."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return (0.0, 1.0)
    if zero:
        top = nice_ceiling(hi * 1.05) if hi > 0 else 1.0
        if lo >= 0:
            return (0.0, top)
        step = nice_ceiling(max(top, -lo)) / 10
        return (float(np.floor(lo * 1.05 / step) * step), top)
    span = hi - lo
    if span <= 0:
        span = abs(hi) or 1.0
    step = nice_ceiling(span * 1.1) / 10
    return (float(np.floor((lo - 0.05 * span) / step) * step), float(np.ceil((hi + 0.05 * span) / step) * step))


def _finite_extent(*arrays) -> tuple[float, float]:
    """(min, max) over the finite values of all ``arrays``; (nan, nan) when there are none."""
    vals = [np.asarray(v) for v in arrays]
    vals = [v[np.isfinite(v)] for v in vals]
    vals = [v for v in vals if v.size]
    if not vals:
        return np.nan, np.nan
    return float(min(v.min() for v in vals)), float(max(v.max() for v in vals))


def _set_range(rng, lo: float, hi: float) -> None:
    """Move a Range1d (and its reset target) only when it changes: an unchanged range sends nothing."""
    if (rng.start, rng.end) != (lo, hi):
        rng.update(start=lo, end=hi, reset_start=lo, reset_end=hi)


def aggregate_days(arr: np.ndarray, max_columns: int = RASTER_MAX_COLUMNS) -> tuple[np.ndarray, int]:
    """The (time, cell) array as a (cell, column) image of at most ``max_columns`` columns, and the days per column.

    Short records come back as they are (k = 1). Long ones (the continuous mode over decades) are averaged over
    k = ceil(days / max_columns) consecutive days per column with Datashader's raster mean (the last column
    averages the days that remain): a screen has no more pixels than that, and the page stays light.
    """
    n, n_cells = arr.shape
    k = max(1, -(-n // max_columns))
    if k == 1:
        return np.ascontiguousarray(arr.T, dtype=np.float32), 1
    import datashader

    m = -(-n // k)
    padded = np.full((m * k, n_cells), np.nan, dtype=np.float32)
    padded[:n] = arr
    da = xr.DataArray(padded.T, dims=("y", "x"),
                      coords={"y": np.arange(n_cells, dtype=float), "x": np.arange(m * k, dtype=float)})
    canvas = datashader.Canvas(plot_width=m, plot_height=n_cells, x_range=(-0.5, m * k - 0.5),
                               y_range=(-0.5, n_cells - 0.5))
    image = canvas.raster(da, agg="mean", interpolate="nearest").values
    return np.ascontiguousarray(image, dtype=np.float32), k


_DATASHADER_WARM = False


def warm_up_datashader() -> None:
    """Compile Datashader's raster kernels (a few seconds, once per process) before a user needs them."""
    aggregate_days(np.zeros((2 * RASTER_MAX_COLUMNS + 1, 2), dtype=np.float32))
LEGEND_CSS = """
.xs-legend { font-size: 0.9em; line-height: 1.6; white-space: nowrap; overflow-x: auto; }
.xs-legend-item { margin-right: 12px; }
.xs-legend-title { font-weight: 600; margin-right: 6px; margin-left: 4px; }
"""
DAY_MS = 86_400_000.0
SERIES = ("prcp", "tmin", "tmax", "tmean", "swe", "qobs", "q_benchmark", "qsim")


def _empty_frame() -> pd.DataFrame:
    idx = pd.DatetimeIndex([pd.Timestamp("2000-01-01"), pd.Timestamp("2000-01-02")], name="time")
    cols = ["prcp", "tmin", "tmax", "tmean", "swe", "qobs", "q_benchmark", "qsim", "soil_moisture"]
    return pd.DataFrame({c: [np.nan, np.nan] for c in cols}, index=idx)


def _ms(times) -> np.ndarray:
    """Datetimes as float milliseconds since 1970 (what Bokeh's datetime axes use)."""
    return np.asarray(times, dtype="datetime64[ms]").astype(np.int64).astype(np.float64)


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
    link_date = param.CalendarDate(default=None, allow_None=True, precedence=-1,
                                   doc="the day as the page's URL holds it: follows ``date`` once the day has "
                                       "rested (RESTED_MS), and sets ``date`` when a link is opened")
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
        self._qsim_arr = np.zeros(0)
        self._token = 0
        self._build_widgets()
        self._plot_pane = pn.pane.Bokeh(self._build_plots(), sizing_mode="stretch_width")
        self.state.param.watch(self._on_source, ["ckpt", "ds", "error"])
        self.param.watch(self._on_date, ["date"])
        self.param.watch(self._on_link_date, ["link_date"])
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
        # a fixed height: a new status line must not make the browser lay out the whole page again
        self._legend_pane = pn.pane.HTML("", sizing_mode="stretch_width", height=28, margin=(0, 10),
                                         stylesheets=[LEGEND_CSS])
        # HTML in a fixed-height box: updated on every day of a scrub (no Markdown rendering; no new layout; the
        # browser swaps the inner HTML only, where a Bokeh Div would render itself again)
        self._status_md = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["xs-status"], height=32,
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
        """The stacked, shared-x Bokeh figures and the data sources that feed them.

        Built once per checkpoint/data and on a presentation-mode switch; everything else (day, mode, layer,
        internal, cells) only replaces source data, the shared x-range, the colour mapper's limits, the day marker
        and the heatmap title."""
        o = self._opts()
        lw, fs, hk = o["lw"], o["fontscale"], o["h"]
        self._src = {
            "series": ColumnDataSource({k: np.zeros(0) for k in ("time", *SERIES)}),
            "neg": ColumnDataSource({"time": np.zeros(0), "qsim": np.zeros(0)}),
            "heat": ColumnDataSource({"image": [np.zeros((1, 1))], "x": [0.0], "y": [-0.5], "dw": [1.0],
                                      "dh": [1.0]}),
            "marks": ColumnDataSource({"y": np.zeros(0)}),
            # only the selected cells' columns travel (y0 always, NaN when none is selected): unselected
            # trace renderers are hidden and point at y0
            "traces": ColumnDataSource({"time": np.zeros(0), "y0": np.zeros(0)}),
        }
        self._xr = Range1d(start=0.0, end=DAY_MS * 365)
        # y ranges set by the server (nice_range); see _push_series / _push_states
        self._yr = {k: Range1d(start=0.0, end=1.0) for k in ("prcp", "temp", "swe", "flow", "traces")}
        self._spans = []
        title_px, tick_px, label_px = f"{13 * fs:.0f}px", f"{11 * fs:.0f}px", f"{12 * fs:.0f}px"

        def fig(height, title, xaxis=False, **kw):
            f = figure(height=int(height * hk), x_axis_type="datetime", x_range=self._xr, title=title,
                       tools="xpan,xwheel_zoom,box_zoom,reset,save", active_scroll="xwheel_zoom",
                       sizing_mode="stretch_width", min_border_left=70, min_border_right=90,
                       output_backend="canvas", **kw)
            f.title.text_font_size = title_px
            f.axis.major_label_text_font_size = tick_px
            f.axis.axis_label_text_font_size = label_px
            f.xaxis.visible = xaxis
            # few tick labels: every label is text the browser draws again on each day of a scrub
            f.yaxis.ticker.desired_num_ticks = 4
            f.toolbar.logo = None
            f.grid.grid_line_alpha = 0.35
            span = Span(location=self._day_ms(), dimension="height", line_color=COLORS["day"],
                        line_dash="dashed", line_width=max(1.5, lw), line_alpha=0.9, name="xs-day",
                        visible=self.mode == "continuous",
                        # drawn on the canvas's overlay layer: moving it repaints only that layer, not the
                        # decades of data under it (continuous mode scrubs by moving these markers alone)
                        level="overlay")
            f.add_layout(span)
            self._spans.append(span)
            return f

        s = self._src["series"]
        # units in the titles, no rotated axis labels: every text is drawn again on each day of a scrub
        f_prcp = fig(110, "Precipitation (mm/day)", y_range=self._yr["prcp"])
        self._prcp_bar = f_prcp.vbar(x="time", top="prcp", width=0.8 * DAY_MS, source=s, color=COLORS["prcp"],
                                     line_color=COLORS["prcp"], line_width=lw * 0.4)
        f_temp = fig(120, "Air temperature (°C; band tmin–tmax, 0 °C dotted)",
                     y_range=self._yr["temp"])
        f_temp.varea(x="time", y1="tmin", y2="tmax", source=s, color=COLORS["tband"], alpha=0.6)
        f_temp.line(x="time", y="tmean", source=s, color=COLORS["tmean"], line_width=lw * 0.8)
        f_temp.add_layout(Span(location=0, dimension="width", line_color="#4a5568", line_width=1,
                               line_dash="dotted"))
        f_swe = fig(110, self._swe_title(), y_range=self._yr["swe"])
        f_swe.varea(x="time", y1=0, y2="swe", source=s, color=COLORS["swe"], alpha=0.7)
        f_swe.line(x="time", y="swe", source=s, color=COLORS["swe"], line_width=lw * 0.5)
        f_flow = fig(170, "Streamflow (mm/day)", y_range=self._yr["flow"])
        r_obs = f_flow.line(x="time", y="qobs", source=s, color=COLORS["qobs"], line_width=lw * 0.9)
        r_bench = f_flow.line(x="time", y="q_benchmark", source=s, color=COLORS["qbench"], line_width=lw * 0.8,
                              line_dash="dotted")
        r_sim = f_flow.line(x="time", y="qsim", source=s, color=COLORS["qsim"], line_width=lw * 0.9)
        r_neg = f_flow.scatter(x="time", y="qsim", source=self._src["neg"], marker="x", size=7 * hk,
                               color=COLORS["neg"], line_width=2)
        self._flow_renderers = {"observed": r_obs, "benchmark": r_bench, "lstm": r_sim, "negative": r_neg}
        # Legends are HTML beside the figures (see legend_html): a Bokeh Legend is redrawn as DOM whenever any
        # data source of its renderers changes, i.e. on every day of a scrub.

        cmap, (lo, hi) = self._color_for_gate()
        self._mapper = LinearColorMapper(palette=cmap, low=lo, high=hi, nan_color=(0, 0, 0, 0))
        f_heat = fig(240, " ",
                     y_range=Range1d(-0.5, max(self.n_cells, 1) - 0.5))
        f_heat.grid.visible = False
        r_img = f_heat.image(image="image", x="x", y="y", dw="dw", dh="dh", source=self._src["heat"],
                             color_mapper=self._mapper)
        f_heat.hspan(y="y", source=self._src["marks"], line_color="#111111", line_width=1.5 * hk, line_alpha=0.9)
        f_heat.add_tools(HoverTool(renderers=[r_img], tooltips=[("day", "$x{%F}"), ("cell", "$y{0}"),
                                                                ("value", "@image{0.000}")],
                                   formatters={"$x": "datetime"}), TapTool())
        f_heat.yaxis.ticker = FixedTicker(ticks=list(range(0, max(self.n_cells, 1), 5 if self.n_cells > 10 else 1)))
        f_heat.add_layout(ColorBar(color_mapper=self._mapper, width=10, major_label_text_font_size=tick_px,
                                   ticker=BasicTicker(desired_num_ticks=4)),
                          "right")
        f_heat.min_border_right = 20
        # the title names the shown day; a Label (drawn on the canvas) instead of the plot's Title, whose new
        # text would make the browser measure and lay out the figures again on every day
        self._heat_label = Label(x=4, y=2, x_units="screen", y_units="screen", text=self._image_title(),
                                 text_font_size=title_px, text_font_style="bold", text_color="#1a202c",
                                 text_baseline="bottom", background_fill_color="white", background_fill_alpha=0.0,
                                 level="overlay")  # a new title repaints the overlay layer only
        f_heat.add_layout(self._heat_label, "above")
        f_heat.on_event(Tap, lambda event: self._on_tap(x=event.x, y=event.y))
        self._heat_fig = f_heat

        f_tr = fig(190, "Selected cells", xaxis=True, y_range=self._yr["traces"])
        self._trace_renderers = []
        for k in range(MAX_TRACES):
            r = f_tr.line(x="time", y="y0", source=self._src["traces"], line_width=lw,
                          color=CELL_COLORS[k % len(CELL_COLORS)], visible=False)
            self._trace_renderers.append(r)
        f_tr.add_tools(HoverTool(renderers=self._trace_renderers, tooltips=[("day", "@time{%F}"), ("value", "$y")],
                                 formatters={"@time": "datetime"}, mode="vline"))
        self._figs = {"prcp": f_prcp, "temp": f_temp, "swe": f_swe, "flow": f_flow, "heat": f_heat,
                      "traces": f_tr}
        grid = gridplot([[f] for f in self._figs.values()], toolbar_location="right", merge_tools=True,
                        sizing_mode="stretch_width")
        return grid

    def _sim_label(self) -> str:
        return "LSTM" if self._sim_ready else "LSTM (continuous pass; per-day simulation running)"

    def _period_index(self) -> tuple[int, int]:
        """Positions (first, last) in the record of the shown period."""
        if self.mode == "window":
            end = self._day_index()
            return end - hydro.window_length(self.ckpt) + 1, end
        return 0, len(self._days) - 1

    def _set_qsim(self, qsim: pd.Series) -> None:
        self._qsim = qsim
        self._qsim_arr = qsim.reindex(self._days).to_numpy(dtype=np.float64)

    def _push_series(self) -> None:
        """Forcing and flow of the shown period into the plots' source; the shared x-range follows it."""
        a, b = self._period_index()
        sl = slice(a, b + 1)
        data = {"time": self._days_ms[sl], **{k: self._cols[k][sl] for k in SERIES if k != "qsim"},
                "qsim": self._qsim_arr[sl]}
        self._src["series"].data = data
        neg = data["qsim"] < 0
        if neg.any() or len(self._src["neg"].data["time"]):
            self._src["neg"].data = {"time": data["time"][neg], "qsim": data["qsim"][neg]}
        x0, x1 = float(data["time"][0] - DAY_MS / 2), float(data["time"][-1] + DAY_MS / 2)
        _set_range(self._xr, x0, x1)

        def ext(*cols):
            return _finite_extent(*(data[c] for c in cols if c in data))

        _set_range(self._yr["prcp"], *nice_range(*ext("prcp"), zero=True))
        _set_range(self._yr["temp"], *nice_range(*ext("tmin", "tmax", "tmean")))
        _set_range(self._yr["swe"], *nice_range(*ext("swe"), zero=True))
        _set_range(self._yr["flow"], *nice_range(*ext("qobs", "q_benchmark", "qsim"), zero=True))
        # thin bars for the whole record, day-wide bars for a window
        self._prcp_bar.glyph.width = DAY_MS * (0.8 if self.mode == "window" else 1.0)

    def _push_states(self, what: str = "all") -> None:
        """Heatmap image, cell marks and traces of the shown internals (only the traces when ``what='cells'``)."""
        arr = self._state_array()  # (time, cell)
        a, _ = self._period_index()
        t = self._days_ms[a:a + arr.shape[0]]
        if what != "cells":
            x0 = float(t[0] - DAY_MS / 2)
            image, self._days_per_column = aggregate_days(arr, RASTER_MAX_COLUMNS)
            self._src["heat"].data = {"image": [image], "x": [x0], "y": [-0.5],
                                      "dw": [float(image.shape[1] * self._days_per_column * DAY_MS)],
                                      "dh": [float(arr.shape[1])]}
            self._set_color_limits(arr)
            self._heat_label.text = self._image_title()
        marks = np.array([c + d for c in self.cells for d in (-0.5, 0.5)], dtype=float)
        if not np.array_equal(self._src["marks"].data["y"], marks):  # unchanged marks: nothing to send or redraw
            self._src["marks"].data = {"y": marks}
        cols = {"time": t, "y0": np.full(len(t), np.nan)}
        for k, c in enumerate(self.cells[:MAX_TRACES]):
            cols[f"y{k}"] = arr[:, c]
        self._src["traces"].data = cols
        for k, r in enumerate(self._trace_renderers):
            on = k < len(self.cells)
            field = f"y{k}" if on else "y0"
            if r.glyph.y != field:
                r.glyph.y = field
            if r.visible != on:
                r.visible = on
        _set_range(self._yr["traces"], *nice_range(*_finite_extent(*(arr[:, c] for c in self.cells[:MAX_TRACES]))))
        self._legend_pane.object = self.legend_html()

    def legend_entries(self) -> list[tuple[str, str, str]]:
        """``(label, colour, style)`` of every legend entry: the streamflow lines, then the selected cells."""
        flow = [("observed", COLORS["qobs"], "solid"), ("SAC-SMA + Snow-17", COLORS["qbench"], "dotted"),
                (self._sim_label(), COLORS["qsim"], "solid"), ("negative (impossible)", COLORS["neg"], "cross")]
        cells = [(f"cell {c}", CELL_COLORS[k % len(CELL_COLORS)], "solid") for k, c in enumerate(self.cells)]
        return flow + cells

    def legend_html(self) -> str:
        """The legends of the streamflow and selected-cell panels as one HTML line."""
        def entry(label, color, style):
            if style == "cross":
                mark = f'<b style="color:{color}">×</b>'
            else:
                mark = (f'<span style="display:inline-block;width:22px;vertical-align:middle;'
                        f'border-top:3px {style} {color}"></span>')
            return f'<span class="xs-legend-item">{mark}&nbsp;{html.escape(label)}</span>'

        entries = self.legend_entries()
        flow, cells = entries[:4], entries[4:]
        parts = ['<span class="xs-legend-title">Streamflow:</span>', *(entry(*e) for e in flow)]
        parts += ['<span class="xs-legend-title">Selected cells:</span>']
        parts += [entry(*e) for e in cells] or ['<i>none (click heatmap rows)</i>']
        return '<div class="xs-legend">' + " ".join(parts) + "</div>"

    def _state_array(self) -> np.ndarray:
        st = self.shown_states()
        return np.asarray(st[self.gate].values[:, self.layer, :])

    def _set_color_limits(self, arr: np.ndarray) -> None:
        cmap, (lo, hi) = self._color_for_gate()
        if not np.isfinite(lo):
            m = float(np.nanmax(np.abs(arr))) if arr.size and np.isfinite(arr).any() else 1.0
            m = nice_ceiling(m or 1.0)
            lo, hi = -m, m
        if self._mapper.palette != cmap:
            self._mapper.palette = cmap
        if (self._mapper.low, self._mapper.high) != (lo, hi):
            self._mapper.update(low=lo, high=hi)

    def _push_day(self) -> None:
        """The day marker and the heatmap title (continuous mode: the only things that move with the day)."""
        loc, on = self._day_ms(), self.mode == "continuous"
        for span in self._spans:  # window mode hides the markers: leave them alone (each change is a repaint)
            if span.visible != on:
                span.visible = on
            if on and span.location != loc:
                span.location = loc
        self._heat_label.text = self._image_title()

    def _day_ms(self) -> float:
        if self.date is None:
            return 0.0
        return float(pd.Timestamp(self.date).value / 1e6)

    def _swe_title(self) -> str:
        if self.ds is not None and str(self.ds.attrs.get("basin_id", "")).startswith("synthetic"):
            return "Snow water equivalent (mm; true, synthetic basin)"
        return "Snow water equivalent (mm; Snow-17 model, CAMELS)"

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
        """Palette and limits of the heatmap: gates in [0, 1]; g and h in [-1, 1]; c symmetric around 0 (NaN:
        fitted to the shown data)."""
        diverging = list(colorcet.coolwarm)
        if self.gate in ("i", "f", "o"):
            return list(Viridis256), (0.0, 1.0)
        if self.gate in ("g", "h"):
            return diverging, (-1.0, 1.0)
        return diverging, (np.nan, np.nan)

    def _image_title(self) -> str:
        label = compute.GATE_LABELS[self.gate]
        when = (f"window ending {self.date}" if self.mode == "window" else f"whole record, day {self.date}")
        k = getattr(self, "_days_per_column", 1)
        if self.mode == "continuous" and k > 1:
            when += f", {k}-day means"
        return f"{label}, layer {self.layer} — {when} (one row per cell: click a row to select it)"

    # ------------------------------------------------------------------------------------ panel
    def __panel__(self):
        if self._layout is None:
            self._layout = self._make_layout()
            if self._in_server():
                pn.state.onload(self._resync_player)
        return self._layout

    def _resync_player(self) -> None:
        """Move the player's own slider to the selected day once the page is up: on its first render the
        browser clamps the slider's value to its default 0–100 range before it learns the real bounds."""
        doc = pn.state.curdoc
        models = [m for m, _ in list(self._player._models.values())]
        if not models or doc is None:
            return
        idx = int(self._player.value)
        other = idx - 1 if idx > self._player.start else idx + 1
        for m in models:
            m.value = other

        def back():
            for m in models:
                m.value = idx
        doc.add_next_tick_callback(back)

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
            dynamic=True, sizing_mode="stretch_width",
        )
        tabs.param.watch(lambda e: self._update_skill(table=True) if e.new == 2 else None, "active")
        return pn.Column(self._title_md, self._alert, self._warn, self._progress_md, self._progress, controls,
                         self._status_md, self._legend_pane, self._plot_pane, tabs, BokehSpeedups(), sizing_mode="stretch_width",
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
        self._cols = {k: self._frame[k].to_numpy(dtype=np.float64) for k in SERIES if k != "qsim"}
        self._days_ms = _ms(ds["time"].values)
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
        self._player.param.update(start=self._first_idx, end=len(self._days) - 1)
        self._set_player(self._day_index())
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
        global _DATASHADER_WARM
        if not _DATASHADER_WARM and self.ds is not None and self.ds.sizes.get("time", 0) > RASTER_MAX_COLUMNS:
            _DATASHADER_WARM = True
            _PREFETCH.submit(warm_up_datashader)
        if self._in_server():
            token, doc = self._token, pn.state.curdoc

            async def run():
                await self._prepare_async(token, key, doc)

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

    _doc_closed = staticmethod(doc_closed)
    _in_doc = staticmethod(run_in_doc)

    def _hide_progress(self) -> None:
        self._progress.param.update(visible=False, active=False, value=0)
        self._progress_md.param.update(object="", visible=False)

    async def _prepare_async(self, token: int, key, doc) -> None:
        loop = asyncio.get_running_loop()
        try:
            quick = self._quick_steps()
            for k, (label, step) in enumerate(quick):
                self._show_progress(label, k / len(quick))
                await asyncio.sleep(0.01)
                await asyncio.to_thread(step)
                if token != self._token:
                    return
            await self._in_doc(doc, self._guard, "Preparing the view", self._finish_prepare, key)
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
                await self._in_doc(doc, self._guard, "Finishing " + label.lower(), self._slow_done, what)
        except SessionClosed:
            log.info("the browser session closed while the cell-state view was being prepared")
            return
        except Exception as err:  # noqa: BLE001
            log.error("preparing the cell-state view failed", exc_info=True)
            self._show_error(f"Preparing the view: {describe_error(err)}")
        finally:
            if token == self._token and not self._doc_closed(doc):
                try:
                    await self._in_doc(doc, self._hide_progress)
                except Exception:  # noqa: BLE001 - the session is gone
                    log.debug("could not hide the progress bar", exc_info=True)

    def _finish_prepare(self, key) -> None:
        self._prepared_key = key
        if self._sim_ready:
            self._set_qsim(compute.simulation(self.ckpt, self.ds, self.state.data_key, self.state.device))
        else:
            self._set_qsim(compute.continuous_qsim(self.ckpt, self.ds, self.state.data_key, self.state.device))
        self._set_controls_enabled(True)
        self._rebuild_plots()
        self._update_corr()
        self._update_probe()
        self._update_weights()
        if not self.cells and self._corr_long is not None and "swe" in set(self._corr_long["variable"]):
            self.select_best_cell()  # start on the snow cell: the view's headline question
        self._refresh()

    def _slow_done(self, what: str) -> None:
        if what == "sim":
            self._set_qsim(compute.simulation(self.ckpt, self.ds, self.state.data_key, self.state.device))
            self._sim_ready = True
            self._legend_pane.object = self.legend_html()
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

    def _set_player(self, idx: int) -> None:
        """Put the player on day ``idx``: its ``value`` and the position of its own slider (``value_throttled``,
        which the browser draws from)."""
        if self._player.value != idx or self._player.value_throttled != idx:
            with param.edit_constant(self._player):
                self._player.param.update(value=idx, value_throttled=idx)

    def _on_date(self, *_):
        if not hasattr(self, "_days") or self.date is None:
            return
        t0 = time.perf_counter()
        # one message to the browser for the whole step: the slider, the player, the plots and the status line
        with pn.io.hold():
            # keep the widgets in step without re-triggering
            self._slider.value = self.date
            idx = self._day_index()
            self._set_player(idx)
            if self.ready:
                self._guard("Updating the day", self._refresh, "date", False)
        # the whole step on the server, the message to the browser included (benchmarks/scrub_latency.py reads it)
        self.timings["step_ms"] = 1000 * (time.perf_counter() - t0)
        if self.ready and self.mode == "window":
            # the neighbouring days' windows, computed in a thread once the message is out (a thread started
            # before would compete with building the message for the interpreter and the cores)
            self._prefetch()
        timing_log.debug("day %s: computed in %.1f ms, updated in %.1f ms, step with message %.1f ms", self.date,
                         self.timings.get("compute_ms", 0), self.timings.get("update_ms", 0), self.timings["step_ms"])
        self._after_rest()

    def _on_link_date(self, *_):
        """A day from the URL (a link being opened): show it."""
        if self.link_date is None or self.link_date == self.date:
            return
        if self.param.date.bounds is None:  # before the data are open: _setup_source keeps it if in range
            self.date = self.link_date
        else:
            self._set_date(self.link_date)

    def _after_rest(self) -> None:
        """What follows the day once it has rested for ``RESTED_MS`` (at once outside a served page): the date
        picker, the URL (``link_date``), the skill of the shown period and the download file names. While
        scrubbing, the slider and the plots already show the day; re-drawing the picker's calendar alone cost the
        browser ~15 ms a step, each URL change a round trip, the skill text a Markdown render."""
        doc = pn.state.curdoc
        if not self._in_server() or doc is None:
            self._rested()
            return
        self._rest_token = token = getattr(self, "_rest_token", 0) + 1

        def sync():
            if token == self._rest_token:
                with pn.io.hold():
                    self._guard("Updating the readouts", self._rested)

        doc.add_timeout_callback(sync, RESTED_MS)

    def _rested(self) -> None:
        if self.date is None:
            return
        if self._picker.value != self.date:
            self._picker.value = self.date
        if self.link_date != self.date:
            self.link_date = self.date
        if self.ready:
            self._update_skill(table=False)
            self._update_filenames()

    def _on_view_change(self, *events):
        names = {e.name for e in events}
        if "layer" in names:
            self._layer_w.value = self.layer
            self.cells = [c for c in self.cells if c < self.n_cells]
            self._update_weights()
        if "gate" in names:
            self._gate_w.value = self.gate
        if self.ready:
            if "gate" in names:
                self._guard("Computing correlations", self._update_corr)
            self._guard("Updating the plots", self._refresh)

    def _on_mode(self, *_):
        if self.ready:
            self._guard("Switching mode", self._refresh)

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
        """The numbers behind the plots for the current settings, as pandas/xarray objects (tests, downloads).
        The plots themselves get the same numbers as plain arrays (see :meth:`plot_sources`)."""
        states = self.shown_states()
        a, b = self.shown_period()
        frame = self._frame.loc[a:b].copy()
        frame["qsim"] = self._qsim.reindex(frame.index).to_numpy()
        arr = states[self.gate].isel(layer=self.layer)  # (time, cell)
        image = xr.DataArray(arr.values.T, coords={"cell": np.arange(arr.shape[1]), "time": arr["time"].values},
                             dims=("cell", "time"), name=f"{self.gate} (layer {self.layer})")
        traces = {f"cell {c}": pd.Series(arr.values[:, c], index=pd.DatetimeIndex(arr["time"].values))
                  for c in self.cells}
        return {"series": frame, "image": image, "traces": traces, "day": pd.Timestamp(self.date),
                "marks": list(self.cells), "states": states}

    def plot_sources(self) -> dict[str, dict]:
        """The data the Bokeh plots hold now (``ColumnDataSource.data`` by name: series, neg, heat, marks,
        traces)."""
        return {k: dict(src.data) for k, src in self._src.items()}

    def _prefetch(self, ahead: int = 3) -> None:
        """Compute the windows of the next and previous days in the background (scrubbing hits the cache)."""
        if not self._background or (self._prefetching is not None and not self._prefetching.done()):
            return
        idx = self._day_index()
        days = [self._days[i] for i in [idx + k for k in range(1, ahead + 1)] + [idx - 1]
                if self._first_idx <= i < len(self._days)]
        ckpt, ds, key, dev = self.ckpt, self.ds, self.state.data_key, self.state.device
        self._prefetching = _PREFETCH.submit(compute.prefetch_windows, ckpt, ds, key, days, dev)

    def _refresh(self, what: str = "all", prefetch: bool = True) -> None:
        """Push the current data into the plots, in place.

        ``what``: ``"all"`` (everything), ``"date"`` (window mode: the window's series and internals; continuous
        mode: only the day marker and the title) or ``"cells"`` (marks and traces)."""
        if not self.ready or self.date is None:
            return
        t0 = time.perf_counter()
        cont = self.mode == "continuous"
        with pn.io.hold():
            if what == "all" or (what == "date" and not cont):
                self._push_series()
            t1 = time.perf_counter()
            if what == "all" or (what == "date" and not cont):
                self._push_states("all")
            elif what == "cells":
                self._push_states("cells")
            self.timings["compute_ms"] = 1000 * (time.perf_counter() - t1)
            self._push_day()
        self.timings["update_ms"] = 1000 * (time.perf_counter() - t0)
        if prefetch and not cont and what in ("all", "date"):
            self._prefetch()
        if what == "date":
            # the status line goes out with the plots; the skill and file names follow once the day rests
            self._set_status()
        else:
            self._update_readouts(skill_table=(what == "all"))

    def _update_readouts(self, skill_table: bool = False) -> None:
        """Status line, skill text (and table when asked or visible) and download file names."""
        if not self.ready or self.date is None:
            return
        self._update_skill(table=skill_table)
        self._set_status()
        self._update_filenames()

    def _update_filenames(self) -> None:
        for name, dl in (("series", self._dl_series), ("internals", self._dl_states)):
            ext = "csv" if name == "series" else "nc"
            dl.filename = f"xaiscope_{name}_{self._file_tag()}.{ext}"

    def _file_tag(self) -> str:
        bid = str(self.ds.attrs.get("basin_id", "basin")).replace(":", "-")
        return f"{bid}_{self.mode}_{self.date}_{self.gate}_l{self.layer}"

    def _status_text(self) -> str:
        a, b = self.shown_period()
        idx = self._day_index()
        qday, obs, swe = self._qsim_arr[idx], self._cols["qobs"][idx], self._cols["swe"][idx]
        bits = [f"<b>{self.date}</b>", f"shown {a.date()} … {b.date()}",
                f"Q obs {obs:.2f} · LSTM {qday:.2f} mm/day", f"SWE {swe:.0f} mm" if np.isfinite(swe) else "",
                f"<span class='xs-ms'>computed in {self.timings.get('compute_ms', 0):.0f} ms, "
                f"updated in {self.timings.get('update_ms', 0):.0f} ms</span>"]
        return " · ".join(b for b in bits if b)

    def _set_status(self) -> None:
        text = self._status_text()
        self.status = text
        if self._status_md.object != text:
            self._status_md.object = text

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
