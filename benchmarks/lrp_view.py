"""Server-side update time of the LRP-vs-adjoint view: one lag or rule switch, from setting the parameter to the
Bokeh models holding the new data (every watcher of the view: maps, agreement, curves, bars, badges, note).

    python benchmarks/lrp_view.py [--repeats 3]

The view's layout is rendered into a Bokeh document first, as in a served session. Printed (ms):

* ``prepare``: networks of every shipped lag, data, LIM fit, region masks (once per process);
* ``lag switch`` / ``rule switch``, warm: everything cached (what a user gets after the first visit of a rule);
* ``rule switch, cold``: the first visit of a rule — explanations of the target for every lag and the metric curves;
* baseline: the same three maps (relevance, adjoint, agreement) as GeoViews ``DynamicMap`` overlays with the
  coastlines (the ENSO view's way), fed from the same cached data — the ratio shows what the plain Bokeh figures
  with in-place source updates save.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="passes over the lags / rules")
    args = p.parse_args(argv)

    from bokeh.document import Document

    from xaiscope.dashboard import lrp

    t0 = time.perf_counter()
    view = lrp.LrpAdjointExplorer()
    prepare_ms = 1000 * (time.perf_counter() - t0)
    view.__panel__().get_root(Document())
    lags = view.setup.lags
    print(f"lags with a checkpoint: {lags}; prepare {prepare_ms:.0f} ms")

    cold = {}
    for rule in lrp.RULES:  # first visit of each rule (explanations of every lag + curves)
        cold[rule] = _ms(lambda: setattr(view, "rule", rule))
    view.rule = "epsilon"

    lag_ms, compute_ms = [], []
    for _ in range(args.repeats):
        for lag in lags[1:] + lags[:1]:
            lag_ms.append(_ms(lambda: setattr(view, "lag", lag)))
            compute_ms.append(view.timings["compute_ms"])
    rule_ms = []
    for _ in range(args.repeats):
        for rule in list(lrp.RULES)[1:] + ["epsilon"]:
            rule_ms.append(_ms(lambda: setattr(view, "rule", rule)))
    month_ms = []
    view.explain = "month"
    months = view.setup.months[-24:]
    for m in months:  # a new month: explanations of one sample for every lag (cold) + curves
        month_ms.append(_ms(lambda: setattr(view, "month", m)))
    view.explain = "positive"

    # baseline: the three maps as GeoViews DynamicMaps (HoloViews re-renders each overlay on a change)
    import geoviews as gv
    import holoviews as hv
    import panel as pn

    from xaiscope.dashboard.enso import CRS, _coast_path

    def image(key):
        def fn(**_):
            da = view.maps()[key]
            return gv.Image((da.lon.values - 180.0, da.lat.values, da.values), kdims=["lon", "lat"],
                            vdims=[key], crs=CRS).opts(cmap="RdBu_r", colorbar=True, title=key)
        return (hv.DynamicMap(fn, streams=[hv.streams.Params(view, ["lag", "rule"])]) * _coast_path()).opts(
            projection=CRS, responsive=True, height=250)

    base = pn.Column(*[pn.pane.HoloViews(image(k), linked_axes=False) for k in ("relevance", "adjoint",
                                                                               "agreement")])
    base.get_root(Document())
    hv_ms = []
    for lag in lags[1:] + lags[:1]:
        hv_ms.append(_ms(lambda: setattr(view, "lag", lag)))
    med = statistics.median
    print(f"{'switch':34s} {'p50 ms':>8s} {'max ms':>8s}")
    print(f"{'lag (warm)':34s} {med(lag_ms):8.1f} {max(lag_ms):8.1f}   (compute p50 {med(compute_ms):.1f} ms)")
    print(f"{'rule (warm)':34s} {med(rule_ms):8.1f} {max(rule_ms):8.1f}")
    print(f"{'month, one-month target (cold)':34s} {med(month_ms):8.1f} {max(month_ms):8.1f}")
    for rule, ms in cold.items():
        print(f"{'rule ' + rule + ' (cold, first visit)':34s} {ms:8.1f}")
    print(f"{'lag, view + GeoViews baseline':34s} {med(hv_ms):8.1f} {max(hv_ms):8.1f}")
    print(f"GeoViews DynamicMaps of the three maps add {med(hv_ms) - med(lag_ms):.0f} ms per lag switch: "
          f"{med(hv_ms) / med(lag_ms):.1f}× the view's own update")
    print(f"goal ≤ 200 ms per warm switch: {'met' if max(med(lag_ms), med(rule_ms)) <= 200 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
