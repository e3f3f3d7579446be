"""The ``xaiscope`` command line: train, states, evaluate, info, export, serve."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from xaiscope.core.errors import USER_ERRORS

log = logging.getLogger("xaiscope")

DATA_HELP = ("basin data: 'demo' (bundled CAMELS-US basin 01031500), 'synthetic[:SEED]', a CAMELS-US folder "
             "(with --basin), a forcing .txt file, or a NetCDF basin file (default: demo)")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:N or mps (default: CUDA if available, then MPS, else CPU)")


# ---------------------------------------------------------------------------------------------- train
def _cmd_train_hydro(args) -> int:
    from xaiscope.core.hydro import open_basin_data
    from xaiscope.core.train import HydroTrainConfig, train_hydro

    ds = open_basin_data(args.data, args.basin)
    cfg = HydroTrainConfig(
        epochs=args.epochs, hidden_size=args.hidden_size, num_layers=args.num_layers, dropout=args.dropout,
        batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed, device=args.device,
        train_period=(args.train_start, args.train_end), test_period=(args.test_start, args.test_end),
        window=args.window, predict_last_n=args.predict_last_n, sample_stride=args.sample_stride,
        eval_every=args.eval_every,
    )
    res = train_hydro(ds, args.out, cfg, progress=not args.quiet)
    last = json.loads((Path(args.out) / f"epoch_{cfg.epochs:03d}" / "manifest.json").read_text())
    m = last["test_metrics"]
    print(f"checkpoints: {res.out}/epoch_001 … epoch_{cfg.epochs:03d}")
    print(f"test {cfg.test_period[0]}..{cfg.test_period[1]}: NSE {m['nse']:.3f}  KGE {m['kge']:.3f}  "
          f"(negative days: {m['negative_days']})")
    if "benchmark_nse" in m:
        print(f"SAC-SMA+Snow-17 (CAMELS model output), same days: NSE {m['benchmark_nse']:.3f}  "
              f"KGE {m['benchmark_kge']:.3f}")
    return 0


def _cmd_train_enso(args) -> int:
    from xaiscope.core.train_enso import run_cli

    return run_cli(args)


def _cmd_train_sst_qoi(args) -> int:
    from xaiscope.core.sst_qoi import run_cli

    return run_cli(args)


# --------------------------------------------------------------------------------------------- states
def _basin(args, ckpt):
    """--basin, else (for a CAMELS folder) the checkpoint's own basin, e.g. of a neuralhydrology run."""
    if args.basin is None and args.data and Path(str(args.data)).expanduser().is_dir():
        return (ckpt.manifest.get("data") or {}).get("basin_id")
    return args.basin


def _cmd_states(args) -> int:
    from xaiscope.core import hydro

    ckpt = hydro.load_hydro(args.checkpoint)
    ds = hydro.open_basin_data(args.data, _basin(args, ckpt))
    if args.continuous:
        out = hydro.continuous_states(ckpt, ds, args.start, args.end, device=args.device)
    else:
        if not args.date:
            raise SystemExit("xaiscope states: error: give --date YYYY-MM-DD (window mode) or --continuous")
        out = hydro.window_states(ckpt, ds, args.date, device=args.device)
    out.attrs["data"] = str(args.data or "demo")
    out.attrs["command"] = " ".join(["xaiscope", *sys.argv[1:]]) if sys.argv else "xaiscope states"
    out.attrs["history"] = "written by xaiscope states"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out.to_netcdf(args.out)
    dims = ", ".join(f"{k}={v}" for k, v in out.sizes.items())
    print(f"wrote {args.out}: c, h, i, f, g, o ({dims}); checkpoint sha256 {ckpt.sha256[:12]}…")
    return 0


