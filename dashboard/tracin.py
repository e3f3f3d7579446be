"""The TracIn view: which training examples pushed a prediction up or down, and which ones look suspicious.

In a notebook (``pn.extension()`` is all it needs)::

    from xaiscope.dashboard.tracin import TracInExplorer
    TracInExplorer()                                                     # SST-QoI lag 3, last layer
    TracInExplorer(run="assets/checkpoints/hydro_01031500", every=20)    # a run folder, every 20th epoch

Pick a model (a shipped checkpoint series or ``run=``), a test example (click the series or use the selector)
and a method: *exact* (all parameters or chosen layers), *last layer* (exact for that layer), or *random
projection* (approximate; dimension and seed). Training embeddings come from a store cached under
``$XAISCOPE_CACHE_DIR/tracin`` (:mod:`xaiscope.core.influence_view`); a missing one is computed after a cost
estimate (examples × checkpoints × measured time per example), off the event loop with a progress bar. A query is
then one test embedding and a matrix product.

Shown: top-k proponents and opponents with their scores, each drawn small as what it is (a hydrograph window
with precipitation, an SST anomaly map); one selected training example large beside the test example; the
self-influence of every training example against its training loss (Datashader when large; click a point to
open that example); the mislabel-detection curve with its baselines (shipped result); TracIn diagnostics as
warnings; CSV and NetCDF downloads with the checkpoints' sha256, the method, dimension and seed.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import panel as pn
import param
import xarray as xr

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401

from xaiscope.core import influence as I
from xaiscope.core import influence_view as V
from xaiscope.dashboard.session import run_in_doc
from xaiscope.dashboard.sources import LRUCache

log = logging.getLogger("xaiscope.dashboard")

if hv.Store.current_backend != "bokeh" or "bokeh" not in hv.Store.renderers:
    hv.Store.set_current_backend("bokeh")

METHOD_LABELS = {
    "last_layer": "last layer (exact for that layer)",
    "projection": "random projection (approximate)",
    "exact": "exact (all parameters or chosen layers)",
}
#: Per model kind: the default method and layers (cheap to compute, exact where possible).
DEFAULTS = {"sst_qoi_mlp": ("last_layer", []), "hydro_lstm": ("last_layer", []),
            "enso_convlstm": ("exact", ["map_head", "nino_head", "phase_head"])}
AUTO_SECONDS = 120.0     # a missing store estimated to take longer waits for the user's go
LARGE = 3000             # more training examples than this: the self-influence plot is rasterized
PROGRESS_AFTER_S = 0.3   # a job still running after this long shows its label and progress bar (a click's
                         # scoring takes ~30 ms: showing and hiding the bar would re-lay out the page twice)
DIAG_SECONDS = 8.0       # time budget for the test embeddings of the diagnostics
DIAG_MAX = 64
DIAG_BATCH = 32          # test examples per batched gradient of the diagnostics
MAP_CMAP = "RdBu_r"
COLORS = {"proponent": "#1b7837", "opponent": "#b2182b", "test": "#2166ac", "selected": "#e08214"}

_TEST_EMB = LRUCache(maxsize=4096)


# ------------------------------------------------------------------------------------------------ context
@dataclass
class ModelContext:
    """A checkpoint series with its training and test examples and what the plots need (cached per series)."""

    entry: V.RunEntry
    ckpts: list
    train: I.Examples
    test: I.Examples
    extra: dict = field(default_factory=dict)   # basin dataset (hydro), land mask (maps), pick series

    @property
    def kind(self) -> str:
        return self.ckpts[0].kind

    @property
    def manifest(self) -> dict:
        return self.ckpts[-1].manifest

    @property
    def layer_names(self) -> list[str]:
        names = [n for n, p in self.ckpts[-1].model.named_parameters() if p.requires_grad]
        out = []
        for n in names:
            prefix = n.rsplit(".", 1)[0] if "." in n else n
            if prefix not in out:
                out.append(prefix)
        return out


def _labels(index: np.ndarray, kind: str) -> list[str]:
    idx = pd.DatetimeIndex(np.asarray(index))
    fmt = "%Y-%m-%d" if kind == "hydro_lstm" else "%Y-%m"
    return [t.strftime(fmt) for t in idx]


def open_series(paths) -> list:
    """The checkpoints of a series through the process's engine: each file is read once per process (cached by
    path and modification time) and every session gets the engine's one model object for its weights."""
    from xaiscope.core.engine import get_engine

    engine = get_engine()
    return I.load_run([engine.open_checkpoint(p) for p in paths])


def load_context(entry: V.RunEntry) -> ModelContext:
    """Load a series (through the engine), its examples and the display data — once per process: the context
    lives in the engine's result cache (``("tracin.context", paths)``), shared by every session."""
    from xaiscope.core.engine import get_engine

    def build():
        V.import_model_kinds()
        ckpts = open_series(entry.paths)
        kind = ckpts[0].kind
        adapter = I.get_adapter(kind)
        ds = None                  # the demo data read once, for both splits and the plots
        if kind == "hydro_lstm":
            from xaiscope.core.hydro import open_basin_data

            ds = open_basin_data("demo")
        elif kind == "sst_qoi_mlp":
            from xaiscope.data.sst import demo_sst

            ds = demo_sst(with_ssh=False)
        train = adapter.examples(ckpts[-1], "train", ds)
        test = adapter.examples(ckpts[-1], "test", ds)
        ctx = ModelContext(entry, ckpts, train, test)
        ctx.extra["train_labels"] = _labels(train.index, kind)
        ctx.extra["test_labels"] = _labels(test.index, kind)
        if kind == "hydro_lstm":
            ctx.extra["record"] = pd.DataFrame({"qobs": ds["qobs"].values, "prcp": ds["prcp"].values},
                                               index=pd.DatetimeIndex(ds["time"].values))
        elif kind in ("sst_qoi_mlp", "enso_convlstm"):
            from xaiscope.data.sst import demo_sst, nino34

            ds = ds if ds is not None else demo_sst(with_ssh=False)
            ctx.extra["land"] = ds["land_mask"].values.astype(bool)
            ctx.extra["lat"], ctx.extra["lon"] = ds.lat.values, ds.lon.values
            if kind == "enso_convlstm":
                ctx.extra["nino34"] = nino34(ds["sst_anomaly"]).to_series()
        return ctx

    return get_engine().cached(("tracin.context", tuple(str(p) for p in entry.paths)), build)


@dataclass
class SharedStore:
    """A store with its training embeddings in memory and their self-influence: one per process and store, kept
    in the engine's result cache (``("tracin.store", folder, checkpoint sha256s)``) so that every session queries
    the same arrays. A store larger than the whole cache is still returned, but each session then reads its own."""

    store: I.InfluenceStore
    embeddings: np.ndarray
    self_influence: np.ndarray


def _share_store(store: I.InfluenceStore) -> SharedStore:
    emb = store.embeddings          # read once (Zarr) or memory-mapped (NumPy)
    return SharedStore(store, emb, np.asarray(store.self_influence(), dtype=np.float64))


def _store_key(ckpts, spec: I.EmbeddingSpec, n_train: int, root) -> tuple:
    return ("tracin.store", str(V.store_dir(ckpts, spec, n_train, root)), tuple(c.sha256 for c in ckpts))


def shared_store(ckpts, spec: I.EmbeddingSpec, n_train: int, root=None) -> SharedStore | None:
    """The process's shared copy of the stored embeddings for these checkpoints and spec; ``None`` when nothing
    is stored yet (or the store on disk is stale)."""
    from xaiscope.core.engine import get_engine

    engine = get_engine()
    key = _store_key(ckpts, spec, n_train, root)

    def load():
        store = V.cached_store(ckpts, spec, n_train, root)
        if store is None:
            raise _NoStore          # nothing is kept under the key (a computed store will be)
        return _share_store(store)

    try:   # concurrent sessions wait for one reader of the embeddings
        return engine.cached(key, load)
    except _NoStore:
        return None


