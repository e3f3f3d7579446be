"""TracIn influence of training examples on predictions, for every model kind in the registry.

TracInCP (Pruthi et al. 2020) scores the influence of a training example z on a test example z' as

    TracIn(z, z') = Σ_c η_c ∇_θ ℓ(θ_c, z) · ∇_θ ℓ(θ_c, z')

over the saved checkpoints θ_c of a training run, with η_c the learning rate of that epoch (read from each
checkpoint's manifest). Positive scores are *proponents* (training on z lowered the test loss), negative ones
*opponents*; TracIn(z, z) is the *self-influence*, large for mislabelled or rare examples.

Writing every checkpoint's per-example gradient scaled by √η_c and concatenating over checkpoints gives an
*embedding* e(z) with TracIn(z, z') = e(z) · e(z'): training embeddings are computed once and stored
(:func:`precompute_store`), a query is one matrix product plus top-k.

Methods (each result says whether it is exact):

* ``"exact"``: all parameters, or the parameters of chosen layers (``layers=["head", "lstm.weight_hh_l1"]``,
  prefixes of ``model.named_parameters()`` names).
* ``"last_layer"``: the exact score restricted to the final linear layer, from a forward pass only
  (∇W = δ_out ⊗ features, ∇b = δ_out).
* ``"projection"``: each checkpoint's gradient multiplied by a fixed-seed Gaussian matrix P (D × k, entries
  N(0, 1/k)) — Johnson–Lindenstrauss: dot products are preserved in expectation, with an error shrinking as
  1/√k. Approximate.

Per-example gradients: for the hydrology LSTM PyTorch's fused LSTM kernel runs the forward pass, and the LSTM's
backward recursion, batched over examples, gives every example's gate pre-activation gradients δz_t; each example's
weight gradient is then Σ_t δz_t ⊗ [x_t, h_{t−1}, 1] (one batched matrix product per layer) — no weight gradient is
accumulated by autograd at all. The MLP does the
same with its linear layers' output gradients (∇W = δ ⊗ input; ``torch.func`` ``vmap(grad)`` is the general
fallback); the ConvLSTM (whose loss masks by data) a per-example loop. All routes equal a
plain per-example loop (tests).

What a model kind needs is a :class:`TaskAdapter` (registered in :data:`ADAPTERS`): how to get its training and
test examples from the checkpoint's own data description, its forward output, the per-example training loss,
and (optionally) its final linear layer.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xaiscope.core.checkpoint import Checkpoint, list_series, load_checkpoint
from xaiscope.core.device import choose_device
from xaiscope.core.errors import XaiscopeError

METHODS = ("exact", "last_layer", "projection")
STORE_FORMAT = 1
EMBEDDINGS_FILE = "train_embeddings.npy"
META_FILE = "influence.json"


class InfluenceError(XaiscopeError, ValueError):
    """Bad input to a TracIn computation (method, layers, checkpoints, examples, stores)."""


class StaleStoreError(InfluenceError):
    """A stored set of training embeddings that does not belong to the given checkpoints."""


# ------------------------------------------------------------------------------------------- examples
@dataclass
class Examples:
    """Examples of a model: inputs ``x`` (N, …), targets ``y`` (N, …) and what each one is.

    ``index`` labels each example (dates of hydrograph windows, target months of SST maps); ``label`` says what
    the index means; ``info`` holds display hints (e.g. the SST grid).
    """

    x: np.ndarray
    y: np.ndarray
    index: np.ndarray
    label: str = "example"
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx) -> "Examples":
        idx = np.asarray(idx)
        return Examples(self.x[idx], self.y[idx], np.asarray(self.index)[idx], self.label, dict(self.info))


# -------------------------------------------------------------------------------------------- adapters
class TaskAdapter:
    """How TracIn talks to one model kind. Subclass, set ``kind`` and register with :func:`register_adapter`.

    ``output(model, x)`` → model output; ``output_loss(out, y, model)`` → per-example training loss (B,);
    ``head`` names the final ``nn.Linear`` (``None``: no last-layer shortcut) and ``features(model, x)`` gives its
    input; ``route`` is the per-example gradient route ("lstm", "vmap" or "loop").
    """

    kind = ""
    head: str | None = None
    route = "loop"
    batch_size = 256        # examples per batched gradient computation
    device_batch_size: int | None = None   # on a GPU (None: batch_size)
    description = ""

    def batch_size_on(self, device: torch.device | None) -> int:
        """Examples per gradient batch on ``device`` (``None``: the CPU): ``batch_size``, on a GPU
        ``device_batch_size`` where set."""
        on_gpu = device is not None and torch.device(device).type != "cpu"
        return int(self.device_batch_size or self.batch_size) if on_gpu else int(self.batch_size)

    def examples(self, ckpt: Checkpoint, split: str = "train", data: Any = None) -> Examples:
        raise NotImplementedError

    def output(self, model: nn.Module, x: torch.Tensor):
        return model(x)

    def output_loss(self, out, y: torch.Tensor, model: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.output_loss(self.output(model, x), y, model)

    def features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise InfluenceError(f"model kind {self.kind!r} has no single final linear layer; use method='exact' or "
                             "'projection'.")

    def head_output(self, head_out: torch.Tensor):
        """Model output from the head's output (default: the same)."""
        return head_out


ADAPTERS: dict[str, TaskAdapter] = {}


def register_adapter(adapter: TaskAdapter) -> TaskAdapter:
    """Make TracIn available for checkpoints whose manifest says ``kind = adapter.kind``."""
    if not adapter.kind:
        raise ValueError("a task adapter needs a non-empty kind")
    ADAPTERS[adapter.kind] = adapter
    return adapter


def get_adapter(kind: str) -> TaskAdapter:
    """The task adapter of a model kind; an unknown kind gets a clear error listing the known ones."""
    try:
        return ADAPTERS[kind]
    except KeyError:
        raise InfluenceError(f"no TracIn task adapter for model kind {kind!r}; known kinds: "
                             f"{', '.join(sorted(ADAPTERS))}. Register one with "
                             "xaiscope.core.influence.register_adapter.") from None


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise InfluenceError(f"split: {split!r} is not 'train' or 'test'.")
    return split


class HydroAdapter(TaskAdapter):
    """Hydrology LSTM: windows of the checkpoint's length ending on each day of the training / test period of
    its manifest (its normalisation); loss = squared error of the last day's (normalised) discharge."""

    kind = "hydro_lstm"
    head = "head"
    route = "lstm"
    batch_size = 128        # measured fastest per example on a CPU (oneDNN LSTM kernels, cache-sized)
    device_batch_size = 4096  # on a GPU: more examples share the recursion's per-step kernel launches (~3.5 GB)
    description = "365-day input window → discharge of its last day; loss = squared error (normalised)"

    def examples(self, ckpt, split="train", data=None):
        from xaiscope.core.hydro import open_basin_data
        from xaiscope.data.windows import make_windows

        m = ckpt.manifest
        period = m.get(f"{_check_split(split)}_period")
        ds = data if data is not None and not isinstance(data, (str, Path)) else open_basin_data(data or "demo")
        w = make_windows(ds, inputs=tuple(m["inputs"]), target=m["target"], period=period,
                         window=int(m.get("window", 365)), stats=m["normalisation"])
        return Examples(w.x, w.y, w.dates, "window ending",
                        {"inputs": list(w.inputs), "target": w.target, "window": int(m.get("window", 365))})

    def output_loss(self, out, y, model):
        return (out - y) ** 2

    def features(self, model, x):
        out, _ = model.lstm(x)
        return out[:, -1]

    def head_output(self, head_out):
        return head_out[..., 0] if head_out.shape[-1] == 1 else head_out