# ------------------------------------------------------------------------------------------- evaluate
def _cmd_evaluate(args) -> int:
    from xaiscope.core import hydro

    ckpt = hydro.load_hydro(args.checkpoint)
    ds = hydro.open_basin_data(args.data, _basin(args, ckpt))
    start = args.start or ckpt.manifest.get("test_period", [None, None])[0]
    end = args.end or ckpt.manifest.get("test_period", [None, None])[1]
    sim = hydro.simulate(ckpt, ds, start, end, device=args.device)
    obs = ds[ckpt.manifest.get("target", "qobs")].sel(time=sim.time)
    res = {"period": [str(start), str(end)], "model": hydro.skill(obs.values, sim.values)}
    if "q_benchmark" in ds:
        res["sac_sma_snow17"] = hydro.skill(obs.values, ds["q_benchmark"].sel(time=sim.time).values)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for who, m in res.items():
            if who == "period":
                continue
            print(f"{who:>15}: NSE {m['nse']:.3f}  KGE {m['kge']:.3f}  r {m['r']:.3f}  alpha {m['alpha']:.3f}  "
                  f"beta {m['beta']:.3f}  n={m['n']}  negative days={m['negative_days']}")
    return 0


# ----------------------------------------------------------------------------------------- info/export
def _cmd_info(args) -> int:
    from xaiscope.core.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    if args.json:
        print(json.dumps({**ckpt.manifest, "sha256": ckpt.sha256}, indent=2))
        return 0
    m = ckpt.manifest
    n_params = sum(p.numel() for p in ckpt.model.parameters())
    print(f"{ckpt.path}\n  kind: {m['kind']}  config: {m['config']}  parameters: {n_params}")
    print(f"  sha256: {ckpt.sha256}")
    for key in ("inputs", "target", "window", "epoch", "learning_rate", "seed", "train_period", "test_period"):
        if key in m:
            print(f"  {key}: {m[key]}")
    # the descriptive fields of a manifest may hold anything: print them, never fail on them
    if isinstance(m.get("data"), dict) and m["data"].get("basin_id"):
        print(f"  data: basin {m['data'].get('basin_id')} {m['data'].get('start')}..{m['data'].get('end')}")
    if isinstance(m.get("test_metrics"), dict):
        t = m["test_metrics"]

        def num(v):
            return f"{v:.3f}" if isinstance(v, (int, float)) else repr(v)

        print(f"  test NSE {num(t.get('nse', float('nan')))}  KGE {num(t.get('kge', float('nan')))}")
    if isinstance(m.get("neuralhydrology"), dict):
        nh = m["neuralhydrology"]
        print(f"  neuralhydrology run {nh.get('run_dir')}: model {nh.get('model')}, dynamic_inputs "
              f"{nh.get('dynamic_inputs')}, target {nh.get('target_variables')}")
    return 0


def _cmd_export(args) -> int:
    from xaiscope.core.checkpoint import export_safetensors, load_checkpoint

    items = list(args.items)
    fmt = items.pop(0) if items[0] in ("torchscript", "safetensors") and len(items) > 1 else "safetensors"
    if len(items) == 2 and args.out is None:
        items, args.out = items[:1], items[1]
    if len(items) != 1 or not args.out:
        raise SystemExit("xaiscope export: error: give CHECKPOINT --out FILE.safetensors, or "
                         "torchscript CHECKPOINT OUT.pt")
    if fmt == "torchscript":
        from xaiscope.core.export import export_torchscript

        res = export_torchscript(items[0], args.out, sequence=args.sequence, tolerance=args.tolerance)
        print(f"wrote {res.path} (TorchScript, {res.kind}): input {list(res.input_shape)} -> output "
              f"{list(res.output_shape)} on the sample; raw units in, physical units out")
        print(f"max abs difference to the Python model on seeded sample inputs: {res.max_abs_diff:.3g} "
              f"(tolerance {res.tolerance:g})")
        return 0
    out = export_safetensors(load_checkpoint(items[0]), args.out)
    print(f"wrote {out} (weights and manifest in one safetensors file)")
    return 0


# ---------------------------------------------------------------------------------------------- serve
def engine_settings(args):
    """The engine settings of ``xaiscope serve``: flags over ``$XAISCOPE_DEVICE`` / ``_CACHE_MB`` / ``_THREADS``
    / ``_MAX_BATCH`` / ``_MAX_WAIT_MS`` over the defaults."""
    from xaiscope.core.engine import EngineSettings

    return EngineSettings.from_env(device=args.device, cache_mb=args.cache_mb, threads=args.threads,
                                   max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)


