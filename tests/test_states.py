"""Tests of xaiscope.core.states (fast exact LSTM internals) and xaiscope.core.device.

The fast path is held to independent references: the per-step loop written out from the cell
equations, PyTorch's own fused ``nn.LSTM`` (last-layer outputs and final cell state), a float64 run
as ground truth, ``scipy.signal.lfilter`` for the linear recurrence, and pandas for dates.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import scipy.signal
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from xaiscope.core.device import choose_device, exact_math
from xaiscope.core.errors import XaiscopeError
from xaiscope.core.states import (
    VARIABLES,
    LSTMInternals,
    linear_scan,
    lstm_internals,
    lstm_internals_loop,
    model_internals,
    to_dataset,
)

NAMES = ("h", "c", "i", "f", "g", "o")
N_IN = 5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these small problems gain nothing from more, and stay quick on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_lstm(layers: int, cells: int, seed: int, *, forget_bias: float | np.ndarray = 0.0,
              dtype: torch.dtype = torch.float32, **kwargs) -> nn.LSTM:
    torch.manual_seed(seed)
    lstm = nn.LSTM(N_IN, cells, num_layers=layers, batch_first=kwargs.pop("batch_first", True), **kwargs)
    if lstm.bias:
        with torch.no_grad():
            for layer in range(layers):
                bias = getattr(lstm, f"bias_hh_l{layer}")
                bias[cells : 2 * cells] += torch.as_tensor(forget_bias, dtype=bias.dtype)
    return lstm.to(dtype)


def max_diff(a: LSTMInternals, b: LSTMInternals, name: str) -> float:
    return (getattr(a, name).double() - getattr(b, name).double()).abs().max().item()


# --------------------------------------------------------------------------------------------------
# fast path vs the per-step loop and vs nn.LSTM


@pytest.mark.parametrize("layers,cells", [(1, 256), (2, 20), (3, 7)])
@pytest.mark.parametrize("batch", [1, 17])
@pytest.mark.parametrize("steps", [1, 2, 365])
@pytest.mark.parametrize("initial", [False, True])
def test_fast_matches_loop_and_nn_lstm(layers, cells, batch, steps, initial):
    seed = hash((layers, cells, batch, steps, initial)) % 10_000
    lstm = make_lstm(layers, cells, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, steps, N_IN, generator=gen)
    h0 = torch.randn(layers, batch, cells, generator=gen) if initial else None
    c0 = torch.randn(layers, batch, cells, generator=gen) if initial else None

    fast = lstm_internals(lstm, x, h0, c0)
    loop = lstm_internals_loop(lstm, x, h0, c0)
    for name in NAMES:
        tensor = getattr(fast, name)
        assert tensor.shape == (batch, steps, layers, cells), name
        assert tensor.dtype == torch.float32
        assert max_diff(fast, loop, name) <= 1e-5, name

    # PyTorch's own fused forward: last layer's h for all t, and (h_n, c_n) of every layer
    with torch.no_grad():
        out, (h_n, c_n) = lstm(x, None if h0 is None else (h0, c0))
    torch.testing.assert_close(fast.h[:, :, -1], out, rtol=0, atol=1e-6)
    torch.testing.assert_close(fast.h[:, -1].transpose(0, 1), h_n, rtol=0, atol=1e-6)
    torch.testing.assert_close(fast.c[:, -1].transpose(0, 1), c_n, rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_matches_loop_several_seeds_and_layouts(seed):
    lstm = make_lstm(2, 20, seed, batch_first=False)
    x = torch.randn(365, 3, N_IN, generator=torch.Generator().manual_seed(seed))  # (T, B, n_in)
    fast = lstm_internals(lstm, x)
    loop = lstm_internals_loop(lstm, x)
    assert fast.shape == (3, 365, 2, 20)
    for name in NAMES:
        assert max_diff(fast, loop, name) <= 1e-5, name
    with torch.no_grad():
        out, _ = lstm(x)
    torch.testing.assert_close(fast.h[:, :, -1], out.transpose(0, 1), rtol=0, atol=1e-6)


def test_without_bias():
    lstm = make_lstm(2, 9, 4, bias=False)
    x = torch.randn(4, 50, N_IN)
    fast, loop = lstm_internals(lstm, x), lstm_internals_loop(lstm, x)
    for name in NAMES:
        assert max_diff(fast, loop, name) <= 1e-5, name
    with torch.no_grad():
        torch.testing.assert_close(fast.h[:, :, -1], lstm(x)[0], rtol=0, atol=1e-6)


def test_evaluation_semantics_even_in_training_mode():
    lstm = make_lstm(2, 20, 5, dropout=0.5).train()
    x = torch.randn(2, 100, N_IN)
    fast = lstm_internals(lstm, x)
    assert lstm.training  # not switched by the call
    with torch.no_grad():
        expected = copy.deepcopy(lstm).eval()(x)[0]
    torch.testing.assert_close(fast.h[:, :, -1], expected, rtol=0, atol=1e-6)
    for name in NAMES:
        assert max_diff(fast, lstm_internals_loop(lstm, x), name) <= 1e-5
    assert not fast.c.requires_grad


def test_float64_matches_loop_to_1e_10():
    for seed, forget_bias in [(0, 0.0), (1, 5.0), (2, -5.0)]:
        lstm = make_lstm(2, 20, seed, forget_bias=forget_bias, dtype=torch.float64)
        x = torch.randn(3, 365, N_IN, dtype=torch.float64)
        h0, c0 = torch.randn(2, 3, 20, dtype=torch.float64), torch.randn(2, 3, 20, dtype=torch.float64)
        fast, loop = lstm_internals(lstm, x, h0, c0), lstm_internals_loop(lstm, x, h0, c0)
        assert fast.c.dtype == torch.float64
        for name in NAMES:
            assert max_diff(fast, loop, name) <= 1e-10, (seed, name)


# --------------------------------------------------------------------------------------------------
# trained-like weights: remembering cells (forget bias +5) and forgetting cells (forget bias -5)


@pytest.mark.parametrize("seed", [0, 1])
def test_small_forget_gates_decay_fast_and_stay_exact(seed):
    lstm = make_lstm(2, 20, seed, forget_bias=np.where(np.arange(20) % 2 == 0, -5.0, -10.0))
    x = torch.randn(3, 365, N_IN)
    fast, loop = lstm_internals(lstm, x), lstm_internals_loop(lstm, x)
    assert fast.f.max() < 0.1  # products of f underflow after a few dozen steps
    assert torch.prod(fast.f[0, :40, 0, 0].double()) < 1e-38
    for name in NAMES:
        assert max_diff(fast, loop, name) <= 1e-5, name


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("pattern", ["remember", "mixed"])
def test_large_forget_bias_as_exact_as_the_loop(seed, pattern):
    """With f ≈ 0.993 the cell states grow to tens; float32 rounding then limits every method.

    Both float32 paths are compared with a float64 run of the loop (ground truth): the fast path
    must be no less accurate than the per-step loop, and within 1e-5 relative to the size of c.
    """
    cells = 20
    bias = np.full(cells, 5.0) if pattern == "remember" else np.where(np.arange(cells) % 2 == 0, 5.0, -5.0)
    lstm = make_lstm(2, cells, seed, forget_bias=bias)
    x = torch.randn(3, 365, N_IN, generator=torch.Generator().manual_seed(seed))
    truth = lstm_internals_loop(copy.deepcopy(lstm).double(), x.double())
    fast, loop = lstm_internals(lstm, x), lstm_internals_loop(lstm, x)
    scale = max(1.0, truth.c.abs().max().item())
    assert scale > 10  # the case this test is about
    for name in NAMES:
        fast_err, loop_err = max_diff(fast, truth, name), max_diff(loop, truth, name)
        assert fast_err <= 3 * loop_err + 1e-6, (name, fast_err, loop_err)
        assert max_diff(fast, loop, name) <= 1e-5 * scale, name
    for name in "ifgo":
        assert max_diff(fast, loop, name) <= 1e-5, name


# --------------------------------------------------------------------------------------------------
# the associative scan on its own


def sequential(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    y = np.empty_like(b)
    prev = np.zeros_like(b[0])
    for t in range(b.shape[0]):
        prev = a[t] * prev + b[t]
        y[t] = prev
    return y


@settings(max_examples=60, deadline=None)
@given(steps=st.integers(1, 70), width=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_scan_matches_sequential_recurrence(steps, width, seed):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 1, (steps, width))
    a[rng.uniform(size=a.shape) < 0.1] = 0.0  # a reset
    a[rng.uniform(size=a.shape) < 0.1] = 1e-300  # products underflow to zero
    b = rng.normal(size=(steps, width))
    expected = sequential(a, b)
    got = linear_scan(torch.from_numpy(a), torch.from_numpy(b), dim=0).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    # inputs untouched
    np.testing.assert_array_equal(a, a.copy())


@pytest.mark.parametrize("steps", [1, 2, 3, 64, 365, 1000])
def test_scan_against_scipy_lfilter(steps):
    """Constant a: y_t = a y_{t-1} + b_t is the IIR filter 1 / (1 - a z^-1)."""
    rng = np.random.default_rng(steps)
    b = rng.normal(size=(2, steps, 3))
    for a_value in (0.0, 0.3, 0.99, 1.0):
        expected = scipy.signal.lfilter([1.0], [1.0, -a_value], b, axis=1)
        got = linear_scan(torch.full(b.shape, a_value, dtype=torch.float64), torch.from_numpy(b), dim=1)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_scan_float32_survives_underflow():
    """A cumulative-product-ratio trick gives 0/0 here; the scan must give the recurrence."""
    a = torch.full((200, 4), 1e-20)
    b = torch.randn(200, 4)
    got = linear_scan(a, b, dim=0)
    assert torch.isfinite(got).all()
    expected = sequential(a.double().numpy(), b.double().numpy())
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_scan_rejects_mismatched_shapes():
    with pytest.raises(XaiscopeError, match="same shape"):
        linear_scan(torch.ones(3, 2), torch.ones(3, 1))


# --------------------------------------------------------------------------------------------------
# clear errors


@pytest.mark.parametrize(
    "build,x,match",
    [
        (lambda: nn.LSTM(N_IN, 8, proj_size=4, batch_first=True), torch.zeros(1, 3, N_IN), "proj_size"),
        (lambda: nn.LSTM(N_IN, 8, bidirectional=True, batch_first=True), torch.zeros(1, 3, N_IN), "bidirectional"),
        (lambda: nn.GRU(N_IN, 8, batch_first=True), torch.zeros(1, 3, N_IN), "torch.nn.LSTM"),
        (lambda: nn.LSTM(N_IN, 8, batch_first=True), torch.zeros(1, 3, 4), "input_size=5"),
        (lambda: nn.LSTM(N_IN, 8, batch_first=True), torch.zeros(3, N_IN), "3-D"),
        (lambda: nn.LSTM(N_IN, 8, batch_first=True), torch.zeros(1, 0, N_IN), "empty"),
        (lambda: nn.LSTM(N_IN, 8, batch_first=True), "rain", "tensor or array"),
    ],
)
def test_bad_input_raises_clear_error(build, x, match):
    for fn in (lstm_internals, lstm_internals_loop):
        with pytest.raises(XaiscopeError, match=match):
            fn(build(), x)


def test_bad_initial_state_shape():
    lstm = nn.LSTM(N_IN, 8, num_layers=2, batch_first=True)
    with pytest.raises(XaiscopeError, match=r"h0 must have shape .*\(2, 3, 8\)"):
        lstm_internals(lstm, torch.zeros(3, 10, N_IN), h0=torch.zeros(3, 8))
    with pytest.raises(XaiscopeError, match="c0"):
        lstm_internals(lstm, torch.zeros(3, 10, N_IN), c0=torch.zeros(2, 1, 8))


def test_numpy_float64_input_is_cast_to_the_lstm():
    lstm = make_lstm(1, 6, 3)
    x = np.random.default_rng(0).normal(size=(2, 30, N_IN))  # float64 numpy
    fast = lstm_internals(lstm, x)
    assert fast.h.dtype == torch.float32
    expected = lstm_internals_loop(lstm, torch.from_numpy(x).float())
    for name in NAMES:
        assert max_diff(fast, expected, name) <= 1e-5


# --------------------------------------------------------------------------------------------------
# model_internals


def test_model_internals_uses_the_model_lstm():
    from xaiscope.core.models import HydroLSTM

    torch.manual_seed(0)
    model = HydroLSTM(n_inputs=N_IN, hidden_size=20, num_layers=2).eval()
    x = torch.randn(2, 40, N_IN)
    got = model_internals(model, x)
    expected = lstm_internals_loop(model.lstm, x)
    for name in NAMES:
        assert max_diff(got, expected, name) <= 1e-5


def test_model_internals_finds_a_single_nested_lstm_and_rejects_none():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.LSTM(N_IN, 4, batch_first=True)
            self.head = nn.Linear(4, 1)

    model = Wrapper()
    x = torch.randn(1, 12, N_IN)
    got = model_internals(model, x)
    torch.testing.assert_close(got.h, lstm_internals_loop(model.encoder, x).h, rtol=0, atol=1e-5)
    with pytest.raises(XaiscopeError, match="cannot find the LSTM"):
        model_internals(nn.Linear(3, 3), x)


# --------------------------------------------------------------------------------------------------
# to_dataset


def test_to_dataset_layout_values_and_time():
    lstm = make_lstm(2, 6, 7)
    x = torch.randn(1, 30, N_IN)
    internals = lstm_internals(lstm, x)
    times = pd.date_range("1999-10-01", periods=30, freq="D")
    ds = to_dataset(internals, times=times.values, attrs={"basin_id": "01031500"})
    assert set(ds.data_vars) == set(VARIABLES)
    for name in NAMES:
        var = ds[name]
        assert var.dims == ("sample", "time", "layer", "cell")
        assert var.attrs["units"] == "1" and var.attrs["long_name"]
        np.testing.assert_array_equal(var.values, getattr(internals, name).numpy())
    assert ds.sizes == {"sample": 1, "time": 30, "layer": 2, "cell": 6}
    np.testing.assert_array_equal(ds["time"].values, times.values)
    assert np.issubdtype(ds["time"].dtype, np.datetime64)
    assert ds.attrs["basin_id"] == "01031500"
    # a cell's series by label
    np.testing.assert_array_equal(
        ds.c.sel(time="1999-10-05", layer=1, cell=3).values, internals.c[:, 4, 1, 3].numpy()
    )


def test_to_dataset_per_sample_dates_labels_and_netcdf(tmp_path):
    internals = lstm_internals(make_lstm(1, 3, 8), torch.randn(2, 5, N_IN))
    dates = np.stack([pd.date_range("2000-01-01", periods=5).values, pd.date_range("2001-01-01", periods=5).values])
    ends = dates[:, -1]
    ds = to_dataset(internals, times=dates, sample_index=ends)
    assert ds["date"].dims == ("sample", "time")
    np.testing.assert_array_equal(ds["date"].values, dates)
    np.testing.assert_array_equal(ds["sample"].values, ends)
    np.testing.assert_array_equal(ds["time"].values, np.arange(5))
    path = tmp_path / "states.nc"
    ds.to_netcdf(path)
    import xarray as xr

    with xr.open_dataset(path) as back:
        np.testing.assert_allclose(back.c.values, ds.c.values)


def test_to_dataset_default_coordinates_and_errors():
    internals = lstm_internals(make_lstm(1, 3, 9), torch.randn(2, 4, N_IN))
    ds = to_dataset(internals)
    np.testing.assert_array_equal(ds["time"].values, np.arange(4))
    np.testing.assert_array_equal(ds["sample"].values, np.arange(2))
    with pytest.raises(XaiscopeError, match="T=4"):
        to_dataset(internals, times=pd.date_range("2000-01-01", periods=5).values)
    with pytest.raises(XaiscopeError, match="sample_index"):
        to_dataset(internals, sample_index=[1, 2, 3])
    with pytest.raises(XaiscopeError, match="dates"):
        to_dataset(internals, times=["x", "y", "z", "w"])
    with pytest.raises(XaiscopeError, match="LSTMInternals"):
        to_dataset({"h": internals.h})


# --------------------------------------------------------------------------------------------------
# device policy


def test_choose_device_policy():
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device(" CPU ") == torch.device("cpu")
    auto = choose_device()
    assert choose_device("auto") == auto
    if torch.cuda.is_available():
        assert auto.type == "cuda"
    elif torch.backends.mps.is_available():
        assert auto.type == "mps"
    else:
        assert auto == torch.device("cpu")


@pytest.mark.parametrize("bad,match", [("gpu", "unknown device"), ("cpu:1", "only CUDA"), (3, "must be a string")])
def test_choose_device_rejects_bad_preferences(bad, match):
    with pytest.raises(XaiscopeError, match=match):
        choose_device(bad)


def test_choose_device_unavailable_device():
    if not torch.cuda.is_available():
        with pytest.raises(XaiscopeError, match="CUDA is not available"):
            choose_device("cuda")
    else:
        with pytest.raises(XaiscopeError, match="CUDA device"):
            choose_device(f"cuda:{torch.cuda.device_count()}")
    if not torch.backends.mps.is_available():
        with pytest.raises(XaiscopeError, match="MPS"):
            choose_device("mps")


@pytest.mark.parametrize("start", [True, False])
def test_exact_math_turns_tf32_off_and_restores(start):
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = start
        torch.backends.cudnn.allow_tf32 = start
        with exact_math():
            assert torch.backends.cuda.matmul.allow_tf32 is False
            assert torch.backends.cudnn.allow_tf32 is False
            with exact_math():
                pass
            assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cuda.matmul.allow_tf32 is start
        assert torch.backends.cudnn.allow_tf32 is start
        with pytest.raises(RuntimeError):
            with exact_math():
                raise RuntimeError("boom")
        assert torch.backends.cudnn.allow_tf32 is start
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fast_path_matches_cpu_loop():
    lstm = make_lstm(2, 20, 11)
    x = torch.randn(17, 365, N_IN)
    h0, c0 = torch.randn(2, 17, 20), torch.randn(2, 17, 20)
    loop = lstm_internals_loop(lstm, x, h0, c0)
    fast = lstm_internals(copy.deepcopy(lstm).cuda(), x.cuda(), h0, c0).to("cpu")
    for name in NAMES:
        assert max_diff(fast, loop, name) <= 1e-5, name


def test_exact_math_after_mixed_precision_apis():
    """Once a program mixes PyTorch's per-operator precision API with the legacy flags, the legacy
    flags cannot be read; exact_math must still switch TF32 off and restore the per-operator values.
    Run in a fresh interpreter so the mixed state cannot leak into other tests."""
    import subprocess
    import sys

    script = """
import torch
from xaiscope.core.device import exact_math
if not hasattr(torch.backends.cudnn, "conv") or not hasattr(torch.backends.cudnn.conv, "fp32_precision"):
    print("SKIP"); raise SystemExit
torch.backends.cuda.matmul.fp32_precision = "tf32"
torch.backends.cudnn.conv.fp32_precision = "ieee"
before = [torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
          torch.backends.cudnn.rnn.fp32_precision]
with exact_math():
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert torch.backends.cudnn.rnn.fp32_precision == "ieee"
after = [torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
         torch.backends.cudnn.rnn.fp32_precision]
assert before == after, (before, after)
print("OK")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    if "SKIP" in result.stdout:
        pytest.skip("this PyTorch has no per-operator precision API")
    assert "OK" in result.stdout
