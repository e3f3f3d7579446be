"""Checkpoints: weights in safetensors plus a JSON manifest. Loading never unpickles code.

A checkpoint is either

* a directory holding ``weights.safetensors`` and ``manifest.json`` (what xaiscope writes), or
* a single ``.safetensors`` file whose metadata carries the manifest under ``xaiscope.manifest``, or
* a ``.pt``/``.pth`` state dict, read with ``torch.load(weights_only=True)``, with the manifest in a
  ``manifest.json`` beside it or a sidecar ``<name>.json``, or
* a neuralhydrology run directory (``config.yml`` + ``model_epochNNN.pt`` + ``train_data/train_data_scaler.yml``)
  or one of its ``model_epochNNN.pt`` files: see :mod:`xaiscope.core.interop_nh`.

A *series* (what training writes, one checkpoint per epoch, for TracIn) is a directory of checkpoint
directories ``epoch_001``, ``epoch_002``, … each with its own manifest (epoch, learning rate).

The manifest records: format version, model kind and constructor config, input variable names and order,
normalisation statistics, target, window length, training period, epoch, learning rate of that epoch, seed,
data provenance (basin, files with sha256) and the sha256 of the weights file.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xaiscope.core.errors import CheckpointError
from xaiscope.core.models import build_model

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
METADATA_KEY = "xaiscope.manifest"
REQUIRED_FIELDS = ("kind", "config")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (in eval mode, on the CPU), its manifest and identity."""

    model: nn.Module
    manifest: dict[str, Any]
    path: Path
    sha256: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def inputs(self) -> list[str]:
        return list(self.manifest.get("inputs", []))

    @property
    def stats(self) -> dict[str, dict[str, float]]:
        return dict(self.manifest.get("normalisation", {}))

    @property
    def label(self) -> str:
        """Short human label: kind, basin and epoch."""
        m = self.manifest
        data = m.get("data")
        basin = data.get("basin_id", "") if isinstance(data, dict) else ""
        epoch = m.get("epoch")
        bits = [m.get("name") or self.path.name, basin, f"epoch {epoch}" if epoch is not None else ""]
        return " · ".join(str(b) for b in bits if b)


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_checkpoint(directory: str | Path, model: nn.Module, manifest: dict[str, Any]) -> Path:
    """Write ``model``'s weights (safetensors) and ``manifest`` (JSON) into ``directory``; return it.

    ``manifest`` must hold ``kind`` and ``config``; the format version and the weights' sha256 are added.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    missing = [k for k in ("kind", "config") if k not in manifest]
    if missing:
        raise ValueError(f"manifest lacks {missing}")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = directory / WEIGHTS_FILE
    tmp = weights.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(weights)
    full = {"format_version": FORMAT_VERSION, **manifest, "weights_file": WEIGHTS_FILE,
            "weights_sha256": sha256_file(weights)}
    (directory / MANIFEST_FILE).write_text(json.dumps(full, indent=2, default=_json_default))
    return directory


def _one_line(err: BaseException | str, limit: int = 300) -> str:
    """The first line of an error message, shortened: messages of the libraries underneath can be long."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= limit else text[:limit] + "…"


#: A manifest larger than this is refused before parsing (real manifests are a few kB).
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


def _parse_manifest(raw: bytes | str, where: Path, what: str = "manifest") -> dict[str, Any]:
    if len(raw) > MAX_MANIFEST_BYTES:
        raise CheckpointError(f"{where}: {what} is {len(raw)} bytes, too large for a checkpoint manifest "
                              f"(limit {MAX_MANIFEST_BYTES}); this is not an xaiscope manifest.")
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        raise CheckpointError(
            f"{where}: {what} is not valid JSON ({_one_line(err)}); re-save the checkpoint.") from err
    return _check_manifest(manifest, where)


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read manifest ({err.strerror or _one_line(err)}).") from err
    return _parse_manifest(raw, path)


