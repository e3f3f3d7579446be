"""Many browser sessions at once against one app server: errors, update latency and server memory.

Starts one app server (``tests/browser_utils.served_app``), one headless Chromium and drives browser pages
(one browser context each, i.e. one Bokeh session each) with Playwright's async API. For every view it first
scrubs with a single session (the baseline, which also warms the server up: models, hindcasts, embeddings), then
with ``--sessions`` pages at once, each for ``--seconds``. One step per view:

- ``cells``: the date slider one day back (keyboard on the slider handle); updated when the heatmap title names
  the new window ("window ending DAY"), as ``benchmarks/scrub_latency.py`` measures it.
- ``enso``: the start-month slider one month on (keyboard); updated when the forecast map's title names the new
  target month ("ConvLSTM forecast for MONTH (lead 1)").
- ``lrp``: the lag slider one lag on (keyboard, back and forth over 0–12); updated when the relevance map's title
  names the new lag ("LRP ε, lag N: positive composite").
- ``tracin``: the next test example in the "Test example" list (a change event on the select); updated when the
  test example's title names it ("test MONTH:").

Latency is measured in the page: performance.now() from just before the input (the key press is sent right after)
to the first animation frame after the title (a Bokeh Title or Label) changed. Errors: console errors, page errors
and failed requests of every page, failed waits (no update within
``--step-timeout``), and ERROR / Traceback lines in the server log. Memory: the server's VmRSS sampled every
second; model copies: the server runs with a counter on every checkpoint load (``core.checkpoint``) and, at the
end of each phase, reports the live ``Checkpoint`` objects (a count per file) on SIGUSR1.

    python benchmarks/load_test.py [--sessions 20] [--seconds 60] [--views cells,enso,lrp,tracin]

Prints a table and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser_utils import CHROMIUM, CHROMIUM_ARGS, served_app  # noqa: E402

# The app server with two measuring hooks (no change to the app): a log line per checkpoint actually read from
# disk, and on SIGUSR1 the live Checkpoint objects counted per file (after a garbage collection).
SERVER_CODE = """
import gc, json, logging, signal, sys
from collections import Counter
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
import xaiscope.core.checkpoint as ck
log = logging.getLogger("xaiscope.loadtest")
_load = ck._load_checkpoint
def counted(path, verify):
    out = _load(path, verify)
    n = sum(p.numel() * p.element_size() for p in out.model.parameters())
    log.info("LOADTEST checkpoint-load %s %d", path, n)
    return out
ck._load_checkpoint = counted
def live(signum, frame):
    gc.collect()
    per = Counter(str(o.path) for o in gc.get_objects() if isinstance(o, ck.Checkpoint))
    log.info("LOADTEST live-checkpoints %s", json.dumps(per))
