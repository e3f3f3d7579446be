"""The LRP-vs-adjoint view: relevance maps of the SST-QoI networks beside the LIM adjoint sensitivity.

In a notebook::

    import panel as pn
    from xaiscope.dashboard.lrp import LrpAdjointExplorer
    pn.extension()
    LrpAdjointExplorer()                     # every shipped lag (assets/checkpoints/sst_qoi_lagNN)
    LrpAdjointExplorer(checkpoint="assets/checkpoints/sst_qoi_lag03", lag=3, rule="zplus")

What is explained: the network of the selected lag predicts the sign of the QoI (area-weighted mean SST anomaly in
the NE-Pacific box of its manifest) at month t from the SST anomaly map at t − lag. ``explain="month"`` explains
the predicted class of one target month t; ``"positive"`` / ``"negative"`` average the maps over every correctly
predicted positive / negative case of the record (the composite). Relevance is evidence *for the explained class*.

The adjoint side is the LIM (20 EOF modes, fitted on the whole record) sensitivity ∂QoI(t)/∂SST(t − lag) of the same
QoI at the same lag (:meth:`xaiscope.core.lim.LIM.adjoint_sensitivity`), or a sensitivity read from a NetCDF file
(:func:`xaiscope.data.sensitivity.read_sensitivity`). ``adjoint="sensitivity_x_input"`` multiplies it by the input
anomaly (the first-order contribution of each cell to the QoI) and by −1 for the negative class, so that it has the
relevance's sign convention; ``"sensitivity"`` shows the sensitivity itself.

Shared by every session of the process through the engine (:mod:`xaiscope.core.engine`): each checkpoint is read
once (``engine.open_checkpoint``) and holds the one model for its weights; the data, networks, LIM, region masks and
LIM adjoints (one setup per checkpoint set and data), explanations per (checkpoint sha256, data, rule, target: month
or composite) and metric curves over all lags per (rule, target, adjoint, k) live in the engine's result cache.
Integrated gradients take the factored path of :func:`xaiscope.core.relevance.integrated_gradients` (all 13 lags'
composites in ~0.1 s), so every first visit is computed at once — nothing is precomputed or shipped.
Maps are drawn with GeoViews in the Pacific-centred frame of the ENSO view, with its shipped coastlines.
"""

from __future__ import annotations

import io
import os
import json
import logging
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import panel as pn
import param
import xarray as xr

from xaiscope.core.errors import XaiscopeError
from xaiscope.dashboard.bokeh_speedups import BokehSpeedups

log = logging.getLogger("xaiscope.dashboard")

#: rule key (URL value) → (label, method of core.relevance.explain, keyword arguments)
RULES: dict[str, tuple[str, str, dict]] = {
    "epsilon": ("LRP ε", "lrp", {"rule": "epsilon", "epsilon": 1e-6}),
    "zplus": ("LRP z⁺", "lrp", {"rule": "zplus", "epsilon": 1e-6}),
    "alpha1beta0_zb": ("LRP α1β0 + z^B", "lrp", {"rule": "alpha1beta0", "first_rule": "zbox",
                                                             "epsilon": 1e-6}),
    "gradient_x_input": ("gradient × input", "gradient_x_input", {}),
    "integrated_gradients": ("integrated gradients", "integrated_gradients", {"n_steps": 64}),
}
EXPLAIN = {"month": "one month", "positive": "composite: correct positive cases",
           "negative": "composite: correct negative cases"}
ADJOINT = {"sensitivity": "adjoint sensitivity ∂QoI/∂SST", "sensitivity_x_input": "adjoint sensitivity × input"}
AGREE_COLORS = ["#f0f0f0", "#e66101", "#5e3c99", "#1a9641"]  # neither, only relevance, only sensitivity, both
REGION_LABELS = {"southern_ocean": "Southern Ocean", "equatorial_pacific_waveguide": "equatorial Pacific",
                 "eastern_boundary": "eastern boundary", "north_pacific": "North Pacific",
                 "indian_ocean": "Indian Ocean", "atlantic": "Atlantic", "other": "other"}
SHARE_COLORS = {"relevance": "#e66101", "adjoint": "#5e3c99"}
CURVES = (("pattern_correlation", "#1f77b4", "pattern correlation"), ("topk_jaccard", "#2ca02c", "top-k % Jaccard"),
          ("sign_agreement", "#d62728", "sign agreement"))
METRICS = ("pattern_correlation", "topk_jaccard", "sign_agreement", "sign_agreement_top")
LIM_MODES = 20
NS = "lrp"  # namespace of this view's entries in the engine's result cache
FILL_DELAY_MS = 30  # a two-step update's second step starts this long after the first (see LrpAdjointExplorer._refresh)
# In a served app, the composite explanations of every rule at every lag are computed in a background thread once per
# process and data (~0.1 s a rule and composite), so that a user's first visit of a rule is as fast as a return visit
# (see warm_up). XAISCOPE_LRP_WARMUP=0 switches it off (benchmarks/lrp_view.py measures the cold path with it off).
_WARMED: set = set()
_WARM_LOCK = threading.Lock()


def warm_up_enabled() -> bool:
    return os.environ.get("XAISCOPE_LRP_WARMUP", "1").strip().lower() not in ("0", "false", "no", "off")


def warm_up(setup: "LrpSetup", rules=None, explains=("positive", "negative"), stop=None) -> int:
    """Compute (into the engine's result cache) the explanations of ``rules`` (default: all) × ``explains`` at every
    lag of ``setup``; returns how many were computed here (others were cached or computed by another caller).
    ``stop()`` → True ends it early (the session is gone)."""
    from xaiscope.core.engine import get_engine

    cache = get_engine().cache
    done = 0
    for explain in explains:
        for rule in rules or list(RULES):
            for lag in setup.lags:
                if stop is not None and stop():
                    return done
                if setup.explanation_key(lag, rule, explain) in cache:
                    continue
                setup.explanation(lag, rule, explain, "")
                done += 1
    return done


def _start_warm_up(setup: "LrpSetup") -> None:
    """Once per process and setup: :func:`warm_up` in a daemon thread (one torch thread, like the server)."""
    key = (tuple(setup.models[lag].ckpt.sha256 for lag in setup.lags), setup.data_key)
    with _WARM_LOCK:
        if key in _WARMED or not warm_up_enabled():
            return
        _WARMED.add(key)

    def run():
        t0 = time.perf_counter()
        try:
            n = warm_up(setup)
            log.info("LRP view: %d composite explanations computed ahead in %.1f s", n, time.perf_counter() - t0)
        except Exception:  # noqa: BLE001 - a background nicety: the view computes on demand anyway
            log.warning("LRP view: computing explanations ahead failed", exc_info=True)
            with _WARM_LOCK:
                _WARMED.discard(key)

    threading.Thread(target=run, name="xaiscope-lrp-warm-up", daemon=True).start()


# ------------------------------------------------------------------------------------------------ set-up
@dataclass
class LagModel:
    lag: int
    ckpt: object                 # xaiscope.core.checkpoint.Checkpoint
    x: np.ndarray                # (N, n_sea) normalised inputs, sample n ↔ target month target_time[n]
    x_raw: np.ndarray            # (N, n_sea) SST anomaly at the input month (degC)
    y: np.ndarray                # (N,) true class (QoI(t) > 0)
    pred: np.ndarray             # (N,) predicted class
    target_time: pd.DatetimeIndex
    input_time: pd.DatetimeIndex
    low: np.ndarray              # per-input bounds for the z^B rule: min / max of the normalised inputs
    high: np.ndarray

    def rows(self, explain: str, month: str) -> np.ndarray:
        """Sample rows of a target: the month's row, or every correctly predicted positive/negative case."""
        if explain == "month":
            hit = np.flatnonzero(self.target_time == pd.Timestamp(month))
            if not hit.size:
                raise XaiscopeError(f"month {month!r} is not a target month of lag {self.lag} "
                                    f"({self.target_time[0]:%Y-%m}..{self.target_time[-1]:%Y-%m}).")
            return hit[:1]
        cls = 1 if explain == "positive" else 0
        return np.flatnonzero((self.pred == cls) & (self.y == cls))


