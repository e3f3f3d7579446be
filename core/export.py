"""TorchScript export of a checkpoint for use outside Python (C++ ``torch::jit::load``, Fortran through FTorch).

The exported module works in **physical units**: the normalisation statistics of the manifest are baked in, so
a caller passes raw inputs and gets raw outputs back. One ``forward`` (what FTorch's ``torch_model_forward``
calls), float32 in and out (inputs of another dtype are cast to float32).

Kinds that export:

* ``hydro_lstm`` (also a neuralhydrology CudaLSTM run opened as one): input ``[batch, time, n_inputs]`` with the
  manifest's ``inputs`` in their order and units (CAMELS-US Daymet: prcp mm/day, srad W m-2, tmax degC, tmin degC,
  vp Pa); output ``[batch, n_outputs]``, the prediction for the last day in the target's units (mm/day), or with
  ``sequence=True`` ``[batch, time, n_outputs]``, one prediction per day (continuous mode).
* ``sst_qoi_mlp``: input ``[batch, n_lat, n_lon]`` SST anomaly maps (degC) on the manifest's grid (land cells
  are ignored, NaN allowed there); output ``[batch, n_classes]`` class probabilities (softmax), class 1 = QoI > 0.

``export_torchscript`` verifies the written file: it loads it back with ``torch.jit.load`` and compares it, on
seeded sample inputs, to the Python pipeline (the product's own normalisation code, the checkpoint's model, the
product's de-normalisation), and raises :class:`ExportError` when they differ by more than ``tolerance``.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xaiscope.core.checkpoint import Checkpoint, load_checkpoint
from xaiscope.core.errors import XaiscopeError

__all__ = ["ExportError", "ExportResult", "EXPORTABLE_KINDS", "torchscript_module", "export_torchscript",
           "sample_inputs", "reference_outputs"]

#: Model kinds :func:`export_torchscript` can write, with their input → output contract.
EXPORTABLE_KINDS = {
    "hydro_lstm": "[batch, time, n_inputs] raw inputs → [batch, n_outputs] (or [batch, time, n_outputs]) in "
                  "target units",
    "sst_qoi_mlp": "[batch, n_lat, n_lon] SST anomaly maps (degC) → [batch, n_classes] class probabilities",
}


@contextmanager
def _jit_quiet():
    """TorchScript is what C++ ``torch::jit::load`` and FTorch read; PyTorch ≥ 2.9 marks its Python entry points
    deprecated in favour of ``torch.export``, which those loaders do not read. Silence that one warning here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        yield


class ExportError(XaiscopeError):
    """A checkpoint that cannot be exported, or an export that does not reproduce the Python model."""


@dataclass
class ExportResult:
    path: Path
    kind: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    max_abs_diff: float
    tolerance: float


