"""Linear inverse model (LIM) of monthly SST anomalies (Penland & Sardeshmukh 1995) and adjoint sensitivities.

The state is the vector of the leading ``n_modes`` principal components of the area-weighted anomaly field
(sea cells only): ``x = E (√w ⊙ f)`` with ``E`` (n_modes, n_sea) the orthonormal EOFs of ``√cos(lat) ⊙ f``;
a field is rebuilt as ``f = (Eᵀ x) / √w``. The dynamics are ``dx/dt = L x + ξ`` with white noise of covariance
``Q``; from the lag-0 and lag-τ0 covariances ``C0``, ``Cτ0``:

* ``L = logm(Cτ0 C0⁻¹) / τ0`` (scipy.linalg.logm), propagator ``G(τ) = expm(L τ)`` (scipy.linalg.expm),
* ``Q = -(L C0 + C0 Lᵀ)`` (the fluctuation-dissipation relation). Negative eigenvalues of Q (sampling error,
  non-normal or nonlinear dynamics) are reported with a warning and repaired as Penland & Matrosova (1994):
  zeroed, and the positive ones rescaled so that the trace (total noise variance) is kept.

Forecasts are ``G(lead) x0`` (the expected future state); the Niño 3.4 forecast is the Niño 3.4 functional of
the forecast map. Long synthetic records come from the exact monthly discretisation of the Ornstein–Uhlenbeck
process (``x[n+1] = G(1) x[n] + η``, ``η ~ N(0, C - G C Gᵀ)``, ``C`` the model's stationary covariance from the
Lyapunov equation ``L C + C Lᵀ + Q = 0``) or, with ``method="euler"``, from Euler–Maruyama sub-steps.

Adjoint sensitivity: for a quantity of interest ``QoI(t) = qᵀ f(t)`` (e.g. an area-weighted box mean, ``q`` from
:func:`xaiscope.data.sst.box_weights`), the LIM's deterministic forecast gives
``∂QoI(t)/∂f(t − lag) = √w ⊙ Eᵀ G(lag)ᵀ E (q / √w)``, mapped to the grid — exact for the model. Any
differentiable torch dynamics model gives the same kind of map through :func:`autograd_sensitivity`; the LIM
itself in torch is :meth:`LIM.torch_step`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.linalg
import xarray as xr

from xaiscope.core.errors import XaiscopeError
from xaiscope.data.sst import NINO34_BOX, box_weights, from_ocean_vectors, to_ocean_vectors


class LIMError(XaiscopeError, ValueError):
    """A LIM that cannot be fitted or used as asked (too few months, bad lag, weights on land…)."""


class NoiseCovarianceWarning(UserWarning):
    """The fitted noise covariance Q had negative eigenvalues and was repaired."""


def _sea_mask(field: xr.DataArray, land_mask: xr.DataArray | None) -> xr.DataArray:
    incomplete = field.isnull().any("time")
    if land_mask is None:
        mask = incomplete.astype("int8")
    else:
        mask = ((land_mask.values != 0) | incomplete.values).astype("int8")
        mask = xr.DataArray(mask, dims=("lat", "lon"), coords={"lat": field.lat, "lon": field.lon})
    mask.name = "land_mask"
    mask.attrs = {"long_name": "cells outside the LIM state (land or incomplete records)",
                  "flag_values": np.array([0, 1], dtype="int8"), "flag_meanings": "state excluded"}
    return mask


def repair_noise_covariance(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make a symmetric matrix positive semi-definite as Penland & Matrosova (1994): drop negative eigenvalues and
    rescale the positive ones so that the trace is unchanged. Returns (repaired Q, original eigenvalues)."""
    q = 0.5 * (q + q.T)
    vals, vecs = np.linalg.eigh(q)
    if vals.min() >= 0:
        return q, vals
    pos = np.clip(vals, 0, None)
    if pos.sum() <= 0:
        raise LIMError("the noise covariance Q has no positive eigenvalue; the LIM is not a valid stochastic model "
                       "of these data — use fewer modes (n_modes) or a longer record.")
    pos = pos * (vals.sum() / pos.sum()) if vals.sum() > 0 else pos
    return (vecs * pos) @ vecs.T, vals


