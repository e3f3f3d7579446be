"""Every cell state, hidden state and gate of a stacked ``nn.LSTM``, for every timestep and layer.

``nn.LSTM`` returns only the last layer's hidden states. :func:`lstm_internals` recovers everything
else, exactly and fast, without a Python loop over time:

1. The fused ``nn.LSTM`` kernel (cuDNN on a GPU, oneDNN/native on the CPU) runs layer by layer on
   the layer's own weight tensors (no copies), giving every layer's ``h_t`` for all ``t``.
2. The gates depend only on the layer input ``x_t`` and ``h_{t-1}``, so they are rebuilt for all
   timesteps at once: ``z = [x_t, h_{t-1}, 1] [W_ih, W_hh, b_ih + b_hh]^T``, one matrix product per
   gate and layer, written straight into one gate-major buffer. PyTorch's gate order is
   ``i, f, g, o`` (``i, f, o`` sigmoid, ``g`` tanh, applied in place).
3. The cell state follows the linear recurrence ``c_t = f_t * c_{t-1} + i_t * g_t``. It is solved
   by a work-efficient associative (parallel, log-depth) scan over the pairs
   ``(a, b) = (f_t, i_t * g_t)`` with the composition
   ``(a2, b2) ∘ (a1, b1) = (a1 * a2, a2 * b1 + b2)``: no division and no ratio of cumulative
   products, so it stays exact when forget gates are small and their products underflow.

Accuracy: in float32 the fast path agrees with the per-step loop to ~1e-7 for typical weights. When
cells integrate over long spans (forget gates near 1, ``|c|`` of tens) every float32 method drifts
from the exact result by ~1e-6 × ``|c|``; the fast path is then as close to a float64 run as the
loop is. Use a float64 copy of the model where more is needed.

:func:`lstm_internals_loop` is the slow per-step reference (an explicit loop over time and layers
with the cell equations written out); the tests hold the fast path to it.

Evaluation semantics throughout: no dropout between layers, no autograd (``torch.inference_mode``),
TF32 off (:func:`xaiscope.core.device.exact_math`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import Tensor, nn

from xaiscope.core.device import exact_math
from xaiscope.core.errors import XaiscopeError

__all__ = [
    "LSTMInternals",
    "lstm_internals",
    "lstm_internals_loop",
    "model_internals",
    "linear_scan",
    "to_dataset",
    "VARIABLES",
]

#: Variables of an :class:`LSTMInternals` / the Dataset of :func:`to_dataset`, with their long names.
VARIABLES: dict[str, str] = {
    "c": "LSTM cell state",
    "h": "LSTM hidden state",
    "i": "LSTM input gate",
    "f": "LSTM forget gate",
    "g": "LSTM cell input (candidate cell state)",
    "o": "LSTM output gate",
}


@dataclass(frozen=True)
class LSTMInternals:
    """All internals of a stacked LSTM; every tensor is ``(batch, time, layer, cell)``.

    ``h`` hidden state, ``c`` cell state, ``i`` input gate, ``f`` forget gate, ``g`` cell input
    (tanh candidate), ``o`` output gate; ``h[:, t]`` and ``c[:, t]`` are the states *after* step ``t``.
    """

    h: Tensor
    c: Tensor
    i: Tensor
    f: Tensor
    g: Tensor
    o: Tensor

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(batch, time, layers, cells)``."""
        return tuple(self.h.shape)  # type: ignore[return-value]

    def items(self) -> list[tuple[str, Tensor]]:
        """``(name, tensor)`` pairs in the order ``h, c, i, f, g, o``."""
        return [(field.name, getattr(self, field.name)) for field in fields(self)]

    def to(self, *args: Any, **kwargs: Any) -> LSTMInternals:
        """Move / cast every tensor (same arguments as :meth:`torch.Tensor.to`)."""
        return LSTMInternals(**{name: t.to(*args, **kwargs) for name, t in self.items()})


# --------------------------------------------------------------------------------------------------
# input checks


