"""TracIn: per-example gradient routes vs a per-example loop, Captum's TracInCP, last-layer shortcut,
projections, stores."""

import json

import numpy as np
import pytest
import torch

from xaiscope.core import influence as I
from xaiscope.core.checkpoint import list_series, load_checkpoint, save_checkpoint
from xaiscope.core.models import HydroLSTM
from xaiscope.core.sst_qoi import SstQoiMLP

torch.set_num_threads(1)


def _series(tmp_path, model, kind, config, lrs, seed=0, extra=None):
    """Save len(lrs) checkpoints of ``model`` with perturbed weights, as a training run would."""
    g = torch.Generator().manual_seed(seed)
    for e, lr in enumerate(lrs, 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        save_checkpoint(tmp_path / f"epoch_{e:03d}", model,
                        {"kind": kind, "config": config, "epoch": e, "learning_rate": lr, **(extra or {})})
    return tmp_path


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory):
    torch.manual_seed(0)
    cfg = {"n_inputs": 3, "hidden_size": 4, "num_layers": 2, "dropout": 0.0}
    run = _series(tmp_path_factory.mktemp("lstm"), HydroLSTM(**cfg), "hydro_lstm", cfg, [1e-2, 5e-3, 2.5e-3])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((60, 15, 3)).astype(np.float32)
    y = rng.standard_normal(60).astype(np.float32)
    return run, x, y


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    torch.manual_seed(1)
    cfg = {"n_inputs": 12, "hidden": [8, 6], "n_classes": 2, "dropout": 0.2}
    run = _series(tmp_path_factory.mktemp("mlp"), SstQoiMLP(**cfg), "sst_qoi_mlp", cfg, [1e-2, 8e-3, 6e-3],
                  extra={"class_weights": [1.3, 0.8]})
    rng = np.random.default_rng(2)
    x = rng.standard_normal((80, 12)).astype(np.float32)
    y = (rng.random(80) > 0.5).astype(np.int64)
    return run, x, y


# ------------------------------------------------------------------------------- per-example gradients
@pytest.mark.parametrize("batch", [1, 5, I.LSTM_RECURSION_FROM, 40])
def test_lstm_route_equals_loop(batch):
    """Both LSTM routes (backward recursion from LSTM_RECURSION_FROM examples on, probe inputs below) equal the
    per-example loop; a 3-layer LSTM and one step long sequences too."""
    torch.manual_seed(batch)
    a = I.get_adapter("hydro_lstm")
    for layers, steps in ((2, 17), (3, 6), (1, 1)):
        m = HydroLSTM(3, 5, layers, 0.0).double().eval()
        x = torch.randn(batch, steps, 3, dtype=torch.float64)
        y = torch.randn(batch, dtype=torch.float64)
        names = I.param_names(m)
        ref = I.per_sample_grads_loop(a, m, x, y, names).numpy()
        for route in (I.per_sample_grads_lstm, I.per_sample_grads_lstm_probe):
            np.testing.assert_allclose(route(a, m, x, y, names).numpy(), ref, rtol=1e-10, atol=1e-12)


