"""Open a neuralhydrology run directory as an xaiscope checkpoint series.

A neuralhydrology (Kratzert et al. 2022, https://github.com/neuralhydrology/neuralhydrology) training run writes

* ``config.yml`` — the run configuration (model, head, dynamic inputs, targets, periods, learning rate, …),
* ``model_epochNNN.pt`` — the model's ``state_dict`` after each epoch (``torch.save``),
* ``train_data/train_data_scaler.yml`` — the centre (mean) and scale (std) of every feature on the training data.

:func:`load_nh_checkpoint` rebuilds a ``CudaLSTM`` (or ``CustomLSTM``) of such a run as xaiscope's
:class:`~xaiscope.core.models.HydroLSTM` (one LSTM layer, its regression head) and writes an xaiscope manifest
for it, so everything that takes a hydro checkpoint (``xaiscope info`` / ``states``, the app, TracIn) takes the run:

* **Weights.** ``CudaLSTM`` wraps ``torch.nn.LSTM`` and stores ``lstm.weight_ih_l0`` etc. with PyTorch's gate
  order (i, f, g, o); its ``Regression`` head stores ``head.net.0``; ``CustomLSTM`` stores the same tensors as
  ``cell.w_ih`` / ``cell.w_hh`` / ``cell.b_ih`` / ``cell.b_hh``, also in the order i, f, g, o. They map one to one.
  The forget-gate bias convention differs — neuralhydrology *sets* the forget part of ``bias_hh`` to
  ``initial_forget_bias`` at initialisation, xaiscope *adds* it — so the rebuilt model is made with
  ``initial_forget_bias=0`` and takes the trained biases from the file as they are; the run's value is kept in
  the manifest (``neuralhydrology.initial_forget_bias``) for reference.
* **Inputs.** The order of ``dynamic_inputs`` in the config is the model's input order. CAMELS-US column names
  (``prcp(mm/day)``, ``QObs(mm/d)``, …) map to xaiscope's basin variables (``prcp``, ``qobs``, …,
  :data:`VARIABLES`); the scaler's centre/scale become the manifest's ``normalisation``.
* **Epochs.** Every ``model_epochNNN.pt`` is one checkpoint of the series; its learning rate comes from the
  config's ``learning_rate`` (a number, or a dict ``{epoch: rate}`` where a rate holds from that epoch on).
* **Paths.** A run directory travels between machines, so the absolute paths in ``config.yml`` (``run_dir``,
  ``train_dir``, ``data_dir``, basin files) are not trusted: what belongs to the run is found relative to the
  run directory itself, and the data folder comes from the user (``--data`` / ``data_dir=``).
* ``.pt`` files are read with ``torch.load(weights_only=True)``: nothing in the run can execute code.

Supported: ``model: cudalstm`` or ``customlstm`` with ``head: regression`` and linear output activation, one
target, CAMELS-US (``dataset: camels_us``) with the Daymet forcing, no static attributes, embeddings or other
extra inputs. Anything else is refused with a :class:`NeuralHydrologyError` that says so.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from xaiscope.core.errors import CheckpointError

__all__ = [
    "NeuralHydrologyError", "VARIABLES", "SUPPORTED_MODELS", "is_nh_run", "run_dir_of", "epoch_files",
    "read_config", "read_scaler", "learning_rate_at", "nh_manifest", "convert_state_dict", "load_nh_checkpoint",
    "load_nh_series",
]

CONFIG_FILE = "config.yml"
SCALER_FILE = Path("train_data") / "train_data_scaler.yml"
EPOCH_RE = re.compile(r"model_epoch(\d+)\.pt")

#: neuralhydrology CAMELS-US column name (lower case) → xaiscope basin variable.
VARIABLES = {
    "prcp(mm/day)": "prcp",
    "srad(w/m2)": "srad",
    "tmax(c)": "tmax",
    "tmin(c)": "tmin",
    "vp(pa)": "vp",
    "dayl(s)": "dayl",
    "qobs(mm/d)": "qobs",
}
#: neuralhydrology model names xaiscope rebuilds as a HydroLSTM.
SUPPORTED_MODELS = ("cudalstm", "customlstm")
#: Config keys that add inputs or layers a HydroLSTM does not have (refused when set).
_UNSUPPORTED_KEYS = (
    "static_attributes", "camels_attributes", "hydroatlas_attributes", "evolving_attributes",
    "use_basin_id_encoding", "statics_embedding", "dynamics_embedding", "autoregressive_inputs",
    "timestep_counter", "nan_handling_method", "lagged_features", "forecast_inputs", "hindcast_inputs",
)


class NeuralHydrologyError(CheckpointError):
    """A neuralhydrology run directory that cannot be opened as a hydro checkpoint."""


# ----------------------------------------------------------------------------------------------- files
def is_nh_run(path: str | Path) -> bool:
    """True for a neuralhydrology run directory (``config.yml`` beside ``model_epochNNN.pt`` files or a
    ``train_data`` folder, no xaiscope ``manifest.json``) or one of its ``model_epochNNN.pt`` files."""
    path = Path(path)
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file() or (path / "manifest.json").exists():
            return False
        return (path / "train_data").is_dir() or any(EPOCH_RE.fullmatch(p.name) for p in path.iterdir())
    return bool(EPOCH_RE.fullmatch(path.name)) and (path.parent / CONFIG_FILE).is_file()


def run_dir_of(path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_dir() else path.parent


def epoch_files(run_dir: str | Path) -> list[Path]:
    """The run's ``model_epochNNN.pt`` files in epoch order."""
    run_dir = Path(run_dir)
    found = sorted((int(m.group(1)), p) for p in run_dir.iterdir() if (m := EPOCH_RE.fullmatch(p.name)))
    if not found:
        raise NeuralHydrologyError(
            f"{run_dir}: neuralhydrology run directory without weights: no model_epochNNN.pt files (copy them "
            "along with config.yml and train_data/train_data_scaler.yml).")
    return [p for _, p in found]


