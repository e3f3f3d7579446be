"""The ENSO view: ConvLSTM Niño 3.4 forecasts, their maps and internal states, against persistence and a LIM.

In a notebook::

    from xaiscope.dashboard.enso import EnsoExplorer
    EnsoExplorer(checkpoint="assets/checkpoints/enso_convlstm", sst=None)   # None: the shipped 5° demo data

Start months are initial (last input) months. The hindcast (every start month, all leads) of a checkpoint is
computed once per process and cached by the checkpoint's sha256 and the data; moving the scrubber only looks
forecasts up and runs the model once for the internal state maps of that start month. Plots are HoloViews
``DynamicMap`` objects driven by the explorer's parameters, so they update in place.

Maps are drawn with GeoViews on the data's 5° grid in a Pacific-centred Plate Carrée frame; coastlines come from
the shipped Natural Earth GeoJSON (cartopy's downloader is disabled: nothing is fetched at run time).
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import panel as pn
import param
import xarray as xr

import cartopy.crs as ccrs
from bokeh.models import CustomJSTickFormatter
import cartopy.io
import geoviews as gv
import geoviews.plotting.bokeh  # noqa: F401 - registers the GeoViews Bokeh plots
import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401

from xaiscope.core.errors import XaiscopeError

log = logging.getLogger("xaiscope.dashboard")


def _no_download(self, url):  # pragma: no cover - only reached if something asks cartopy for a download
    raise XaiscopeError(f"xaiscope never downloads at run time (cartopy asked for {url}); coastlines come from "
                        "assets/natural_earth.")


cartopy.io.Downloader._urlopen = _no_download
if hv.Store.current_backend != "bokeh" or "bokeh" not in hv.Store.renderers:
    hv.Store.set_current_backend("bokeh")

CRS = ccrs.PlateCarree(central_longitude=180)  # plot frame: x = lon - 180, the Pacific in the middle
DATA_CRS = ccrs.PlateCarree()
CMAP = "RdBu_r"
LEADS = tuple(range(1, 7))
COLORS = {"observed": "black", "convlstm": "#d62728", "persistence": "#7f7f7f", "lim": "#1f77b4"}


def default_checkpoint() -> Path:
    from xaiscope.assets import ASSETS

    return ASSETS / "checkpoints" / "enso_convlstm"


# ------------------------------------------------------------------------------------------------ coastlines
@lru_cache(maxsize=2)
def coastline_geometries(scale: str = "110m") -> tuple:
    """Shapely lines of the shipped Natural Earth coastline (lon -180..180)."""
    from shapely.geometry import shape
    from xaiscope.assets import ASSETS

    path = ASSETS / "natural_earth" / scale / "physical" / f"ne_{scale}_coastline.json"
    if not path.exists():
        raise XaiscopeError(f"{path}: Natural Earth coastline not found; reinstall xaiscope with its assets.")
    feats = json.loads(path.read_text())["features"]
    return tuple(shape(f["geometry"]) for f in feats)


def to_plot_frame(lines) -> list[np.ndarray]:
    """Lines in lon/lat (-180..180) → (x, y) arrays in the plot frame x = lon - 180 (mod 360, in -180..180),
    split where a line crosses the frame's edge (the Greenwich meridian)."""
    out = []
    for line in lines:
        geoms = getattr(line, "geoms", [line])
        for g in geoms:
            xy = np.asarray(g.coords, dtype=float)
            x = (xy[:, 0] + 360.0) % 360.0 - 180.0
            cuts = np.flatnonzero(np.abs(np.diff(x)) > 180.0) + 1
            for seg_x, seg_y in zip(np.split(x, cuts), np.split(xy[:, 1], cuts)):
                if len(seg_x) > 1:
                    out.append(np.column_stack([seg_x, seg_y]))
    return out