def test_lstm_route_selected_layers_and_training_mode():
    m = HydroLSTM(3, 4, 2, 0.3).double().eval()
    a = I.get_adapter("hydro_lstm")
    x, y = torch.randn(3, 9, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    names = I.param_names(m, ["lstm.weight_hh_l1", "head"])
    assert names == ["lstm.weight_hh_l1", "head.weight", "head.bias"]
    np.testing.assert_allclose(I.per_sample_grads(a, m, x, y, names).numpy(),
                               I.per_sample_grads_loop(a, m, x, y, names).numpy(), rtol=1e-10, atol=1e-12)
    m.train()
    with pytest.raises(I.InfluenceError, match="eval"):
        I.per_sample_grads_lstm(a, m, x, y, names)
    with pytest.raises(I.InfluenceError, match="match no parameter"):
        I.param_names(m, ["lstm.nope"])


def test_mlp_vmap_and_linear_routes_equal_loop():
    torch.manual_seed(3)
    m = SstQoiMLP(10, (7, 5), 2, 0.2).double().eval()
    m._tracin_class_weights = torch.tensor([1.4, 0.7], dtype=torch.float64)
    a = I.get_adapter("sst_qoi_mlp")
    x, y = torch.randn(9, 10, dtype=torch.float64), torch.randint(0, 2, (9,))
    names = I.param_names(m)
    ref = I.per_sample_grads_loop(a, m, x, y, names).numpy()
    np.testing.assert_allclose(I.per_sample_grads_vmap(a, m, x, y, names).numpy(), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(I.per_sample_grads_linear(a, m, x, y, names).numpy(), ref, rtol=1e-10, atol=1e-12)
    sub = I.param_names(m, ["net.3"])
    np.testing.assert_allclose(I.per_sample_grads(a, m, x, y, sub).numpy(),
                               I.per_sample_grads_loop(a, m, x, y, sub).numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["hydro_lstm", "sst_qoi_mlp"])
def test_last_layer_shortcut_equals_full_restricted_to_head(kind):
    torch.manual_seed(4)
    if kind == "hydro_lstm":
        m = HydroLSTM(3, 4, 2, 0.0).double().eval()
        x, y = torch.randn(6, 11, 3, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    else:
        m = SstQoiMLP(10, (7, 5), 2).double().eval()
        x, y = torch.randn(6, 10, dtype=torch.float64), torch.randint(0, 2, (6,))
    a = I.get_adapter(kind)
    head = I.head_names(m, a)
    full = I.per_sample_grads_loop(a, m, x, y, I.param_names(m))
    cols = np.concatenate([np.full(p.numel(), n in head) for n, p in m.named_parameters()])
    short = I.per_sample_grads_last_layer(a, m, x, y, head)
    np.testing.assert_allclose(short.numpy(), full.numpy()[:, cols], rtol=1e-10, atol=1e-12)


def test_convlstm_adapter_has_no_last_layer():
    from xaiscope.core.convlstm import EnsoConvLSTM

    m = EnsoConvLSTM(hidden=(2,), kernels=(3,), n_lat=6, n_lon=8, window=2, n_leads=2, nino_box=(2, 4, 2, 5))
    with pytest.raises(I.InfluenceError, match="final linear layer"):
        I.head_names(m, I.get_adapter("enso_convlstm"))


def test_convlstm_loop_route_matches_per_example_training_loss():
    from xaiscope.core.convlstm import EnsoConvLSTM, enso_loss

    torch.manual_seed(5)
    m = EnsoConvLSTM(hidden=(2,), kernels=(3,), n_lat=6, n_lon=8, window=2, n_leads=2, nino_box=(2, 4, 2, 5)).eval()
    a = I.get_adapter("enso_convlstm")
    x = torch.randn(3, 2, 2, 6, 8)
    y = torch.randn(3, 2 * 48 + 2)
    got = a.loss(m, x, y)
    out = m(x)
    ref = [float(enso_loss({k: v[i:i + 1] for k, v in out.items()}, y[i:i + 1, :96].reshape(1, 2, 6, 8),
                           y[i:i + 1, 96:], m.sea_mask)[0].detach()) for i in range(3)]
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-6)


# ------------------------------------------------------------------------------------------ Captum
def _captum_scores(run, kind, x, y, xt, yt, loss_fn, batch_size=8):
    captum = pytest.importorskip("captum.influence")
    from safetensors.torch import load_file
    from torch.utils.data import TensorDataset

    ckpts = I.load_run(run)
    model = I.prepare_model(load_checkpoint(ckpts[0].path))

    def load(m, path):
        m.load_state_dict(load_file(str(path) + "/weights.safetensors"))
        m.eval()
        return json.loads(open(str(path) + "/manifest.json").read())["learning_rate"]

    tr = captum.TracInCP(model, TensorDataset(torch.as_tensor(x), torch.as_tensor(y)),
                         [str(c.path) for c in ckpts], checkpoints_load_func=load, loss_fn=loss_fn,
                         batch_size=batch_size, sample_wise_grads_per_batch=False)
    return tr.influence((torch.as_tensor(xt), torch.as_tensor(yt)), k=None).detach().numpy()


def _assert_same(ours, ref):
    rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    assert rel <= 1e-4, rel
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-5 * np.abs(ref).max())
    for row_o, row_r in zip(ours, ref):
        a, b = I.top_k(row_o, 10), I.top_k(row_r, 10)
        assert set(a.proponents) == set(b.proponents)
        assert set(a.opponents) == set(b.opponents)


def test_equals_captum_tracincp_lstm(lstm_run):
    run, x, y = lstm_run
    xt, yt = x[:4] + 0.1, y[:4] - 0.2
    ref = _captum_scores(run, "hydro_lstm", x, y, xt, yt, torch.nn.MSELoss(reduction="none"))
    ours = I.tracin(run, (x, y), (xt, yt)).scores
    _assert_same(ours, ref)


def test_equals_captum_tracincp_mlp(mlp_run):
    run, x, y = mlp_run
    xt, yt = x[:5] * 0.5, 1 - y[:5]
    w = torch.tensor([1.3, 0.8])
    ref = _captum_scores(run, "sst_qoi_mlp", x, y, xt, yt, torch.nn.CrossEntropyLoss(weight=w, reduction="none"))
    res = I.tracin(run, (x, y), (xt, yt))
    assert res.exact and res.label.startswith("exact")
    _assert_same(res.scores, ref)


def test_self_influence_is_diagonal_of_scores(mlp_run):
    run, x, y = mlp_run
    full = I.tracin(run, (x[:20], y[:20]), (x[:20], y[:20])).scores
    np.testing.assert_allclose(I.self_influence(run, (x[:20], y[:20])), np.diag(full), rtol=1e-5)


# --------------------------------------------------------------------------------------- projections
def test_projection_approximates_exact(lstm_run):
    run, x, y = lstm_run
    exact = I.tracin(run, (x, y), (x[:6], y[:6])).scores
    approx = {}
    for dim in (8, 512):
        res = I.tracin(run, (x, y), (x[:6], y[:6]), method="projection", dim=dim, seed=3)
        assert not res.exact and "approximate" in res.label
        approx[dim] = res.scores
    r_big = np.corrcoef(exact.ravel(), approx[512].ravel())[0, 1]
    r_small = np.corrcoef(exact.ravel(), approx[8].ravel())[0, 1]
    assert r_big > 0.95
    err = lambda a: np.linalg.norm(a - exact) / np.linalg.norm(exact)  # noqa: E731
    assert err(approx[512]) < err(approx[8])
    # fixed seed: reproducible
    again = I.tracin(run, (x, y), (x[:6], y[:6]), method="projection", dim=8, seed=3).scores
    np.testing.assert_array_equal(again, approx[8])


def test_projection_unbiased_over_seeds(lstm_run):
    """JL: E[(Pᵀa)·(Pᵀb)] = a·b — the mean over seeds approaches the exact score within its standard error."""
    run, x, y = lstm_run
    exact = I.tracin(run, (x[:1], y[:1]), (x[1:2], y[1:2])).scores[0, 0]
    draws = np.array([I.tracin(run, (x[:1], y[:1]), (x[1:2], y[1:2]), method="projection", dim=16,
                               seed=s).scores[0, 0] for s in range(40)])
    se = draws.std(ddof=1) / np.sqrt(len(draws))
    assert abs(draws.mean() - exact) < 4 * se + 1e-12


# ---------------------------------------------------------------------------------------- top-k, store
def test_top_k_matches_full_sort():
    rng = np.random.default_rng(0)
    s = rng.standard_normal(1000)
    t = I.top_k(s, 7)
    order = np.argsort(s)
    np.testing.assert_array_equal(t.proponents, order[::-1][:7])
    np.testing.assert_array_equal(t.opponents, order[:7])


@pytest.mark.parametrize("n,k", [(1000, 7), (9, 4), (9, 5), (3, 10)])
def test_top_k_rows_match_full_sort_at_both_ends(n, k):
    """One argpartition with both pivots gives the same winners, in order, as sorting each row (also when the
    two ends overlap, 2k > n)."""
    rng = np.random.default_rng(n + k)
    s = rng.standard_normal((4, n)).astype(np.float32)
    for row, t in zip(s, I.top_k_rows(s, k)):
        order = np.argsort(row, kind="stable")
        kk = min(k, n)
        np.testing.assert_array_equal(t.proponents, order[::-1][:kk])
        np.testing.assert_array_equal(t.opponents, order[:kk])
        np.testing.assert_array_equal(t.proponent_scores, row[order[::-1][:kk]])
        one = I.top_k(row, k)
        np.testing.assert_array_equal(one.proponents, t.proponents)
        np.testing.assert_array_equal(one.opponents, t.opponents)


@pytest.mark.parametrize("n_test", [1, 3])
def test_score_product_equals_float64_reference_across_blocks(tmp_path, monkeypatch, n_test):
    """The blocked float32 product (and the single-query GEMV) equals a float64 product, also on a
    memory-mapped store and with blocks that do not divide the rows."""
    monkeypatch.setattr(I, "QUERY_BLOCK_BYTES", 64 * 4 * 37)       # 64 rows per block of 37 columns
    rng = np.random.default_rng(5)
    e = rng.standard_normal((1000, 37)).astype(np.float32)
    q = rng.standard_normal((n_test, 37)).astype(np.float32)
    ref = q.astype(np.float64) @ e.astype(np.float64).T
    np.save(tmp_path / "e.npy", e)
    for train in (e, np.load(tmp_path / "e.npy", mmap_mode="r")):
        got = I.score_product(q, train)
        assert got.dtype == np.float32 and got.shape == (n_test, 1000)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
        assert [list(t.proponents) for t in I.query(q, train, 5)] == \
            [list(np.argsort(r)[::-1][:5]) for r in ref]
    with pytest.raises(I.InfluenceError, match="columns"):
        I.score_product(q[:, :5], e)


def _heavy_tailed(rng, n, d, n_test):
    """Embeddings whose row norms span orders of magnitude, as per-example gradients do, and queries."""
    e = rng.standard_normal((n, d)) * np.exp(rng.standard_normal((n, 1)) * 2.0)
    return e.astype(np.float32), rng.standard_normal((n_test, d)).astype(np.float32)


def _same_tops(got, want):
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.proponents, w.proponents)
        np.testing.assert_array_equal(g.opponents, w.opponents)
        np.testing.assert_allclose(g.proponent_scores, w.proponent_scores, rtol=2e-5)
        np.testing.assert_allclose(g.opponent_scores, w.opponent_scores, rtol=2e-5)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n_test,k", [(1, 10), (10, 10), (4, 1), (3, 40)])
