"""TracIn on the hydrology LSTM: ours vs Captum's TracInCP, same model, data and checkpoints.

Default: 2,000 training windows × 10 test predictions × 3 checkpoints (epochs 20, 50, 80 of the shipped
series for basin 01031500), one CPU thread. Captum runs at its fastest setting for this model: batch size 1
(its per-example Jacobian does one backward through the whole batch per example, so larger batches cost more).

Prints the timings and ratios, then one JSON line:

* ``floor_s``: a plain batched forward+backward of the model over the training windows, every checkpoint — what a
  cold computation of per-example gradients cannot go much below;
* ``ours_cold_s``: per-example gradients of training and test windows + the score matrix;
* ``ours_warm_query_s``: with training embeddings stored (memory-mapped ``.npy``): test gradients + matrix
  product + top-k; ``matmul_topk_s`` the matrix product + top-k alone;
* ``captum_s``: ``TracInCP.influence`` (k=None);
* ``rel_err`` and top-10 proponent/opponent agreement of the two score matrices;
* ``topk_1m_s``: top-10 over 1,000,000 stored embeddings of dimension 128 for one query.

Usage: python benchmarks/tracin.py [--n-train 2000] [--n-test 10] [--captum-batch 1] [--no-captum]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xaiscope.core import influence as I

ROOT = Path(__file__).resolve().parent.parent / "assets" / "checkpoints" / "hydro_01031500"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=10)
    ap.add_argument("--epochs", default="20,50,80")
    ap.add_argument("--captum-batch", type=int, default=1)
    ap.add_argument("--no-captum", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    paths = [ROOT / f"epoch_{int(e):03d}" for e in args.epochs.split(",")]
    ckpts = I.load_run(paths)
    adapter = I.get_adapter("hydro_lstm")
    train = adapter.examples(ckpts[-1], "train")
    test = adapter.examples(ckpts[-1], "test")
    rng = np.random.default_rng(0)
    train = train.subset(np.sort(rng.choice(len(train), args.n_train, replace=False)))
    test = test.subset(np.sort(rng.choice(len(test), args.n_test, replace=False)))
    print(f"{len(train)} training windows × {len(test)} test predictions × {len(ckpts)} checkpoints, "
          f"{args.threads} thread(s)")

    # floor: batched forward + backward of the model alone
    t0 = time.perf_counter()
    for c in ckpts:
        m = I.prepare_model(c)
        for s in range(0, len(train), adapter.batch_size):
            xb = torch.as_tensor(train.x[s:s + adapter.batch_size])
            loss = adapter.loss(m, xb, torch.as_tensor(train.y[s:s + adapter.batch_size])).sum()
            loss.backward()
    floor = time.perf_counter() - t0

    t0 = time.perf_counter()
    ours = I.tracin(ckpts, train, test).scores
    cold = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        store = I.precompute_store(Path(tmp) / "store", ckpts, train)
        t0 = time.perf_counter()
        q = store.embed_test(test.x, test.y, ckpts)
        tops = store.query(q, k=10)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.query(q, k=10)
        mm = time.perf_counter() - t0
        assert np.allclose(store.scores(q), ours, rtol=1e-3, atol=1e-6 * np.abs(ours).max())

    emb = np.random.default_rng(1).standard_normal((1_000_000, 128), dtype=np.float32)
    qv = emb[:1].copy()
    t0 = time.perf_counter()
    I.top_k((emb @ qv.T)[:, 0], 10)
    topk_1m = time.perf_counter() - t0
    del emb

    result = {"benchmark": "tracin_hydro_lstm", "n_train": len(train), "n_test": len(test),
              "n_checkpoints": len(ckpts), "threads": args.threads, "floor_s": round(floor, 3),
              "ours_cold_s": round(cold, 3), "cold_over_floor": round(cold / floor, 2),
              "ours_warm_query_s": round(warm, 4), "matmul_topk_s": round(mm, 5), "topk_1m_s": round(topk_1m, 4)}
    print(f"floor (batched fwd+bwd): {floor:.2f} s; ours cold: {cold:.2f} s ({cold / floor:.2f}× floor); "
          f"warm query: {warm * 1e3:.1f} ms (matrix product + top-k {mm * 1e3:.2f} ms); "
          f"top-10 of 1M×128: {topk_1m * 1e3:.1f} ms")

    if not args.no_captum:
        from captum.influence import TracInCP
        from safetensors.torch import load_file
        from torch.utils.data import TensorDataset

        def load(m, path):
            m.load_state_dict(load_file(str(Path(path) / "weights.safetensors")))
            m.eval()
            return json.loads((Path(path) / "manifest.json").read_text())["learning_rate"]

        model = I.prepare_model(I.load_run([paths[0]])[0])
        tr = TracInCP(model, TensorDataset(torch.as_tensor(train.x), torch.as_tensor(train.y)),
                      [str(p) for p in paths], checkpoints_load_func=load,
                      loss_fn=torch.nn.MSELoss(reduction="none"), batch_size=args.captum_batch)
        t0 = time.perf_counter()
        ref = tr.influence((torch.as_tensor(test.x), torch.as_tensor(test.y)), k=None).detach().numpy()
        cap = time.perf_counter() - t0
        rel = float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
        same_p = float(np.mean([set(I.top_k(a, 10).proponents) == set(I.top_k(b, 10).proponents)
                                for a, b in zip(ours, ref)]))
        same_o = float(np.mean([set(I.top_k(a, 10).opponents) == set(I.top_k(b, 10).opponents)
                                for a, b in zip(ours, ref)]))
        result.update({"captum_s": round(cap, 3), "captum_batch_size": args.captum_batch,
                       "speedup_cold": round(cap / cold, 2), "speedup_warm": round(cap / warm, 1),
                       "rel_err": rel, "top10_proponents_same": same_p, "top10_opponents_same": same_o})
        print(f"Captum TracInCP (batch {args.captum_batch}): {cap:.2f} s → ours cold {cap / cold:.1f}× faster, "
              f"warm {cap / warm:.0f}× faster; relative error {rel:.2e}, same top-10 proponents "
              f"{same_p:.0%}, opponents {same_o:.0%}")
    del tops
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
