"""How far to trust TracIn: the mislabel-detection experiment and diagnostics of a score matrix.

* :func:`mislabel_experiment` — flip a fraction of the SST-QoI classifier's training labels (seeded), retrain it
  with a checkpoint every epoch, rank the training examples by self-influence and measure the fraction of
  flipped labels found against the fraction of data inspected, beside random inspection and ranking by training
  loss, with the area under each curve (Pruthi et al. 2020, section 4.1).
* :func:`diagnostics` — top-k cardinality over a test set (are the same few training examples the top
  proponents of everything?) and gradient-norm dominance (are the top proponents just the examples with the
  largest gradients?), each with a flag and a warning text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xaiscope.core import influence as I
from xaiscope.core.checkpoint import save_checkpoint

#: Flag thresholds of :func:`diagnostics`.
CARDINALITY_MIN = 0.2       # distinct top-k proponents / possible distinct ones
HUB_SHARE_MAX = 0.5         # share of test examples that have the same training example among their top k
NORM_OVERLAP_MAX = 0.5      # mean overlap of top-k proponents with the k largest gradient norms


# ------------------------------------------------------------------------------------ detection curves
def detection_curve(scores: np.ndarray, flipped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fraction inspected, fraction of flipped found) when inspecting in decreasing ``scores`` order.
    Both start at 0 and end at 1."""
    flipped = np.asarray(flipped, bool)
    if not flipped.any():
        raise I.InfluenceError("no flipped example: the detection curve needs at least one.")
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    found = np.concatenate([[0], np.cumsum(flipped[order])]) / flipped.sum()
    inspected = np.arange(len(flipped) + 1) / len(flipped)
    return inspected, found


def curve_auc(inspected: np.ndarray, found: np.ndarray) -> float:
    """Area under a detection curve (trapezoids): 0.5 for random inspection, 1 for perfect."""
    return float(np.sum((inspected[1:] - inspected[:-1]) * (found[1:] + found[:-1]) / 2))


def found_at(inspected: np.ndarray, found: np.ndarray, fraction: float) -> float:
    """Fraction of flipped labels found after inspecting ``fraction`` of the data."""
    return float(np.interp(fraction, inspected, found))


# ------------------------------------------------------------------------------------------- experiment
@dataclass
class MislabelResult:
    flipped: np.ndarray                 # (N,) bool
    self_influence: np.ndarray          # (N,)
    loss: np.ndarray                    # (N,) training loss at the last checkpoint
    curves: dict = field(default_factory=dict)   # name → (inspected, found)
    auc: dict = field(default_factory=dict)      # name → area under the curve
    found_at_20: dict = field(default_factory=dict)  # name → fraction found after inspecting 20 %
    run: Path | None = None
    config: dict = field(default_factory=dict)