signal.signal(signal.SIGUSR1, live)
from xaiscope.dashboard.app import serve
serve(**json.loads(sys.argv[1]))
"""

# true once a plot title or label (Bokeh Title / Label models; Divs and other text are not looked at) contains needle
HAS_TITLE_JS = """(needle) => {
  for (const doc of (window.Bokeh && Bokeh.documents) || []) {
    const models = doc._all_models ? doc._all_models.values() : doc.all_models;
    for (const m of models) {
      if (typeof m.text === "string" && m.text.includes(needle)
          && ["Title", "Label"].includes(m.type || (m.constructor && m.constructor.__name__))) return true;
    }
  }
  return false;
}"""

# Wait (in the page) until a title contains the needle, plus one animation frame; ms since window.__t0 (set just
# before the input) or -1 on timeout.
MARK_JS = "() => { window.__t0 = performance.now(); }"
# The body both measurements end with: wait for a title holding `needle`, then for the frame that paints it.
_WAIT_TITLE_JS = """
  const has = """ + HAS_TITLE_JS + """;
  while (!has(needle)) {
    if (performance.now() - t0 > timeout) return -1;
    await new Promise(r => setTimeout(r, 10));
  }
  await new Promise(r => requestAnimationFrame(() => r()));
  return performance.now() - t0;
}"""
MEASURE_JS = """async ([needle, timeout]) => {
  const t0 = window.__t0;""" + _WAIT_TITLE_JS

# The select whose options are all months (the TracIn test example list): its options and current value.
MONTH_SELECT = """(() => {
  const all = (root) => {
    const out = Array.from(root.querySelectorAll("select"));
    for (const el of root.querySelectorAll("*")) if (el.shadowRoot) out.push(...all(el.shadowRoot));
    return out;
  };
  for (const s of all(document)) {  // also inside shadow roots (Bokeh widgets live there)
    const v = Array.from(s.options).map(o => o.value);
    if (v.length >= 10 && v.every(x => /^\\d{4}-\\d{2}/.test(x))) return s;
  }
  return null;
})()"""
SELECT_OPTIONS_JS = ("() => { const s = " + MONTH_SELECT
                     + "; return s ? [Array.from(s.options).map(o => o.value), s.value] : null; }")
SELECT_AND_MEASURE_JS = """async ([value, needle, timeout]) => {
  const s = """ + MONTH_SELECT + """;
  if (!s) return -2;
  const t0 = performance.now();
  s.value = value;
  s.dispatchEvent(new Event("change", {bubbles: true}));""" + _WAIT_TITLE_JS


def pct(values, q):
    values = sorted(values)
    if not values:
        return None
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def _month(s: str, k: int) -> str:
    y, m = map(int, s.split("-")[:2])
    n = y * 12 + (m - 1) + k
    return f"{n // 12:04d}-{n % 12 + 1:02d}"


def _bounce(i: int, lo: int, hi: int) -> int:
    """The i-th position of a walk lo, lo+1, …, hi, hi-1, …, lo, … ."""
    span = hi - lo
    j = i % (2 * span)
    return lo + (j if j <= span else 2 * span - j)


# ---------------------------------------------------------------------------------------------------- views
class KeyboardView:
    """A view scrubbed with the arrow keys on its first slider handle."""

    key = ""

    def url(self) -> str: ...

    def ready_needle(self) -> str: ...

    def needle(self, i: int) -> tuple[str, str]:  # (key to press, title text that shows step i is drawn)
        ...

    async def prepare(self, page, base: str, timeout_ms: float) -> None:
        await page.goto(base + self.url(), timeout=timeout_ms)
        await page.wait_for_function(HAS_TITLE_JS, arg=self.ready_needle(), timeout=timeout_ms)
        await page.wait_for_timeout(1000)

    async def step(self, page, i: int, timeout_ms: float) -> float:
        key, needle = self.needle(i)
        await page.locator(".noUi-handle").first.focus()
        await page.evaluate(MARK_JS)
        await page.keyboard.press(key)
        return await page.evaluate(MEASURE_JS, [needle, timeout_ms])


class CellsView(KeyboardView):
    key = "cells"
    start = dt.date(2009, 3, 15)

    def url(self):
        return f"?mode=window&date={self.start}"

    def ready_needle(self):
        return f"window ending {self.start}"

    def needle(self, i):
        return "ArrowLeft", f"window ending {self.start - dt.timedelta(days=i + 1)}"


class EnsoView(KeyboardView):
    key = "enso"
    lo, hi, start = "2010-01", "2017-06", "2012-01"  # start months inside the hindcast

    def url(self):
        return f"?view=enso&start={self.start}&lead=1"

    def ready_needle(self):
        return f"ConvLSTM forecast for {_month(self.start, 1)} (lead 1)"

    def _pos(self, i):  # month offset of step i from `lo`
        first = (int(self.start[:4]) - int(self.lo[:4])) * 12 + int(self.start[5:7]) - int(self.lo[5:7])
        span = (int(self.hi[:4]) - int(self.lo[:4])) * 12 + int(self.hi[5:7]) - int(self.lo[5:7])
        return _bounce(first + i, 0, span)

    def needle(self, i):
        a, b = self._pos(i), self._pos(i + 1)
        return ("ArrowRight" if b > a else "ArrowLeft"), f"ConvLSTM forecast for {_month(self.lo, b + 1)} (lead 1)"


class LrpView(KeyboardView):
    key = "lrp"
    start = 3

    def url(self):
        return f"?view=lrp&lag={self.start}&rule=epsilon&explain=positive"

    def ready_needle(self):
        return f"LRP ε, lag {self.start}: positive composite"

    def needle(self, i):
        a, b = _bounce(self.start + i, 0, 12), _bounce(self.start + i + 1, 0, 12)
        return ("ArrowRight" if b > a else "ArrowLeft"), f"LRP ε, lag {b}: positive composite"


class TracinView:
    """The next test example from the list (sst_qoi_lag03: last-layer TracIn over its checkpoint series)."""

    key = "tracin"

    async def prepare(self, page, base: str, timeout_ms: float) -> None:
        await page.goto(base + "?view=tracin&model=sst_qoi_lag03&method=last_layer", timeout=timeout_ms)
        await page.wait_for_function(f"() => ({SELECT_OPTIONS_JS})() !== null", timeout=timeout_ms)
        options, value = await page.evaluate(SELECT_OPTIONS_JS)
        page.tracin_options = options
        page.tracin_first = options.index(value) if value in options else 0
        await page.wait_for_function(HAS_TITLE_JS, arg=f"test {options[page.tracin_first]}:", timeout=timeout_ms)
        await page.wait_for_timeout(1000)

    async def step(self, page, i: int, timeout_ms: float) -> float:
        opts = page.tracin_options
        j = _bounce(page.tracin_first + i + 1, 0, len(opts) - 1)
        return await page.evaluate(SELECT_AND_MEASURE_JS, [opts[j], f"test {opts[j]}:", timeout_ms])


VIEWS = {v.key: v for v in (CellsView(), EnsoView(), LrpView(), TracinView())}


# ---------------------------------------------------------------------------------------------------- driving
class Session:
    def __init__(self, index: int, context, page):
        self.index, self.context, self.page = index, context, page
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console: {m.text} ({m.location.get('url', '')})")
                if m.type == "error" else None)
        page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url} ({r.failure})"))
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))


async def new_session(browser, index: int) -> Session:
    context = await browser.new_context(viewport={"width": 1500, "height": 1800})
    return Session(index, context, await context.new_page())


async def run_phase(sessions, view, base, seconds, step_timeout_s, load_timeout_s, pace_ms):
    """Prepare every session on the view, then scrub all of them for ``seconds``; per-session results."""

    async def prepare(s):
        t0 = time.perf_counter()
        try:
            await view.prepare(s.page, base, load_timeout_s * 1000)
            return time.perf_counter() - t0, None
        except Exception as err:  # noqa: BLE001 - reported as an error of this session
            return time.perf_counter() - t0, f"page did not become ready: {type(err).__name__}: {str(err)[:200]}"

    for s in sessions:
        s.errors.clear()
    loads = await asyncio.gather(*(prepare(s) for s in sessions))
    deadline = time.perf_counter() + seconds

    async def scrub(s, load_error):
        lat, failed = [], []
        if load_error:
            return lat, [load_error]
        i = 0
        while time.perf_counter() < deadline:
            try:
                ms = await view.step(s.page, i, step_timeout_s * 1000)
            except Exception as err:  # noqa: BLE001
                failed.append(f"step {i}: {type(err).__name__}: {str(err)[:200]}")
                break
            if ms < 0:
                failed.append(f"step {i}: no update within {step_timeout_s} s")
                break  # the page's position is unknown now
            lat.append(ms)
            i += 1
            await asyncio.sleep(pace_ms / 1000)  # a user's pace between moves
        return lat, failed

    t0 = time.perf_counter()
    results = await asyncio.gather(*(scrub(s, err) for s, (_, err) in zip(sessions, loads)))
    wall = time.perf_counter() - t0
    await asyncio.sleep(1.0)  # late console errors of the last updates
    out = []
    for s, (load_s, _), (lat, failed) in zip(sessions, loads, results):
        out.append({"session": s.index, "load_s": load_s, "latencies": lat, "failed": failed,
                    "errors": list(s.errors)})
    return out, wall


class Sampler:
    """The server's VmRSS (MiB) and the 1-minute load average every ``every`` s, tagged with the phase."""

    def __init__(self, pid: int, every: float = 1.0):
        self.pid, self.every, self.phase, self.samples = pid, every, "start", []

    def rss(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    async def run(self):
        while True:
            self.samples.append((time.time(), self.phase, self.rss(), os.getloadavg()[0]))
            await asyncio.sleep(self.every)

    def of(self, prefix: str):
        return [s for s in self.samples if s[1].startswith(prefix) and s[2] is not None]


def server_log_since(log: Path, offset: int) -> tuple[str, int]:
    with open(log, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    return data.decode("utf-8", "replace"), offset + len(data)


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if re.search(r"\bERROR\b|\bCRITICAL\b|^Traceback", ln)]


async def live_checkpoints(pid: int, log: Path) -> dict:
    """Ask the server for its live Checkpoint objects (SIGUSR1) and read the answer from its log."""
    before = log.stat().st_size
    os.kill(pid, signal.SIGUSR1)
    for _ in range(100):
        await asyncio.sleep(0.1)
        text, _ = server_log_since(log, before)
        m = re.findall(r"LOADTEST live-checkpoints (\{.*\})", text)
        if m:
            return json.loads(m[-1])
    return {}


def checkpoint_loads(text: str) -> Counter:
    return Counter(m for m in re.findall(r"LOADTEST checkpoint-load (\S+) \d+", text))


async def main_async(args) -> dict:
    from playwright.async_api import async_playwright

    views = [VIEWS[k] for k in args.views]
    cache = tempfile.mkdtemp(prefix="xaiscope-load-cache-")
    env = {"XAISCOPE_CACHE_DIR": cache, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    load0 = os.getloadavg()
    report = {"phases": {}}
    with served_app(env=env, timeout=300, code=SERVER_CODE) as (url, proc, log):
        sampler = Sampler(proc.pid)
        sampler_task = asyncio.create_task(sampler.run())
        offset = 0
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            plan = ([("single", 1)] if args.baseline else []) + [("concurrent", args.sessions)]
            sessions = []
            for kind, n in plan:
                while len(sessions) < n:
                    sessions.append(await new_session(browser, len(sessions)))
                for view in views:
                    phase = f"{kind}:{view.key}"
                    sampler.phase = phase
                    print(f"[{time.strftime('%H:%M:%S')}] {phase}: {n} session(s), {args.seconds:g} s ...", flush=True)
                    res, wall = await run_phase(sessions[:n], view, url, args.seconds, args.step_timeout,
                                                args.load_timeout, args.pace)
                    text, offset = server_log_since(log, offset)
                    live = await live_checkpoints(proc.pid, log)
                    _, offset = server_log_since(log, offset)
                    report["phases"][phase] = {"sessions": res, "wall_s": wall, "server_errors": error_lines(text),
                                               "checkpoint_loads": dict(checkpoint_loads(text)),
                                               "live_checkpoints": live}
                if kind == "single":
                    sampler.phase = "warm"
                    await asyncio.sleep(2)
            sampler.phase = "end"
            for s in sessions:
                await s.context.close()
            await browser.close()
        await asyncio.sleep(2)
        sampler_task.cancel()
        report["samples"] = sampler.samples
        report["all_loads"] = dict(checkpoint_loads(log.read_text(errors="replace")))
        report["server_log"] = str(log)
    report["load_start"] = load0
    report["load_end"] = os.getloadavg()
    return report


def summarise(args, report) -> dict:
    phases = report["phases"]
    print()
    load_s = report["samples"]
    conc_load = [s[3] for s in load_s if s[1].startswith("concurrent")]
    print(f"{os.cpu_count()} cores; load average (1 min) at start {report['load_start'][0]:.2f}, "
          f"during the concurrent phases mean {sum(conc_load) / max(len(conc_load), 1):.2f} "
          f"(max {max(conc_load, default=0):.2f}), at the end {report['load_end'][0]:.2f}")
    print(f"{'view':8s} {'single p50/p95 ms (n)':>24s} {f'{args.sessions} sessions p50/p95 ms (n)':>28s} "
          f"{'p95 ratio':>9s} {'errors':>7s} {'sessions ok':>11s} {'page load s (max)':>17s}")
    per_view = {}
    total_errors = 0
    for view in args.views:
        single = phases.get(f"single:{view}")
        conc = phases.get(f"concurrent:{view}")
        row = {}
        for name, ph in (("single", single), ("concurrent", conc)):
            if ph is None:
                continue
            lat = [x for s in ph["sessions"] for x in s["latencies"]]
            errs = ([e for s in ph["sessions"] for e in s["errors"]] + [e for s in ph["sessions"] for e in s["failed"]]
                    + [f"server: {e}" for e in ph["server_errors"]])
            ok = sum(1 for s in ph["sessions"] if s["latencies"] and not s["failed"] and not s["errors"])
            row[name] = {"p50_ms": pct(lat, .5), "p95_ms": pct(lat, .95), "steps": len(lat), "errors": len(errs),
                         "error_samples": errs[:5], "sessions": len(ph["sessions"]), "sessions_ok": ok,
                         "steps_per_session": [len(s["latencies"]) for s in ph["sessions"]],
                         "page_load_max_s": max(s["load_s"] for s in ph["sessions"]),
                         "checkpoint_loads": ph["checkpoint_loads"], "live_checkpoints": ph["live_checkpoints"]}
            total_errors += len(errs)
        s, c = row.get("single", {}), row.get("concurrent", {})
        ratio = (c["p95_ms"] / s["p95_ms"]) if s.get("p95_ms") and c.get("p95_ms") else None
        row["p95_ratio"] = ratio
        per_view[view] = row

        def fmt(r):
            if not r or r["p50_ms"] is None:
                return "—"
            return f"{r['p50_ms']:.0f} / {r['p95_ms']:.0f} ({r['steps']})"

        print(f"{view:8s} {fmt(s):>24s} {fmt(c):>28s} {(f'{ratio:.2f}' if ratio else '—'):>9s} "
              f"{s.get('errors', 0) + c.get('errors', 0):7d} {c.get('sessions_ok', 0):>5d}/{c.get('sessions', 0):<5d} "
              f"{c.get('page_load_max_s', 0):17.1f}")
        for e in (s.get("error_samples", []) + c.get("error_samples", []))[:5]:
            print(f"         error: {e}")

    def rss(prefix):
        return [x[2] for x in report["samples"] if x[1].startswith(prefix) and x[2] is not None]

    warm = rss("warm") or rss("single")
    conc = rss("concurrent")
    mem = {"rss_start_mib": (rss("start") or [None])[0], "rss_after_warmup_mib": warm[-1] if warm else None,
           "rss_peak_single_mib": max(rss("single"), default=None), "rss_peak_concurrent_mib": max(conc, default=None),
           "rss_end_mib": (rss("end") or [None])[-1]}
    print("server RSS (MiB): " + ", ".join(f"{k[4:-4]} {v:.0f}" for k, v in mem.items() if v is not None))
    by_view = {}
    for view in args.views:
        vals = rss(f"concurrent:{view}")
        if vals:
            by_view[view] = max(vals)
    if by_view:
        print("server RSS peak per concurrent phase (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in by_view.items()))
    loads = report["all_loads"]
    copies = max(loads.values(), default=0)
    print(f"server log: {report['server_log']}")
    print(f"checkpoint files read from disk by the server: {sum(loads.values())} reads of {len(loads)} files "
          f"(most reads of one file: {copies})")
    for view in args.views:
        c = per_view[view].get("concurrent", {})
        cl = c.get("checkpoint_loads") or {}
        if cl:
            print(f"  during concurrent:{view}: " + ", ".join(f"{Path(k).name} ×{v}" for k, v in cl.items()))
        live = c.get("live_checkpoints") or {}
        if live:
            print(f"  live Checkpoint objects after concurrent:{view}: "
                  + ", ".join(f"{Path(k).parent.name}/{Path(k).name} ×{v}" for k, v in live.items()))
    live_max = max((v for view in args.views for v in (per_view[view].get("concurrent", {}).get("live_checkpoints")
                                                        or {}).values()), default=None)
    result = {
        "benchmark": "load_test", "sessions": args.sessions, "seconds": args.seconds, "views": args.views,
        "errors": total_errors,
        "per_view": {v: {"single_p50_ms": r.get("single", {}).get("p50_ms"),
                         "single_p95_ms": r.get("single", {}).get("p95_ms"),
                         "single_steps": r.get("single", {}).get("steps"),
                         "concurrent_p50_ms": r.get("concurrent", {}).get("p50_ms"),
                         "concurrent_p95_ms": r.get("concurrent", {}).get("p95_ms"),
                         "concurrent_steps": r.get("concurrent", {}).get("steps"),
                         "p95_ratio": r.get("p95_ratio"),
                         "errors": r.get("single", {}).get("errors", 0) + r.get("concurrent", {}).get("errors", 0),
                         "sessions_ok": r.get("concurrent", {}).get("sessions_ok"),
                         "page_load_max_s": r.get("concurrent", {}).get("page_load_max_s")}
                     for v, r in per_view.items()},
        **{k: (round(v, 1) if v is not None else None) for k, v in mem.items()},
        "checkpoint_reads": sum(loads.values()), "checkpoint_files": len(loads), "max_reads_of_one_file": copies,
        "max_live_copies_of_one_checkpoint": live_max,
        "loadavg_start": round(report["load_start"][0], 2), "loadavg_end": round(report["load_end"][0], 2),
        "loadavg_concurrent_mean": round(sum(conc_load) / len(conc_load), 2) if conc_load else None,
        "cpus": os.cpu_count(), "goal_p95_ratio": 2.0, "goal_errors": 0,
    }
    for v in result["per_view"].values():
        for k, x in list(v.items()):
            if isinstance(x, float):
                v[k] = round(x, 1) if k != "p95_ratio" else round(x, 2)
    return result


def run(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=20, help="concurrent browser sessions (default 20)")
    p.add_argument("--seconds", type=float, default=60.0, help="scrubbing time per view and phase (default 60)")
    p.add_argument("--views", default="cells,enso,lrp,tracin", help="comma-separated: " + ",".join(VIEWS))
    p.add_argument("--step-timeout", type=float, default=60.0, help="seconds to wait for one update (default 60)")
    p.add_argument("--load-timeout", type=float, default=600.0, help="seconds for a page to become ready")
    p.add_argument("--pace", type=float, default=120.0, help="ms between a session's moves (default 120)")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip the single-session baseline (only the concurrent sessions)")
    p.add_argument("--json-out", default=None, help="also write the raw per-session results to this file")
    args = p.parse_args(argv)
    args.views = [v.strip() for v in args.views.split(",") if v.strip()]
    unknown = [v for v in args.views if v not in VIEWS]
    if unknown:
        p.error(f"unknown view(s) {unknown}; choose from {list(VIEWS)}")
    if not CHROMIUM.exists():
        p.error(f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    report = asyncio.run(main_async(args))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report))
    result = summarise(args, report)
    result["_report"] = report
    return result


def main(argv=None) -> int:
    result = run(argv)
    result.pop("_report")
    print(json.dumps(result))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
