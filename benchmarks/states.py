"""Benchmark of the LSTM internals: per-step loop vs fast exact path vs the plain fused nn.LSTM forward.

Run from the repository root::

    python benchmarks/states.py [--device auto|cpu|cuda|mps] [--threads N] [--repeats N]

Prints a table (median wall time of repeated runs after a warm-up) and ends with one line of JSON
holding every figure. ``loop/fast`` is how many times faster the fast path is than the per-step loop;
``fast/fused`` is the cost of all states and gates relative to the fused forward alone (which gives
only the last layer's hidden states). ``max|fast-loop|`` is over h, c and all gates, all layers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from xaiscope.core.device import choose_device, exact_math
from xaiscope.core.errors import XaiscopeError
from xaiscope.core.states import lstm_internals, lstm_internals_loop

# (label, layers, cells, batch, days)
CASES = [
    ("2x20 B=1 365 d", 2, 20, 1, 365),
    ("2x20 B=64 365 d", 2, 20, 64, 365),
    ("1x256 B=1 365 d", 1, 256, 1, 365),
    ("1x256 B=64 365 d", 1, 256, 64, 365),
    ("2x20 B=1 12784 d", 2, 20, 1, 12784),
]
N_INPUTS = 5


def _timer(device: torch.device) -> Callable[[Callable[[], object], int, int], float]:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()

    def median_time(fn: Callable[[], object], repeats: int, warmup: int) -> float:
        for _ in range(warmup):
            fn()
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    return median_time


def run_case(label: str, layers: int, cells: int, batch: int, days: int, device: torch.device,
             repeats: int, seed: int = 0) -> dict[str, object]:
    median_time = _timer(device)
    torch.manual_seed(seed)
    lstm = nn.LSTM(N_INPUTS, cells, num_layers=layers, batch_first=True).to(device).eval()
    x = torch.randn(batch, days, N_INPUTS, device=device)

    def fused() -> object:
        with torch.inference_mode(), exact_math():
            return lstm(x)

    fast_result = lstm_internals(lstm, x)
    loop_result = lstm_internals_loop(lstm, x)
    max_diff = max(
        (getattr(fast_result, name) - getattr(loop_result, name)).abs().max().item() for name in "hcifgo"
    )
    # the slow loop is timed fewer times on long inputs (it is the reference, seconds per run)
    loop_repeats = max(1, min(repeats, 5 if batch * days <= 400 else 2))
    t_loop = median_time(lambda: lstm_internals_loop(lstm, x), loop_repeats, 1)
    t_fast = median_time(lambda: lstm_internals(lstm, x), repeats, 2)
    t_fused = median_time(fused, repeats, 2)
    return {
        "case": label, "layers": layers, "cells": cells, "batch": batch, "days": days,
        "loop_ms": 1e3 * t_loop, "fast_ms": 1e3 * t_fast, "fused_ms": 1e3 * t_fused,
        "loop_over_fast": t_loop / t_fast, "fast_over_fused": t_fast / t_fused,
        "max_abs_diff": max_diff,
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:<index> or mps")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op CPU threads (default: PyTorch's default for this machine)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per measurement (median)")
    args = parser.parse_args(argv)

    try:
        device = choose_device(args.device)
    except XaiscopeError as err:
        parser.error(str(err))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    rows = [run_case(*case, device=device, repeats=args.repeats) for case in CASES]

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"LSTM internals on {device} ({name}), {threads} thread(s), torch {torch.__version__}, "
          f"median of {args.repeats} runs (loop: fewer on long inputs)")
    header = (f"{'case':<20}{'loop ms':>11}{'fast ms':>10}{'fused ms':>10}{'loop/fast':>11}{'fast/fused':>12}"
              f"{'max|fast-loop|':>16}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['case']:<20}{r['loop_ms']:>11.2f}{r['fast_ms']:>10.2f}{r['fused_ms']:>10.2f}"
              f"{r['loop_over_fast']:>11.1f}{r['fast_over_fused']:>12.2f}{r['max_abs_diff']:>16.1e}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    summary = {
        "benchmark": "states", "device": str(device), "device_name": name, "threads": threads,
        "torch": torch.__version__, "repeats": args.repeats, "load_average_1min": load, "cases": rows,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