class _NoStore(Exception):
    """No (fresh) store on disk: raised inside the cache's computation so that nothing is cached."""


def _device():
    """Where this process computes (the engine's default device: ``xaiscope serve --device``, else auto)."""
    from xaiscope.core.engine import get_engine

    return get_engine().default_device


def compute_shared_store(ckpts, train: I.Examples, spec: I.EmbeddingSpec, progress=None, root=None
                         ) -> SharedStore:
    """Compute (and keep on disk and in the engine's cache) the training embeddings; concurrent sessions asking
    for the same store wait for one computation."""
    from xaiscope.core.engine import get_engine

    key = _store_key(ckpts, spec, len(train), root)
    return get_engine().cached(key, lambda: _share_store(
        V.cached_store(ckpts, spec, len(train), root)
        or V.compute_store(ckpts, train, spec, progress=progress, root=root, device=_device())))


_COAST = None
_PALETTE: list[str] = []


def _map_palette() -> list[str]:
    """The maps' colour map as 256 Bokeh colours (computed once)."""
    if not _PALETTE:
        from holoviews.plotting.util import process_cmap

        _PALETTE.extend(process_cmap(MAP_CMAP, 256))
    return _PALETTE


def two_lines(title: str) -> str:
    """A large plot's title on two lines (the example, then what it holds): side by side the one-line titles
    overflowed their plots. "…; input 2016-01" / "… (target 4.2 mm/day)" / "…: SST anomaly …" start the second."""
    for sep in ("; ", " (", ": "):
        if sep in title:
            head, tail = title.split(sep, 1)
            return f"{head}\n{tail[:-1] if sep == ' (' and tail.endswith(')') else tail}"
    return title


def _ms(t) -> float:
    """A time as Bokeh places it on a datetime axis: milliseconds since 1970."""
    return pd.Timestamp(t).value / 1e6


def coast_xy() -> np.ndarray:
    """The coastline path's (x, y) points, NaN between segments (for a plain Bokeh line)."""
    return np.column_stack([coast_path().dimension_values(0), coast_path().dimension_values(1)])


def coast_path() -> hv.Path:
    """Natural Earth coastlines (shipped) in the Pacific-centred frame x = lon − 180, as one NaN-separated path
    (one glyph: cheap to draw and to update)."""
    global _COAST
    if _COAST is None:
        from xaiscope.dashboard.enso import coastline_geometries, to_plot_frame

        parts = []
        for seg in to_plot_frame(coastline_geometries("110m")):
            parts += [seg, np.full((1, 2), np.nan)]
        xy = np.concatenate(parts)
        _COAST = hv.Path([xy], ["lon", "lat"]).opts(color="#333333", line_width=0.7)
    return _COAST


# ------------------------------------------------------------------------------------------------ the view

def _map_image(da, blank: bool = False) -> tuple[dict, float]:
    """An SST map as the data of a Bokeh ``image`` glyph on longitudes centred on 180° (south to north), and its
    colour limit (the 99th percentile of |value|); ``blank``: the same geometry, all NaN."""
    lat, lon = da.lat.values, da.lon.values
    v = np.asarray(da.values, dtype=np.float32)
    if blank:
        v = v * np.nan
    if lat[0] > lat[-1]:
        v, lat = v[::-1], lat[::-1]
    c = float(np.nanpercentile(np.abs(v), 99)) if np.isfinite(v).any() else 1.0
    c = c if c > 0 and np.isfinite(c) else 1.0
    dx, dy = (lon[1] - lon[0]) / 2, (lat[1] - lat[0]) / 2
    return {"image": [np.ascontiguousarray(v)], "x": [lon[0] - 180.0 - dx], "y": [lat[0] - dy],
            "dw": [lon[-1] - lon[0] + 2 * dx], "dh": [lat[-1] - lat[0] + 2 * dy]}, c