def test_pruned_query_is_the_full_query(seed, n_test, k):
    """The certified pruned query returns the indices and scores the full product + top-k returns, against an
    independent float64 sort — and on heavy-tailed norms it scores only a part of the rows."""
    rng = np.random.default_rng(seed)
    e, q = _heavy_tailed(rng, 3000, 50, n_test)
    sq = np.einsum("nd,nd->n", e.astype(np.float64), e.astype(np.float64))
    stats = {}
    got = I.pruned_query(q, e, sq, k, stats=stats)
    _same_tops(I.query(q, e, k, sq_norms=sq), got)
    _same_tops(got, I.query(q, e, k))
    ref = q.astype(np.float64) @ e.astype(np.float64).T
    for t, r in zip(got, ref):
        order = np.argsort(r, kind="stable")
        np.testing.assert_array_equal(t.proponents, order[::-1][:k])
        np.testing.assert_array_equal(t.opponents, order[:k])
    assert 0 < stats["rows_scored"] <= len(e)
    if k <= 10:
        assert stats["rows_scored"] < len(e) / 2, stats   # the norms span ~4 orders of magnitude: it prunes


def test_pruned_query_falls_back_where_the_bound_cannot_prune():
    """Rows of similar norm (random projections), all-negative scores, a zero query, k ≥ N: the same result as
    the full query, every row scored."""
    rng = np.random.default_rng(7)
    e = rng.standard_normal((2000, 64)).astype(np.float32)
    q = rng.standard_normal((3, 64)).astype(np.float32)
    sq = np.einsum("nd,nd->n", e.astype(np.float64), e.astype(np.float64))
    stats = {}
    _same_tops(I.pruned_query(q, e, sq, 10, stats=stats), I.query(q, e, 10))
    assert stats["rows_scored"] == len(e)
    pos = np.abs(e)          # q < 0: every score negative, no proponent threshold above the bound
    _same_tops(I.pruned_query(-np.abs(q), pos, sq, 5), I.query(-np.abs(q), pos, 5))
    zero = np.zeros((1, 64), np.float32)
    assert len(I.pruned_query(zero, e, sq, 5)[0].proponents) == 5
    _same_tops(I.pruned_query(q, e[:7], sq[:7], 10), I.query(q, e[:7], 10))
    with pytest.raises(I.InfluenceError, match="sq_norms"):
        I.pruned_query(q, e, sq[:-1], 5)