def _yaml_load(path: Path, what: str) -> Any:
    try:
        import yaml

        load, errors = yaml.safe_load, (yaml.YAMLError,)
    except ImportError:
        try:  # neuralhydrology's own YAML library, where PyYAML is absent
            from ruamel.yaml import YAML
            from ruamel.yaml.error import YAMLError
        except ImportError as err:
            raise NeuralHydrologyError(f"reading a neuralhydrology {what} needs PyYAML: pip install pyyaml") from err
        load, errors = YAML(typ="safe", pure=True).load, (YAMLError,)
    if not path.is_file():
        raise NeuralHydrologyError(f"{path}: missing; a neuralhydrology run directory needs config.yml, "
                                   "model_epochNNN.pt and train_data/train_data_scaler.yml.")
    try:
        return load(path.read_text())
    except (*errors, OSError, UnicodeDecodeError) as err:
        raise NeuralHydrologyError(f"{path}: cannot read the {what} ({err}).") from err


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """``config.yml`` of a run as a dict."""
    cfg = _yaml_load(Path(run_dir) / CONFIG_FILE, "config")
    if not isinstance(cfg, dict):
        raise NeuralHydrologyError(f"{Path(run_dir) / CONFIG_FILE}: not a neuralhydrology config (no mapping).")
    return cfg


def read_scaler(run_dir: str | Path) -> tuple[dict[str, float], dict[str, float]]:
    """(centre, scale) per feature from ``train_data/train_data_scaler.yml``."""
    path = Path(run_dir) / SCALER_FILE
    if not path.is_file() and path.with_suffix(".p").is_file():
        raise NeuralHydrologyError(
            f"{path.with_suffix('.p')}: a pickled scaler (neuralhydrology < 1.0) cannot be read safely; load the "
            "run once with a current neuralhydrology, which writes train_data_scaler.yml.")
    raw = _yaml_load(path, "feature scaler")
    out = []
    for key in ("xarray_feature_center", "xarray_feature_scale"):
        try:
            out.append({str(k): float(v["data"]) for k, v in raw[key]["data_vars"].items()})
        except (KeyError, TypeError, ValueError) as err:
            raise NeuralHydrologyError(
                f"{path}: no per-feature {key!r} values ({err!r}); per-basin scalers are not supported.") from err
    return out[0], out[1]