# ------------------------------------------------------------------------------------------- modules
class HydroLSTMPhysical(nn.Module):
    """``HydroLSTM`` with input normalisation and target de-normalisation inside (evaluation semantics)."""

    def __init__(self, model: nn.Module, mean, std, y_mean, y_std, sequence: bool = False):
        super().__init__()
        self.lstm = model.lstm
        self.head = model.head
        self.n_inputs = int(model.n_inputs)
        self.sequence = bool(sequence)
        # statistics in float64, as the Python pipeline normalises (then float32 for the network)
        self.register_buffer("x_mean", torch.as_tensor(mean, dtype=torch.float64))
        self.register_buffer("x_std", torch.as_tensor(std, dtype=torch.float64))
        self.register_buffer("y_mean", torch.as_tensor(y_mean, dtype=torch.float64))
        self.register_buffer("y_std", torch.as_tensor(y_std, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.size(2) != self.n_inputs:
            raise ValueError("expected raw inputs of shape [batch, time, n_inputs]")
        z = ((x.to(torch.float64) - self.x_mean) / self.x_std).to(torch.float32)
        out, _ = self.lstm(z)
        if not self.sequence:
            out = out[:, -1]
        y = self.head(out).to(torch.float64) * self.y_std + self.y_mean
        return y.to(torch.float32)


class SstQoiPhysical(nn.Module):
    """``SstQoiMLP`` on SST anomaly maps: gathers the sea cells, divides by the training std, softmax."""

    def __init__(self, model: nn.Module, sea_cells, n_lat: int, n_lon: int, std: float):
        super().__init__()
        self.net = model.net
        self.n_lat = int(n_lat)
        self.n_lon = int(n_lon)
        self.register_buffer("sea_cells", torch.as_tensor(np.asarray(sea_cells), dtype=torch.long))
        self.register_buffer("std", torch.tensor(float(std), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.size(1) != self.n_lat or x.size(2) != self.n_lon:
            raise ValueError("expected SST anomaly maps of shape [batch, n_lat, n_lon] on the checkpoint's grid")
        flat = x.to(torch.float32).reshape(x.size(0), self.n_lat * self.n_lon)
        z = torch.index_select(flat, 1, self.sea_cells) / self.std
        return torch.softmax(self.net(z), dim=-1)


def _stat(stats: dict, var: str, ckpt: Checkpoint) -> tuple[float, float]:
    try:
        mean, std = float(stats[var]["mean"]), float(stats[var]["std"])
    except (KeyError, TypeError, ValueError) as err:
        raise ExportError(f"{ckpt.path}: the manifest has no normalisation statistics for {var!r}; the export "
                          "bakes them in, so re-train or add them to the manifest.") from err
    return mean, (std if std > 0 else 1.0)   # as xaiscope.core.hydro does


def torchscript_module(ckpt: Checkpoint, sequence: bool = False) -> torch.jit.ScriptModule:
    """The scripted physical-units module of a checkpoint (see the module doc); :class:`ExportError` for a kind
    that does not export."""
    model = ckpt.model.to("cpu").eval()
    if ckpt.kind == "hydro_lstm":
        stats = ckpt.manifest.get("normalisation", {})
        if not ckpt.inputs:
            raise ExportError(f"{ckpt.path}: the manifest lists no 'inputs'; the export needs their order.")
        ms = [_stat(stats, v, ckpt) for v in ckpt.inputs]
        target = ckpt.manifest.get("target", "qobs")
        y_mean, y_std = _stat(stats, target, ckpt)
        module = HydroLSTMPhysical(model, [m for m, _ in ms], [s for _, s in ms], y_mean, y_std, sequence)
    elif ckpt.kind == "sst_qoi_mlp":
        m = ckpt.manifest
        try:
            grid, cells = m["grid"], m["sea_cells"]
            std = float(m["normalisation"]["sst_anomaly"]["std"])
        except (KeyError, TypeError) as err:
            raise ExportError(f"{ckpt.path}: an sst_qoi_mlp manifest needs grid, sea_cells and the sst_anomaly "
                              f"std ({err!r} missing); re-train with `xaiscope train sst-qoi`.") from err
        module = SstQoiPhysical(model, cells, len(grid["lat"]), len(grid["lon"]), std)
    else:
        raise ExportError(
            f"{ckpt.path}: model kind {ckpt.kind!r} does not export to TorchScript; kinds that do: "
            f"{', '.join(sorted(EXPORTABLE_KINDS))}. (The ENSO ConvLSTM returns a dict of three heads and takes "
            "NaN-masked map sequences; it is not offered for FTorch.)"
        )
    module.eval()
    try:
        with _jit_quiet():
            return torch.jit.script(module)
    except Exception as err:  # TorchScript compile errors come in several types
        raise ExportError(f"{ckpt.path}: TorchScript could not compile the {ckpt.kind} module ({err}).") from err


# ------------------------------------------------------------------------------------------ checking
def sample_inputs(ckpt: Checkpoint, batch: int = 3, time: int | None = None, seed: int = 0) -> np.ndarray:
    """Seeded raw (physical-unit) inputs for a checkpoint: mean + std × N(0, 1) per variable (precipitation-like
    variables clipped at zero); hydro ``[batch, time, n_inputs]``, SST-QoI ``[batch, n_lat, n_lon]``."""
    rng = np.random.default_rng(seed)
    if ckpt.kind == "hydro_lstm":
        stats = ckpt.manifest.get("normalisation", {})
        n = int(time or ckpt.manifest.get("window", 365))
        cols = []
        for v in ckpt.inputs:
            mean, std = _stat(stats, v, ckpt)
            col = mean + std * rng.standard_normal((batch, n))
            cols.append(np.maximum(col, 0.0) if v.startswith("prcp") else col)
        return np.stack(cols, axis=-1).astype(np.float32)
    grid = ckpt.manifest["grid"]
    std = float(ckpt.manifest["normalisation"]["sst_anomaly"]["std"])
    return (std * rng.standard_normal((batch, len(grid["lat"]), len(grid["lon"])))).astype(np.float32)


def reference_outputs(ckpt: Checkpoint, x: np.ndarray, sequence: bool = False) -> np.ndarray:
    """What the Python pipeline gives for raw inputs ``x``: the product's normalisation (``hydro.normalised_inputs``
    / ``sst_qoi.checkpoint_inputs``), the checkpoint's model, the product's de-normalisation."""
    import pandas as pd
    import xarray as xr

    model = ckpt.model.to("cpu").eval()
    times = pd.date_range("2000-01-01", periods=x.shape[1], freq="D")
    with torch.inference_mode():
        if ckpt.kind == "hydro_lstm":
            from xaiscope.core import hydro

            outs = []
            for b in range(x.shape[0]):
                ds = xr.Dataset({v: ("time", x[b, :, j].astype(np.float64)) for j, v in enumerate(ckpt.inputs)},
                                coords={"time": times})
                z = torch.from_numpy(hydro.normalised_inputs(ckpt, ds))[None]
                y = model.predict_sequence(z) if sequence else model.forward_last(z, 1)
                y = y.reshape(1, -1, model.head.out_features) if sequence else y.reshape(1, -1)
                outs.append(hydro._denormalise(ckpt, y.numpy().astype(np.float64)))
            return np.concatenate(outs, axis=0)
        from xaiscope.core.sst_qoi import checkpoint_inputs

        grid = ckpt.manifest["grid"]
        ds = xr.Dataset({"sst_anomaly": (("time", "lat", "lon"), x.astype(np.float64))},
                        coords={"time": pd.date_range("2000-01-01", periods=x.shape[0], freq="MS"),
                                "lat": grid["lat"], "lon": grid["lon"]})
        z = torch.from_numpy(checkpoint_inputs(ckpt.manifest, ds))
        return torch.softmax(model(z), dim=-1).numpy().astype(np.float64)


def export_torchscript(checkpoint: Checkpoint | str | Path, out: str | Path, sequence: bool = False,
                       tolerance: float = 1e-4, batch: int = 3, seed: int = 0) -> ExportResult:
    """Write the TorchScript module of ``checkpoint`` to ``out`` and check it against the Python pipeline on
    seeded sample inputs (after ``torch.jit.load`` of the written file). Raises :class:`ExportError` when the
    maximum absolute difference exceeds ``tolerance`` (the file is then removed)."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    if sequence and ckpt.kind != "hydro_lstm":
        raise ExportError(f"--sequence applies to hydro_lstm checkpoints only, not to {ckpt.kind!r}.")
    scripted = torchscript_module(ckpt, sequence=sequence)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    scripted.save(str(tmp))
    tmp.replace(out)
    x = sample_inputs(ckpt, batch=batch, seed=seed)
    with _jit_quiet():
        loaded = torch.jit.load(str(out), map_location="cpu")
    with torch.inference_mode():
        got = loaded(torch.from_numpy(x)).numpy().astype(np.float64)
    want = reference_outputs(ckpt, x, sequence=sequence)
    if got.shape != want.shape:
        out.unlink(missing_ok=True)
        raise ExportError(f"exported module gives shape {got.shape}, the Python model {want.shape}; not written.")
    diff = float(np.max(np.abs(got - want)))
    if not np.isfinite(diff) or diff > tolerance:
        out.unlink(missing_ok=True)
        raise ExportError(f"the exported module differs from the Python model by {diff:.3g} on sample inputs "
                          f"(tolerance {tolerance:g}); nothing was written. Report this with the checkpoint.")
    return ExportResult(out, ckpt.kind, tuple(x.shape), tuple(got.shape), diff, tolerance)