@dataclass
class LIM:
    """A fitted linear inverse model; build with :func:`fit_lim`."""

    eofs: np.ndarray            # (n_modes, n_sea) orthonormal rows, in √w-weighted space
    sqrt_w: np.ndarray          # (n_sea,) √cos(lat) of each sea cell
    land_mask: xr.DataArray     # (lat, lon) 1 = outside the state
    L: np.ndarray               # (n_modes, n_modes) dynamics operator, per month
    Q: np.ndarray               # (n_modes, n_modes) noise covariance, per month (repaired if needed)
    C0: np.ndarray              # (n_modes, n_modes) lag-0 covariance of the training PCs
    tau0: int
    variance_fraction: float    # share of the weighted variance the EOFs keep
    q_eigenvalues: np.ndarray   # eigenvalues of Q before any repair
    fit_period: tuple[str, str]
    attrs: dict = field(default_factory=dict)

    # ---------------------------------------------------------------------------------- state maps
    @property
    def n_modes(self) -> int:
        return self.eofs.shape[0]

    @property
    def noise_repaired(self) -> bool:
        return bool(self.q_eigenvalues.min() < 0)

    def encode(self, field: xr.DataArray | np.ndarray) -> np.ndarray:
        """PCs of map(s): a DataArray (…, lat, lon) on the fit grid, or (…, n_sea) sea vectors → (…, n_modes)."""
        v = self._sea_vectors(field)
        return (v * self.sqrt_w) @ self.eofs.T

    def decode(self, pcs: np.ndarray) -> np.ndarray:
        """Sea vectors (…, n_sea) of PCs (…, n_modes)."""
        return (np.asarray(pcs) @ self.eofs) / self.sqrt_w

    def _sea_vectors(self, field) -> np.ndarray:
        if isinstance(field, xr.DataArray):
            if field.sizes.get("lat") != self.land_mask.sizes["lat"] or field.sizes.get("lon") != self.land_mask.sizes["lon"]:
                raise LIMError(f"map grid {dict(field.sizes)} differs from the LIM grid "
                               f"{dict(self.land_mask.sizes)}; regrid the field first.")
            sea = self.land_mask.values == 0
            vals = np.asarray(field.transpose(..., "lat", "lon").values, dtype=float)
            v = vals.reshape(vals.shape[:-2] + (-1,))[..., sea.ravel()]
        else:
            v = np.asarray(field, dtype=float)
            if v.shape[-1] != self.sqrt_w.size:
                raise LIMError(f"state vectors have {v.shape[-1]} cells, the LIM has {self.sqrt_w.size} sea cells.")
        if np.isnan(v).any():
            raise LIMError("the map has NaN at sea cells of the LIM state; fill or mask them first.")
        return v

    def to_map(self, vectors: np.ndarray, time=None, name: str = "sst_anomaly") -> xr.DataArray:
        return from_ocean_vectors(vectors, self.land_mask, time=time, name=name, attrs={"units": "degC"})

    # ------------------------------------------------------------------------------------ dynamics
    def propagator(self, lag: float) -> np.ndarray:
        """G(lag) = expm(L · lag) (lag in months)."""
        if lag < 0:
            raise LIMError(f"lag must be ≥ 0 months, got {lag}.")
        return scipy.linalg.expm(self.L * lag)

    def stationary_covariance(self) -> np.ndarray:
        """The model's stationary PC covariance C: L C + C Lᵀ + Q = 0 (scipy.linalg.solve_continuous_lyapunov)."""
        return scipy.linalg.solve_continuous_lyapunov(self.L, -self.Q)

    def forecast(self, initial: xr.DataArray, leads: Sequence[int] = range(1, 7)) -> xr.DataArray:
        """Forecast maps for each lead from initial map(s) (dims [time,] lat, lon) → dims ([time,] lead, lat, lon)."""
        leads = self._leads(leads)
        x0 = self.encode(initial)
        xs = np.stack([x0 @ self.propagator(k).T for k in leads], axis=-2)  # (…, lead, modes)
        sea = self.decode(xs)
        out = np.full(sea.shape[:-1] + (self.land_mask.size,), np.nan)
        out[..., (self.land_mask.values == 0).ravel()] = sea
        out = out.reshape(sea.shape[:-1] + self.land_mask.shape)
        dims = (("time",) if "time" in initial.dims else ()) + ("lead", "lat", "lon")
        coords = {"lead": np.asarray(leads), "lat": self.land_mask.lat, "lon": self.land_mask.lon}
        if "time" in initial.dims:
            coords["time"] = initial.time
        return xr.DataArray(out, dims=dims, coords=coords, name="sst_anomaly_forecast",
                            attrs={"units": "degC", "long_name": "LIM forecast of the SST anomaly",
                                   "comment": "time = initial month; lead in months"})

    def qoi_vector(self, weights: xr.DataArray) -> np.ndarray:
        """Sea-cell vector of QoI weights (lat, lon); weight on cells outside the state is an error."""
        w = np.nan_to_num(np.asarray(weights.transpose("lat", "lon").values, dtype=float))
        if w.shape != self.land_mask.shape:
            raise LIMError(f"QoI weights have shape {w.shape}; the LIM grid is {self.land_mask.shape}.")
        outside = np.abs(w[self.land_mask.values != 0]).sum()
        if outside > 1e-12 * max(np.abs(w).sum(), 1e-300):
            raise LIMError("the QoI weights put weight on land or incomplete cells outside the LIM state; build them "
                           "with box_weights(..., land_mask=lim.land_mask).")
        return w[self.land_mask.values == 0]

    def nino34_weights(self) -> xr.DataArray:
        return box_weights(self.land_mask.lat, self.land_mask.lon, NINO34_BOX["lat"], NINO34_BOX["lon"],
                           self.land_mask)

    def forecast_index(self, initial: xr.DataArray, leads: Sequence[int] = range(1, 7),
                       weights: xr.DataArray | None = None) -> xr.DataArray:
        """Forecast of a weighted-mean index (default Niño 3.4) for each lead: dims ([time,] lead)."""
        leads = self._leads(leads)
        q = self.qoi_vector(self.nino34_weights() if weights is None else weights)
        # index = qᵀ decode(G x0) = (E (q/√w))ᵀ G x0
        qe = self.eofs @ (q / self.sqrt_w)
        x0 = self.encode(initial)
        vals = np.stack([x0 @ (qe @ self.propagator(k)) for k in leads], axis=-1)
        dims = (("time",) if "time" in initial.dims else ()) + ("lead",)
        coords = {"lead": np.asarray(leads)}
        if "time" in initial.dims:
            coords["time"] = initial.time
        return xr.DataArray(vals, dims=dims, coords=coords, name="nino34_forecast",
                            attrs={"units": "degC", "long_name": "LIM forecast of the Niño 3.4 index"})

    def adjoint_sensitivity(self, weights: xr.DataArray, lag: int) -> xr.DataArray:
        """∂QoI(t)/∂SST(t − lag) of the LIM's deterministic dynamics, for ``QoI = Σ weights · SST`` (lat, lon):
        ``√w ⊙ Eᵀ G(lag)ᵀ E (q/√w)`` on the sea cells, NaN elsewhere. Units: QoI units per degC. At lag 0 it is the
        QoI weights seen through the EOF truncation (what the LIM state can represent)."""
        q = self.qoi_vector(weights)
        g = self.sqrt_w * (self.eofs.T @ (self.propagator(lag).T @ (self.eofs @ (q / self.sqrt_w))))
        out = self.to_map(g, name="adjoint_sensitivity")
        out.attrs = {"long_name": f"adjoint sensitivity of the QoI to the SST anomaly {lag} months earlier (LIM)",
                     "units": "1", "lag": int(lag), "method": "G(lag)^T applied to the QoI weights (exact)"}
        return out

    def simulate(self, n_months: int, seed: int = 0, start: str = "2000-01", method: str = "exact",
                 substeps: int = 30) -> xr.DataArray:
        """A synthetic anomaly record of ``n_months`` monthly maps (dims time, lat, lon; NaN outside the state),
        seeded; starts from a draw of the stationary distribution (no spin-up needed)."""
        if n_months < 1:
            raise LIMError(f"n_months must be ≥ 1, got {n_months}.")
        rng = np.random.default_rng(seed)
        c = self.stationary_covariance()
        c = 0.5 * (c + c.T)
        x = np.empty((n_months, self.n_modes))
        x[0] = rng.multivariate_normal(np.zeros(self.n_modes), c)
        if method == "exact":
            g = self.propagator(1)
            s = _psd_sqrt(c - g @ c @ g.T)
            noise = rng.standard_normal((n_months, self.n_modes)) @ s.T
            for n in range(1, n_months):
                x[n] = g @ x[n - 1] + noise[n]
        elif method == "euler":
            dt = 1.0 / substeps
            s = _psd_sqrt(self.Q) * np.sqrt(dt)
            a = np.eye(self.n_modes) + self.L * dt
            y = x[0]
            for n in range(1, n_months):
                for _ in range(substeps):
                    y = a @ y + s @ rng.standard_normal(self.n_modes)
                x[n] = y
        else:
            raise LIMError(f"method must be 'exact' or 'euler', got {method!r}.")
        time = pd.date_range(start, periods=n_months, freq="MS")
        out = self.to_map(self.decode(x), time=time)
        out.attrs = {"units": "degC", "long_name": "synthetic SST anomaly (LIM stochastic integration)",
                     "seed": int(seed), "method": method}
        return out

    def torch_step(self, dtype=None):
        """The LIM's one-month deterministic step as a differentiable torch function on full maps (lat, lon)
        (land cells are ignored on input and zero on output) — for :func:`autograd_sensitivity`."""
        import torch

        dtype = dtype or torch.float64
        sea = torch.as_tensor((self.land_mask.values == 0).ravel())
        e = torch.as_tensor(self.eofs, dtype=dtype)
        sw = torch.as_tensor(self.sqrt_w, dtype=dtype)
        g = torch.as_tensor(self.propagator(1), dtype=dtype)
        shape = self.land_mask.shape

        def step(f: torch.Tensor) -> torch.Tensor:
            v = f.reshape(-1)[sea]
            xn = g @ (e @ (v * sw))
            out = torch.zeros(sea.numel(), dtype=f.dtype, device=f.device)
            out = out.masked_scatter(sea.to(f.device), (e.T @ xn) / sw)
            return out.reshape(shape)

        return step

    def _leads(self, leads) -> list[int]:
        leads = [int(k) for k in np.atleast_1d(leads)]
        if not leads or min(leads) < 0:
            raise LIMError(f"leads must be non-negative months, got {leads}.")
        return leads


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(0.5 * (m + m.T))
    return vecs * np.sqrt(np.clip(vals, 0, None))


