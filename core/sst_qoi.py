"""Sign of a north-east-Pacific SST anomaly from a near-global SST anomaly map ``lag`` months earlier.

The set-up of the XAIRT comparison of layer-wise relevance with adjoint sensitivities:

* **Quantity of interest (QoI)**: the area-weighted (cos lat) mean SST anomaly over the sea cells of a box,
  by default :data:`DEFAULT_BOX` = 30°N–45°N, 150°W–125°W (210–235°E) in the north-east Pacific; any box can be
  given as ``lat_bounds``/``lon_bounds`` (degrees north / east, see :func:`xaiscope.data.sst.box_weights`).
* **Target** at month t: the sign of the QoI — class 1 when QoI(t) > 0, class 0 otherwise.
* **Input**: the SST anomaly map at t − lag (lag 0..12 months), sea cells only (row-major lat, lon order, as
  :func:`xaiscope.data.sst.to_ocean_vectors`), divided by one training-set standard deviation (land never enters).
* **Model**: :class:`SstQoiMLP`, a fully connected ReLU network (registered as ``"sst_qoi_mlp"``), one per lag,
  two logits (negative, positive).
* **Training** (:func:`train_sst_qoi`): class-balanced cross-entropy (weights inversely proportional to the class
  counts of the training part), a shuffled, seeded validation split, Adam, a checkpoint every epoch whose manifest
  records lag, box, sea cells, normalisation, learning rate of the epoch and the accuracies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import nn

from xaiscope.core.checkpoint import save_checkpoint
from xaiscope.core.errors import XaiscopeError
from xaiscope.core.models import register_model
from xaiscope.data.sst import box_weights, to_ocean_vectors

#: Default QoI box: (lat_bounds °N, lon_bounds °E) = 30°N–45°N, 150°W–125°W.
DEFAULT_BOX = ((30.0, 45.0), (210.0, 235.0))
MAX_LAG = 12


class SstQoiError(XaiscopeError, ValueError):
    """Bad input to the SST-QoI set-up (lag, box, dataset, sizes)."""


@register_model("sst_qoi_mlp")
class SstQoiMLP(nn.Module):
    """Fully connected ReLU network: ``n_inputs`` sea cells → hidden layers → ``n_classes`` logits.

    ``self.net`` is an ``nn.Sequential`` of ``Linear`` and ``ReLU`` modules (one ``ReLU`` instance per layer,
    as LRP libraries need); dropout (training only) sits after each ReLU when ``dropout > 0``.
    """

    def __init__(self, n_inputs: int, hidden: tuple[int, ...] | list[int] = (32, 16), n_classes: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if n_inputs < 1 or n_classes < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"n_inputs, hidden sizes and n_classes must be positive, got {n_inputs}, {hidden}, "
                             f"{n_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.n_inputs, self.hidden, self.n_classes = int(n_inputs), hidden, int(n_classes)
        layers: list[nn.Module] = []
        width = self.n_inputs
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, self.n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.n_inputs:
            raise ValueError(f"expected inputs of shape (batch, {self.n_inputs}), got {tuple(x.shape)}")
        return self.net(x)

    def linear_layers(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]


# ------------------------------------------------------------------------------------------ samples
def check_lag(lag) -> int:
    if isinstance(lag, bool) or int(lag) != lag or not 0 <= int(lag) <= MAX_LAG:
        raise SstQoiError(f"lag: {lag!r} is not a whole number of months in 0..{MAX_LAG}; pick one in that range.")
    return int(lag)


def qoi_weights(ds: xr.Dataset, lat_bounds=DEFAULT_BOX[0], lon_bounds=DEFAULT_BOX[1]) -> xr.DataArray:
    """Area-weighted box-mean weights (lat, lon) of the QoI on the sea cells of ``ds``."""
    return box_weights(ds.lat, ds.lon, lat_bounds, lon_bounds, ds["land_mask"] if "land_mask" in ds else None)


def qoi_index(ds: xr.Dataset, lat_bounds=DEFAULT_BOX[0], lon_bounds=DEFAULT_BOX[1]) -> xr.DataArray:
    """The QoI time series (time): Σ weights · sst_anomaly over the box (degC)."""
    w = qoi_weights(ds, lat_bounds, lon_bounds)
    out = (ds["sst_anomaly"].fillna(0.0) * w).sum(("lat", "lon"))
    out.name = "qoi"
    out.attrs = {"units": "degC", "long_name": f"area-weighted mean SST anomaly {lat_bounds}°N × {lon_bounds}°E"}
    return out


@dataclass
class QoiSamples:
    x: np.ndarray              # (N, n_sea) float32, SST anomaly at t − lag (degC, not normalised)
    y: np.ndarray              # (N,) int64, 1 when QoI(t) > 0
    qoi: np.ndarray            # (N,) QoI(t), degC
    target_time: pd.DatetimeIndex  # t
    input_time: pd.DatetimeIndex   # t − lag


def sea_mask(ds: xr.Dataset) -> xr.DataArray:
    """Land mask (1 land, 0 sea) of ``ds``: its ``land_mask`` or, without one, cells NaN in every month — plus any
    cell NaN in some month (such a cell cannot be an input)."""
    if "sst_anomaly" not in ds:
        raise SstQoiError(f"the dataset has no 'sst_anomaly' variable (it has {list(ds.data_vars)}); read it with "
                          f"xaiscope.data.sst.read_sst(..., anomaly=True).")
    nan_any = ds["sst_anomaly"].isnull().any("time")
    base = ds["land_mask"].astype(bool) if "land_mask" in ds else ds["sst_anomaly"].isnull().all("time")
    return (base | nan_any).astype("int8").rename("land_mask")


def make_qoi_samples(ds: xr.Dataset, lag: int, lat_bounds=DEFAULT_BOX[0], lon_bounds=DEFAULT_BOX[1],
                     land_mask: xr.DataArray | None = None) -> QoiSamples:
    """All (input map at t − lag, sign of QoI at t) pairs of ``ds`` (dims time, lat, lon)."""
    lag = check_lag(lag)
    mask = sea_mask(ds) if land_mask is None else land_mask
    q = qoi_index(ds.assign(land_mask=mask), lat_bounds, lon_bounds).values.astype(float)
    v = to_ocean_vectors(ds["sst_anomaly"].transpose("time", "lat", "lon"), mask).astype(np.float32)
    n = v.shape[0] - lag
    if n < 10:
        raise SstQoiError(f"only {v.shape[0]} months for lag {lag}; give a longer record.")
    times = pd.DatetimeIndex(ds.time.values) if np.issubdtype(ds.time.dtype, np.datetime64) else ds.time.values
    return QoiSamples(x=v[:n], y=(q[lag:] > 0).astype(np.int64), qoi=q[lag:], target_time=times[lag:],
                      input_time=times[:n])


# ----------------------------------------------------------------------------------------- training
@dataclass
class SstQoiTrainConfig:
    lag: int = 3
    lat_bounds: tuple[float, float] = DEFAULT_BOX[0]
    lon_bounds: tuple[float, float] = DEFAULT_BOX[1]
    hidden: tuple[int, ...] = (32, 16)
    dropout: float = 0.2
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    lr_decay: float = 0.97          # learning rate multiplied by this after every epoch
    weight_decay: float = 1e-3
    val_fraction: float = 0.2
    seed: int = 0
    threads: int | None = 1
    keep_epochs: tuple[int, ...] | None = None   # None: keep every epoch's checkpoint


@dataclass
class SstQoiTrainResult:
    out: Path
    model: SstQoiMLP
    history: list[dict] = field(default_factory=list)
    norm_std: float = 1.0
    train_index: np.ndarray | None = None
    val_index: np.ndarray | None = None


def _accuracy(model, x, y) -> tuple[float, float]:
    """(accuracy, balanced accuracy)."""
    with torch.no_grad():
        pred = model(torch.as_tensor(x)).argmax(1).numpy()
    acc = float((pred == y).mean())
    per = [float((pred[y == c] == c).mean()) for c in (0, 1) if (y == c).any()]
    return acc, float(np.mean(per))


def train_sst_qoi(ds: xr.Dataset, out, cfg: SstQoiTrainConfig | None = None, data_label: str = "") -> SstQoiTrainResult:
    """Train one :class:`SstQoiMLP` for ``cfg.lag`` on ``ds`` (``sst_anomaly`` (time, lat, lon), optional
    ``land_mask``); write ``out/epoch_NNN`` every epoch (only ``cfg.keep_epochs`` when given)."""
    cfg = cfg or SstQoiTrainConfig()
    lag = check_lag(cfg.lag)
    if not 0 < cfg.val_fraction < 1:
        raise SstQoiError(f"val_fraction: {cfg.val_fraction} must be in (0, 1).")
    if cfg.epochs < 1:
        raise SstQoiError(f"epochs: {cfg.epochs} must be ≥ 1.")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    mask = sea_mask(ds)
    s = make_qoi_samples(ds, lag, cfg.lat_bounds, cfg.lon_bounds, land_mask=mask)
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(len(s.y))
    n_val = max(1, int(round(cfg.val_fraction * len(perm))))
    val_idx, tr_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    std = float(np.std(s.x[tr_idx]))
    x = (s.x / std).astype(np.float32)
    counts = np.bincount(s.y[tr_idx], minlength=2).astype(float)
    if (counts == 0).any():
        raise SstQoiError("the training part holds only one class of the QoI sign; use a longer record.")
    class_w = counts.sum() / (2 * counts)
    model = SstQoiMLP(x.shape[1], cfg.hidden, 2, cfg.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)
    loss_fn = nn.CrossEntropyLoss(weight=torch.as_tensor(class_w, dtype=torch.float32))
    xt, yt = torch.as_tensor(x[tr_idx]), torch.as_tensor(s.y[tr_idx])
    out = Path(out)
    res = SstQoiTrainResult(out=out, model=model, norm_std=std, train_index=tr_idx, val_index=val_idx)
    sea_idx = np.flatnonzero((mask.values == 0).ravel())
    gen = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        lr = opt.param_groups[0]["lr"]
        order = torch.randperm(len(yt), generator=gen)
        total = 0.0
        for i in range(0, len(order), cfg.batch_size):
            b = order[i:i + cfg.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(xt[b]), yt[b])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        sched.step()
        model.eval()
        tr_acc, tr_bal = _accuracy(model, x[tr_idx], s.y[tr_idx])
        va_acc, va_bal = _accuracy(model, x[val_idx], s.y[val_idx])
        rec = {"epoch": epoch, "learning_rate": lr, "train_loss": total / len(yt), "train_accuracy": tr_acc,
               "train_balanced_accuracy": tr_bal, "val_accuracy": va_acc, "val_balanced_accuracy": va_bal}
        res.history.append(rec)
        if cfg.keep_epochs is None or epoch in cfg.keep_epochs:
            manifest = {
                "kind": "sst_qoi_mlp",
                "config": {"n_inputs": int(x.shape[1]), "hidden": list(cfg.hidden), "n_classes": 2,
                           "dropout": cfg.dropout},
                "name": f"sst_qoi_lag{lag:02d}",
                "task": "sign of the QoI at month t from the SST anomaly map at t - lag",
                "lag": lag,
                "box": {"lat_bounds": list(cfg.lat_bounds), "lon_bounds": list(cfg.lon_bounds),
                        "qoi": "area-weighted (cos lat) mean sst_anomaly over the box's sea cells"},
                "classes": ["QoI <= 0", "QoI > 0"],
                "inputs": "sst_anomaly sea cells (row-major lat, lon)",
                "grid": {"lat": [float(v) for v in ds.lat.values], "lon": [float(v) for v in ds.lon.values]},
                "sea_cells": [int(i) for i in sea_idx],
                "normalisation": {"sst_anomaly": {"mean": 0.0, "std": std}},
                "epoch": epoch, "learning_rate": lr, "seed": cfg.seed,
                "train_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
                "class_weights": [float(c) for c in class_w],
                "n_train": int(len(tr_idx)), "n_val": int(len(val_idx)),
                "val_split": "shuffled (seeded) split of all samples",
                "metrics": rec,
                "history": list(res.history),
                "data": {"source": ds.attrs.get("source", data_label), "files": ds.attrs.get("files", "[]"),
                         "start": str(ds.time.values[0])[:7], "end": str(ds.time.values[-1])[:7]},
            }
            save_checkpoint(out / f"epoch_{epoch:03d}", model, manifest)
    return res


# ----------------------------------------------------------------------------------------- using it
def checkpoint_inputs(manifest: dict, ds: xr.Dataset) -> np.ndarray:
    """Normalised model inputs (time, n_sea) float32 of ``ds`` for a checkpoint: its grid, sea cells and std."""
    lat, lon = manifest["grid"]["lat"], manifest["grid"]["lon"]
    if ds.sizes.get("lat") != len(lat) or ds.sizes.get("lon") != len(lon) or not (
            np.allclose(ds.lat.values, lat) and np.allclose(ds.lon.values, lon)):
        raise SstQoiError(f"the SST grid ({ds.sizes.get('lat')}×{ds.sizes.get('lon')}) is not the checkpoint's "
                          f"({len(lat)}×{len(lon)}); regrid it with xaiscope.data.sst.regrid(ds, lat=..., lon=...).")
    flat = ds["sst_anomaly"].transpose("time", "lat", "lon").values.reshape(ds.sizes["time"], -1)
    x = flat[:, np.asarray(manifest["sea_cells"])]
    if np.isnan(x).any():
        raise SstQoiError("the SST anomalies are NaN on sea cells the checkpoint uses; fill or mask them first.")
    return (x / manifest["normalisation"]["sst_anomaly"]["std"]).astype(np.float32)


def to_map(values: np.ndarray, manifest: dict, name: str = "relevance", attrs: dict | None = None) -> xr.DataArray:
    """Sea-cell vectors (…, n_sea) → maps (…, lat, lon) with NaN on land (leading dim ``sample`` if any)."""
    lat, lon = np.asarray(manifest["grid"]["lat"]), np.asarray(manifest["grid"]["lon"])
    values = np.asarray(values)
    out = np.full(values.shape[:-1] + (lat.size * lon.size,), np.nan)
    out[..., np.asarray(manifest["sea_cells"])] = values
    out = out.reshape(values.shape[:-1] + (lat.size, lon.size))
    dims = ("lat", "lon") if values.ndim == 1 else ("sample", "lat", "lon")
    return xr.DataArray(out, dims=dims, coords={"lat": lat, "lon": lon}, name=name, attrs=dict(attrs or {}))


def demo_checkpoint(lag: int) -> Path:
    """Folder of the shipped checkpoint series for ``lag`` (0, 3, 6 or 12)."""
    root = Path(__file__).resolve().parent.parent / "assets" / "checkpoints" / f"sst_qoi_lag{check_lag(lag):02d}"
    if not root.exists():
        raise SstQoiError(f"no shipped checkpoint for lag {lag}; shipped lags: "
                          f"{sorted(int(p.name[-2:]) for p in root.parent.glob('sst_qoi_lag*'))}. Train one with "
                          f"`xaiscope train sst-qoi --lag {lag} --out DIR`.")
    return root


def run_cli(args) -> int:
    """``xaiscope train sst-qoi``."""
    from xaiscope.data.sst import demo_sst, read_sst

    ds = demo_sst(with_ssh=False) if args.data == "demo" else read_sst(args.data, anomaly=True)
    cfg = SstQoiTrainConfig(
        lag=args.lag, lat_bounds=(args.lat_min, args.lat_max), lon_bounds=(args.lon_min, args.lon_max),
        hidden=tuple(int(v) for v in str(args.hidden).split(",")), dropout=args.dropout, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.lr, val_fraction=args.val_fraction, seed=args.seed)
    res = train_sst_qoi(ds, args.out, cfg)
    last = res.history[-1]
    print(f"checkpoints: {res.out}/epoch_001 … epoch_{cfg.epochs:03d}")
    print(f"lag {cfg.lag}: train accuracy {last['train_accuracy']:.3f}, validation accuracy "
          f"{last['val_accuracy']:.3f} (balanced {last['val_balanced_accuracy']:.3f})")
    return 0
