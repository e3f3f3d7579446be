"""The shared inference engine (xaiscope.core.engine): one model copy per checkpoint, batching, byte-bounded
cache, thread safety, out-of-memory fallback, settings; and the cell-state view's routing through it."""
from __future__ import annotations

import shutil
import threading

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from xaiscope.core import engine as eng
from xaiscope.core import hydro
from xaiscope.core.checkpoint import save_checkpoint
from xaiscope.core.engine import (
    Engine, EngineError, EngineSettings, MicroBatcher, ModelEntry, ResultCache, run_in_batches, sizeof,
)
from xaiscope.core.models import HydroLSTM
from xaiscope.core.states import lstm_internals_loop

torch.set_num_threads(1)

INPUTS = ["prcp", "srad", "tmax", "tmin", "vp"]
WINDOW = 60


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory, small_synthetic_ds):
    ds = small_synthetic_ds
    torch.manual_seed(3)
    model = HydroLSTM(n_inputs=5, hidden_size=6, num_layers=2, dropout=0.0)
    stats = {v: {"mean": float(ds[v].mean()), "std": float(ds[v].std())} for v in [*INPUTS, "qobs"]}
    return save_checkpoint(tmp_path_factory.mktemp("engine") / "ck", model, {
        "kind": "hydro_lstm", "config": {"n_inputs": 5, "hidden_size": 6, "num_layers": 2, "dropout": 0.0},
        "inputs": INPUTS, "target": "qobs", "window": WINDOW, "normalisation": stats,
        "data": {"basin_id": ds.attrs["basin_id"]}})


@pytest.fixture
def engine():
    e = Engine(EngineSettings(device="cpu", cache_mb=64, max_batch=8, max_wait_ms=20))
    yield e
    e.close()


@pytest.fixture
def process_engine(monkeypatch, tmp_path):
    """A fresh process-wide engine (what the app's sessions share)."""
    monkeypatch.setenv("XAISCOPE_CACHE_DIR", str(tmp_path / "cache"))
    e = eng.configure_engine(EngineSettings(device="cpu", cache_mb=64, max_batch=8, max_wait_ms=5))
    yield e
    eng.reset_engine()


def _days(ds, n, offset=0):
    t = pd.DatetimeIndex(ds.time.values)
    return list(t[WINDOW - 1 + offset:: 37][:n])


# ------------------------------------------------------------------------------------------------ settings
def test_settings_from_environment_and_flags():
    env = {"XAISCOPE_DEVICE": "cpu", "XAISCOPE_CACHE_MB": "128", "XAISCOPE_THREADS": "2",
           "XAISCOPE_MAX_BATCH": "16", "XAISCOPE_MAX_WAIT_MS": "1.5"}
    s = EngineSettings.from_env(env)
    assert (s.device, s.cache_mb, s.threads, s.max_batch, s.max_wait_ms) == ("cpu", 128.0, 2, 16, 1.5)
    s2 = EngineSettings.from_env(env, cache_mb=8.0, max_batch=None)  # a flag wins; an absent flag does not
    assert (s2.cache_mb, s2.max_batch) == (8.0, 16)
    assert EngineSettings.from_env({}) == EngineSettings()


@pytest.mark.parametrize("env, word", [({"XAISCOPE_CACHE_MB": "lots"}, "XAISCOPE_CACHE_MB"),
                                       ({"XAISCOPE_THREADS": "1.5"}, "XAISCOPE_THREADS"),
                                       ({"XAISCOPE_CACHE_MB": "-1"}, "cache_mb"),
                                       ({"XAISCOPE_MAX_BATCH": "0"}, "max_batch")])
def test_bad_settings_raise_one_clear_error(env, word):
    with pytest.raises(EngineError, match=word):
        EngineSettings.from_env(env)


def test_serve_flags_build_engine_settings(monkeypatch):
    from xaiscope.core.cli import build_parser, engine_settings

    monkeypatch.setenv("XAISCOPE_CACHE_MB", "300")
    monkeypatch.setenv("XAISCOPE_THREADS", "3")
    args = build_parser().parse_args(["serve", "--device", "cpu", "--threads", "2", "--max-batch", "4"])
    s = engine_settings(args)
    assert (s.device, s.cache_mb, s.threads, s.max_batch) == ("cpu", 300.0, 2, 4)


