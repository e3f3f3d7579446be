"""Training of the rainfall-runoff LSTM, with a checkpoint every epoch (TracIn needs the series)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from numpy.lib.stride_tricks import sliding_window_view

from xaiscope.core.checkpoint import save_checkpoint
from xaiscope.core.errors import XaiscopeError
from xaiscope.core.models import HydroLSTM

# Kratzert et al. (2018), section 2.4: calibration 1980-10-01..1995-09-30, validation 1995-10-01..2010-09-30.
TRAIN_PERIOD = ("1980-10-01", "1995-09-30")
TEST_PERIOD = ("1995-10-01", "2010-09-30")


@dataclass
class HydroTrainConfig:
    """Settings of ``xaiscope train hydro`` (architecture and periods of Kratzert et al. 2018, one basin).

    Samples are input sequences of ``window + predict_last_n - 1`` days with the loss on their last
    ``predict_last_n`` days, so every target day is predicted from at least ``window`` days of inputs (the
    sequence-to-sequence sampling of neuralhydrology's ``predict_last_n``). ``predict_last_n=1`` with
    ``sample_stride=1`` is the one-target-per-window training of the paper — the same model, about 100× more
    compute per epoch. Sequence starts are ``sample_stride`` days apart, shifted at random each epoch.
    """

    inputs: tuple[str, ...] = ("prcp", "srad", "tmax", "tmin", "vp")
    target: str = "qobs"
    window: int = 365
    hidden_size: int = 20
    num_layers: int = 2
    dropout: float = 0.1
    initial_forget_bias: float = 3.0
    predict_last_n: int = 365
    sample_stride: int = 5
    epochs: int = 80
    batch_size: int = 16
    learning_rate: float = 1e-3
    lr_decay_epochs: tuple[int, ...] = (50, 70)  # learning rate × 0.5 from each of these epochs on
    eval_every: int = 10
    weight_decay: float = 0.0
    train_period: tuple[str, str] = TRAIN_PERIOD
    test_period: tuple[str, str] = TEST_PERIOD
    seed: int = 0
    device: str | None = None

    def lr_at(self, epoch: int) -> float:
        """Learning rate used during ``epoch`` (1-based)."""
        return self.learning_rate * 0.5 ** sum(epoch >= e for e in self.lr_decay_epochs)


@dataclass
class TrainResult:
    out: Path
    history: list[dict] = field(default_factory=list)

    @property
    def last(self) -> dict:
        return self.history[-1]


def _provenance(ds: xr.Dataset) -> dict:
    files = ds.attrs.get("files", "[]")
    try:
        files = json.loads(files) if isinstance(files, str) else files
    except json.JSONDecodeError:
        files = []
    return {
        "basin_id": str(ds.attrs.get("basin_id", "")),
        "basin_name": str(ds.attrs.get("basin_name", "")),
        "source": str(ds.attrs.get("source", "")),
        "files": [{"name": Path(f.get("path", f.get("name", ""))).name, "sha256": f.get("sha256", "")}
                  for f in files if isinstance(f, dict)],
        "start": str(pd.Timestamp(ds.time.values[0]).date()),
        "end": str(pd.Timestamp(ds.time.values[-1]).date()),
    }


def train_hydro(ds: xr.Dataset, out: str | Path, config: HydroTrainConfig | None = None,
                progress: bool = True, name: str | None = None) -> TrainResult:
    """Train a :class:`HydroLSTM` on one basin Dataset; write ``out/epoch_NNN`` after every epoch.

    Each checkpoint's manifest holds the test-period NSE/KGE of that epoch and the benchmark model's
    (SAC-SMA+Snow-17, ``q_benchmark``) NSE/KGE on the same days when the data have it.
    """
    from tqdm.auto import tqdm

    from xaiscope.core import hydro
    from xaiscope.core.checkpoint import Checkpoint
    from xaiscope.core.device import choose_device
    from xaiscope.data.windows import compute_stats

    cfg = config or HydroTrainConfig()
    out = Path(out)
    if out.exists() and any(out.glob("epoch_*")):
        raise XaiscopeError(f"{out}: already holds a checkpoint series; choose a new --out folder or delete it.")
    missing = [v for v in (*cfg.inputs, cfg.target) if v not in ds.data_vars]
    if missing:
        raise XaiscopeError(f"the data lack {missing}; a hydro model needs {list(cfg.inputs)} and {cfg.target!r}.")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = choose_device(cfg.device)

    stats = compute_stats(ds, [*cfg.inputs, cfg.target], cfg.train_period)
    x_all, y_all, starts = _sequence_samples(ds, cfg, stats)
    x_seq = sliding_window_view(x_all, cfg.window + cfg.predict_last_n - 1, axis=0)  # (S, n_in, L) view
    y_seq = sliding_window_view(y_all, cfg.predict_last_n, axis=0)  # (S', P) view
    n_targets = int(np.isfinite(y_all).sum())
    model_cfg = dict(n_inputs=len(cfg.inputs), hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                     dropout=cfg.dropout, initial_forget_bias=cfg.initial_forget_bias)
    model = HydroLSTM(**model_cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    obs_test = ds[cfg.target].sel(time=slice(*cfg.test_period))
    bench = {}
    if "q_benchmark" in ds:
        qb = ds["q_benchmark"].sel(time=slice(*cfg.test_period))
        bench = {f"benchmark_{k}": v for k, v in hydro.skill(obs_test.values, qb.values).items()}

    result = TrainResult(out=out)
    rng = np.random.default_rng(cfg.seed)
    L, P = cfg.window + cfg.predict_last_n - 1, cfg.predict_last_n
    bar = tqdm(range(1, cfg.epochs + 1), desc="train hydro", unit="epoch", disable=not progress)
    for epoch in bar:
        lr = cfg.lr_at(epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        offset = int(rng.integers(cfg.sample_stride))
        chosen = np.unique(np.r_[starts[offset::cfg.sample_stride], starts[-1]])
        rng.shuffle(chosen)
        t0, total, count = time.perf_counter(), 0.0, 0
        for b in range(0, len(chosen), cfg.batch_size):
            idx = chosen[b: b + cfg.batch_size]
            xb = torch.from_numpy(x_seq[idx].transpose(0, 2, 1).copy()).to(device)
            yb = torch.from_numpy(y_seq[idx + L - P].copy()).to(device)
            mask = torch.isfinite(yb)
            opt.zero_grad(set_to_none=True)
            pred = model.forward_last(xb, P).reshape(yb.shape)
            loss = torch.nn.functional.mse_loss(pred[mask], yb[mask])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += float(loss.detach()) * int(mask.sum())
            count += int(mask.sum())
        model.eval()
        manifest = {
            "name": name or f"hydro_{ds.attrs.get('basin_id', 'basin')}",
            "kind": "hydro_lstm",
            "config": model_cfg,
            "inputs": list(cfg.inputs),
            "target": cfg.target,
            "window": cfg.window,
            "normalisation": stats,
            "train_period": list(cfg.train_period),
            "test_period": list(cfg.test_period),
            "epoch": epoch,
            "epochs": cfg.epochs,
            "learning_rate": lr,
            "optimizer": "Adam",
            "batch_size": cfg.batch_size,
            "predict_last_n": cfg.predict_last_n,
            "seed": cfg.seed,
            "train_loss": total / max(count, 1),
            "n_train_targets": n_targets,
            "data": _provenance(ds),
            "training_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
            "created": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
        }
        row = {"epoch": epoch, "lr": lr, "train_loss": total / max(count, 1), "seconds": time.perf_counter() - t0}
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            ckpt = Checkpoint(model=model, manifest=manifest, path=out, sha256="")
            sim = hydro.simulate(ckpt, ds, *cfg.test_period, device=device, cache=False)
            test = hydro.skill(obs_test.values, sim.values)
            manifest["test_metrics"] = {**test, **bench}
            row.update(test_nse=test["nse"], test_kge=test["kge"])
        save_checkpoint(out / f"epoch_{epoch:03d}", model.cpu(), manifest)
        model.to(device)
        result.history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", nse=f"{row.get('test_nse', float('nan')):.3f}")
    (out / "history.json").write_text(json.dumps({"history": result.history, "benchmark": bench}, indent=2))
    return result


def _sequence_samples(ds: xr.Dataset, cfg: HydroTrainConfig, stats: dict):
    """Normalised inputs (T, n) and target (T,) — NaN outside the training period — and the valid sequence starts.

    A start ``s`` is valid when the sequence ``s .. s + L - 1`` lies in the record, ends no later than the training
    period's last day, and its last ``predict_last_n`` days hold at least one observed target.
    """
    from xaiscope.core.hydro import _normalise_columns

    times = pd.DatetimeIndex(ds.time.values)
    x_all = _normalise_columns(ds, cfg.inputs, stats, what="input")
    y = (ds[cfg.target].values.astype(np.float64) - stats[cfg.target]["mean"]) / stats[cfg.target]["std"]
    in_period = (times >= pd.Timestamp(cfg.train_period[0])) & (times <= pd.Timestamp(cfg.train_period[1]))
    y_all = np.where(in_period, y, np.nan).astype(np.float32)
    L, P = cfg.window + cfg.predict_last_n - 1, cfg.predict_last_n
    if len(times) < L:
        raise XaiscopeError(f"the record has {len(times)} days; training needs sequences of {L} days.")
    last = int(np.flatnonzero(in_period)[-1]) if in_period.any() else -1
    has_target = np.convolve(np.isfinite(y_all).astype(int), np.ones(P, int), "valid") > 0  # per block start
    starts = np.arange(0, len(times) - L + 1)
    starts = starts[(starts + L - 1 <= last) & has_target[starts + L - P]]
    if starts.size == 0:
        raise XaiscopeError(
            f"no training sequences: the period {cfg.train_period} needs observed {cfg.target!r} and {L} days of "
            "inputs before its targets; widen the period or shorten --window/--predict-last-n."
        )
    return x_all, y_all, starts