@pytest.mark.parametrize("seed", range(4))
def test_pruned_query_finds_small_rows_behind_large_orthogonal_ones(seed):
    """The largest rows are (nearly) orthogonal to the query and the top scores belong to small rows: a bound
    that stopped at the large ones, or prunes a little too eagerly, returns other rows."""
    rng = np.random.default_rng(seed)
    d = 40
    q = rng.standard_normal(d)
    u = q / np.linalg.norm(q)
    big = rng.standard_normal((200, d)) * 50
    big -= np.outer(big @ u, u) * (1 - 1e-4)                # scores ~1e-4 × their norm
    small = rng.standard_normal((2800, d))
    small[:30] = u * rng.uniform(0.5, 1.5, (30, 1)) + 0.05 * rng.standard_normal((30, d))   # aligned: the top
    small[30:60] = -u * rng.uniform(0.5, 1.5, (30, 1)) + 0.05 * rng.standard_normal((30, d))  # and the bottom
    e = np.concatenate([big, small])[rng.permutation(3000)].astype(np.float32)
    qs = q[None].astype(np.float32)
    sq = np.einsum("nd,nd->n", e.astype(np.float64), e.astype(np.float64))
    _same_tops(I.pruned_query(qs, e, sq, 10), I.query(qs, e, 10))
    ref = qs.astype(np.float64) @ e.astype(np.float64).T
    assert list(I.pruned_query(qs, e, sq, 10)[0].proponents) == list(np.argsort(ref[0])[::-1][:10])