def _check_manifest(manifest: Any, where: Path) -> dict[str, Any]:
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{where}: manifest must be a JSON object, got {type(manifest).__name__}.")
    missing = [k for k in REQUIRED_FIELDS if k not in manifest]
    if missing:
        raise CheckpointError(
            f"{where}: manifest lacks {', '.join(missing)}; a checkpoint manifest needs at least "
            f"{', '.join(REQUIRED_FIELDS)} (see `xaiscope train --help`)."
        )
    version = manifest.setdefault("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: checkpoint format version {version!r} is newer than this xaiscope understands "
            f"({FORMAT_VERSION}); upgrade xaiscope."
        )
    if not isinstance(manifest["kind"], str):
        raise CheckpointError(f"{where}: manifest field 'kind' must be a model kind name (text), got "
                              f"{type(manifest['kind']).__name__}.")
    if not isinstance(manifest["config"], dict):
        raise CheckpointError(f"{where}: manifest field 'config' must be an object of constructor arguments.")
    for key in ("weights_file", "weights_sha256"):
        if key in manifest and not isinstance(manifest[key], str):
            raise CheckpointError(f"{where}: manifest field {key!r} must be text, got "
                                  f"{type(manifest[key]).__name__}; re-save the checkpoint.")
    return manifest


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
        return tensors, metadata
    except Exception as err:  # safetensors raises its own SafetensorError / OSError variants
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({_one_line(err)}). The file may be truncated or corrupted; "
            "copy it again or re-export it."
        ) from err


def _load_pt(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": noise beside the error below
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), "")
        raise CheckpointError(
            f"{path}: refused: this .pt file holds more than tensors, and loading it would run code from the file"
            f"{f' ({_one_line(detail, 200)})' if detail else ''}. Nothing from it was run. Save a plain state dict "
            "(`torch.save(model.state_dict(), …)`) or safetensors instead."
        ) from err
    except Exception as err:  # noqa: BLE001 - RuntimeError, EOFError, BadZipFile, OSError, ValueError, struct.error …
        raise CheckpointError(
            f"{path}: cannot read this .pt file ({_one_line(err)}); it may be truncated or corrupted.") from err
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (name → tensor), got {type(obj).__name__}.")
    return obj


def _dtype_fits(have: torch.dtype, want: torch.dtype) -> bool:
    """Floating-point weights of any precision fit a floating-point tensor (they are cast); otherwise the
    dtypes must be equal (integer or boolean weights in a float model mean the file is not these weights)."""
    if have == want:
        return True
    return have.is_floating_point and want.is_floating_point


