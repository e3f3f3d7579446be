"""What the TracIn view needs beside :mod:`xaiscope.core.influence`, without any UI import.

* the shipped checkpoint series the view offers (:func:`shipped_runs`), with a subset of epochs for long runs;
* a cached training-embedding store per (checkpoints, method) under the user cache dir (:func:`store_dir`,
  :func:`cached_store`, :func:`compute_store`), built only through the public store API
  (:func:`~xaiscope.core.influence.precompute_store` / :func:`~xaiscope.core.influence.open_store`);
* a cost estimate before a long computation (:func:`estimate_cost`: examples × checkpoints × a measured
  per-example time);
* the training loss of every training example at the last checkpoint (:func:`training_loss`);
* the shipped mislabel-detection result (:func:`load_mislabel_summary`), made by::

      python -m xaiscope.core.influence_view mislabel --out assets/influence/mislabel_sst_qoi_lag03.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from xaiscope.core import influence as I
from xaiscope.core.checkpoint import Checkpoint, list_series

MISLABEL_FILE = "mislabel_sst_qoi_lag03.json"


@dataclass(frozen=True)
class RunEntry:
    """One checkpoint series offered by the view."""

    key: str
    label: str
    paths: tuple[str, ...]
    kind: str = ""


def every_nth(paths: Sequence, n: int) -> list:
    """Every ``n``-th checkpoint of a series, always ending on the last one (epochs n, 2n, …, last)."""
    paths = list(paths)
    if n <= 1 or len(paths) <= n:
        return paths
    picked = paths[n - 1::n]
    if picked[-1] != paths[-1]:
        picked.append(paths[-1])
    return picked


def _epoch(path: Path) -> int | None:
    try:
        return int(json.loads((Path(path) / "manifest.json").read_text()).get("epoch"))
    except (OSError, ValueError, TypeError):
        return None


def run_entry(key: str, run: str | Path, every: int = 1, name: str | None = None) -> RunEntry:
    """A :class:`RunEntry` for a run folder (``epoch_NNN`` checkpoints), keeping every ``every``-th epoch."""
    paths = every_nth(list_series(run), every)
    epochs = [_epoch(p) for p in paths]
    kind = ""
    try:
        kind = json.loads((Path(paths[-1]) / "manifest.json").read_text()).get("kind", "")
    except (OSError, ValueError):
        pass
    ep = ", ".join(str(e) for e in epochs if e is not None)
    label = f"{name or Path(run).name} (epochs {ep})"
    return RunEntry(key, label, tuple(str(p) for p in paths), kind)


def shipped_runs() -> dict[str, RunEntry]:
    """The shipped checkpoint series: SST-QoI lags 3, 0, 6, 12; the hydrology LSTM of basin 01031500 (every 20th
    of its 80 epochs); the ENSO ConvLSTM (6 epochs)."""
    from xaiscope.assets import ASSETS

    root = ASSETS / "checkpoints"
    out = {}
    for lag in (3, 0, 6, 12):
        key = f"sst_qoi_lag{lag:02d}"
        if (root / key).exists():
            out[key] = run_entry(key, root / key, 1, f"SST-QoI classifier, lag {lag}")
    if (root / "hydro_01031500").exists():
        out["hydro_01031500"] = run_entry("hydro_01031500", root / "hydro_01031500", 20,
                                          "Rainfall-runoff LSTM, basin 01031500")
    if (root / "enso_convlstm").exists():
        out["enso_convlstm"] = run_entry("enso_convlstm", root / "enso_convlstm", 1, "ENSO ConvLSTM")
    return out


def import_model_kinds() -> None:
    """Register every model kind the view may load (the registry learns them on import)."""
    from xaiscope.core import convlstm, sst_qoi  # noqa: F401


# ------------------------------------------------------------------------------------------------- stores
def cache_root() -> Path:
    """``$XAISCOPE_CACHE_DIR/tracin`` (default ``~/.cache/xaiscope/tracin``)."""
    return Path(os.environ.get("XAISCOPE_CACHE_DIR") or Path.home() / ".cache" / "xaiscope") / "tracin"


def spec_key(spec: I.EmbeddingSpec) -> dict:
    return {"method": spec.method, "layers": list(spec.layers) if spec.layers else None,
            "dim": int(spec.dim) if spec.method == "projection" else None,
            "seed": int(spec.seed) if spec.method == "projection" else None}


def store_dir(ckpts: Sequence[Checkpoint], spec: I.EmbeddingSpec, n_train: int, root: Path | None = None) -> Path:
    """Folder of the store for these checkpoints (their sha256s), this embedding spec and training set size."""
    h = hashlib.sha256(json.dumps({"checkpoints": [c.sha256 for c in ckpts], "spec": spec_key(spec),
                                   "n_train": int(n_train)}, sort_keys=True).encode()).hexdigest()[:20]
    return Path(root or cache_root()) / f"{ckpts[0].kind}-{spec.method}-{h}"


def cached_store(ckpts: Sequence[Checkpoint], spec: I.EmbeddingSpec, n_train: int,
                 root: Path | None = None) -> I.InfluenceStore | None:
    """The stored embeddings for these checkpoints and spec, or ``None`` when missing or stale."""
    path = store_dir(ckpts, spec, n_train, root)
    if not path.exists():
        return None
    try:
        store = I.open_store(path)
        store.check(ckpts)
    except I.InfluenceError:
        return None
    return store


def compute_store(ckpts: Sequence[Checkpoint], train: I.Examples, spec: I.EmbeddingSpec,
                  progress: Callable[[int, int], None] | None = None, root: Path | None = None,
                  device=None) -> I.InfluenceStore:
    """Compute and cache the training embeddings (written beside the final folder, then moved into place, so a
    half-written store is never opened); ``device``: where the gradients are computed (default the CPU)."""
    final = store_dir(ckpts, spec, len(train), root)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    try:
        I.precompute_store(tmp, list(ckpts), train, method=spec.method, layers=spec.layers, dim=spec.dim,
                           seed=spec.seed, progress=progress, device=device)
        try:
            os.replace(tmp, final)
        except OSError:  # another process put one there first
            pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return I.open_store(final, list(ckpts))


@dataclass
class CostEstimate:
    n_examples: int
    n_checkpoints: int
    per_example_s: float      # measured, per example and checkpoint
    setup_s: float            # measured, per checkpoint (e.g. drawing a projection matrix)
    seconds: float
    dims: int                 # embedding width
    bytes: int

    def text(self) -> str:
        setup = f" + {_duration(self.setup_s)} set-up per checkpoint" if self.setup_s >= 0.05 else ""
        return (f"{self.n_examples:,} training examples × {self.n_checkpoints} checkpoint(s) × "
                f"{1e3 * self.per_example_s:.2f} ms (measured per example){setup} ≈ {_duration(self.seconds)}; "
                f"{self.dims:,} numbers per example, {self.bytes / 2**20:,.1f} MiB on disk")


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s" if s >= 1 else f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def estimate_cost(ckpts: Sequence[Checkpoint], train: I.Examples, spec: I.EmbeddingSpec, probe: int | None = None,
                  device=None) -> CostEstimate:
    """Cost of embedding the training set: one checkpoint's embedding of 1 and of ``probe`` examples is timed
    (the difference gives the time per example, the rest the per-checkpoint set-up) and scaled to all examples
    and checkpoints; on ``device`` (default the CPU), where the probe is as large as a batch there."""
    adapter = I.get_adapter(ckpts[0].kind)
    device = None if device is None else I.choose_device(device)
    on_gpu = device is not None and device.type != "cpu"
    if probe is None:  # batched routes: a batch of realistic size; the per-example loop: a few examples
        probe = 4 if adapter.route == "loop" else min(512 if on_gpu else 32, adapter.batch_size_on(device))
    n = min(max(2, probe), len(train))
    t0 = time.perf_counter()
    one = I.embed([ckpts[0]], train.x[:1], train.y[:1], spec, adapter, device=device)
    t1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    I.embed([ckpts[0]], train.x[:n], train.y[:n], spec, adapter, device=device)
    tn = time.perf_counter() - t0
    per = max((tn - t1) / max(n - 1, 1), tn / n / 4, 1e-6)
    setup = max(t1 - per, 0.0)
    dims = one.shape[1] * len(ckpts)
    return CostEstimate(len(train), len(ckpts), per, setup, len(ckpts) * (setup + per * len(train)), dims,
                        4 * dims * len(train))


def training_loss(ckpt: Checkpoint, examples: I.Examples, batch_size: int = 256) -> np.ndarray:
    """Per-example training loss (the adapter's, as in training) of ``examples`` at ``ckpt`` (N,)."""
    adapter = I.get_adapter(ckpt.kind)
    model = I.prepare_model(ckpt)
    dtype = next(model.parameters()).dtype
    out = []
    with torch.no_grad():
        for s in range(0, len(examples), batch_size):
            x = torch.as_tensor(np.asarray(examples.x[s:s + batch_size]), dtype=dtype)
            yb = np.asarray(examples.y[s:s + batch_size])
            y = torch.as_tensor(yb) if yb.dtype.kind in "iu" else torch.as_tensor(yb, dtype=dtype)
            out.append(adapter.loss(model, x, y).reshape(len(x)).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


# ------------------------------------------------------------------------------------- mislabel detection
def mislabel_summary(res, how: str = "") -> dict:
    """A JSON-able summary of :class:`~xaiscope.core.influence_eval.MislabelResult` (scores, flags, AUCs)."""
    return {
        "what": "mislabel detection on the SST-QoI classifier: share of deliberately flipped training labels "
                "found when inspecting training examples by decreasing self-influence, by decreasing training "
                "loss, or in random order (Pruthi et al. 2020, section 4.1)",
        "how": how or "python -m xaiscope.core.influence_view mislabel --out FILE "
                      "(xaiscope.core.influence_eval.mislabel_experiment on the shipped demo SST)",
        "config": res.config, "auc": res.auc, "found_at_20": res.found_at_20,
        "flipped": np.asarray(res.flipped, bool).astype(int).tolist(),
        "self_influence": [float(v) for v in res.self_influence],
        "loss": [float(v) for v in res.loss],
        "random_found": [float(v) for v in res.curves["random"][1]],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
    }


def mislabel_file() -> Path:
    from xaiscope.assets import ASSETS

    return ASSETS / "influence" / MISLABEL_FILE


def load_mislabel_summary(path: str | Path | None = None) -> dict:
    """The shipped (or given) mislabel-detection result with its curves recomputed from the stored scores by
    :func:`~xaiscope.core.influence_eval.detection_curve`: ``curves`` {name: (inspected, found)}."""
    from xaiscope.core.influence_eval import detection_curve

    path = Path(path or mislabel_file())
    if not path.exists():
        raise I.InfluenceError(f"{path}: no mislabel-detection result; make one with `python -m "
                               "xaiscope.core.influence_view mislabel --out FILE`.")
    d = json.loads(path.read_text())
    flipped = np.asarray(d["flipped"], bool)
    curves = {name: detection_curve(np.asarray(d[name], float), flipped) for name in ("self_influence", "loss")}
    curves["random"] = (curves["loss"][0], np.asarray(d["random_found"], float))
    d["curves"] = curves
    return d


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m xaiscope.core.influence_view")
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mislabel", help="run the mislabel-detection experiment and write its summary (JSON)")
    m.add_argument("--out", required=True)
    m.add_argument("--lag", type=int, default=3)
    m.add_argument("--fraction", type=float, default=0.1)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--epochs", type=int, default=10)
    m.add_argument("--method", default="exact")
    a = p.parse_args(argv)
    from xaiscope.core.influence_eval import mislabel_experiment

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        res = mislabel_experiment(Path(tmp) / "run", lag=a.lag, fraction=a.fraction, seed=a.seed, epochs=a.epochs,
                                  method=a.method)
    how = (f"python -m xaiscope.core.influence_view mislabel --out {a.out} --lag {a.lag} --fraction {a.fraction} "
           f"--seed {a.seed} --epochs {a.epochs} --method {a.method}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(mislabel_summary(res, how)))
    print(f"wrote {out}: AUC " + ", ".join(f"{k} {v:.3f}" for k, v in res.auc.items()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