def test_pruned_query_stops_exactly_at_the_bound():
    """After the first block (the 64 largest rows) the best score is 10.348 (norm 10.4, cos 0.995) while an unscored
    row of norm 10.39 is aligned with the query (score 10.39): the bound 10.39 > 10.348 must keep the query going.
    A bound only 1 % too eager stops there and returns the wrong row."""
    rng = np.random.default_rng(3)
    d, n = 16, 1000
    q = np.zeros((1, d), np.float32)
    q[0, 0] = 1.0

    def row(norm, cos):
        v = np.zeros(d)
        v[0], v[1] = cos, np.sqrt(1 - cos ** 2)
        return v * norm

    e = rng.standard_normal((n, d)) * 0.02
    e[:62] = 0
    e[:62, 2] = np.linspace(11, 12, 62)               # the largest rows, orthogonal to q
    e[62], e[63] = row(10.4, 0.995), row(10.4, -0.995)  # best and worst of the first block: ±10.348
    e[64], e[65] = row(10.39, 1.0), row(10.39, -1.0)  # the true top and bottom: ±10.39
    e = e[rng.permutation(n)].astype(np.float32)
    sq = np.einsum("nd,nd->n", e.astype(np.float64), e.astype(np.float64))
    stats = {}
    got = I.pruned_query(q, e, sq, 1, stats=stats)[0]
    assert got.proponent_scores[0] == pytest.approx(10.39, rel=1e-5)
    assert got.opponent_scores[0] == pytest.approx(-10.39, rel=1e-5)
    assert 64 < stats["rows_scored"] < n          # went on past the first block, then stopped
    _same_tops([got], I.query(q, e, 1))


@pytest.mark.parametrize("k", [1, 3, 10])
def test_ties_resolve_to_the_lower_training_index_in_both_queries(k):
    """Repeated training examples (a window drawn twice) score exactly alike: both queries list them lower index
    first and pick the same ones at the k-th place — as a stable sort of (score, index) does."""
    rng = np.random.default_rng(11)
    base, q = _heavy_tailed(rng, 700, 30, 4)
    e = base[rng.integers(0, 700, 3000)]                      # every row several times
    sq = np.einsum("nd,nd->n", e.astype(np.float64), e.astype(np.float64))
    full, pruned = I.query(q, e, k), I.pruned_query(q, e, sq, k)
    _same_tops(pruned, full)
    s = I.score_product(q, e)
    for t, row in zip(full, s):
        np.testing.assert_array_equal(t.proponents, np.lexsort((np.arange(len(row)), -row))[:k])
        np.testing.assert_array_equal(t.opponents, np.lexsort((np.arange(len(row)), row))[:k])


def test_store_query_prunes_and_equals_full_product(tmp_path, lstm_run):
    """On real per-example LSTM gradients (a Zarr store), the store's pruned query equals the full product's top-k
    and the self-influence it keeps equals the store's."""
    run, x, y = lstm_run
    store = I.precompute_store(tmp_path / "store", run, I.Examples(x, y, np.arange(len(x))), batch_size=16)
    q = store.embed_test(x[:5] * 0.7, y[:5])
    full = store.query(q, k=3, prune=False)
    _same_tops(store.query(q, k=3), full)
    ref = store.scores(q).astype(np.float64)
    assert [list(t.proponents) for t in full] == [list(np.argsort(r)[::-1][:3]) for r in ref]
    si = store.self_influence()
    np.testing.assert_allclose(si, I.self_influence(run, (x, y)), rtol=1e-4)
    si[:] = 0                                     # a copy: the store's kept norms are untouched
    _same_tops(store.query(q, k=3), full)


def test_projected_store_equals_projection_embeddings(lstm_run):
    """Projecting stored exact embeddings per checkpoint block gives the projection method's embeddings."""
    run, x, y = lstm_run
    ckpts = I.load_run(run)
    exact = I.embed(ckpts, x, y, I.EmbeddingSpec("exact"))
    direct = I.embed(ckpts, x, y, I.EmbeddingSpec("projection", dim=16, seed=4))
    got = I.project_embeddings(exact, len(ckpts), dim=16, seed=4, rows=7)
    np.testing.assert_allclose(got, direct, rtol=1e-4, atol=1e-6 * np.abs(direct).max())
    with pytest.raises(I.InfluenceError, match="equal checkpoint blocks"):
        I.project_embeddings(exact[:, :-1], len(ckpts))


def test_store_round_trip_and_stale(tmp_path, mlp_run):
    run, x, y = mlp_run
    train = I.Examples(x, y, np.arange(len(x)))
    store = I.precompute_store(tmp_path / "store", run, train, batch_size=16)
    ckpts = I.load_run(run)
    ref = I.tracin(run, (x, y), (x[:3], y[:3]))
    again = I.open_store(tmp_path / "store", run)
    q = again.embed_test(x[:3], y[:3])
    np.testing.assert_allclose(again.scores(q), ref.scores, rtol=1e-4, atol=1e-7)
    tops = again.query(q, k=5)
    assert [list(t.proponents) for t in tops] == [list(ref.top_k(i, 5).proponents) for i in range(3)]
    np.testing.assert_allclose(store.self_influence(), I.self_influence(run, (x, y)), rtol=1e-4)
    # a changed checkpoint makes the store stale
    m = ckpts[1].model
    with torch.no_grad():
        m.net[0].weight.mul_(1.01)
    save_checkpoint(ckpts[1].path, m, {k: v for k, v in ckpts[1].manifest.items()
                                        if k not in ("weights_sha256", "weights_file")})
    with pytest.raises(I.StaleStoreError, match="stale"):
        I.open_store(tmp_path / "store", run)


