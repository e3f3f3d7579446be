"""Time the TracIn view without a browser: first open (cold: training embeddings computed; warm: read from the
cache) and one click on a test example (its embedding, the scores, top-k and every plot of the view updated).

    python benchmarks/tracin_view.py [--model sst_qoi_lag03] [--method last_layer] [--clicks 10]

Prints seconds; the cost estimates of the other shipped series (nothing computed for them).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sst_qoi_lag03")
    p.add_argument("--method", default=None)
    p.add_argument("--clicks", type=int, default=10)
    p.add_argument("--estimates", action="store_true", help="also print the cost estimates of every shipped series")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    os.environ["XAISCOPE_CACHE_DIR"] = tempfile.mkdtemp(prefix="xaiscope-tracin-bench-")
    t0 = time.perf_counter()
    from xaiscope.dashboard.tracin import TracInExplorer
    print(f"import: {time.perf_counter() - t0:.1f} s")
    kw = {"model": a.model} | ({"method": a.method} if a.method else {})
    for label in ("cold", "warm"):
        t0 = time.perf_counter()
        v = TracInExplorer(**kw)
        t1 = time.perf_counter()
        v.__panel__().get_root()
        t2 = time.perf_counter()
        print(f"first open, {label}: scores {t1 - t0:.2f} s (store {v.timings.get('store_s', 0):.2f} s), "
              f"+ page objects {t2 - t1:.2f} s; {v.status}")
    labels = v.test_labels
    emb, full = [], []
    for j in range(a.clicks):
        t0 = time.perf_counter()
        v.test = labels[(7 * j + 3) % len(labels)]
        full.append(time.perf_counter() - t0)
        emb.append(v.timings["click_s"])
    full.sort()
    emb.sort()
    print(f"per click ({a.clicks}): test embedding median {1e3 * emb[len(emb) // 2]:.1f} ms; with scores, top-k and "
          f"all plots updated median {1e3 * full[len(full) // 2]:.0f} ms, max {1e3 * full[-1]:.0f} ms")
    if a.estimates:
        from xaiscope.core import influence as I
        from xaiscope.core import influence_view as V
        from xaiscope.dashboard.tracin import DEFAULTS, load_context

        for key, entry in V.shipped_runs().items():
            if key.startswith("sst_qoi") and key != "sst_qoi_lag03":
                continue
            ctx = load_context(entry)
            methods = [(DEFAULTS[ctx.kind][0], DEFAULTS[ctx.kind][1] or None), ("exact", None)]
            for method, layers in methods:
                est = V.estimate_cost(ctx.ckpts, ctx.train, I.EmbeddingSpec(method, layers))
                print(f"estimate {key} {method} {layers or ''}: {est.text()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
