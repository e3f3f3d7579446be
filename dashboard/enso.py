"""The ENSO view: ConvLSTM Niño 3.4 forecasts, their maps and internal states, against persistence and a LIM.

In a notebook::

    from xaiscope.dashboard.enso import EnsoExplorer
    EnsoExplorer(checkpoint="assets/checkpoints/enso_convlstm", sst=None)   # None: the shipped 5° demo data

Start months are initial (last input) months. Everything runs through the server's engine
(:mod:`xaiscope.core.engine`): the checkpoint is read once and its one model shared by every session
(``engine.open_checkpoint`` / ``engine.share``); forward passes go through ``engine.forward``; and the derived
results are kept in the engine's result cache, shared by all sessions: the hindcast with its skill table (per
checkpoint sha256 and a sha256 of the model inputs), the internal states of each start month, and the shipped SST
data. The ConvLSTM part of the hindcast is also read from / written to a NetCDF file beside the weights
(``hindcasts/``, shipped for the demo checkpoint) or in the user cache, so the demo opens at once. In a served app a
missing hindcast is computed in a thread while the page shows its progress. Moving the scrubber only looks forecasts
up; the internal states (h and c of every layer, channel and input month, float16 on sea cells) are filled in by a
background batch, and a start month that is not there yet is computed on demand in one forward pass.

The maps and the Niño 3.4 series are plain Bokeh figures built once (per projection) and updated in place: a new
selection only replaces image data, colour limits, titles and the series marker, so an update costs tens of
milliseconds, not the rebuild of every plot. Maps are drawn on the data's 5° grid in a selectable projection: Plate
Carrée centred on the Pacific (the grid in the frame x = lon − 180, with °E/°W ticks) or Robinson, Mollweide, Equal
Earth and an orthographic globe over the Pacific. For those the data cell under every pixel of the projected frame is
found once per projection with cartopy (a look-up table, cached), so a map update is one gather; coastlines, the
Niño 3.4 box and the globe's outline are projected once per projection with cartopy. Coastlines come from the
shipped Natural Earth GeoJSON (cartopy's downloader is disabled: nothing is fetched at run time).
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
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
LAND_COLOR = "#d9d9d9"
LEADS = tuple(range(1, 7))
MAP_SLOTS = ("forecast", "observed", "error", "state")
SERIES = ("observed", "convlstm", "persistence", "lim")  # after the input months' maps (input0, input1, …)
STATE_PARAMS = ["layer", "channel", "state_kind", "input_month"]
COLORS = {"observed": "black", "convlstm": "#d62728", "persistence": "#7f7f7f", "lim": "#1f77b4"}

# URL query keys of the view's settings (``?view=enso&start=2015-11&lead=3&layer=2&channel=5&state=c&month=6``).
URL_KEYS = {"start": "start", "lead": "lead", "layer": "layer", "channel": "channel", "state_kind": "state",
            "input_month": "month", "projection": "projection"}

# Map projections: URL key -> (label, cartopy projection). All centred on the Pacific.
PROJECTIONS = {
    "platecarree": ("Plate Carrée (Pacific-centred)", lambda: ccrs.PlateCarree(central_longitude=180)),
    "robinson": ("Robinson", lambda: ccrs.Robinson(central_longitude=180)),
    "mollweide": ("Mollweide", lambda: ccrs.Mollweide(central_longitude=180)),
    "equalearth": ("Equal Earth", lambda: ccrs.EqualEarth(central_longitude=180)),
    "orthographic": ("Orthographic (globe over 160°W, 0°)",
                     lambda: ccrs.Orthographic(central_longitude=-160, central_latitude=0)),
}
PIXELS = 288  # width of a projected map's look-up table in pixels (4 per 5° cell at the equator)
# the globe shows half the longitudes: fewer pixels give the same 4-5 per cell in its centre
WIDTHS = {"orthographic": 180}


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
    return gv.Path([_nan_joined(to_plot_frame(coastline_geometries(scale)))], crs=CRS).opts(
        color="#333333", line_width=0.8)


def _nan_joined(lines) -> np.ndarray:
    """Lines as one (n, 2) array with NaN rows between them (drawn as separate lines; one path is much cheaper
    for HoloViews to handle on every update than one path per line)."""
    return np.concatenate([np.vstack([np.asarray(line, dtype=float)[:, :2], [[np.nan, np.nan]]]) for line in lines])


# Tick labels in real longitudes (°E/°W) although the frame's x is lon − 180.
# Templates only: a Bokeh model belongs to one document, so every plot gets its own copy
# (CustomJSTickFormatter(code=LON_TICKS.code)); sharing one breaks a second browser session.
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


# ------------------------------------------------------------------------------------------------ projections
@lru_cache(maxsize=None)
def projection_crs(key: str) -> ccrs.Projection:
    """The cartopy projection of a projection key (see ``PROJECTIONS``)."""
    if key not in PROJECTIONS:
        raise XaiscopeError(f"unknown map projection {key!r}; choose one of {sorted(PROJECTIONS)}.")
    return PROJECTIONS[key][1]()


@dataclass(frozen=True, eq=False)
class ProjectedGrid:
    """A projected frame's pixels and, for each, the data cell drawn there (a nearest-cell look-up table)."""

    key: str
    crs: ccrs.Projection
    x: np.ndarray       # pixel centres, projected units, ascending
    y: np.ndarray
    index: np.ndarray   # (len(y), len(x)) flat (lat, lon) index of the data cell under each pixel; -1: none

    def warp(self, values: np.ndarray) -> np.ndarray:
        """A (lat, lon) field on the projected pixels (NaN where no data cell lies under a pixel)."""
        flat = np.append(np.asarray(values, dtype=np.float32).ravel(), np.float32(np.nan))
        return flat[self.index]

    @property
    def extent(self) -> tuple[float, float, float, float]:
        dx, dy = self.x[1] - self.x[0], self.y[1] - self.y[0]
        return self.x[0] - dx / 2, self.x[-1] + dx / 2, self.y[0] - dy / 2, self.y[-1] + dy / 2


@lru_cache(maxsize=16)
def projected_grid(key: str, lat: tuple, lon: tuple, width: int | None = None) -> ProjectedGrid:
    """The look-up table of projection ``key`` for a regular lat/lon grid (cell centres ``lat``, ``lon`` in
    degrees; longitudes may wrap). Pixels outside the projection's domain or the data's latitudes get -1; the
    frame is cropped to the pixels that show data. Computed once per projection and grid (cached)."""
    import shapely

    crs = projection_crs(key)
    width = width or WIDTHS.get(key, PIXELS)
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    (x0, x1), (y0, y1) = crs.x_limits, crs.y_limits
    height = max(2, int(round(width * (y1 - y0) / (x1 - x0))))
    xs = x0 + (np.arange(width) + 0.5) * (x1 - x0) / width
    ys = y0 + (np.arange(height) + 0.5) * (y1 - y0) / height
    X, Y = np.meshgrid(xs, ys)
    inside = shapely.contains_xy(crs.domain, X, Y)
    ll = DATA_CRS.transform_points(crs, X, Y)
    plon, plat = ll[..., 0], ll[..., 1]
    dlat, dlon = lat[1] - lat[0], lon[1] - lon[0]
    with np.errstate(invalid="ignore"):
        i = np.rint((plat - lat[0]) / dlat)
        j = np.rint(((plon - lon[0]) % 360.0) / dlon)
        periodic = abs(len(lon) * dlon - 360.0) < 1e-6
        j = j % len(lon) if periodic else j
        ok = inside & np.isfinite(i) & np.isfinite(j) & (i >= 0) & (i < len(lat)) & (j >= 0) & (j < len(lon))
    index = np.where(ok, np.nan_to_num(i) * len(lon) + np.nan_to_num(j), -1).astype(np.int64)
    rows, cols = np.flatnonzero(ok.any(1)), np.flatnonzero(ok.any(0))
    if not len(rows):
        raise XaiscopeError(f"projection {key!r} shows none of the grid's cells.")
    r, c = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    return ProjectedGrid(key, crs, xs[c], ys[r], index[r, c])


