"""ENSO view speed: a start-month change (compute), a full view update, and the hindcast.

    python benchmarks/enso_view.py [--months 12] [--projections platecarree robinson]

torch runs on one thread (``torch.set_num_threads(1)``), as in the served app. Measured on the demo checkpoint and
the shipped 5° data, for ``--months`` consecutive start months:

* compute per start-month change, all leads plus the internal state map:
  - ``baseline``: what the view did before: ``convlstm_states`` (a full forward pass) for the month, then maps,
    series and table as xarray objects;
  - ``on demand``: the state store computing the month (one forward pass in ``torch.inference_mode``) + arrays;
  - ``stored``: the month's states already in the store (filled by the background batch) + arrays;
* full view update: the page laid out in a Bokeh document (a view per document, as per browser session), time
  from setting the start month to every map, the series marker and the table having new Bokeh data (server side:
  neither sending the changes nor the browser's drawing is included; ``benchmarks/load_test.py --views enso``
  measures in the browser);
* the hindcast: computed (batched forward, all start months), read from the stored file, and the background
  fill of all internal states.

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--months", type=int, default=12)
    p.add_argument("--projections", nargs="+", default=["platecarree", "robinson", "orthographic"])
    p.add_argument("--skip-hindcast", action="store_true", help="do not time computing the hindcast (~30 s)")
    a = p.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from xaiscope.core.convlstm import convlstm_states
    from xaiscope.core.engine import Engine, EngineSettings, configure_engine
    from xaiscope.dashboard import enso
    from xaiscope.data.sst import demo_sst

    engine = configure_engine(EngineSettings(device="cpu", threads=1))
    ds = demo_sst()
    ckpt = engine.open_checkpoint(enso.default_checkpoint())
    res: dict = {}

    # ---------------------------------------------------------------- hindcast
    if not a.skip_hindcast:
        t0 = time.perf_counter()
        enso.compute_hindcast(ckpt, ds, use_files=False, engine=Engine(EngineSettings(device="cpu", threads=1)))
        res["hindcast_computed_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hc = enso.compute_hindcast(ckpt, ds)
    res["hindcast_from_file_s"] = time.perf_counter() - t0
    res["hindcast_source"] = hc.source
    res["start_months"] = len(hc.rows)

    view = enso.EnsoExplorer(checkpoint=ckpt, sst=ds, precompute_states=False)
    i0 = view.index
    months = [view.months[(i0 + k) % len(view.months)] for k in range(1, a.months + 1)]

    def baseline(m):
        """The previous implementation: a forward pass for the states and xarray objects for everything."""
        i = hc.rows[hc.month_index[m]]
        w = int(ckpt.manifest["window"])
        st = convlstm_states(ckpt.model, hc.x_all[i - w + 1:i + 1], time=ds.time.values[i - w + 1:i + 1],
                             lat=ds.lat.values, lon=ds.lon.values, land_mask=ds["land_mask"])
        view.start = m
        for lead in range(1, 7):
            view.lead = lead
            fm, om = view.forecast_map(), view.observed_map()
            view._da(fm.values - om.values, "error", "e")
        ins = view.input_maps()
        [ins.isel(time=k) for k in range(w)]
        s = st[view.state_kind].isel(time=view.input_month - 1).sel(layer=view.layer, channel=view.channel)
        view._da(np.where(hc.sea, s.values, np.nan), "s", "s")
        view.forecast_nino()

    def arrays(m):
        view.start = m
        for lead in range(1, 7):
            view.lead = lead
            view._forecast_values(), view._observed_values(), view._error_values()
        vals, _ = view._input_values()
        view._map_clim()
        view._state_values()
        view.forecast_nino()

    def timed(fn, ms, before=None):
        out = []
        for m in ms:
            if before:
                before(m)
            t0 = time.perf_counter()
            fn(m)
            out.append((time.perf_counter() - t0) * 1e3)
        return out

    store = hc.states
    res["baseline_ms"] = timed(baseline, months)
    res["on_demand_ms"] = timed(arrays, months, before=lambda m: engine.cache.clear(("enso.states",)))
    t0 = time.perf_counter()
    store.fill(i0)
    res["states_fill_all_s"] = time.perf_counter() - t0
    res["stored_ms"] = timed(arrays, months)

    # ---------------------------------------------------------------- full view update (Bokeh models)
    from bokeh.document import Document
    from panel.io.state import set_curdoc

    for key in a.projections:
        doc = Document()
        with set_curdoc(doc):
            # a view per document, as in a served app (one per browser session); the engine's hindcast is shared
            view = enso.EnsoExplorer(checkpoint=ckpt, sst=ds, precompute_states=False, projection=key)
            doc.add_root(view.__panel__().get_root(doc))
            tabs = [o for o in view._layout.objects if o.__class__.__name__ == "Tabs"][0]
            for tab, name in ((0, "maps"), (1, "states")):
                tabs.active = tab
                res[f"view_update_{name}_{key}_ms"] = timed(lambda m: setattr(view, "start", m), months)
            t0 = time.perf_counter()
            view.lead = view.lead % 6 + 1
            res[f"lead_change_{key}_ms"] = (time.perf_counter() - t0) * 1e3

    med = {k: statistics.median(v) for k, v in res.items() if isinstance(v, list)}
    print(f"hindcast of {res['start_months']} start months: computed {res.get('hindcast_computed_s', float('nan')):.1f} s, read from "
          f"the stored file {res['hindcast_from_file_s']:.2f} s; background fill of all internal states "
          f"{res['states_fill_all_s']:.1f} s")
    print("compute per start-month change (median ms):")
    for k in ("baseline_ms", "on_demand_ms", "stored_ms"):
        print(f"  {k[:-3]:10s} {med[k]:8.1f}   ratio to baseline {med[k] / med['baseline_ms']:.3f}")
    print("full view update per start-month change (median ms, server side):")
    for k in sorted(med):
        if k.startswith("view_update"):
            print(f"  {k[12:-3]:28s} {med[k]:8.1f}")
    for k in sorted(res):
        if k.startswith("lead_change"):
            print(f"  lead change, {k[12:-3]:14s} {res[k]:8.1f}")
    print(json.dumps({**{k: round(v, 2) for k, v in med.items()},
                      **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()
                         if not isinstance(v, list)}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