@lru_cache(maxsize=2)
def _coast_path(scale: str = "110m"):
    """Coastlines in the plot frame (shifted once, like the maps and the Niño 3.4 box)."""
    return gv.Path(to_plot_frame(coastline_geometries(scale)), crs=CRS).opts(color="#333333", line_width=0.8)


# Tick labels in real longitudes (°E/°W) although the frame's x is lon − 180.
LON_TICKS = CustomJSTickFormatter(code="""
    const lon = ((tick + 180 + 540) % 360) - 180;
    if (Math.abs(lon) < 1e-6 || Math.abs(Math.abs(lon) - 180) < 1e-6) { return Math.abs(lon).toFixed(0) + "°"; }
    return Math.abs(lon).toFixed(0) + (lon < 0 ? "°W" : "°E");
""")
LAT_TICKS = CustomJSTickFormatter(code="""
    if (Math.abs(tick) < 1e-6) { return "0°"; }
    return Math.abs(tick).toFixed(0) + (tick < 0 ? "°S" : "°N");
""")


def _nino_box():
    # Niño 3.4: 5°S–5°N, 190–240°E → plot frame x = lon - 180
    return gv.Rectangles([(10, -5, 60, 5)], crs=CRS).opts(fill_alpha=0, line_color="black", line_width=1.5,
                                                          line_dash="dashed")


# ------------------------------------------------------------------------------------------------ hindcast
@dataclass
class EnsoHindcast:
    """Everything the view shows that does not depend on the selection (computed once per checkpoint + data)."""

    ckpt: object
    ds: xr.Dataset
    x_all: np.ndarray           # (time, C, lat, lon) normalised model inputs
    init: pd.DatetimeIndex      # start (initial) months of the hindcast
    rows: np.ndarray            # position of each start month in ds.time
    maps: np.ndarray            # (N, lead, lat, lon) ConvLSTM maps, NaN on land
    nino: np.ndarray            # (N, lead) ConvLSTM Niño 3.4
    phase: np.ndarray           # (N, lead) class 0 La Niña, 1 neutral, 2 El Niño
    observed: xr.DataArray      # Niño 3.4 of the data (time)
    persistence: xr.DataArray   # (time, lead)
    lim: xr.DataArray           # (time, lead)
    skill: pd.DataFrame         # rows (model, lead): r, rmse, n on the test years
    seconds: float

    @property
    def sea(self) -> np.ndarray:
        return self.ds["land_mask"].values == 0


_CACHE: dict[tuple, EnsoHindcast] = {}


def _data_key(ds: xr.Dataset) -> str:
    t = ds["time"].values
    return f"{ds.attrs.get('files', '')}:{t[0]}:{t[-1]}:{ds.sizes.get('lat')}x{ds.sizes.get('lon')}:{id(ds)}"


def model_inputs(ckpt, ds: xr.Dataset) -> np.ndarray:
    """(time, C, lat, lon) float32 inputs, divided by the checkpoint's training standard deviations."""
    m = ckpt.manifest
    missing = [v for v in m["inputs"] if v not in ds]
    if missing:
        raise XaiscopeError(f"the SST dataset lacks {missing} that checkpoint {ckpt.path} needs; it has "
                            f"{list(ds.data_vars)}. Pass sst= with those variables (see xaiscope.data.sst).")
    if "land_mask" not in ds:
        raise XaiscopeError("the SST dataset has no land_mask; read it with xaiscope.data.sst.read_sst/demo_sst.")
    cfg = m["config"]
    if (ds.sizes["lat"], ds.sizes["lon"]) != (cfg["n_lat"], cfg["n_lon"]):
        raise XaiscopeError(f"sst grid {ds.sizes['lat']}x{ds.sizes['lon']} differs from the checkpoint's "
                            f"{cfg['n_lat']}x{cfg['n_lon']}; regrid it with xaiscope.data.sst.regrid.")
    return np.stack([ds[v].values / m["normalisation"][v]["std"] for v in m["inputs"]], 1).astype(np.float32)