@lru_cache(maxsize=16)
def projected_lines(key: str, scale: str = "110m") -> dict[str, np.ndarray]:
    """Coastlines, the Niño 3.4 box and the globe's outline projected once: (n, 2) arrays in the projected frame,
    separate lines joined by NaN rows."""
    crs = projection_crs(key)
    coast = []
    for line in coastline_geometries(scale):
        projected = crs.project_geometry(line, DATA_CRS)  # cut at the frame's seam, clipped to the visible side
        coast += [np.asarray(g.coords)[:, :2] for g in getattr(projected, "geoms", [projected])
                  if not g.is_empty and len(g.coords) > 1]
    lon = np.r_[np.linspace(-170, -120, 51), np.full(11, -120.0), np.linspace(-120, -170, 51), np.full(11, -170.0)]
    lat = np.r_[np.full(51, -5.0), np.linspace(-5, 5, 11), np.full(51, 5.0), np.linspace(5, -5, 11)]
    box = crs.transform_points(DATA_CRS, lon, lat)[:, :2]
    outline = np.asarray(crs.boundary.coords)[:, :2]
    return {"coast": _nan_joined(coast), "box": np.asarray(box, dtype=float), "outline": outline.astype(float)}


@lru_cache(maxsize=2)
def _plot_frame_coast(scale: str = "110m") -> np.ndarray:
    """Coastlines in the Pacific-centred plot frame (x = lon − 180) as one NaN-separated (n, 2) array."""
    return _nan_joined(to_plot_frame(coastline_geometries(scale)))


@lru_cache(maxsize=1)
def diverging_palette(n: int = 256) -> tuple[str, ...]:
    """The maps' colour palette: matplotlib's RdBu_r in ``n`` steps (blue negative, red positive)."""
    try:
        from matplotlib import colormaps
        from matplotlib.colors import to_hex

        return tuple(to_hex(c) for c in colormaps[CMAP](np.linspace(0, 1, n)))
    except ImportError:  # pragma: no cover - matplotlib comes with cartopy
        from bokeh.palettes import RdBu11

        return tuple(reversed(RdBu11))


def _symmetric_limit(values: np.ndarray) -> float:
    """``max |values|`` (finite and positive; 1 for an empty or all-zero field): the colour bar spans −c..c."""
    v = np.asarray(values, dtype=np.float32)
    c = float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else 1.0
    return c if np.isfinite(c) and c > 0 else 1.0


# ------------------------------------------------------------------------------------------------ hindcast
@dataclass(eq=False)
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
    source: str = "computed"    # "computed" or the hindcast file it was read from
    data_key: str = ""          # sha256 of the inputs (:func:`data_key`): part of every engine cache key
    _store: object = field(default=None, repr=False)
    _lock: object = field(default_factory=threading.Lock, repr=False)

    @cached_property
    def sea(self) -> np.ndarray:
        return self.ds["land_mask"].values == 0

    @cached_property
    def months(self) -> list[str]:
        return [f"{t:%Y-%m}" for t in self.init]

    @cached_property
    def month_index(self) -> dict[str, int]:
        return {m: i for i, m in enumerate(self.months)}

    @cached_property
    def sst(self) -> np.ndarray:
        """SST anomalies (time, lat, lon) as a float32 array (NaN on land)."""
        return np.asarray(self.ds["sst_anomaly"].values, dtype=np.float32)

    @cached_property
    def time_index(self) -> dict:
        return {pd.Timestamp(t): k for k, t in enumerate(self.ds.time.values)}

    @property
    def states(self) -> "StateStore":
        """The internal-state store of this hindcast (created on first use, shared by every view on it)."""
        with self._lock:
            if self._store is None:
                self._store = StateStore(self)
            return self._store


_BACKGROUND: "weakref.WeakSet[StateStore]" = weakref.WeakSet()
OUTPUTS = ("map", "nino34", "phase_logits")


@atexit.register
def _stop_background() -> None:
    for store in list(_BACKGROUND):
        store.stop()


def _engine(engine=None):
    """``engine`` or the process's engine (:func:`xaiscope.core.engine.get_engine`)."""
    if engine is not None:
        return engine
    from xaiscope.core.engine import get_engine

    return get_engine()


def shared_demo_sst(engine=None) -> xr.Dataset:
    """The shipped 5° SST data (:func:`xaiscope.data.sst.demo_sst`), read once per engine and shared by every
    session (nothing changes it)."""
    from xaiscope.data.sst import demo_sst

    return _engine(engine).cached(("enso.demo_sst",), demo_sst)


def _hindcast_key(ckpt, dkey: str, first_start, use_files: bool) -> tuple:
    return ("enso.hindcast", ckpt.sha256, dkey, str(first_start), bool(use_files))


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