def test_get_engine_is_one_per_process_and_reads_the_environment(monkeypatch):
    monkeypatch.setenv("XAISCOPE_CACHE_MB", "7")
    monkeypatch.setenv("XAISCOPE_DEVICE", "cpu")
    eng.reset_engine()
    try:
        a = eng.get_engine()
        assert a is eng.get_engine()
        assert a.cache.max_bytes == 7_000_000 and a.default_device == torch.device("cpu")
    finally:
        eng.reset_engine()


# ---------------------------------------------------------------------------------------------- the cache
def test_sizeof_counts_buffers():
    a = np.zeros((100, 50), dtype=np.float32)
    assert sizeof(a) == 100 * 50 * 4
    assert sizeof(torch.zeros(30, 7, dtype=torch.float64)) == 30 * 7 * 8
    ds = xr.Dataset({"v": (("t", "c"), np.zeros((1000, 10), np.float32))},
                    coords={"t": np.arange(1000, dtype=np.int64)})
    assert 1000 * 10 * 4 + 1000 * 8 <= sizeof(ds) <= 1000 * 10 * 4 + 1000 * 8 + 4096
    s = pd.Series(np.zeros(500), index=pd.RangeIndex(500))
    assert 500 * 8 <= sizeof(s) <= 500 * 8 + 1024
    assert sizeof({"a": a, "b": (a, a)}) < 2 * a.nbytes  # the same buffer is counted once


def test_cache_evicts_least_recently_used_within_its_byte_bound():
    item = 8000  # bytes of one float64 array of 1000 values
    cache = ResultCache(max_bytes=3 * item + 500)
    for k in range(3):
        cache.put(k, np.full(1000, k, dtype=np.float64))
    assert cache.get(0)[0] == 0  # 0 is now the most recently used
    cache.put(3, np.zeros(1000))
    assert 1 not in cache and all(k in cache for k in (0, 2, 3))
    assert cache.bytes == 3 * item <= cache.max_bytes and cache.evictions == 1
    cache.put("big", np.zeros(10_000))  # larger than the whole bound: returned, not kept
    assert "big" not in cache and cache.bytes == 3 * item
    calls = []
    assert cache.get_or_compute("x", lambda: calls.append(1) or np.ones(10))[0] == 1
    assert cache.get_or_compute("x", lambda: calls.append(1) or np.ones(10))[0] == 1
    assert calls == [1] and cache.stats()["hits"] >= 2
    off = ResultCache(0)
    off.put("a", np.ones(3))
    assert "a" not in off


def test_cache_bounded_in_entries_evicts_least_recently_used():
    from xaiscope.dashboard.sources import LRUCache

    for cache in (ResultCache(max_bytes=None, max_items=3), LRUCache(maxsize=3)):
        for k in range(3):
            cache.put(k, np.full(10_000, k))  # no byte bound: big values are kept
        assert cache.get(0)[0] == 0
        cache.put(3, np.zeros(10))
        assert 1 not in cache and all(k in cache for k in (0, 2, 3)) and len(cache) == 3
        assert cache.evictions == 1 and cache.stats()["max_mb"] == float("inf")
    both = ResultCache(max_bytes=2 * 8000 + 100, max_items=10)  # whichever bound is hit first
    for k in range(3):
        both.put(k, np.zeros(1000))
    assert len(both) == 2 and 0 not in both


def test_cache_computes_a_key_once_under_concurrency():
    cache = ResultCache(10_000_000)
    calls, gate = [], threading.Event()

    def slow():
        calls.append(1)
        gate.wait(5)
        return np.arange(5)

    threads = [threading.Thread(target=lambda: cache.get_or_compute("k", slow)) for _ in range(8)]
    for t in threads:
        t.start()
    while not cache.running("k"):
        pass
    gate.set()
    for t in threads:
        t.join()
    assert calls == [1]