def test_clear_errors(tmp_path, mlp_run):
    run, x, y = mlp_run
    with pytest.raises(I.InfluenceError, match="method"):
        I.tracin(run, (x, y), (x, y), method="fast")
    with pytest.raises(I.InfluenceError, match="no TracIn task adapter"):
        I.get_adapter("nope")
    with pytest.raises(I.InfluenceError, match="not an influence store"):
        I.open_store(tmp_path)
    m = SstQoiMLP(4, (3,))
    save_checkpoint(tmp_path / "run" / "epoch_001", m, {"kind": "sst_qoi_mlp",
                                                        "config": {"n_inputs": 4, "hidden": [3]}})
    with pytest.raises(I.InfluenceError, match="learning_rate"):
        I.load_run(tmp_path / "run")


def test_cli_precompute_influence(tmp_path, capsys):
    from xaiscope.core.cli import main

    import shutil

    from xaiscope.core.sst_qoi import demo_checkpoint

    for p in list_series(demo_checkpoint(3))[-2:]:   # two shipped epochs keep the test short
        shutil.copytree(p, tmp_path / "run" / p.name)
    shipped = I.load_run(tmp_path / "run")
    rc = main(["precompute", "influence", str(shipped[0].path.parent), "--out", str(tmp_path / "s"),
               "--method", "projection", "--dim", "16", "--quiet"])
    assert rc == 0 and "training examples" in capsys.readouterr().out
    store = I.open_store(tmp_path / "s", str(shipped[0].path.parent))
    train = I.get_adapter("sst_qoi_mlp").examples(shipped[-1], "train")
    assert store.embeddings.shape == (len(train), 16 * 2)
    ref = I.embed(I.load_run(str(shipped[0].path.parent)), train.x[:4], train.y[:4],
                  I.EmbeddingSpec("projection", dim=16))
    np.testing.assert_allclose(store.embeddings[:4], ref, rtol=1e-5, atol=1e-7)
    assert main(["precompute", "influence", str(tmp_path), "--out", str(tmp_path / "t"), "--quiet"]) == 2
    capsys.readouterr()
    rc = main(["precompute", "influence", str(shipped[0].path.parent), "--out", str(tmp_path / "u"), "--method",
               "last_layer", "--device", "cpu", "--quiet"])
    assert rc == 0 and I.open_store(tmp_path / "u").shape[0] == len(train)
    assert main(["precompute", "influence", str(shipped[0].path.parent), "--out", str(tmp_path / "v"),
                 "--device", "tpu", "--quiet"]) == 2
    assert "unknown device preference 'tpu'" in capsys.readouterr().err