class SstQoiAdapter(TaskAdapter):
    """SST-QoI classifier: the seeded training / validation split of :func:`~xaiscope.core.sst_qoi.train_sst_qoi`
    (validation months are the test examples); loss = class-weighted cross-entropy as in training."""

    kind = "sst_qoi_mlp"
    head = "net.-1"
    route = "linear"
    description = "SST anomaly map at t − lag → sign of the QoI at t; loss = class-weighted cross-entropy"

    def examples(self, ckpt, split="train", data=None):
        from xaiscope.core.sst_qoi import checkpoint_inputs, make_qoi_samples
        from xaiscope.data.sst import demo_sst

        _check_split(split)
        m = ckpt.manifest
        ds = demo_sst(with_ssh=False) if data is None or str(data) == "demo" else data
        if isinstance(ds, (str, Path)):
            from xaiscope.data.sst import read_sst

            ds = read_sst(ds, anomaly=True)
        box = m["box"]
        s = make_qoi_samples(ds, m["lag"], tuple(box["lat_bounds"]), tuple(box["lon_bounds"]))
        x = checkpoint_inputs(m, ds)[: len(s.y)]
        cfg = m.get("train_config", {})
        perm = np.random.default_rng(cfg.get("seed", m.get("seed", 0))).permutation(len(s.y))
        n_val = max(1, int(round(cfg.get("val_fraction", 0.2) * len(perm))))
        idx = np.sort(perm[n_val:]) if split == "train" else np.sort(perm[:n_val])
        return Examples(x[idx], s.y[idx], np.asarray(s.target_time)[idx], "target month",
                        {"grid": m["grid"], "sea_cells": m["sea_cells"], "lag": m["lag"],
                         "input_time": np.asarray(s.input_time)[idx], "qoi": s.qoi[idx], "rows": idx})

    def output_loss(self, out, y, model):
        w = getattr(model, "_tracin_class_weights", None)
        return F.cross_entropy(out, y, weight=w, reduction="none")

    def features(self, model, x):
        return model.net[:-1](x)


class EnsoAdapter(TaskAdapter):
    """ENSO ConvLSTM: samples of the manifest's training / test period; loss = the training loss
    (:func:`~xaiscope.core.convlstm.enso_loss`) of each sample alone. Several heads: no last-layer shortcut."""

    kind = "enso_convlstm"
    route = "loop"
    description = "6 months of SST+SSH maps → maps, Niño 3.4 and phase at leads 1..6; loss = training loss"

    def examples(self, ckpt, split="train", data=None):
        from xaiscope.core.train_enso import make_samples
        from xaiscope.data.sst import demo_sst

        m = ckpt.manifest
        period = m[f"{_check_split(split)}_period"]
        ds = demo_sst(with_ssh=True) if data is None or str(data) == "demo" else data
        s = make_samples(ds, m["inputs"], int(m["window"]), int(m["n_leads"]), m["normalisation"], period)
        n = len(s.x)
        y = np.concatenate([s.y_map.reshape(n, -1), s.y_nino], 1).astype(np.float32)
        return Examples(s.x, y, np.asarray(s.init), "initial month", {"grid": m.get("grid"),
                                                                      "n_leads": int(m["n_leads"])})

    def output_loss(self, out, y, model):
        from xaiscope.core.convlstm import enso_loss

        n_leads = out["nino34"].shape[1]
        ymap = y[:, :-n_leads].reshape(out["map"].shape)
        ynino = y[:, -n_leads:]
        losses = [enso_loss({k: v[i:i + 1] for k, v in out.items()}, ymap[i:i + 1], ynino[i:i + 1],
                            model.sea_mask)[0] for i in range(len(y))]
        return torch.stack(losses)


for _a in (HydroAdapter(), SstQoiAdapter(), EnsoAdapter()):
    register_adapter(_a)


def prepare_model(ckpt: Checkpoint) -> nn.Module:
    """The checkpoint's model in eval mode with what its training loss needs attached (class weights)."""
    model = ckpt.model.eval()
    cw = ckpt.manifest.get("class_weights")
    if cw is not None:
        model._tracin_class_weights = torch.as_tensor(cw, dtype=next(model.parameters()).dtype)
    return model


# ------------------------------------------------------------------------------------------ checkpoints
def load_run(run: str | Path | Sequence[Checkpoint | str | Path]) -> list[Checkpoint]:
    """A checkpoint series (a run folder of ``epoch_NNN`` or a list of checkpoints/paths), checked for TracIn:
    one model kind, a learning rate in every manifest."""
    if isinstance(run, (str, Path)):
        ckpts = [load_checkpoint(p) for p in list_series(run)]
    else:
        ckpts = [c if isinstance(c, Checkpoint) else load_checkpoint(c) for c in run]
    if not ckpts:
        raise InfluenceError("no checkpoints given; TracIn needs a series of saved epochs.")
    kinds = {c.kind for c in ckpts}
    if len(kinds) > 1:
        raise InfluenceError(f"the checkpoints mix model kinds {sorted(kinds)}; give one training run.")
    for c in ckpts:
        lr = c.manifest.get("learning_rate")
        if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
            raise InfluenceError(f"{c.path}: manifest has no usable 'learning_rate' ({lr!r}); TracIn weights each "
                                 "checkpoint by its epoch's learning rate — add it to the manifest.")
    return ckpts


def learning_rate(ckpt: Checkpoint) -> float:
    return float(ckpt.manifest["learning_rate"])


# ----------------------------------------------------------------------------- per-example gradients
def param_names(model: nn.Module, layers: Sequence[str] | str | None = None) -> list[str]:
    """Names of the trainable parameters selected by ``layers`` (name prefixes; ``None`` = all), model order."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if layers is None:
        return names
    if isinstance(layers, str):
        layers = [layers]
    chosen, unknown = set(), []
    for prefix in layers:
        hit = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not hit:
            unknown.append(prefix)
        chosen.update(hit)
    if unknown:
        raise InfluenceError(f"layers: {unknown} match no parameter; parameters are {names}.")
    return [n for n in names if n in chosen]


def _head_module(model: nn.Module, adapter: TaskAdapter) -> tuple[str, nn.Linear]:
    if adapter.head is None:
        adapter.features(model, None)  # raises the clear error
    if adapter.head == "net.-1":
        return f"net.{len(model.net) - 1}", model.net[-1]
    return adapter.head, model.get_submodule(adapter.head)


def head_names(model: nn.Module, adapter: TaskAdapter) -> list[str]:
    prefix, head = _head_module(model, adapter)
    return [f"{prefix}.{n}" for n, _ in head.named_parameters()]


def _flat(grads: dict[str, torch.Tensor], names: Sequence[str], batch: int) -> torch.Tensor:
    return torch.cat([grads[n].reshape(batch, -1) for n in names], 1)


def per_sample_grads_loop(adapter: TaskAdapter, model: nn.Module, x, y, names: Sequence[str]) -> torch.Tensor:
    """Reference: one forward/backward per example. (B, D) in the order of ``names``."""
    params = dict(model.named_parameters())
    rows = []
    for i in range(len(x)):
        loss = adapter.loss(model, x[i:i + 1], y[i:i + 1]).sum()
        g = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        rows.append(torch.cat([(gi if gi is not None else torch.zeros_like(params[n])).reshape(-1)
                               for gi, n in zip(g, names)]))
    return torch.stack(rows)


def per_sample_grads_vmap(adapter: TaskAdapter, model: nn.Module, x, y, names: Sequence[str]) -> torch.Tensor:
    """``torch.func.vmap(grad(loss))`` over the batch."""
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in model.named_parameters() if n in names}

    def one(p, xb, yb):
        out = functional_call(model, p, (xb[None],), strict=False)
        return adapter.output_loss(out, yb[None], model)[0]

    g = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    return _flat(g, names, len(x))


def per_sample_grads_last_layer(adapter: TaskAdapter, model: nn.Module, x, y, names=None) -> torch.Tensor:
    """Exact gradients of the final linear layer's weight and bias from one forward pass."""
    prefix, head = _head_module(model, adapter)
    with torch.no_grad():
        feats = adapter.features(model, x)
    hout = feats @ head.weight.detach().T
    if head.bias is not None:
        hout = hout + head.bias.detach()
    hout = hout.detach().requires_grad_(True)
    loss = adapter.output_loss(adapter.head_output(hout), y, model).sum()
    (delta,) = torch.autograd.grad(loss, hout)
    grads = {f"{prefix}.weight": torch.einsum("bo,bf->bof", delta, feats)}
    if head.bias is not None:
        grads[f"{prefix}.bias"] = delta
    names = names or list(grads)
    missing = [n for n in names if n not in grads]
    if missing:
        raise InfluenceError(f"the last-layer shortcut covers only {list(grads)}, not {missing}.")
    return _flat(grads, names, len(x))


