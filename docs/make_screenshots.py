"""Regenerate the screenshots of the cell-state view (and of the LRP-vs-adjoint view) under docs/screenshots/ (PNG).

    python docs/make_screenshots.py [--checkpoint PATH] [--data SPEC] [--only lrp]

Serves the app on a free local port, opens each state in headless Chromium (1280 px wide) and saves a
full-page PNG, reduced to a 256-colour palette so that each file stays small (about 200 KB or less).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from browser_utils import HEATMAP_TITLE_JS, TITLES_JS, browser_page, served_app  # noqa: E402


def save(page, path: Path, full_page: bool = True) -> None:
    """Screenshot ``page`` into ``path`` as a palette PNG (UI colours survive a 256-colour palette)."""
    import io

    from PIL import Image

    png = page.screenshot(full_page=full_page)  # the template scrolls its main area: size the viewport
    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    img.save(path, optimize=True)
    print("wrote", path, f"{path.stat().st_size / 1024:.0f} KB")


def wait_until_done(page, needle: str) -> None:
    page.wait_for_selector("text=computed in", timeout=600_000)
    page.wait_for_function(HEATMAP_TITLE_JS, arg=needle, timeout=60_000)
    page.wait_for_selector("text=Simulating every day", state="detached", timeout=600_000)
    page.wait_for_selector("text=Ridge probe, all", state="attached", timeout=600_000)
    page.wait_for_timeout(1500)

def tracin_screenshot(page, url: str, out: Path) -> None:
    """The TracIn view on the SST-QoI lag-3 series: a test month, its proponents and opponents, one opened."""
    from browser_utils import TITLES_JS

    has = "(t) => { const f = " + TITLES_JS + "; return f().some(s => s.includes(t)); }"
    out.mkdir(parents=True, exist_ok=True)
    page.goto(url + "?view=tracin&model=sst_qoi_lag03&test=2016-02", timeout=300_000)
    page.wait_for_function(has, arg="test 2016-02", timeout=300_000)
    page.wait_for_function(has, arg="1. ", timeout=300_000)
    cell = page.locator(".slick-row").first.locator(".slick-cell").filter(  # the example column
        has_text=__import__("re").compile(r"^\s*\d{4}-\d{2}(-\d{2})?\s*$")).first
    name = cell.inner_text().strip()
    cell.click()
    page.wait_for_function(has, arg=f"training {name}", timeout=60_000)
    page.wait_for_timeout(2000)
    save(page, out / "08_tracin.png")


STATES = [
    ("01_window_snow_cell", "?mode=window&date=2009-03-15", "window ending 2009-03-15"),
    ("02_continuous", "?mode=continuous&date=2009-03-15", "whole record, day 2009-03-15"),
    ("03_forget_gate", "?mode=window&date=2008-11-20&internal=f", "forget gate f"),
    ("04_presentation", "?mode=window&date=2009-03-15&present=true", "window ending 2009-03-15"),
]


def lrp_screenshot(page, url: str, out: Path) -> None:
    """The LRP-vs-adjoint view: ε-LRP positive composite at lag 3 beside the LIM adjoint."""
    page.goto(url + "?view=lrp&lag=3&rule=epsilon&explain=positive", timeout=300_000)
    page.wait_for_function("(t) => { const f = " + TITLES_JS + "; return f().some(s => s.includes(t)); }",
                           arg="LRP ε, lag 3: positive composite", timeout=300_000)
    page.wait_for_timeout(2000)
    save(page, out / "07_lrp_vs_adjoint.png")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--out", default=str(HERE / "screenshots"))
    p.add_argument("--only", choices=["lrp", "tracin"], default=None, help="only the screenshot of this view")
    args = p.parse_args(argv)
    if args.only is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with served_app() as (url, _, _):
            with browser_page(viewport=(1280, 1760)) as page:
                {"lrp": lrp_screenshot, "tracin": tracin_screenshot}[args.only](page, url, out)
        return 0
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
            with browser_page(viewport=(1280, 1760)) as page:
                for name, query, needle in STATES:
                    page.goto(url + query, timeout=300_000)
                    wait_until_done(page, needle)
                    save(page, out / f"{name}.png")
                page.goto(url + "?mode=window&date=2009-03-15", timeout=300_000)
                wait_until_done(page, "window ending 2009-03-15")
                page.get_by_text("Gate input weights").first.click()
                page.wait_for_timeout(2000)
                save(page, out / "05_gate_weights.png")
                tracin_screenshot(page, url, out)
                page.goto(url + f"?checkpoint={broken.name}", timeout=300_000)
                page.get_by_text("not a readable safetensors file").first.wait_for(timeout=60_000)
                page.wait_for_timeout(1000)
                save(page, out / "06_broken_checkpoint.png", full_page=False)
                lrp_screenshot(page, url, out)
    finally:
        for f in broken.iterdir():
            f.unlink()
        broken.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