def fit_lim(anomalies: xr.DataArray, land_mask: xr.DataArray | None = None, n_modes: int = 20, tau0: int = 1,
            period: tuple[str, str] | None = None) -> LIM:
    """Fit a LIM to monthly anomaly maps (time, lat, lon) over ``period`` (default: all months).

    Cells that are land in ``land_mask`` or NaN in any month are left out of the state. Warns
    (:class:`NoiseCovarianceWarning`) and repairs Q when it has negative eigenvalues.
    """
    if set(anomalies.dims) != {"time", "lat", "lon"}:
        raise LIMError(f"anomalies must have dims (time, lat, lon), got {anomalies.dims}.")
    data = anomalies.sel(time=slice(*period)) if period else anomalies
    data = data.transpose("time", "lat", "lon")
    t = data.sizes["time"]
    if tau0 < 1:
        raise LIMError(f"tau0 must be ≥ 1 month, got {tau0}.")
    if n_modes < 1:
        raise LIMError(f"n_modes must be ≥ 1, got {n_modes}.")
    if t < max(3 * n_modes, n_modes + tau0 + 2):
        raise LIMError(f"{t} months are too few to fit {n_modes} modes; give at least {3 * n_modes} months or "
                       f"lower n_modes.")
    if "time" in data.indexes and isinstance(data.indexes["time"], pd.DatetimeIndex):
        steps = np.diff(data.indexes["time"].year * 12 + data.indexes["time"].month)
        if np.any(steps != 1):
            raise LIMError("the fitting record has gaps or repeated months; lagged covariances need consecutive "
                           "months — fit on one contiguous period.")
    mask = _sea_mask(data, land_mask)
    v = to_ocean_vectors(data, mask).astype(float)
    if v.shape[1] < n_modes:
        raise LIMError(f"only {v.shape[1]} sea cells for {n_modes} modes; lower n_modes.")
    sqrt_w = np.sqrt(np.cos(np.deg2rad(np.broadcast_to(mask.lat.values[:, None], mask.shape)))).ravel()[
        (mask.values == 0).ravel()]
    xw = v * sqrt_w
    _, s, vt = np.linalg.svd(xw, full_matrices=False)
    eofs = vt[:n_modes]
    var_frac = float((s[:n_modes] ** 2).sum() / (s ** 2).sum())
    x = xw @ eofs.T  # (t, modes)
    c0 = x.T @ x / t
    a, b = x[:-tau0], x[tau0:]
    c0_pairs = a.T @ a / len(a)
    ctau = b.T @ a / len(a)
    g = ctau @ np.linalg.inv(c0_pairs)
    evals = np.linalg.eigvals(g)
    if np.any((np.abs(evals.imag) < 1e-12) & (evals.real <= 0)):
        raise LIMError(f"the lag-{tau0} propagator has a non-positive real eigenvalue, so its logarithm is not real; "
                       f"use fewer modes (n_modes) or a shorter tau0.")
    lmat = scipy.linalg.logm(g)
    if np.abs(np.imag(lmat)).max() > 1e-8 * max(np.abs(lmat).max(), 1.0):
        raise LIMError("logm(G) is complex: the fitted propagator is not the exponential of a real operator; use fewer "
                       "modes or a shorter tau0.")
    lmat = np.real(lmat) / tau0
    if np.linalg.eigvals(lmat).real.max() >= 0:
        raise LIMError("the fitted L has a growing mode (eigenvalue with non-negative real part); the LIM would not "
                       "be stable — use fewer modes or a longer record.")
    q = -(lmat @ c0 + c0 @ lmat.T)
    q_rep, q_vals = repair_noise_covariance(q)
    if q_vals.min() < 0:
        neg = q_vals[q_vals < 0]
        warnings.warn(
            f"LIM noise covariance Q has {neg.size} negative eigenvalue(s) (most negative {neg.min():.3g}, "
            f"{-neg.sum() / np.abs(q_vals).sum():.1%} of |trace|); set them to zero and rescaled the rest to keep "
            f"the trace (Penland & Matrosova 1994). Fewer modes or a different tau0 usually avoid this.",
            NoiseCovarianceWarning, stacklevel=2)
    times = data.time.values
    return LIM(eofs=eofs, sqrt_w=sqrt_w, land_mask=mask, L=lmat, Q=q_rep, C0=c0, tau0=tau0,
               variance_fraction=var_frac, q_eigenvalues=q_vals,
               fit_period=(str(times[0])[:7], str(times[-1])[:7]))


