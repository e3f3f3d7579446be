"""Helpers shared by the browser tests, the screenshot script and the latency benchmark.

They start the app in a subprocess on a free 127.0.0.1 port and drive it with headless Chromium
(``/usr/bin/chromium``, through Playwright).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVER_CODE = textwrap.dedent("""
    import json, sys, logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from xaiscope.dashboard.app import serve
    opts = json.loads(sys.argv[1])
    serve(**opts)
""")


@contextlib.contextmanager
def served_app(checkpoints=(), data=(), port: int | None = None, timeout: float = 120.0, log_path=None,
               env: dict | None = None, code: str | None = None):
    """Run ``xaiscope.dashboard.app.serve`` in a subprocess; yield ``(url, process, log_file_path)``.

    ``code``: the server's Python source instead of :data:`SERVER_CODE` (it gets the same JSON options as
    ``sys.argv[1]``), e.g. with measuring hooks around ``serve``.
    """
    import json
    import tempfile

    port = port or free_port()
    opts = {"port": port, "address": "127.0.0.1", "checkpoints": [str(c) for c in checkpoints],
            "data": [str(d) for d in data], "show": False}
    log_path = Path(log_path or tempfile.mkstemp(prefix="xaiscope-serve-", suffix=".log")[1])
    fh = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-c", code or SERVER_CODE, json.dumps(opts)], stdout=fh,
                            stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app server exited early:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "liveness", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            # (no GET / here: every page request builds a whole app session, which under load takes seconds)
            if time.time() > deadline:
                raise RuntimeError(f"app server did not answer within {timeout} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, proc, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        fh.close()


@contextlib.contextmanager
def browser_page(viewport=(1500, 1800)):
    """A Playwright page in headless Chromium that records console errors and non-local requests."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        page = context.new_page()
        page.console_errors = []
        page.external_requests = []
        page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page.console_errors.append(str(e)))

        def on_request(req):
            host = urlparse(req.url).hostname or ""
            if req.url.startswith(("data:", "blob:", "about:")):
                return
            if host not in LOCAL_HOSTS:
                page.external_requests.append(req.url)

        page.on("request", on_request)
        try:
            yield page
        finally:
            context.close()
            browser.close()


# JavaScript run in the page: the texts of every Bokeh Title model (plot titles live in canvas, not the DOM).
TITLES_JS = """() => {
  const out = [];
  for (const doc of (window.Bokeh && Bokeh.documents) || []) {
    for (const m of doc._all_models ? doc._all_models.values() : doc.all_models) {
      if (m.type === "Title" || (m.constructor && m.constructor.__name__ === "Title")) out.push(m.text);
    }
  }
  return out;
}"""

HEATMAP_TITLE_JS = """(needle) => {
  for (const doc of (window.Bokeh && Bokeh.documents) || []) {
    const models = doc._all_models ? doc._all_models.values() : doc.all_models;
    for (const m of models) {
      if (typeof m.text === "string" && m.text.includes(needle)) return true;
    }
  }
  return false;
}"""

# The x-range (ms since epoch) of every Range1d with a datetime-looking span, and the Span locations.
RANGES_JS = """() => {
  const out = {ranges: [], spans: []};
  for (const doc of (window.Bokeh && Bokeh.documents) || []) {
    const models = doc._all_models ? doc._all_models.values() : doc.all_models;
    for (const m of models) {
      const t = m.type || (m.constructor && m.constructor.__name__);
      if (t === "Range1d" && m.start > 1e11) out.ranges.push([m.start, m.end]);
      if (t === "Span" && m.name === "xs-day") out.spans.push(m.location);
    }
  }
  return out;
}"""


def wait_for_idle_app(page, timeout: float = 120_000) -> None:
    """Wait until the page shows the cell-state status line (the view is prepared)."""
    page.wait_for_selector("text=computed in", timeout=timeout)