@dataclass
class LrpSetup:
    """What does not depend on the selection: data, networks per lag, LIM, region masks, and the caches."""

    ds: xr.Dataset
    models: dict[int, LagModel]
    lim: object
    qoi_w: xr.DataArray
    land_mask: xr.DataArray
    regions: xr.DataArray
    box: tuple
    seconds: float
    data_key: str = "demo"       # what the explanations depend on besides the weights (the shipped data: "demo")
    adjoints: dict = field(default_factory=dict)
    _months: list = field(default_factory=list)

    def __post_init__(self):
        sea = self.land_mask.values.ravel() == 0
        self.sea_index = np.flatnonzero(sea)
        lat2 = np.broadcast_to(self.land_mask.lat.values[:, None], self.land_mask.shape).ravel()
        self.sea_area = np.cos(np.deg2rad(lat2))[self.sea_index]
        reg = self.regions.transpose("region", "lat", "lon").values.reshape(len(self.regions.region), -1)
        self.sea_region = reg[:, self.sea_index].argmax(0)

    def adjoint_sea(self, lag: int) -> np.ndarray:
        return self.adjoint(lag).values.ravel()[self.sea_index]

    @property
    def lags(self) -> list[int]:
        return sorted(self.models)

    @property
    def months(self) -> list[str]:
        """Target months every lag can explain."""
        if not self._months:
            common = None
            for m in self.models.values():
                s = set(m.target_time)
                common = s if common is None else common & s
            self._months = [f"{t:%Y-%m}" for t in sorted(common)]
        return self._months

    def adjoint(self, lag: int) -> xr.DataArray:
        """LIM adjoint sensitivity at ``lag`` (cached)."""
        if lag not in self.adjoints:
            self.adjoints[lag] = self.lim.adjoint_sensitivity(self.qoi_w, lag)
        return self.adjoints[lag]

    def explanation_key(self, lag: int, rule: str, explain: str, month: str = "") -> tuple:
        """The engine cache key of :meth:`explanation` (a composite does not depend on ``month``)."""
        return (NS + ".explanation", self.models[lag].ckpt.sha256, self.data_key, rule,
                explain if explain != "month" else month)

    def explanation(self, lag: int, rule: str, explain: str, month: str):
        """(rows, Explanation) of the target, in the engine's result cache per (checkpoint sha256, data, rule,
        target): every session of the process shares it."""
        from xaiscope.core.engine import get_engine

        m = self.models[lag]
        key = self.explanation_key(lag, rule, explain, month)

        def compute():
            rows = m.rows(explain, month)
            return rows, explain_rows(m, rule, rows)

        return get_engine().cached(key, compute)


def explain_x(model, x: np.ndarray, target: np.ndarray, rule: str, low=None, high=None):
    """The core explanation (:func:`xaiscope.core.relevance.explain`) of inputs ``x`` for classes ``target`` with
    ``rule`` (bounds ``low``/``high`` for the z^B first layer). LRP and gradient × input in float64; integrated
    gradients in float32 on the factored path of :func:`xaiscope.core.relevance.integrated_gradients` (one pass
    over the input layer; float32 is 4-10× faster than float64 on a CPU for its 64 × cases hidden-layer products,
    the completeness badge shows the error, ~1e-6 of the map's max |value| against float64)."""
    from xaiscope.core.relevance import Explanation, explain

    _, method, kw = RULES[rule]
    kw = dict(kw)
    if kw.get("first_rule") == "zbox":
        kw.update(low=low, high=high)
    target = np.asarray(target)
    if not len(x):
        return Explanation(np.zeros((0, x.shape[1])), method, target, np.zeros(0), {})
    if method == "integrated_gradients":
        import torch

        kw["dtype"] = torch.float32
    return explain(model, x, method, target=target, **kw)


def explain_rows(m: LagModel, rule: str, rows: np.ndarray):
    """:func:`explain_x` of samples ``rows`` of lag model ``m``; the explained class is the predicted one."""
    return explain_x(m.ckpt.model, m.x[rows], m.pred[rows], rule, m.low, m.high)


def _top(v: np.ndarray, w: np.ndarray, ok: np.ndarray, k: float) -> np.ndarray:
    """:func:`xaiscope.core.agreement.top_mask` on vectors: the largest-|v| cells (among ``ok``) covering ``k`` %
    of their area ``w`` (the cell that crosses the threshold included)."""
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(-np.abs(v[idx]), kind="stable")]
    cum = np.cumsum(w[order])
    out = np.zeros(v.size, bool)
    if cum.size:
        out[order[:int(np.searchsorted(cum, k / 100.0 * cum[-1] - 1e-12)) + 1]] = True
    return out


def fast_metrics(a: np.ndarray, b: np.ndarray, w: np.ndarray, k: float, region: np.ndarray, n_regions: int) -> dict:
    """The metrics of :func:`xaiscope.core.agreement.compare` for two maps given as vectors over the same cells
    (``w`` their cos-lat area weights, ``region`` their region index): NaN when fewer than 3 cells are finite in
    both or a map is all zero. The tests check it against xaiscope.core.agreement."""
    nan = float("nan")
    ok = np.isfinite(a) & np.isfinite(b)
    out = {"pattern_correlation": nan, "topk_jaccard": nan, "sign_agreement": nan, "sign_agreement_top": nan}
    if ok.sum() >= 3 and np.abs(a[ok]).max() > 0 and np.abs(b[ok]).max() > 0:
        x, y, ww = a[ok], b[ok], w[ok] / w[ok].sum()
        xm, ym = x - (ww * x).sum(), y - (ww * y).sum()
        den = np.sqrt((ww * xm ** 2).sum() * (ww * ym ** 2).sum())
        out["pattern_correlation"] = float((ww * xm * ym).sum() / den) if den > 0 else nan
        ta, tb = _top(a, w, ok, k), _top(b, w, ok, k)
        union = (w * (ta | tb)).sum()
        out["topk_jaccard"] = float((w * (ta & tb)).sum() / union) if union > 0 else nan
        same = np.sign(a) == np.sign(b)
        out["sign_agreement"] = float((w[ok] * same[ok]).sum() / w[ok].sum())
        sel = ok & (ta | tb)
        out["sign_agreement_top"] = float((w[sel] * same[sel]).sum() / w[sel].sum()) if w[sel].sum() > 0 else nan
    for name, v in (("relevance_shares", a), ("adjoint_shares", b)):
        av = np.where(np.isfinite(v), np.abs(v), 0.0)
        tot = av.sum()
        sums = np.bincount(region, weights=av, minlength=n_regions)
        out[name] = sums / tot if tot > 0 else np.full(n_regions, nan)
    return out


def _same_columns(old: dict, new: dict) -> bool:
    """True when a ColumnDataSource's ``old`` data equals ``new`` (same columns, values equal, NaN equal to NaN)."""
    if old.keys() != new.keys():
        return False
    for k, v in new.items():
        a, b = old[k], v
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(
                isinstance(x, np.ndarray) for x in a + b):  # image columns: lists of 2-D arrays
            if not all(x.shape == y.shape and np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b)):
                return False
            continue
        try:
            a, b = np.asarray(a), np.asarray(b)
        except (ValueError, TypeError):
            return False
        if a.shape != b.shape or a.dtype.kind != b.dtype.kind:
            return False
        if not (np.array_equal(a, b, equal_nan=True) if a.dtype.kind == "f" else np.array_equal(a, b)):
            return False
    return True


def _set_if_changed(model, attr: str, value) -> None:
    if getattr(model, attr) != value:
        setattr(model, attr, value)


def _lon_label(lon: float) -> str:
    lon = (lon + 540.0) % 360.0 - 180.0
    return f"{abs(lon):.0f}°" + ("" if lon in (0.0, -180.0, 180.0) else "W" if lon < 0 else "E")