# --------------------------------------------------------------------------------------- batching queue
def test_microbatcher_groups_waiting_requests_and_keeps_order():
    release, seen = threading.Event(), []

    def run_batch(group, items):
        seen.append((group, list(items)))
        if len(seen) == 1:
            release.wait(5)  # hold the worker so that the next requests queue up
        return [(group, i * 10) for i in items]

    b = MicroBatcher(run_batch, max_batch=4, max_wait=0.05)
    first = b.submit("a", 0)
    while not seen:
        pass
    futs = [b.submit("a", i) for i in range(1, 7)] + [b.submit("b", 100)]
    release.set()
    assert first.result(5) == ("a", 0)
    assert [f.result(5) for f in futs] == [("a", i * 10) for i in range(1, 7)] + [("b", 1000)]
    sizes = {g: [len(items) for gg, items in seen if gg == g] for g in ("a", "b")}
    assert sizes["a"] == [1, 4, 2] and sizes["b"] == [1]  # at most max_batch, groups never mixed
    b.close()


def test_microbatcher_passes_errors_to_every_waiter():
    def run_batch(group, items):
        raise ValueError("broken batch")

    b = MicroBatcher(run_batch, max_batch=4, max_wait=0.0)
    with pytest.raises(ValueError, match="broken batch"):
        b.submit("g", 1).result(5)
    b.close()


# ---------------------------------------------------------------------------------------- shared models
def test_two_sessions_share_one_model_copy(ckpt_dir, tmp_path, small_synthetic_ds, process_engine):
    from xaiscope.dashboard.state import AppState

    copy_dir = tmp_path / "same_weights_elsewhere"
    shutil.copytree(ckpt_dir, copy_dir)
    a = AppState(checkpoints=[str(ckpt_dir)], data=[small_synthetic_ds])
    b = AppState(checkpoints=[str(copy_dir)], data=[small_synthetic_ds])
    assert a.error == "" and b.error == ""
    assert a.ckpt.model is b.ckpt.model and a.ckpt.path != b.ckpt.path  # one model; each keeps its own path
    assert AppState(checkpoints=[str(ckpt_dir)], data=[small_synthetic_ds]).ckpt is a.ckpt
    from xaiscope.dashboard import compute

    for st in (a, b):
        compute.window(st.ckpt, st.ds, st.data_key, _days(small_synthetic_ds, 1)[0], st.device)
    info = process_engine.about()
    assert info["checkpoints"] == 1 and len(info["models"]) == 1
    assert info["models"][0]["sha256"] == a.ckpt.sha256
    assert process_engine.model(hydro.load_hydro(copy_dir)) is a.ckpt.model
    import gc

    gc.collect()
    weight = a.ckpt.model.lstm.weight_ih_l0
    live = [o for o in gc.get_objects() if isinstance(o, HydroLSTM) and o.lstm.weight_ih_l0.shape == weight.shape
            and torch.equal(o.lstm.weight_ih_l0, weight)]
    assert len(live) == 1  # the process holds one copy of these weights


# -------------------------------------------------------------------------------- batched == unbatched
def test_batched_windows_equal_unbatched_and_the_loop_reference(ckpt_dir, small_synthetic_ds, engine):
    ds = small_synthetic_ds
    ckpt = hydro.load_hydro(ckpt_dir)
    days = _days(ds, 10)
    results: dict = {}
    barrier = threading.Barrier(len(days))

    def session(d):
        barrier.wait()
        results[d] = engine.window_states(ckpt, ds, d, data_key="syn7")

    threads = [threading.Thread(target=session, args=(d,)) for d in days]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    many = engine.window_states_many(ckpt, ds, _days(ds, 6, offset=5), "syn7")
    assert engine.batcher.stats()["requests"] == len(days) + 6
    for d, got in [*results.items(), *zip(_days(ds, 6, offset=5), many)]:
        ref = hydro.window_states(ckpt, ds, d, device="cpu")  # one window, no queue, no cache
        for name in hydro.STATE_NAMES:
            np.testing.assert_allclose(got[name].values, ref[name].values, rtol=0, atol=1e-6)
        np.testing.assert_allclose(float(got["qsim"]), float(ref["qsim"]), rtol=1e-6, atol=1e-6)
        assert got.attrs["date"] == str(d.date()) and got.attrs["checkpoint_sha256"] == ckpt.sha256
    # and against the slow per-step reference, for one of them
    x, _ = hydro.window_inputs(ckpt, ds, days[3])
    loop = lstm_internals_loop(ckpt.model.lstm, torch.from_numpy(x)[None])
    np.testing.assert_allclose(results[days[3]]["c"].values, loop.c[0].numpy(), atol=1e-5)


