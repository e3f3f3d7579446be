"""Update time of the LRP-vs-adjoint view, server-side and in a real browser, in one run.

    python benchmarks/lrp_view.py [--repeats 3] [--no-browser] [--moves 12]

Server side (this process; the view's layout rendered into a Bokeh document as in a served session): from setting
the parameter to the Bokeh models holding the new data (every watcher of the view: maps, agreement, curves, bars,
badges, note). Browser side (the app served on 127.0.0.1, headless Chromium with the flags of
``tests/browser_utils.py``): from the input event in the page (a capturing ``keydown`` / ``pointerdown`` listener
stamps ``performance.now()``) to the animation frame after the relevance map's title names the new state — the
maps' data and titles arrive in one message (``pn.io.hold``), Bokeh paints in the frame after. Only that one Title
model is polled (1 ms), so the polling does not load the page's main thread. Browser rows also give, per update, the
app server's CPU time (``/proc``, 10 ms ticks) and the page's main-thread busy time (DevTools ``TaskDuration``,
including the polling): on a loaded machine the latency is mostly waiting for a core, and these two show the work.

Kinds of update (p50 / p95 / max, ms):

* ``lag`` (warm): the lag slider one step (keyboard ArrowRight/ArrowLeft on its handle);
* ``rule`` (warm): a rule button, its explanations cached; ``rule (cold)``: the first visit of a rule — the
  explanations of the target for every lag (integrated gradients: 64 steps) and the metric curves. Server side the
  view's entries of the engine's result cache are dropped before each cold switch; in the browser each rule's first
  visit in the server process is cold (one per rule);
* ``month`` (cold): the target-month slider one step (explain = one month): one sample explained for every lag.

Also printed: ``prepare`` (networks, data, LIM fit; once per process) and a baseline — the three maps as GeoViews
``DynamicMap`` overlays (the ENSO view's way) fed from the same cached data. The machine's load average is printed
with each part, and server rows give the process CPU time too (on a shared, loaded machine the wall-clock
time runs above it). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

# Stamps the time of each user input (keyboard or pointer), before any handler of the page runs.
STAMP_JS = """() => {
  if (!window.__xsStamp) {
    window.__xsStamp = true;
    const stamp = () => { window.__xsT = window.__xsStampT = performance.now(); };
    document.addEventListener("keydown", stamp, true);
    document.addEventListener("pointerdown", stamp, true);
  }
}"""

# ms from the stamped input to the animation frame after the relevance map's title starts with the needle; -1 on
# timeout, -2 when the title model is not found. The Title model is found once (it is updated in place).
MEASURE_JS = """async ([needle, timeout]) => {
  const t0 = window.__xsT || performance.now();
  window.__xsT = null;
  let title = window.__xsTitle;
  if (!title) {
    for (const doc of (window.Bokeh && Bokeh.documents) || []) {
      const models = doc._all_models ? doc._all_models.values() : doc.all_models;
      for (const m of models) {
        const t = m.type || (m.constructor && m.constructor.__name__);
        if (t === "Title" && typeof m.text === "string" && /^[^,]+, lag \\d+: /.test(m.text)) title = m;
      }
    }
    window.__xsTitle = title;
  }
  if (!title) return -2;
  while (!title.text.startsWith(needle)) {
    if (performance.now() - t0 > timeout) return -1;
    await new Promise(r => setTimeout(r, 1));
  }
  await new Promise(r => requestAnimationFrame(() => r()));
  return performance.now() - t0;
}"""


class _Wall(float):
    """Wall-clock ms of one call, with the process CPU time (``.cpu``) spent in it."""


# Started before an input: when the curves' title equals the needle (a selection first visited gets its curves a
# moment after its maps: "… (computing the other lags…)" until then), window.__xsCurvesMs = ms from the input's stamp
# to the animation frame after that.
CURVES_WATCH_JS = """([needle, timeout]) => {
  window.__xsCurvesMs = null;
  let title = null;
  for (const doc of (window.Bokeh && Bokeh.documents) || []) {
    const models = doc._all_models ? doc._all_models.values() : doc.all_models;
    for (const m of models) {
      const t = m.type || (m.constructor && m.constructor.__name__);
      if (t === "Title" && typeof m.text === "string" && m.text.startsWith("Agreement by lag")) title = m;
    }
  }
  if (!title) return false;
  const start = performance.now();
  (async () => {
    while (title.text !== needle) {
      if (performance.now() - start > timeout) { window.__xsCurvesMs = -1; return; }
      await new Promise(r => setTimeout(r, 1));
    }
    await new Promise(r => requestAnimationFrame(() => r()));
    window.__xsCurvesMs = performance.now() - window.__xsStampT;
  })();
  return true;
}"""


def _ms(fn) -> float:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    out = _Wall(1000 * (time.perf_counter() - t0))
    out.cpu = 1000 * (time.process_time() - c0)
    return out


def pct(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def stats(values) -> dict:
    out = {"n": len(values), "p50": pct(values, 0.5), "p95": pct(values, 0.95),
           "max": max(values) if values else float("nan")}
    cpu = [v.cpu for v in values if hasattr(v, "cpu")]
    if cpu:
        out["cpu_p50"] = pct(cpu, 0.5)
    task = [v.task for v in values if hasattr(v, "task")]
    if task:
        out["page_task_p50"] = pct(task, 0.5)
    return out


def _proc_cpu_ms(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all threads) in ms, from /proc (0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return 1000 * (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def server_side(repeats: int) -> dict:
    from bokeh.document import Document

    from xaiscope.core.engine import get_engine
    from xaiscope.dashboard import lrp

    out = {"load_before": load()}
    t0 = time.perf_counter()
    view = lrp.LrpAdjointExplorer()
    out["prepare_ms"] = 1000 * (time.perf_counter() - t0)
    view.__panel__().get_root(Document())
    lags = view.setup.lags
    cache = get_engine().cache

    def drop():  # the view's explanations and curves, as before the first visit of a rule
        cache.clear((lrp.NS + ".explanation",))
        cache.clear((lrp.NS + ".curves",))

    cold: dict[str, list] = {r: [] for r in lrp.RULES}
    for _ in range(repeats):
        for rule in list(lrp.RULES)[1:] + ["epsilon"]:
            drop()
            cold[rule].append(_ms(lambda: setattr(view, "rule", rule)))
    view.rule = "epsilon"
    lag_ms, compute_ms = [], []
    for _ in range(repeats):
        for lag in lags[1:] + lags[:1]:
            lag_ms.append(_ms(lambda: setattr(view, "lag", lag)))
            compute_ms.append(view.timings["compute_ms"])
    for rule in list(lrp.RULES)[1:] + ["epsilon"]:  # every rule visited once: the passes below are warm
        view.rule = rule
    rule_ms = []
    for _ in range(repeats):
        for rule in list(lrp.RULES)[1:] + ["epsilon"]:
            rule_ms.append(_ms(lambda: setattr(view, "rule", rule)))
    month_ms: dict[str, list] = {}
    view.explain = "month"
    months = view.setup.months[-(8 * repeats):]
    for rule in ("epsilon", "integrated_gradients"):
        view.rule = rule
        month_ms[rule] = []
        for m in months:  # a new month: explanations of one sample for every lag (cold) + curves
            month_ms[rule].append(_ms(lambda: setattr(view, "month", m)))
    view.param.update(explain="positive", rule="epsilon")

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
    hv_ms = [_ms(lambda: setattr(view, "lag", lag)) for lag in lags[1:] + lags[:1]]
    out.update({"lag": stats(lag_ms), "lag_compute": stats(compute_ms), "rule": stats(rule_ms),
                "month_epsilon": stats(month_ms["epsilon"]),
                "month_integrated_gradients": stats(month_ms["integrated_gradients"]),
                **{f"rule_cold_{r}": stats(v) for r, v in cold.items()},
                "rule_cold_all": stats([v for vs in cold.values() for v in vs]),
                "lag_with_geoviews_baseline": stats(hv_ms), "load_after": load()})
    return out


def browser_side(moves: int, warm_up: bool = False) -> dict:
    """``warm_up=False``: the served app with its background warm-up off (XAISCOPE_LRP_WARMUP=0), so every rule's
    first visit computes (the cold path). ``warm_up=True``: the app as shipped — once its warm-up has logged that the
    composites are computed, the first visit of each rule (what a user sees a few seconds after opening the page)."""
    from browser_utils import CHROMIUM, browser_page, served_app

    from xaiscope.dashboard import lrp

    if not CHROMIUM.exists():
        return {"skipped": f"needs {CHROMIUM}"}
    out = {"load_before": load()}
    labels = {k: v[0] for k, v in lrp.RULES.items()}
    env = {"XAISCOPE_LRP_WARMUP": "1" if warm_up else "0"}
    with served_app(timeout=240, env=env) as (url, proc, log_path):
        with browser_page() as page:
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")

            def page_task_ms() -> float:  # the page's main-thread task time so far (DevTools Performance metrics)
                return 1000 * next(m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]
                                   if m["name"] == "TaskDuration")

            t0 = time.perf_counter()
            page.goto(url + "?view=lrp&lag=3&rule=epsilon&explain=positive", timeout=300_000)
            page.wait_for_function("() => window.Bokeh && Bokeh.documents && Bokeh.documents.length > 0",
                                   timeout=300_000)
            page.evaluate(STAMP_JS)
            first = page.evaluate(MEASURE_JS, [f"{labels['epsilon']}, lag 3: positive", 300_000])
            out["page_load_ms"] = 1000 * (time.perf_counter() - t0)
            if first < 0:
                raise RuntimeError(f"the LRP view did not show its first map ({first}); see {log_path}")

            def measure(needle: str, act) -> float:
                page.evaluate("() => { window.__xsT = null; }")
                task0, cpu0 = page_task_ms(), _proc_cpu_ms(proc.pid)
                act()
                ms = page.evaluate(MEASURE_JS, [needle, 60_000])
                if ms < 0:
                    raise RuntimeError(f"no frame with a title starting {needle!r} ({ms}); see {log_path}")
                out = _Wall(ms)
                out.cpu = _proc_cpu_ms(proc.pid) - cpu0  # the app server's CPU time (10 ms ticks)
                out.task = page_task_ms() - task0  # the page's main-thread busy time (incl. the measuring itself)
                page.wait_for_timeout(150)  # let the rest of the page (the URL update) settle before the next input
                return out

            lag_ms, rule_ms, cold_ms, month_ms, curves_ms = [], [], {}, [], []
            handle = page.locator(".noUi-handle")
            lag, rule = 3, "epsilon"
            if warm_up:
                t_w = time.perf_counter()
                while "computed ahead" not in Path(log_path).read_text():
                    if time.perf_counter() - t_w > 120:
                        raise RuntimeError(f"the LRP warm-up did not finish in 120 s; see {log_path}")
                    time.sleep(0.2)
                out["warm_up_wait_s"] = time.perf_counter() - t_w
                moves = 0
            for i in range(moves):  # warm: the positive composites of every lag came with the first map's curves
                step = 1 if (i // 4) % 2 == 0 else -1
                lag += step
                handle.nth(0).focus()
                lag_ms.append(measure(f"{labels[rule]}, lag {lag}: positive",
                                      lambda: page.keyboard.press("ArrowRight" if step > 0 else "ArrowLeft")))
            for rnd in range(1 if warm_up else 2):  # round 0: first visits (cold), round 1: warm
                for r in list(lrp.RULES)[1:] + ["epsilon"]:
                    button = page.get_by_role("button", name=labels[r], exact=True)
                    watch = rnd == 0 and r != "epsilon" and page.evaluate(
                        CURVES_WATCH_JS, [f"Agreement by lag: {labels[r]}, positive composite", 60_000])
                    ms = measure(f"{labels[r]}, lag {lag}: positive", lambda: button.click())
                    if rnd == 0 and r != "epsilon":
                        cold_ms[r] = ms
                        if watch:
                            page.wait_for_function("() => window.__xsCurvesMs !== null", timeout=70_000)
                            curves_ms.append(page.evaluate("() => window.__xsCurvesMs"))
                    else:
                        rule_ms.append(ms)
            if warm_up:
                return {"load_before": out["load_before"], "warm_up_wait_s": out["warm_up_wait_s"],
                        "rule_first_warmed": stats(list(cold_ms.values())),
                        "rule_first_warmed_curves_complete": stats(curves_ms),
                        "console_errors": list(page.console_errors), "load_after": load()}
            page.get_by_role("button", name=lrp.EXPLAIN["month"], exact=True).click()
            months = lrp.prepare().months  # the served app's (same shipped checkpoints and data)
            page.wait_for_function("() => window.__xsTitle && / \\d{4}-\\d{2} ← /.test(window.__xsTitle.text)",
                                   timeout=60_000)
            page.wait_for_timeout(500)
            cur = page.evaluate("() => window.__xsTitle.text.match(/ (\\d{4}-\\d{2}) ← /)[1]")
            idx = months.index(cur)
            for _ in range(min(moves, idx)):  # cold: a new target month each step
                idx -= 1
                handle.nth(1).focus()
                month_ms.append(measure(f"{labels['epsilon']}, lag {lag}: {months[idx]}",
                                        lambda: page.keyboard.press("ArrowLeft")))
            errors = list(page.console_errors)
    out.update({"lag": stats(lag_ms), "rule": stats(rule_ms), "month_epsilon": stats(month_ms),
                **{f"rule_cold_{r}": stats([v]) for r, v in cold_ms.items()},
                "rule_cold_all": stats(list(cold_ms.values())), "rule_cold_curves_complete": stats(curves_ms),
                "console_errors": errors, "load_after": load()})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="server side: passes over the lags / rules")
    p.add_argument("--moves", type=int, default=12, help="browser side: lag and month steps")
    p.add_argument("--no-browser", action="store_true", help="server side only")
    args = p.parse_args(argv)

    server = server_side(args.repeats)
    browser = None if args.no_browser else browser_side(args.moves)
    if browser is not None and "skipped" not in browser:
        warmed = browser_side(args.moves, warm_up=True)
        browser["rule_first_warmed"] = warmed["rule_first_warmed"]
        browser["rule_first_warmed_curves_complete"] = warmed["rule_first_warmed_curves_complete"]
        browser["warm_up_wait_s"] = warmed["warm_up_wait_s"]
        browser["console_errors"] = browser.get("console_errors", []) + warmed["console_errors"]
    print(f"prepare {server['prepare_ms']:.0f} ms (once per process); load average (1/5/15 min) server part "
          f"{server['load_before']} → {server['load_after']}" +
          ("" if not browser or "skipped" in browser else
           f", browser part {browser['load_before']} → {browser['load_after']}"))
    kinds = [("lag", "lag (warm)"), ("rule", "rule (warm)"), ("month_epsilon", "month, LRP ε (cold)"),
             ("month_integrated_gradients", "month, integrated gradients (cold)")]
    from xaiscope.dashboard.lrp import RULES

    kinds += [(f"rule_cold_{r}", f"rule {r} (cold, first visit)") for r in RULES if r != "epsilon"]
    kinds += [("rule_cold_epsilon", "rule epsilon (cold, first visit)"), ("rule_cold_all", "rule, any (cold)"),
              ("rule_cold_curves_complete", "rule, any (cold): curves complete"),
              ("rule_first_warmed", "rule, first visit after warm-up"),
              ("rule_first_warmed_curves_complete", "  … curves complete")]
    print(f"{'update':40s} {'server p50':>10s} {'p95':>7s} {'max':>7s} {'n':>3s} {'cpu p50':>7s} | "
          f"{'browser p50':>11s} {'p95':>7s} {'max':>7s} {'n':>3s} {'server cpu':>10s} {'page busy':>9s}")
    worst, worst_shipped = 0.0, 0.0
    cold_only = {k for k, _ in kinds if k.startswith("rule_cold")}
    for key, label in kinds:
        s = server.get(key)
        b = (browser or {}).get(key)
        row = f"{label:40s} "
        row += (f"{s['p50']:10.1f} {s['p95']:7.1f} {s['max']:7.1f} {s['n']:3d} {s.get('cpu_p50', 0):7.1f} | "
                if s else f"{'':38s} | ")
        row += (f"{b['p50']:11.1f} {b['p95']:7.1f} {b['max']:7.1f} {b['n']:3d} {b.get('cpu_p50', 0):10.0f} "
                f"{b.get('page_task_p50', 0):9.1f}" if b else f"{'-':>11s}")
        print(row)
        for d in (s, b):
            if d and d["n"]:
                worst = max(worst, d["p50"])
                if key not in cold_only or d is s:  # as shipped: the browser's first visits come after the warm-up
                    worst_shipped = max(worst_shipped, d["p50"])
    g = server["lag_with_geoviews_baseline"]
    print(f"{'lag, view + GeoViews baseline (server)':40s} {g['p50']:10.1f} {g['p95']:7.1f} {g['max']:7.1f} "
          f"{g['n']:3d}  ({g['p50'] / server['lag']['p50']:.1f}× the view's own lag update)")
    if browser and browser.get("console_errors"):
        print(f"browser console errors: {browser['console_errors'][:3]}")
    if browser and "warm_up_wait_s" in browser:
        print(f"(the served app's background warm-up had computed every rule's composites "
              f"{browser['warm_up_wait_s']:.1f} s after the page showed its first map)")
    print(f"goal ≤ 200 ms per update (p50 of every kind), the app as shipped (browser first visits after its "
          f"warm-up): {'met' if worst_shipped <= 200 else 'NOT met'} (worst p50 {worst_shipped:.0f} ms); "
          f"with the browser's cold first visits too: {'met' if worst <= 200 else 'NOT met'} "
          f"(worst p50 {worst:.0f} ms)")
    print(json.dumps({"server": server, "browser": browser}, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
