"""Regenerate the screenshots of the cell-state view under docs/screenshots/ (PNG).

    python docs/make_screenshots.py [--checkpoint PATH] [--data SPEC]

Serves the app on a free local port, opens each state in headless Chromium and saves a full-page PNG.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from browser_utils import HEATMAP_TITLE_JS, browser_page, served_app  # noqa: E402

STATES = [
    ("01_window_snow_cell", "?mode=window&date=2009-03-15", "window ending 2009-03-15"),
    ("02_continuous", "?mode=continuous&date=2009-03-15", "whole record, day 2009-03-15"),
    ("03_forget_gate", "?mode=window&date=2008-11-20&internal=f", "forget gate f"),
    ("04_presentation", "?mode=window&date=2009-03-15&present=true", "window ending 2009-03-15"),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--out", default=str(HERE / "screenshots"))
    args = p.parse_args(argv)
    from xaiscope.dashboard.sources import default_checkpoints

    ckpt = args.checkpoint or next(iter(default_checkpoints().values()), None)
    if ckpt is None:
        print("no checkpoint: pass --checkpoint PATH", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    broken = out.parent / ".broken_checkpoint_for_screenshot"
    broken.mkdir(exist_ok=True)
    (broken / "manifest.json").write_text('{"format_version": 1, "kind": "hydro_lstm", "config": {}}')
    (broken / "weights.safetensors").write_bytes(b"truncated")
    try:
        with served_app(checkpoints=[ckpt, broken], data=[args.data] if args.data else []) as (url, _, _):
            with browser_page(viewport=(1600, 1000)) as page:
                for name, query, needle in STATES:
                    page.goto(url + query)
                    page.wait_for_selector("text=computed in", timeout=600_000)
                    page.wait_for_function(HEATMAP_TITLE_JS, arg=needle, timeout=60_000)
                    page.wait_for_timeout(2500)
                    page.screenshot(path=str(out / f"{name}.png"), full_page=True)
                    print("wrote", out / f"{name}.png")
                page.goto(url + "?mode=window&date=2009-03-15")
                page.wait_for_selector("text=computed in", timeout=600_000)
                page.get_by_text("Gate input weights").first.click()
                page.wait_for_timeout(2000)
                page.screenshot(path=str(out / "05_gate_weights.png"), full_page=True)
                page.goto(url + f"?checkpoint={broken.name}")
                page.get_by_text("not a readable safetensors file").first.wait_for(timeout=60_000)
                page.wait_for_timeout(1000)
                page.screenshot(path=str(out / "06_broken_checkpoint.png"), full_page=False)
                print("wrote gate weights and error screenshots")
    finally:
        for f in broken.iterdir():
            f.unlink()
        broken.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