# -------------------------------------------------------------------------------------- sensitivities
def autograd_sensitivity(step_fn: Callable, x0, qoi_fn: Callable, lag: int):
    """∂ qoi_fn(step_fn^lag(x0)) / ∂x0 for any differentiable torch dynamics ``step_fn`` (one month per call).

    ``x0`` is the initial state (a tensor, e.g. a (lat, lon) map; array-likes are converted to float64); the
    result is a tensor of the same shape. For linear dynamics (the LIM) it does not depend on x0 and equals
    :meth:`LIM.adjoint_sensitivity`; for nonlinear dynamics it is the sensitivity about the trajectory from x0.
    """
    import torch

    if int(lag) != lag or lag < 0:
        raise LIMError(f"lag must be a non-negative whole number of steps, got {lag}.")
    x0 = torch.as_tensor(x0, dtype=None if isinstance(x0, torch.Tensor) else torch.float64)
    x0 = x0.detach().clone().requires_grad_(True)
    x = x0
    for _ in range(int(lag)):
        x = step_fn(x)
    q = qoi_fn(x)
    if q.numel() != 1:
        raise LIMError(f"qoi_fn must return a scalar, got shape {tuple(q.shape)}.")
    (grad,) = torch.autograd.grad(q.reshape(()), x0, allow_unused=True)
    return torch.zeros_like(x0) if grad is None else grad