def _cmd_serve(args) -> int:
    from xaiscope.core.engine import configure_engine
    from xaiscope.dashboard.app import serve

    settings = engine_settings(args)
    engine = configure_engine(settings)
    log.info("engine: device %s, result cache %g MB, batches of at most %d (wait ≤ %g ms), %s torch thread(s)",
             engine.default_device, settings.cache_mb, settings.max_batch, settings.max_wait_ms,
             settings.threads or 1)
    serve(port=args.port, address=args.address, checkpoints=args.checkpoint or [], data=args.data or [],
          device=settings.device, show=args.show, allowed_roots=args.allow_root or [],
          torch_threads=settings.threads or 1)
    return 0


# ----------------------------------------------------------------------------------------- precompute
def _cmd_precompute_influence(args) -> int:
    from xaiscope.core.influence import run_precompute_cli

    return run_precompute_cli(args)


# ------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xaiscope", description="Look inside trained geoscience neural networks.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # train
    p_train = sub.add_parser("train", help="train a model and save a checkpoint every epoch")
    train_sub = p_train.add_subparsers(dest="model", metavar="MODEL", required=True)
    p = train_sub.add_parser(
        "hydro", help="rainfall-runoff LSTM (Kratzert et al. 2018) on one basin",
        description="Train the Kratzert et al. (2018) LSTM on one basin; writes OUT/epoch_NNN every epoch and "
                    "reports test NSE/KGE beside the SAC-SMA+Snow-17 benchmark.")
    p.add_argument("--data", default="demo", help=DATA_HELP)
    p.add_argument("--basin", default=None, help="8-digit basin id (needed with a CAMELS folder)")
    p.add_argument("--out", required=True, help="output folder for the checkpoint series")
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--hidden-size", type=int, default=20)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=16, help="sequences per batch")
    p.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (halved at epochs 50 and 70)")
    p.add_argument("--window", type=int, default=365, help="days of inputs behind every prediction")
    p.add_argument("--predict-last-n", type=int, default=365,
                   help="targets per training sequence (sequence = window + n - 1 days; 1 = one target per window)")
    p.add_argument("--sample-stride", type=int, default=5, help="days between training sequence starts per epoch")
    p.add_argument("--eval-every", type=int, default=10, help="test-period NSE/KGE every N epochs (and the last)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-start", default="1980-10-01")
    p.add_argument("--train-end", default="1995-09-30")
    p.add_argument("--test-start", default="1995-10-01")
    p.add_argument("--test-end", default="2010-09-30")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_device(p)
    p.set_defaults(func=_cmd_train_hydro)

    p = train_sub.add_parser(
        "enso", help="ENSO ConvLSTM on monthly SST (+SSH) anomaly maps",
        description="Train the ENSO ConvLSTM (maps, Niño 3.4 and phase for leads 1..6) on the bundled 5° ERSSTv5/"
                    "GODAS anomalies or a NetCDF SST file; writes OUT/epoch_NNN every epoch and reports the "
                    "test-period Niño 3.4 skill by lead beside persistence and the LIM.")
    p.add_argument("--data", default="demo", help="'demo' (bundled 5° ERSSTv5 + GODAS SSH anomalies) or a NetCDF "
                                                  "file of SST anomalies (then only sst_anomaly is used)")
    p.add_argument("--out", required=True, help="output folder for the checkpoint series")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--hidden", default="16,16,32", help="channels per ConvLSTM layer, comma-separated")
    p.add_argument("--kernels", default="3,3,5", help="kernel size per layer, comma-separated (odd)")
    p.add_argument("--window", type=int, default=6, help="input months")
    p.add_argument("--leads", type=int, default=6, help="forecast leads (months)")
    p.add_argument("--no-ssh", action="store_true", help="SST anomalies only (no SSH input channel)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-start", default="1980-01")
    p.add_argument("--train-end", default="2005-12")
    p.add_argument("--val-start", default="2006-01")
    p.add_argument("--val-end", default="2009-12")
    p.add_argument("--test-start", default="2010-01")
    p.add_argument("--test-end", default="2018-12")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_device(p)
    p.set_defaults(func=_cmd_train_enso)

    p = train_sub.add_parser(
        "sst-qoi", help="sign of a NE-Pacific SST anomaly from the SST map LAG months earlier (FC ReLU network)",
        description="Train the fully connected network that predicts the sign of the area-weighted mean SST anomaly "
                    "in a box (default 30-45°N, 210-235°E) at month t from the sea-cell SST anomaly map at t - lag; "
                    "class-balanced loss, shuffled validation split; writes OUT/epoch_NNN every epoch.")
    p.add_argument("--data", default="demo", help="'demo' (bundled 5° ERSSTv5 anomalies) or a NetCDF file of SST "
                                                  "anomalies")
    p.add_argument("--out", required=True, help="output folder for the checkpoint series")
    p.add_argument("--lag", type=int, default=3, help="months between the input map and the target (0..12)")
    p.add_argument("--lat-min", type=float, default=30.0, help="QoI box southern bound (°N)")
    p.add_argument("--lat-max", type=float, default=45.0, help="QoI box northern bound (°N)")
    p.add_argument("--lon-min", type=float, default=210.0, help="QoI box western bound (°E, 0..360)")
    p.add_argument("--lon-max", type=float, default=235.0, help="QoI box eastern bound (°E, 0..360)")
    p.add_argument("--hidden", default="32,16", help="hidden layer widths, comma-separated")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (x0.97 every epoch)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of samples in the shuffled validation split")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_train_sst_qoi)

    # states
    p = sub.add_parser(
        "states", help="write every cell state, hidden state and gate of an LSTM checkpoint to NetCDF",
        description="Per-timestep internals (c, h, i, f, g, o; dims time, layer, cell) of a hydro LSTM, for the "
                    "window that ends on --date (window mode) or for the whole record (--continuous).")
    p.add_argument("checkpoint", help="checkpoint folder or file")
    p.add_argument("--data", default="demo", help=DATA_HELP)
    p.add_argument("--basin", default=None, help="8-digit basin id (needed with a CAMELS folder)")
    p.add_argument("--date", default=None, help="last day of the input window (YYYY-MM-DD)")
    p.add_argument("--continuous", action="store_true", help="one pass over the whole record")
    p.add_argument("--start", default=None, help="first day of the continuous pass")
    p.add_argument("--end", default=None, help="last day of the continuous pass")
    p.add_argument("--out", required=True, help="NetCDF file to write")
    _add_device(p)
    p.set_defaults(func=_cmd_states)

    # evaluate
    p = sub.add_parser("evaluate", help="NSE/KGE of a hydro checkpoint on a period, beside SAC-SMA+Snow-17")
    p.add_argument("checkpoint")
    p.add_argument("--data", default="demo", help=DATA_HELP)
    p.add_argument("--basin", default=None)
    p.add_argument("--start", default=None, help="default: the checkpoint's test period")
    p.add_argument("--end", default=None)
    p.add_argument("--json", action="store_true")
    _add_device(p)
    p.set_defaults(func=_cmd_evaluate)

    # info
    p = sub.add_parser("info", help="show a checkpoint's manifest")
    p.add_argument("checkpoint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)

    # export
    p = sub.add_parser(
        "export", help="export a checkpoint: one self-describing .safetensors file, or TorchScript (C++, FTorch)",
        usage="xaiscope export CHECKPOINT --out FILE.safetensors\n"
              "       xaiscope export torchscript CHECKPOINT OUT.pt [--sequence] [--tolerance 1e-4]",
        description="safetensors: weights and manifest in one file. torchscript: a module that takes raw inputs in "
                    "the manifest's physical units and returns physical outputs (normalisation baked in), for "
                    "torch.jit.load / FTorch's torch_model_load; checked against the Python model on seeded sample "
                    "inputs (the max difference is printed; above --tolerance nothing is written). Exports "
                    "hydro_lstm (also neuralhydrology runs) and sst_qoi_mlp checkpoints.")
    p.add_argument("items", nargs="+", metavar="[FORMAT] CHECKPOINT [OUT]",
                   help="FORMAT: safetensors (default) or torchscript")
    p.add_argument("--out", default=None, help="output file")
    p.add_argument("--sequence", action="store_true",
                   help="torchscript, hydro: output every day [batch, time, n_out] instead of the last day")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="torchscript: largest accepted difference to the Python model (default 1e-4)")
    p.set_defaults(func=_cmd_export)

    # serve
    p = sub.add_parser("serve", help="start the web app (default: on the bundled demo)")
    p.add_argument("--port", type=int, default=5006)
    p.add_argument("--address", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all)")
    p.add_argument("--checkpoint", action="append", help="extra checkpoint(s) to offer (repeatable)")
    p.add_argument("--data", action="append", help="extra data to offer (repeatable): " + DATA_HELP)
    p.add_argument("--show", action="store_true", help="open a browser tab")
    p.add_argument("--allow-root", action="append", metavar="DIR",
                   help="a folder whose files a path typed into the app may open (repeatable; also "
                        "$XAISCOPE_ALLOWED_ROOTS, os.pathsep-separated). Always allowed: the shipped assets, the "
                        "working directory, the cache folder and the folders of --checkpoint/--data")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:N or mps for the shared engine (default: $XAISCOPE_DEVICE, else CUDA if "
                        "available, then MPS, else CPU)")
    p.add_argument("--cache-mb", type=float, default=None, metavar="MB",
                   help="memory bound of the engine's result cache (default: $XAISCOPE_CACHE_MB, else 512)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the server process (default: $XAISCOPE_THREADS, else 1)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="most requests of all sessions run as one batched forward (default: $XAISCOPE_MAX_BATCH, "
                        "else 32)")
    p.add_argument("--max-wait-ms", type=float, default=None,
                   help="how long a request may wait for others to batch with (default: $XAISCOPE_MAX_WAIT_MS, "
                        "else 3)")
    p.set_defaults(func=_cmd_serve)

    # precompute
    p_pre = sub.add_parser("precompute", help="compute and store what views read (TracIn training embeddings)")
    pre_sub = p_pre.add_subparsers(dest="what", metavar="WHAT", required=True)
    p = pre_sub.add_parser(
        "influence", help="TracIn training embeddings of a checkpoint series",
        description="Per-example training-loss gradients of every checkpoint of RUN (a folder of epoch_NNN), scaled "
                    "by √(learning rate) — exact, last layer, or randomly projected — written to OUT with the "
                    "checkpoint hashes; a TracIn query is then a matrix product.")
    p.add_argument("run", help="checkpoint series folder (epoch_NNN sub-folders with learning rates)")
    p.add_argument("--out", required=True, help="folder of the influence store")
    p.add_argument("--method", choices=("exact", "last_layer", "projection"), default="exact")
    p.add_argument("--layers", default=None, help="comma-separated parameter name prefixes (default: all)")
    p.add_argument("--dim", type=int, default=128, help="projection dimension (method projection)")
    p.add_argument("--seed", type=int, default=0, help="projection seed")
    p.add_argument("--data", default=None, help="the run's data (default: the bundled demo data of its kind)")
    p.add_argument("--batch-size", type=int, default=None, help="examples per gradient batch")
    p.add_argument("--scheduler", default=None, metavar="local|ADDRESS",
                   help="run the chunks on Dask: 'local' starts a LocalCluster on this machine, tcp://HOST:8786 uses "
                        "a running scheduler (workers need xaiscope and write access to --out). Default: in this "
                        "process")
    p.add_argument("--workers", type=int, default=None, help="worker processes of --scheduler local (default 2)")
    p.add_argument("--chunk-rows", type=int, default=None,
                   help="training examples per chunk / Dask task (default 1024)")
    p.add_argument("--store-format", choices=("zarr", "npy"), default=None,
                   help="zarr (default; --out may be a shared folder or an fsspec URL such as s3://bucket/store) "
                        "or npy (the older memory-mapped form, in-process only; the default where Zarr 3 is not "
                        "installed)")
    p.add_argument("--device", default=None, metavar="auto|cpu|cuda[:N]|mps",
                   help="where the gradients are computed in this process (default: the CPU; auto: a GPU when "
                        "there is one); not with --scheduler")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_precompute_influence)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        log.debug("user error", exc_info=True)
        print(f"xaiscope {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
