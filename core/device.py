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

__all__ = ["choose_device", "exact_math", "available_devices"]

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
def exact_math() -> Iterator[None]:
    """Turn TensorFloat-32 off for CUDA matmuls and cuDNN inside the block; restore afterwards.

    Inside, ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` are
    False (full IEEE float32). On a CPU-only machine this changes nothing numerically. Safe to nest;
    the settings are process-wide, as PyTorch keeps them.
    """
    legacy = _read_legacy_flags()
    if legacy is None:
        switches = _precision_switches()
        saved = [switch.fp32_precision for switch in switches]
        try:
            for switch in switches:
                switch.fp32_precision = "ieee"
            yield
        finally:
            for switch, value in zip(switches, saved):
                switch.fp32_precision = value
        return

    matmul_precision, matmul_tf32, cudnn_tf32 = legacy
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
        torch.set_float32_matmul_precision(matmul_precision)
