"""The served app's "About this server" card (engine settings, device, models, cache) in headless Chromium."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser_utils import CHROMIUM, browser_page, served_app, wait_for_idle_app  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (CI installs it)"),
]


def test_about_card_shows_engine_settings_and_the_loaded_model(tmp_path, small_synthetic_ds):
    from xaiscope.core.checkpoint import save_checkpoint
    from xaiscope.core.models import HydroLSTM

    inputs = ["prcp", "srad", "tmax", "tmin", "vp"]
    ds = small_synthetic_ds
    torch.manual_seed(0)
    stats = {v: {"mean": float(ds[v].mean()), "std": float(ds[v].std())} for v in [*inputs, "qobs"]}
    ck = save_checkpoint(tmp_path / "ck", HydroLSTM(n_inputs=5, hidden_size=4, num_layers=1), {
        "kind": "hydro_lstm", "config": {"n_inputs": 5, "hidden_size": 4, "num_layers": 1}, "inputs": inputs,
        "target": "qobs", "window": 365, "normalisation": stats, "data": {"basin_id": ds.attrs["basin_id"]}})
    nc = tmp_path / "basin.nc"
    ds.to_netcdf(nc)
    from xaiscope.core.checkpoint import load_checkpoint

    sha = load_checkpoint(ck).sha256
    env = {"XAISCOPE_CACHE_MB": "77", "XAISCOPE_MAX_BATCH": "6", "XAISCOPE_DEVICE": "cpu",
           "XAISCOPE_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    with served_app(checkpoints=[ck], data=[nc], env=env, log_path=tmp_path / "server.log") as (url, _, _):
        with browser_page() as page:
            page.goto(url)
            wait_for_idle_app(page)
            page.get_by_text("About this server").click()
            page.wait_for_selector("text=device in use", timeout=60_000)
            # (the card's text lives in shadow DOM: Playwright's text locators reach it)
            for needle in ("device in use: cpu", "of 77 MB", "at most 6 requests", sha[:12], "bokeh 3", "panel 1"):
                assert page.get_by_text(needle).first.is_visible(), needle
            assert page.console_errors == [] and page.external_requests == []