def compute_hindcast(ckpt, ds: xr.Dataset, first_start=None) -> EnsoHindcast:
    """ConvLSTM hindcast for every start month from ``first_start`` (default: the checkpoint's validation
    start, i.e. out-of-sample months only) plus persistence and LIM for every month; cached."""
    from xaiscope.core.lim import fit_lim, lead_skill, persistence_forecast
    from xaiscope.core.train_enso import predict
    from xaiscope.data.sst import nino34

    m = ckpt.manifest
    first_start = first_start or m.get("val_period", [None])[0]
    key = (ckpt.sha256, _data_key(ds), str(first_start))
    if key in _CACHE:
        return _CACHE[key]
    t0 = time.perf_counter()
    x_all = model_inputs(ckpt, ds)
    window, n_leads = int(m["window"]), int(m["n_leads"])
    times = pd.DatetimeIndex(ds.time.values)
    lo = pd.Timestamp(first_start) if first_start else times[0]
    rows = np.array([t for t in range(window - 1, len(times)) if times[t] >= lo])
    if not len(rows):
        raise XaiscopeError(f"no start month with {window} input months from {first_start}; data span "
                            f"{times[0]:%Y-%m}..{times[-1]:%Y-%m}.")
    x = np.stack([x_all[t - window + 1:t + 1] for t in rows])
    out = predict(ckpt.model, x)
    sea = ds["land_mask"].values == 0
    maps = np.where(sea, out["map"], np.nan).astype(np.float32)
    observed = nino34(ds["sst_anomaly"])
    leads = list(range(1, n_leads + 1))
    pers = persistence_forecast(observed, leads)
    lim = fit_lim(ds["sst_anomaly"], ds["land_mask"], n_modes=int(m.get("train_config", {}).get("lim_modes", 20)),
                  period=tuple(m["train_period"]))
    lim_fc = lim.forecast_index(ds["sst_anomaly"], leads)
    conv = xr.DataArray(out["nino34"], dims=("time", "lead"), coords={"time": times[rows], "lead": leads})
    test = m.get("test_period", [None, None])
    frames = []
    for name, fc in (("convlstm", conv), ("persistence", pers), ("lim", lim_fc)):
        df = lead_skill(fc.sel(time=times[rows]) if name != "convlstm" else fc, observed, test[0],
                        pd.Timestamp(test[1]) + pd.offsets.MonthEnd(0) if test[1] else None)
        frames.append(df.assign(model=name).reset_index())
    skill = pd.concat(frames).set_index(["model", "lead"])
    hc = EnsoHindcast(ckpt, ds, x_all, times[rows], rows, maps, out["nino34"], out["phase_logits"].argmax(-1),
                      observed, pers, lim_fc, skill, time.perf_counter() - t0)
    _CACHE[key] = hc
    return hc