def data_key(ckpt, ds: xr.Dataset, x_all: np.ndarray | None = None) -> str:
    """sha256 of what a hindcast depends on besides the weights: the normalised inputs, their months, the land
    mask and the window."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(model_inputs(ckpt, ds) if x_all is None else x_all).tobytes())
    h.update(np.asarray(ds.time.values, dtype="datetime64[ns]").tobytes())
    h.update(np.ascontiguousarray(ds["land_mask"].values.astype(np.int8)).tobytes())
    h.update(str(int(ckpt.manifest["window"])).encode())
    return h.hexdigest()


def hindcast_files(ckpt, key: str) -> list[Path]:
    """Places a stored ConvLSTM hindcast may lie: beside the weights (shipped) and in the user cache."""
    from xaiscope.core.hydro import cache_dir

    name = f"{ckpt.sha256[:16]}_{key[:16]}.nc"
    places = []
    weights = (getattr(ckpt, "extra", None) or {}).get("weights_path")
    if weights is not None:
        places.append(Path(weights).parent / "hindcasts" / name)
    places.append(cache_dir() / "enso_hindcasts" / name)
    return places


def _read_hindcast_file(ckpt, key: str, init: pd.DatetimeIndex):
    """(map, nino34, phase_logits, path) of the start months ``init`` from a stored hindcast, or None."""
    for f in hindcast_files(ckpt, key):
        if not f.exists():
            continue
        try:
            with xr.open_dataset(f) as hf:
                if hf.attrs.get("checkpoint_sha256") != ckpt.sha256 or hf.attrs.get("data_key") != key:
                    continue
                have = pd.DatetimeIndex(hf.time.values)
                if not init.isin(have).all():
                    continue
                sel = hf.sel(time=init)
                return (sel["map"].values.astype(np.float32), sel["nino34"].values.astype(np.float32),
                        sel["phase_logits"].values.astype(np.float32), f)
        except (OSError, ValueError, KeyError):
            continue  # a damaged file is recomputed, never trusted
    return None


def _write_hindcast_file(ckpt, key: str, init, out: dict, path: Path) -> Path:
    leads = np.arange(1, out["map"].shape[1] + 1)
    hf = xr.Dataset(
        {"map": (("time", "lead", "lat", "lon"), out["map"].astype(np.float32),
                 {"long_name": "ConvLSTM SST anomaly forecast (normalised model output, 0 on land)"}),
         "nino34": (("time", "lead"), out["nino34"].astype(np.float32), {"units": "degC"}),
         "phase_logits": (("time", "lead", "phase"), out["phase_logits"].astype(np.float32))},
        coords={"time": pd.DatetimeIndex(init), "lead": leads, "phase": ["la_nina", "neutral", "el_nino"]},
        attrs={"checkpoint_sha256": ckpt.sha256, "data_key": key, "created_by": "xaiscope ENSO view",
               "description": "ConvLSTM hindcast: one forecast per start (initial) month"})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    enc = {v: {"zlib": True, "complevel": 4, "shuffle": True} for v in hf.data_vars}
    hf.to_netcdf(tmp, encoding=enc)
    tmp.replace(path)
    return path


def _heads(model, xb):
    out = model(xb)
    return tuple(out[k] for k in OUTPUTS)


def _forecast(ckpt, x_all, rows, window, progress=None, batch=16, engine=None) -> dict:
    """The model's outputs for the start months ``rows`` (batches of ``batch``) through the engine."""
    import torch

    eng = _engine(engine)
    outs = []
    for s in range(0, len(rows), batch):
        x = torch.from_numpy(np.stack([x_all[t - window + 1:t + 1] for t in rows[s:s + batch]]))
        outs.append([t.numpy() for t in eng.forward(ckpt, x, fn=_heads, what="ENSO hindcast")])
        if progress is not None:
            progress(min(len(rows), s + batch) / len(rows))
    return {k: np.concatenate([o[n] for o in outs]) for n, k in enumerate(OUTPUTS)}


def save_hindcast(ckpt, ds: xr.Dataset, directory: str | Path | None = None, first_start=None) -> Path:
    """Compute the ConvLSTM hindcast from ``first_start`` (default: the validation start) and store it (default:
    beside the weights in ``hindcasts/``, as shipped for the demo checkpoint; or in ``directory``)."""
    m = ckpt.manifest
    x_all = model_inputs(ckpt, ds)
    key = data_key(ckpt, ds, x_all)
    times = pd.DatetimeIndex(ds.time.values)
    rows = _start_rows(times, int(m["window"]), first_start or m.get("val_period", [None])[0])
    out = _forecast(ckpt, x_all, rows, int(m["window"]))
    path = hindcast_files(ckpt, key)[0]
    if directory is not None:
        path = Path(directory) / path.name
    return _write_hindcast_file(ckpt, key, times[rows], out, path)


def _start_rows(times: pd.DatetimeIndex, window: int, first_start) -> np.ndarray:
    lo = pd.Timestamp(first_start) if first_start else times[0]
    rows = np.array([t for t in range(window - 1, len(times)) if times[t] >= lo], dtype=int)
    if not len(rows):
        raise XaiscopeError(f"no start month with {window} input months from {first_start}; data span "
                            f"{times[0]:%Y-%m}..{times[-1]:%Y-%m}.")
    return rows


def hindcast_ready(ckpt, ds: xr.Dataset, first_start=None, engine=None) -> bool:
    """True when :func:`compute_hindcast` needs no model run: in the engine's cache already, or a stored file."""
    m = ckpt.manifest
    first_start = first_start or m.get("val_period", [None])[0]
    dkey = data_key(ckpt, ds)
    if _hindcast_key(ckpt, dkey, first_start, True) in _engine(engine).cache:
        return True
    return any(f.exists() for f in hindcast_files(ckpt, dkey))


def compute_hindcast(ckpt, ds: xr.Dataset, first_start=None, progress=None, use_files: bool = True,
                     engine=None) -> EnsoHindcast:
    """ConvLSTM hindcast for every start month from ``first_start`` (default: the checkpoint's validation
    start, i.e. out-of-sample months only) plus persistence and LIM for every month.

    Kept in the engine's result cache (``("enso.hindcast", sha256, data key, first start, use_files)``): computed
    once per server however many sessions ask at once, and shared by them. The ConvLSTM part is read from a stored
    hindcast of the same checkpoint (sha256) and inputs (:func:`data_key`) when there is one (``use_files``), else
    computed through the engine (:meth:`~xaiscope.core.engine.Engine.forward`) and stored in the user cache.
    ``progress(fraction, message)`` is called as the work goes on."""
    m = ckpt.manifest
    first_start = first_start or m.get("val_period", [None])[0]
    x_all = model_inputs(ckpt, ds)
    dkey = data_key(ckpt, ds, x_all)
    eng = _engine(engine)
    return eng.cached(_hindcast_key(ckpt, dkey, first_start, use_files),
                      lambda: _build_hindcast(ckpt, ds, x_all, dkey, first_start, progress, use_files, eng))


def _build_hindcast(ckpt, ds, x_all, dkey, first_start, progress, use_files, eng) -> EnsoHindcast:
    from xaiscope.core.lim import fit_lim, lead_skill, persistence_forecast
    from xaiscope.data.sst import nino34

    m = ckpt.manifest
    report = progress or (lambda *_: None)
    t0 = time.perf_counter()
    window, n_leads = int(m["window"]), int(m["n_leads"])
    times = pd.DatetimeIndex(ds.time.values)
    rows = _start_rows(times, window, first_start)
    stored = _read_hindcast_file(ckpt, dkey, times[rows]) if use_files else None
    if stored is not None:
        out = dict(zip(("map", "nino34", "phase_logits"), stored[:3]))
        source = str(stored[3])
        report(0.8, "read the stored ConvLSTM hindcast")
    else:
        report(0.0, f"ConvLSTM hindcast of {len(rows)} start months")
        out = _forecast(ckpt, x_all, rows, window,
                        lambda f: report(0.85 * f, f"ConvLSTM hindcast: {int(round(f * len(rows)))} of "
                                                   f"{len(rows)} start months"), engine=eng)
        source = "computed"
        if use_files:
            try:
                _write_hindcast_file(ckpt, dkey, times[rows], out, hindcast_files(ckpt, dkey)[-1])
            except OSError as err:  # a read-only cache only costs the next start its time
                log.warning("ENSO hindcast not stored: %s", err)
    report(0.85, "persistence and linear inverse model")
    sea = ds["land_mask"].values == 0
    maps = np.where(sea, out["map"], np.nan).astype(np.float32)
    observed = nino34(ds["sst_anomaly"])
    leads = list(range(1, n_leads + 1))
    pers = persistence_forecast(observed, leads)
    lim = fit_lim(ds["sst_anomaly"], ds["land_mask"],
                  n_modes=int(m.get("train_config", {}).get("lim_modes", 20)), period=tuple(m["train_period"]))
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
                      observed, pers, lim_fc, skill, time.perf_counter() - t0, source, data_key=dkey)
    report(1.0, "ready")
    return hc