def per_sample_grads_linear(adapter: TaskAdapter, model: nn.Module, x, y, names: Sequence[str]) -> torch.Tensor:
    """Networks whose parameters all belong to ``nn.Linear`` layers (the SST-QoI MLP): one batched backward to
    the gradient δ of every linear layer's output; then ∇W = δ ⊗ input and ∇b = δ per example (einsum)."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    owned = {f"{n}.{p}" for n, m in linears.items() for p, _ in m.named_parameters()}
    if not set(names) <= owned:
        return per_sample_grads_vmap(adapter, model, x, y, names)
    inputs, outputs = {}, {}
    owner = threading.get_ident()

    def hook(name):
        def fn(module, inp, out):
            # the model may be shared (the engine gives every session one copy): another thread's forward
            # passing through while the hooks are on must not overwrite this call's tensors
            if threading.get_ident() == owner:
                inputs[name], outputs[name] = inp[0].detach(), out
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
    try:
        with torch.enable_grad():
            loss = adapter.loss(model, x, y).sum()
    finally:
        for h in handles:
            h.remove()
    keys = list(outputs)
    deltas = dict(zip(keys, torch.autograd.grad(loss, [outputs[k] for k in keys])))
    grads = {}
    for n in keys:
        grads[f"{n}.weight"] = torch.einsum("bo,bi->boi", deltas[n], inputs[n])
        if linears[n].bias is not None:
            grads[f"{n}.bias"] = deltas[n]
    return _flat(grads, names, len(x))


def _probe_layer(lstm: nn.LSTM, layer: int, n_in: int) -> nn.LSTM:
    """A one-layer ``nn.LSTM`` equal to layer ``layer`` of ``lstm`` with 4H extra inputs wired to the gate
    pre-activations by an identity block: z_t = W_ih x_t + I p_t + W_hh h_{t−1} + b. Fed p_t = 0 it computes the
    same, and ∂loss/∂p_t = δz_t."""
    H = lstm.hidden_size
    w_ih = getattr(lstm, f"weight_ih_l{layer}").detach()
    cell = nn.LSTM(n_in + 4 * H, H, 1, bias=lstm.bias, batch_first=True).to(dtype=w_ih.dtype, device=w_ih.device)
    with torch.no_grad():
        cell.weight_ih_l0.copy_(torch.cat([w_ih, torch.eye(4 * H, dtype=w_ih.dtype, device=w_ih.device)], 1))
        cell.weight_hh_l0.copy_(getattr(lstm, f"weight_hh_l{layer}"))
        if lstm.bias:
            cell.bias_ih_l0.copy_(getattr(lstm, f"bias_ih_l{layer}"))
            cell.bias_hh_l0.copy_(getattr(lstm, f"bias_hh_l{layer}"))
    cell.requires_grad_(False)
    return cell


def per_sample_grads_lstm_probe(adapter: TaskAdapter, model: nn.Module, x, y, names: Sequence[str]) -> torch.Tensor:
    """HydroLSTM, small batches (fewer than :data:`LSTM_RECURSION_FROM` examples): one batched backward to every
    example's gate pre-activation gradients δz_t (B, T, 4H) per layer, then ∇W_ih = Σ_t δz_t ⊗ x_t,
    ∇W_hh = Σ_t δz_t ⊗ h_{t−1}, ∇b_ih = ∇b_hh = Σ_t δz_t (einsums).

    δz_t comes out of PyTorch's own fused LSTM kernels: each layer runs as an ``nn.LSTM`` with 4H zero "probe"
    inputs wired to its gate pre-activations (:func:`_probe_layer`), and the gradient of the summed per-example
    losses with respect to the probes is δz. Only activations are differentiated, never the weights."""
    lstm = model.lstm
    if model.training:
        raise InfluenceError("the model is in training mode (dropout); call model.eval() first.")
    H, L = lstm.hidden_size, lstm.num_layers
    B, T = x.shape[0], x.shape[1]
    layer_in = x
    saved = []
    for layer in range(L):
        probe = x.new_zeros(B, T, 4 * H, requires_grad=True)
        cell = _probe_layer(lstm, layer, layer_in.shape[-1])
        out, _ = cell(torch.cat([layer_in, probe], -1))
        saved.append((probe, layer_in, out))
        layer_in = out
    feats = layer_in[:, -1]
    head = model.head
    hout = head(feats)
    hout.retain_grad()
    adapter.output_loss(adapter.head_output(hout), y, model).sum().backward()
    grads: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for layer, (probe, inp, out) in enumerate(saved):
            dz = probe.grad
            h_prev = torch.cat([out.new_zeros(B, 1, H), out[:, :-1]], 1)
            grads[f"lstm.weight_ih_l{layer}"] = torch.einsum("btg,bti->bgi", dz, inp.detach())
            grads[f"lstm.weight_hh_l{layer}"] = torch.einsum("btg,bth->bgh", dz, h_prev)
            if lstm.bias:
                db = dz.sum(1)
                grads[f"lstm.bias_ih_l{layer}"] = db
                grads[f"lstm.bias_hh_l{layer}"] = db
        delta = hout.grad
        grads["head.weight"] = torch.einsum("bo,bf->bof", delta, feats.detach())
        if head.bias is not None:
            grads["head.bias"] = delta
    return _flat(grads, names, B)


LSTM_RECURSION_FROM = 24     # batch size from which the backward recursion beats the probe route (measured on a CPU)


def _lstm_layer_gates(lstm: nn.LSTM, layer: int, inp: torch.Tensor):
    """Layer ``layer`` of ``lstm`` on time-major ``inp`` (T, B, n_in), from zero states: h (T, B, H) from PyTorch's
    fused kernel, then the gates from one matrix product over all steps — S = σ(z) of i, f, o (T, B, 3H),
    G = tanh(z) of g (T, B, H) — and c (T, B, H) from c_t = f_t c_{t−1} + i_t g_t by an associative scan.
    ``operand`` (T, B, n_in + H + 1) is [x_t, h_{t−1}, 1], reused for the weight gradients."""
    from xaiscope.core.states import _scan_

    T, B, n_in = inp.shape
    H = lstm.hidden_size
    keys = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if lstm.bias else ("weight_ih", "weight_hh")
    w = [getattr(lstm, f"{k}_l{layer}").detach() for k in keys]
    zeros = inp.new_zeros(1, B, H)
    with warnings.catch_warnings():   # on CUDA: one layer's weights are not a whole cuDNN buffer (small; copied)
        warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous chunk")
        h = torch.lstm(inp.contiguous(), (zeros, zeros), w, lstm.bias, 1, 0.0, False, False, False)[0]
    operand = inp.new_empty(T, B, n_in + H + 1)
    operand[..., :n_in] = inp
    operand[0, :, n_in:n_in + H] = 0
    operand[1:, :, n_in:n_in + H] = h[:-1]
    operand[..., -1] = 1
    bias = (w[2] + w[3]) if lstm.bias else w[0].new_zeros(4 * H)
    matrix = torch.cat([w[0], w[1], bias.unsqueeze(1)], 1)                 # rows: gates i, f, g, o
    flat = operand.view(T * B, -1)
    S = (flat @ torch.cat([matrix[:2 * H], matrix[3 * H:]]).T).view(T, B, 3 * H).sigmoid_()
    G = (flat @ matrix[2 * H:3 * H].T).view(T, B, H).tanh_()
    c = S[..., :H] * G
    _scan_(S[..., H:2 * H], c)
    return h, operand, S, G, c, w


def per_sample_grads_lstm(adapter: TaskAdapter, model: nn.Module, x, y, names: Sequence[str]) -> torch.Tensor:
    """HydroLSTM: every example's gate pre-activation gradients δz_t (B, T, 4H) per layer by the LSTM's own
    backward recursion, batched over examples, then ∇[W_ih, W_hh, b] = Σ_t δz_t ⊗ [x_t, h_{t−1}, 1] (one batched
    matrix product per layer); ∇b_ih = ∇b_hh.

    Forward: PyTorch's fused LSTM kernel gives h; the gates and c follow from one matrix product and a scan
    (:func:`_lstm_layer_gates`). Backward, for t = T−1 … 0 (d· = ∂loss/∂·, ⊙ elementwise):
    dh_t = e_t + W_hhᵀ δz_{t+1}, dc_t = dh_t ⊙ o_t (1 − tanh² c_t) + dc_{t+1} ⊙ f_{t+1},
    δz_t = [dc_t ⊙ g_t i_t(1−i_t), dc_t ⊙ c_{t−1} f_t(1−f_t), dc_t ⊙ i_t(1−g_t²), dh_t ⊙ tanh(c_t) o_t(1−o_t)],
    with e_t the gradient from the layer above (W_ihᵀ δz_t of that layer; for the top layer the head's, at the
    last step only). The factors after dc_t and dh_t are computed for all steps at once; the loop over t does one
    small matrix product and four elementwise products per step. No autograd graph through the LSTM at all.

    Batches of fewer than :data:`LSTM_RECURSION_FROM` examples (a handful of test predictions) go through
    :func:`per_sample_grads_lstm_probe` instead, where the per-step Python loop would cost more than PyTorch's
    fused backward."""
    lstm = model.lstm
    if model.training:
        raise InfluenceError("the model is in training mode (dropout); call model.eval() first.")
    if len(x) < LSTM_RECURSION_FROM:
        return per_sample_grads_lstm_probe(adapter, model, x, y, names)
    from xaiscope.core.device import exact_math

    H, L = lstm.hidden_size, lstm.num_layers
    B, T = x.shape[0], x.shape[1]
    saved = []
    with torch.no_grad(), exact_math():
        inp = x.detach().transpose(0, 1)                                # time-major
        for layer in range(L):
            h, *rest = _lstm_layer_gates(lstm, layer, inp)
            saved.append(rest)
            inp = h
        feats = h[-1]
        head = model.head
        hout = feats @ head.weight.detach().T
        if head.bias is not None:
            hout = hout + head.bias.detach()
    hout = hout.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = adapter.output_loss(adapter.head_output(hout), y, model).sum()
        (delta,) = torch.autograd.grad(loss, hout)
    grads: dict[str, torch.Tensor] = {"head.weight": torch.einsum("bo,bf->bof", delta, feats)}
    if head.bias is not None:
        grads["head.bias"] = delta
    with torch.no_grad():
        ext = None                                   # gradient from the layer above, (T, B, H)
        for layer in range(L - 1, -1, -1):
            operand, S, G, c, w = saved[layer]
            i, f, o = S[..., :H], S[..., H:2 * H], S[..., 2 * H:]
            dS = S * (1 - S)
            tc = c.tanh()
            K = x.new_empty(T, B, 4, H)                   # δz_t = K_t ⊙ [dc_t, dc_t, dc_t, dh_t]
            torch.mul(G, dS[..., :H], out=K[:, :, 0])
            K[0, :, 1] = 0
            torch.mul(c[:-1], dS[1:, :, H:2 * H], out=K[1:, :, 1])
            torch.mul(G, G, out=K[:, :, 2]).neg_().add_(1).mul_(i)
            torch.mul(tc, dS[..., 2 * H:], out=K[:, :, 3])
            A = tc.mul_(tc).neg_().add_(1).mul_(o)        # o_t (1 − tanh² c_t)
            dz = x.new_empty(T, B, 4, H)
            dz2 = dz.view(T, B, 4 * H)
            w_hh = w[1]
            dh = delta @ head.weight.detach() if ext is None else ext[T - 1]
            dc = dh * A[T - 1]
            for t in range(T - 1, -1, -1):
                if t < T - 1:
                    dh = torch.mm(dz2[t + 1], w_hh) if ext is None else torch.addmm(ext[t], dz2[t + 1], w_hh)
                    dc = torch.addcmul(dh * A[t], dc, f[t + 1])
                torch.mul(K[t, :, :3], dc.unsqueeze(1), out=dz[t, :, :3])
                torch.mul(K[t, :, 3], dh, out=dz[t, :, 3])
            gw = torch.bmm(dz2.permute(1, 2, 0), operand.transpose(0, 1))    # (B, 4H, n_in + H + 1)
            n_in = operand.shape[-1] - H - 1
            grads[f"lstm.weight_ih_l{layer}"] = gw[:, :, :n_in]
            grads[f"lstm.weight_hh_l{layer}"] = gw[:, :, n_in:n_in + H]
            if lstm.bias:
                grads[f"lstm.bias_ih_l{layer}"] = gw[:, :, -1]
                grads[f"lstm.bias_hh_l{layer}"] = gw[:, :, -1]
            if layer > 0:
                ext = (dz2.view(T * B, 4 * H) @ w[0]).view(T, B, H)
    return _flat(grads, names, B)


ROUTES: dict[str, Callable] = {"loop": per_sample_grads_loop, "vmap": per_sample_grads_vmap,
                               "linear": per_sample_grads_linear,
                               "lstm": per_sample_grads_lstm, "last_layer": per_sample_grads_last_layer}


def per_sample_grads(adapter: TaskAdapter, model: nn.Module, x, y, names: Sequence[str] | None = None,
                     route: str | None = None) -> torch.Tensor:
    """Per-example loss gradients (B, D) over ``names`` (default all parameters), by the adapter's route."""
    names = list(names or param_names(model))
    route = route or adapter.route
    if route not in ROUTES:
        raise InfluenceError(f"route: {route!r} is not one of {sorted(ROUTES)}.")
    if route != "last_layer" and set(names) <= set(head_names(model, adapter) if adapter.head else []):
        route = "last_layer"  # exact and cheaper: no backward through the body
    return ROUTES[route](adapter, model, x, y, names)


