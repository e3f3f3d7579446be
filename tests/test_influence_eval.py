"""Mislabel detection and TracIn diagnostics."""

import numpy as np
import pytest
import torch

from xaiscope.core import influence_eval as E
from xaiscope.core.influence import InfluenceError

torch.set_num_threads(1)


@pytest.mark.parametrize("seed", range(4))
def test_detection_auc_matches_roc_auc_identity(seed):
    """Area under recall-vs-fraction-inspected = p/2 + (1 − p)·ROC AUC (p = flipped share); ROC AUC by sklearn."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    flipped = rng.random(300) < 0.1
    scores = rng.standard_normal(300) + 1.5 * flipped
    a, f = E.detection_curve(scores, flipped)
    assert a[0] == f[0] == 0 and a[-1] == f[-1] == 1
    p = flipped.mean()
    assert E.curve_auc(a, f) == pytest.approx(p / 2 + (1 - p) * roc_auc_score(flipped, scores), abs=1e-12)
    assert E.found_at(a, f, 0.2) == pytest.approx(flipped[np.argsort(-scores)[:60]].sum() / flipped.sum())
    with pytest.raises(InfluenceError, match="flipped"):
        E.detection_curve(scores, np.zeros(300, bool))


def test_mislabel_experiment_beats_random(tmp_path):
    res = E.mislabel_experiment(tmp_path / "run", lag=3, fraction=0.1, seed=0, epochs=4, n_random=50)
    assert res.flipped.sum() == res.config["n_flipped"] == round(0.1 * len(res.flipped))
    assert abs(res.auc["random"] - 0.5) < 0.05
    assert res.auc["self_influence"] > res.auc["random"] + 0.15
    assert res.found_at_20["self_influence"] > res.found_at_20["random"] + 0.2
    # flipped examples have larger self-influence on average
    assert res.self_influence[res.flipped].mean() > res.self_influence[~res.flipped].mean()


def test_cardinality_against_counting():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((30, 200))
    card = E.topk_cardinality(s, k=5)
    ref = {int(j) for row in s for j in np.argsort(-row)[:5]}
    assert card["distinct"] == len(ref) and not card["flag"]
    s[:, 17] += 100.0          # one training example tops everything
    s[:15, 3] += 90.0       # and another one half of it
    hub = E.topk_cardinality(s, k=2)
    assert hub["hub"] == 17 and hub["hub_share"] == 1.0 and hub["flag"]


def test_norm_dominance_flags_norm_driven_scores():
    rng = np.random.default_rng(1)
    train = rng.standard_normal((300, 8)) * rng.lognormal(0, 1.5, (300, 1))
    test = rng.standard_normal((20, 8))
    norms = np.linalg.norm(train, axis=1)
    dot = E.diagnostics(np.abs(test @ train.T), train_embeddings=train, k=10)
    assert dot["norm_dominance"]["flag"] and dot["warnings"]
    unit = train / norms[:, None]
    cos = E.diagnostics(test @ unit.T, train_norms=norms, k=10)
    assert not cos["norm_dominance"]["flag"]
    assert cos["norm_dominance"]["overlap"] < dot["norm_dominance"]["overlap"]