class TracInExplorer(pn.viewable.Viewer):
    """TracIn proponents, opponents and self-influence of a checkpoint series.

    Parameters
    ----------
    run : a run folder (``epoch_NNN`` checkpoints), a list of checkpoint folders, or the key of a shipped series
        (``"sst_qoi_lag03"``, ``"hydro_01031500"``, ``"enso_convlstm"`` …); default: SST-QoI lag 3.
    every : keep every ``every``-th epoch of ``run`` (always ending on the last).
    background : compute off the event loop when served (default); ``False`` computes in the calling thread.
    cache_dir : where stores are kept (default ``$XAISCOPE_CACHE_DIR/tracin``).
    state : the app's shared state (accepted for the registry; the view keeps its own checkpoints).
    """

    # the app's checkpoint and basin pickers are for the hydrology views: hidden while this view is shown (it picks
    # its own checkpoints)
    uses_sidebar_pickers = False

    model = param.Selector(default=None, objects=[], doc="checkpoint series")
    test = param.String(default="", doc="test example (its date or month)")
    method = param.Selector(default="last_layer", objects=list(METHOD_LABELS), doc="how TracIn is computed")
    layers = param.ListSelector(default=[], objects=[], doc="exact: parameters of these layers only (none = all)")
    dim = param.Integer(default=128, bounds=(1, 8192), doc="projection dimension per checkpoint")
    seed = param.Integer(default=0, bounds=(0, None), doc="projection seed")
    k = param.Integer(default=5, bounds=(1, 20), doc="proponents and opponents shown")
    selected = param.String(default="", doc="selected training example (its date or month)")
    error = param.String(default="", doc="last error shown to the user")
    status = param.String(default="", doc="what is being computed / what is shown")
    version = param.Integer(default=0, doc="bumped when the scores change (the plots follow it)")
    store_version = param.Integer(default=0, doc="bumped when the training embeddings change")

    def __init__(self, run=None, every: int = 1, background: bool = True, cache_dir=None, state=None, **params):
        super().__init__(**params)
        self.runs = V.shipped_runs()
        self._background = background
        self._cache_dir = Path(cache_dir) if cache_dir else None
        self._token = 0
        self._layout = None
        self._thumb_box = None
        self._thumbs: list = []
        self._big: dict = {}
        self._pick_span = None
        self._diag_shown = None
        self.ctx: ModelContext | None = None
        self.store: I.InfluenceStore | None = None
        self._train_emb: np.ndarray | None = None
        self.estimate: V.CostEstimate | None = None
        self.scores_row: np.ndarray | None = None
        self.topk: I.TopK | None = None
        self.self_infl: np.ndarray | None = None
        self.train_loss: np.ndarray | None = None
        self.diag: dict | None = None
        self.timings: dict[str, float] = {}
        self._alert = pn.pane.Alert("", alert_type="danger", visible=False)
        self._diag_box = pn.Column(sizing_mode="stretch_width")
        self._status_md = pn.pane.Markdown("", sizing_mode="stretch_width")
        self._progress = pn.indicators.Progress(value=-1, active=False, visible=False, width=300)
        self._go = pn.widgets.Button(label="Compute", button_type="primary", visible=False)
        self._go.on_click(lambda *_: self.compute())
        if run is not None:
            key = str(run) if isinstance(run, str) and run in self.runs else "run"
            if key == "run":
                if isinstance(run, (list, tuple)):
                    paths = [str(p) for p in run]
                    self.runs["run"] = V.RunEntry("run", f"given checkpoints ({len(paths)})", tuple(paths))
                else:
                    self.runs["run"] = V.run_entry("run", run, every)
            params.setdefault("model", key)
        self.param.model.objects = list(self.runs)
        args = self._url_args()
        for name in ("model", "test", "method", "selected", "dim", "seed"):
            if name in args and name not in params:
                params[name] = args[name]
        if params.get("model") not in self.runs:
            params.pop("model", None)
        with param.parameterized.discard_events(self):
            self.param.update(**{k: v for k, v in params.items() if k in ("model", "test", "method", "selected",
                                                                          "dim", "seed", "k")})
            if self.model is None and self.runs:
                self.model = next(iter(self.runs))
        self._spec_from_url = any(n in params for n in ("method", "dim", "seed"))
        self.param.watch(self._on_model, ["model"])
        self.param.watch(self._on_spec, ["method", "layers", "dim", "seed"])
        self.param.watch(self._on_test, ["test"])
        self.param.watch(self._on_selected, ["selected"])
        self.param.watch(self._on_k, ["k"])
        self._t_open = time.perf_counter()
        if self._in_server():  # start once the page is up: a change before the browser has the page is lost
            pn.state.onload(lambda: self._load_model(keep_spec=self._spec_from_url))
        else:
            self._load_model(keep_spec=self._spec_from_url)

    # ------------------------------------------------------------------------------ URL, errors, jobs
    @staticmethod
    def _url_args() -> dict:
        out = {}
        try:
            args = pn.state.session_args or {}
        except Exception:  # noqa: BLE001 - not in a session
            return out
        names = {"model": "model", "test": "test", "method": "method", "train": "selected", "dim": "dim",
                 "seed": "seed"}
        for key, name in names.items():
            if key in args and args[key]:
                v = args[key][0].decode() if isinstance(args[key][0], bytes) else str(args[key][0])
                out[name] = int(v) if name in ("dim", "seed") and v.isdigit() else v
        return out

    def _show_error(self, message: str) -> None:
        self.error = message
        self._alert.param.update(object=message or " ", visible=bool(message))

    def _fail(self, what: str, err: BaseException) -> None:
        from xaiscope.dashboard.state import describe_error

        log.error("TracIn view: %s failed", what, exc_info=err)
        self._show_error(f"{what}: {describe_error(err)}")

    def _set_status(self, text: str) -> None:
        self.status = text
        self._status_md.object = text

    def _show_progress(self, label: str, fraction: float | None) -> None:
        value = -1 if fraction is None else int(100 * fraction)
        self._progress.param.update(visible=True, active=fraction is None, value=value)
        self._status_md.object = f"**{label}**" + ("" if fraction is None else f" ({value} %)")

    def _hide_progress(self) -> None:
        self._progress.param.update(visible=False, active=False, value=-1)
        self._status_md.object = self.status

    def _in_server(self) -> bool:
        doc = pn.state.curdoc
        return bool(self._background and doc is not None and doc.session_context is not None)

    _in_doc = staticmethod(run_in_doc)

    def _job(self, label: str, work, finish) -> None:
        """``work(progress)`` off the event loop when served (else here), then ``finish(result)`` with the
        document lock. A newer job makes an older one's result void."""
        self._token += 1
        token = self._token
        if not self._in_server():
            self._show_progress(label, None)
            try:
                finish(work(None))
            except Exception as err:  # noqa: BLE001 - shown to the user, view keeps running
                self._fail(label, err)
            finally:
                if token == self._token:
                    self._hide_progress()
            return
        doc = pn.state.curdoc

        async def run():
            loop = asyncio.get_running_loop()
            shown = []

            def show(fraction):
                if token == self._token:
                    shown.append(True)
                    self._show_progress(label, fraction)

            def report(done, total):
                loop.call_soon_threadsafe(show, done / max(total, 1))

            later = loop.call_later(PROGRESS_AFTER_S, show, None)
            try:
                result = await asyncio.to_thread(work, report)
                if token == self._token:
                    await self._in_doc(doc, finish, result)
            except Exception as err:  # noqa: BLE001
                try:
                    await self._in_doc(doc, self._fail, label, err)
                except Exception:  # noqa: BLE001 - the session is gone
                    log.debug("could not show the error", exc_info=True)
            finally:
                later.cancel()
                if token == self._token and (shown or self._progress.visible):   # also an older job's bar
                    try:
                        await self._in_doc(doc, self._hide_progress)
                    except Exception:  # noqa: BLE001
                        log.debug("could not hide the progress bar", exc_info=True)

        pn.state.execute(run)

    # ------------------------------------------------------------------------------ selection logic
    @property
    def spec(self) -> I.EmbeddingSpec:
        layers = list(self.layers) if self.method == "exact" and self.layers else None
        return I.EmbeddingSpec(self.method, layers, int(self.dim), int(self.seed))

    @property
    def kind(self) -> str:
        return self.ctx.kind if self.ctx else ""

    @property
    def test_labels(self) -> list[str]:
        return self.ctx.extra["test_labels"] if self.ctx else []

    @property
    def train_labels(self) -> list[str]:
        return self.ctx.extra["train_labels"] if self.ctx else []

    @property
    def test_index(self) -> int:
        labels = self.test_labels
        return labels.index(self.test) if self.test in labels else 0

    @property
    def selected_index(self) -> int | None:
        labels = self.train_labels
        return labels.index(self.selected) if self.selected in labels else None

    def _default_test(self) -> str:
        labels = self.test_labels
        if not labels:
            return ""
        if self.kind == "hydro_lstm":  # the largest observed flow of the test period
            rec = self.ctx.extra["record"]["qobs"].reindex(pd.DatetimeIndex(self.ctx.test.index))
            return labels[int(np.nanargmax(rec.values))]
        return labels[len(labels) // 2]

    def set_test_near(self, value) -> None:
        """Select the test example nearest to ``value`` (a date, ms since epoch as Bokeh sends, or a label)."""
        if value is None or not self.ctx:
            return
        if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool):
            ts = pd.Timestamp(float(value), unit="ms")
        else:
            ts = pd.Timestamp(value)
        idx = pd.DatetimeIndex(np.asarray(self.ctx.test.index))
        self.test = self.test_labels[int(np.abs((idx - ts).total_seconds()).argmin())]

    def select_training(self, i: int) -> None:
        self.selected = self.train_labels[int(i)]

    def select_near_point(self, x, y) -> None:
        """Select the training example nearest to a click on the self-influence plot (log10 axes)."""
        if x is None or y is None or self.self_infl is None:
            return
        df = self.self_influence_frame()
        d = (df["log10_loss"] - x) ** 2 + (df["log10_self_influence"] - y) ** 2
        self.select_training(int(np.argmin(d.values)))

    def _on_model(self, *_):
        self._t_open = time.perf_counter()
        self._load_model(keep_spec=False)

    def _load_model(self, keep_spec: bool) -> None:
        self._show_error("")
        entry = self.runs[self.model]

        def work(_):
            return load_context(entry)

        def finish(ctx):
            self.ctx = ctx
            self.store = self.scores_row = self.topk = self.self_infl = self.diag = None
            names = ctx.layer_names
            method, layers = DEFAULTS.get(ctx.kind, ("projection", []))
            if ctx.kind == "enso_convlstm" or I.get_adapter(ctx.kind).head is None:
                objects = [m for m in METHOD_LABELS if m != "last_layer"]
            else:
                objects = list(METHOD_LABELS)
            with param.parameterized.discard_events(self):
                self.param.method.objects = objects
                self.param.layers.objects = names
                if not keep_spec or self.method not in objects:
                    self.method = method
                self.layers = [n for n in layers if n in names] if self.method == "exact" else []
                if self.test not in ctx.extra["test_labels"]:
                    self.test = self._default_test()
                if self.selected and self.selected not in ctx.extra["train_labels"]:
                    self.selected = ""
            self._sync_widgets()
            self._rebuild_plots()
            self._prepare_store()

        self._job(f"Loading {entry.label} and its examples", work, finish)

    def _on_spec(self, *_):
        if self.ctx is None:
            return
        self.store = self.scores_row = self.topk = self.self_infl = self.diag = None
        self._sync_widgets()
        self._prepare_store()

    def _on_test(self, event):
        if self.ctx is None:
            return
        if event.new not in self.test_labels:
            self._show_error(f"test example {event.new!r} is not one of this model's test examples "
                             f"({self.test_labels[0]}..{self.test_labels[-1]}); pick one from the list or the plot.")
            message = self.error
            self.test = event.old if event.old in self.test_labels else self._default_test()
            self._show_error(message)
            return
        if self.error.startswith("test example"):
            self._show_error("")
        self._move_pick_marker()
        self._update_big("test")
        if self.store is not None:
            self._query()

    def _on_selected(self, event):
        if self.ctx is None or not event.new:
            return
        if event.new not in self.train_labels:
            self._show_error(f"training example {event.new!r} is not in this model's training set.")
            self.selected = event.old if event.old in self.train_labels else ""
            return
        self._update_big("train")

    def _on_k(self, *_):
        if self.store is not None and self.scores_row is not None:
            self.topk = I.top_k(self.scores_row, self.k)
            self._rebuild_thumbs()
            self._after_result()

    # ------------------------------------------------------------------------------ computations
    def _prepare_store(self) -> None:
        ctx, spec = self.ctx, self.spec
        self.estimate = None

        def work(_):
            from xaiscope.core.engine import get_engine

            store = shared_store(ctx.ckpts, spec, len(ctx.train), self._cache_dir)
            est = None if store is not None else V.estimate_cost(ctx.ckpts, ctx.train, spec, device=_device())
            loss = get_engine().cached(("tracin.train_loss", ctx.ckpts[-1].sha256, tuple(ctx.entry.paths)),
                                       lambda: V.training_loss(ctx.ckpts[-1], ctx.train))
            return store, est, loss

        def finish(res):
            store, est, loss = res
            self.train_loss = loss
            if store is not None:
                self._store_ready(store)
                return
            self.estimate = est
            text = f"Training embeddings ({spec.label}) are not stored yet: {est.text()}."
            self._set_status(text)
            if est.seconds <= AUTO_SECONDS:
                self.compute()
            else:
                self._go.param.update(label=f"Compute the training embeddings (≈ {V._duration(est.seconds)})",
                                      visible=True)

        self._job("Looking for stored training embeddings", work, finish)

    def compute(self) -> None:
        """Compute (and cache) the training embeddings of the current model and method."""
        ctx, spec = self.ctx, self.spec
        self._go.visible = False
        est = self.estimate
        label = f"Computing training embeddings — {est.text()}" if est else "Computing training embeddings"
        t0 = time.perf_counter()

        def work(progress):
            return compute_shared_store(ctx.ckpts, ctx.train, spec, progress=progress, root=self._cache_dir)

        def finish(store):
            self.timings["store_s"] = time.perf_counter() - t0
            self._store_ready(store)

        self._job(label, work, finish)

    def _store_ready(self, shared: SharedStore) -> None:
        store = shared.store
        self.store = store
        self._train_emb = shared.embeddings
        self.self_infl = shared.self_influence
        self.store_version += 1
        self._set_status(f"{self.ctx.entry.label}: {len(self.ctx.train):,} training and {len(self.ctx.test):,} "
                         f"test examples; {store.spec.label}, {len(self.ctx.ckpts)} checkpoints "
                         f"(sha256 {', '.join(h[:8] for h in store.checkpoint_hashes)}).")
        self._query(diagnostics=True)

    def _store_key(self) -> tuple:
        return (str(self.store.path), tuple(self.store.checkpoint_hashes))

    def test_embedding(self, i: int) -> np.ndarray:
        """The TracIn embedding of test example ``i`` (cached)."""
        ctx, store = self.ctx, self.store
        return _TEST_EMB.get_or_compute(self._store_key() + (int(i),), lambda: np.asarray(
            store.embed_test(ctx.test.x[i:i + 1], ctx.test.y[i:i + 1], ctx.ckpts))[0])

    def _query(self, diagnostics: bool = False) -> None:
        i, train_emb = self.test_index, self._train_emb
        want_diag = diagnostics or self.diag is None

        def work(progress):
            t0 = time.perf_counter()
            emb = self.test_embedding(i)
            t_click = time.perf_counter() - t0
            row = np.asarray(I.score_product(emb[None], train_emb)[0], dtype=np.float64)
            diag = self._diagnostics(max(t_click, 1e-3), progress) if want_diag else None
            return row, t_click, diag

        def finish(res):
            row, t_click, diag = res
            self.scores_row = row
            self.topk = I.top_k(row, self.k)
            self.timings["click_s"] = t_click
            if diag is not None:
                self.diag = diag
            if "first_open_s" not in self.timings:
                self.timings["first_open_s"] = time.perf_counter() - self._t_open
            self._after_result()

        self._job(f"Scoring test example {self.test} against {len(self.ctx.train):,} training examples", work,
                  finish)

    def _diagnostics(self, per_example_s: float, progress=None) -> dict:
        from xaiscope.core.influence_eval import diagnostics

        n_test = len(self.ctx.test)
        n = int(np.clip(DIAG_SECONDS / per_example_s, 5, DIAG_MAX))
        rows = np.unique(np.linspace(0, n_test - 1, min(n, n_test)).round().astype(int))
        # the test embeddings in batches (one batched gradient per batch, not one per example)
        ctx, store, key = self.ctx, self.store, self._store_key()
        batch = max(1, min(DIAG_BATCH, len(rows)))
        for s in range(0, len(rows), batch):
            part = rows[s:s + batch]
            e = np.asarray(store.embed_test(ctx.test.x[part], ctx.test.y[part], ctx.ckpts))
            for r, row in zip(part, e):
                _TEST_EMB.get_or_compute(key + (int(r),), lambda row=row: row)
            if progress:
                progress(s + len(part), len(rows))
        embs = [self.test_embedding(int(r)) for r in rows]
        scores = np.asarray(I.score_product(np.stack(embs), self._train_emb), dtype=np.float64)
        out = diagnostics(scores, train_norms=np.sqrt(np.maximum(self.self_infl, 0)), k=min(10, scores.shape[1]))
        out["n_test"] = int(len(rows))
        return out

    # ------------------------------------------------------------------------------ data of the plots
    def ranked_frame(self) -> pd.DataFrame:
        """Top-k proponents then opponents: rank, role, training example, score, training loss, self-influence."""
        if self.topk is None:
            return pd.DataFrame(columns=["rank", "role", "example", "train_index", "score", "train_loss",
                                         "self_influence"])
        rows = []
        for role, ids, sc in (("proponent", self.topk.proponents, self.topk.proponent_scores),
                              ("opponent", self.topk.opponents, self.topk.opponent_scores)):
            for r, (i, s) in enumerate(zip(ids, sc), 1):
                rows.append({"rank": r, "role": role, "example": self.train_labels[int(i)], "train_index": int(i),
                             "score": float(s),
                             "train_loss": float(self.train_loss[int(i)]) if self.train_loss is not None else np.nan,
                             "self_influence": float(self.self_infl[int(i)])})
        return pd.DataFrame(rows)

    def self_influence_frame(self) -> pd.DataFrame:
        """Every training example: self-influence, training loss (last checkpoint) and their log10."""
        si = self.self_infl if self.self_infl is not None else np.full(len(self.ctx.train), np.nan)
        loss = self.train_loss if self.train_loss is not None else np.full(len(si), np.nan)
        return pd.DataFrame({"example": self.train_labels, "self_influence": si, "train_loss": loss,
                             "log10_self_influence": np.log10(np.maximum(si, 1e-30)),
                             "log10_loss": np.log10(np.maximum(loss, 1e-12))})

    def example(self, split: str, i: int) -> dict:
        """Example ``i`` of ``split`` exactly as the task adapter gives it (x, y, index) with its label."""
        ex = self.ctx.train if split == "train" else self.ctx.test
        labels = self.train_labels if split == "train" else self.test_labels
        return {"x": ex.x[i], "y": ex.y[i], "index": ex.index[i], "label": labels[i], "split": split, "i": int(i)}

    def hydro_window(self, split: str, i: int) -> pd.DataFrame:
        """The input window of a hydrology example: precipitation (the model input, de-normalised) and the
        observed discharge of those days."""
        ex = self.example(split, i)
        info = (self.ctx.train if split == "train" else self.ctx.test).info
        m = self.ctx.manifest
        j = list(info["inputs"]).index("prcp")
        st = m["normalisation"]["prcp"]
        end = pd.Timestamp(ex["index"])
        t = pd.date_range(end=end, periods=len(ex["x"]), freq="D")
        prcp = np.asarray(ex["x"][:, j], dtype=np.float64) * st["std"] + st["mean"]
        q = self.ctx.extra["record"]["qobs"].reindex(t).values
        return pd.DataFrame({"prcp": prcp, "qobs": q}, index=pd.DatetimeIndex(t, name="time"))

    def example_map(self, split: str, i: int) -> xr.DataArray:
        """The SST anomaly map (°C) of a map example: the model input of SST-QoI; the last input month of ENSO."""
        ex = self.example(split, i)
        m = self.ctx.manifest
        std = float(m["normalisation"]["sst_anomaly"]["std"])
        if self.kind == "sst_qoi_mlp":
            from xaiscope.core.sst_qoi import to_map

            return to_map(np.asarray(ex["x"], dtype=np.float64) * std, m, name="sst_anomaly",
                          attrs={"units": "degC"})
        ch = list(m["inputs"]).index("sst_anomaly")
        v = np.asarray(ex["x"][-1, ch], dtype=np.float64) * std
        v = np.where(self.ctx.extra["land"], np.nan, v)
        return xr.DataArray(v, dims=("lat", "lon"), coords={"lat": self.ctx.extra["lat"], "lon": self.ctx.extra["lon"]},
                            name="sst_anomaly", attrs={"units": "degC"})

    def map_image(self, split: str, i: int) -> tuple[dict, float]:
        """:func:`_map_image` of :meth:`example_map`, kept per series context (shared by sessions; ~10 KB a map at
        5°): a click redraws ten thumbnails, mostly of examples drawn before."""
        kept = self.ctx.extra.setdefault("map_images", {})
        key = (split, int(i))
        if key not in kept:
            data, c = _map_image(self.example_map(split, i))
            data["image"][0].flags.writeable = False        # shared: never modified in place
            kept[key] = data, c
        data, c = kept[key]
        return dict(data), c

    def example_title(self, split: str, i: int) -> str:
        ex = self.example(split, i)
        what = "test" if split == "test" else "training"
        if self.kind == "hydro_lstm":
            st = self.ctx.manifest["normalisation"][self.ctx.manifest["target"]]
            q = float(np.ravel(ex["y"])[0]) * st["std"] + st["mean"]
            return f"{what} window ending {ex['label']} (target {q:.2f} mm/day)"
        if self.kind == "sst_qoi_mlp":
            info = (self.ctx.train if split == "train" else self.ctx.test).info
            inp = pd.Timestamp(info["input_time"][i])
            return (f"{what} {ex['label']}: QoI {'> 0' if int(ex['y']) == 1 else '≤ 0'} "
                    f"({float(info['qoi'][i]):+.2f} °C); input {inp:%Y-%m}")
        return f"{what} start {ex['label']}: SST anomaly of the last input month"

    # ------------------------------------------------------------------------------ elements
    def _hydro_element(self, split, i, small=False, title="", empty=False):
        df = self.hydro_window(split, i)
        if empty:  # same plot, no data: the test example's dates, NaN values
            df = self.hydro_window("test", self.test_index) * np.nan
        end = hv.VLine(df.index[-1]).opts(color="black", line_dash="dashed", line_width=1)
        if small:  # hyetograph hanging from the top over the hydrograph, both scaled to the panel; no axes
            p = df["prcp"].values / max(np.nanmax(df["prcp"].values), 1e-9) if not empty else df["prcp"].values
            q = df["qobs"].values / max(np.nanmax(df["qobs"].values), 1e-9) if not empty else df["qobs"].values
            rain = hv.Area((df.index, 1.0 - 0.45 * p, np.ones(len(p))), "time", ["prcp_bottom", "prcp_top"]).opts(
                color="#6baed6", alpha=0.7, line_width=0)
            flow = hv.Curve((df.index, 0.85 * q), "time", "qobs_scaled").opts(color="#08519c", line_width=1)
            return (rain * flow * end).opts(title=title, xaxis=None, yaxis=None, show_legend=False,
                                            ylim=(0, 1.02))
        q = hv.Curve((df.index, df["qobs"]), "time", ("qobs", "discharge (mm/day)")).opts(
            color="#08519c", line_width=1.5)
        p = hv.Area((df.index, df["prcp"]), "time", ("prcp", "precipitation (mm/day)")).opts(
            color="#6baed6", alpha=0.5, line_width=0)
        return (p * q * end).opts(multi_y=True, title=title, xlabel="time", show_legend=False)

    def _map_element(self, split, i, small=False, title="", empty=False):
        da = self.example_map(split, i)
        v = da.values * np.nan if empty else da.values
        c = float(np.nanpercentile(np.abs(v), 99)) if np.isfinite(v).any() else 1.0
        c = c if c > 0 and np.isfinite(c) else 1.0
        img = hv.Image((da.lon.values - 180.0, da.lat.values, v), ["lon", "lat"], "sst_anomaly").opts(
            cmap=MAP_CMAP, clim=(-c, c), colorbar=not small, clipping_colors={"NaN": "#d9d9d9"},
            tools=[] if small else ["hover"], title=title)
        if small:
            return img.opts(xaxis=None, yaxis=None)
        from bokeh.models import CustomJSTickFormatter

        from xaiscope.dashboard.enso import LAT_TICKS, LON_TICKS

        return img.opts(xformatter=CustomJSTickFormatter(code=LON_TICKS.code),
                        yformatter=CustomJSTickFormatter(code=LAT_TICKS.code), xlabel="", ylabel="")

    def example_element(self, split: str, i: int | None, small: bool = False, title: str | None = None):
        """An example drawn as what it is; ``i=None`` draws the same plot empty (nothing selected yet)."""
        empty = i is None
        if empty:
            i, title = 0, "no training example selected: click a row, a thumbnail or a point"
        title = self.example_title(split, i) if title is None else title
        if self.kind == "hydro_lstm":
            return self._hydro_element(split, i, small, title, empty)
        return self._map_element(split, i, small, title, empty)

    def thumb_data(self, role: str, j: int) -> tuple[str, dict, float]:
        """Thumbnail ``j`` of ``role`` ("proponent"/"opponent") as its Bokeh figure gets it: (title, the columns of
        its data source, colour limit). Hydrograph windows: the hyetograph hanging from the top (depth 0.45 ×
        precipitation / its maximum) over the discharge (0.85 × discharge / its maximum), both scaled to the
        panel; maps: the SST anomaly (float32, rows south to north) on the data's grid."""
        ids = None if self.topk is None else (self.topk.proponents if role == "proponent" else self.topk.opponents)
        have = ids is not None and j < len(ids)
        i = int(ids[j]) if have else 0
        if have:
            sc = self.topk.proponent_scores if role == "proponent" else self.topk.opponent_scores
            title = f"{j + 1}. {self.train_labels[i]} ({sc[j]:+.2g})"
        else:
            title = "…"
        if self.kind == "hydro_lstm":
            df = self.hydro_window("train", i)
            p, q = df["prcp"].values, df["qobs"].values
            if not have:
                p, q = p * np.nan, q * np.nan
            p = p / max(np.nanmax(p), 1e-9) if have else p
            q = q / max(np.nanmax(q), 1e-9) if have and np.isfinite(q).any() else q
            return title, {"t": df.index.values, "rain_lo": 1.0 - 0.45 * p, "rain_hi": np.ones(len(p)),
                           "q": 0.85 * q}, 1.0
        return (title, *(self.map_image("train", i) if have else _map_image(self.example_map("train", i), True)))

    def pick_base(self):
        """The series a test example is picked from (static): discharge of the test period (hydro), the QoI of
        every month with the test months marked (SST-QoI), Niño 3.4 with the test start months (ENSO)."""
        ctx = self.ctx
        t_idx = pd.DatetimeIndex(np.asarray(ctx.test.index))
        if self.kind == "hydro_lstm":
            rec = ctx.extra["record"]["qobs"]
            s = rec.loc[t_idx[0]:t_idx[-1]]
            curve = hv.Curve((s.index, s.values), "time", ("qobs", "discharge (mm/day)")).opts(
                color="#08519c", line_width=1, tools=["tap"])
            return curve, curve, "Observed discharge of the test period: click a day"
        if self.kind == "sst_qoi_mlp":
            idx = pd.DatetimeIndex(np.concatenate([np.asarray(ctx.train.index), np.asarray(ctx.test.index)]))
            q = np.concatenate([ctx.train.info["qoi"], ctx.test.info["qoi"]])
            s = pd.Series(q, idx).sort_index()
            curve = hv.Curve((s.index, s.values), "time", ("qoi", "QoI (°C)")).opts(color="#999999", line_width=1)
            pts = hv.Scatter((t_idx, ctx.test.info["qoi"]), "time", ("qoi", "QoI (°C)")).opts(
                color=COLORS["test"], size=5, tools=["tap"])
            return curve * pts, pts, "NE-Pacific QoI by target month; dots are test (validation) months: click one"
        s = ctx.extra["nino34"]
        curve = hv.Curve((s.index, s.values), "time", ("nino34", "Niño 3.4 (°C)")).opts(color="#999999",
                                                                                        line_width=1)
        pts = hv.Scatter((t_idx, s.reindex(t_idx).values), "time", ("nino34", "Niño 3.4 (°C)")).opts(
            color=COLORS["test"], size=4, tools=["tap"])
        return curve * pts, pts, "Niño 3.4; dots are test start months: click one"

    def pick_marker(self, **_):
        return hv.VLine(pd.Timestamp(np.asarray(self.ctx.test.index)[self.test_index])).opts(
            color=COLORS["selected"], line_width=2)

    def self_influence_points(self, **_):
        df = self.self_influence_frame()
        return hv.Points(df, ["log10_loss", "log10_self_influence"], ["example"]).opts(
            color="#4d4d4d", size=4, alpha=0.6, tools=["hover", "tap"])

    def selected_point(self, **_):
        i = self.selected_index
        df = self.self_influence_frame()
        pts = df.iloc[[i]] if i is not None else df.iloc[:0]
        return hv.Points(pts, ["log10_loss", "log10_self_influence"]).opts(color=COLORS["selected"], size=12,
                                                                          marker="circle", line_color="black")

    @staticmethod
    def mislabel_element():
        d = V.load_mislabel_summary()
        names = {"self_influence": "self-influence", "loss": "training loss", "random": "random"}
        colors = {"self_influence": "#d62728", "loss": "#1f77b4", "random": "#7f7f7f"}
        curves = [hv.Curve(d["curves"][n], "fraction of training data inspected", "fraction of flipped labels found",
                           label=f"{names[n]} (AUC {d['auc'][n]:.2f})").opts(color=colors[n], line_width=2)
                  for n in ("self_influence", "loss", "random")]
        return hv.Overlay(curves).opts(legend_position="bottom_right", title=(
            f"Mislabel detection: SST-QoI lag {d['config']['lag']}, {d['config']['n_flipped']} of "
            f"{d['config']['n']} labels flipped, {d['config']['epochs']} epochs ({d['config']['method']})")), d

    # ------------------------------------------------------------------------------ exports
    def provenance(self) -> dict:
        store = self.store
        return {"model": self.model, "series": self.ctx.entry.label, "kind": self.kind,
                "test_example": self.test, "selected_training_example": self.selected,
                "method": self.spec.method, "method_label": self.spec.label, "exact": int(self.spec.exact),
                "layers": json.dumps(self.spec.layers), "projection_dim": int(self.dim) if self.method == "projection"
                else -1, "projection_seed": int(self.seed) if self.method == "projection" else -1,
                "checkpoints": json.dumps([c["path"] for c in store.meta["checkpoints"]]),
                "checkpoint_sha256": json.dumps(store.checkpoint_hashes),
                "learning_rates": json.dumps([c["learning_rate"] for c in store.meta["checkpoints"]]),
                "created_by": "xaiscope TracIn view", "Conventions": "CF-1.8"}

    def ranked_csv(self) -> io.BytesIO:
        from xaiscope.dashboard.compute import csv_bytes

        return csv_bytes(self.ranked_frame(), self.provenance(), index=False)

    def scores_dataset(self) -> xr.Dataset:
        """TracIn scores of every training example on the test example, self-influence, loss, top-k."""
        df = self.self_influence_frame()
        idx = pd.DatetimeIndex(np.asarray(self.ctx.train.index))
        ds = xr.Dataset(
            {"tracin_score": ("train", self.scores_row, {"long_name": "TracIn score on the test example"}),
             "self_influence": ("train", df["self_influence"].values, {"long_name": "TracIn self-influence"}),
             "train_loss": ("train", df["train_loss"].values, {"long_name": "training loss at the last checkpoint"}),
             "proponents": ("rank", self.topk.proponents.astype(np.int32)),
             "opponents": ("rank", self.topk.opponents.astype(np.int32))},
            coords={"train": np.arange(len(idx), dtype=np.int32), "train_time": ("train", idx.values),
                    "rank": np.arange(1, len(self.topk.proponents) + 1, dtype=np.int32)})
        ds.attrs.update(self.provenance())
        return ds

    def scores_netcdf(self) -> io.BytesIO:
        return io.BytesIO(bytes(self.scores_dataset().to_netcdf()))

    # ------------------------------------------------------------------------------ layout
    def _dmap(self, fn, deps) -> hv.DynamicMap:
        return hv.DynamicMap(fn, streams=[hv.streams.Params(self, deps)])

    def _sync_widgets(self) -> None:
        if self._layout is None:
            return
        labels = self.test_labels
        self._test_w.param.update(options=labels, value=self.test if self.test in labels else None)
        self._layers_w.options = list(self.param.layers.objects)
        self._method_w.options = {METHOD_LABELS[m]: m for m in self.param.method.objects}
        exact, proj = self.method == "exact", self.method == "projection"
        self._layers_w.visible = exact
        self._dim_w.visible = self._seed_w.visible = proj

    def _after_result(self) -> None:
        self.version += 1
        if self._layout is None:
            return
        df = self.ranked_frame()
        cols = ["rank", "example", "score", "train_loss", "self_influence"]
        for t, role in ((self._prop_t, "proponent"), (self._opp_t, "opponent")):
            # new rows, no row selected: a click on any row (the first too) opens that example
            rows = df[df.role == role][cols].reset_index(drop=True)
            # Bokeh's DataTable redraws its grid only when its CDSView's indices change, so new rows of the same
            # count would leave the old ones on screen (bokeh/bokeh#13859): pass through an empty table first
            t.param.update(value=rows.iloc[:0], selection=[])
            t.param.update(value=rows, height=50 + 40 * max(len(rows), 1))
        self._update_thumbs()
        self._update_diag()

    def _update_diag(self) -> None:
        if self._layout is None or (self.diag is self._diag_shown and self._diag_box.objects):
            return
        self._diag_shown = self.diag
        items = []
        if self.diag:
            for w in self.diag["warnings"]:
                items.append(pn.pane.Alert(w, alert_type="warning", sizing_mode="stretch_width"))
            c, d = self.diag["cardinality"], self.diag["norm_dominance"]
            items.append(pn.pane.Markdown(
                f"<small>Diagnostics over {self.diag['n_test']} test examples: {c['distinct']} distinct top-{c['k']} "
                f"proponents of {c['possible']} possible (ratio {c['ratio']:.2f}); top proponents among the "
                f"{d['k']} largest gradients {d['overlap']:.0%} (chance {d['chance']:.1%}), Spearman(mean |score|, "
                f"gradient norm) {d['spearman_abs_score_norm']:.2f}.</small>"))
        self._diag_box.objects = items

    def _thumb_figure(self, role: str, j: int):
        """One thumbnail: a plain Bokeh figure whose data source, title and colour range are replaced in place on
        every new result (no HoloViews pipeline per click); a tap on it opens that training example."""
        from bokeh.events import Tap
        from bokeh.models import ColumnDataSource, LinearColorMapper, Range1d
        from bokeh.plotting import figure

        hydro = self.kind == "hydro_lstm"
        fig = figure(width=175, height=130, toolbar_location=None, tools="tap", min_border=2,
                     x_axis_type="datetime" if hydro else "linear")
        fig.axis.visible = False
        fig.grid.visible = False
        fig.title.text_font_size = "9pt"
        title, data, c = self.thumb_data(role, j)
        fig.title.text = title
        src = ColumnDataSource(data)
        mapper = None
        if hydro:
            fig.varea("t", "rain_lo", "rain_hi", source=src, color="#6baed6", alpha=0.7)
            fig.line("t", "q", source=src, color="#08519c", line_width=1)
            fig.y_range = Range1d(0, 1.02)
        else:
            mapper = LinearColorMapper(palette=_map_palette(), low=-c, high=c, nan_color="#d9d9d9")
            fig.image(image="image", x="x", y="y", dw="dw", dh="dh", source=src, color_mapper=mapper)
            fig.x_range = Range1d(data["x"][0], data["x"][0] + data["dw"][0])
            fig.y_range = Range1d(data["y"][0], data["y"][0] + data["dh"][0])
        fig.on_event(Tap, lambda _e, role=role, j=j: self._open_thumb(role, j))
        return fig, src, mapper

    def big_data(self, split: str, i: int | None) -> tuple[str, dict, float]:
        """The large plot of an example as its Bokeh figure gets it: (title, source columns, colour limit);
        ``i=None``: the same plot empty (nothing selected yet). Hydrology: the window's precipitation and
        observed discharge (``t``, ``prcp``, ``qobs``); maps: the SST anomaly (float32, rows south to north)."""
        empty = i is None
        j = 0 if empty else int(i)
        title = "no training example selected:\nclick a row, a thumbnail or a point" if empty \
            else two_lines(self.example_title(split, j))
        if self.kind == "hydro_lstm":
            df = self.hydro_window("test", self.test_index) if empty else self.hydro_window(split, j)
            nan = np.full(len(df), np.nan)
            return title, {"t": df.index.values, "prcp": nan if empty else df["prcp"].values,
                           "qobs": nan if empty else df["qobs"].values}, 1.0
        return (title, *(_map_image(self.example_map(split, j), blank=True) if empty else self.map_image(split, j)))

    def _big_figure(self, split: str):
        """The large plot of the test or the selected training example: a Bokeh figure built once per model and
        updated in place (:meth:`_update_big`)."""
        from bokeh.models import (ColorBar, ColumnDataSource, CustomJSTickFormatter, DataRange1d, HoverTool,
                                  LinearAxis, LinearColorMapper, Range1d, Span)
        from bokeh.plotting import figure

        i = self.test_index if split == "test" else self.selected_index
        title, data, c = self.big_data(split, i)
        src = ColumnDataSource(data)
        parts = {"src": src, "mapper": None, "span": None}
        if self.kind == "hydro_lstm":
            fig = figure(height=330, sizing_mode="stretch_width", x_axis_type="datetime",
                         tools="pan,wheel_zoom,box_zoom,reset", y_axis_label="discharge (mm/day)", x_axis_label="time")
            fig.extra_y_ranges = {"prcp": DataRange1d(start=0)}
            fig.add_layout(LinearAxis(y_range_name="prcp", axis_label="precipitation (mm/day)"), "right")
            fig.varea("t", 0, "prcp", source=src, y_range_name="prcp", color="#6baed6", alpha=0.5)
            fig.line("t", "qobs", source=src, color="#08519c", line_width=1.5)
            span = Span(location=_ms(data["t"][-1]), dimension="height", line_color="black", line_dash="dashed",
                        line_width=1)
            fig.add_layout(span)
            parts["span"] = span
        else:
            from xaiscope.dashboard.enso import LAT_TICKS, LON_TICKS

            x0, y0 = data["x"][0], data["y"][0]
            fig = figure(height=300, sizing_mode="stretch_width", tools="pan,wheel_zoom,reset",
                         x_range=Range1d(x0, x0 + data["dw"][0]), y_range=Range1d(y0, y0 + data["dh"][0]))
            mapper = LinearColorMapper(palette=_map_palette(), low=-c, high=c, nan_color="#d9d9d9")
            img = fig.image(image="image", x="x", y="y", dw="dw", dh="dh", source=src, color_mapper=mapper)
            xy = coast_xy()
            fig.line(xy[:, 0], xy[:, 1], color="#333333", line_width=0.7)
            fig.add_layout(ColorBar(color_mapper=mapper, title="°C"), "right")
            fig.add_tools(HoverTool(renderers=[img], tooltips=[("SST anomaly", "@image{+0.00} °C")]))
            fig.xaxis.formatter = CustomJSTickFormatter(code=LON_TICKS.code)
            fig.yaxis.formatter = CustomJSTickFormatter(code=LAT_TICKS.code)
            fig.grid.visible = False
            parts["mapper"] = mapper
        fig.title.text = title
        parts["fig"] = fig
        return parts

    def _update_big(self, split: str) -> None:
        parts = self._big.get(split)
        if parts is None:
            return
        i = self.test_index if split == "test" else self.selected_index
        title, data, c = self.big_data(split, i)
        parts["src"].data = data
        parts["fig"].title.text = title
        if parts["mapper"] is not None:
            parts["mapper"].update(low=-c, high=c)
        if parts["span"] is not None:
            parts["span"].location = _ms(data["t"][-1])

    def _move_pick_marker(self) -> None:
        if self._pick_span is not None and self.ctx is not None:
            self._pick_span.location = _ms(np.asarray(self.ctx.test.index)[self.test_index])

    def _update_thumbs(self) -> None:
        """New data, titles and colour ranges into the existing thumbnail figures (sent as model changes)."""
        for role, j, fig, src, mapper in self._thumbs:
            title, data, c = self.thumb_data(role, j)
            src.data = data
            fig.title.text = title
            if mapper is not None:
                mapper.update(low=-c, high=c)

    def _rebuild_thumbs(self) -> None:
        if self._thumb_box is None or self.ctx is None:
            return
        rows, self._thumbs = [], []
        for role in ("proponent", "opponent"):
            panes = []
            for j in range(self.k):
                fig, src, mapper = self._thumb_figure(role, j)
                self._thumbs.append((role, j, fig, src, mapper))
                panes.append(pn.pane.Bokeh(fig))
            label = "Proponents (training lowered the test loss)" if role == "proponent" else \
                "Opponents (training raised the test loss)"
            rows.append(pn.pane.Markdown(f"**{label}** — click one to open it"))
            rows.append(pn.GridBox(*panes, ncols=min(self.k, 5), sizing_mode="stretch_width"))
        self._thumb_box.objects = rows

    def _open_thumb(self, role: str, j: int) -> None:
        if self.topk is None:
            return
        ids = self.topk.proponents if role == "proponent" else self.topk.opponents
        if j < len(ids):
            self.select_training(int(ids[j]))

    def _rebuild_plots(self) -> None:
        if self._layout is None or self.ctx is None:
            return
        base, source, caption = self.pick_base()
        tap = hv.streams.Tap(source=source, x=None)
        tap.add_subscriber(lambda x=None, **_: self.set_test_near(x) if x is not None else None)
        self._taps = [tap]
        self._pick_span = None

        def add_marker(plot, _element):   # the test example's day/month: a span moved in place on each pick
            from bokeh.models import Span

            span = Span(location=_ms(np.asarray(self.ctx.test.index)[self.test_index]), dimension="height",
                        line_color=COLORS["selected"], line_width=2)
            plot.state.add_layout(span)
            self._pick_span = span

        pick = base.opts(responsive=True, height=220, title=caption, show_legend=False, hooks=[add_marker])
        self._big = {split: self._big_figure(split) for split in ("test", "train")}
        pts = self._dmap(self.self_influence_points, ["store_version"])
        if len(self.ctx.train) > LARGE:
            from holoviews.operation.datashader import rasterize

            shown = rasterize(pts, aggregator="count").opts(cmap="Greys", cnorm="eq_hist", tools=["tap"])
            stap = hv.streams.Tap(source=shown)
        else:
            shown = pts
            stap = hv.streams.Tap(source=pts)
        stap.add_subscriber(lambda x=None, y=None, **_: self.select_near_point(x, y))
        self._taps.append(stap)
        si = (shown * self._dmap(self.selected_point, ["selected", "store_version"])).opts(
            responsive=True, height=360, xlabel="log10 training loss (last checkpoint)",
            ylabel="log10 self-influence", title="Self-influence vs training loss (click a point to open it)")
        hvp = dict(sizing_mode="stretch_width", linked_axes=False)
        self._pick_box.objects = [pn.pane.HoloViews(pick, **hvp)]
        self._pair_box.objects = [pn.pane.Bokeh(self._big[sp]["fig"], sizing_mode="stretch_width")
                                  for sp in ("test", "train")]
        self._si_box.objects = [pn.pane.HoloViews(si, **hvp)]
        self._rebuild_thumbs()

    def __panel__(self):
        if self._layout is None:
            self._layout = self._make_layout()
            self._sync_widgets()
            self._rebuild_plots()
            self._after_result() if self.topk is not None else None
            if pn.state.location is not None and pn.state.curdoc is not None:
                pn.state.location.sync(self, {"model": "model", "test": "test", "method": "method",
                                              "selected": "train", "dim": "dim", "seed": "seed"})
        return self._layout

    def _make_layout(self):
        self._model_w = pn.widgets.Select.from_param(self.param.model, name="Model (checkpoint series)",
                                                     options={e.label: k for k, e in self.runs.items()})
        self._test_w = pn.widgets.Select(label="Test example", options=self.test_labels, value=self.test or None)
        self._test_w.param.watch(lambda e: setattr(self, "test", e.new) if e.new else None, "value")
        self.param.watch(lambda e: setattr(self._test_w, "value", e.new) if e.new in self._test_w.options else None,
                         "test")
        self._method_w = pn.widgets.RadioButtonGroup.from_param(
            self.param.method, name="Method", options={METHOD_LABELS[m]: m for m in self.param.method.objects})
        self._layers_w = pn.widgets.MultiChoice.from_param(self.param.layers, name="Layers (none = all parameters)")
        self._dim_w = pn.widgets.IntInput.from_param(self.param.dim, name="Projection dimension", width=160)
        self._seed_w = pn.widgets.IntInput.from_param(self.param.seed, name="Projection seed", width=160)
        k_w = pn.widgets.IntSlider.from_param(self.param.k, name="Top k", width=200)
        empty = pd.DataFrame(columns=["rank", "example", "score", "train_loss", "self_influence"])
        from bokeh.models.widgets.tables import NumberFormatter

        fmt = NumberFormatter(format="0.000000")
        # Bokeh's own DataTable (pn.widgets.DataFrame): renders with a plain pn.extension() in a notebook
        tab = dict(disabled=True, show_index=False, sizing_mode="stretch_width", height=190,
                   autosize_mode="force_fit",
                   formatters={"score": NumberFormatter(format="+0.000000"), "train_loss": fmt,
                               "self_influence": fmt})
        self._prop_t = _RankTable(empty.copy(), **tab)
        self._opp_t = _RankTable(empty.copy(), **tab)
        for t in (self._prop_t, self._opp_t):
            t.param.watch(lambda e, t=t: self._open_row(t, e.new[0]) if e.new else None, "selection")
        self._pick_box = pn.Column(sizing_mode="stretch_width")
        self._pair_box = pn.Row(sizing_mode="stretch_width")
        self._si_box = pn.Column(sizing_mode="stretch_width")
        self._thumb_box = pn.Column(sizing_mode="stretch_width")
        try:
            mis, d = self.mislabel_element()
            mis_pane = pn.Column(
                pn.pane.HoloViews(mis.opts(responsive=True, height=360), sizing_mode="stretch_width"),
                pn.pane.Markdown(
                    f"Shipped result (`assets/influence/{V.MISLABEL_FILE}`), made with `{d['how']}`. Found after "
                    f"inspecting 20 % of the data: self-influence {d['found_at_20']['self_influence']:.0%}, "
                    f"training loss {d['found_at_20']['loss']:.0%}, random {d['found_at_20']['random']:.0%}."),
                sizing_mode="stretch_width")
        except Exception as err:  # noqa: BLE001
            log.error("mislabel result", exc_info=True)
            mis_pane = pn.pane.Alert(f"Mislabel-detection result unavailable: {err}", alert_type="warning")
        dl_csv = pn.widgets.FileDownload(callback=self._guard_download(self.ranked_csv),
                                         filename="xaiscope_tracin_ranked.csv", label="Ranked examples (CSV)")
        dl_nc = pn.widgets.FileDownload(callback=self._guard_download(self.scores_netcdf),
                                        filename="xaiscope_tracin_scores.nc", label="All scores (NetCDF)")
        controls = pn.Column(
            pn.Row(self._model_w, self._test_w, k_w, sizing_mode="stretch_width"),
            pn.Row(self._method_w, self._layers_w, self._dim_w, self._seed_w, sizing_mode="stretch_width"),
            pn.Row(self._progress, self._go, sizing_mode="stretch_width"), self._status_md,
            sizing_mode="stretch_width")
        return pn.Column(
            pn.pane.Markdown("## TracIn: the training examples behind a prediction\nTracInCP sums, over the saved "
                             "checkpoints, the learning rate × the dot product of the loss gradients of a training "
                             "and a test example. Positive: a *proponent* (training on it lowered the test loss); "
                             "negative: an *opponent*."),
            self._alert, controls, self._diag_box, self._pick_box,
            pn.Tabs(
                ("Proponents and opponents", pn.Column(
                    self._pair_box,
                    pn.Row(pn.Column(pn.pane.Markdown("**Proponents**"), self._prop_t),
                           pn.Column(pn.pane.Markdown("**Opponents**"), self._opp_t), sizing_mode="stretch_width"),
                    self._thumb_box, sizing_mode="stretch_width")),
                ("Self-influence", self._si_box),
                ("Mislabel detection", mis_pane),
                ("Downloads", pn.Column(pn.pane.Markdown(
                    "The ranked examples (CSV, header lines with the provenance) and every training example's "
                    "score, self-influence and loss (NetCDF); both carry the checkpoints' sha256, the method, "
                    "projection dimension and seed."), dl_csv, dl_nc, max_width=500)),
                dynamic=True, sizing_mode="stretch_width"),
            sizing_mode="stretch_width", css_classes=["xs-tracin"])

    def _open_row(self, table, row) -> None:
        try:
            label = table.value.iloc[int(row)]["example"]
        except (IndexError, KeyError, ValueError, TypeError):
            return
        self.selected = str(label)

    def _guard_download(self, fn):
        def call():
            if self.store is None or self.topk is None:
                self._show_error("Nothing to download yet: wait for the scores.")
                return io.BytesIO(b"")
            return fn()
        return call


class _RankTable(pn.widgets.DataFrame):
    """Bokeh's DataTable without its own row-number column (the rows carry their rank)."""

    def _get_properties(self, doc=None):
        props = super()._get_properties(doc)
        props["index_position"] = None
        return props


from xaiscope.dashboard.registry import register_view  # noqa: E402

register_view("tracin", "TracIn: training examples behind a prediction", TracInExplorer,
              "Proponents, opponents and self-influence of training examples (TracInCP over checkpoints).")
