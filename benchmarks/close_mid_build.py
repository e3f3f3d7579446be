"""Pages closed while their sessions are being built: what the server logs.

    python benchmarks/close_mid_build.py [--pages 6] [--view enso] [--rounds 3] [--log server.log]
                                         [--keep-alive-ms 37000] [--no-guard]

Serves the app once (``tests/browser_utils.served_app``), then, each round, opens ``--pages`` pages of one view
in headless Chromium at once (a browser context each: one Bokeh session each) and closes them again one after the
other, 0.3–6 s after opening: some before the page arrived, some while the page is fetching its document over the
websocket, some after. Counts, in the server log, tracebacks, ``AssertionError`` and ERROR lines, and prints the
first traceback. The load test (``benchmarks/load_test.py``) saw such tracebacks when it navigated 20 pages away
while their sessions were still being built.

The cause is a race in Bokeh's server: its keep-alive ping (every ``--keep-alive-ms``; Bokeh's default 37 s) can find
a socket the browser has closed before tornado has processed the close (the event loop was busy building other
sessions) and releases the connection; tornado's close of that socket then fails in ``WSHandler.on_close`` with an
``AssertionError``. A short keep-alive interval (e.g. 200 ms) makes the race frequent; ``--no-guard`` serves without
``xaiscope.dashboard.session.guard_released_connections`` (which ``xaiscope serve`` installs) to show it.

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser_utils import CHROMIUM, CHROMIUM_ARGS, served_app  # noqa: E402

SERVER_CODE = """
import json, logging, os, sys
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
import xaiscope.dashboard.session as session
if os.environ.get("XS_NO_GUARD"):
    session.guard_released_connections = lambda: None
from xaiscope.dashboard.app import serve
opts = json.loads(sys.argv[1])
if os.environ.get("XS_KEEP_ALIVE_MS"):
    opts["keep_alive_milliseconds"] = int(os.environ["XS_KEEP_ALIVE_MS"])
serve(**opts)
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pages", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--view", default="enso")
    p.add_argument("--log", type=Path, default=None)
    p.add_argument("--keep-alive-ms", type=int, default=None, help="Bokeh's keep-alive ping interval (default 37000)")
    p.add_argument("--no-guard", action="store_true", help="serve without guard_released_connections")
    a = p.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"needs {CHROMIUM}")
        return 2
    from playwright.sync_api import sync_playwright

    log_path = a.log or Path(tempfile.mkstemp(prefix="xaiscope-close-", suffix=".log")[1])
    delays = [0.3 + 5.7 * k / max(a.pages - 1, 1) for k in range(a.pages)]
    env = {"XS_NO_GUARD": "1" if a.no_guard else ""}
    if a.keep_alive_ms:
        env["XS_KEEP_ALIVE_MS"] = str(a.keep_alive_ms)
    with served_app(log_path=log_path, timeout=180, code=SERVER_CODE, env=env) as (url, _, _):
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            # one page to the end first: models, hindcasts and assets are then warm, as on a running server
            ctx = browser.new_context()
            page = ctx.new_page()
            page.goto(url + f"?view={a.view}", timeout=300_000)
            page.wait_for_timeout(5000)
            ctx.close()
            for r in range(a.rounds):
                opened = []
                for _ in range(a.pages):
                    ctx = browser.new_context()
                    page = ctx.new_page()
                    try:  # don't wait for the page: "commit" returns once the response starts
                        page.goto(url + f"?view={a.view}", wait_until="commit", timeout=120_000)
                    except Exception as err:  # noqa: BLE001 - a page that never arrived is closed all the same
                        print(f"round {r}: page did not arrive: {type(err).__name__}")
                    opened.append((time.monotonic(), ctx))
                for (t_open, ctx), delay in zip(opened, delays):
                    time.sleep(max(0.0, t_open + delay - time.monotonic()))
                    ctx.close()
                print(f"round {r}: {a.pages} pages opened and closed", flush=True)
            time.sleep(20)  # sessions still being built finish (or fail) now
            browser.close()
    text = log_path.read_text()
    tracebacks = text.count("Traceback (most recent call last)")
    res = {"view": a.view, "pages": a.pages, "rounds": a.rounds, "keep_alive_ms": a.keep_alive_ms,
           "guard": not a.no_guard, "tracebacks": tracebacks,
           "released_before_close": text.count("after the server had released it"),
           "assertion_errors": len(re.findall(r"^AssertionError", text, flags=re.M)),
           "error_lines": len(re.findall(r" ERROR ", text)), "log": str(log_path)}
    if tracebacks:
        i = text.index("Traceback (most recent call last)")
        start = text.rfind("\n", 0, max(0, text.rfind("\n", 0, i) - 1)) + 1
        print(text[start:start + 4000])
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