# ------------------------------------------------------------------------------------------ embeddings
PROJECTION_CACHE_ITEM_BYTES = 16 << 20   # projections up to this size are kept (at most 16 of them)


def _draw_projection(dim_in: int, dim: int, seed: int, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(dim_in, dim, generator=g, dtype=torch.float64).div_(math.sqrt(dim)).to(dtype)


_kept_projection = functools.lru_cache(maxsize=16)(_draw_projection)


def _projection(dim_in: int, dim: int, seed: int, dtype) -> torch.Tensor:
    """The Gaussian projection (dim_in × dim, N(0, 1/dim)) of one seed. Small ones (≤ 16 MiB) are drawn once per
    process and kept — a query would otherwise draw them again for every test example; read-only: never modify
    the result. Larger ones are drawn on each call (memory stays bounded)."""
    if int(dim_in) * int(dim) * 8 <= PROJECTION_CACHE_ITEM_BYTES:
        return _kept_projection(int(dim_in), int(dim), int(seed), dtype)
    return _draw_projection(dim_in, dim, seed, dtype)


def _as_tensor(a, dtype):
    if isinstance(a, torch.Tensor):
        return a
    a = np.asarray(a)
    return torch.as_tensor(a) if a.dtype.kind in "iu" else torch.as_tensor(a, dtype=dtype)


@dataclass
class EmbeddingSpec:
    """What an embedding is: method, selected parameters, projection dimension and seed."""

    method: str = "exact"
    layers: list[str] | None = None
    dim: int = 128
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise InfluenceError(f"method: {self.method!r} is not one of {METHODS}.")
        if self.method == "projection" and (int(self.dim) != self.dim or self.dim < 1):
            raise InfluenceError(f"dim: {self.dim!r} must be a positive whole number (the projection dimension).")
        if isinstance(self.layers, str):
            self.layers = [self.layers]

    @property
    def exact(self) -> bool:
        return self.method != "projection"

    @property
    def label(self) -> str:
        if self.method == "projection":
            return f"approximate (random projection, k={self.dim}, seed={self.seed})"
        if self.method == "last_layer":
            return "exact (last layer only)"
        return "exact" + (f" ({', '.join(self.layers)})" if self.layers else " (all parameters)")


def _model_on(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` itself on its own device, else a copy on ``device`` (a shared model is never moved)."""
    if next(model.parameters()).device == device:
        return model
    moved = copy.deepcopy(model).to(device)
    for mod in moved.modules():
        if isinstance(mod, nn.RNNBase):
            mod.flatten_parameters()       # cuDNN reads an LSTM's weights from one contiguous buffer
    cw = getattr(model, "_tracin_class_weights", None)
    if cw is not None:
        moved._tracin_class_weights = cw.to(device)
    return moved


def embed(ckpts: Sequence[Checkpoint], x, y, spec: EmbeddingSpec | None = None, adapter: TaskAdapter | None = None,
          batch_size: int | None = None, out: np.ndarray | None = None, progress: Callable[[int, int], None] | None = None,
          device: str | torch.device | None = None) -> np.ndarray:
    """TracIn embeddings (N, Σ_c D_c): per checkpoint √η_c × per-example gradient (or its projection).

    ``e(z) · e(z')`` is the TracInCP score. ``out`` may be a (memory-mapped) array to fill. ``device``: where the
    gradients are computed (``None``: the CPU; ``"auto"``, ``"cuda"``, … as :func:`~xaiscope.core.device.
    choose_device` reads them; the checkpoints' models are copied there, float32 math stays exact — no TF32); on
    a GPU the default batch is the adapter's ``device_batch_size``. The result is a float32 NumPy array either way.
    """
    from xaiscope.core.device import exact_math

    spec = spec or EmbeddingSpec()
    adapter = adapter or get_adapter(ckpts[0].kind)
    device = torch.device("cpu") if device is None else choose_device(device)
    batch_size = int(batch_size or adapter.batch_size_on(device))
    n = len(x)
    blocks, total = [], 0
    for c in ckpts:
        model = _model_on(prepare_model(c), device)
        names = head_names(model, adapter) if spec.method == "last_layer" else param_names(model, spec.layers)
        d = sum(dict(model.named_parameters())[k].numel() for k in names)
        blocks.append((c, model, names, d))
        total += spec.dim if spec.method == "projection" else d
    if out is None:
        out = np.empty((n, total), dtype=np.float32)
    elif out.shape != (n, total):
        raise InfluenceError(f"out has shape {out.shape}, the embeddings need {(n, total)}.")
    col = 0
    steps, done = len(ckpts) * max(1, math.ceil(n / batch_size)), 0
    for ci, (c, model, names, d) in enumerate(blocks):
        dtype = next(model.parameters()).dtype
        scale = math.sqrt(learning_rate(c))
        proj = _projection(d, spec.dim, spec.seed + ci, dtype) if spec.method == "projection" else None
        if proj is not None:
            proj = proj.to(device)
        width = spec.dim if proj is not None else d
        route = "last_layer" if spec.method == "last_layer" else None
        for s in range(0, n, batch_size):
            xb, yb = _as_tensor(x[s:s + batch_size], dtype), _as_tensor(y[s:s + batch_size], dtype)
            with exact_math():
                g = per_sample_grads(adapter, model, xb.to(device), yb.to(device), names, route).detach()
            if proj is not None:
                g = g @ proj
            else:
                g = g.clone() if g._base is not None else g   # a view of a model tensor: never scale in place
            out[s:s + len(xb), col:col + width] = g.mul_(scale).cpu().numpy()
            done += 1
            if progress:
                progress(done, steps)
        col += width
    return out


@dataclass
class InfluenceResult:
    """TracIn scores (n_test, n_train) and what they are."""

    scores: np.ndarray
    method: str
    exact: bool
    label: str
    checkpoints: list[str]
    learning_rates: list[float]

    def top_k(self, test: int = 0, k: int = 10) -> "TopK":
        return top_k(self.scores[test], k)


@dataclass
class TopK:
    proponents: np.ndarray        # training indices, largest score first
    proponent_scores: np.ndarray
    opponents: np.ndarray         # training indices, most negative first
    opponent_scores: np.ndarray


def _settle(row: np.ndarray, cand: np.ndarray, k: int, labels: np.ndarray, high: bool) -> np.ndarray:
    """The k winners among ``cand`` (positions in ``row``) in order — largest (``high``) or smallest score first,
    equal scores by label — with ties across the k-th place resolved the same way: the lowest labels win."""
    vals = row[cand]
    t = vals.min() if high else vals.max()
    if np.count_nonzero(row == t) != np.count_nonzero(vals == t):    # a tie crosses the k-th place
        strict = np.flatnonzero(row > t) if high else np.flatnonzero(row < t)
        tied = np.flatnonzero(row == t)
        cand = np.concatenate([strict, tied[np.argsort(labels[tied], kind="stable")][:k - len(strict)]])
    return cand[np.lexsort((labels[cand], -row[cand] if high else row[cand]))]


def _top_k_indices(scores: np.ndarray, k: int, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the ``k`` largest and ``k`` smallest entries along the last axis, each sorted (largest first /
    most negative first; equal scores by ``labels``, default the positions — so the result does not depend on
    how the scores were laid out). One ``argpartition`` pass with both pivots (linear time, no negated copy),
    then only the winners are sorted."""
    s2 = np.asarray(scores).reshape(-1, scores.shape[-1])
    n = s2.shape[-1]
    labels = np.arange(n) if labels is None else np.asarray(labels)
    if 2 * k <= n:
        part = np.argpartition(s2, (k - 1, n - k), axis=-1)
        lo, hi = part[:, :k], part[:, n - k:]
    else:
        lo = hi = np.broadcast_to(np.arange(n), s2.shape)
    his = np.stack([_settle(r, c, k, labels, True)[:k] for r, c in zip(s2, hi)])
    los = np.stack([_settle(r, c, k, labels, False)[:k] for r, c in zip(s2, lo)])
    return his.reshape(*scores.shape[:-1], k), los.reshape(*scores.shape[:-1], k)


def top_k(scores: np.ndarray, k: int = 10) -> TopK:
    """The ``k`` largest (proponents) and ``k`` most negative (opponents) scores of one test example (equal scores:
    the lower training index first). One ``argpartition`` (linear time) finds both ends; only the k winners of
    each are sorted."""
    scores = np.asarray(scores)
    k = int(min(k, scores.size))
    if k < 1:
        raise InfluenceError("k must be ≥ 1 and the training set non-empty.")
    hi, lo = _top_k_indices(scores.reshape(-1), k)
    return TopK(hi, scores[hi], lo, scores[lo])


def top_k_rows(scores: np.ndarray, k: int = 10, labels: np.ndarray | None = None) -> list[TopK]:
    """:func:`top_k` of every row of a score matrix (n_test, n_train), all rows in one ``argpartition``.
    ``labels``: the training index of each column (default the column number); the result holds labels."""
    scores = np.atleast_2d(np.asarray(scores))
    k = int(min(k, scores.shape[1]))
    if k < 1:
        raise InfluenceError("k must be ≥ 1 and the training set non-empty.")
    hi, lo = _top_k_indices(scores, k, labels)
    lab = (lambda i: i) if labels is None else (lambda i: np.asarray(labels)[i])
    return [TopK(lab(h), row[h], lab(lo_), row[lo_]) for h, lo_, row in zip(hi, lo, scores)]


QUERY_BLOCK_BYTES = 8 << 20      # training rows per block of the score product: ~8 MiB of embeddings (cache-sized)


def score_product(test_embeddings: np.ndarray, train_embeddings: np.ndarray, out: np.ndarray | None = None
                  ) -> np.ndarray:
    """TracIn scores ``test @ trainᵀ`` (n_test, N) in float32, exact: one BLAS ``sgemv`` for a single test
    embedding (reads the training embeddings once, at memory speed), else one ``sgemm`` per block of training
    rows sized for the cache, written into ``out``. No float64, no copy of the training embeddings (a
    memory-mapped array is read block by block)."""
    q = np.ascontiguousarray(np.atleast_2d(test_embeddings), dtype=np.float32)
    E = train_embeddings
    n, d = E.shape
    if q.shape[1] != d:
        raise InfluenceError(f"test embeddings have {q.shape[1]} columns, the training embeddings {d}.")
    if out is None:
        out = np.empty((len(q), n), dtype=np.float32)
    if E.dtype != np.float32:
        E = np.asarray(E, dtype=np.float32)
    if len(q) == 1:
        np.matmul(E, q[0], out=out[0])
        return out
    rows = int(min(max(64, QUERY_BLOCK_BYTES // (4 * max(d, 1))), 1 << 16))
    for s in range(0, n, rows):
        np.matmul(q, E[s:s + rows].T, out=out[:, s:s + rows])
    return out


def query(test_embeddings: np.ndarray, train_embeddings: np.ndarray, k: int = 10,
          sq_norms: np.ndarray | None = None, order: np.ndarray | None = None) -> list[TopK]:
    """Top-k proponents/opponents of each test embedding against stored training embeddings, exact.

    Without ``sq_norms``: the float32 score product with every training row (:func:`score_product`) plus one
    ``argpartition``. With ``sq_norms`` (‖e‖² of every training row, i.e. the self-influence; ``order``: the rows
    by decreasing norm, computed when not given) the same top-k from fewer rows, certified: the rows are scored
    in decreasing order of norm, and as soon as Cauchy–Schwarz (|q · e| ≤ ‖q‖ ‖e‖) shows that no row left can
    reach the k-th proponent or opponent score of any test embedding, the rest is skipped (:func:`pruned_query`
    has the details)."""
    if sq_norms is None:
        return top_k_rows(score_product(test_embeddings, train_embeddings), k)
    return pruned_query(test_embeddings, train_embeddings, sq_norms, k, order)


PRUNE_STEPS = (1 / 64,) * 16   # fractions of the training rows scored before each bound check (a quarter in all)
PRUNE_MARGIN = 4e-3        # least relative slack of the bound for float32 round-off (worst case d·2⁻²⁴ ‖q‖‖e‖; 2× that when larger)


def norm_order(sq_norms: np.ndarray) -> np.ndarray:
    """Training rows by decreasing norm (the order :func:`pruned_query` scores them in)."""
    return np.argsort(-np.asarray(sq_norms, dtype=np.float64), kind="stable")


def pruned_query(test_embeddings: np.ndarray, train_embeddings: np.ndarray, sq_norms: np.ndarray, k: int = 10,
                 order: np.ndarray | None = None, stats: dict | None = None) -> list[TopK]:
    """The exact top-k of :func:`query` without scoring every training row.

    Training gradient norms are heavy-tailed (on the hydrology LSTM the largest is ~1,600× the median), and a row
    e can only be a top-k proponent or opponent of q if ‖q‖ ‖e‖ ≥ |q · e| exceeds the k-th score found so far.
    So the rows are scored in decreasing order of norm, in blocks of 1/64 of them (:data:`PRUNE_STEPS`; each
    gathered into one contiguous block, one ``sgemm``); after each block, if ‖q‖ × the largest norm left (plus
    :data:`PRUNE_MARGIN` for float32 round-off) is below both the k-th largest score and minus the k-th smallest
    of every test embedding, no unscored row can enter any top-k and the query stops. Where the bound does not
    prune within a quarter of the rows (norms of similar size, e.g. random projections), every row is scored as
    in the plain query (at most 1.25× its work). The result — indices and float32 scores — is the one
    :func:`query` gives without ``sq_norms`` (test). ``stats``, a dict, gets ``rows_scored`` (how many distinct
    training rows were scored)."""
    q = np.ascontiguousarray(np.atleast_2d(test_embeddings), dtype=np.float32)
    E = train_embeddings
    n, d = E.shape
    if q.shape[1] != d:
        raise InfluenceError(f"test embeddings have {q.shape[1]} columns, the training embeddings {d}.")
    sq = np.asarray(sq_norms, dtype=np.float64)
    if sq.shape != (n,):
        raise InfluenceError(f"sq_norms has shape {sq.shape}, the training embeddings have {n} rows.")
    k = int(min(k, n))
    if k < 1:
        raise InfluenceError("k must be ≥ 1 and the training set non-empty.")
    order = norm_order(sq) if order is None else np.asarray(order)
    qn = np.linalg.norm(q.astype(np.float64), axis=1)
    norms = np.sqrt(np.maximum(sq, 0.0))
    if E.dtype != np.float32:
        E = np.asarray(E, dtype=np.float32)
    margin = max(PRUNE_MARGIN, 2.0 * d * 2.0 ** -24)
    stats = stats if stats is not None else {}
    idx, scores = np.empty(0, dtype=np.intp), np.empty((len(q), 0), dtype=np.float32)   # the rows scored so far
    for frac in PRUNE_STEPS:
        stop = min(n, len(idx) + max(int(math.ceil(frac * n)), 4 * k, 64))
        rows = np.sort(order[len(idx):stop])       # ascending: the gather reads memory in order
        idx = np.concatenate([idx, rows])
        scores = np.concatenate([scores, q @ np.take(E, rows, axis=0).T], axis=1)
        if stop >= n:
            stats["rows_scored"] = n
            return top_k_rows(scores, k, labels=idx)
        if len(idx) >= k:
            part = np.partition(scores, (k - 1, len(idx) - k), axis=1)
            kth_low, kth_high = part[:, k - 1].astype(np.float64), part[:, len(idx) - k].astype(np.float64)
            bound = qn * norms[order[stop]] * (1 + margin)
            if np.all((bound < kth_high) & (bound < -kth_low)):
                stats["rows_scored"] = stop
                return top_k_rows(scores, k, labels=idx)
    stats["rows_scored"] = n
    return top_k_rows(score_product(q, E), k)


def project_embeddings(embeddings: np.ndarray, n_checkpoints: int, dim: int = 128, seed: int = 0,
                       rows: int = 4096) -> np.ndarray:
    """Random projections (method ``"projection"``) of exact all-parameter embeddings: checkpoint block c
    (equal widths, one series) times the same Gaussian matrix :func:`embed` uses, seed ``seed + c``. Equal to
    ``embed(..., EmbeddingSpec("projection", None, dim, seed))`` up to float rounding (the √η scale commutes with
    the projection), without recomputing any gradient. Approximate, like every projection."""
    n, d_all = embeddings.shape
    if d_all % int(n_checkpoints):
        raise InfluenceError(f"{d_all} columns do not split into {n_checkpoints} equal checkpoint blocks.")
    d = d_all // int(n_checkpoints)
    out = np.empty((n, int(n_checkpoints) * int(dim)), dtype=np.float32)
    for c in range(int(n_checkpoints)):
        p = _projection(d, int(dim), seed + c, torch.float32).numpy()
        for s in range(0, n, rows):
            np.matmul(np.asarray(embeddings[s:s + rows, c * d:(c + 1) * d], dtype=np.float32), p,
                      out=out[s:s + rows, c * dim:(c + 1) * dim])
    return out


def tracin(run, train: Examples | tuple, test: Examples | tuple, method: str = "exact", layers=None, dim: int = 128,
           seed: int = 0, batch_size: int | None = None) -> InfluenceResult:
    """TracInCP scores of every training example on every test example (n_test, n_train).

    The test embeddings are computed first; the training embeddings then one chunk at a time, each multiplied
    into the scores and dropped (memory stays at one chunk, whatever the number of training examples)."""
    ckpts = load_run(run)
    spec = EmbeddingSpec(method, layers, dim, seed)
    adapter = get_adapter(ckpts[0].kind)
    tx, ty = (train.x, train.y) if isinstance(train, Examples) else train
    qx, qy = (test.x, test.y) if isinstance(test, Examples) else test
    e_test = embed(ckpts, qx, qy, spec, adapter, batch_size=batch_size).astype(np.float64)
    scores = np.empty((len(e_test), len(tx)))
    rows = int(batch_size or adapter.batch_size) * max(1, DEFAULT_CHUNK_ROWS // int(batch_size or adapter.batch_size))
    for s in range(0, len(tx), rows):
        e = embed(ckpts, tx[s:s + rows], ty[s:s + rows], spec, adapter, batch_size=batch_size)
        scores[:, s:s + len(e)] = e_test @ e.astype(np.float64).T
    return InfluenceResult(scores, method, spec.exact, spec.label, [c.sha256 for c in ckpts],
                           [learning_rate(c) for c in ckpts])


def self_influence(run, train: Examples | tuple, method: str = "exact", layers=None, dim: int = 128, seed: int = 0,
                   batch_size: int | None = None) -> np.ndarray:
    """TracIn(z, z) = Σ_c η_c ‖∇ℓ(θ_c, z)‖² for every training example (N,)."""
    ckpts = load_run(run)
    tx, ty = (train.x, train.y) if isinstance(train, Examples) else train
    e = embed(ckpts, tx, ty, EmbeddingSpec(method, layers, dim, seed), batch_size=batch_size)
    return np.einsum("nd,nd->n", e.astype(np.float64), e.astype(np.float64))


# ---------------------------------------------------------------------------------------------- stores
ZARR_FORMAT = 2                       # format 1: train_embeddings.npy + influence.json (still readable)
ZARR_ARRAY = "train_embeddings"
ZARR_ATTR = "xaiscope_influence"
DEFAULT_CHUNK_ROWS = 1024


def _is_url(path) -> bool:
    return isinstance(path, str) and "://" in path


def _store_location(path) -> str | Path:
    """A URL as given; a local path made absolute (Dask workers elsewhere write to the same name)."""
    return path if _is_url(path) else Path(path).expanduser().absolute()


def _need_zarr():
    try:
        import zarr
    except ImportError as err:
        raise InfluenceError("Zarr influence stores (and Dask precomputation) need the `zarr` package, version 3 "
                             "(Python ≥ 3.11): pip install 'zarr>=3'; or write a NumPy store with "
                             "store_format='npy'.") from err
    return zarr


def zarr_available() -> bool:
    """Whether Zarr 3 can be imported (it needs Python ≥ 3.11); without it stores are written in the NumPy form."""
    try:
        import zarr
    except ImportError:
        return False
    return int(zarr.__version__.split(".")[0]) >= 3


def _open_zarr_group(location, mode: str = "r"):
    zarr = _need_zarr()
    try:
        return zarr.open_group(str(location), mode=mode)
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.BaseZarrError):
        return None


class InfluenceStore:
    """Training embeddings on disk with what they are: the checkpoints (path, sha256, learning rate), the
    embedding spec, the data they came from and the training examples' index.

    Two formats, detected when opened: a Zarr group (``zarr.json``; array ``train_embeddings`` written in row
    chunks, possibly by several Dask workers; the description in its attributes under ``xaiscope_influence``),
    local or at an fsspec URL (``s3://…``); or the older NumPy form (``train_embeddings.npy``, memory-mapped, and
    ``influence.json``). ``embeddings`` is an (N, D) float32 NumPy array either way (a Zarr store is read into
    memory once, at first use)."""

    def __init__(self, path: str | Path):
        self.path = _store_location(path)
        self._embeddings = None
        self._sq_norms = self._order = None
        self._lock = threading.Lock()
        self._zarr = None
        if not _is_url(self.path) and (self.path / META_FILE).exists():
            self.format = "npy"
            self.meta = json.loads((self.path / META_FILE).read_text())
            self._embeddings = np.load(self.path / EMBEDDINGS_FILE, mmap_mode="r")
        else:
            group = None
            if _is_url(self.path) or (self.path / "zarr.json").exists():
                group = _open_zarr_group(self.path, "r")
            meta = dict(group.attrs).get(ZARR_ATTR) if group is not None else None
            if meta is None or ZARR_ARRAY not in group:
                raise InfluenceError(f"{self.path}: neither {META_FILE} nor a Zarr group with {ZARR_ATTR!r} "
                                     "attributes; this is not an influence store. Create one with `xaiscope "
                                     "precompute influence` or xaiscope.core.influence.precompute_store.")
            if not meta.get("complete"):
                raise InfluenceError(f"{self.path}: incomplete influence store — its computation stopped before "
                                     "every chunk was written. Run `xaiscope precompute influence` again.")
            self.format = "zarr"
            self.meta = meta
            self._zarr = group[ZARR_ARRAY]
        self.spec = EmbeddingSpec(**self.meta["spec"])
        self.index = np.asarray(self.meta.get("index", []), dtype="datetime64[ns]") \
            if self.meta.get("index_kind") == "datetime" else np.asarray(self.meta.get("index", []))

    @property
    def embeddings(self) -> np.ndarray:
        """(N, D) float32 training embeddings (memory-mapped for NumPy stores, read once for Zarr stores)."""
        if self._embeddings is None:
            arr = np.asarray(self._zarr[...], dtype=np.float32)
            arr.flags.writeable = False
            self._embeddings = arr
        return self._embeddings

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self._zarr.shape) if self._embeddings is None else self._embeddings.shape

    @property
    def checkpoint_hashes(self) -> list[str]:
        return [c["sha256"] for c in self.meta["checkpoints"]]

    def check(self, ckpts: Sequence[Checkpoint]) -> None:
        """Raise :class:`StaleStoreError` unless ``ckpts`` are exactly the checkpoints the store was built from."""
        have = [c.sha256 for c in ckpts]
        if have != self.checkpoint_hashes:
            bad = [str(c.path) for c, h in zip(ckpts, self.checkpoint_hashes) if c.sha256 != h]
            raise StaleStoreError(
                f"{self.path}: stale influence store — it was computed from {len(self.checkpoint_hashes)} "
                f"checkpoint(s) with other weights (differing: {bad or 'the number of checkpoints'}). Recompute it "
                "with `xaiscope precompute influence` for these checkpoints.")

    def checkpoints(self) -> list[Checkpoint]:
        ckpts = load_run([c["path"] for c in self.meta["checkpoints"]])
        self.check(ckpts)
        return ckpts

    def self_influence(self) -> np.ndarray:
        """‖e(z)‖² of every training example (N,), in float64, a block of rows at a time (no float64 copy of
        the whole store); computed once per store object (a copy is returned)."""
        return self._norms()[0].copy()

    def _norms(self) -> tuple[np.ndarray, np.ndarray]:
        """(‖e‖² of every row, the rows by decreasing norm), computed at first use and kept."""
        with self._lock:
            if self._sq_norms is None:
                e = self.embeddings
                out = np.empty(len(e))
                rows = max(1, (16 << 20) // (8 * max(e.shape[1], 1)))
                for s in range(0, len(e), rows):
                    b = np.asarray(e[s:s + rows], dtype=np.float64)
                    out[s:s + len(b)] = np.einsum("nd,nd->n", b, b)
                out.flags.writeable = False
                self._order = norm_order(out)
                self._sq_norms = out
            return self._sq_norms, self._order

    def scores(self, test_embeddings: np.ndarray) -> np.ndarray:
        """Scores (n_test, N) float32 of test embeddings against the stored training embeddings (exact product,
        :func:`score_product`)."""
        return score_product(test_embeddings, self.embeddings)

    def query(self, test_embeddings: np.ndarray, k: int = 10, prune: bool = True, stats: dict | None = None
              ) -> list[TopK]:
        """Top-k proponents/opponents of each test embedding, exact: a matrix product plus top-k, over only the
        rows that can be in a top-k (``prune``, :func:`pruned_query`; the rows' norms are computed at the first
        query and kept) or over all of them."""
        if not prune:
            return top_k_rows(self.scores(test_embeddings), k)
        sq, order = self._norms()
        return pruned_query(test_embeddings, self.embeddings, sq, k, order, stats)

    def embed_test(self, x, y, ckpts: Sequence[Checkpoint] | None = None, device=None) -> np.ndarray:
        """Embeddings of test examples as the store's were made (same method, layers, projection, checkpoints)."""
        ckpts = ckpts or self.checkpoints()
        self.check(ckpts)
        return embed(ckpts, x, y, self.spec, device=device)


def _sha256_arrays(*arrays) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    return h.hexdigest()


def _data_key(data) -> str:
    if data is None:
        return "demo"
    if isinstance(data, (str, Path)):
        s = str(data)
        return s if s == "demo" or _is_url(s) or s.startswith("synthetic") else str(Path(s).expanduser().resolve())
    return f"in-memory {type(data).__name__}"


def _store_meta(ckpts, spec: EmbeddingSpec, train: Examples, data, store_format: str, chunk_rows: int | None,
                dim_total: int) -> dict:
    idx = np.asarray(train.index)
    is_dt = np.issubdtype(idx.dtype, np.datetime64)
    meta = {
        "format": ZARR_FORMAT if store_format == "zarr" else STORE_FORMAT, "kind": ckpts[0].kind,
        "spec": {"method": spec.method, "layers": spec.layers, "dim": spec.dim, "seed": spec.seed},
        "label": spec.label, "exact": spec.exact,
        "checkpoints": [{"path": str(Path(c.path).resolve()), "sha256": c.sha256, "learning_rate": learning_rate(c),
                         "epoch": c.manifest.get("epoch")} for c in ckpts],
        "data": _data_key(data), "train_sha256": _sha256_arrays(train.x, train.y),
        "n_train": len(train), "n_columns": int(dim_total), "index_label": train.label,
        "index_kind": "datetime" if is_dt else "other",
        "index": [str(v) for v in idx.astype("datetime64[ns]")] if is_dt else idx.tolist(),
    }
    if store_format == "zarr":
        meta.update({"chunk_rows": int(chunk_rows), "complete": False})
    return meta


def _prepare_out(out) -> None:
    """Make ``out`` ready for a new store: create it, or clear an existing influence store; refuse a folder that
    holds anything else."""
    if _is_url(out):
        return
    if out.exists() and not out.is_dir():
        raise InfluenceError(f"{out}: exists and is not a folder; give a folder for the influence store.")
    if out.is_dir() and any(out.iterdir()):
        old = (out / META_FILE).exists() or ((out / "zarr.json").exists() and ZARR_ATTR in
                                              (json.loads((out / "zarr.json").read_text()).get("attributes") or {}))
        if not old:
            raise InfluenceError(f"{out}: folder is not empty and is not an influence store; choose a new or empty "
                                 "folder for --out.")
        import shutil

        for p in out.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _checkpoint_payload(c: Checkpoint) -> dict:
    """What a Dask worker needs to rebuild a checkpoint without reading its files: manifest, weights, identity."""
    return {"manifest": c.manifest, "path": str(c.path), "sha256": c.sha256,
            "state": {k: v.detach().cpu().clone() for k, v in c.model.state_dict().items()}}


def _payload_checkpoint(p: dict) -> Checkpoint:
    from xaiscope.core.checkpoint import load_state_into
    from xaiscope.core.models import build_model

    model = build_model(p["manifest"]["kind"], p["manifest"]["config"])
    load_state_into(model, p["state"], p["path"])
    return Checkpoint(model=model.eval(), manifest=p["manifest"], path=Path(p["path"]), sha256=p["sha256"])


def _embed_chunk(location, start: int, stop: int, x, y, payloads, spec: dict, kind: str, batch_size: int,
                 torch_threads: int | None = None) -> tuple[int, int]:
    """Dask task: embeddings of training rows [start, stop) written into their region of the Zarr array."""
    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    ckpts = [_payload_checkpoint(p) for p in payloads]
    emb = embed(ckpts, x, y, EmbeddingSpec(**spec), get_adapter(kind), batch_size=batch_size)
    arr = _need_zarr().open_array(str(location), path=ZARR_ARRAY, mode="r+")
    arr[start:stop] = emb
    return start, stop


def _client(scheduler, n_workers: int | None):
    """``(client, owned, cluster)`` for ``scheduler``: a ``distributed.Client`` (used as is), ``"local"`` (a new
    LocalCluster of ``n_workers`` single-threaded worker processes) or a scheduler address (``tcp://host:8786``)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:  # pragma: no cover - distributed is a dependency
        raise InfluenceError("--scheduler needs Dask's `distributed` package (pip install 'dask[distributed]').") \
            from err
    if isinstance(scheduler, Client):
        return scheduler, False, None
    if scheduler == "local":
        cluster = LocalCluster(n_workers=int(n_workers or 2), threads_per_worker=1, processes=True,
                               dashboard_address=None)
        return Client(cluster), True, cluster
    try:
        return Client(str(scheduler), timeout="20s"), True, None
    except (OSError, TimeoutError) as err:
        raise InfluenceError(f"scheduler: cannot reach a Dask scheduler at {scheduler!r} ({err}); start one with "
                             "`dask scheduler` and give its address (tcp://HOST:8786), or use --scheduler local."
                             ) from err


def precompute_store(out: str | Path, run, train: Examples | None = None, method: str = "exact", layers=None,
                     dim: int = 128, seed: int = 0, data: Any = None, batch_size: int | None = None,
                     progress: Callable[[int, int], None] | None = None, scheduler=None,
                     n_workers: int | None = None, chunk_rows: int | None = None,
                     store_format: str | None = None, device: str | torch.device | None = None) -> InfluenceStore:
    """Compute the training embeddings of a run once and store them with the checkpoint hashes, the embedding
    spec and the data key. ``train`` defaults to the adapter's training examples of ``data``.

    The rows are computed in chunks of ``chunk_rows`` (a multiple of the batch size) and each chunk is written
    into its own region of one Zarr array: in this process (``scheduler=None``), or as Dask tasks —
    ``scheduler="local"`` starts a ``distributed.LocalCluster`` of ``n_workers`` processes, an address
    (``"tcp://host:8786"``) or a ``distributed.Client`` uses that cluster. Workers receive the examples and the
    weights with the tasks; they only need xaiscope installed and write access to ``out`` (a shared folder or an
    fsspec URL such as ``s3://bucket/store``). ``progress(done, total)`` counts gradient batches.
    ``store_format="npy"`` writes the older memory-mapped NumPy form (in-process only); the default is "zarr",
    or "npy" where Zarr 3 is not installed (Python 3.10). ``device`` (in-process only): where the gradients are
    computed, as in :func:`embed` (``"auto"``: a GPU when there is one)."""
    if store_format is None:
        store_format = "zarr" if zarr_available() or scheduler is not None or _is_url(out) else "npy"
    if store_format not in ("zarr", "npy"):
        raise InfluenceError(f"store_format: {store_format!r} is not 'zarr' or 'npy'.")
    if store_format == "npy" and (scheduler is not None or _is_url(out)):
        raise InfluenceError("a NumPy store is written in this process to a local folder; use store_format='zarr' "
                             "with a scheduler or a URL.")
    if device is not None and scheduler is not None:
        raise InfluenceError("device: the Dask workers compute on their own CPUs; drop --device or --scheduler.")
    ckpts = load_run(run)
    adapter = get_adapter(ckpts[0].kind)
    spec = EmbeddingSpec(method, layers, dim, seed)
    train = train if train is not None else adapter.examples(ckpts[-1], "train", data)
    if len(train) == 0:
        raise InfluenceError("no training examples to store.")
    if device is not None:
        device = choose_device(device)
    batch_size = int(batch_size or adapter.batch_size_on(device))
    out = _store_location(out)
    _prepare_out(out)
    probe = embed(ckpts, train.x[:1], train.y[:1], spec, adapter, device=device)
    n, d = len(train), probe.shape[1]
    steps_per_ckpt = max(1, math.ceil(n / batch_size))
    total = len(ckpts) * steps_per_ckpt

    if store_format == "npy":
        arr = np.lib.format.open_memmap(out / EMBEDDINGS_FILE, mode="w+", dtype=np.float32, shape=(n, d))
        embed(ckpts, train.x, train.y, spec, adapter, batch_size=batch_size, out=arr, progress=progress, device=device)
        arr.flush()
        del arr
        (out / META_FILE).write_text(json.dumps(_store_meta(ckpts, spec, train, data, "npy", None, d), indent=1))
        return InfluenceStore(out)

    rows = int(chunk_rows or max(batch_size, DEFAULT_CHUNK_ROWS // batch_size * batch_size))
    if rows < 1:
        raise InfluenceError(f"chunk_rows: {chunk_rows!r} must be ≥ 1.")
    meta = _store_meta(ckpts, spec, train, data, "zarr", rows, d)
    group = _need_zarr().open_group(str(out), mode="w")
    group.create_array(ZARR_ARRAY, shape=(n, d), chunks=(min(rows, n), d), dtype="float32", compressors=None,
                       fill_value=float("nan"))
    group.attrs.update({ZARR_ATTR: meta})
    chunks = [(s, min(s + rows, n)) for s in range(0, n, rows)]
    steps = {c: len(ckpts) * math.ceil((c[1] - c[0]) / batch_size) for c in chunks}
    total = sum(steps.values())
    spec_d = dict(meta["spec"])
    done = 0
    if scheduler is None:
        arr = group[ZARR_ARRAY]
        for s, e in chunks:
            base = done

            def chunk_progress(k, _t, base=base):
                if progress:
                    progress(base + k, total)

            arr[s:e] = embed(ckpts, train.x[s:e], train.y[s:e], spec, adapter, batch_size=batch_size,
                             progress=chunk_progress, device=device)
            done = base + steps[(s, e)]
    else:
        from distributed import as_completed

        client, own, cluster = _client(scheduler, n_workers)
        try:
            payloads = client.scatter([_checkpoint_payload(c) for c in ckpts], broadcast=True)
            threads = 1 if cluster is not None else None
            futures = [client.submit(_embed_chunk, str(out), s, e, np.asarray(train.x[s:e]),
                                     np.asarray(train.y[s:e]), payloads, spec_d, ckpts[0].kind, batch_size, threads,
                                     pure=False) for s, e in chunks]
            for fut in as_completed(futures):
                s, e = fut.result()
                done += steps[(s, e)]
                if progress:
                    progress(done, total)
        finally:
            if own:
                client.close()
            if cluster is not None:
                cluster.close()
    meta["complete"] = True
    group.attrs.update({ZARR_ATTR: meta})
    return InfluenceStore(out)


def open_store(path: str | Path, run=None) -> InfluenceStore:
    """Open a store (Zarr or NumPy form, detected); with ``run`` (the checkpoints it should belong to) a hash
    mismatch raises :class:`StaleStoreError`."""
    store = InfluenceStore(path)
    if run is not None:
        store.check(load_run(run))
    return store


def run_precompute_cli(args) -> int:
    """``xaiscope precompute influence RUN --out DIR [--scheduler local|ADDRESS]``: store a run's training
    embeddings (one Zarr store) with a progress bar."""
    from tqdm.auto import tqdm

    layers = [s for s in str(args.layers).split(",") if s] if args.layers else None
    if getattr(args, "scheduler", None) and not getattr(args, "verbose", False):
        import logging

        for name in ("distributed", "tornado"):       # the cluster's own INFO lines would hide the progress bar
            logging.getLogger(name).setLevel(logging.WARNING)
    bar = tqdm(total=None, unit="batch", disable=args.quiet, desc="training gradients")

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    store = precompute_store(args.out, args.run, method=args.method, layers=layers, dim=args.dim, seed=args.seed,
                             data=args.data, batch_size=args.batch_size, progress=progress,
                             scheduler=getattr(args, "scheduler", None), n_workers=getattr(args, "workers", None),
                             chunk_rows=getattr(args, "chunk_rows", None),
                             store_format=getattr(args, "store_format", None), device=getattr(args, "device", None))
    bar.close()
    n, d = store.shape
    print(f"wrote {store.path}: {n} training examples × {d} ({store.spec.label}) from "
          f"{len(store.checkpoint_hashes)} checkpoint(s), {store.format} store")
    return 0