# ------------------------------------------------------------------------------------------------ states
class StateStore:
    """h and c of every layer, channel and input month of the start months of a hindcast, float16 on sea cells.

    One block ``(2, months, channels, sea cells)`` per start month (about 1.9 MB for the demo model), kept in the
    engine's result cache under ``("enso.states", sha256, data key, start month)``: every session on the same
    checkpoint and data reads the same blocks, and the cache's memory bound applies (an evicted month is computed
    again when asked for). A start month is computed on first use (one forward pass through the engine) or by
    :meth:`start_background`, which fills the others in batches, nearest to the selected month first, as long as
    they take at most ``FILL_SHARE`` of the cache.
    """

    FILL_SHARE = 0.6

    def __init__(self, hc: EnsoHindcast, batch: int = 8, engine=None):
        model = hc.ckpt.model
        self.hc, self.batch = hc, batch
        self._engine = engine  # None: the process's engine at each call
        self.window = int(hc.ckpt.manifest["window"])
        self.hidden = [int(h) for h in model.hidden]
        self.offsets = np.r_[0, np.cumsum(self.hidden)]
        self.sea = hc.sea
        self.n_sea = int(self.sea.sum())
        self._sea_index = np.flatnonzero(self.sea.ravel())
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.seconds_background: float | None = None

    @property
    def engine(self):
        return _engine(self._engine)

    @property
    def block_bytes(self) -> int:
        return 2 * self.window * int(self.offsets[-1]) * self.n_sea * 2

    def key(self, i: int) -> tuple:
        return ("enso.states", self.hc.ckpt.sha256, self.hc.data_key, self.hc.months[int(i)])

    @property
    def done(self) -> np.ndarray:
        """Which start months have their states in the cache now."""
        cache = self.engine.cache
        return np.array([self.key(i) in cache for i in range(len(self.hc.rows))], dtype=bool)

    def _forward(self, idx) -> list[np.ndarray]:
        """One forward pass (through the engine) for the start months ``idx``: their blocks."""
        import torch

        w, rows = self.window, self.hc.rows
        x = torch.as_tensor(np.stack([self.hc.x_all[r - w + 1:r + 1] for r in rows[idx]]))
        sea = torch.from_numpy(self._sea_index)

        def run(model, xb):  # h and c of every layer on the sea cells: (B, T, C_l, n_sea) each
            _, states = model.run(xb.to(dtype=next(model.parameters()).dtype), keep_states=True)
            s = sea.to(xb.device)
            return tuple(t.flatten(-2)[..., s] for hc in states for t in hc)

        out = self.engine.forward(self.hc.ckpt, x, fn=run, what="ENSO internal states")
        block = np.empty((len(idx), 2, w, int(self.offsets[-1]), self.n_sea), np.float16)
        for layer in range(len(self.hidden)):
            sl = slice(self.offsets[layer], self.offsets[layer + 1])
            block[:, 0, :, sl] = out[2 * layer].float().numpy()
            block[:, 1, :, sl] = out[2 * layer + 1].float().numpy()
        return [block[k].copy() for k in range(len(idx))]  # copies: a cached month must not hold the batch

    def compute(self, idx) -> None:
        """Run the model for the start months ``idx`` (positions in the hindcast) in one batch; cache h and c."""
        idx = np.atleast_1d(np.asarray(idx, dtype=int))
        cache = self.engine.cache
        for i, block in zip(idx, self._forward(idx)):
            cache.put(self.key(i), block)

    def block(self, i: int) -> np.ndarray:
        """The states of start month ``i``: (2 [h, c], months, channels of all layers, sea cells), float16."""
        return self.engine.cached(self.key(i), lambda: self._forward(np.array([int(i)]))[0])

    def ensure(self, i: int) -> None:
        self.block(i)

    def state_map(self, i: int, kind: str, month: int, layer: int, channel: int) -> np.ndarray:
        """(lat, lon) float32 map of state ``kind`` ('h' or 'c') of ``layer``/``channel`` at input month
        ``month`` (1..window) for start month ``i``; NaN on land."""
        if not 0 <= channel < self.hidden[layer]:
            raise XaiscopeError(f"layer {layer} has {self.hidden[layer]} channels; channel {channel} is out of range.")
        out = np.full(self.sea.shape, np.nan, np.float32)
        out[self.sea] = self.block(i)[("h", "c").index(kind), month - 1, self.offsets[layer] + channel]
        return out

    def fill(self, first: int = 0) -> None:
        """Compute the missing start months, nearest to ``first`` first, in batches, while they take at most
        ``FILL_SHARE`` of the engine's cache."""
        t0 = time.perf_counter()
        keep = int(self.FILL_SHARE * self.engine.cache.max_bytes // max(self.block_bytes, 1))
        order = np.argsort(np.abs(np.arange(len(self.hc.rows)) - first), kind="stable")[:keep]
        cache = self.engine.cache
        todo = [int(i) for i in order if self.key(i) not in cache]
        for s in range(0, len(todo), self.batch):
            if self._stop.is_set():
                return
            chunk = [i for i in todo[s:s + self.batch] if self.key(i) not in cache]
            if chunk:
                self.compute(chunk)
        self.seconds_background = time.perf_counter() - t0

    def start_background(self, first: int = 0) -> threading.Thread:
        """Fill the store in a daemon thread (once); returns the thread."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._fill_logged, args=(first,), daemon=True,
                                                name="xaiscope-enso-states")
                _BACKGROUND.add(self)
                self._thread.start()
            return self._thread

    def stop(self, timeout: float = 60.0) -> None:
        """Stop a background fill after its current batch (torch must not be running when Python exits)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _fill_logged(self, first):
        try:
            self.fill(first)
            log.info("ENSO view: internal states of %d of %d start months in the cache after %.1f s",
                     int(self.done.sum()), len(self.hc.rows), self.seconds_background or 0.0)
        except Exception:  # noqa: BLE001 - a failed background fill only costs on-demand computation
            log.error("ENSO view: background state computation failed", exc_info=True)


# ------------------------------------------------------------------------------------------------ the view
class EnsoExplorer(pn.viewable.Viewer):
    """ConvLSTM ENSO forecasts on maps, the Niño 3.4 series with baselines, skill by lead and internal states.

    Parameters
    ----------
    checkpoint : ENSO ConvLSTM checkpoint (folder, series folder or loaded ``Checkpoint``); default: the demo.
    sst : ``xr.Dataset`` on the checkpoint's grid with its inputs and ``land_mask`` (default: ``demo_sst()``).
    first_start : first start month of the ConvLSTM hindcast (default: the checkpoint's validation start).
    state : the app's shared state (accepted for the registry; the ENSO view keeps its own checkpoint).
    background : compute a missing hindcast in a thread while the page shows progress (default: only in a
        served app session; elsewhere the constructor computes it).
    precompute_states : fill the internal states of all start months in a background thread.
    """

    # the app's checkpoint and basin pickers are for the hydrology views: hidden while this view is shown
    uses_sidebar_pickers = False

    start = param.String(default="", doc="start (initial, last input) month, YYYY-MM")
    lead = param.Integer(default=3, bounds=(1, 6), doc="forecast lead in months")
    layer = param.Integer(default=2, bounds=(0, None), doc="ConvLSTM layer of the state map")
    channel = param.Integer(default=0, bounds=(0, None), doc="channel of the state map")
    state_kind = param.Selector(default="h", objects=["h", "c"], doc="hidden (h) or cell (c) state")
    input_month = param.Integer(default=6, bounds=(1, 6), doc="input month of the state map (6 = start month)")
    projection = param.Selector(default="platecarree", objects=list(PROJECTIONS), doc="map projection")
    error = param.String(default="", doc="last error shown to the user")

    def __init__(self, checkpoint=None, sst: xr.Dataset | None = None, first_start=None, state=None,
                 background: bool | None = None, precompute_states: bool = True, **params):
        super().__init__(**params)
        self.timings: dict[str, float] = {}
        self._alert = pn.pane.Alert("", alert_type="danger", visible=False)
        self._progress = pn.indicators.Progress(value=-1, max=100, width=420, bar_color="primary")
        self._progress_md = pn.pane.Markdown("Preparing the ENSO view …")
        self.hc: EnsoHindcast | None = None
        self._root = None
        self._layout = None
        self._thread: threading.Thread | None = None
        self._precompute = precompute_states
        self._doc = pn.state.curdoc
        self._clim_key, self._clim = None, 1.0
        self._maps_cache: dict[str, tuple] = {}
        self._figs: dict[str, dict] = {}  # projection -> map slot -> {"figure", "source", "mapper"}
        self._state_shown = False  # the "Internal states" tab is open
        self._state_stale = False
        try:
            import importlib

            importlib.import_module("xaiscope.core.convlstm")  # registers the model kind
            from xaiscope.core.checkpoint import Checkpoint

            eng = _engine()
            # one read of the file and one model per server: the engine keeps both for every session
            ckpt = eng.share(checkpoint) if isinstance(checkpoint, Checkpoint) else eng.open_checkpoint(
                checkpoint or default_checkpoint())
            if ckpt.manifest.get("kind") != "enso_convlstm":
                raise XaiscopeError(f"checkpoint {ckpt.path} is a {ckpt.manifest.get('kind')!r} model; the ENSO "
                                    "view needs an 'enso_convlstm' checkpoint (xaiscope train enso).")
            ds = sst if sst is not None else shared_demo_sst(eng)
            if background is None:
                background = bool(pn.state.curdoc is not None and pn.state.curdoc.session_context is not None)
            if background and not hindcast_ready(ckpt, ds, first_start):
                self._thread = threading.Thread(target=self._prepare_in_thread, args=(ckpt, ds, first_start),
                                                daemon=True, name="xaiscope-enso-hindcast")
                self._thread.start()
                return
            self._set_hindcast(compute_hindcast(ckpt, ds, first_start))
        except Exception as err:  # noqa: BLE001 - shown to the user, app keeps running
            self._fail(err)

    # ------------------------------------------------------------------------------ preparation
    def _fail(self, err) -> None:
        from xaiscope.dashboard.state import describe_error

        log.error("ENSO view: cannot prepare", exc_info=err)
        self._show_error(f"Cannot prepare the ENSO view: {describe_error(err)}")

    def _on_doc(self, fn) -> None:
        """Run ``fn`` where the page's models may be changed: on the session's event loop when served."""
        doc = self._doc
        if doc is not None and doc.session_context is not None:
            from xaiscope.dashboard.session import doc_closed

            if doc_closed(doc):  # the page was closed while the work ran: nothing to show it on
                return

            def locked():
                if doc_closed(doc):
                    return
                from panel.io.state import set_curdoc

                with set_curdoc(doc):
                    fn()
            try:
                doc.add_next_tick_callback(locked)
            except AttributeError:  # Bokeh tore the document down between the check and here
                if not doc_closed(doc):
                    raise
        else:
            fn()

    def _prepare_in_thread(self, ckpt, ds, first_start) -> None:
        def progress(fraction, message):
            self._on_doc(lambda: (self._progress.param.update(value=int(round(100 * fraction))),
                                  self._progress_md.param.update(object=f"Computing the ConvLSTM hindcast "
                                                                        f"(once per server): {message} …")))
        try:
            hc = compute_hindcast(ckpt, ds, first_start, progress=progress)
        except Exception as err:  # noqa: BLE001
            self._on_doc(lambda e=err: (self._fail(e), self._show_root()))  # bound now: `err` is cleared
            return
        self._on_doc(lambda: (self._set_hindcast(hc), self._show_root()))

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for a hindcast computed in the background (no-op otherwise); True when the view is ready."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.hc is not None

    def _set_hindcast(self, hc: EnsoHindcast) -> None:
        self.hc = hc
        m = hc.ckpt.manifest
        self.param.lead.bounds = (1, int(m["n_leads"]))
        self.param.input_month.bounds = (1, int(m["window"]))
        self.param.layer.bounds = (0, len(m["config"]["hidden"]) - 1)
        self.param.channel.bounds = (0, max(m["config"]["hidden"]) - 1)
        with param.parameterized.discard_events(self):
            self.lead = min(max(self.lead, 1), int(m["n_leads"]))
            self.input_month = min(max(self.input_month, 1), int(m["window"]))
            self.layer = min(max(self.layer, 0), len(m["config"]["hidden"]) - 1)
        if self.start not in hc.month_index:
            self.start = self._default_start()
        self._clamp_channel()
        self.param.watch(self._clamp_channel, ["layer"])
        self.param.watch(self._check_start, ["start"])
        if self._precompute:
            hc.states.start_background(self.index)

    def _show_root(self) -> None:
        if self._root is None:
            return
        if self.hc is None:
            self._root.objects = [self._alert]
        else:
            self._root.objects = [self._alert, self._get_layout()]

    # ------------------------------------------------------------------------------ selection logic
    @property
    def months(self) -> list[str]:
        return self.hc.months if self.hc else []

    def _default_start(self) -> str:
        months = self.months
        test0 = self.hc.ckpt.manifest.get("test_period", [None])[0]
        # the strongest observed El Niño start month of the test years, else the last one
        obs = self.hc.observed.to_series().reindex(self.hc.init)
        if test0:
            obs = obs[obs.index >= pd.Timestamp(test0)]
        return f"{obs.idxmax():%Y-%m}" if obs.notna().any() else months[-1]

    def _check_start(self, event):
        if self.hc is not None and event.new not in self.hc.month_index:
            self._show_error(f"start month {event.new!r} is not in the hindcast "
                             f"({self.months[0]}..{self.months[-1]}); pick one with the scrubber.")
            message = self.error
            self.start = event.old if event.old in self.hc.month_index else self._default_start()
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
        i = self.hc.month_index.get(self.start)
        return i if i is not None else self.hc.month_index[self._default_start()]

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

    # ------------------------------------------------------------------------------ data of the plots (arrays)
    def _input_values(self) -> tuple[np.ndarray, pd.DatetimeIndex]:
        """SST anomalies of the input months as an array (time, lat, lon) and their months."""
        i = self.hc.rows[self.index]
        w = int(self.hc.ckpt.manifest["window"])
        return self.hc.sst[i - w + 1:i + 1], pd.DatetimeIndex(self.hc.ds.time.values[i - w + 1:i + 1])

    def _forecast_values(self) -> np.ndarray:
        return self.hc.maps[self.index, self.lead - 1]

    def _observed_values(self) -> np.ndarray | None:
        k = self.hc.time_index.get(self.verify_month())
        return None if k is None else self.hc.sst[k]

    def _error_values(self) -> np.ndarray:
        ob = self._observed_values()
        fc = self._forecast_values()
        return fc - ob if ob is not None else np.full_like(fc, np.nan)

    def _state_values(self) -> np.ndarray:
        return self.hc.states.state_map(self.index, self.state_kind, self.input_month, self.layer, self.channel)

    # ------------------------------------------------------------------------------ data as DataArrays
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
        return self._da(self._forecast_values(), "forecast", f"ConvLSTM SST anomaly forecast, lead {self.lead}")

    def observed_map(self) -> xr.DataArray:
        t = self.verify_month()
        ob = self._observed_values()
        if ob is None:
            return self._da(np.full(self.hc.maps.shape[2:], np.nan), "observed", f"observed {t:%Y-%m} (no data)")
        return self._da(ob, "observed", f"observed SST anomaly {t:%Y-%m}")

    def error_map(self) -> xr.DataArray:
        return self._da(self._error_values(), "error", "forecast − observed")

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
        """ConvLSTM h and c (time, layer, channel, lat, lon) of the selected start month, NaN on land and beyond
        a layer's channels (from the state store: float16 precision)."""
        st = self.hc.states
        i = self.index
        data = st.block(i)
        w, width = st.window, max(st.hidden)
        arr = np.full((2, w, len(st.hidden), width) + st.sea.shape, np.nan, np.float32)
        for layer, n in enumerate(st.hidden):
            block = data[:, :, st.offsets[layer]:st.offsets[layer] + n].astype(np.float32)
            arr[:, :, layer, :n][..., st.sea] = block
        r = self.hc.rows[i]
        ds = self.hc.ds
        coords = {"time": ds.time.values[r - w + 1:r + 1], "layer": np.arange(len(st.hidden)),
                  "channel": np.arange(width), "lat": ds.lat.values, "lon": ds.lon.values}
        dims = ("time", "layer", "channel", "lat", "lon")
        return xr.Dataset({"h": (dims, arr[0]), "c": (dims, arr[1])}, coords=coords)

    def state_map(self) -> xr.DataArray:
        i = self.hc.rows[self.index]
        t = pd.Timestamp(self.hc.ds.time.values[i - int(self.hc.ckpt.manifest["window"]) + self.input_month])
        return self._da(self._state_values(), f"{self.state_kind}_state", self._state_title(t), units="1")

    def _state_title(self, t: pd.Timestamp) -> str:
        return (f"ConvLSTM {self.state_kind} layer {self.layer} channel {self.channel}, input month "
                f"{self.input_month} ({t:%Y-%m})")

    def skill_frame(self) -> pd.DataFrame:
        return self.hc.skill.reset_index()

    # ------------------------------------------------------------------------------ maps (plain Bokeh)
    def map_slots(self) -> list[str]:
        """The maps of the view: ``input0`` … ``input5`` (input months), ``forecast``, ``observed``, ``error`` and
        ``state``."""
        return [f"input{k}" for k in range(int(self.hc.ckpt.manifest["window"]))] + list(MAP_SLOTS)

    def map_values(self, slot: str) -> tuple[np.ndarray, str, float]:
        """The (lat, lon) field of a map, its title and colour limit ``c`` (the colour bar spans −c..c)."""
        if slot.startswith("input"):
            k = int(slot[5:])
            vals, times = self._input_values()
            return vals[k], f"input {k + 1}: {times[k]:%Y-%m}", self._map_clim()
        if slot == "forecast":
            return (self._forecast_values(), f"ConvLSTM forecast for {self.verify_month():%Y-%m} (lead {self.lead})",
                    self._map_clim())
        if slot == "observed":
            ob = self._observed_values()
            vals = ob if ob is not None else np.full(self.hc.maps.shape[2:], np.nan, np.float32)
            return vals, f"observed {self.verify_month():%Y-%m}", self._map_clim()
        if slot == "error":
            return self._error_values(), "error (forecast − observed)", self._map_clim()
        if slot == "state":
            t0 = time.perf_counter()
            vals = self._state_values()
            i = self.hc.rows[self.index]
            t = pd.Timestamp(self.hc.ds.time.values[i - int(self.hc.ckpt.manifest["window"]) + self.input_month])
            self.timings["state_map_s"] = time.perf_counter() - t0
            return vals, self._state_title(t), _symmetric_limit(vals)
        raise XaiscopeError(f"unknown ENSO map {slot!r}; one of {self.map_slots()}.")

    def map_image(self, values: np.ndarray, projection: str | None = None) -> dict:
        """A (lat, lon) field as the data of a Bokeh image in ``projection`` (default: the selected one):
        ``image`` (rows from the bottom), ``x``, ``y`` (lower-left corner), ``dw``, ``dh``. Plate Carrée: the data
        grid in the Pacific-centred frame (x = lon − 180, degrees); other projections: the field on the projected
        frame's pixels (metres; look-up table, see :func:`projected_grid`), NaN where no cell is drawn."""
        key = projection or self.projection
        v = np.asarray(values, dtype=np.float32)
        if key == "platecarree":
            x0, x1, y0, y1 = self._pc_extent
            img = v if self._lat_ascending else v[::-1]
        else:
            x0, x1, y0, y1 = self._grid(key).extent
            img = self._grid(key).warp(v)  # pixel rows ascend in y: the bottom row first, as Bokeh draws
        return {"image": [np.ascontiguousarray(img, dtype=np.float32)], "x": [float(x0)], "y": [float(y0)],
                "dw": [float(x1 - x0)], "dh": [float(y1 - y0)]}

    def map_data(self, slot: str, projection: str | None = None) -> dict:
        """What a map shows now: ``source`` (:meth:`map_image`), ``low``/``high`` of the colour bar, ``title``."""
        vals, title, c = self.map_values(slot)
        return {"source": self.map_image(vals, projection), "low": -c, "high": c, "title": title}

    def plot_sources(self, projection: str | None = None) -> dict[str, dict]:
        """The data the map figures of ``projection`` hold now (``ColumnDataSource.data`` by map)."""
        figs = self._figs.get(projection or self.projection, {})
        return {slot: dict(f["source"].data) for slot, f in figs.items()}

    @cached_property
    def _lat_ascending(self) -> bool:
        return bool(self.hc.ds.lat.values[-1] > self.hc.ds.lat.values[0])

    @cached_property
    def _pc_extent(self) -> tuple:
        """Edges of the grid in the Pacific-centred frame (x = lon − 180)."""
        lat, lon = self.hc.ds.lat.values, self.hc.ds.lon.values
        dx, dy = abs(lon[1] - lon[0]), abs(lat[1] - lat[0])
        return (lon.min() - 180 - dx / 2, lon.max() - 180 + dx / 2, lat.min() - dy / 2, lat.max() + dy / 2)

    def _grid(self, key: str | None = None) -> ProjectedGrid:
        ds = self.hc.ds
        return projected_grid(key or self.projection, tuple(ds.lat.values.tolist()), tuple(ds.lon.values.tolist()))

    def _map_clim(self) -> float:
        key = (self.hc.ckpt.sha256, self.start)
        if key != self._clim_key:
            v = np.abs(self._input_values()[0])
            self._clim = float(np.nanpercentile(v, 99.5)) if np.isfinite(v).any() else 1.0
            self._clim_key = key
        return self._clim

    def _land_image(self, key: str) -> dict:
        return self.map_image(np.where(self.hc.sea, np.nan, 1.0), key)

    def _map_figure(self, key: str, slot: str, height: int, data: dict) -> dict:
        """One map: a Bokeh figure with its image source and colour mapper (updated in place afterwards), the
        colour bar, hover, coastlines and the Niño 3.4 box; Plate Carrée with °E/°W and °N/°S ticks."""
        from bokeh.models import (ColorBar, ColumnDataSource, CustomJSHover, CustomJSTickFormatter, DataRange1d,
                                  FixedTicker, HoverTool, LinearColorMapper)
        from bokeh.plotting import figure

        pc = key == "platecarree"
        src = ColumnDataSource(data["source"])
        mapper = LinearColorMapper(palette=diverging_palette(), low=data["low"], high=data["high"],
                                   nan_color=LAND_COLOR if pc else "rgba(0, 0, 0, 0)")
        # ranges of the image only (not the coastlines), widened to keep the data's aspect in any frame size
        xr_, yr_ = DataRange1d(range_padding=0), DataRange1d(range_padding=0)
        f = figure(height=height, sizing_mode="stretch_width", x_range=xr_, y_range=yr_, match_aspect=True,
                   title=data["title"], tools="pan,wheel_zoom,box_zoom,reset,save", output_backend="canvas",
                   min_border_right=10)
        f.toolbar.logo = None
        f.grid.visible = False
        f.title.text_font_size = "12px"
        if not pc:
            land = self._land_image(key)
            f.image(image=land["image"], x=land["x"][0], y=land["y"][0], dw=land["dw"][0], dh=land["dh"][0],
                    color_mapper=LinearColorMapper(palette=[LAND_COLOR], low=0, high=2, nan_color="rgba(0, 0, 0, 0)"))
        img = f.image(image="image", x="x", y="y", dw="dw", dh="dh", source=src, color_mapper=mapper)
        xr_.renderers, yr_.renderers = [img], [img]
        tips = [("value", "@image{0.00}")]
        if pc:
            coast = _plot_frame_coast()
            f.line(coast[:, 0], coast[:, 1], line_color="#333333", line_width=0.8)
            f.quad(left=[10], right=[60], bottom=[-5], top=[5], fill_alpha=0, line_color="black", line_width=1.5,
                   line_dash="dashed")  # Niño 3.4: 190–240°E, 5°S–5°N in the frame x = lon − 180
            f.xaxis.formatter = CustomJSTickFormatter(code=LON_TICKS.code)
            f.xaxis.ticker = FixedTicker(ticks=[-150, -90, -30, 30, 90, 150])  # 30°E, 90°E, … (x = lon − 180)
            f.yaxis.formatter = CustomJSTickFormatter(code=LAT_TICKS.code)
            lon_hover = CustomJSHover(code="const lon = ((value + 180 + 540) % 360) - 180; "
                                           "return Math.abs(lon).toFixed(1) + (lon < 0 ? '°W' : '°E');")
            f.add_tools(HoverTool(renderers=[img], tooltips=[("lon", "$x{custom}"), ("lat", "$y{0.0}")] + tips,
                                  formatters={"$x": lon_hover}))
        else:
            ov = projected_lines(key)
            for name, kw in (("coast", dict(line_color="#333333", line_width=0.8)),
                             ("box", dict(line_color="black", line_width=1.5, line_dash="dashed")),
                             ("outline", dict(line_color="#777777", line_width=1))):
                f.line(ov[name][:, 0], ov[name][:, 1], **kw)
            f.axis.visible = False
            f.add_tools(HoverTool(renderers=[img], tooltips=tips))
        f.add_layout(ColorBar(color_mapper=mapper, width=10), "right")
        return {"figure": f, "source": src, "mapper": mapper}

    def _series_data(self) -> dict:
        df = self.series()
        return {"time": df.index.values, **{c: df[c].values.astype(float) for c in SERIES}}

    def _series_title(self) -> str:
        return f"Niño 3.4 (°C): forecasts at lead {self.lead} (verifying month)"

    def _marker_ms(self) -> float:
        return pd.Timestamp(self.hc.init[self.index]).value / 1e6  # Bokeh's datetime axis: ms since the epoch

    def _series_figure(self):
        """The Niño 3.4 series (observed and the three forecasts at the selected lead) as a Bokeh figure: the lines
        change with the lead, the start-month marker (a Span) with the start month; a click moves the start."""
        from bokeh.events import Tap
        from bokeh.models import BoxAnnotation, ColumnDataSource, Legend, LegendItem, Range1d, Span
        from bokeh.plotting import figure

        f = figure(height=300, sizing_mode="stretch_width", x_axis_type="datetime", y_range=Range1d(-3, 3.5),
                   title=self._series_title(), x_axis_label="verifying month", y_axis_label="Niño 3.4 anomaly (°C)",
                   tools="pan,wheel_zoom,box_zoom,reset,save", output_backend="canvas")
        f.toolbar.logo = None
        f.title.text_font_size = "12px"
        f.add_layout(BoxAnnotation(bottom=0.5, top=4, fill_color="#d62728", fill_alpha=0.08, line_alpha=0))
        f.add_layout(BoxAnnotation(bottom=-4, top=-0.5, fill_color="#1f77b4", fill_alpha=0.08, line_alpha=0))
        src = ColumnDataSource(self._series_data())
        items = [LegendItem(label=c, renderers=[f.line("time", c, source=src, color=COLORS[c],
                                                         line_width=2 if c == "observed" else 1.5)])
                 for c in SERIES]
        f.add_layout(Legend(items=items, location="top_left", label_text_font_size="11px", spacing=0, padding=4))
        marker = Span(location=self._marker_ms(), dimension="height", line_color="#2ca02c", line_width=2)
        f.add_layout(marker)
        f.on_event(Tap, lambda e: self.set_start(e.x) if e.x is not None else None)

        def on_lead(*_):
            src.data = self._series_data()
            f.title.text = self._series_title()

        self.param.watch(lambda *_: setattr(marker, "location", self._marker_ms()), ["start"])
        self.param.watch(on_lead, ["lead"])
        self._series = {"figure": f, "source": src, "marker": marker}
        return f

    def _state_visible(self) -> bool:
        return self._state_shown

    def _push(self, slots) -> None:
        """Put the selection's maps into the figures of the selected projection, in place (image data, colour
        limits, titles); the state map only while its tab is shown (else when the tab is opened)."""
        figs = self._figs.get(self.projection)
        if not figs:
            return
        t0 = time.perf_counter()
        try:
            with pn.io.hold():
                for slot in slots:
                    if slot == "state" and not self._state_visible():
                        self._state_stale = True
                        continue
                    d = self.map_data(slot)
                    f = figs[slot]
                    f["source"].data = d["source"]
                    f["mapper"].update(low=d["low"], high=d["high"])
                    f["figure"].title.text = d["title"]
                    if slot == "state":
                        self._state_stale = False
        except Exception as err:  # noqa: BLE001 - shown to the user, the app keeps running
            from xaiscope.dashboard.state import describe_error

            log.error("ENSO view: map update failed", exc_info=True)
            self._show_error(f"Cannot update the maps: {describe_error(err)}")
        self.timings["maps_update_ms"] = 1000 * (time.perf_counter() - t0)

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
        state = self.state_map()
        state.attrs["comment"] = "internal states are kept as float16 (relative precision 5e-4)"
        ds = xr.Dataset({"input_sst_anomaly": self.input_maps().rename(time="input_time"),
                         "forecast": self.forecast_map(), "observed": self.observed_map(),
                         "error": self.error_map(), "state": state,
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
        from xaiscope.dashboard.compute import netcdf_bytes

        return netcdf_bytes(ds, as_text=False)

    # ------------------------------------------------------------------------------ layout
    def _dmap(self, fn, deps) -> hv.DynamicMap:
        # cache_size=1: no memory of past frames (and no ranges computed over them)
        return hv.DynamicMap(fn, streams=[hv.streams.Params(self, deps)], cache_size=1)

    def __panel__(self):
        if self._root is None:
            self._root = pn.Column(self._alert, sizing_mode="stretch_width", css_classes=["xs-enso"])
            if self.hc is not None:
                self._root.append(self._get_layout())
            elif self._thread is not None:
                self._root.append(pn.Column(pn.pane.Markdown("## ENSO forecasts (ConvLSTM)"), self._progress_md,
                                            self._progress, sizing_mode="stretch_width"))
            if (self.hc is not None or self._thread is not None) and pn.state.location is not None \
                    and pn.state.curdoc is not None:
                pn.state.location.sync(self, URL_KEYS)
        return self._root

    def _get_layout(self):
        if self._layout is None:
            self._layout = self._make_layout()
        return self._layout

    def _map_panes(self, key: str) -> tuple:
        """The map grid (inputs, forecast, observed, error) and the state map in projection ``key``: Bokeh figures
        built once per projection, updated in place afterwards (:meth:`_push`)."""
        if key not in self._maps_cache:
            heights = {"forecast": 230, "observed": 230, "error": 230, "state": 300}
            figs = {}
            for slot in self.map_slots():
                if slot == "state" and not self._state_visible():  # filled in when its tab is opened
                    vals = np.full(self.hc.sea.shape, np.nan, np.float32)
                    data = {"source": self.map_image(vals, key), "low": -1.0, "high": 1.0, "title": " "}
                    self._state_stale = True
                else:
                    data = self.map_data(slot, key)
                figs[slot] = self._map_figure(key, slot, heights.get(slot, 180), data)
            self._figs[key] = figs
            bk = dict(sizing_mode="stretch_width")
            inputs = [s for s in self.map_slots() if s.startswith("input")]
            grid = pn.Column(
                pn.GridBox(*[pn.pane.Bokeh(figs[s]["figure"], **bk) for s in inputs], ncols=3,
                           sizing_mode="stretch_width"),
                pn.GridBox(*[pn.pane.Bokeh(figs[s]["figure"], **bk) for s in ("forecast", "observed", "error")],
                           ncols=3, sizing_mode="stretch_width"), sizing_mode="stretch_width")
            self._maps_cache[key] = (grid, pn.pane.Bokeh(figs["state"]["figure"], **bk))
        else:
            self._push(self.map_slots())  # the selection may have moved while another projection was shown
        return self._maps_cache[key]

    def _make_layout(self):
        months = self.months
        player = pn.widgets.Player(label="start month", start=0, end=len(months) - 1, value=self.index,
                                   interval=800, loop_policy="once", show_loop_controls=False, width=420)
        slider = pn.widgets.DiscreteSlider(label="Start month", options=months, value=self.start, width=420)
        lead_w = pn.widgets.RadioButtonGroup.from_param(self.param.lead, options=list(
            range(1, self.param.lead.bounds[1] + 1)), name="Lead (months)")
        proj_w = pn.widgets.Select.from_param(self.param.projection, name="Map projection", width=260,
                                              options={label: k for k, (label, _) in PROJECTIONS.items()})
        self._player, self._slider, self._proj_w = player, slider, proj_w

        def from_player(e):
            self.start = months[int(e.new)]

        def from_slider(e):
            self.start = e.new

        def to_widgets(e):
            slider.value = e.new
            player.value = self.hc.month_index[e.new]

        player.param.watch(from_player, "value")
        slider.param.watch(from_slider, "value")
        self.param.watch(to_widgets, "start")

        grid, st = self._map_panes(self.projection)
        maps_box = pn.Column(grid, sizing_mode="stretch_width")
        state_box = pn.Column(st, sizing_mode="stretch_width")

        def to_projection(e):
            grid, st = self._map_panes(e.new)
            maps_box.objects, state_box.objects = [grid], [st]

        self.param.watch(to_projection, "projection")
        self._maps_box, self._state_box = maps_box, state_box
        # the maps follow the selection in place: new image data, colour limits and titles, no new plots
        self.param.watch(lambda *_: self._push(self.map_slots()), ["start"])
        self.param.watch(lambda *_: self._push(["forecast", "observed", "error"]), ["lead"])
        self.param.watch(lambda *_: self._push(["state"]), STATE_PARAMS)

        series = self._series_figure()

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
        src = ("read from the stored hindcast" if self.hc.source != "computed" else
               f"computed in {self.hc.seconds:.1f} s")
        skill_md = pn.pane.Markdown(
            f"Niño 3.4 anomaly correlation `r` and RMSE (°C) of forecasts verifying in the test years "
            f"{'..'.join(self.hc.ckpt.manifest.get('test_period', []))}; ConvLSTM hindcast {src} "
            f"(checkpoint sha256 `{self.hc.ckpt.sha256[:12]}`).")
        hv_pane = dict(sizing_mode="stretch_width", linked_axes=False)
        tabs = pn.Tabs(
                ("Maps", pn.Column(maps_box, fc_table, sizing_mode="stretch_width")),
                ("Internal states", pn.Column(state_ctl, state_box, sizing_mode="stretch_width")),
                ("Skill", pn.Row(pn.Column(skill_md, table), pn.pane.HoloViews(
                    self._dmap(self.skill_element, []).opts(height=300, responsive=True),
                    **hv_pane), sizing_mode="stretch_width")),
                ("Downloads", pn.Column(pn.pane.Markdown("NetCDF files with the checkpoint's sha256 and the "
                                                         "settings as global attributes."), dl_maps, dl_series,
                                        max_width=500)),
                dynamic=True, sizing_mode="stretch_width")

        def to_tab(e):
            self._state_shown = e.new == 1
            if self._state_shown and self._state_stale:
                self._push(["state"])

        tabs.param.watch(to_tab, "active")
        self._tabs = tabs
        return pn.Column(
            pn.pane.Markdown("## ENSO forecasts (ConvLSTM)\nClick the Niño 3.4 series to move the start month."),
            pn.Row(pn.Column(slider, player), lead_w, proj_w),
            pn.pane.Bokeh(series, sizing_mode="stretch_width"), tabs, sizing_mode="stretch_width")


from xaiscope.dashboard.registry import register_view  # noqa: E402

register_view("enso", "ENSO forecasts (ConvLSTM)", EnsoExplorer,
              "ConvLSTM Niño 3.4 forecasts on maps against persistence and a linear inverse model.")