def test_shipped_sst_series_examples_and_scores():
    """The SST-QoI adapter rebuilds the training split of the shipped run: its class-weighted loss on the
    training examples reproduces the manifest's training accuracy; the fast route equals the loop there too."""
    from xaiscope.core.sst_qoi import demo_checkpoint

    ckpts = I.load_run(demo_checkpoint(3))
    a = I.get_adapter("sst_qoi_mlp")
    train, test = a.examples(ckpts[-1], "train"), a.examples(ckpts[-1], "test")
    m = ckpts[-1].manifest
    assert (len(train), len(test)) == (m["n_train"], m["n_val"])
    model = I.prepare_model(ckpts[-1])
    with torch.no_grad():
        acc = float((model(torch.as_tensor(train.x)).argmax(1).numpy() == train.y).mean())
    assert acc == pytest.approx(m["metrics"]["train_accuracy"], abs=1e-9)
    x, y = torch.as_tensor(train.x[:6]), torch.as_tensor(train.y[:6])
    names = I.param_names(model)
    np.testing.assert_allclose(I.per_sample_grads(a, model, x, y, names).numpy(),
                               I.per_sample_grads_loop(a, model, x, y, names).numpy(), rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------------- Zarr stores, Dask
def test_zarr_store_records_what_it_is_and_matches_direct_embeddings(tmp_path, lstm_run):
    run, x, y = lstm_run
    train = I.Examples(x, y, np.arange(len(x)))
    store = I.precompute_store(tmp_path / "z", run, train, method="projection", dim=24, seed=5, batch_size=8,
                               chunk_rows=16, data="synthetic:3")
    assert store.format == "zarr" and (tmp_path / "z" / "zarr.json").exists()
    ckpts = I.load_run(run)
    ref = I.embed(ckpts, x, y, I.EmbeddingSpec("projection", dim=24, seed=5), batch_size=8)
    again = I.open_store(tmp_path / "z", run)
    np.testing.assert_allclose(again.embeddings, ref, rtol=1e-6, atol=1e-9)
    m = again.meta
    assert [c["sha256"] for c in m["checkpoints"]] == [c.sha256 for c in ckpts]
    assert m["spec"] == {"method": "projection", "layers": None, "dim": 24, "seed": 5}
    assert m["data"] == "synthetic:3" and m["complete"] and m["chunk_rows"] == 16
    assert m["train_sha256"] == I._sha256_arrays(x, y) != I._sha256_arrays(x, y + 1)
    np.testing.assert_array_equal(again.index, np.arange(len(x)))
    # chunks smaller than a batch: the progress still ends at its total (one batch per chunk: 60 / 7 → 9 chunks)
    seen = []
    small = I.precompute_store(tmp_path / "s", run, train, method="projection", dim=24, seed=5, batch_size=8,
                               chunk_rows=7, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (3 * 9, 3 * 9) and all(t == 27 for _, t in seen)
    np.testing.assert_allclose(small.embeddings, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())  # other batches


def test_numpy_store_still_readable_and_same_as_zarr(tmp_path, lstm_run):
    run, x, y = lstm_run
    train = I.Examples(x, y, np.arange(len(x)))
    z = I.precompute_store(tmp_path / "z", run, train, layers=["lstm.weight_hh_l1", "head"], batch_size=16)
    n = I.precompute_store(tmp_path / "n", run, train, layers=["lstm.weight_hh_l1", "head"], batch_size=16,
                           store_format="npy")
    assert (tmp_path / "n" / I.EMBEDDINGS_FILE).exists() and n.format == "npy"
    n2 = I.open_store(tmp_path / "n", run)
    assert n2.format == "npy" and isinstance(n2.embeddings, np.memmap)
    np.testing.assert_array_equal(n2.embeddings, I.open_store(tmp_path / "z").embeddings)
    assert n2.meta["spec"]["layers"] == z.meta["spec"]["layers"] == ["lstm.weight_hh_l1", "head"]
    # a NumPy store is overwritten by a Zarr one (migration); a folder with other files is refused
    I.precompute_store(tmp_path / "n", run, train, layers=["head"], batch_size=16)
    assert I.open_store(tmp_path / "n").format == "zarr" and not (tmp_path / "n" / I.META_FILE).exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(I.InfluenceError, match="not empty"):
        I.precompute_store(tmp_path / "other", run, train)


def test_without_zarr_stores_are_numpy_and_dask_says_what_is_missing(tmp_path, lstm_run, monkeypatch):
    """Python 3.10 has no Zarr 3: the default store is the NumPy form; a Zarr-only request says what to install."""
    import builtins

    run, x, y = lstm_run
    train = I.Examples(x[:10], y[:10], np.arange(10))
    real_import = builtins.__import__

    def no_zarr(name, *args, **kwargs):
        if name == "zarr" or name.startswith("zarr."):
            raise ImportError("No module named 'zarr'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_zarr)
    assert not I.zarr_available()
    store = I.precompute_store(tmp_path / "n", run, train, layers=["head"])
    assert store.format == "npy" and (tmp_path / "n" / I.EMBEDDINGS_FILE).exists()
    with pytest.raises(I.InfluenceError, match=r"pip install 'zarr>=3'"):
        I.precompute_store(tmp_path / "z", run, train, layers=["head"], store_format="zarr")


def test_zarr_store_stale_and_incomplete_give_clear_errors(tmp_path, lstm_run):
    import shutil

    import zarr

    run0, x, y = lstm_run
    run = tmp_path / "run"
    shutil.copytree(run0, run)
    train = I.Examples(x[:20], y[:20], np.arange(20))
    I.precompute_store(tmp_path / "z", run, train, batch_size=8)
    I.open_store(tmp_path / "z", run)
    ckpts = I.load_run(run)
    m = ckpts[2].model
    with torch.no_grad():
        m.head.bias.add_(0.01)
    save_checkpoint(ckpts[2].path, m, {k: v for k, v in ckpts[2].manifest.items()
                                        if k not in ("weights_sha256", "weights_file")})
    with pytest.raises(I.StaleStoreError, match=r"stale influence store.*epoch_003.*xaiscope precompute influence"):
        I.open_store(tmp_path / "z", run)
    g = zarr.open_group(str(tmp_path / "z"), mode="r+")
    meta = dict(g.attrs[I.ZARR_ATTR])
    meta["complete"] = False
    g.attrs.update({I.ZARR_ATTR: meta})
    with pytest.raises(I.InfluenceError, match="incomplete"):
        I.open_store(tmp_path / "z")


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cl:
        with distributed.Client(cl) as client:
            yield client


def test_dask_precompute_equals_in_process(tmp_path, lstm_run, dask_client):
    run, x, y = lstm_run
    train = I.Examples(x, y, np.arange(len(x)))
    local = I.precompute_store(tmp_path / "a", run, train, batch_size=8, chunk_rows=16)
    seen = []
    dist = I.precompute_store(tmp_path / "b", run, train, batch_size=8, chunk_rows=16, scheduler=dask_client,
                              progress=lambda d, t: seen.append((d, t)))
    assert dist.shape == local.shape == (60, I.embed(I.load_run(run), x[:1], y[:1]).shape[1])
    np.testing.assert_array_equal(dist.embeddings, local.embeddings)
    assert seen[-1] == (3 * 8, 3 * 8) and len(seen) == 4           # 4 chunks of ≤ 16 rows, 3 checkpoints
    # and both equal a direct computation, and Captum-checked TracIn scores
    ref = I.tracin(run, (x, y), (x[:3], y[:3]))
    np.testing.assert_allclose(dist.scores(dist.embed_test(x[:3], y[:3])), ref.scores, rtol=1e-4, atol=1e-7)
    # a store at an fsspec URL (the in-memory file system stands in for an object store)
    pytest.importorskip("fsspec")
    url = f"memory://xaiscope-test-{tmp_path.name}/store"
    mem = I.precompute_store(url, run, train, batch_size=8, chunk_rows=32, scheduler=dask_client)
    np.testing.assert_array_equal(I.open_store(url, run).embeddings, local.embeddings)
    assert mem.format == "zarr"
    with pytest.raises(I.InfluenceError, match="NumPy store"):
        I.precompute_store(tmp_path / "c", run, train, scheduler=dask_client, store_format="npy")


def test_cli_precompute_influence_on_dask_scheduler(tmp_path, capsys, dask_client):
    from xaiscope.core.cli import main

    import shutil

    from xaiscope.core.sst_qoi import demo_checkpoint

    for p in list_series(demo_checkpoint(3))[-2:]:
        shutil.copytree(p, tmp_path / "run" / p.name)
    run = str(tmp_path / "run")
    rc = main(["precompute", "influence", run, "--out", str(tmp_path / "d"), "--method", "last_layer",
               "--scheduler", dask_client.scheduler.address, "--chunk-rows", "100", "--quiet"])
    assert rc == 0 and "zarr store" in capsys.readouterr().out
    assert main(["precompute", "influence", run, "--out", str(tmp_path / "p"), "--method", "last_layer",
                 "--chunk-rows", "100", "--quiet"]) == 0
    d, p = I.open_store(tmp_path / "d", run), I.open_store(tmp_path / "p", run)
    np.testing.assert_array_equal(d.embeddings, p.embeddings)
    train = I.get_adapter("sst_qoi_mlp").examples(I.load_run(run)[-1], "train")
    np.testing.assert_allclose(d.embeddings, I.embed(I.load_run(run), train.x, train.y,
                                                     I.EmbeddingSpec("last_layer")), rtol=1e-5, atol=1e-8)
    assert d.meta["data"] == "demo" and d.meta["spec"]["method"] == "last_layer"


# ------------------------------------------------------------------------------------------------ devices
def test_embed_device_argument_on_cpu_and_bad_names(lstm_run):
    """``device="cpu"`` is the default path; an unknown device name is one clear error."""
    from xaiscope.core.errors import XaiscopeError

    run, x, y = lstm_run
    ckpts = I.load_run(run)
    np.testing.assert_array_equal(I.embed(ckpts, x[:7], y[:7], device="cpu"), I.embed(ckpts, x[:7], y[:7]))
    with pytest.raises(XaiscopeError, match="unknown device"):
        I.embed(ckpts, x[:2], y[:2], device="tpu")
    with pytest.raises(I.InfluenceError, match="Dask workers"):
        I.precompute_store("unused", run, I.Examples(x, y, np.arange(len(x))), device="cpu", scheduler="local")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("which", ["lstm", "mlp"])
def test_embed_on_cuda_equals_cpu(which, lstm_run, mlp_run, tmp_path):
    """Per-example gradients on the GPU (large batches through the LSTM recursion and the probe route, exact
    float32 math) equal the CPU's; the checkpoints' own models stay on the CPU; a store computed there queries
    the same."""
    run, x, y = lstm_run if which == "lstm" else mlp_run
    ckpts = I.load_run(run)
    for spec in (I.EmbeddingSpec("exact"), I.EmbeddingSpec("projection", dim=8, seed=2)):
        cpu = I.embed(ckpts, x, y, spec)
        for bs in (None, 5):
            gpu = I.embed(ckpts, x, y, spec, device="cuda", batch_size=bs)
            assert gpu.dtype == np.float32
            np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-5 * np.abs(cpu).max())
    assert all(next(c.model.parameters()).device.type == "cpu" for c in ckpts)
    store = I.precompute_store(tmp_path / "s", run, I.Examples(x, y, np.arange(len(x))), device="cuda")
    q = store.embed_test(x[:3], y[:3], device="cuda")
    ref = I.tracin(run, (x, y), (x[:3], y[:3]))
    assert [list(t.proponents) for t in store.query(q, k=5)] == [list(ref.top_k(i, 5).proponents) for i in range(3)]