#: map axis ticks (plot x = lon − 180, Pacific-centred) and their labels
LON_LABELS = {x: _lon_label(x + 180.0) for x in (-150, -90, -30, 30, 90, 150)}
LAT_LABELS = {y: "0°" if y == 0 else f"{abs(y)}°{'S' if y < 0 else 'N'}" for y in (-40, -20, 0, 20, 40, 60)}


class _IndexSlider(pn.widgets.IntSlider):
    """An ``IntSlider`` whose Bokeh tick formatter is a new copy in every document it is drawn into (one formatter
    object in two documents — the view shown a second time in a notebook — is refused by Bokeh)."""

    def _process_param_change(self, params):
        from bokeh.models import CustomJSTickFormatter

        params = super()._process_param_change(params)
        fmt = params.get("format")
        if isinstance(fmt, CustomJSTickFormatter):
            params["format"] = CustomJSTickFormatter(code=fmt.code, args=dict(fmt.args))
        return params


def _index_slider(name: str, options: list, index: int, **kw):
    """A slider over the positions of ``options`` whose title shows the option (a ``DiscreteSlider`` redraws its
    separate label element on every step, which makes the browser lay out the whole page again)."""
    from bokeh.models import CustomJSTickFormatter

    fmt = CustomJSTickFormatter(code=f"const o = {json.dumps([str(o) for o in options])}; "
                                     "return o[Math.round(tick)] ?? String(tick);")
    return _IndexSlider(label=name, start=0, end=max(len(options) - 1, 1), value=index, step=1, format=fmt,
                        disabled=len(options) < 2, **kw)


def _absmax(da: xr.DataArray) -> float:
    v = np.abs(np.asarray(da.values, dtype=float))
    return float(np.nanmax(v)) if np.isfinite(v).any() else 0.0


def default_checkpoints() -> list[Path]:
    """The shipped series ``assets/checkpoints/sst_qoi_lagNN`` (every lag that has one)."""
    from xaiscope.assets import ASSETS

    return sorted((ASSETS / "checkpoints").glob("sst_qoi_lag[0-9][0-9]"))


def _load(spec):
    """The checkpoint through the engine: a path is read once per process (cached by path and modification time),
    and every checkpoint holds the process's one model for its weights."""
    from xaiscope.core import sst_qoi  # noqa: F401 - registers the model kind
    from xaiscope.core.checkpoint import Checkpoint
    from xaiscope.core.engine import get_engine

    eng = get_engine()
    ck = eng.share(spec) if isinstance(spec, Checkpoint) else eng.open_checkpoint(spec)
    if ck.manifest.get("kind") != "sst_qoi_mlp":
        raise XaiscopeError(f"checkpoint {ck.path} is a {ck.manifest.get('kind')!r} model; the LRP-vs-adjoint view "
                            f"needs 'sst_qoi_mlp' checkpoints (xaiscope train sst-qoi).")
    return ck


def data_key(sst: xr.Dataset | None) -> str:
    """What the explanations depend on besides the weights: ``"demo"`` for the shipped data, else the sha256 of the
    SST anomalies, their months and the land mask."""
    if sst is None:
        return "demo"
    import hashlib

    h = hashlib.sha256()
    h.update(np.ascontiguousarray(sst["sst_anomaly"].values, dtype=np.float64).tobytes())
    h.update(np.asarray(sst.time.values, dtype="datetime64[ns]").tobytes())
    if "land_mask" in sst:
        h.update(np.ascontiguousarray(sst["land_mask"].values, dtype=np.int8).tobytes())
    return h.hexdigest()


def prepare(checkpoint=None, sst: xr.Dataset | None = None) -> LrpSetup:
    """Load the networks (one per lag), the data and the LIM; in the engine's result cache per checkpoint set
    (sha256) and data (:func:`data_key`), so every session of the process shares one setup."""
    from xaiscope.core.engine import get_engine

    specs = default_checkpoints() if checkpoint is None else (
        list(checkpoint) if isinstance(checkpoint, (list, tuple)) else [checkpoint])
    if not specs:
        raise XaiscopeError("no SST-QoI checkpoint given and none shipped; train one with "
                            "`xaiscope train sst-qoi --lag 3 --out DIR`.")
    t0 = time.perf_counter()
    ckpts = [_load(s) for s in specs]
    dkey = data_key(sst)
    key = (NS + ".setup", tuple(c.sha256 for c in ckpts), dkey)
    return get_engine().cached(key, lambda: _build_setup(ckpts, sst, dkey, t0))


def _build_setup(ckpts, sst, dkey, t0) -> LrpSetup:
    from xaiscope.core.agreement import region_masks
    from xaiscope.core.engine import get_engine
    from xaiscope.core.lim import fit_lim
    from xaiscope.core.sst_qoi import checkpoint_inputs, make_qoi_samples, qoi_weights
    from xaiscope.data.sst import demo_sst

    ds = sst if sst is not None else demo_sst(with_ssh=False)
    boxes = {(tuple(c.manifest["box"]["lat_bounds"]), tuple(c.manifest["box"]["lon_bounds"])) for c in ckpts}
    if len(boxes) != 1:
        raise XaiscopeError(f"the checkpoints explain different QoI boxes {sorted(boxes)}; open checkpoints of one "
                            f"box together.")
    box = boxes.pop()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a repaired noise covariance does not change the deterministic adjoint
        lim = fit_lim(ds["sst_anomaly"], ds["land_mask"] if "land_mask" in ds else None, n_modes=LIM_MODES)
    land = lim.land_mask
    dsm = ds.assign(land_mask=land)
    models: dict[int, LagModel] = {}
    for ck in ckpts:
        lag = int(ck.manifest["lag"])
        if lag in models:
            raise XaiscopeError(f"two checkpoints for lag {lag} ({models[lag].ckpt.path}, {ck.path}); give one per "
                                f"lag.")
        sea = np.flatnonzero((land.values == 0).ravel())
        if not np.array_equal(sea, np.asarray(ck.manifest["sea_cells"])):
            raise XaiscopeError(f"checkpoint {ck.path} uses other sea cells than the SST data's land mask; use the "
                                f"data it was trained on (see its manifest's 'data').")
        s = make_qoi_samples(dsm, lag, *box, land_mask=land)
        x = checkpoint_inputs(ck.manifest, ds)
        pred = get_engine().forward(ck, x[:len(s.y)], device="cpu", what="SST-QoI classes").argmax(1).numpy()
        models[lag] = LagModel(lag, ck, x[:len(s.y)], s.x, s.y, pred, pd.DatetimeIndex(s.target_time),
                               pd.DatetimeIndex(s.input_time), x.min(0), x.max(0))
    return LrpSetup(ds=dsm, models=models, lim=lim, qoi_w=qoi_weights(dsm, *box), land_mask=land,
                    regions=region_masks(land), box=box, seconds=time.perf_counter() - t0, data_key=dkey)


