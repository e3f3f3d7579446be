"""Training of the ENSO ConvLSTM on monthly SST (and SSH) anomaly maps, with a checkpoint every epoch.

Samples: ``window`` input months ending at the initial month t → targets at t+1..t+n_leads (maps and Niño 3.4).
A sample belongs to a period when its initial month and all its target months lie in it (no target of a training
sample falls in the validation or test years). Inputs are divided by their training-period standard deviation
(stored in the manifest as ``normalisation``); targets stay in degC.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from xaiscope.core.checkpoint import save_checkpoint
from xaiscope.core.convlstm import EnsoConvLSTM, enso_loss
from xaiscope.core.errors import XaiscopeError
from xaiscope.core.lim import fit_lim, lead_skill, persistence_forecast
from xaiscope.data.sst import NINO34_BOX, nino34


@dataclass
class EnsoTrainConfig:
    epochs: int = 20
    inputs: tuple[str, ...] = ("sst_anomaly", "ssh_anomaly")
    hidden: tuple[int, ...] = (16, 16, 32)
    kernels: tuple[int, ...] = (3, 3, 5)
    window: int = 6
    n_leads: int = 6
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 0
    device: str | None = None
    threads: int | None = 1
    train_period: tuple[str, str] = ("1980-01", "2005-12")
    val_period: tuple[str, str] = ("2006-01", "2009-12")
    test_period: tuple[str, str] = ("2010-01", "2018-12")
    lim_modes: int = 20


@dataclass
class EnsoSamples:
    x: np.ndarray          # (N, window, C, lat, lon) normalised, NaN on land
    y_map: np.ndarray      # (N, n_leads, lat, lon) degC
    y_nino: np.ndarray     # (N, n_leads) degC
    init: pd.DatetimeIndex  # initial (last input) month


@dataclass
class EnsoTrainResult:
    out: Path
    history: list[dict] = field(default_factory=list)
    test_skill: dict = field(default_factory=dict)


def make_samples(ds: xr.Dataset, inputs, window: int, n_leads: int, stats: dict, period) -> EnsoSamples:
    missing = [v for v in inputs if v not in ds]
    if missing:
        raise XaiscopeError(f"the SST dataset lacks {missing}; it has {list(ds.data_vars)} — pass inputs=... that exist.")
    x_all = np.stack([ds[v].values / stats[v]["std"] for v in inputs], 1).astype(np.float32)  # (T, C, lat, lon)
    sst = ds["sst_anomaly"].values.astype(np.float32)
    idx = nino34(ds["sst_anomaly"]).values.astype(np.float32)
    times = pd.DatetimeIndex(ds.time.values)
    p0, p1 = pd.Timestamp(period[0]), pd.Timestamp(period[1]) + pd.offsets.MonthEnd(0)
    rows = [t for t in range(window - 1, len(times) - n_leads)
            if times[t - window + 1] >= p0 and times[t + n_leads] <= p1]
    if not rows:
        raise XaiscopeError(f"period {period[0]}..{period[1]} holds no complete sample of {window} input and "
                            f"{n_leads} target months within {times[0]:%Y-%m}..{times[-1]:%Y-%m}.")
    x = np.stack([x_all[t - window + 1:t + 1] for t in rows])
    y_map = np.stack([sst[t + 1:t + 1 + n_leads] for t in rows])
    y_nino = np.stack([idx[t + 1:t + 1 + n_leads] for t in rows])
    return EnsoSamples(x, y_map, y_nino, times[rows])


def nino_box_indices(lat, lon) -> tuple[int, int, int, int]:
    lat, lon = np.asarray(lat), np.mod(np.asarray(lon), 360)
    i = np.where((lat >= NINO34_BOX["lat"][0]) & (lat <= NINO34_BOX["lat"][1]))[0]
    j = np.where((lon >= NINO34_BOX["lon"][0]) & (lon <= NINO34_BOX["lon"][1]))[0]
    return int(i[0]), int(i[-1] + 1), int(j[0]), int(j[-1] + 1)


def predict(model: EnsoConvLSTM, x: np.ndarray, batch_size: int = 64, device=None) -> dict[str, np.ndarray]:
    model.eval()
    dev = device or next(model.parameters()).device
    outs = {"map": [], "nino34": [], "phase_logits": []}
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            o = model(torch.as_tensor(x[s:s + batch_size], device=dev))
            for k in outs:
                outs[k].append(o[k].cpu().numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


def skill_table(model, samples: EnsoSamples, ds: xr.Dataset, lim_modes: int, train_period) -> dict:
    """Niño 3.4 anomaly correlation and RMSE by lead on the given samples: ConvLSTM, persistence, LIM."""
    pred = predict(model, samples.x)["nino34"]
    obs_idx = nino34(ds["sst_anomaly"])
    init = xr.DataArray(samples.init, dims="time")
    leads = list(range(1, samples.y_nino.shape[1] + 1))
    pers = persistence_forecast(obs_idx, leads).sel(time=init)
    lim = fit_lim(ds["sst_anomaly"], ds["land_mask"], n_modes=lim_modes, period=train_period)
    lim_fc = lim.forecast_index(ds["sst_anomaly"].sel(time=init), leads)
    model_fc = xr.DataArray(pred, dims=("time", "lead"), coords={"time": samples.init, "lead": leads})
    table = {}
    for name, fc in (("convlstm", model_fc), ("persistence", pers), ("lim", lim_fc)):
        df = lead_skill(fc, obs_idx)
        table[name] = {int(k): {"r": float(v.r), "rmse": float(v.rmse), "n": int(v.n)} for k, v in df.iterrows()}
    return table


def train_enso(ds: xr.Dataset, out, cfg: EnsoTrainConfig | None = None, progress: bool = True) -> EnsoTrainResult:
    """Train :class:`EnsoConvLSTM` on an SST Dataset (``sst_anomaly`` [+ ``ssh_anomaly``], ``land_mask``; e.g.
    :func:`xaiscope.data.sst.demo_sst`) and write ``out/epoch_NNN`` after every epoch (with validation loss; the
    last one also holds the test-period skill by lead for the ConvLSTM, persistence and the LIM)."""
    from tqdm.auto import tqdm

    cfg = cfg or EnsoTrainConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from xaiscope.core.device import choose_device

    device = choose_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if "land_mask" not in ds:
        raise XaiscopeError("the SST dataset has no land_mask; read it with xaiscope.data.sst.read_sst/demo_sst.")
    tr = ds.sel(time=slice(*cfg.train_period))
    stats = {v: {"mean": 0.0, "std": float(np.nanstd(tr[v].values))} for v in cfg.inputs if v in ds}
    train = make_samples(ds, cfg.inputs, cfg.window, cfg.n_leads, stats, cfg.train_period)
    val = make_samples(ds, cfg.inputs, cfg.window, cfg.n_leads, stats, cfg.val_period)
    test = make_samples(ds, cfg.inputs, cfg.window, cfg.n_leads, stats, cfg.test_period)
    config = {"n_inputs": len(cfg.inputs), "hidden": list(cfg.hidden), "kernels": list(cfg.kernels),
              "n_lat": ds.sizes["lat"], "n_lon": ds.sizes["lon"], "window": cfg.window, "n_leads": cfg.n_leads,
              "nino_box": list(nino_box_indices(ds.lat, ds.lon)), "periodic_lon": True}
    model = EnsoConvLSTM(**config)
    model.set_sea_mask(ds["land_mask"])
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    sea = model.sea_mask
    out = Path(out)
    res = EnsoTrainResult(out=out)
    n = len(train.x)
    steps = math.ceil(n / cfg.batch_size)
    bar = tqdm(total=cfg.epochs * steps, disable=not progress, desc="train enso", unit="batch")
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = rng.permutation(n)
        total = 0.0
        for s in range(steps):
            b = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            xb = torch.as_tensor(train.x[b], device=device)
            o = model(xb)
            loss, _ = enso_loss(o, torch.as_tensor(train.y_map[b], device=device),
                                torch.as_tensor(train.y_nino[b], device=device), sea)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        with torch.no_grad():
            model.eval()
            vo = predict(model, val.x)
            vloss, parts = enso_loss({k: torch.as_tensor(v) for k, v in vo.items()}, torch.as_tensor(val.y_map),
                                     torch.as_tensor(val.y_nino), sea.cpu())
        rec = {"epoch": epoch, "train_loss": total / n, "val_loss": float(vloss),
               "val_map_mse": float(parts["map_mse"]), "val_nino_mse": float(parts["nino_mse"])}
        res.history.append(rec)
        manifest = {
            "kind": "enso_convlstm", "config": config, "name": "enso_convlstm", "inputs": list(cfg.inputs),
            "target": ["sst_anomaly", "nino34", "enso_phase"], "normalisation": stats, "window": cfg.window,
            "n_leads": cfg.n_leads, "epoch": epoch, "learning_rate": cfg.learning_rate, "seed": cfg.seed,
            "train_period": list(cfg.train_period), "val_period": list(cfg.val_period),
            "test_period": list(cfg.test_period), "metrics": rec, "train_config": _jsonable(asdict(cfg)),
            "grid": {"lat": [float(v) for v in ds.lat.values], "lon": [float(v) for v in ds.lon.values]},
            "data": {"source": ds.attrs.get("source", ""), "files": json.loads(ds.attrs.get("files", "[]"))},
        }
        if epoch == cfg.epochs:
            res.test_skill = skill_table(model.cpu(), test, ds, cfg.lim_modes, cfg.train_period)
            model.to(device)
            manifest["test_skill"] = res.test_skill
        save_checkpoint(out / f"epoch_{epoch:03d}", model, manifest)
    bar.close()
    return res


def _jsonable(d):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def run_cli(args) -> int:
    """``xaiscope train enso``."""
    from xaiscope.data.sst import demo_sst, read_sst

    inputs = ("sst_anomaly",) if args.no_ssh else ("sst_anomaly", "ssh_anomaly")
    if args.data == "demo":
        ds = demo_sst(with_ssh=not args.no_ssh)
    else:
        ds = read_sst(args.data, anomaly=True)
        inputs = ("sst_anomaly",)
    cfg = EnsoTrainConfig(
        epochs=args.epochs, inputs=inputs, hidden=tuple(int(v) for v in args.hidden.split(",")),
        kernels=tuple(int(v) for v in args.kernels.split(",")), window=args.window, n_leads=args.leads,
        batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed, device=args.device,
        train_period=(args.train_start, args.train_end), val_period=(args.val_start, args.val_end),
        test_period=(args.test_start, args.test_end))
    res = train_enso(ds, args.out, cfg, progress=not args.quiet)
    print(f"checkpoints: {res.out}/epoch_001 … epoch_{cfg.epochs:03d}")
    print(f"Niño 3.4 anomaly correlation by lead, test {cfg.test_period[0]}..{cfg.test_period[1]}:")
    leads = sorted(res.test_skill["convlstm"])
    print("  lead " + " ".join(f"{k:>6d}" for k in leads))
    for who in ("convlstm", "persistence", "lim"):
        print(f"  {who:>11} " + " ".join(f"{res.test_skill[who][k]['r']:6.3f}" for k in leads))
    return 0
