"""TracIn on the hydrology LSTM at scale: ours vs Captum's TracInCP, same model, data and checkpoints.

Default: 20,000 training windows × 10 test predictions × 3 checkpoints (epochs 20, 50, 80 of the shipped series
for basin 01031500), one CPU thread. The basin's training period has 5,388 distinct 365-day windows, so beyond
that the windows are drawn again (all distinct windows first, in shuffled order, then repeats): the cost per window
is the same. Captum runs at its fastest setting for this model: batch size 1 (its per-example Jacobian does one
backward through the whole batch per example, so larger batches cost more). ``--captum-windows M`` runs Captum on
the first M windows only (all distinct) and extrapolates its time linearly to all windows — the output says so.

One run prints every timing and ratio, then one JSON line:

Every time is wall-clock (``*_s``) and CPU time of this process (``*_cpu_s``): on a machine shared with other work
the CPU-time ratios are the steadier ones.

* ``floor_s``: a plain batched forward+backward of the model over the training windows (batch 128), every
  checkpoint — what a cold computation of per-example gradients cannot go much below;
* ``ours_cold_s``: per-example gradients of every training window written to a Zarr store
  (``precompute_store``), then the test gradients, the score matrix and top-10 (``cold_over_floor``: goal ≤ 1.5);
* ``ours_warm_query_s``: with the exact training embeddings stored (and in memory, as a Zarr store keeps them
  after its first read, with their rows' norms, computed once per store: ``norms_once_s``): test gradients + the
  exact top-10 by the certified pruned query (``InfluenceStore.query``: rows scored in decreasing order of norm
  until Cauchy–Schwarz rules the rest out; ``pruned_topk_s`` alone, ``pruned_rows_scored`` rows multiplied);
  ``matmul_topk_s`` the full float32 product with every row (BLAS, blocks sized for the cache) + top-k, which
  gives the same top-10 (checked in the run); medians of ``--repeat`` runs;
* ``projected_warm_query_s``: the same query on a projected store (random projection, ``--proj-dim`` columns per
  checkpoint, seed 0 — APPROXIMATE; built from the stored exact embeddings with ``project_embeddings``, the
  numbers ``precompute_store(method="projection")`` writes) with its relative error and top-10 overlap against
  exact;
* ``captum_s`` (measured, or extrapolated from ``captum_measured_s`` on ``captum_windows``): ``TracInCP.influence``
  (k=None); ``speedup_warm`` = Captum / exact warm query (goal ≥ 1000), ``speedup_warm_projected`` for the
  approximate one;
* ``rel_err`` and top-10 proponent/opponent agreement of the two score matrices on the windows Captum scored;
* ``topk_1m_s``: top-10 over 1,000,000 stored embeddings of dimension 128 for one query (float32 GEMV + one
  argpartition; goal ≤ 0.1 s).

Usage: nice -n 10 python benchmarks/tracin.py [--windows 20000] [--captum-windows 2000] [--n-test 10]
       [--no-captum] [--repeat 5] [--proj-dim 128]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from xaiscope.core import influence as I  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "assets" / "checkpoints" / "hydro_01031500"


def draw_windows(n_available: int, n: int, rng) -> np.ndarray:
    """``n`` window indices: every available one once (shuffled) before any repeats."""
    first = rng.permutation(n_available)[:n]
    if n <= n_available:
        return first
    return np.concatenate([first, rng.integers(0, n_available, n - n_available)])


def train_mode_without_dropout(model: torch.nn.Module) -> None:
    """Training mode (which cuDNN's LSTM backward requires) computing what eval mode computes: no dropout."""
    model.train()
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.eval()
        if isinstance(mod, torch.nn.RNNBase):
            mod.dropout = 0.0


def timed(fn, repeat: int) -> tuple[float, float]:
    """Median wall-clock and median CPU time of ``repeat`` calls of ``fn``."""
    walls, cpus = [], []
    for _ in range(max(1, repeat)):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return float(np.median(walls)), float(np.median(cpus))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", "--n-train", dest="windows", type=int, default=20000,
                    help="training windows (default 20000)")
    ap.add_argument("--n-test", type=int, default=10)
    ap.add_argument("--epochs", default="20,50,80")
    ap.add_argument("--captum-batch", type=int, default=1)
    ap.add_argument("--captum-windows", type=int, default=None,
                    help="run Captum on the first M windows and extrapolate linearly (default: all windows)")
    ap.add_argument("--no-captum", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5, help="repetitions of each warm query (median reported)")
    ap.add_argument("--proj-dim", type=int, default=128, help="projection columns per checkpoint (default 128)")
    ap.add_argument("--device", default="cpu", help="where our gradients (and the floor) run: cpu (default), cuda…")
    ap.add_argument("--batch", type=int, default=None,
                    help="our gradient batch and the floor's (default: the adapter's, on a GPU its device_batch_size)")
    ap.add_argument("--captum-devices", default=None,
                    help="comma-separated devices to run Captum on, the fastest counts (default: cpu)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from xaiscope.core.device import choose_device, exact_math

    device = choose_device(args.device)
    on_gpu = device.type != "cpu"
    paths = [ROOT / f"epoch_{int(e):03d}" for e in args.epochs.split(",")]
    ckpts = I.load_run(paths)
    adapter = I.get_adapter("hydro_lstm")
    train_all = adapter.examples(ckpts[-1], "train")
    test = adapter.examples(ckpts[-1], "test")
    rng = np.random.default_rng(0)
    train = train_all.subset(draw_windows(len(train_all), args.windows, rng))
    test = test.subset(np.sort(rng.choice(len(test), args.n_test, replace=False)))
    n_distinct = min(len(train_all), len(train))
    repeats = ", the rest repeated" if len(train) > n_distinct else ""
    print(f"{len(train)} training windows ({n_distinct} distinct{repeats})"
          f" × {len(test)} test predictions × {len(ckpts)} checkpoints, {args.threads} thread(s), "
          f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}, our gradients on {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""), flush=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # floor: batched forward + backward of the model alone
    bs = args.batch or adapter.batch_size_on(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for c in ckpts:
        m = I._model_on(I.prepare_model(c), device)
        if on_gpu:   # cuDNN's LSTM backward runs in training mode only: a copy in training mode with dropout off
            train_mode_without_dropout(m)
        for s in range(0, len(train), bs):
            xb = torch.as_tensor(train.x[s:s + bs]).to(device)
            with exact_math():
                loss = adapter.loss(m, xb, torch.as_tensor(train.y[s:s + bs]).to(device)).sum()
                loss.backward()
    sync()
    floor, floor_cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"floor (batched forward + backward, batch {bs}): {floor:.1f} s (CPU {floor_cpu:.1f} s)", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        store = I.precompute_store(Path(tmp) / "store", ckpts, train, device=device, batch_size=bs)
        t_store = time.perf_counter() - t0
        q = store.embed_test(test.x, test.y, ckpts, device=device)
        s32 = store.scores(q)
        I.top_k_rows(s32, 10)
        cold, cold_cpu = time.perf_counter() - t0, time.process_time() - c0
        ours = s32.astype(np.float64)
        print(f"ours cold: {cold:.1f} s ({cold / floor:.2f}× the floor; CPU {cold_cpu:.1f} s, "
              f"{cold_cpu / floor_cpu:.2f}× the floor's CPU time; precompute_store, gradients + Zarr writes, "
              f"{t_store:.1f} s)", flush=True)

        # warm: the training embeddings are in memory (a Zarr store is read once, at first use, and kept)
        def warm_exact():
            q = store.embed_test(test.x, test.y, ckpts, device=device)
            return store.query(q, k=10)

        t0 = time.perf_counter()
        store.self_influence()           # the rows' norms: computed once per store and kept (the first query does it)
        t_norms = time.perf_counter() - t0
        warm, warm_cpu = timed(warm_exact, args.repeat)
        q = store.embed_test(test.x, test.y, ckpts, device=device)
        mm, mm_cpu = timed(lambda: store.query(q, k=10, prune=False), args.repeat)
        pr, pr_cpu = timed(lambda: store.query(q, k=10), args.repeat)
        pstats = {}
        exact_tops = store.query(q, k=10, stats=pstats)
        full_tops = store.query(q, k=10, prune=False)
        # the same windows in the same order (a window drawn twice scores alike, and float32 round-off of the two
        # products may pick either copy: the windows are compared by their date)
        label = np.asarray(train.index)
        same_as_full = all(np.array_equal(label[a.proponents], label[b.proponents])
                           and np.array_equal(label[a.opponents], label[b.opponents])
                           and np.allclose(a.proponent_scores, b.proponent_scores, rtol=1e-5)
                           and np.allclose(a.opponent_scores, b.opponent_scores, rtol=1e-5)
                           for a, b in zip(exact_tops, full_tops))
        assert same_as_full, "the pruned query and the full product gave different top-10s"
        dim = store.shape[1]

        # the projected store (approximate): k columns per checkpoint, from the stored exact embeddings
        t0 = time.perf_counter()
        proj = I.project_embeddings(store.embeddings, len(ckpts), dim=args.proj_dim, seed=0)
        t_project = time.perf_counter() - t0
        pspec = I.EmbeddingSpec("projection", dim=args.proj_dim, seed=0)

        def warm_projected():
            qp = I.embed(ckpts, test.x, test.y, pspec, adapter, device=device)
            return I.query(qp, proj, k=10)

        pwarm, pwarm_cpu = timed(warm_projected, args.repeat)
        ptops = warm_projected()
        pscores = I.score_product(I.embed(ckpts, test.x, test.y, pspec, adapter), proj).astype(np.float64)
        p_rel = float(np.linalg.norm(pscores - ours) / np.linalg.norm(ours))
        p_overlap = float(np.mean([len(set(a.proponents) & set(b.proponents)) / 10 for a, b in zip(ptops, exact_tops)]))
        p_overlap_o = float(np.mean([len(set(a.opponents) & set(b.opponents)) / 10 for a, b in zip(ptops, exact_tops)]))
        print(f"warm query, exact ({dim} columns, {store.embeddings.nbytes / 1e9:.2f} GB stored): "
              f"{warm * 1e3:.0f} ms (CPU {warm_cpu * 1e3:.0f} ms): test gradients + certified pruned top-10, "
              f"{pr * 1e3:.1f} ms (CPU {pr_cpu * 1e3:.1f} ms) scoring {pstats['rows_scored']:,} of {len(train):,} "
              f"rows, the same top-10 as the full product + top-k, {mm * 1e3:.1f} ms (CPU {mm_cpu * 1e3:.1f} ms); "
              f"the rows' norms, once per store: {t_norms:.2f} s); projected, APPROXIMATE ({pspec.label}, {proj.shape[1]} columns): "
              f"{pwarm * 1e3:.1f} ms (CPU {pwarm_cpu * 1e3:.1f} ms), relative error of its scores {p_rel:.3f}, "
              f"top-10 overlap with exact: proponents {p_overlap:.0%}, opponents {p_overlap_o:.0%} "
              f"(medians of {args.repeat})", flush=True)
        store = None  # free the exact embeddings before the 1M × 128 test

    emb = np.random.default_rng(1).standard_normal((1_000_000, 128), dtype=np.float32)
    qv = emb[:1].copy()
    topk_1m, topk_1m_cpu = timed(lambda: I.query(qv, emb, 10), args.repeat)
    emb = None

    result = {"benchmark": "tracin_hydro_lstm", "n_train": len(train), "n_train_distinct": n_distinct,
              "n_test": len(test), "n_checkpoints": len(ckpts), "embedding_dim": dim, "threads": args.threads,
              "device": str(device), "floor_batch_size": bs,
              "load_average": round(os.getloadavg()[0], 2), "floor_s": round(floor, 2),
              "floor_cpu_s": round(floor_cpu, 2), "ours_cold_s": round(cold, 2), "ours_cold_cpu_s": round(cold_cpu, 2),
              "store_write_s": round(t_store, 2), "cold_over_floor": round(cold / floor, 2),
              "cold_over_floor_cpu": round(cold_cpu / floor_cpu, 2), "ours_warm_query_s": round(warm, 4),
              "ours_warm_query_cpu_s": round(warm_cpu, 4), "matmul_topk_s": round(mm, 5),
              "matmul_topk_cpu_s": round(mm_cpu, 5), "pruned_topk_s": round(pr, 5), "pruned_topk_cpu_s": round(pr_cpu, 5),
              "pruned_rows_scored": int(pstats["rows_scored"]), "norms_once_s": round(t_norms, 3),
              "repeat": args.repeat,
              "projected_dim_per_checkpoint": args.proj_dim, "projected_columns": int(proj.shape[1]),
              "projected_from_exact_s": round(t_project, 2),
              "projected_warm_query_s": round(pwarm, 4), "projected_warm_query_cpu_s": round(pwarm_cpu, 4),
              "projected_rel_err": round(p_rel, 4), "projected_top10_overlap_proponents": p_overlap,
              "projected_top10_overlap_opponents": p_overlap_o,
              "topk_1m_s": round(topk_1m, 4), "topk_1m_cpu_s": round(topk_1m_cpu, 4)}
    print(f"top-10 of 1M×128 (one query, float32 GEMV + one argpartition, median of {args.repeat}): "
          f"{topk_1m * 1e3:.1f} ms (CPU {topk_1m_cpu * 1e3:.1f} ms)", flush=True)

    if not args.no_captum:
        from captum.influence import TracInCP
        from safetensors.torch import load_file
        from torch.utils.data import TensorDataset

        n_cap = min(args.captum_windows or len(train), len(train))
        sub = train.subset(np.arange(n_cap))
        runs = {}
        for dev in (args.captum_devices or "cpu").split(","):
            cdev = choose_device(dev)
            model = copy.deepcopy(I.prepare_model(I.load_run([paths[0]])[0])).to(cdev)

            def load(m, path, cdev=cdev):
                m.load_state_dict({k: v.to(cdev) for k, v in load_file(str(Path(path) / "weights.safetensors")).items()})
                if cdev.type == "cuda":    # cuDNN's LSTM backward needs training mode: dropout off instead
                    train_mode_without_dropout(m)
                else:
                    m.eval()
                return json.loads((Path(path) / "manifest.json").read_text())["learning_rate"]

            tr = TracInCP(model, TensorDataset(torch.as_tensor(sub.x).to(cdev), torch.as_tensor(sub.y).to(cdev)),
                          [str(p) for p in paths], checkpoints_load_func=load,
                          loss_fn=torch.nn.MSELoss(reduction="none"), batch_size=args.captum_batch)
            t0, c0 = time.perf_counter(), time.process_time()
            with exact_math():
                got = tr.influence((torch.as_tensor(test.x).to(cdev), torch.as_tensor(test.y).to(cdev)), k=None)
            got = got.detach().cpu().numpy()
            if cdev.type == "cuda":
                torch.cuda.synchronize(cdev)
            runs[str(cdev)] = (time.perf_counter() - t0, time.process_time() - c0, got)
            print(f"Captum TracInCP on {cdev}, batch {args.captum_batch}, {n_cap} windows: {runs[str(cdev)][0]:.1f} s "
                  f"(CPU {runs[str(cdev)][1]:.1f} s)", flush=True)
        captum_device = min(runs, key=lambda k: runs[k][0])
        cap_measured, cap_measured_cpu, ref = runs[captum_device]
        cap = cap_measured * len(train) / n_cap
        cap_cpu = cap_measured_cpu * len(train) / n_cap
        mine = ours[:, :n_cap]
        rel = float(np.linalg.norm(mine - ref) / np.linalg.norm(ref))
        same_p = float(np.mean([set(I.top_k(a, 10).proponents) == set(I.top_k(b, 10).proponents)
                                for a, b in zip(mine, ref)]))
        same_o = float(np.mean([set(I.top_k(a, 10).opponents) == set(I.top_k(b, 10).opponents)
                                for a, b in zip(mine, ref)]))
        extrapolated = n_cap < len(train)
        result.update({"speedup_warm_projected": round(cap / pwarm, 1),
                       "speedup_warm_projected_cpu": round(cap_cpu / pwarm_cpu, 1)})
        result.update({"captum_device": captum_device,
                       "captum_s_by_device": {k: round(v[0] * len(train) / n_cap, 1) for k, v in runs.items()},
                       "captum_s": round(cap, 1), "captum_extrapolated": extrapolated,
                       "captum_windows": n_cap, "captum_measured_s": round(cap_measured, 2),
                       "captum_cpu_s": round(cap_cpu, 1), "speedup_cold_cpu": round(cap_cpu / cold_cpu, 2),
                       "speedup_warm_cpu": round(cap_cpu / warm_cpu, 1),
                       "captum_batch_size": args.captum_batch, "speedup_cold": round(cap / cold, 2),
                       "speedup_warm": round(cap / warm, 1), "rel_err": rel, "top10_proponents_same": same_p,
                       "top10_opponents_same": same_o})
        how = (f"EXTRAPOLATED linearly from {cap_measured:.1f} s measured on the first {n_cap} windows"
               if extrapolated else "measured")
        print(f"Captum TracInCP (batch {args.captum_batch}, on {captum_device}): {cap:.1f} s ({how}) → ours cold {cap / cold:.1f}× "
              f"faster, warm query {cap / warm:.0f}× faster; on the {n_cap} windows Captum scored: relative error "
              f"{rel:.2e}, same top-10 proponents {same_p:.0%}, opponents {same_o:.0%}; CPU time: Captum {cap_cpu:.1f} s, "
              f"ours cold {cap_cpu / cold_cpu:.1f}× faster, warm {cap_cpu / warm_cpu:.0f}× faster (EXACT); projected "
              f"(APPROXIMATE) warm query {cap / pwarm:.0f}× faster wall-clock, {cap_cpu / pwarm_cpu:.0f}× in CPU time")
        assert rel < 1e-4, f"ours and Captum differ: relative error {rel:.2e}"
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
