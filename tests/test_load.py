"""A short load test: three browser sessions scrub the cell-state view of one server at the same time.

The full version (20 sessions × 60 s over every view, latency against a single session, server memory) is
``python benchmarks/load_test.py``; this one only checks that concurrent sessions do not break each other: no console
or page errors, no ERROR lines in the server log, and every session sees every one of its updates (no timing
assertions).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("xaiscope_load_test", ROOT / "benchmarks" / "load_test.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.browser
@pytest.mark.slow
def test_three_sessions_scrub_the_cell_view_at_once(tmp_path):
    from browser_utils import CHROMIUM

    if not CHROMIUM.exists():
        pytest.skip("needs /usr/bin/chromium")
    bench = _load_benchmark()
    result = bench.run(["--sessions", "3", "--seconds", "10", "--views", "cells", "--no-baseline",
                        "--step-timeout", "60", "--load-timeout", "240"])
    phase = result["_report"]["phases"]["concurrent:cells"]
    sessions = phase["sessions"]
    assert len(sessions) == 3
    for s in sessions:
        assert s["errors"] == [], (s["session"], s["errors"][:5])
        assert s["failed"] == [], (s["session"], s["failed"])  # every step's update arrived
        assert len(s["latencies"]) >= 2, (s["session"], "saw fewer than two updates in 10 s")
    assert phase["server_errors"] == [], phase["server_errors"][:20]
    assert result["errors"] == 0
    # one copy of the hydrology model for all sessions
    assert all(n == 1 for n in phase["live_checkpoints"].values()), phase["live_checkpoints"]