# ----------------------------------------------------------------------------------------------- config
def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _iso(date: Any) -> str:
    import pandas as pd

    if isinstance(date, str) and re.fullmatch(r"\d{2}/\d{2}/\d{4}", date.strip()):
        return pd.to_datetime(date.strip(), format="%d/%m/%Y").strftime("%Y-%m-%d")
    return pd.Timestamp(date).strftime("%Y-%m-%d")


def _period(cfg: dict, name: str) -> list[str] | None:
    starts, ends = _as_list(cfg.get(f"{name}_start_date")), _as_list(cfg.get(f"{name}_end_date"))
    if not starts or not ends:
        return None
    return [min(_iso(s) for s in starts), max(_iso(e) for e in ends)]


def learning_rate_at(cfg: dict, epoch: int) -> float:
    """Learning rate neuralhydrology used in ``epoch`` (1-based): a number, or the entry of the
    ``{epoch: rate}`` dict with the largest key ≤ epoch (key 0 = the initial rate)."""
    lr = cfg.get("learning_rate")
    if isinstance(lr, (int, float)):
        return float(lr)
    if isinstance(lr, dict) and lr:
        try:
            sched = sorted((int(k), float(v)) for k, v in lr.items())
        except (TypeError, ValueError) as err:
            raise NeuralHydrologyError(f"config learning_rate {lr!r} is not a number or an {{epoch: rate}} dict.") \
                from err
        rate = sched[0][1]
        for k, v in sched:
            if k <= epoch:
                rate = v
        return rate
    raise NeuralHydrologyError(f"config has no usable learning_rate ({lr!r}); TracIn needs it per epoch.")


def _variable(name: str, where: str) -> str:
    key = str(name).strip().lower()
    if key in VARIABLES:
        return VARIABLES[key]
    raise NeuralHydrologyError(
        f"{where}: unknown variable {name!r}; xaiscope maps these CAMELS-US (Daymet) columns to its basin data: "
        f"{', '.join(sorted(VARIABLES))}.")


def _check_supported(cfg: dict, where: Path) -> None:
    model = str(cfg.get("model", "")).lower()
    if model not in SUPPORTED_MODELS:
        raise NeuralHydrologyError(
            f"{where}: neuralhydrology model {cfg.get('model')!r} is not supported; xaiscope opens "
            f"{' and '.join(SUPPORTED_MODELS)} runs (a single nn.LSTM layer with a regression head). EA-LSTM, "
            "MTS-LSTM, EmbCudaLSTM, GRU, transformers and the forecast models are not.")
    head = str(cfg.get("head", "")).lower()
    if head != "regression":
        raise NeuralHydrologyError(
            f"{where}: head {cfg.get('head')!r} is not supported; only 'regression' (a linear layer) is — the "
            "probabilistic heads (gmm, umal, cmal) have no single prediction to look at.")
    act = str(cfg.get("output_activation") or "linear").lower()
    if act != "linear":
        raise NeuralHydrologyError(
            f"{where}: output_activation {act!r} is not supported; xaiscope's LSTM head is linear.")
    used = [k for k in _UNSUPPORTED_KEYS if cfg.get(k)]
    if used:
        raise NeuralHydrologyError(
            f"{where}: the run uses {', '.join(used)}; xaiscope rebuilds plain LSTMs whose inputs are the dynamic "
            "inputs only (no static attributes, embeddings or extra input features).")
    if isinstance(cfg.get("dynamic_inputs"), dict):
        raise NeuralHydrologyError(f"{where}: multi-frequency dynamic_inputs are not supported (one daily set).")
    dataset = str(cfg.get("dataset", "")).lower()
    if dataset != "camels_us":
        raise NeuralHydrologyError(
            f"{where}: dataset {cfg.get('dataset')!r} is not supported; xaiscope reads CAMELS-US folders "
            "(dataset: camels_us).")
    forcings = [str(f).lower() for f in _as_list(cfg.get("forcings"))]
    if forcings != ["daymet"]:
        raise NeuralHydrologyError(
            f"{where}: forcings {cfg.get('forcings')!r} are not supported; xaiscope reads the Daymet forcing of a "
            "CAMELS-US folder (forcings: [daymet]).")
    if len(_as_list(cfg.get("target_variables"))) != 1:
        raise NeuralHydrologyError(
            f"{where}: {len(_as_list(cfg.get('target_variables')))} target variables; xaiscope supports one "
            "(e.g. QObs(mm/d)).")