def _check_lstm(lstm: Any) -> None:
    if not isinstance(lstm, nn.LSTM):
        raise XaiscopeError(
            f"lstm must be a torch.nn.LSTM, got {type(lstm).__name__}; pass the model's LSTM module "
            "(e.g. model.lstm) or use model_internals(model, x)."
        )
    if lstm.proj_size:
        raise XaiscopeError(
            f"this LSTM has proj_size={lstm.proj_size}; cell-state extraction supports only LSTMs "
            "without projections (proj_size=0)."
        )
    if lstm.bidirectional:
        raise XaiscopeError(
            "this LSTM is bidirectional; cell-state extraction supports only unidirectional LSTMs "
            "(bidirectional=False)."
        )


def _layer_weights(lstm: nn.LSTM, layer: int) -> list[Tensor]:
    names = [f"weight_ih_l{layer}", f"weight_hh_l{layer}"]
    if lstm.bias:
        names += [f"bias_ih_l{layer}", f"bias_hh_l{layer}"]
    return [getattr(lstm, name) for name in names]


def _prepare(
    lstm: nn.LSTM, x: Any, h0: Any, c0: Any
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Check inputs; return ``x`` batch-first ``(B, T, n_in)`` and ``h0``/``c0`` as ``(L, B, H)``."""
    _check_lstm(lstm)
    reference = lstm.weight_ih_l0
    try:
        x = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise XaiscopeError(f"x must be a tensor or array of numbers, got {type(x).__name__}: {err}") from err
    layout = "(batch, time, inputs)" if lstm.batch_first else "(time, batch, inputs)"
    if x.dim() != 3:
        raise XaiscopeError(
            f"x must be 3-D {layout} for this LSTM (batch_first={lstm.batch_first}), got shape "
            f"{tuple(x.shape)}; add a batch dimension of 1 with x[None] (or x[:, None]) for a single series."
        )
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise XaiscopeError(f"x must hold real numbers, got dtype {x.dtype}.")
    if x.shape[-1] != lstm.input_size:
        raise XaiscopeError(
            f"x has {x.shape[-1]} input variables (last axis of shape {tuple(x.shape)}) but the LSTM "
            f"expects input_size={lstm.input_size}; pass the same inputs, in the same order, as in training."
        )
    x = x.to(device=reference.device, dtype=reference.dtype)
    if not lstm.batch_first:
        x = x.transpose(0, 1)
    batch, steps = x.shape[0], x.shape[1]
    if batch == 0 or steps == 0:
        raise XaiscopeError(f"x is empty (batch={batch}, time={steps}); pass at least one timestep of one series.")

    expected = (lstm.num_layers, batch, lstm.hidden_size)
    states = []
    for name, state in (("h0", h0), ("c0", c0)):
        if state is None:
            states.append(None)
            continue
        state = torch.as_tensor(state)
        if tuple(state.shape) != expected:
            raise XaiscopeError(
                f"{name} must have shape (num_layers, batch, hidden_size) = {expected}, got "
                f"{tuple(state.shape)}; it has the layout of nn.LSTM's initial states."
            )
        states.append(state.to(device=reference.device, dtype=reference.dtype))
    return x, states[0], states[1]


# --------------------------------------------------------------------------------------------------
# the associative scan


def linear_scan(a: Tensor, b: Tensor, dim: int = 1) -> Tensor:
    """Solve ``y_t = a_t * y_{t-1} + b_t`` (``y_{-1} = 0``) along ``dim`` by a parallel associative scan.

    Work-efficient odd–even (Brent–Kung) recursion over the pairs ``(a_t, b_t)`` with the composition
    ``(a2, b2) ∘ (a1, b1) = (a1 * a2, a2 * b1 + b2)``: combine neighbouring pairs, scan the half-length
    sequence, then fill in the even positions. ``ceil(log2 T)`` levels, about 2.5 passes over the data
    in all, only products and sums (no division), so tiny or zero ``a`` cannot spoil the result.
    Put an initial value ``y_{-1}`` into ``b_0 += a_0 * y_{-1}``. ``a`` and ``b`` are not modified.
    """
    if a.shape != b.shape:
        raise XaiscopeError(
            f"linear_scan: a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    out = b.clone()
    _scan_(a.movedim(dim, 0), out.movedim(dim, 0))
    return out


def _scan_(a: Tensor, b: Tensor) -> None:
    """In-place inclusive scan along dim 0: ``b_t <- a_t * b_{t-1} + b_t``. ``a`` is read only.

    Every update writes positions of one parity while reading the other, so nothing is overwritten
    before it is read; the only allocation is the half-length product of ``a`` on each level.
    """
    steps = b.shape[0]
    if steps == 1:
        return
    pairs = steps // 2
    a_odd = a[1 : 2 * pairs : 2]
    b_odd = b[1 : 2 * pairs : 2]
    # (a_{2k+1}, b_{2k+1}) ∘ (a_{2k}, b_{2k}) = (a_{2k} a_{2k+1}, a_{2k+1} b_{2k} + b_{2k+1})
    b_odd.addcmul_(a_odd, b[0 : 2 * pairs : 2])
    if pairs > 1:  # a is not needed on a level of length 1
        _scan_(a_odd * a[0 : 2 * pairs : 2], b_odd)  # now every odd position is final
    evens = (steps - 1) // 2
    if evens:  # y_{2k} = a_{2k} * y_{2k-1} + b_{2k}, k >= 1
        b[2::2].addcmul_(a[2::2], b[1 : 2 * evens : 2])


# --------------------------------------------------------------------------------------------------
# fast path


def _fused_layer(layer_input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], bias: bool) -> Tensor:
    """One layer of the fused LSTM kernel on the layer's own weights: ``h_t`` for all ``t`` (batch first)."""
    args = (layer_input, hx, weights, bias, 1, 0.0, False, False, True)
    if not layer_input.is_cuda:
        return torch.lstm(*args)[0]
    with warnings.catch_warnings():
        # cuDNN warns (and packs them) if one layer's weights are not a whole flat buffer.
        warnings.filterwarnings("ignore", message=".*contiguous chunk of memory.*")
        return torch.lstm(*args)[0]


def lstm_internals(lstm: nn.LSTM, x: Any, h0: Any = None, c0: Any = None) -> LSTMInternals:
    """All states and gates of ``lstm`` on input ``x``, exactly, without a Python loop over time.

    Parameters
    ----------
    lstm:
        A unidirectional ``nn.LSTM`` without projection (any number of layers, with or without bias).
        Dropout between layers is not applied (evaluation semantics), whatever ``lstm.training`` is.
    x:
        ``(B, T, n_in)`` if ``lstm.batch_first`` else ``(T, B, n_in)``; moved to the LSTM's device
        and dtype.
    h0, c0:
        Optional initial states ``(num_layers, B, hidden_size)`` as for ``nn.LSTM``; zeros if None.

    Returns
    -------
    LSTMInternals
        ``h, c, i, f, g, o``, each a contiguous ``(B, T, num_layers, hidden_size)`` tensor on the
        LSTM's device (the four gates share one buffer).
    """
    x, h0, c0 = _prepare(lstm, x, h0, c0)
    batch, steps, _ = x.shape
    layers, hidden = lstm.num_layers, lstm.hidden_size
    rows = batch * steps
    with torch.inference_mode(), exact_math():
        if h0 is None:
            h0 = x.new_zeros(layers, batch, hidden)
        h_all = x.new_empty(batch, steps, layers, hidden)
        # pre-activations, then (in place) the gates; gate k of layer l is gates[k, :, :, l]
        gates = x.new_empty(4, batch, steps, layers, hidden)
        layer_input = x
        for layer in range(layers):
            weights = _layer_weights(lstm, layer)
            w_ih, w_hh = weights[0], weights[1]
            hx = (h0[layer : layer + 1], x.new_zeros(1, batch, hidden) if c0 is None else c0[layer : layer + 1])
            h_seq = _fused_layer(layer_input, hx, weights, lstm.bias)
            h_all[:, :, layer] = h_seq
            # z_t = [x_t, h_{t-1}, 1] [W_ih, W_hh, b_ih + b_hh]^T for all t: one product per gate
            n_in = layer_input.shape[-1]
            operand = x.new_empty(batch, steps, n_in + hidden + (1 if lstm.bias else 0))
            operand[:, :, :n_in] = layer_input
            operand[:, 0, n_in : n_in + hidden] = h0[layer]
            operand[:, 1:, n_in : n_in + hidden] = h_seq[:, :-1]
            if lstm.bias:
                operand[:, :, -1] = 1.0
                matrix = torch.cat((w_ih, w_hh, (weights[2] + weights[3]).unsqueeze(1)), dim=1)
            else:
                matrix = torch.cat((w_ih, w_hh), dim=1)
            operand = operand.view(rows, -1)
            for k in range(4):
                block = matrix[k * hidden : (k + 1) * hidden]
                torch.mm(operand, block.t(), out=gates[k, :, :, layer].view(rows, hidden))
            layer_input = h_seq
        # PyTorch gate order i, f, g, o: sigmoid on i, f, o and tanh on g, in place, all layers at once
        gates[0:2].sigmoid_()
        gates[3].sigmoid_()
        gates[2].tanh_()
        i, f, g, o = gates.unbind(0)
        # c_t = f_t * c_{t-1} + i_t * g_t, all layers at once
        c = i * g
        if c0 is not None:
            c[:, 0].addcmul_(f[:, 0], c0.transpose(0, 1))
        _scan_(f.transpose(0, 1), c.transpose(0, 1))
    return LSTMInternals(h=h_all, c=c, i=i, f=f, g=g, o=o)


# --------------------------------------------------------------------------------------------------
# slow reference


def lstm_internals_loop(lstm: nn.LSTM, x: Any, h0: Any = None, c0: Any = None) -> LSTMInternals:
    """The slow per-step reference of :func:`lstm_internals` (same arguments, same result).

    An explicit Python loop over layers and timesteps with the LSTM cell equations written out
    (``z = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh``; ``i, f, o = σ(·)``, ``g = tanh(·)``;
    ``c_t = f c_{t-1} + i g``; ``h_t = o tanh(c_t)``). Meant for tests and benchmarks.
    """
    x, h0, c0 = _prepare(lstm, x, h0, c0)
    batch, steps, _ = x.shape
    layers, hidden = lstm.num_layers, lstm.hidden_size
    with torch.inference_mode(), exact_math():
        out = {name: x.new_empty(batch, steps, layers, hidden) for name in VARIABLES}
        layer_input = x
        for layer in range(layers):
            weights = _layer_weights(lstm, layer)
            w_ih, w_hh = weights[0], weights[1]
            h = h0[layer] if h0 is not None else x.new_zeros(batch, hidden)
            c = c0[layer] if c0 is not None else x.new_zeros(batch, hidden)
            for t in range(steps):
                z = layer_input[:, t] @ w_ih.t() + h @ w_hh.t()
                if lstm.bias:
                    z = z + weights[2] + weights[3]
                zi, zf, zg, zo = z.split(hidden, dim=1)
                i, f, g, o = torch.sigmoid(zi), torch.sigmoid(zf), torch.tanh(zg), torch.sigmoid(zo)
                c = f * c + i * g
                h = o * torch.tanh(c)
                for name, value in (("h", h), ("c", c), ("i", i), ("f", f), ("g", g), ("o", o)):
                    out[name][:, t, layer] = value
            layer_input = out["h"][:, :, layer]
    return LSTMInternals(**{name: out[name] for name in ("h", "c", "i", "f", "g", "o")})


def model_internals(model: nn.Module, x: Any, h0: Any = None, c0: Any = None) -> LSTMInternals:
    """:func:`lstm_internals` of the model's LSTM: its ``.lstm`` attribute, else its only ``nn.LSTM``."""
    lstm = getattr(model, "lstm", None)
    if not isinstance(lstm, nn.LSTM):
        found = [m for m in model.modules() if isinstance(m, nn.LSTM)] if isinstance(model, nn.Module) else []
        if len(found) != 1:
            raise XaiscopeError(
                f"cannot find the LSTM of {type(model).__name__}: it has no `.lstm` attribute holding an "
                f"nn.LSTM and {len(found)} nn.LSTM submodules; call lstm_internals(the_lstm, x) directly."
            )
        lstm = found[0]
    return lstm_internals(lstm, x, h0=h0, c0=c0)


# --------------------------------------------------------------------------------------------------
# xarray


def to_dataset(
    internals: LSTMInternals,
    times: Any = None,
    sample_index: Sequence[Any] | np.ndarray | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """The internals as an ``xr.Dataset`` with variables ``c, h, i, f, g, o`` on ``(sample, time, layer, cell)``.

    Parameters
    ----------
    times:
        Optional datetime64-like array of length T: the ``time`` coordinate (one shared calendar,
        e.g. a continuous run). A ``(B, T)`` array (each window its own dates) becomes a 2-D
        ``date(sample, time)`` coordinate instead and ``time`` stays the step index.
        Without it, ``time`` is the step index ``0 … T-1``.
    sample_index:
        Optional labels of the B samples (e.g. window end dates or basin ids); default ``0 … B-1``.
    attrs:
        Extra Dataset attributes.
    """
    if not isinstance(internals, LSTMInternals):
        raise XaiscopeError(
            f"to_dataset expects an LSTMInternals (from lstm_internals), got {type(internals).__name__}."
        )
    batch, steps, layers, cells = internals.shape
    coords: dict[str, Any] = {
        "layer": ("layer", np.arange(layers), {"long_name": "LSTM layer (0 = first)"}),
        "cell": ("cell", np.arange(cells), {"long_name": "LSTM cell index"}),
    }
    step_index = ("time", np.arange(steps), {"long_name": "timestep index"})
    if times is None:
        coords["time"] = step_index
    else:
        stamps = _as_datetime64(times, "times")
        if stamps.shape == (steps,):
            coords["time"] = ("time", stamps, {"long_name": "time"})
        elif stamps.shape == (batch, steps):
            coords["time"] = step_index
            coords["date"] = (("sample", "time"), stamps, {"long_name": "date of each timestep of each sample"})
        else:
            raise XaiscopeError(
                f"times has shape {stamps.shape} but the internals have T={steps} timesteps (and B={batch} "
                f"samples); pass T dates (shape ({steps},)) or one row of dates per sample (shape ({batch}, {steps}))."
            )
    if sample_index is None:
        coords["sample"] = ("sample", np.arange(batch), {"long_name": "sample index"})
    else:
        labels = np.asarray(sample_index)
        if labels.shape != (batch,):
            raise XaiscopeError(
                f"sample_index has shape {labels.shape} but the internals hold B={batch} samples; "
                f"pass one label per sample (shape ({batch},))."
            )
        coords["sample"] = ("sample", labels, {"long_name": "sample"})

    data_vars = {}
    for name, long_name in VARIABLES.items():
        values = getattr(internals, name).detach().to("cpu").numpy()
        data_vars[name] = (("sample", "time", "layer", "cell"), values, {"long_name": long_name, "units": "1"})
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs.update(
        {
            "title": "LSTM internal states and gates",
            "gate_order": "i, f, g, o (PyTorch)",
            "equations": "c_t = f_t*c_{t-1} + i_t*g_t; h_t = o_t*tanh(c_t)",
        }
    )
    if attrs:
        ds.attrs.update(dict(attrs))
    return ds


def _as_datetime64(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values)
    if np.issubdtype(array.dtype, np.datetime64):
        return array
    try:
        converted = pd.to_datetime(array.ravel(), format="ISO8601")
    except (TypeError, ValueError) as err:
        raise XaiscopeError(
            f"{name} must be dates (datetime64, pandas timestamps or ISO strings), got dtype {array.dtype}: {err}"
        ) from err
    return np.asarray(converted.to_numpy()).reshape(array.shape)