def check_state(model: nn.Module, state: dict[str, torch.Tensor], where: Path | str) -> None:
    """Raise :class:`CheckpointError` naming every missing/unexpected tensor and every wrong shape or dtype.

    ``model`` may live on the ``meta`` device (nothing allocated): this is how a manifest is checked against
    the weights file before a model of the manifest's size is built.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing tensor(s) {missing[:5]}")
    if unexpected:
        problems.append(f"unexpected tensor(s) {unexpected[:5]}")
    wrong_dtype: dict[tuple[str, str], list[str]] = {}
    for key, tensor in state.items():
        if key in expected and tuple(tensor.shape) != tuple(expected[key].shape):
            problems.append(
                f"tensor {key!r} has shape {tuple(tensor.shape)} but the model built from the manifest expects "
                f"{tuple(expected[key].shape)}"
            )
        elif key in expected and not _dtype_fits(tensor.dtype, expected[key].dtype):
            pair = (str(tensor.dtype).replace("torch.", ""), str(expected[key].dtype).replace("torch.", ""))
            wrong_dtype.setdefault(pair, []).append(key)
    for (have, want), keys in wrong_dtype.items():
        shown = ", ".join(repr(k) for k in keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        problems.append(f"{'tensor' if len(keys) == 1 else f'{len(keys)} tensors'} ({shown}) "
                        f"{'has' if len(keys) == 1 else 'have'} dtype {have} but the model expects {want}")
    if problems:
        raise CheckpointError(
            f"{where}: weights do not fit the model described by the manifest: {'; '.join(problems[:8])}"
            f"{f' (and {len(problems) - 8} more)' if len(problems) > 8 else ''}. "
            "Check that the manifest's config (sizes, layers, inputs) belongs to these weights."
        )


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], where: Path | str) -> None:
    """Load ``state`` into ``model``; mismatched keys, shapes or dtypes get an error naming the tensor."""
    check_state(model, state, where)
    expected = model.state_dict()
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def _weights_path(directory: Path, name: str) -> Path:
    """The weights file a manifest names: a file *in* the checkpoint folder (no sub-paths, no ``..``, no
    absolute path, no symlink that leads out of the folder)."""
    if (not name or "\x00" in name or Path(name).name != name or name in (".", "..")
            or "/" in name or "\\" in name):
        raise CheckpointError(
            f"{directory / MANIFEST_FILE}: weights_file {name[:200]!r} is not a plain file name; the weights must "
            f"lie in the checkpoint folder itself (e.g. {WEIGHTS_FILE!r}).")
    weights = directory / name
    real_dir = directory.resolve()
    if weights.is_symlink() and not weights.resolve().is_relative_to(real_dir):
        raise CheckpointError(
            f"{weights}: a symlink that leads out of the checkpoint folder; copy the weights into the folder.")
    return weights


def _resolve(path: Path) -> tuple[Path, Path | None, str]:
    """(weights file, manifest file or None, format) for a checkpoint path."""
    if path.is_dir():
        if (path / MANIFEST_FILE).exists():
            manifest = _read_manifest(path / MANIFEST_FILE)
            weights = _weights_path(path, manifest.get("weights_file", WEIGHTS_FILE))
            if not weights.exists():
                raise CheckpointError(f"{path}: manifest found but weights file {weights.name!r} is missing.")
            fmt = "pt" if weights.suffix in (".pt", ".pth") else "safetensors"
            return weights, path / MANIFEST_FILE, fmt
        epochs = sorted(p for p in path.iterdir() if p.is_dir() and (p / MANIFEST_FILE).exists())
        if epochs:
            return _resolve(epochs[-1])
        raise CheckpointError(
            f"{path}: no {MANIFEST_FILE} here (nor in epoch sub-folders); a checkpoint directory holds "
            f"{WEIGHTS_FILE} and {MANIFEST_FILE}."
        )
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or directory.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        sidecar = path.with_suffix(".json")
        return path, (sidecar if sidecar.exists() else None), "safetensors"
    if suffix in (".pt", ".pth", ".bin"):
        for cand in (path.with_suffix(".json"), path.parent / MANIFEST_FILE):
            if cand.exists():
                return path, cand, "pt"
        raise CheckpointError(
            f"{path}: a .pt state dict needs a manifest (model kind and config): put {MANIFEST_FILE} or "
            f"{path.with_suffix('.json').name} beside it."
        )
    if suffix == ".json":
        return _resolve(path.parent)
    raise CheckpointError(
        f"{path}: unknown checkpoint type {suffix!r}; give a checkpoint directory, a .safetensors file, or a "
        ".pt state dict with a manifest."
    )


def load_checkpoint(path: str | Path, verify: bool = True) -> Checkpoint:
    """Load a checkpoint (see module doc) into a model in eval mode on the CPU.

    ``verify`` checks the weights file against the sha256 recorded in the manifest.
    """
    path = Path(path).expanduser()
    from xaiscope.core import interop_nh

    if interop_nh.is_nh_run(path):
        return interop_nh.load_nh_checkpoint(path)
    try:
        return _load_checkpoint(path, verify)
    except CheckpointError:
        raise
    except OSError as err:  # unreadable folder or file, a folder where a file should be, …
        raise CheckpointError(
            f"{path}: cannot read the checkpoint ({err.strerror or _one_line(err)}); check the path and its "
            "permissions.") from err


def _load_checkpoint(path: Path, verify: bool) -> Checkpoint:
    weights, manifest_path, fmt = _resolve(path)
    digest = sha256_file(weights)
    if fmt == "pt":
        state, metadata = _load_pt(weights), {}
    else:
        state, metadata = _load_safetensors(weights)
    if manifest_path is not None:
        manifest = _read_manifest(manifest_path)
    elif METADATA_KEY in metadata:
        manifest = _parse_manifest(metadata[METADATA_KEY], weights, "embedded manifest")
    else:
        raise CheckpointError(
            f"{weights}: no manifest: put {MANIFEST_FILE} beside it or embed one in the safetensors metadata "
            f"under {METADATA_KEY!r} (see `xaiscope export --help`)."
        )
    recorded = manifest.get("weights_sha256")
    if verify and recorded and manifest_path is not None and recorded != digest:
        raise CheckpointError(
            f"{weights}: sha256 {digest[:12]}… does not match the manifest's {str(recorded)[:12]}…; the weights "
            "were changed or corrupted after saving."
        )
    try:
        _check_against_meta_model(manifest, state, weights)
        model = build_model(manifest["kind"], manifest["config"])
    except CheckpointError as err:
        if str(weights) in str(err):
            raise
        raise type(err)(f"{manifest_path or weights}: {err}") from err  # name the file
    load_state_into(model, state, weights)
    model.eval()
    return Checkpoint(model=model, manifest=manifest, path=path, sha256=digest, extra={"weights_path": weights})


class _ModelTooLarge(Exception):
    """Raised inside a model constructor when it creates more parameters than the weights file holds."""


_BUILD_LIMITS = threading.local()  # .left = [tensors, values] while this thread builds a model to check


def _parameter_budget_hook(module, name, param):
    """Global parameter-registration hook (registered once, at import: adding and removing global hooks while
    other threads build modules would race with their iteration over the hooks). It only acts in a thread that
    set a budget, and stops the constructor when the budget is spent."""
    left = getattr(_BUILD_LIMITS, "left", None)
    if left is None or param is None:
        return None
    left[0] -= 1
    left[1] -= int(param.numel())
    if left[0] < 0 or left[1] < 0:
        raise _ModelTooLarge()
    return None


torch.nn.modules.module.register_module_parameter_registration_hook(_parameter_budget_hook)


def _check_against_meta_model(manifest: dict[str, Any], state: dict[str, torch.Tensor], where: Path) -> None:
    """Check the weights against the manifest's model built on the ``meta`` device (no memory allocated), so
    that a manifest asking for a huge model is refused before anything of that size is built.

    While the meta model is built, a parameter budget (this thread only) stops the constructor as soon as it has
    created clearly more parameters, or parameter values, than the file holds: a manifest that asks for a million
    layers is refused at once instead of keeping the server busy.
    """
    n_tensors = len(state)
    n_values = sum(int(t.numel()) for t in state.values())

    def too_large() -> CheckpointError:
        shown = json.dumps(manifest["config"], default=str)
        shown = shown if len(shown) <= 200 else shown[:200] + "…"
        return CheckpointError(
            f"{where}: the manifest's config {shown} describes a model far larger than the weights file "
            f"({n_tensors} tensors, {n_values} values); the manifest does not belong to these weights.")

    _BUILD_LIMITS.left = [2 * n_tensors + 16, 2 * n_values + 4096]
    try:
        with torch.device("meta"):
            meta = build_model(manifest["kind"], manifest["config"])
    except _ModelTooLarge:
        raise too_large() from None
    except CheckpointError as err:
        if isinstance(err.__cause__, _ModelTooLarge):
            raise too_large() from None
        if err.__cause__ is None:  # unknown kind or config field: the real build would say the same
            raise
        return  # the constructor failed on meta; the real build below reports or succeeds
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta is checked after the real build
        return
    finally:
        _BUILD_LIMITS.left = None
    check_state(meta, state, where)


def list_series(run_dir: str | Path) -> list[Path]:
    """The epoch checkpoints of a training run, in epoch order."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: not a directory; a checkpoint series is a folder of epoch_NNN folders.")
    from xaiscope.core import interop_nh

    if interop_nh.is_nh_run(run_dir):
        return interop_nh.epoch_files(run_dir)  # neuralhydrology: model_epochNNN.pt files
    found = []
    for p in run_dir.iterdir():
        m = re.fullmatch(r"epoch_(\d+)", p.name)
        if m and (p / MANIFEST_FILE).exists():
            found.append((int(m.group(1)), p))
    if not found:
        raise CheckpointError(f"{run_dir}: no epoch_NNN checkpoint folders found.")
    return [p for _, p in sorted(found)]


def load_series(run_dir: str | Path) -> list[Checkpoint]:
    """Every epoch checkpoint of a run (for TracIn: each manifest holds its epoch's learning rate)."""
    return [load_checkpoint(p) for p in list_series(run_dir)]


def export_safetensors(checkpoint: Checkpoint, out: str | Path) -> Path:
    """Write ``checkpoint`` as one self-describing ``.safetensors`` file with the manifest in its metadata."""
    from safetensors.torch import save_file

    out = Path(out)
    state = {k: v.detach().cpu().contiguous() for k, v in checkpoint.model.state_dict().items()}
    manifest = {k: v for k, v in checkpoint.manifest.items() if k not in ("weights_file", "weights_sha256")}
    manifest["source_sha256"] = checkpoint.sha256
    save_file(state, str(out), metadata={METADATA_KEY: json.dumps(manifest, default=_json_default)})
    return out
