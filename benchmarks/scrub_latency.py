"""Scrubbing latency of the cell-state view, measured in a real browser.

Starts the app on a free 127.0.0.1 port, opens it in headless Chromium, and moves the date slider one day at
a time (keyboard on the slider handle, as a user does). For each move it times, in the page, the interval from
the keydown event to the animation frame after the heatmap's title names the new day (the data and the title
arrive in the same message). The server-side time (compute + pushing the update) is read from the
view's status line. Prints a table and ends with one JSON line.

    python benchmarks/scrub_latency.py [--moves 30] [--checkpoint PATH] [--data SPEC] [--mode window]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser_utils import HEATMAP_TITLE_JS, SERVER_CODE, browser_page, served_app  # noqa: E402

# the app server with the view's per-step timing log switched on (xaiscope.dashboard.timings, DEBUG)
TIMED_SERVER_CODE = SERVER_CODE.replace(
    "from xaiscope.dashboard.app import serve",
    "logging.getLogger('xaiscope.dashboard.timings').setLevel(logging.DEBUG)\n"
    "from xaiscope.dashboard.app import serve")
STEP_RE = re.compile(r"day (\d{4}-\d\d-\d\d): computed in ([\d.]+) ms, updated in ([\d.]+) ms, "
                     r"step with message ([\d.]+) ms")

# Timed in the page: from the keydown event (a capturing listener stamps it) to the animation frame after the
# heatmap's title Label names the new day (the data and the title arrive in one message, and Bokeh paints in the
# frame that follows). Only that one Label is polled, once per millisecond: walking every model of the document
# on each poll would itself load the page's main thread and slow what it measures.
KEY_STAMP_JS = """() => {
  if (!window.__xsKeyStamp) {
    window.__xsKeyStamp = true;
    document.addEventListener("keydown", () => { window.__xsKeyT = performance.now(); }, true);
  }
}"""

MEASURE_JS = """async ([needle, timeout]) => {
  const t0 = window.__xsKeyT || performance.now();
  window.__xsKeyT = null;
  let label = window.__xsLabel;
  if (!label) {
    for (const doc of (window.Bokeh && Bokeh.documents) || []) {
      const models = doc._all_models ? doc._all_models.values() : doc.all_models;
      for (const m of models) {
        const t = m.type || (m.constructor && m.constructor.__name__);
        if (t === "Label" && typeof m.text === "string" && m.text.includes("click a row")) label = m;
      }
    }
    window.__xsLabel = label;
  }
  if (!label) return -2;
  while (!label.text.includes(needle)) {
    if (performance.now() - t0 > timeout) return -1;
    await new Promise(r => setTimeout(r, 1));
  }
  await new Promise(r => requestAnimationFrame(() => r()));
  return performance.now() - t0;
}"""


def _default_checkpoint() -> str | None:
    from xaiscope.dashboard.sources import default_checkpoints

    found = default_checkpoints()
    return next(iter(found.values()), None)


def pct(values, q):
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--moves", type=int, default=30)
    p.add_argument("--checkpoint", default=None, help="default: the first demo checkpoint")
    p.add_argument("--data", default=None, help="data spec (default: the demo basin)")
    p.add_argument("--mode", default="window", choices=["window", "continuous"])
    p.add_argument("--start", default="2009-03-15", help="first day of the scrub")
    args = p.parse_args(argv)

    ckpt = args.checkpoint or _default_checkpoint()
    if ckpt is None:
        print("no checkpoint: pass --checkpoint PATH (the demo checkpoints are not installed)", file=sys.stderr)
        return 2
    data = [args.data] if args.data else []
    e2e, server, compute, step = [], [], [], []
    timed_days = set()
    with served_app(checkpoints=[ckpt], data=data, code=TIMED_SERVER_CODE) as (url, _, log):
        with browser_page() as page:
            page.goto(f"{url}?mode={args.mode}&date={args.start}", timeout=300_000)
            page.wait_for_selector("text=computed in", timeout=300_000)
            page.wait_for_function(HEATMAP_TITLE_JS, arg=args.start, timeout=60_000)
            # let the background work (per-day simulation, ridge probe) finish: it shares the CPU
            page.wait_for_selector("text=Ridge probe, all", state="attached", timeout=600_000)
            page.wait_for_timeout(1000)
            page.evaluate(KEY_STAMP_JS)
            handle = page.locator(".noUi-handle").first
            handle.focus()
            import datetime as dt

            day = dt.date.fromisoformat(args.start)
            for k in range(args.moves + 2):
                day = day - dt.timedelta(days=1)
                needle = (f"window ending {day}" if args.mode == "window" else f"day {day}")
                page.keyboard.press("ArrowLeft")
                ms = page.evaluate(MEASURE_JS, [needle, 20_000])
                page.wait_for_timeout(120)  # a user's pace between moves
                status = page.locator("text=computed in").first.text_content() or ""
                m = re.search(r"computed in (\d+) ms, updated in (\d+) ms", status)
                if k < 2 or ms < 0:  # warm-up moves
                    continue
                e2e.append(ms)
                timed_days.add(str(day))
                if m:
                    compute.append(float(m.group(1)))
                    server.append(float(m.group(2)))
        for line in Path(log).read_text().splitlines():
            hit = STEP_RE.search(line)
            if hit and hit.group(1) in timed_days:
                step.append(float(hit.group(4)))
    rows = [("browser: key press → new day drawn", e2e),
            ("server: whole step, message included", step),
            ("server: compute + update the plots", server),
            ("server: compute only", compute)]
    load = os.getloadavg()
    print(f"load average (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    print(f"{'measure':40s} {'n':>4s} {'p50 ms':>8s} {'p95 ms':>8s}")
    for name, vals in rows:
        if vals:
            print(f"{name:40s} {len(vals):4d} {pct(vals, .5):8.1f} {pct(vals, .95):8.1f}")
    result = {
        "benchmark": "scrub_latency", "mode": args.mode, "moves": len(e2e),
        "e2e_p50_ms": round(pct(e2e, .5), 1) if e2e else None, "e2e_p95_ms": round(pct(e2e, .95), 1) if e2e else None,
        "server_p50_ms": round(pct(step, .5), 1) if step else None,
        "server_p95_ms": round(pct(step, .95), 1) if step else None,
        "update_p50_ms": round(pct(server, .5), 1) if server else None,
        "compute_p50_ms": round(statistics.median(compute), 1) if compute else None,
        "loadavg_1min": round(load[0], 2), "cpus": os.cpu_count(),
        "goal_e2e_p50_ms": 150, "goal_server_ms": 50,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
