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

from xaiscope.core.checkpoint import save_checkpoint
from xaiscope.core.errors import XaiscopeError
from xaiscope.core.models import HydroLSTM

# Kratzert et al. (2018), section 2.4: calibration 1980-10-01..1995-09-30, validation 1995-10-01..2010-09-30.
TRAIN_PERIOD = ("1980-10-01", "1995-09-30")
TEST_PERIOD = ("1995-10-01", "2010-09-30")


@dataclass
class HydroTrainConfig:
    """Settings of ``xaiscope train hydro`` (defaults: Kratzert et al. 2018, one basin)."""

    inputs: tuple[str, ...] = ("prcp", "srad", "tmax", "tmin", "vp")
    target: str = "qobs"
    window: int = 365
    hidden_size: int = 20
    num_layers: int = 2
    dropout: float = 0.1
    initial_forget_bias: float = 3.0
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    lr_decay_epochs: tuple[int, ...] = (20, 25)  # learning rate × 0.5 from each of these epochs on
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
    from xaiscope.data.windows import compute_stats, make_windows

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
    train = make_windows(ds, inputs=cfg.inputs, target=cfg.target, period=cfg.train_period,
                         window=cfg.window, stats=stats)
    if len(train.y) == 0:
        raise XaiscopeError(f"no training windows with observed {cfg.target} in {cfg.train_period}.")
    x = torch.from_numpy(train.x)
    y = torch.from_numpy(train.y)

    model_cfg = dict(n_inputs=len(cfg.inputs), hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                     dropout=cfg.dropout, initial_forget_bias=cfg.initial_forget_bias)
    model = HydroLSTM(**model_cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    obs_test = ds[cfg.target].sel(time=slice(*cfg.test_period))
    bench = {}
    if "q_benchmark" in ds:
        qb = ds["q_benchmark"].sel(time=slice(*cfg.test_period))
        bench = {f"benchmark_{k}": v for k, v in hydro.skill(obs_test.values, qb.values).items()}

    result = TrainResult(out=out)
    bar = tqdm(range(1, cfg.epochs + 1), desc="train hydro", unit="epoch", disable=not progress)
    for epoch in bar:
        lr = cfg.lr_at(epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        perm = torch.randperm(len(y), generator=gen)
        t0, total, count = time.perf_counter(), 0.0, 0
        for b in range(0, len(y), cfg.batch_size):
            idx = perm[b: b + cfg.batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
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
            "seed": cfg.seed,
            "train_loss": total / count,
            "n_train_windows": int(len(y)),
            "data": _provenance(ds),
            "training_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
            "created": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
        }
        ckpt = Checkpoint(model=model, manifest=manifest, path=out, sha256="")
        sim = hydro.simulate(ckpt, ds, *cfg.test_period, device=device)
        test = hydro.skill(obs_test.values, sim.values)
        manifest["test_metrics"] = {**test, **bench}
        save_checkpoint(out / f"epoch_{epoch:03d}", model.cpu(), manifest)
        model.to(device)
        row = {"epoch": epoch, "lr": lr, "train_loss": total / count, "test_nse": test["nse"],
               "test_kge": test["kge"], "seconds": time.perf_counter() - t0}
        result.history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", nse=f"{test['nse']:.3f}", kge=f"{test['kge']:.3f}")
    (out / "history.json").write_text(json.dumps({"history": result.history, "benchmark": bench}, indent=2))
    return result