def test_engine_hammered_from_many_threads(ckpt_dir, small_synthetic_ds):
    ds = small_synthetic_ds
    ckpt = hydro.load_hydro(ckpt_dir)
    days = _days(ds, 12)
    refs = {d: hydro.window_states(ckpt, ds, d, device="cpu")["c"].values for d in days}
    one = sizeof(hydro.window_states(ckpt, ds, days[0], device="cpu"))
    e = Engine(EngineSettings(device="cpu", cache_mb=5 * one / 1e6, max_batch=6, max_wait_ms=2))
    errors, rng = [], np.random.default_rng(0)
    plans = [rng.integers(0, len(days), 15) for _ in range(16)]

    def worker(plan):
        try:
            for k in plan:
                got = e.window_states(ckpt, ds, days[k], data_key="syn7")
                if not np.allclose(got["c"].values, refs[days[k]], atol=1e-6):
                    errors.append(f"wrong result for {days[k]}")
                e.cached(("test.sq", int(k)), lambda k=k: np.full(100, k))
        except Exception as err:  # noqa: BLE001
            errors.append(repr(err))

    threads = [threading.Thread(target=worker, args=(p,)) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    st = e.cache.stats()
    assert st["evictions"] > 0 and e.cache.bytes <= e.cache.max_bytes
    assert st["hits"] + st["misses"] == 16 * 15 * 2
    e.close()


# ------------------------------------------------------------------------------------- out of memory
class FakeOOM(torch.nn.Module):
    """Runs ``inner`` but raises an accelerator out-of-memory error for batches larger than ``limit``."""

    def __init__(self, inner, limit, cuda_type=True):
        super().__init__()
        self.inner, self.limit, self.cuda_type, self.calls = inner, limit, cuda_type, []

    def forward(self, x):
        self.calls.append(x.shape[0])
        if x.shape[0] > self.limit:
            if self.cuda_type:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


@pytest.mark.parametrize("cuda_type", [True, False])
def test_out_of_memory_falls_back_to_smaller_batches(cuda_type):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    x = torch.randn(37, 4)
    fake, notes = FakeOOM(net, limit=5, cuda_type=cuda_type), []
    with torch.inference_mode():
        out, used = run_in_batches(fake, x, 32, notes=notes, what="test")
        ref = net(x)
    assert used == 4 and max(fake.calls[-3:]) <= 5
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert notes and "batches of 16" in notes[0] and "batches of 4" in notes[-1]


def test_out_of_memory_for_one_item_moves_to_the_cpu_copy():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    x = torch.randn(9, 4)
    notes = []
    out, _ = run_in_batches(FakeOOM(net, limit=0), x, 8, device="meta", cpu_fn=net, notes=notes, what="test")
    torch.testing.assert_close(out, net(x).detach(), rtol=0, atol=0)
    assert "continued on the CPU" in notes[-1]
    with pytest.raises(EngineError, match="out of memory"):
        run_in_batches(FakeOOM(net, limit=0), x, 8, device="cpu", what="test")


def test_engine_simulation_survives_out_of_memory(ckpt_dir, small_synthetic_ds, engine, monkeypatch, tmp_path):
    """The engine's own path: a model copy on an 'accelerator' that is always out of memory → CPU, a note."""
    monkeypatch.setenv("XAISCOPE_CACHE_DIR", str(tmp_path / "cache"))
    ds = small_synthetic_ds
    ckpt = hydro.load_hydro(ckpt_dir)
    fake_dev = torch.device("meta")
    key = (engine.model_key(ckpt), str(fake_dev))
    fake = FakeOOM(ckpt.model, limit=0)
    engine._models[key] = ModelEntry(ckpt.sha256, fake_dev, fake, engine.share(ckpt))
    sim = engine.simulate(ckpt, ds, device=fake_dev, batch_size=300, cache=False)
    ref = hydro.simulate(ckpt, ds, device="cpu", cache=False)
    np.testing.assert_allclose(sim.values, ref.values, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert any("continued on the CPU" in n for n in engine.notes)
    assert engine._models[key].batch_limit == 1  # later requests start small on that device
    # CPU: smaller batches only
    engine._models[(engine.model_key(ckpt), "cpu")].model = FakeOOM(ckpt.model, limit=50)
    sim2 = engine.simulate(ckpt, ds, device="cpu", batch_size=300, cache=False)
    np.testing.assert_allclose(sim2.values, ref.values, rtol=1e-6, atol=1e-6, equal_nan=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_engine_on_cuda_matches_the_cpu(ckpt_dir, small_synthetic_ds, monkeypatch, tmp_path):
    """The engine's CUDA path: batched exact windows, the continuous pass and the TF32-checked simulation against
    the CPU; the process-wide TF32 switches are put back afterwards."""
    monkeypatch.setenv("XAISCOPE_CACHE_DIR", str(tmp_path / "cache"))
    ds = small_synthetic_ds
    ckpt = hydro.load_hydro(ckpt_dir)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    e = Engine(EngineSettings(device="cuda", cache_mb=0, max_batch=4, max_wait_ms=5))
    try:
        days = _days(ds, 6)
        got = e.window_states_many(ckpt, ds, days, "syn7")
        assert e.entry(ckpt).device.type == "cuda"
        assert next(e.model(ckpt).parameters()).is_cuda
        for d, g in zip(days, got):
            ref = hydro.window_states(ckpt, ds, d, device="cpu")
            for name in hydro.STATE_NAMES:
                np.testing.assert_allclose(g[name].values, ref[name].values, rtol=0, atol=1e-5)
            np.testing.assert_allclose(float(g["qsim"]), float(ref["qsim"]), rtol=1e-5, atol=1e-5)
        cont = e.continuous_states(ckpt, ds, start="2001-01-01", end="2001-06-30")
        ref = hydro.continuous_states(ckpt, ds, start="2001-01-01", end="2001-06-30", device="cpu")
        np.testing.assert_allclose(cont["c"].values, ref["c"].values, rtol=0, atol=1e-5)
        sim = e.simulate(ckpt, ds, cache=False)
        sim_ref = hydro.simulate(ckpt, ds, device="cpu", cache=False)
        scale = ckpt.manifest["normalisation"]["qobs"]["std"]  # TF32 is accepted within 1e-3 normalised units
        np.testing.assert_allclose(sim.values, sim_ref.values, rtol=0, atol=2e-3 * scale, equal_nan=True)
        assert any("TF32 for simulate on cuda" in n for n in e.notes)
    finally:
        e.close()
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_direct_simulation_on_cuda_is_exact_float32():
    """hydro.simulate without the engine computes in exact float32 on CUDA, although PyTorch's default lets cuDNN
    use TF32: it equals the same windows run under ``exact_math`` on the GPU (and the CPU within float32 noise)."""
    from xaiscope.assets import ASSETS
    from xaiscope.core.device import exact_math, tf32_math
    from xaiscope.data.camels import demo_basin

    ckpt = hydro.load_hydro(ASSETS / "checkpoints" / "hydro_01031500")
    ds = demo_basin()
    span = ("1996-01-01", "1997-12-31")
    std = ckpt.manifest["normalisation"]["qobs"]["std"]

    def predictor(precision):
        def predict(arr):
            with torch.inference_mode(), precision():
                return ckpt.model(torch.from_numpy(arr).cuda()).reshape(-1).cpu().numpy()
        return predict

    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default, set explicitly
    try:
        got = hydro.simulate(ckpt, ds, *span, device="cuda", cache=False).values
        assert torch.backends.cudnn.allow_tf32 is True  # put back after the exact block
        exact = hydro.simulate(ckpt, ds, *span, cache=False, predict=predictor(exact_math)).values
        tf32 = hydro.simulate(ckpt, ds, *span, cache=False, predict=predictor(tf32_math)).values
    finally:
        torch.backends.cudnn.allow_tf32 = before
    cpu = hydro.simulate(ckpt, ds, *span, device="cpu", cache=False).values
    worst = {k: float(np.nanmax(np.abs(v - exact))) / std for k, v in (("direct", got), ("tf32", tf32), ("cpu", cpu))}
    assert worst["direct"] <= 1e-7, worst  # the exact GPU computation itself, not TF32 (which moves days more)
    assert worst["cpu"] <= 1e-4, worst  # exact float32 on another device: summation order only (~3e-5 seen)


# ----------------------------------------------------------------------------------------- the view
def test_cell_state_view_computes_through_the_engine(ckpt_dir, small_synthetic_ds, process_engine):
    from xaiscope.dashboard import compute

    ds = small_synthetic_ds
    ckpt = process_engine.share(hydro.load_hydro(ckpt_dir))
    d = _days(ds, 1)[0]
    w = compute.window(ckpt, ds, "syn7", d)
    assert process_engine.has_window(ckpt, "syn7", d) and process_engine.batcher.stats()["requests"] == 1
    assert compute.window(ckpt, ds, "syn7", d) is w  # cached
    assert compute.prefetch_windows(ckpt, ds, "syn7", _days(ds, 4, offset=3)) == 4
    assert process_engine.batcher.stats()["requests"] == 5
    cont = compute.continuous(ckpt, ds, "syn7")
    ref = hydro.continuous_states(ckpt, ds, device="cpu")
    np.testing.assert_allclose(cont["c"].values, ref["c"].values, atol=1e-6)
    sim = compute.simulation(ckpt, ds, "syn7", chunk_days=500)
    ref_sim = hydro.simulate(ckpt, ds, device="cpu", cache=False)
    np.testing.assert_allclose(sim.values, ref_sim.values, atol=1e-5, equal_nan=True)
    assert compute.has_simulation(ckpt, "syn7")
    used = process_engine.cache.stats()
    assert used["entries"] >= 7 and used["used_mb"] > 0
    compute.clear_caches()
    assert process_engine.cache.stats()["entries"] == 0


def test_about_lists_settings_models_cache_and_notes(ckpt_dir, small_synthetic_ds, engine):
    from xaiscope.dashboard.about import about_markdown

    ckpt = hydro.load_hydro(ckpt_dir)
    engine.window_states(ckpt, small_synthetic_ds, _days(small_synthetic_ds, 1)[0], data_key="k")
    engine.note("a test note")
    text = about_markdown(engine, roots="/data")
    for part in (ckpt.sha256[:12], "device in use: `cpu`", "of 64 MB", "a test note", "torch", "panel", "bokeh",
                 "/data", "1 requests in 1 batches"):
        assert part in text, part


def test_about_card_fills_in_when_opened(ckpt_dir, small_synthetic_ds, process_engine):
    from xaiscope.dashboard.about import about_card

    ckpt = process_engine.share(hydro.load_hydro(ckpt_dir))
    process_engine.window_states(ckpt, small_synthetic_ds, _days(small_synthetic_ds, 1)[0], data_key="k")
    card = about_card(roots="/srv/data")
    text = card.objects[0]
    assert card.title == "About this server" and card.collapsed and text.object == ""
    card.collapsed = False
    assert ckpt.sha256[:12] in text.object and "/srv/data" in text.object


def test_app_sidebar_has_the_about_card(ckpt_dir, small_synthetic_ds, process_engine):
    import panel as pn

    from xaiscope.dashboard.app import create_app

    page = create_app(checkpoints=[str(ckpt_dir)], data=[small_synthetic_ds])
    cards = [o for o in page.sidebar.objects if isinstance(o, pn.Card)]
    assert [c.title for c in cards] == ["About this server"]
