"""Device policy: one place that decides where tensors live, and a switch for exact float32 math.

``choose_device`` picks CUDA when available, then Apple MPS, else the CPU; an explicit preference
("cpu", "cuda", "cuda:1", "mps", "auto") overrides the automatic choice and fails with a clear
:class:`~xaiscope.core.errors.XaiscopeError` when the requested device is not there.

``exact_math`` turns TensorFloat-32 off for matrix products and cuDNN inside a ``with`` block
(TF32 keeps only 10 mantissa bits, which is too coarse to compare cell states to 1e-5), and puts
the previous settings back afterwards.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

from xaiscope.core.errors import XaiscopeError

__all__ = ["choose_device", "exact_math", "tf32_math", "available_devices", "is_out_of_memory", "release_memory",
           "TF32_OPS"]

_PREFERENCE = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """Names of the devices this machine offers, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{k}" for k in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names


def choose_device(preference: str | torch.device | None = None) -> torch.device:
    """Return the device to compute on.

    Parameters
    ----------
    preference:
        ``None`` or ``"auto"``: CUDA if available, then MPS, else CPU.
        ``"cpu"``, ``"cuda"``, ``"cuda:<index>"`` or ``"mps"``: exactly that device.

    Raises
    ------
    XaiscopeError
        If ``preference`` is not one of the forms above, or names a device this machine lacks.
    """
    if isinstance(preference, torch.device):
        preference = str(preference)
    if preference is not None and not isinstance(preference, str):
        raise XaiscopeError(
            f"device preference must be a string such as 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps', "
            f"got {type(preference).__name__} {preference!r}."
        )
    text = "auto" if preference is None else preference.strip().lower()
    match = _PREFERENCE.match(text)
    if match is None:
        raise XaiscopeError(
            f"unknown device preference {preference!r}: use 'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps' "
            f"(this machine offers {', '.join(available_devices())})."
        )
    kind, index = match.group(1), match.group(2)
    if index is not None and kind != "cuda":
        raise XaiscopeError(
            f"device preference {preference!r}: only CUDA devices take an index; use '{kind}' "
            f"(this machine offers {', '.join(available_devices())})."
        )

    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not _mps_available():
            raise XaiscopeError(
                "device 'mps' was requested but Apple Metal (MPS) is not available on this machine; "
                f"use 'auto' or one of {', '.join(available_devices())}."
            )
        return torch.device("mps")
    # cuda
    if not torch.cuda.is_available():
        raise XaiscopeError(
            f"device {preference!r} was requested but CUDA is not available (no NVIDIA GPU, or a CPU-only "
            f"PyTorch build); use 'auto' or 'cpu' (this machine offers {', '.join(available_devices())})."
        )
    if index is None:
        return torch.device("cuda", torch.cuda.current_device())
    count = torch.cuda.device_count()
    if int(index) >= count:
        raise XaiscopeError(
            f"device {preference!r} was requested but this machine has {count} CUDA device(s) "
            f"(cuda:0 … cuda:{count - 1}); pick one of {', '.join(available_devices())}."
        )
    return torch.device("cuda", int(index))


# Leaf switches of the per-operator precision API (PyTorch >= 2.9), used only when the legacy flags
# cannot be read (PyTorch refuses to read them once a program has mixed the two APIs).
_PRECISION_SWITCHES = (("cuda", "matmul"), ("cudnn", "conv"), ("cudnn", "rnn"))


def _precision_switches() -> list[object]:
    found = []
    for backend, op in _PRECISION_SWITCHES:
        switch = getattr(getattr(torch.backends, backend, None), op, None)
        if switch is not None and hasattr(switch, "fp32_precision"):
            found.append(switch)
    return found


def _read_legacy_flags() -> tuple[str, bool, bool] | None:
    try:
        return (
            torch.get_float32_matmul_precision(),
            bool(torch.backends.cuda.matmul.allow_tf32),
            bool(torch.backends.cudnn.allow_tf32),
        )
    except RuntimeError:  # mixed legacy / per-operator settings
        return None


@contextlib.contextmanager
def _tf32_block(enabled: bool) -> Iterator[None]:
    legacy = _read_legacy_flags()
    if legacy is None:
        switches = _precision_switches()
        saved = [switch.fp32_precision for switch in switches]
        try:
            for switch in switches:
                switch.fp32_precision = "tf32" if enabled else "ieee"
            yield
        finally:
            for switch, value in zip(switches, saved):
                switch.fp32_precision = value
        return

    matmul_precision, matmul_tf32, cudnn_tf32 = legacy
    try:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
        torch.set_float32_matmul_precision(matmul_precision)


def exact_math() -> contextlib.AbstractContextManager[None]:
    """Turn TensorFloat-32 off for CUDA matmuls and cuDNN inside the block; restore afterwards.

    Inside, ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` are
    False (full IEEE float32). On a CPU-only machine this changes nothing numerically. Safe to nest;
    the settings are process-wide, as PyTorch keeps them.
    """
    return _tf32_block(False)


def tf32_math() -> contextlib.AbstractContextManager[None]:
    """Allow TensorFloat-32 for CUDA matmuls and cuDNN inside the block (restored afterwards); only for
    results whose tolerance allows it (see :data:`TF32_OPS`). Changes nothing on a CPU or MPS."""
    return _tf32_block(True)


# ------------------------------------------------------------------------------------------ precision policy
#: What may run with TensorFloat-32 on CUDA, with the largest accepted difference to exact float32.
#: Only the day-by-day simulated discharge (the hydrograph and skill table): |Δ| ≤ 1e-3 in normalised units
#: (0.1 % of the target's standard deviation, well below a pixel of the plot), checked on the first batch of
#: each model against exact float32 — above it the model falls back to exact float32 for good. Everything
#: else (cell states, gates, the continuous pass, LRP, TracIn gradients) stays exact float32 (TF32 off).
#: bfloat16 autocast is used nowhere: its 8-bit mantissa moves 365-step LSTM states by about 1e-2.
TF32_OPS = {"simulate": 1e-3}


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an accelerator out-of-memory error (CUDA or MPS)."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(oom_type, type) and isinstance(err, oom_type):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def release_memory(device: torch.device) -> None:
    """Give cached accelerator memory back after an out-of-memory error (no-op on the CPU)."""
    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        elif device.type == "mps" and hasattr(torch, "mps"):
            torch.mps.empty_cache()
    except Exception:  # noqa: BLE001 - best effort
        pass
