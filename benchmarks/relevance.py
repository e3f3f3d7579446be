"""LRP-ε of 256 maps on the shipped FC checkpoint (lag 3): xaiscope's batched path vs zennit vs Captum.

All three compute the same relevance (checked: max difference printed); one thread. Prints a table and ends with
one JSON line. Usage: python benchmarks/relevance.py [--repeats N] [--n 256] [--device cpu|cuda]
(``--device cuda``: the model and the inputs on the GPU, all three paths computing there; times include the copy of
the relevance back to the CPU as NumPy.)
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from xaiscope.core.checkpoint import load_checkpoint
from xaiscope.core.device import choose_device
from xaiscope.core.relevance import lrp, lrp_captum, lrp_zennit
from xaiscope.core.sst_qoi import checkpoint_inputs, demo_checkpoint
from xaiscope.data.sst import demo_sst


def best_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # returns NumPy on the CPU: a GPU computation has finished when it returns
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:<index>, mps or auto")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    device = choose_device(args.device)
    ds = demo_sst(with_ssh=False)
    ck = load_checkpoint(demo_checkpoint(3))
    x = np.resize(checkpoint_inputs(ck.manifest, ds), (args.n, len(ck.manifest["sea_cells"])))
    model = ck.model.to(device)
    xt = torch.as_tensor(x, dtype=torch.float64, device=device)
    ours = lrp(model, xt, rule="epsilon").relevance
    rows = {"xaiscope": best_time(lambda: lrp(model, xt, rule="epsilon"), args.repeats)}
    diffs = {"xaiscope": 0.0}
    for name, fn in (("zennit", lambda: lrp_zennit(model, xt, rule="epsilon")),
                     ("captum", lambda: lrp_captum(model, xt))):
        try:
            diffs[name] = float(np.abs(fn() - ours).max() / np.abs(ours).max())
            rows[name] = best_time(fn, args.repeats)
        except Exception as err:  # optional dependency missing
            print(f"{name}: skipped ({err})")
    where = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
    print(f"LRP-epsilon, {args.n} maps × {x.shape[1]} inputs, model {ck.manifest['config']['hidden']}, float64, "
          f"1 thread, best of {args.repeats}, on {where}, torch {torch.__version__}")
    print(f"{'path':>10} {'seconds':>10} {'ms/map':>8} {'vs ours':>8} {'max rel diff':>13}")
    for name, t in rows.items():
        print(f"{name:>10} {t:10.4f} {1e3 * t / args.n:8.3f} {t / rows['xaiscope']:8.2f} {diffs[name]:13.2e}")
    print(json.dumps({"benchmark": "relevance", "device": str(device), "n_maps": args.n, "seconds": rows,
                      "ratio_vs_xaiscope": {k: v / rows["xaiscope"] for k, v in rows.items()},
                      "max_rel_diff": diffs}))


if __name__ == "__main__":
    main()