def _basins(cfg: dict, run_dir: Path) -> list[str]:
    """Basin ids of the training basin file: the path in the config, else a file of that name in the run dir."""
    name = cfg.get("train_basin_file")
    if not name:
        return []
    for cand in (Path(str(name)), run_dir / Path(str(name)).name):
        try:
            if cand.is_file():
                return [b.strip() for b in cand.read_text().split() if b.strip()]
        except OSError:
            continue
    return []


def nh_manifest(cfg: dict, scaler: tuple[dict, dict], epoch: int, run_dir: Path,
                data_dir: str | Path | None = None) -> dict[str, Any]:
    """An xaiscope hydro manifest for epoch ``epoch`` of a neuralhydrology run."""
    where = run_dir / CONFIG_FILE
    _check_supported(cfg, where)
    nh_inputs = [str(v) for v in _as_list(cfg.get("dynamic_inputs"))]
    if not nh_inputs:
        raise NeuralHydrologyError(f"{where}: no dynamic_inputs.")
    nh_target = str(_as_list(cfg.get("target_variables"))[0])
    inputs = [_variable(v, str(where)) for v in nh_inputs]
    target = _variable(nh_target, str(where))
    center, scale = scaler
    missing = [v for v in nh_inputs + [nh_target] if v not in center or v not in scale]
    if missing:
        raise NeuralHydrologyError(
            f"{run_dir / SCALER_FILE}: no centre/scale for {missing}; the scaler does not belong to this config.")
    normalisation = {ours: {"mean": center[theirs], "std": scale[theirs]}
                     for ours, theirs in zip(inputs + [target], nh_inputs + [nh_target])}
    try:
        hidden = int(cfg["hidden_size"])
        window = int(cfg["seq_length"])
    except (KeyError, TypeError, ValueError) as err:
        raise NeuralHydrologyError(f"{where}: hidden_size and seq_length must be integers ({err!r}).") from err
    dropout = float(cfg.get("output_dropout") or 0.0)
    basins = _basins(cfg, run_dir)
    data: dict[str, Any] = {"source": "neuralhydrology run (CAMELS-US, Daymet forcing)",
                            "config_data_dir": str(cfg.get("data_dir", ""))}
    if len(basins) == 1:
        data["basin_id"] = basins[0]
    elif basins:
        data["basins"] = basins
    if data_dir is not None:
        data["data_dir"] = str(data_dir)
    manifest = {
        "format_version": 1,
        "name": str(cfg.get("experiment_name") or run_dir.name),
        "kind": "hydro_lstm",
        "config": {"n_inputs": len(inputs), "hidden_size": hidden, "num_layers": 1, "dropout": dropout,
                   "initial_forget_bias": 0.0, "n_outputs": 1},
        "inputs": inputs,
        "target": target,
        "window": window,
        "normalisation": normalisation,
        "epoch": int(epoch),
        "epochs": cfg.get("epochs"),
        "learning_rate": learning_rate_at(cfg, int(epoch)),
        "optimizer": cfg.get("optimizer"),
        "batch_size": cfg.get("batch_size"),
        "predict_last_n": cfg.get("predict_last_n"),
        "seed": cfg.get("seed"),
        "data": data,
        "neuralhydrology": {
            "run_dir": str(run_dir),
            "package_version": cfg.get("package_version"),
            "model": cfg.get("model"), "head": cfg.get("head"),
            "dynamic_inputs": nh_inputs, "target_variables": [nh_target],
            "initial_forget_bias": cfg.get("initial_forget_bias"),
            "loss": cfg.get("loss"),
        },
    }
    for name in ("train", "validation", "test"):
        period = _period(cfg, name)
        if period:
            manifest[f"{name}_period"] = period
    return manifest


