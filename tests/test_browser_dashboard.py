"""The served app in headless Chromium: offline loading, scrubbing, best snow cell, errors, URL state, notebook."""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser_utils import CHROMIUM, HEATMAP_TITLE_JS, RANGES_JS, browser_page, served_app  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (CI installs it)"),
]

REPO = Path(__file__).resolve().parents[1]
PERIOD = ("2006-10-01", "2010-09-30")
SHIPPED = REPO / "assets" / "checkpoints" / "hydro_01031500"  # the demo checkpoint trained on this basin


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from test_dashboard import make_checkpoint

    from xaiscope.data.camels import demo_basin

    root = tmp_path_factory.mktemp("app")
    ds = demo_basin().sel(time=slice(*PERIOD))
    nc = root / "demo_2006_2010.nc"
    ds.to_netcdf(nc)
    good = make_checkpoint(root / "hydro_good", ds, hidden=8, layers=2)
    broken = root / "broken_ckpt"
    broken.mkdir()
    (broken / "manifest.json").write_text(json.dumps({"format_version": 1, "kind": "hydro_lstm", "config": {}}))
    (broken / "weights.safetensors").write_bytes(b"\x00 truncated")
    return {"ds": ds, "nc": nc, "good": good, "broken": broken, "root": root, "shipped": SHIPPED}


@pytest.fixture(scope="module")
def app(setup):
    with served_app(checkpoints=[setup["shipped"], setup["broken"]], data=[setup["nc"]],
                    log_path=setup["root"] / "server.log") as (url, proc, log):
        yield url, proc, log


# Records the content of every PATCH-DOC message the server sends (a Bokeh message is a header frame, a metadata
# frame and a content frame, then its buffers).
WS_LOG_JS = """(() => {
  window.__xsPatches = null;  // set to [] to start recording
  let expect = -1;
  const watch = (ev) => {
    if (!window.__xsPatches || typeof ev.data !== "string") return;
    if (expect > 0) { expect -= 1; if (expect === 0) window.__xsPatches.push(ev.data); return; }
    if (/"msgtype": ?"PATCH-DOC"/.test(ev.data)) expect = 2;
  };
  const add = WebSocket.prototype.addEventListener;
  WebSocket.prototype.addEventListener = function(type, fn, opts) {
    if (type === "message" && !this.__xsWatched) { this.__xsWatched = true; add.call(this, "message", watch); }
    return add.call(this, type, fn, opts);
  };
  const desc = Object.getOwnPropertyDescriptor(WebSocket.prototype, "onmessage");
  Object.defineProperty(WebSocket.prototype, "onmessage", {
    set(fn) { if (!this.__xsWatched) { this.__xsWatched = true; add.call(this, "message", watch); } desc.set.call(this, fn); },
    get() { return desc.get.call(this); }, configurable: true,
  });
})()"""


def _ready(page, timeout=120_000):
    page.wait_for_selector("text=computed in", timeout=timeout)


def _query(page) -> dict:
    q = parse_qs(urlparse(page.url).query)
    return {k: v[0] for k, v in q.items()}


def test_loads_offline_without_console_errors(app):
    url, _, _ = app
    with browser_page() as page:
        page.goto(url)
        _ready(page)
        page.wait_for_timeout(1500)
        assert page.external_requests == []
        assert page.console_errors == []
        assert page.locator("text=Which cell is snow?").count() >= 1
        # the BokehJS repaint speedups found the internals they patch (a Bokeh upgrade that moves them shows here)
        assert page.evaluate("() => window.__xsBokehSpeedups") == ["stylesheets", "css-values", "font-size"]


def test_scrubber_moves_the_plotted_window(app):
    url, _, _ = app
    with browser_page() as page:
        page.add_init_script(WS_LOG_JS)
        page.goto(url + "?date=2009-03-10&mode=window")
        _ready(page)
        page.wait_for_function(HEATMAP_TITLE_JS, arg="window ending 2009-03-10", timeout=60_000)
        before = page.evaluate(RANGES_JS)["ranges"]
        day = 86_400_000
        # window mode opens on the window of the selected day: the shared x-range spans the 365 days
        end = np.datetime64("2009-03-10", "ms").astype(np.int64)
        assert any(abs(r[1] - end - day / 2) < 1 and abs((r[1] - r[0]) - 365 * day) < 1 for r in before), before
        handle = page.locator(".noUi-handle").first
        handle.focus()
        page.evaluate("() => { window.__xsPatches = []; }")
        for _ in range(3):
            page.keyboard.press("ArrowLeft")
            page.wait_for_timeout(150)
        page.wait_for_function(HEATMAP_TITLE_JS, arg="window ending 2009-03-07", timeout=30_000)
        page.wait_for_timeout(500)
        after = page.evaluate(RANGES_JS)["ranges"]
        # each step reached the browser as one message: its data, its heatmap title and the player together (the
        # date picker, the URL and the skill text follow in one more message once the day rests)
        patches = [json.loads(c) for c in page.evaluate("() => window.__xsPatches")]
        with_data = [p for p in patches if any(e.get("kind") == "ColumnDataChanged" for e in p["events"])]
        assert len(with_data) == 3, [[e.get("kind") for e in p["events"]] for p in patches]
        for p in with_data:
            text = json.dumps(p)
            assert "window ending 2009-03-" in text and "value_throttled" in text, text[:500]
        assert _query(page)["date"].strip('"') == "2009-03-07"
        shifted = [a for a in after if any(abs((b[1] - a[1]) - 3 * day) < day / 2 for b in before)]
        assert shifted, (before, after)
        # the date picker catches up once the day rests (it is not redrawn on every step)
        picker = page.locator("input.flatpickr-input").first
        page.wait_for_timeout(1_000)
        assert "2009-03-07" in (picker.input_value() or "") or "Mar 7, 2009" in (picker.input_value() or ""), \
            picker.input_value()


