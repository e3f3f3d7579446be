"""Skill metrics for discharge (NaN-aware: pairs where either value is NaN are left out)."""

from __future__ import annotations

import numpy as np


def _pairs(obs, sim) -> tuple[np.ndarray, np.ndarray]:
    obs = np.asarray(obs, dtype=np.float64).ravel()
    sim = np.asarray(sim, dtype=np.float64).ravel()
    if obs.shape != sim.shape:
        raise ValueError(f"obs and sim differ in length: {obs.shape[0]} vs {sim.shape[0]}")
    ok = np.isfinite(obs) & np.isfinite(sim)
    return obs[ok], sim[ok]


def nse(obs, sim) -> float:
    """Nash–Sutcliffe efficiency: 1 − Σ(sim − obs)² / Σ(obs − mean obs)². NaN with fewer than 2 pairs."""
    o, s = _pairs(obs, sim)
    if o.size < 2:
        return float("nan")
    denom = np.sum((o - o.mean()) ** 2)
    if denom == 0:
        return float("nan")
    return float(1.0 - np.sum((s - o) ** 2) / denom)


def kge_components(obs, sim) -> dict[str, float]:
    """Kling–Gupta efficiency (Gupta et al. 2009) and its parts: r, alpha = σ_sim/σ_obs, beta = μ_sim/μ_obs."""
    o, s = _pairs(obs, sim)
    if o.size < 2 or o.std() == 0 or o.mean() == 0:
        return {"kge": float("nan"), "r": float("nan"), "alpha": float("nan"), "beta": float("nan")}
    r = float(np.corrcoef(o, s)[0, 1]) if s.std() > 0 else 0.0
    alpha = float(s.std() / o.std())
    beta = float(s.mean() / o.mean())
    kge = 1.0 - float(np.sqrt((r - 1) ** 2 + (alpha - 1) ** 2 + (beta - 1) ** 2))
    return {"kge": kge, "r": r, "alpha": alpha, "beta": beta}


def kge(obs, sim) -> float:
    """Kling–Gupta efficiency (Gupta et al. 2009)."""
    return kge_components(obs, sim)["kge"]