# ------------------------------------------------------------------------------------------------ the view
class LrpAdjointExplorer(pn.viewable.Viewer):
    """LRP (and gradient) relevance of the SST-QoI networks beside the LIM adjoint sensitivity, with agreement
    metrics over lags, checks and the randomisation test.

    Parameters
    ----------
    checkpoint : an ``sst_qoi_mlp`` checkpoint (folder, series folder, loaded ``Checkpoint``) or a list of them, one
        per lag; default: every shipped lag.
    sst : ``xr.Dataset`` with ``sst_anomaly`` (time, lat, lon) and ``land_mask`` on the checkpoints' grid
        (default: the shipped 5° ERSSTv5 anomalies).
    state : the app's shared state (accepted for the registry; used only to confine typed file paths).
    """

    # the app's checkpoint and basin pickers are for the hydrology views: hidden while this view is shown (it picks
    # its own checkpoints)
    uses_sidebar_pickers = False

    lag = param.Integer(default=3, bounds=(0, 12), doc="months between the input map and the target month")
    rule = param.Selector(default="epsilon", objects=list(RULES), doc="relevance rule")
    explain = param.Selector(default="positive", objects=list(EXPLAIN), doc="one month or a composite")
    month = param.String(default="", doc="target month t (YYYY-MM) when explain = month")
    adjoint = param.Selector(default="sensitivity", objects=list(ADJOINT), doc="adjoint map shown and compared")
    source = param.Selector(default="lim", objects=["lim", "file"], doc="LIM adjoint or a loaded NetCDF file")
    k = param.Number(default=10.0, bounds=(1.0, 50.0), doc="'large' = the top k % of the sea area")
    support = param.Number(default=0.1, bounds=(0.0, 1.0),
                           doc="a relevance hot spot has no adjoint support where |adjoint| < support × max")
    error = param.String(default="", doc="last error shown to the user")
    rand_runs = param.Integer(default=0, precedence=-1, doc="randomisation checks run (redraws their plot)")

    def __init__(self, checkpoint=None, sst: xr.Dataset | None = None, state=None, **params):
        super().__init__(**params)
        self.timings: dict[str, float] = {}
        self._alert = pn.pane.Alert("", alert_type="danger", visible=False)
        self._roots = getattr(state, "allowed_roots", None)
        self.setup: LrpSetup | None = None
        self.file_sensitivity: xr.DataArray | None = None
        self.randomisation: pd.DataFrame | None = None
        self._layout = None
        self._memo: dict = {}
        self._curves: dict = {}  # metric curves over a loaded sensitivity file (this view's own)
        self._partial = False  # True while the first step of a two-step update is drawn (see _refresh)
        try:
            self.setup = prepare(checkpoint, sst)
        except Exception as err:  # noqa: BLE001 - shown to the user, app keeps running
            from xaiscope.dashboard.state import describe_error

            log.error("LRP view: cannot prepare", exc_info=True)
            self._show_error(f"Cannot prepare the LRP-vs-adjoint view: {describe_error(err)}")
            return
        lags = self.setup.lags
        self.param.lag.bounds = (lags[0], lags[-1])
        if self.lag not in lags:
            self.lag = min(lags, key=lambda v: abs(v - self.lag))
        if self.month not in self.setup.months:
            self.month = self._default_month()
        self.param.watch(self._check_lag, ["lag"])
        self.param.watch(self._check_month, ["month"])
        # before the plots' streams: a new selection drops the old randomisation result
        self.param.watch(lambda *_: setattr(self, "randomisation", None), ["lag", "rule", "explain", "month"])

    # ------------------------------------------------------------------------------ selection logic
    def _default_month(self) -> str:
        """The target month with the largest QoI among the months every lag explains."""
        m = self.setup.models[self.setup.lags[0]]
        q = pd.Series(self.setup.ds["sst_anomaly"].fillna(0).dot(self.setup.qoi_w.fillna(0)).values,
                      index=pd.DatetimeIndex(self.setup.ds.time.values))
        q = q[[f"{t:%Y-%m}" in set(self.setup.months) for t in q.index]]
        return f"{q.idxmax():%Y-%m}" if len(q) else f"{m.target_time[-1]:%Y-%m}"

    def _check_lag(self, event):
        lags = self.setup.lags
        if event.new not in lags:
            self.lag = min(lags, key=lambda v: abs(v - event.new))

    def _check_month(self, event):
        if event.new not in self.setup.months:
            months = self.setup.months
            self._show_error(f"month {event.new!r} is not a target month of every lag ({months[0]}..{months[-1]}); "
                             f"pick one with the month slider.")
            message = self.error
            self.month = event.old if event.old in months else self._default_month()
            self._show_error(message)
        elif self.error.startswith("month"):
            self._show_error("")

    def _show_error(self, message: str) -> None:
        self.error = message
        self._alert.param.update(object=message or " ", visible=bool(message))

    @property
    def model(self) -> LagModel:
        return self.setup.models[self.lag]

    def _key(self, lag=None) -> tuple:
        return (self.lag if lag is None else lag, self.rule, self.explain,
                self.month if self.explain == "month" else "", self.adjoint, self.source, float(self.k),
                float(self.support), id(self.file_sensitivity))

    # ------------------------------------------------------------------------------ data of the plots
    def explanation(self, lag: int | None = None):
        """(rows, core Explanation) of the current target at ``lag`` (default: the selected lag)."""
        return self.setup.explanation(self.lag if lag is None else lag, self.rule, self.explain, self.month)

    def _grid_map(self, values: np.ndarray, name: str, attrs: dict) -> xr.DataArray:
        from xaiscope.core.sst_qoi import to_map

        return to_map(values, self.model.ckpt.manifest, name=name, attrs=attrs)

    def relevance_map(self, lag: int | None = None) -> xr.DataArray:
        """The relevance (lat, lon) of the selected rule: one month's, or the mean over the composite's cases."""
        lag = self.lag if lag is None else lag
        rows, e = self.explanation(lag)
        vals = e.relevance[0] if self.explain == "month" else (
            e.relevance.mean(0) if len(rows) else np.full(e.relevance.shape[1], np.nan))
        return self._grid_map(vals, "relevance", {
            "long_name": f"{RULES[self.rule][0]} relevance for the explained class", "units": "logit",
            "rule": self.rule, "method": e.method, "lag": lag, "n_cases": int(len(rows))})

    def sensitivity_map(self, lag: int | None = None) -> xr.DataArray:
        """∂QoI(t)/∂SST(t − lag): the LIM's, or the loaded file's (NaN when the file has no map for ``lag``)."""
        lag = self.lag if lag is None else lag
        if self.source == "file" and self.file_sensitivity is not None:
            f = self.file_sensitivity
            if lag in f.lag.values:
                out = f.sel(lag=lag).drop_vars("lag", errors="ignore").rename("sensitivity")
            else:
                out = xr.full_like(self.setup.adjoint(lag), np.nan).rename("sensitivity")
            out.attrs = {"long_name": f"sensitivity of the QoI to SST {lag} months earlier (file)", "units": "1",
                         "source": f.attrs.get("source", ""), "files": f.attrs.get("files", "")}
            return out
        return self.setup.adjoint(lag)

    def adjoint_map(self, lag: int | None = None) -> xr.DataArray:
        """The adjoint map compared with the relevance: the sensitivity, or sensitivity × input signed for the
        explained class (mean over the composite's cases)."""
        lag = self.lag if lag is None else lag
        sens = self.sensitivity_map(lag)
        if self.adjoint == "sensitivity":
            out = sens.copy()
            out.name = "adjoint"
            return out
        m = self.setup.models[lag]
        rows, e = self.explanation(lag)
        sea = np.asarray(m.ckpt.manifest["sea_cells"])
        s = sens.values.ravel()[sea]
        sign = np.where(np.asarray(e.target) == 1, 1.0, -1.0)[:, None]
        contrib = sign * m.x_raw[rows] * s[None]
        vals = contrib[0] if self.explain == "month" else (contrib.mean(0) if len(rows) else np.full(s.shape, np.nan))
        return self._grid_map(vals, "adjoint", {
            "long_name": "adjoint sensitivity × input anomaly, signed for the explained class", "units": "degC",
            "lag": lag})

    def maps(self) -> dict[str, xr.DataArray]:
        """relevance, adjoint, agreement (0 neither, 1 only relevance, 2 only sensitivity, 3 both) and
        ``unsupported`` (relevance hot spots where |adjoint| < support × max |adjoint|), memoised per selection."""
        key = self._key()
        if key not in self._memo:
            from xaiscope.core.agreement import agreement_map

            rel, adj = self.relevance_map(), self.adjoint_map()
            ok = np.isfinite(rel.values) & np.isfinite(adj.values)
            if ok.sum() >= 3 and np.nanmax(np.abs(rel.values)) > 0 and np.nanmax(np.abs(adj.values)) > 0:
                agree = agreement_map(rel, adj, self.k)
                weak = np.abs(adj.values) < self.support * np.nanmax(np.abs(adj.values))
                unsup = (agree.values == 1) & weak
            else:
                agree = xr.full_like(rel, np.nan).rename("agreement")
                unsup = np.zeros(rel.shape, bool)
            unsupported = xr.DataArray(unsup, dims=("lat", "lon"), coords={"lat": rel.lat, "lon": rel.lon},
                                       name="unsupported", attrs={
                                           "long_name": "large relevance where |adjoint| < support × its maximum",
                                           "support": self.support, "k_percent": self.k})
            self._memo = {key: {"relevance": rel, "adjoint": adj, "agreement": agree, "unsupported": unsupported}}
        return self._memo[key]

    def vectors(self, lag: int) -> tuple[np.ndarray, np.ndarray]:
        """(relevance, adjoint) at ``lag`` on the sea cells (the values of :meth:`relevance_map` and
        :meth:`adjoint_map` there), without building maps."""
        m = self.setup.models[lag]
        rows, e = self.explanation(lag)
        sea = self.setup.sea_index
        n = sea.size
        rel = e.relevance[0] if self.explain == "month" else (
            e.relevance.mean(0) if len(rows) else np.full(n, np.nan))
        if self.source == "file" and self.file_sensitivity is not None:
            f = self.file_sensitivity
            s = f.sel(lag=lag).values.ravel()[sea] if lag in f.lag.values else np.full(n, np.nan)
        else:
            s = self.setup.adjoint_sea(lag)
        if self.adjoint == "sensitivity":
            return rel, s
        sign = np.where(np.asarray(e.target) == 1, 1.0, -1.0)[:, None]
        contrib = sign * m.x_raw[rows] * s[None]
        adj = contrib[0] if self.explain == "month" else (contrib.mean(0) if len(rows) else np.full(n, np.nan))
        return rel, adj

    def curves(self) -> pd.DataFrame:
        """Metrics at every lag with a checkpoint (index lag): pattern correlation, top-k Jaccard, sign agreement
        and each map's region shares — the definitions of :mod:`xaiscope.core.agreement` on the sea-cell vectors
        (:func:`fast_metrics`); computed once per (checkpoints, data, rule, target, adjoint, k) in the engine's result
        cache (shared by every session; a loaded sensitivity file's curves stay this view's).

        While the view draws a not yet computed selection in two steps (:meth:`_refresh` in a served session), the
        first step gets the selected lag's row only (other lags NaN, nothing cached)."""
        from xaiscope.core.engine import get_engine

        if self._partial and not self.curves_ready():
            return self._compute_curves(only=self.lag)
        key = self._key(lag=-1)
        if self.source == "file" and self.file_sensitivity is not None:
            if key not in self._curves:
                self._curves = {key: self._compute_curves()}
            return self._curves[key]
        return get_engine().cached(self._curves_key(), self._compute_curves)

    def _curves_key(self) -> tuple:
        ckpts = tuple(self.setup.models[lag].ckpt.sha256 for lag in self.setup.lags)
        return (NS + ".curves", ckpts, self.setup.data_key, *self._key(lag=-1)[1:7])

    def curves_ready(self) -> bool:
        """True when the metric curves of the current selection are computed (cached)."""
        from xaiscope.core.engine import get_engine

        if self.source == "file" and self.file_sensitivity is not None:
            return self._key(lag=-1) in self._curves
        return self._curves_key() in get_engine().cache

    def explanations_ready(self) -> bool:
        """True when every lag's explanation of the current selection is in the engine's result cache (the curves
        then cost ~10 ms: no need to draw in two steps)."""
        from xaiscope.core.engine import get_engine

        cache = get_engine().cache
        return all(self.setup.explanation_key(lag, self.rule, self.explain, self.month) in cache
                   for lag in self.setup.lags)

    def _compute_curves(self, only: int | None = None) -> pd.DataFrame:
        t0 = time.perf_counter()
        rows = []
        for lag in self.setup.lags:
            if only is not None and lag != only:
                rows.append({"lag": lag})
                continue
            rel, adj = self.vectors(lag)
            mt = fast_metrics(rel, adj, self.setup.sea_area, self.k, self.setup.sea_region,
                              len(self.setup.regions.region))
            row = {"lag": lag, **{k: mt[k] for k in METRICS}}
            for i, r in enumerate(self.setup.regions.region.values):
                row[f"relevance_{r}"] = mt["relevance_shares"][i]
                row[f"adjoint_{r}"] = mt["adjoint_shares"][i]
            rows.append(row)
        cols = ["lag", *METRICS] + [f"{m}_{r}" for r in self.setup.regions.region.values
                                    for m in ("relevance", "adjoint")]
        df = pd.DataFrame(rows).reindex(columns=cols).set_index("lag")
        self.timings["curves_s"] = time.perf_counter() - t0
        return df

    def shares(self) -> pd.DataFrame:
        """Region shares of both maps at the selected lag (index region)."""
        c = self.curves().loc[self.lag]
        regions = list(self.setup.regions.region.values)
        return pd.DataFrame({"relevance": [c[f"relevance_{r}"] for r in regions],
                             "adjoint": [c[f"adjoint_{r}"] for r in regions]}, index=pd.Index(regions, name="region"))

    def remote_regions(self) -> list[str]:
        """Regions holding ≥ 5 % of the relevance but less than a third of that share of the adjoint map."""
        sh = self.shares()
        bad = sh[(sh.relevance >= 0.05) & ~(sh.adjoint >= sh.relevance / 3)]
        return [r for r in bad.index if r != "other"]

    def checks(self) -> dict[str, float]:
        """Badges: mean conservation (Σ relevance / explained logit), mean bias share, IG completeness delta."""
        rows, e = self.explanation()
        out = {"n_cases": int(len(rows))}
        if len(rows):
            out.update(e.summary())
        return out

    # ------------------------------------------------------------------------------ what the plots get
    def titles(self) -> dict[str, str]:
        src = "LIM" if self.source == "lim" or self.file_sensitivity is None else "file"
        what = "sensitivity" if self.adjoint == "sensitivity" else "sensitivity × input"
        mp = self.maps()
        return {
            "relevance": f"{RULES[self.rule][0]}, lag {self.lag}: {self._what()}",
            "adjoint": f"{src} adjoint {what}, lag {self.lag}",
            "relevance_bar": f"÷ {_absmax(mp['relevance']):.3g}",
            "adjoint_bar": f"÷ {_absmax(mp['adjoint']):.3g}",
            "agreement": f"Top {self.k:g} % areas; × = large relevance without adjoint support",
            "shares": f"Share of Σ|map| by region, lag {self.lag}",
            "randomisation": (f"Randomisation check ({RULES[self.rule][0]}, lag {self.lag})"
                              if self.randomisation is not None else "Randomisation check: press the button"),
        }

    def plot_data(self) -> dict[str, dict]:
        """The columns each plot is fed (images scaled by their map's max |value|, in the frame x = lon − 180)."""
        mp = self.maps()
        lat, lon = mp["relevance"].lat.values, mp["relevance"].lon.values
        dlat = float(lat[1] - lat[0]) if lat.size > 1 else 5.0
        dlon = float(lon[1] - lon[0]) if lon.size > 1 else 5.0
        geo = {"x": [float(lon[0] - 180.0 - dlon / 2)], "y": [float(lat[0] - dlat / 2)],
               "dw": [float(dlon * lon.size)], "dh": [float(dlat * lat.size)]}

        def scaled(da):
            v = np.asarray(da.values, dtype=float)
            m = _absmax(da)
            return np.ascontiguousarray(v / m if m > 0 else v)

        u = mp["unsupported"].values
        ii, jj = np.nonzero(u)
        df = self.curves()
        sh = self.shares()
        factors = [(REGION_LABELS[r], m) for r in sh.index for m in ("relevance", "adjoint")]
        out = {
            "relevance": {"image": [scaled(mp["relevance"])], **geo},
            "adjoint": {"image": [scaled(mp["adjoint"])], **geo},
            "agreement": {"image": [np.ascontiguousarray(np.asarray(mp["agreement"].values, dtype=float))], **geo},
            "unsupported": {"x": lon[jj] - 180.0, "y": lat[ii]},
            "curves": {"lag": df.index.values.astype(float), **{c: df[c].values for c in METRICS}},
            "shares": {"x": factors, "share": np.array([float(sh.loc[r, m]) for r in sh.index
                                                        for m in ("relevance", "adjoint")]),
                       "color": [SHARE_COLORS[m] for _, m in factors]},
        }
        r = self.randomisation
        if r is None:
            out["randomisation"] = {"n_randomised": np.zeros(0), "spearman": np.zeros(0), "spearman_abs": np.zeros(0)}
        else:
            out["randomisation"] = {"n_randomised": np.r_[0.0, r.n_randomised.values.astype(float)],
                                    "spearman": np.r_[1.0, r.spearman.values],
                                    "spearman_abs": np.r_[1.0, r.spearman_abs.values]}
        return out

    def plot_sources(self) -> dict[str, dict]:
        """The data the Bokeh plots hold now (``ColumnDataSource.data`` by name)."""
        return {k: dict(src.data) for k, src in self._src.items()}

    def _guard(self, fn, empty):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - show it, keep the app running
            from xaiscope.dashboard.state import describe_error

            log.error("LRP view: update failed", exc_info=True)
            self._show_error(describe_error(err))
            return empty

    def _what(self) -> str:
        if self.explain == "month":
            m = self.model
            i = m.rows("month", self.month)[0]
            cls = ("QoI ≤ 0", "QoI > 0")[int(m.pred[i])]
            return f"{self.month} ← input {m.input_time[i]:%Y-%m}, predicts {cls}"
        rows, _ = self.explanation()
        return f"{'positive' if self.explain == 'positive' else 'negative'} composite, {len(rows)} cases"

    def _what_short(self) -> str:
        return self.month if self.explain == "month" else f"{self.explain} composite"

    # ------------------------------------------------------------------------------ Bokeh plots
    def _build_plots(self):
        """The Bokeh figures and their sources; a selection change only replaces source data and titles."""
        from bokeh.models import (ColorBar, ColumnDataSource, FactorRange, FixedTicker,
                                  HoverTool, Legend, LegendItem, LinearColorMapper, Range1d, Span)
        from bokeh.palettes import RdBu11
        from bokeh.plotting import figure

        from xaiscope.dashboard.enso import coastline_geometries, to_plot_frame

        lat = self.setup.land_mask.lat.values
        dlat = float(lat[1] - lat[0]) if lat.size > 1 else 5.0
        self._src = {k: ColumnDataSource() for k in ("relevance", "adjoint", "agreement", "unsupported", "curves",
                                                      "shares", "randomisation")}
        coast = to_plot_frame(coastline_geometries("110m"))
        coast_src = ColumnDataSource({"xs": [c[:, 0] for c in coast], "ys": [c[:, 1] for c in coast]})
        (la0, la1), (lo0, lo1) = self.setup.box
        xr_, yr_ = Range1d(-180.0, 180.0), Range1d(float(lat[0] - dlat / 2), float(lat[-1] + dlat / 2))
        diverging = LinearColorMapper(palette=list(reversed(RdBu11)), low=-1.0, high=1.0, nan_color="#d9d9d9")
        agree_map = LinearColorMapper(palette=AGREE_COLORS, low=-0.5, high=3.5, nan_color="#d9d9d9")
        self._figs, self._bars = {}, {}

        def geo_fig(key, mapper, bar_kw):
            f = figure(height=250, sizing_mode="stretch_width", x_range=xr_, y_range=yr_, title=" ",
                       tools="pan,wheel_zoom,box_zoom,reset,save", output_backend="canvas", min_border_right=10)
            f.toolbar.logo = None
            f.grid.visible = False
            img = f.image(image="image", x="x", y="y", dw="dw", dh="dh", source=self._src[key], color_mapper=mapper)
            f.multi_line(xs="xs", ys="ys", source=coast_src, line_color="#333333", line_width=0.8)
            f.quad(left=[lo0 - 180.0], right=[lo1 - 180.0], bottom=[la0], top=[la1], fill_alpha=0,
                   line_color="black", line_width=1.5, line_dash="dashed")
            # fixed ticks with fixed labels: no JavaScript formatter evaluated at every repaint
            f.xaxis.ticker = FixedTicker(ticks=list(LON_LABELS))  # x = lon − 180
            f.xaxis.major_label_overrides = dict(LON_LABELS)
            f.yaxis.ticker = FixedTicker(ticks=list(LAT_LABELS))
            f.yaxis.major_label_overrides = dict(LAT_LABELS)
            f.add_tools(HoverTool(renderers=[img], tooltips=[("value", "@image{0.000}")]))
            bar = ColorBar(color_mapper=mapper, width=10, **bar_kw)
            f.add_layout(bar, "right")
            self._figs[key] = f
            self._bars[key] = bar
            return f

        f_rel = geo_fig("relevance", diverging, {"title": "÷ max |value|"})
        f_adj = geo_fig("adjoint", diverging, {"title": "÷ max |value|"})
        f_agr = geo_fig("agreement", agree_map, {"ticker": FixedTicker(ticks=[0, 1, 2, 3]),
                                                 "major_label_overrides": {0: "neither", 1: "relevance",
                                                                           2: "adjoint", 3: "both"}})
        for f in (f_rel, f_agr):
            f.scatter(x="x", y="y", source=self._src["unsupported"], marker="x", size=9, line_width=2,
                      color="black")

        lags = self.setup.lags
        f_cur = figure(height=250, sizing_mode="stretch_width", y_range=Range1d(-1.0, 1.0),
                       x_range=Range1d(lags[0] - 0.5, lags[-1] + 0.5), title="Agreement by lag",
                       x_axis_label="lag (months)", y_axis_label="metric", tools="pan,box_zoom,reset,save",
                       output_backend="canvas")
        f_cur.toolbar.logo = None
        items = []
        for col, color, label in CURVES:
            r = f_cur.line(x="lag", y=col, source=self._src["curves"], color=color, line_width=2)
            f_cur.scatter(x="lag", y=col, source=self._src["curves"], color=color, size=6)
            items.append(LegendItem(label=label, renderers=[r]))
        f_cur.add_layout(Legend(items=items, label_text_font_size="11px", spacing=0, padding=4), "right")
        self._lag_span = Span(location=float(self.lag), dimension="height", line_color="#555555", line_dash="dashed",
                              line_width=2)
        f_cur.add_layout(self._lag_span)
        f_cur.add_layout(Span(location=0, dimension="width", line_color="#999999", line_width=1))
        self._figs["curves"] = f_cur

        factors = [(REGION_LABELS[r], m) for r in self.setup.regions.region.values for m in ("relevance", "adjoint")]
        f_sh = figure(height=250, sizing_mode="stretch_width", x_range=FactorRange(*factors), y_range=Range1d(0, 1),
                      title=" ", y_axis_label="share of Σ|map|", tools="save", output_backend="canvas")
        f_sh.toolbar.logo = None
        f_sh.vbar(x="x", top="share", width=0.85, source=self._src["shares"], fill_color="color", line_color=None)
        f_sh.xaxis.major_label_orientation = 0.9
        f_sh.xaxis.group_label_orientation = 0.5
        f_sh.add_tools(HoverTool(tooltips=[("", "@x"), ("share", "@share{0.000}")]))
        self._figs["shares"] = f_sh

        f_rand = figure(height=250, sizing_mode="stretch_width", y_range=Range1d(-1.0, 1.05), title=" ",
                        x_axis_label="layers randomised (from the logits down)", y_axis_label="mean Spearman ρ",
                        tools="save", output_backend="canvas")
        f_rand.toolbar.logo = None
        r1 = f_rand.line(x="n_randomised", y="spearman", source=self._src["randomisation"], color="#1f77b4",
                         line_width=2)
        f_rand.scatter(x="n_randomised", y="spearman", source=self._src["randomisation"], color="#1f77b4", size=7)
        r2 = f_rand.line(x="n_randomised", y="spearman_abs", source=self._src["randomisation"], color="#ff7f0e",
                         line_width=2)
        f_rand.scatter(x="n_randomised", y="spearman_abs", source=self._src["randomisation"], color="#ff7f0e",
                       size=7)
        f_rand.add_layout(Legend(items=[LegendItem(label="signed maps", renderers=[r1]),
                                        LegendItem(label="|maps|", renderers=[r2])], label_text_font_size="11px"),
                          "right")
        f_rand.add_layout(Span(location=0, dimension="width", line_color="#999999", line_width=1))
        self._figs["randomisation"] = f_rand
        for f in self._figs.values():
            f.title.text_font_size = "12px"

    def _in_server(self) -> bool:
        doc = pn.state.curdoc
        return doc is not None and getattr(doc, "session_context", None) is not None

    def _refresh(self, *_, complete: bool = False) -> None:
        """Push the selection's data into the plots, in place. In a served session a selection whose curves are not
        computed yet (the first visit of a rule or composite) is drawn in two steps: the maps, badges and the
        selected lag's metrics at once, then — :data:`FILL_DELAY_MS` later, after that message went out — the other
        lags' explanations and the curves (~0.1 s of work)."""
        if self.setup is None or not hasattr(self, "_src"):
            return
        t0 = time.perf_counter()
        # composites only: a new month (13 one-sample explanations) costs less than a second repaint
        self._partial = (not complete and self.explain != "month" and self._in_server()
                         and not self.curves_ready() and not self.explanations_ready())
        if self._partial:
            doc = pn.state.curdoc

            def fill():
                from panel.io.state import set_curdoc

                with set_curdoc(doc):
                    self._refresh(complete=True)  # the current selection (it may have changed meanwhile)

            # a timeout, not the next tick: the server writes the first step's message while awaiting, and a
            # next-tick callback could run (and hold the loop ~0.1 s) before that message went out
            doc.add_timeout_callback(fill, FILL_DELAY_MS)

        def push():
            data = self.plot_data()
            titles = self.titles()
            badges, note = self._guard(self.badges_html, ""), self._guard(self.note_md, "")
            self.timings["compute_ms"] = 1000 * (time.perf_counter() - t0)
            sent = []
            with pn.io.hold():  # one message; only what changed (each changed model repaints its canvas)
                for k, src in self._src.items():
                    if not _same_columns(src.data, data[k]):
                        src.data = data[k]
                        sent.append(k)
                for k in ("relevance", "adjoint", "agreement", "shares", "randomisation"):
                    _set_if_changed(self._figs[k].title, "text", titles[k])
                _set_if_changed(self._lag_span, "location", float(self.lag))
                for k in ("relevance", "adjoint"):
                    _set_if_changed(self._bars[k], "title", titles[f"{k}_bar"])
                _set_if_changed(self._figs["curves"].title, "text",
                                f"Agreement by lag: {RULES[self.rule][0]}, {self._what_short()}"
                                + (" (computing the other lags…)" if self._partial else ""))
                if hasattr(self, "_badges"):  # the text panes change in the same message as the plots
                    _set_if_changed(self._badges, "object", badges)
                    _set_if_changed(self._note, "object", note)
            self.timings["sources_sent"] = sent
            return True

        try:
            self._guard(push, None)
        finally:
            self._partial = False
        self.timings["update_ms"] = 1000 * (time.perf_counter() - t0)

    # ------------------------------------------------------------------------------ text
    def badges_html(self) -> str:
        c = self.checks()
        if c["n_cases"] == 0:
            return "<b>No case to explain</b> (no correctly predicted case of this class at this lag)."

        def badge(label, value, good):
            color = "#1a7f37" if good else "#b35900"
            return (f"<span style='display:inline-block;margin:2px 6px 2px 0;padding:2px 8px;border-radius:10px;"
                    f"background:{color};color:white;font-size:90%'>{label}: {value}</span>")
        parts = [badge("cases", c["n_cases"], True)]
        cons = c.get("conservation_mean", np.nan)
        parts.append(badge("conservation Σrel/logit (mean)", f"{cons:.3f}", abs(cons - 1) < 0.05))
        if "bias_share_mean" in c:
            parts.append(badge("bias share (mean)", f"{c['bias_share_mean']:+.3f}", abs(c["bias_share_mean"]) < 0.1))
        if "completeness_delta_max_abs" in c:
            parts.append(badge("IG completeness |Δ| (max)", f"{c['completeness_delta_max_abs']:.2e}",
                               c["completeness_delta_max_abs"] < 0.05))
        return "".join(parts)

    def note_md(self) -> str:
        mt = self.curves().loc[self.lag]
        u = self.maps()["unsupported"]
        rel = self.maps()["relevance"]
        w = np.abs(np.nan_to_num(rel.values))
        frac = float(w[u.values].sum() / w.sum()) if w.sum() > 0 else 0.0
        remote = self.remote_regions()
        txt = (f"**Lag {self.lag}**: pattern correlation {mt.pattern_correlation:.2f}, top-{self.k:g} % Jaccard "
               f"{mt.topk_jaccard:.2f}, sign agreement {mt.sign_agreement:.2f}. ")
        if int(u.values.sum()):
            txt += (f"**{int(u.values.sum())} cells (×)** are among the relevance's largest but have "
                    f"|adjoint| < {self.support:g} × its maximum: {frac:.0%} of the relevance mass has no adjoint "
                    f"support. ")
        if remote:
            sh = self.shares()
            txt += "Remote relevance the dynamics do not support: " + ", ".join(
                f"{REGION_LABELS[r]} ({sh.loc[r, 'relevance']:.2f} of the relevance vs {sh.loc[r, 'adjoint']:.2f} "
                f"of the adjoint map)" for r in remote) + "."
        return txt

    # ------------------------------------------------------------------------------ actions
    def run_randomisation(self, n_samples: int = 32) -> pd.DataFrame:
        """core.relevance.randomisation_check for the current rule and target (up to ``n_samples`` cases)."""
        from xaiscope.core.relevance import randomisation_check

        m = self.model
        rows, e = self.explanation()
        if not len(rows):
            raise XaiscopeError("no case to explain for this target at this lag; pick another target or lag.")
        rows, target = rows[:n_samples], np.asarray(e.target)[:n_samples]
        t0 = time.perf_counter()

        def fn(model, xx):
            return explain_x(model, np.asarray(xx, dtype=np.float32), target, self.rule, m.low, m.high).relevance

        df = pd.DataFrame(randomisation_check(m.ckpt.model, m.x[rows], explain_fn=fn, seed=0, target=target))
        self.timings["randomisation_s"] = time.perf_counter() - t0
        self.randomisation = df
        self.rand_runs += 1  # redraws the plot
        return df

    def load_sensitivity(self, path, variable: str | None = None) -> xr.DataArray:
        """Read a NetCDF sensitivity (lag, lat, lon) with data/sensitivity.py onto the model grid; use it."""
        from xaiscope.data.sensitivity import read_sensitivity

        if self._roots is not None:
            path = self._roots.confine(path)
        da = read_sensitivity(path, variable or None, like=self.setup.ds)
        if "lag" not in da.dims:
            raise XaiscopeError(f"{path}: the sensitivity has a time dimension; the view needs one map per lag "
                                f"(dimension 'lag', months).")
        self.file_sensitivity = da
        self._memo = {}
        self.source = "file"
        return da

    # ------------------------------------------------------------------------------ downloads
    def provenance(self) -> dict:
        m = self.model.ckpt.manifest
        _, method, kw = RULES[self.rule]
        return {"checkpoint": str(self.model.ckpt.path), "checkpoint_sha256": self.model.ckpt.sha256,
                "epoch": int(m.get("epoch", 0)), "rule": self.rule, "method": method,
                "rule_settings": json.dumps(kw), "lag": int(self.lag), "explain": self.explain,
                "month": self.month if self.explain == "month" else "", "adjoint": self.adjoint,
                "adjoint_source": "lim" if self.source == "lim" or self.file_sensitivity is None else
                str(self.file_sensitivity.attrs.get("source", "file")),
                "lim_modes": LIM_MODES, "lim_fit_period": "..".join(self.setup.lim.fit_period),
                "k_percent": float(self.k), "support": float(self.support),
                "qoi_box_lat": list(self.setup.box[0]), "qoi_box_lon": list(self.setup.box[1]),
                "data_source": str(self.setup.ds.attrs.get("source", "")), "Conventions": "CF-1.8",
                "created_by": "xaiscope LRP-vs-adjoint view"}

    def maps_dataset(self) -> xr.Dataset:
        mp = self.maps()
        ds = xr.Dataset({"relevance": mp["relevance"], "adjoint": mp["adjoint"],
                         "sensitivity": self.sensitivity_map().rename("sensitivity"),
                         "agreement": mp["agreement"], "unsupported": mp["unsupported"].astype("int8"),
                         "land_mask": self.setup.land_mask})
        if self.explain == "month":
            m = self.model
            i = m.rows("month", self.month)[0]
            ds["input_sst_anomaly"] = self._grid_map(m.x_raw[i], "input_sst_anomaly", {
                "units": "degC", "long_name": f"SST anomaly of the input month {m.input_time[i]:%Y-%m}"})
        for k, v in self.curves().reset_index().items():
            if k != "lag":
                ds[f"curve_{k}"] = ("curve_lag", v.values)
        ds = ds.assign_coords(curve_lag=self.curves().index.values)
        ds.attrs.update(self.provenance())
        return ds

    @staticmethod
    def _netcdf(ds: xr.Dataset) -> io.BytesIO:
        from xaiscope.dashboard.compute import netcdf_bytes

        return netcdf_bytes(ds, as_text=False)

    # ------------------------------------------------------------------------------ layout
    def __panel__(self):
        if self.setup is None:
            return pn.Column(self._alert, sizing_mode="stretch_width")
        if self._layout is None:
            self._layout = self._make_layout()
            if self._in_server():
                _start_warm_up(self.setup)
            if pn.state.location is not None and pn.state.curdoc is not None:
                pn.state.location.sync(self, {"lag": "lag", "rule": "rule", "explain": "explain", "month": "month"})
        return self._layout

    SELECTION = ["lag", "rule", "explain", "month", "adjoint", "source", "k", "support", "rand_runs"]

    def _make_layout(self):
        lags, months = self.setup.lags, self.setup.months
        lag_w = _index_slider("Lag (months)", lags, lags.index(self.lag), width=300)
        lag_w.param.watch(lambda e: setattr(self, "lag", lags[int(e.new)]), "value")
        month_w = _index_slider("Target month t", months, months.index(self.month), width=420)
        month_w.param.watch(lambda e: setattr(self, "month", months[int(e.new)]), "value")

        def to_widgets(*events):
            for e in events:
                if e.name == "lag":
                    lag_w.value = lags.index(e.new)
                elif e.new in months:
                    month_w.value = months.index(e.new)

        self.param.watch(to_widgets, ["lag", "month"])
        rule_w = pn.widgets.RadioButtonGroup.from_param(self.param.rule, options={v[0]: k for k, v in RULES.items()},
                                                        name="Rule")
        explain_w = pn.widgets.RadioButtonGroup.from_param(self.param.explain,
                                                           options={v: k for k, v in EXPLAIN.items()}, name="Explain")
        adjoint_w = pn.widgets.RadioButtonGroup.from_param(self.param.adjoint,
                                                           options={v: k for k, v in ADJOINT.items()}, name="Adjoint")
        k_w = pn.widgets.FloatSlider.from_param(self.param.k, name="top k % (large)", step=1.0, width=220)
        sup_w = pn.widgets.FloatSlider.from_param(self.param.support, name="no adjoint support below (× max)",
                                                  step=0.05, width=220)

        badges = self._badges = pn.pane.HTML("")
        note = self._note = pn.pane.Markdown("", sizing_mode="stretch_width")
        self._build_plots()
        self._refresh()
        self.param.watch(self._refresh, self.SELECTION)
        bk = dict(sizing_mode="stretch_width")
        rand_btn = pn.widgets.Button(label="Run randomisation check", color="primary", width=240)

        def on_rand(_):
            rand_btn.loading = True
            try:
                self._guard(self.run_randomisation, None)
            finally:
                rand_btn.loading = False

        rand_btn.on_click(on_rand)

        path_w = pn.widgets.TextInput(label="Sensitivity NetCDF (path on the server)",
                                      placeholder="/path/to/sensitivity.nc (dims lag, lat, lon; units 1)")
        var_w = pn.widgets.TextInput(label="variable (optional)", width=160)
        load_btn = pn.widgets.Button(label="Load sensitivity", width=160)
        source_w = pn.widgets.RadioButtonGroup.from_param(self.param.source, options={"LIM": "lim", "file": "file"},
                                                          name="Adjoint source")

        def on_load(_):
            if not (path_w.value or "").strip():
                self._show_error("Type the path of a NetCDF sensitivity file first.")
                return
            if self._guard(lambda: self.load_sensitivity(path_w.value.strip(), var_w.value.strip()), None) is not None:
                self._show_error("")

        load_btn.on_click(on_load)
        dl = pn.widgets.FileDownload(callback=lambda: self._netcdf(self.maps_dataset()),
                                     filename="xaiscope_lrp_adjoint.nc", label="Download maps (NetCDF)")
        info = pn.pane.Markdown(
            f"QoI: area-weighted mean SST anomaly in {self.setup.box[0][0]:g}–{self.setup.box[0][1]:g}°N, "
            f"{self.setup.box[1][0]:g}–{self.setup.box[1][1]:g}°E (dashed box), sign at month t, from the map at "
            f"t − lag. Networks for lags {', '.join(map(str, lags))}; LIM {LIM_MODES} EOF modes fitted on "
            f"{'..'.join(self.setup.lim.fit_period)}. Maps are scaled by their own max |value| (shared colours "
            f"−1..1). Prepared in {self.setup.seconds:.1f} s.", sizing_mode="stretch_width")
        return pn.Column(
            pn.pane.Markdown("## LRP vs adjoint sensitivity (SST QoI)"),
            self._alert, info,
            pn.Row(lag_w, rule_w, sizing_mode="stretch_width"),
            pn.Row(explain_w, sizing_mode="stretch_width"),
            month_w,
            pn.Row(adjoint_w, k_w, sup_w, sizing_mode="stretch_width"),
            badges,
            pn.GridBox(*[pn.pane.Bokeh(self._figs[k], **bk) for k in ("relevance", "adjoint", "agreement", "curves")],
                       ncols=2, sizing_mode="stretch_width"),
            note,
            pn.GridBox(pn.pane.Bokeh(self._figs["shares"], **bk),
                       pn.Column(pn.Row(rand_btn, pn.pane.Markdown(
                           "Cascading model-parameter randomisation (Adebayo et al. 2018): layers re-initialised "
                           "from the logits down (up to 32 cases); a faithful explanation loses its correlation with "
                           "the trained maps.", sizing_mode="stretch_width")),
                           pn.pane.Bokeh(self._figs["randomisation"], **bk), sizing_mode="stretch_width"),
                       ncols=2, sizing_mode="stretch_width"),
            BokehSpeedups(),  # cheap repaints: no forced style recalculations per paint (see bokeh_speedups)
            pn.Tabs(
                ("Adjoint from a file", pn.Column(
                    pn.pane.Markdown("A sensitivity of this QoI to SST from another model (e.g. MITgcm/ECCO adjoint "
                                     "output on a regular grid), regridded bilinearly to the 5° grid."),
                    pn.Row(path_w, var_w), pn.Row(load_btn, source_w), max_width=700)),
                ("Download", pn.Column(pn.pane.Markdown(
                    "The maps, the agreement codes and the metric curves as NetCDF, with the checkpoint's sha256, "
                    "rule, lag, month and settings as global attributes."), dl, max_width=500)),
                sizing_mode="stretch_width"),
            sizing_mode="stretch_width", css_classes=["xs-lrp"])


from xaiscope.dashboard.registry import register_view  # noqa: E402

register_view("lrp", "LRP vs adjoint (SST)", LrpAdjointExplorer,
              "Relevance maps of SST-QoI networks beside the LIM adjoint sensitivity, with agreement metrics.")