def test_best_snow_cell_button_selects_the_numpy_best_cell(app, setup):
    from xaiscope.core import hydro
    from xaiscope.core.states import lstm_internals_loop

    url, _, _ = app
    ckpt = hydro.load_hydro(setup["shipped"])
    ds = setup["ds"]
    x = hydro.normalised_inputs(ckpt, ds)
    with torch.no_grad():
        c = lstm_internals_loop(ckpt.model.lstm, torch.from_numpy(x)[None]).c[0].numpy()
    spin = hydro.window_length(ckpt)
    swe = ds["swe"].values[spin:]
    ok = np.isfinite(swe)
    r = np.array([[np.corrcoef(c[spin:, lay, k][ok], swe[ok])[0, 1] for k in range(c.shape[2])]
                  for lay in range(c.shape[1])])
    layer, cell = np.unravel_index(np.nanargmax(np.abs(r)), r.shape)

    with browser_page() as page:
        page.goto(url + "?cells=%5B%5D&layer=0")
        _ready(page)
        page.get_by_role("button", name="Select the best snow cell").click()
        page.wait_for_function("() => location.search.includes('cells=%5B') && !location.search.includes('cells=%5B%5D')",
                               timeout=30_000)
        page.wait_for_timeout(500)
        q = _query(page)
        assert json.loads(q["cells"]) == [int(cell)]
        assert int(q.get("layer", 0)) == int(layer)
        assert page.locator(f"text=Best swe cell: layer {layer}, cell {cell}").count() == 1


def test_broken_checkpoint_shows_an_error_and_the_app_keeps_running(app):
    url, _, _ = app
    with browser_page() as page:
        page.goto(url)
        _ready(page)
        select = page.locator("select").first
        labels = select.locator("option").all_inner_texts()
        broken = next(label for label in labels if "broken" in label)
        good = next(label for label in labels if "hydro_01031500" in label)
        select.select_option(label=broken)
        message = page.get_by_text(re.compile(r"Checkpoint 'broken_ckpt'.*not a readable safetensors file"))
        message.first.wait_for(timeout=30_000)
        assert "broken_ckpt" in message.first.text_content()
        with urllib.request.urlopen(url, timeout=30) as r:  # the server still answers
            assert r.status == 200
        select.select_option(label=good)
        page.get_by_text(re.compile("Checkpoint 'broken_ckpt'")).first.wait_for(state="hidden", timeout=60_000)
        _ready(page)


def test_url_reopens_the_same_picture(app):
    url, _, _ = app
    with browser_page() as page:
        page.goto(url + "?mode=continuous&date=2009-02-01&internal=f&layer=1&cells=%5B1%2C3%5D&present=true")
        _ready(page)
        page.wait_for_function(HEATMAP_TITLE_JS, arg="forget gate f, layer 1 — whole record, day 2009-02-01",
                               timeout=60_000)
        spans = page.evaluate(RANGES_JS)["spans"]
        assert spans and all(abs(s - np.datetime64("2009-02-01", "ms").astype(np.int64)) < 1 for s in spans)
        q = _query(page)
        assert json.loads(q["cells"]) == [1, 3] and q["present"] == "true"


def test_notebook_example_executes_and_yields_panel_output(setup):
    import nbclient
    import nbformat

    nb = nbformat.read(REPO / "docs" / "notebook_example.ipynb", as_version=4)
    os.environ["XAISCOPE_CHECKPOINT"] = str(setup["good"])
    try:
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                         resources={"metadata": {"path": str(setup["root"])}})
        client.execute()
    finally:
        os.environ.pop("XAISCOPE_CHECKPOINT", None)
    mimetypes = {m for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
                 for m in out.get("data", {})}
    assert any(re.match(r"application/vnd\.holoviews_exec\.v0\+json", m) for m in mimetypes), mimetypes
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
              if out.get("output_type") == "error"]
    assert not errors


def test_presentation_mode_enlarges_text_and_widgets(app):
    """One toggle (and ?present=true) hides the sidebar and makes text, widgets and plot text larger."""
    url, _, _ = app
    size_js = "e => parseFloat(getComputedStyle(e).fontSize)"
    sizes = {}
    for present in ("false", "true"):
        with browser_page() as page:
            page.goto(url + f"?present={present}&mode=window&date=2009-03-10")
            _ready(page)
            button = page.get_by_role("button", name="Select the best snow cell")
            picker = page.locator("input.flatpickr-input").first
            status = page.locator(".xs-status").first
            sizes[present] = (button.evaluate(size_js), picker.evaluate(size_js), status.evaluate(size_js))
            sidebar_visible = page.locator("#sidebar").first.is_visible()
            assert sidebar_visible == (present == "false")
    for normal, big in zip(sizes["false"], sizes["true"]):
        assert big >= 1.2 * normal, sizes
