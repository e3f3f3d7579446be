"""Model registry and the models xaiscope knows how to build from a checkpoint manifest.

A checkpoint names its model by ``kind`` (a registry key) and gives the constructor's keyword arguments as
``config``; :func:`build_model` turns that back into a module. New models register themselves with
:func:`register_model`.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Callable

import torch
from torch import nn

from xaiscope.core.errors import CheckpointError, UnknownModelError

MODELS: dict[str, type[nn.Module]] = {}
#: Modules that register further built-in models; imported on the first lookup of a kind not yet known.
BUILTIN_MODEL_MODULES = ("xaiscope.core.convlstm", "xaiscope.core.sst_qoi")


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a model buildable from a checkpoint whose manifest says ``kind = name``."""

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        if name in MODELS and MODELS[name] is not cls:
            raise ValueError(f"model kind {name!r} is already registered to {MODELS[name].__name__}")
        MODELS[name] = cls
        cls.kind = name
        return cls

    return decorate


def get_model_class(kind: str) -> type[nn.Module]:
    """The registered class for ``kind``; an unknown name gets a "did you mean" error."""
    if kind not in MODELS:
        import importlib

        for module in BUILTIN_MODEL_MODULES:
            importlib.import_module(module)
    try:
        return MODELS[kind]
    except KeyError:
        close = difflib.get_close_matches(str(kind), MODELS, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model kind {kind!r}.{hint} Known kinds: {', '.join(sorted(MODELS))}."
        ) from None


def build_model(kind: str, config: dict | None = None) -> nn.Module:
    """Build a registered model from its kind and constructor config (as stored in a manifest)."""
    cls = get_model_class(kind)
    config = dict(config or {})
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(config) - set(params))
    if unknown:
        raise CheckpointError(
            f"model config for kind {kind!r} has unknown field(s) {unknown}; "
            f"{cls.__name__} takes {sorted(p for p in params if p != 'self')}."
        )
    try:
        return cls(**config)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - TypeError, ValueError, RuntimeError (negative sizes), OverflowError …
        text = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        shown = str(config)
        shown = shown if len(shown) <= 300 else shown[:300] + "…"
        raise CheckpointError(f"cannot build model kind {kind!r} from config {shown}: {text}") from err


@register_model("hydro_lstm")
class HydroLSTM(nn.Module):
    """The rainfall-runoff LSTM of Kratzert et al. (2018).

    Daily meteorological inputs (default 5) → a stacked LSTM (default 2 layers × 20 cells, batch_first) →
    dropout → a linear head on the last timestep's hidden state, giving the (normalised) discharge of the last
    day of the window.

    Parameters
    ----------
    n_inputs : number of input variables per day.
    hidden_size : cells per layer.
    num_layers : stacked LSTM layers.
    dropout : dropout between LSTM layers and before the head (training only).
    initial_forget_bias : added to the forget-gate bias at initialisation, so that cells start out remembering.
    n_outputs : outputs of the head (1: discharge).
    """

    def __init__(
        self,
        n_inputs: int = 5,
        hidden_size: int = 20,
        num_layers: int = 2,
        dropout: float = 0.1,
        initial_forget_bias: float = 3.0,
        n_outputs: int = 1,
    ):
        super().__init__()
        if n_inputs < 1 or hidden_size < 1 or num_layers < 1 or n_outputs < 1:
            raise ValueError("n_inputs, hidden_size, num_layers and n_outputs must be positive")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.n_inputs = n_inputs
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.lstm = nn.LSTM(
            n_inputs, hidden_size, num_layers=num_layers, batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, n_outputs)
        if initial_forget_bias:
            with torch.no_grad():
                for layer in range(num_layers):
                    getattr(self.lstm, f"bias_hh_l{layer}")[hidden_size: 2 * hidden_size] += initial_forget_bias

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[-1] != self.n_inputs:
            raise ValueError(
                f"expected inputs of shape (batch, time, {self.n_inputs}), got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (batch, time, n_inputs) normalised inputs → (batch,) prediction for the last day
        (or (batch, n_outputs) when ``n_outputs > 1``)."""
        y = self.forward_last(x, 1)[:, 0]
        return y

    def forward_last(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Predictions for the last ``n`` days of each sequence: (batch, n) (or (batch, n, n_outputs))."""
        self._check(x)
        out, _ = self.lstm(x)
        y = self.head(self.dropout(out[:, -n:]))
        return y.squeeze(-1) if y.shape[-1] == 1 else y

    def predict_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Prediction for every timestep of ``x`` (batch, time) — the continuous-mode simulation."""
        self._check(x)
        out, _ = self.lstm(x)
        y = self.head(out)
        return y.squeeze(-1) if y.shape[-1] == 1 else y