# ------------------------------------------------------------------------------------------------ the view
class EnsoExplorer(pn.viewable.Viewer):
    """ConvLSTM ENSO forecasts on maps, the Niño 3.4 series with baselines, skill by lead and internal states.

    Parameters
    ----------
    checkpoint : ENSO ConvLSTM checkpoint (folder, series folder or loaded ``Checkpoint``); default: the demo.
    sst : ``xr.Dataset`` on the checkpoint's grid with its inputs and ``land_mask`` (default: ``demo_sst()``).
    first_start : first start month of the ConvLSTM hindcast (default: the checkpoint's validation start).
    state : the app's shared state (accepted for the registry; the ENSO view keeps its own checkpoint).
    """

    start = param.String(default="", doc="start (initial, last input) month, YYYY-MM")
    lead = param.Integer(default=3, bounds=(1, 6), doc="forecast lead in months")
    layer = param.Integer(default=2, bounds=(0, None), doc="ConvLSTM layer of the state map")
    channel = param.Integer(default=0, bounds=(0, None), doc="channel of the state map")
    state_kind = param.Selector(default="h", objects=["h", "c"], doc="hidden (h) or cell (c) state")
    input_month = param.Integer(default=6, bounds=(1, 6), doc="input month of the state map (6 = start month)")
    error = param.String(default="", doc="last error shown to the user")

    def __init__(self, checkpoint=None, sst: xr.Dataset | None = None, first_start=None, state=None, **params):
        super().__init__(**params)
        self.timings: dict[str, float] = {}
        self._states_cache: dict[str, xr.Dataset] = {}
        self._alert = pn.pane.Alert("", alert_type="danger", visible=False)
        self.hc: EnsoHindcast | None = None
        try:
            from xaiscope.core import convlstm  # noqa: F401 - registers the model kind
            from xaiscope.core.checkpoint import Checkpoint, load_checkpoint
            from xaiscope.data.sst import demo_sst

            ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(
                checkpoint or default_checkpoint())
            if ckpt.manifest.get("kind") != "enso_convlstm":
                raise XaiscopeError(f"checkpoint {ckpt.path} is a {ckpt.manifest.get('kind')!r} model; the ENSO "
                                    "view needs an 'enso_convlstm' checkpoint (xaiscope train enso).")
            self.hc = compute_hindcast(ckpt, sst if sst is not None else demo_sst(), first_start)
        except Exception as err:  # noqa: BLE001 - shown to the user, app keeps running
            from xaiscope.dashboard.state import describe_error

            log.error("ENSO view: cannot prepare", exc_info=True)
            self._show_error(f"Cannot prepare the ENSO view: {describe_error(err)}")
            return
        m = self.hc.ckpt.manifest
        self.param.lead.bounds = (1, int(m["n_leads"]))
        self.param.input_month.bounds = (1, int(m["window"]))
        self.param.layer.bounds = (0, len(m["config"]["hidden"]) - 1)
        self.param.channel.bounds = (0, max(m["config"]["hidden"]) - 1)
        if self.input_month > m["window"]:
            self.input_month = int(m["window"])
        if self.start not in self.months:
            self.start = self._default_start()
        self.param.watch(self._clamp_channel, ["layer"])
        self.param.watch(self._check_start, ["start"])
        self._layout = None

    # ------------------------------------------------------------------------------ selection logic
    @property
    def months(self) -> list[str]:
        return [f"{t:%Y-%m}" for t in self.hc.init] if self.hc else []

    def _default_start(self) -> str:
        months = self.months
        test0 = self.hc.ckpt.manifest.get("test_period", [None])[0]
        # the strongest observed El Niño start month of the test years, else the last one
        obs = self.hc.observed.to_series().reindex(self.hc.init)
        if test0:
            obs = obs[obs.index >= pd.Timestamp(test0)]
        return f"{obs.idxmax():%Y-%m}" if obs.notna().any() else months[-1]

    def _check_start(self, event):
        if self.hc is not None and event.new not in self.months:
            self._show_error(f"start month {event.new!r} is not in the hindcast "
                             f"({self.months[0]}..{self.months[-1]}); pick one with the scrubber.")
            message = self.error
            self.start = event.old if event.old in self.months else self._default_start()
            self._show_error(message)
        elif self.hc is not None and self.error.startswith("start month"):
            self._show_error("")

    def _clamp_channel(self, *_):
        n = self.n_channels
        if self.channel >= n:
            self.channel = n - 1

    @property
    def n_channels(self) -> int:
        return int(self.hc.ckpt.manifest["config"]["hidden"][self.layer])

    @property
    def index(self) -> int:
        months = self.months
        return months.index(self.start) if self.start in months else months.index(self._default_start())

    def set_start(self, value) -> None:
        """Move to the start month nearest to ``value`` (a date, datetime64, ms since epoch or 'YYYY-MM')."""
        if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool):
            ts = pd.Timestamp(float(value), unit="ms")
        else:
            ts = pd.Timestamp(value)
        pos = int(np.abs((self.hc.init - ts).total_seconds()).argmin())
        self.start = self.months[pos]

    def _show_error(self, message: str) -> None:
        self.error = message
        self._alert.param.update(object=message or " ", visible=bool(message))

    # ------------------------------------------------------------------------------ data of the plots
    def _da(self, values, name, long_name, units="degC") -> xr.DataArray:
        ds = self.hc.ds
        return xr.DataArray(np.asarray(values, dtype=np.float32), dims=("lat", "lon"),
                            coords={"lat": ds.lat.values, "lon": ds.lon.values}, name=name,
                            attrs={"long_name": long_name, "units": units})

    def input_maps(self) -> xr.DataArray:
        """SST anomalies of the input months (time, lat, lon), NaN on land."""
        i = self.hc.rows[self.index]
        w = int(self.hc.ckpt.manifest["window"])
        return self.hc.ds["sst_anomaly"].isel(time=slice(i - w + 1, i + 1))

    def verify_month(self) -> pd.Timestamp:
        return self.hc.init[self.index] + pd.DateOffset(months=self.lead)

    def forecast_map(self) -> xr.DataArray:
        return self._da(self.hc.maps[self.index, self.lead - 1], "forecast",
                        f"ConvLSTM SST anomaly forecast, lead {self.lead}")

    def observed_map(self) -> xr.DataArray:
        t = self.verify_month()
        if t not in pd.DatetimeIndex(self.hc.ds.time.values):
            return self._da(np.full(self.hc.maps.shape[2:], np.nan), "observed", f"observed {t:%Y-%m} (no data)")
        return self._da(self.hc.ds["sst_anomaly"].sel(time=t).values, "observed", f"observed SST anomaly {t:%Y-%m}")

    def error_map(self) -> xr.DataArray:
        return self._da(self.forecast_map().values - self.observed_map().values, "error",
                        "forecast − observed")

    def forecast_nino(self) -> pd.DataFrame:
        """The Niño 3.4 forecast of the selected start month by lead: ConvLSTM, persistence, LIM, observed."""
        t = self.hc.init[self.index]
        obs = self.hc.observed.to_series()
        verify = [t + pd.DateOffset(months=k) for k in range(1, self.hc.nino.shape[1] + 1)]
        return pd.DataFrame({"verifies": [f"{v:%Y-%m}" for v in verify], "convlstm": self.hc.nino[self.index],
                             "persistence": self.hc.persistence.sel(time=t).values,
                             "lim": self.hc.lim.sel(time=t).values, "observed": obs.reindex(verify).values,
                             "phase": [("La Niña", "neutral", "El Niño")[int(p)] for p in self.hc.phase[self.index]]},
                            index=pd.Index(range(1, len(verify) + 1), name="lead"))

    def series(self) -> pd.DataFrame:
        """Niño 3.4 at the verifying months: observed, and ConvLSTM/persistence/LIM forecasts at the selected lead
        (issued ``lead`` months earlier, for every start month)."""
        k = self.lead
        obs = self.hc.observed.to_series()
        shift = pd.DateOffset(months=k)
        conv = pd.Series(self.hc.nino[:, k - 1], index=self.hc.init + shift)
        pers = self.hc.persistence.sel(lead=k).to_series()
        pers.index = pers.index + shift
        lim = self.hc.lim.sel(lead=k).to_series()
        lim.index = lim.index + shift
        lo, hi = conv.index[0] - pd.DateOffset(months=12), conv.index[-1]
        df = pd.DataFrame({"observed": obs, "convlstm": conv, "persistence": pers, "lim": lim})
        df.index.name = "time"
        return df.loc[lo:hi]

    def states(self) -> xr.Dataset:
        """ConvLSTM h and c (time, layer, channel, lat, lon) of the selected start month (cached per month)."""
        if self.start not in self._states_cache:
            from xaiscope.core.convlstm import convlstm_states

            t0 = time.perf_counter()
            i = self.hc.rows[self.index]
            w = int(self.hc.ckpt.manifest["window"])
            ds = self.hc.ds
            self._states_cache[self.start] = convlstm_states(
                self.hc.ckpt.model, self.hc.x_all[i - w + 1:i + 1], time=ds.time.values[i - w + 1:i + 1],
                lat=ds.lat.values, lon=ds.lon.values, land_mask=ds["land_mask"])
            self.timings["states_s"] = time.perf_counter() - t0
            if len(self._states_cache) > 24:
                self._states_cache.pop(next(iter(self._states_cache)))
        return self._states_cache[self.start]

    def state_map(self) -> xr.DataArray:
        st = self.states()[self.state_kind].isel(time=self.input_month - 1).sel(layer=self.layer,
                                                                                channel=self.channel)
        return self._da(np.where(self.hc.sea, st.values, np.nan), f"{self.state_kind}_state",
                        f"ConvLSTM {self.state_kind} layer {self.layer} channel {self.channel}, input month "
                        f"{self.input_month} ({pd.Timestamp(st.time.values):%Y-%m})", units="1")

    def skill_frame(self) -> pd.DataFrame:
        return self.hc.skill.reset_index()

    # ------------------------------------------------------------------------------ elements
    @staticmethod
    def _image(da: xr.DataArray, title: str, clim: float | None = None) -> gv.Image:
        v = da.values
        c = clim or float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else 1.0
        c = c if c and np.isfinite(c) and c > 0 else 1.0
        img = gv.Image((da.lon.values - 180.0, da.lat.values, v), kdims=["lon", "lat"], vdims=[da.name or "value"],
                       crs=CRS)
        return img.opts(cmap=CMAP, clim=(-c, c), colorbar=True, title=title, tools=["hover"],
                        clipping_colors={"NaN": "#d9d9d9"})

    def _map_clim(self) -> float:
        v = np.abs(self.input_maps().values)
        return float(np.nanpercentile(v, 99.5)) if np.isfinite(v).any() else 1.0

    def input_element(self, k: int, **_) -> gv.Image:
        da = self.input_maps().isel(time=k)
        return self._image(da.rename("sst_anomaly"), f"input {k + 1}: {pd.Timestamp(da.time.values):%Y-%m}",
                           self._map_clim())

    def forecast_element(self, **_) -> gv.Image:
        return self._image(self.forecast_map(), f"ConvLSTM forecast for {self.verify_month():%Y-%m} "
                           f"(lead {self.lead})", self._map_clim())

    def observed_element(self, **_) -> gv.Image:
        return self._image(self.observed_map(), f"observed {self.verify_month():%Y-%m}", self._map_clim())

    def error_element(self, **_) -> gv.Image:
        return self._image(self.error_map(), "error (forecast − observed)", self._map_clim())

    def state_element(self, **_) -> gv.Image:
        da = self.state_map()
        return self._image(da, da.attrs["long_name"])

    def series_element(self, **_) -> hv.Overlay:
        df = self.series()
        curves = [hv.Curve((df.index, df[c]), "time", "nino34", label=c).opts(color=COLORS[c], tools=["tap"],
                                                                              line_width=2 if c == "observed" else 1.5)
                  for c in ("observed", "convlstm", "persistence", "lim")]
        return hv.Overlay(curves).opts(title=f"Niño 3.4 (°C): forecasts at lead {self.lead} (verifying month)")

    def marker_element(self, **_) -> hv.VLine:
        return hv.VLine(self.hc.init[self.index]).opts(color="#2ca02c", line_width=2)

    def skill_element(self, **_) -> hv.Overlay:
        df = self.skill_frame()
        return hv.Overlay([hv.Curve(g, "lead", "r", label=n).opts(color=COLORS[n]) * hv.Scatter(g, "lead", "r")
                          .opts(color=COLORS[n], size=6) for n, g in df.groupby("model", sort=False)]).opts(
            title="Anomaly correlation by lead (test years)", legend_position="bottom_left")

    # ------------------------------------------------------------------------------ downloads
    def provenance(self) -> dict:
        m = self.hc.ckpt.manifest
        return {"checkpoint": str(self.hc.ckpt.path), "checkpoint_sha256": self.hc.ckpt.sha256,
                "start_month": self.start, "lead": self.lead, "layer": self.layer, "channel": self.channel,
                "state": self.state_kind, "input_month": self.input_month, "epoch": int(m.get("epoch", 0)),
                "data_source": str(self.hc.ds.attrs.get("source", "")), "Conventions": "CF-1.8",
                "created_by": "xaiscope ENSO view"}

    def maps_dataset(self) -> xr.Dataset:
        ds = xr.Dataset({"input_sst_anomaly": self.input_maps().rename(time="input_time"),
                         "forecast": self.forecast_map(), "observed": self.observed_map(),
                         "error": self.error_map(), "state": self.state_map(),
                         "land_mask": self.hc.ds["land_mask"]})
        ds.attrs.update(self.provenance(), verifying_month=f"{self.verify_month():%Y-%m}")
        return ds

    def series_dataset(self) -> xr.Dataset:
        ds = xr.Dataset.from_dataframe(self.series())
        for v in ds.data_vars:
            ds[v].attrs = {"units": "degC", "long_name": f"Niño 3.4 {v}"}
        ds.attrs.update(self.provenance())
        return ds

    @staticmethod
    def _netcdf(ds: xr.Dataset) -> io.BytesIO:
        ds = ds.copy()
        ds.attrs = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in ds.attrs.items()}
        return io.BytesIO(bytes(ds.to_netcdf()))

    # ------------------------------------------------------------------------------ layout
    def _dmap(self, fn, deps) -> hv.DynamicMap:
        return hv.DynamicMap(fn, streams=[hv.streams.Params(self, deps)])

    def _geo(self, dmap, height=230):
        return (dmap * _coast_path() * _nino_box()).opts(projection=CRS, responsive=True, height=height,
                                                          xlabel="", ylabel="", xformatter=LON_TICKS,
                                                          yformatter=LAT_TICKS)

    def __panel__(self):
        if self.hc is None:
            return pn.Column(self._alert, sizing_mode="stretch_width")
        if self._layout is None:
            self._layout = self._make_layout()
            if pn.state.location is not None and pn.state.curdoc is not None:
                pn.state.location.sync(self, {"start": "start", "lead": "lead"})
        return self._layout

    def _make_layout(self):
        months = self.months
        player = pn.widgets.Player(label="start month", start=0, end=len(months) - 1, value=self.index,
                                   interval=800, loop_policy="once", show_loop_controls=False, width=420)
        slider = pn.widgets.DiscreteSlider(label="Start month", options=months, value=self.start, width=420)
        lead_w = pn.widgets.RadioButtonGroup.from_param(self.param.lead, options=list(
            range(1, self.param.lead.bounds[1] + 1)), name="Lead (months)")
        self._player, self._slider = player, slider

        def from_player(e):
            self.start = months[int(e.new)]

        def from_slider(e):
            self.start = e.new

        def to_widgets(e):
            slider.value = e.new
            player.value = months.index(e.new)

        player.param.watch(from_player, "value")
        slider.param.watch(from_slider, "value")
        self.param.watch(to_widgets, "start")

        sel = ["start", "lead"]
        inputs = [self._geo(self._dmap(lambda k=k, **kw: self.input_element(k), ["start"]), 180)
                  for k in range(int(self.hc.ckpt.manifest["window"]))]
        fc = self._geo(self._dmap(self.forecast_element, sel))
        ob = self._geo(self._dmap(self.observed_element, sel))
        er = self._geo(self._dmap(self.error_element, sel))
        st = self._geo(self._dmap(self.state_element, ["start", "layer", "channel", "state_kind", "input_month"]))

        obs_curve = self._dmap(self.series_element, ["lead"])
        tap = hv.streams.Tap(source=obs_curve, x=None)
        tap.add_subscriber(lambda x=None, **_: self.set_start(x) if x is not None else None)
        self._tap = tap
        shade = (hv.HSpan(0.5, 4).opts(color="#d62728", alpha=0.08) *
                 hv.HSpan(-4, -0.5).opts(color="#1f77b4", alpha=0.08))
        series = (shade * obs_curve * self._dmap(self.marker_element, ["start"])).opts(
            responsive=True, height=300, legend_position="top_left", ylim=(-3, 3.5), xlabel="verifying month",
            ylabel="Niño 3.4 anomaly (°C)")

        table = pn.widgets.Tabulator(self.skill_frame().round(3), disabled=True, show_index=False,
                                     sizing_mode="stretch_width", height=280)
        fc_table = pn.pane.DataFrame(pn.bind(lambda s, k: self.forecast_nino().round(3), self.param.start,
                                             self.param.lead), sizing_mode="stretch_width")
        dl_maps = pn.widgets.FileDownload(callback=lambda: self._netcdf(self.maps_dataset()),
                                          filename="xaiscope_enso_maps.nc", label="Download maps (NetCDF)")
        dl_series = pn.widgets.FileDownload(callback=lambda: self._netcdf(self.series_dataset()),
                                            filename="xaiscope_enso_series.nc", label="Download series (NetCDF)")
        state_ctl = pn.Row(pn.widgets.IntSlider.from_param(self.param.layer, name="layer"),
                           pn.widgets.IntSlider.from_param(self.param.channel, name="channel"),
                           pn.widgets.RadioButtonGroup.from_param(self.param.state_kind, name="state"),
                           pn.widgets.IntSlider.from_param(self.param.input_month, name="input month"))
        skill_md = pn.pane.Markdown(
            f"Niño 3.4 anomaly correlation `r` and RMSE (°C) of forecasts verifying in the test years "
            f"{'..'.join(self.hc.ckpt.manifest.get('test_period', []))}; ConvLSTM hindcast computed in "
            f"{self.hc.seconds:.1f} s (checkpoint sha256 `{self.hc.ckpt.sha256[:12]}`).")
        hv_pane = dict(sizing_mode="stretch_width", linked_axes=False)
        return pn.Column(
            pn.pane.Markdown("## ENSO forecasts (ConvLSTM)\nClick the Niño 3.4 series to move the start month."),
            self._alert,
            pn.Row(pn.Column(slider, player), lead_w),
            pn.pane.HoloViews(series, **hv_pane),
            pn.Tabs(
                ("Maps", pn.Column(
                    pn.GridBox(*[pn.pane.HoloViews(e, **hv_pane) for e in inputs], ncols=3,
                               sizing_mode="stretch_width"),
                    pn.GridBox(*[pn.pane.HoloViews(e, **hv_pane) for e in (fc, ob, er)], ncols=3,
                               sizing_mode="stretch_width"), fc_table, sizing_mode="stretch_width")),
                ("Internal states", pn.Column(state_ctl, pn.pane.HoloViews(st, **hv_pane),
                                              sizing_mode="stretch_width")),
                ("Skill", pn.Row(pn.Column(skill_md, table), pn.pane.HoloViews(
                    self._dmap(self.skill_element, []).opts(height=300, responsive=True),
                    **hv_pane), sizing_mode="stretch_width")),
                ("Downloads", pn.Column(pn.pane.Markdown("NetCDF files with the checkpoint's sha256 and the "
                                                         "settings as global attributes."), dl_maps, dl_series,
                                        max_width=500)),
                dynamic=True, sizing_mode="stretch_width"),
            sizing_mode="stretch_width", css_classes=["xs-enso"])


from xaiscope.dashboard.registry import register_view  # noqa: E402

register_view("enso", "ENSO forecasts (ConvLSTM)", EnsoExplorer,
              "ConvLSTM Niño 3.4 forecasts on maps against persistence and a linear inverse model.")