# ----------------------------------------------------------------------------------------------- weights
def convert_state_dict(state: dict[str, torch.Tensor], model_name: str, where: Path) -> dict[str, torch.Tensor]:
    """neuralhydrology ``state_dict`` → HydroLSTM ``state_dict`` (same tensors, xaiscope names)."""
    rename = {
        "head.net.0.weight": "head.weight", "head.net.0.bias": "head.bias",
    }
    if str(model_name).lower() == "customlstm":
        rename.update({"cell.w_ih": "lstm.weight_ih_l0", "cell.w_hh": "lstm.weight_hh_l0",
                       "cell.b_ih": "lstm.bias_ih_l0", "cell.b_hh": "lstm.bias_hh_l0"})
    else:
        rename.update({k: k for k in ("lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0",
                                      "lstm.bias_hh_l0")})
    extra = [k for k in state if k not in rename]
    if extra:
        raise NeuralHydrologyError(
            f"{where}: tensors {extra[:5]} have no counterpart in xaiscope's LSTM (embedding networks, extra "
            "layers); only plain cudalstm/customlstm runs with a regression head are supported.")
    return {rename[k]: v for k, v in state.items()}


def _epoch_file(path: Path, epoch: int | None) -> Path:
    if path.is_file():
        return path
    files = epoch_files(path)
    if epoch is None:
        return files[-1]
    for f in files:
        if int(EPOCH_RE.fullmatch(f.name).group(1)) == int(epoch):
            return f
    raise NeuralHydrologyError(
        f"{path}: no model_epoch{int(epoch):03d}.pt; the run has epochs "
        f"{[int(EPOCH_RE.fullmatch(f.name).group(1)) for f in files]}.")


def load_nh_checkpoint(path: str | Path, epoch: int | None = None, data_dir: str | Path | None = None):
    """Load a neuralhydrology run (its last epoch, or ``epoch``) or one ``model_epochNNN.pt`` of a run as an
    xaiscope :class:`~xaiscope.core.checkpoint.Checkpoint` holding a :class:`HydroLSTM` in eval mode.

    ``data_dir`` (the CAMELS-US folder on this machine) is recorded in the manifest; the config's own
    ``data_dir`` is not used."""
    from xaiscope.core.checkpoint import Checkpoint, _load_pt, load_state_into, sha256_file
    from xaiscope.core.models import build_model

    path = Path(path).expanduser()
    if not path.exists():
        raise NeuralHydrologyError(f"{path}: no such neuralhydrology run directory or model_epochNNN.pt file.")
    run_dir = run_dir_of(path)
    weights = _epoch_file(path, epoch)
    cfg = read_config(run_dir)
    _check_supported(cfg, run_dir / CONFIG_FILE)
    scaler = read_scaler(run_dir)
    n = int(EPOCH_RE.fullmatch(weights.name).group(1))
    manifest = nh_manifest(cfg, scaler, n, run_dir, data_dir)
    state = convert_state_dict(_load_pt(weights), str(cfg.get("model")), weights)
    model = build_model(manifest["kind"], manifest["config"])
    load_state_into(model, state, weights)
    model.eval()
    return Checkpoint(model=model, manifest=manifest, path=path, sha256=sha256_file(weights),
                      extra={"weights_path": weights, "run_dir": run_dir})


def load_nh_series(run_dir: str | Path, data_dir: str | Path | None = None) -> list:
    """Every epoch of a neuralhydrology run, in epoch order (each manifest holds its epoch's learning rate)."""
    return [load_nh_checkpoint(f, data_dir=data_dir) for f in epoch_files(run_dir_of(run_dir))]