def train_with_labels(x: np.ndarray, y: np.ndarray, out, cfg=None) -> Path:
    """Train an :class:`~xaiscope.core.sst_qoi.SstQoiMLP` on given (normalised) inputs and labels with the
    training recipe of :func:`~xaiscope.core.sst_qoi.train_sst_qoi` (class-weighted cross-entropy, Adam,
    exponential learning-rate decay, seeded shuffling), writing ``out/epoch_NNN`` with the epoch's learning
    rate every epoch. Unlike ``train_sst_qoi`` it takes labels as given (e.g. deliberately corrupted ones)."""
    from xaiscope.core.sst_qoi import SstQoiMLP, SstQoiTrainConfig

    cfg = cfg or SstQoiTrainConfig()
    torch.manual_seed(cfg.seed)
    counts = np.bincount(y, minlength=2).astype(float)
    if (counts == 0).any():
        raise I.InfluenceError("the labels hold only one class; the classifier needs both.")
    class_w = counts.sum() / (2 * counts)
    model = SstQoiMLP(x.shape[1], cfg.hidden, 2, cfg.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)
    loss_fn = nn.CrossEntropyLoss(weight=torch.as_tensor(class_w, dtype=torch.float32))
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    gen = torch.Generator().manual_seed(cfg.seed)
    out = Path(out)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        lr = opt.param_groups[0]["lr"]
        order = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(order), cfg.batch_size):
            b = order[i:i + cfg.batch_size]
            opt.zero_grad()
            loss_fn(model(xt[b]), yt[b]).backward()
            opt.step()
        sched.step()
        model.eval()
        save_checkpoint(out / f"epoch_{epoch:03d}", model, {
            "kind": "sst_qoi_mlp", "config": {"n_inputs": int(x.shape[1]), "hidden": list(cfg.hidden),
                                              "n_classes": 2, "dropout": cfg.dropout},
            "name": "sst_qoi_mislabel", "epoch": epoch, "learning_rate": lr, "seed": cfg.seed,
            "class_weights": [float(c) for c in class_w], "n_train": int(len(y)),
            "train_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}})
    return out


def mislabel_experiment(out, ds=None, lag: int = 3, fraction: float = 0.1, seed: int = 0, epochs: int = 10,
                        method: str = "exact", n_random: int = 200) -> MislabelResult:
    """Flip ``fraction`` of the SST-QoI training labels (seeded), retrain with checkpoints into ``out``, rank by
    self-influence; curves and AUCs for self-influence, training loss and random inspection (the mean of
    ``n_random`` seeded random orders)."""
    from xaiscope.core.sst_qoi import SstQoiTrainConfig, make_qoi_samples
    from xaiscope.data.sst import demo_sst

    if not 0 < fraction < 1:
        raise I.InfluenceError(f"fraction: {fraction!r} must be in (0, 1) (share of labels to flip).")
    ds = demo_sst(with_ssh=False) if ds is None else ds
    s = make_qoi_samples(ds, lag)
    x = (s.x / np.std(s.x)).astype(np.float32)
    rng = np.random.default_rng(seed)
    n_flip = max(1, int(round(fraction * len(s.y))))
    flipped = np.zeros(len(s.y), bool)
    flipped[rng.choice(len(s.y), n_flip, replace=False)] = True
    y = np.where(flipped, 1 - s.y, s.y).astype(np.int64)
    cfg = SstQoiTrainConfig(lag=lag, epochs=epochs, seed=seed, dropout=0.0)
    run = train_with_labels(x, y, out, cfg)
    si = I.self_influence(run, (x, y), method=method)
    ckpts = I.load_run(run)
    model = I.prepare_model(ckpts[-1])
    with torch.no_grad():
        loss = I.get_adapter("sst_qoi_mlp").loss(model, torch.as_tensor(x), torch.as_tensor(y)).numpy()
    res = MislabelResult(flipped, si, loss, run=Path(run),
                         config={"lag": lag, "fraction": fraction, "seed": seed, "epochs": epochs, "method": method,
                                 "n": int(len(y)), "n_flipped": int(n_flip)})
    for name, score in (("self_influence", si), ("loss", loss)):
        res.curves[name] = detection_curve(score, flipped)
    r = np.random.default_rng(seed + 1)
    finds = np.mean([detection_curve(r.random(len(y)), flipped)[1] for _ in range(n_random)], 0)
    res.curves["random"] = (res.curves["loss"][0], finds)
    for name, (a, b) in res.curves.items():
        res.auc[name] = curve_auc(a, b)
        res.found_at_20[name] = found_at(a, b, 0.2)
    return res


# ----------------------------------------------------------------------------------------- diagnostics
def topk_cardinality(scores: np.ndarray, k: int = 10) -> dict:
    """How many distinct training examples are top-k proponents over the test set (n_test, n_train).

    ``ratio`` = distinct / min(n_train, n_test·k) (1: all different; small: the same few everywhere);
    ``hub_share`` = share of test examples whose top k holds the most frequent training example."""
    scores = np.atleast_2d(scores)
    tops = np.array([I.top_k(row, k).proponents for row in scores])
    ids, counts = np.unique(tops, return_counts=True)
    possible = min(scores.shape[1], tops.size)
    ratio = len(ids) / possible
    hub = int(ids[np.argmax(counts)])
    hub_share = float(counts.max() / len(scores))
    flag = bool(ratio < CARDINALITY_MIN or (len(scores) >= 5 and hub_share > HUB_SHARE_MAX))
    return {"k": k, "distinct": int(len(ids)), "possible": int(possible), "ratio": float(ratio), "hub": hub,
            "hub_share": hub_share, "flag": flag}


def gradient_norm_dominance(scores: np.ndarray, train_norms: np.ndarray, k: int = 10) -> dict:
    """Share of each test example's top-k proponents that are among the k training examples with the largest
    gradient norm (mean over the test set), against the k/n_train expected by chance; and the Spearman
    correlation of the mean |score| of each training example with its gradient norm."""
    from scipy.stats import spearmanr

    scores = np.atleast_2d(scores)
    norms = np.asarray(train_norms, float)
    big = set(np.argpartition(-norms, k - 1)[:k].tolist())
    overlap = float(np.mean([len(big & set(I.top_k(row, k).proponents.tolist())) / k for row in scores]))
    rho = float(spearmanr(np.abs(scores).mean(0), norms).statistic) if scores.shape[1] > 2 else float("nan")
    return {"k": k, "overlap": overlap, "chance": k / scores.shape[1], "spearman_abs_score_norm": rho,
            "flag": bool(overlap > NORM_OVERLAP_MAX)}


def diagnostics(scores: np.ndarray, train_embeddings: np.ndarray | None = None, train_norms=None, k: int = 10) -> dict:
    """Both diagnostics and the warnings to show. Gradient norms are those of the TracIn embeddings
    (√(self-influence)) unless ``train_norms`` is given."""
    if train_norms is None:
        if train_embeddings is None:
            raise I.InfluenceError("give train_embeddings or train_norms for the gradient-norm diagnostic.")
        e = np.asarray(train_embeddings, dtype=np.float64)
        train_norms = np.sqrt(np.einsum("nd,nd->n", e, e))
    card = topk_cardinality(scores, k)
    dom = gradient_norm_dominance(scores, train_norms, k)
    warnings = []
    if card["flag"]:
        warnings.append(f"Top-{k} proponents are concentrated: {card['distinct']} distinct training examples over "
                        f"{len(np.atleast_2d(scores))} test examples (ratio {card['ratio']:.2f}); training example "
                        f"{card['hub']} is a top proponent of {card['hub_share']:.0%} of them. The scores may "
                        "reflect a few high-gradient examples rather than similarity.")
    if dom["flag"]:
        warnings.append(f"Gradient norm dominates: on average {dom['overlap']:.0%} of the top-{k} proponents are "
                        f"the {k} training examples with the largest gradients (chance {dom['chance']:.1%}). "
                        "Consider the last-layer or a normalised (cosine) comparison.")
    return {"cardinality": card, "norm_dominance": dom, "warnings": warnings}
