"""Benchmark of the shared engine on the cell-state view's 365-day windows (shipped checkpoint and basin).

Run from the repository root::

    python benchmarks/engine.py [--device cpu] [--threads 1] [--requests 200] [--clients 20] [--max-batch 32]
                                [--max-wait-ms 3]

One run prints, as ratios to a baseline measured in the same run:

* overhead per request: the engine (result cache disabled) vs calling ``hydro.window_states`` directly
  (same Dataset out) and vs the bare model forward (``hydro.window_forward``, tensors only);
* a cache hit vs the direct call;
* throughput of ``--clients`` concurrent requester threads through the engine (cache disabled: every request is
  computed; the queue batches them) vs the same requests one after another by direct calls.

Wall-clock and process CPU time are both given (the machine may be shared). Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time

import numpy as np
import pandas as pd
import torch

from xaiscope.assets import ASSETS
from xaiscope.core import hydro
from xaiscope.core.device import choose_device
from xaiscope.core.engine import Engine, EngineSettings
from xaiscope.data.camels import demo_basin


def _timed(fn, repeats: int = 3) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds of ``fn()`` over ``repeats`` runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:<index>, mps or auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--requests", type=int, default=200, help="windows per measurement")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = choose_device(args.device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    ckpt = hydro.load_hydro(ASSETS / "checkpoints" / "hydro_01031500")
    ds = demo_basin()
    times = pd.DatetimeIndex(ds.time.values)
    n = hydro.window_length(ckpt)
    days = list(times[n - 1 + np.linspace(0, len(times) - n, args.requests).astype(int)])
    settings = dict(device=str(device), max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    uncached = Engine(EngineSettings(cache_mb=0, **settings))
    cached = Engine(EngineSettings(cache_mb=512, **settings))
    for d in days[:5]:  # warm-up
        hydro.window_states(ckpt, ds, d, device=device)
        uncached.window_states(ckpt, ds, d, data_key="demo")

    inputs = [torch.from_numpy(hydro.window_inputs(ckpt, ds, d)[0])[None].to(device) for d in days]
    model = ckpt.model.to(device)  # where hydro.window_states put it already

    def bare():
        for x in inputs:
            hydro.window_forward(model, x)
        sync()

    def direct():
        for d in days:
            hydro.window_states(ckpt, ds, d, device=device)

    def engine_serial():
        for d in days:
            uncached.window_states(ckpt, ds, d, data_key="demo")

    for d in days:
        cached.window_states(ckpt, ds, d, data_key="demo")

    def engine_hit():
        for d in days:
            cached.window_states(ckpt, ds, d, data_key="demo")

    def engine_concurrent():
        chunks = [days[k::args.clients] for k in range(args.clients)]
        barrier = threading.Barrier(args.clients)

        def client(chunk):
            barrier.wait()
            for d in chunk:
                uncached.window_states(ckpt, ds, d, data_key="demo")

        threads = [threading.Thread(target=client, args=(c,)) for c in chunks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    # interleaved: every repeat runs each measurement once, so a busy neighbour on a shared machine
    # slows all of them alike; the median over repeats is reported
    runs: dict[str, list] = {}
    before = uncached.batcher.stats()
    for _ in range(args.repeats):
        for name, fn in (("bare_forward", bare), ("direct", direct), ("engine_no_cache", engine_serial),
                         ("engine_hit", engine_hit), ("engine_concurrent", engine_concurrent)):
            runs.setdefault(name, []).append(_timed(fn, 1))
    r = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
    after = uncached.batcher.stats()
    serial_requests = args.repeats * len(days)  # engine_serial's requests run alone (batches of one)
    after = {**after, "requests": after["requests"] - serial_requests, "batches": after["batches"] - serial_requests}
    mean_batch = (after["requests"] - before["requests"]) / max(1, after["batches"] - before["batches"])

    per = {k: (w / len(days) * 1e3, c / len(days) * 1e3) for k, (w, c) in r.items()}
    where = (f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
             str(device) if device.type != "cpu" else "CPU")
    print(f"engine benchmark: {len(days)} windows of {n} days, checkpoint hydro_01031500 (2x20 LSTM), {where}, "
          f"{args.threads} torch thread(s), max_batch {args.max_batch}, max_wait {args.max_wait_ms} ms, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(f"{'measurement':<34}{'ms/request wall':>16}{'ms/request CPU':>16}")
    labels = {"bare_forward": "bare model forward (tensors)", "direct": "direct hydro.window_states",
              "engine_no_cache": "engine, cache off, serial", "engine_hit": "engine, cache hit",
              "engine_concurrent": f"engine, cache off, {args.clients} clients"}
    for k, label in labels.items():
        print(f"{label:<34}{per[k][0]:>16.3f}{per[k][1]:>16.3f}")
    ratios = {
        "engine_over_direct": per["engine_no_cache"][0] / per["direct"][0],
        "engine_over_bare_forward": per["engine_no_cache"][0] / per["bare_forward"][0],
        "overhead_ms_vs_direct": per["engine_no_cache"][0] - per["direct"][0],
        "direct_over_hit": per["direct"][0] / per["engine_hit"][0],
        "concurrent_throughput_over_serial_direct": per["direct"][0] / per["engine_concurrent"][0],
        "concurrent_cpu_saving": per["direct"][1] / per["engine_concurrent"][1],
        "mean_batch_concurrent": mean_batch,
    }
    print(f"engine (cache off) / direct call: {ratios['engine_over_direct']:.2f}x "
          f"({ratios['overhead_ms_vs_direct']:+.3f} ms per request); / bare forward: "
          f"{ratios['engine_over_bare_forward']:.2f}x")
    print(f"cache hit is {ratios['direct_over_hit']:.0f}x faster than the direct call")
    print(f"{args.clients} concurrent clients: {ratios['concurrent_throughput_over_serial_direct']:.2f}x the "
          f"throughput of serial direct calls (mean batch {mean_batch:.1f}; CPU per request "
          f"{ratios['concurrent_cpu_saving']:.2f}x less)")
    out = {"per_request_ms": per, "ratios": ratios, "requests": len(days), "device": str(device),
           "torch": torch.__version__, "threads": args.threads,
           "clients": args.clients, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms}
    print(json.dumps(out))
    uncached.close()
    cached.close()
    return out


if __name__ == "__main__":
    main()