# --------------------------------------------------------------------------------------- skill
def persistence_forecast(index: xr.DataArray, leads: Sequence[int] = range(1, 7)) -> xr.DataArray:
    """Persistence: the forecast for every lead is the value at the initial month. Dims (time, lead)."""
    leads = [int(k) for k in leads]
    vals = np.repeat(index.values[:, None], len(leads), axis=1)
    return xr.DataArray(vals, dims=("time", "lead"), coords={"time": index.time, "lead": leads},
                        name=f"{index.name or 'index'}_persistence", attrs=dict(index.attrs))


def lead_skill(forecast: xr.DataArray, observed: xr.DataArray, start=None, end=None) -> pd.DataFrame:
    """Anomaly correlation and RMSE by lead of forecasts (time = initial month, lead) against an observed index
    (time), over the forecasts that **verify** in [start, end]. One row per lead: r, rmse, n."""
    obs = observed.to_series()
    rows = []
    for lead in forecast.lead.values:
        f = forecast.sel(lead=lead).to_series()
        idx = pd.DatetimeIndex(f.index)
        verify = idx + pd.DateOffset(months=int(lead))
        s = pd.DataFrame({"f": f.values, "o": obs.reindex(verify).values}, index=verify)
        if start is not None:
            s = s[s.index >= pd.Timestamp(start)]
        if end is not None:
            s = s[s.index <= pd.Timestamp(end)]
        s = s.dropna()
        r = float(np.corrcoef(s.f, s.o)[0, 1]) if len(s) > 2 else np.nan
        rows.append({"lead": int(lead), "r": r, "rmse": float(np.sqrt(((s.f - s.o) ** 2).mean())), "n": len(s)})
    return pd.DataFrame(rows).set_index("lead")
