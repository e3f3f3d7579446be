"""Seeded synthetic snowy basin: weather generator + degree-day snow + soil bucket + two linear reservoirs.

The result has the variables of a basin Dataset (see docs/ARCHITECTURE.md) plus the true storages
(``swe``, ``soil_moisture``, ``groundwater``, ``routing_store``) and fluxes (``pet``, ``et``), so that what a model
has learned can be compared with the state that really produced the streamflow.

Weather (daily):
  * temperature: seasonal sinusoid + AR(1) anomaly; wet days have a smaller diurnal range;
  * precipitation: two-state Markov chain for occurrence, gamma-distributed amounts on wet days;
  * day length and top-of-atmosphere radiation from latitude (FAO-56 eqs. 21-25, 34);
    ``srad`` = Angstrom fraction (lower when cloudy, i.e. on wet days) of it, averaged over daylight like Daymet;
  * ``vp`` = saturation vapour pressure at a dew point just below ``tmin`` (at ``tmin`` on wet days);
  * potential ET: Hargreaves-Samani.
Hydrology (mm, mm/day), in this order each day:
  1. precipitation is snow when ``tmean < t_snow``; melt = min(swe, ddf * max(tmean - t_melt, 0));
  2. rain + melt splits into quick flow, fraction (S / smax) ** beta, and infiltration into the soil (S);
     soil above ``smax`` overflows into quick flow;
  3. ET = min(pet * min(S / (lp * smax), 1), S); percolation = k_perc * S goes to groundwater;
  4. quick flow fills a fast routing store drained at ``k_fast`` per day, groundwater drains at ``k_base``;
     ``qobs`` = both outflows.
The water balance closes to rounding: prcp = et + qobs + d(swe + soil_moisture + groundwater + routing_store).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from xaiscope.data.camels import VARIABLE_ATTRS
from xaiscope.data.errors import DataParameterError

__all__ = ["synthetic_basin", "DEFAULT_PARAMS", "saturation_vapour_pressure", "day_length",
           "extraterrestrial_radiation"]

#: Defaults: a snowy, humid basin like northern Maine (CAMELS 01031500: 45 deg N, ~1100 mm/yr precipitation).
DEFAULT_PARAMS: dict[str, float] = {
    "latitude": 45.2,        # deg N
    "elevation": 320.0,      # m (metadata only)
    "area": 770.0,           # km2 (metadata only)
    "t_mean": 4.5,           # annual mean air temperature, degC
    "t_amplitude": 13.5,     # half the difference between the warmest and coldest day of the seasonal cycle, degC
    "t_coldest_doy": 20.0,   # day of year of the coldest seasonal temperature
    "t_ar1": 0.7,            # lag-1 autocorrelation of the daily temperature anomaly
    "t_sigma": 3.5,          # standard deviation of the daily temperature anomaly, degC
    "dtr_dry": 12.0,         # tmax - tmin on dry days, degC
    "dtr_wet": 7.0,          # tmax - tmin on wet days, degC
    "p_wet_after_dry": 0.35,  # P(wet today | dry yesterday)
    "p_wet_after_wet": 0.60,  # P(wet today | wet yesterday)
    "wet_day_mean": 7.0,     # mean precipitation of a wet day, mm
    "gamma_shape": 0.75,     # shape of the gamma distribution of wet-day amounts
    "t_snow": 1.0,           # precipitation falls as snow below this tmean, degC
    "t_melt": 0.0,           # melt starts above this tmean, degC
    "ddf": 3.0,              # degree-day factor, mm degC-1 day-1
    "smax": 250.0,           # soil storage capacity, mm
    "beta": 2.0,             # shape of the quick-flow fraction (S / smax) ** beta
    "lp": 0.6,               # ET is at its potential rate while S >= lp * smax, below it falls linearly
    "k_perc": 0.01,          # percolation rate, day-1
    "k_fast": 0.4,           # fast routing store outflow rate, day-1
    "k_base": 0.03,          # groundwater outflow rate, day-1
    "pet_scale": 1.0,        # multiplier of the Hargreaves potential ET
    "spinup_days": 730,      # days simulated (and discarded) before start to spin the storages up
}

_RATES = ("p_wet_after_dry", "p_wet_after_wet", "k_perc", "k_fast", "k_base")
_FRACTIONS = ("lp",)
_POSITIVE = ("wet_day_mean", "gamma_shape", "smax", "beta", "ddf", "area")
_NON_NEGATIVE = ("t_amplitude", "t_sigma", "dtr_dry", "dtr_wet", "pet_scale", "spinup_days")


def saturation_vapour_pressure(t_degc):
    """Saturation vapour pressure over water (Pa), Tetens/FAO-56 eq. 11."""
    t = np.asarray(t_degc, dtype=float)
    return 610.8 * np.exp(17.27 * t / (t + 237.3))


def _solar_geometry(latitude: float, doy: np.ndarray):
    phi = np.deg2rad(latitude)
    b = 2 * np.pi * doy / 365.0
    dr = 1 + 0.033 * np.cos(b)                       # inverse relative Earth-Sun distance
    delta = 0.409 * np.sin(b - 1.39)                 # solar declination
    omega = np.arccos(np.clip(-np.tan(phi) * np.tan(delta), -1.0, 1.0))  # sunset hour angle
    return phi, dr, delta, omega


def day_length(latitude: float, doy) -> np.ndarray:
    """Day length in seconds for day(s) of year ``doy`` at ``latitude`` (FAO-56 eq. 34)."""
    _, _, _, omega = _solar_geometry(latitude, np.asarray(doy, dtype=float))
    return 86400.0 * omega / np.pi


def extraterrestrial_radiation(latitude: float, doy) -> np.ndarray:
    """Daily top-of-atmosphere shortwave radiation (MJ m-2 day-1), FAO-56 eq. 21."""
    phi, dr, delta, omega = _solar_geometry(latitude, np.asarray(doy, dtype=float))
    ra = (24 * 60 / np.pi) * 0.0820 * dr * (omega * np.sin(phi) * np.sin(delta)
                                             + np.cos(phi) * np.cos(delta) * np.sin(omega))
    return np.maximum(ra, 0.0)


def _check_params(params: dict) -> dict:
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise DataParameterError(unknown[0], f"unknown parameter of synthetic_basin; valid ones: "
                                             f"{', '.join(DEFAULT_PARAMS)}.")
    p = {**DEFAULT_PARAMS, **params}
    for name, value in p.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not np.isfinite(value):
            raise DataParameterError(name, f"{value!r} is not a finite number.")
    for name in _RATES:
        if not 0 < p[name] < 1:
            raise DataParameterError(name, f"{p[name]!r} must lie strictly between 0 and 1 (a daily probability "
                                           "or rate).")
    for name in _FRACTIONS:
        if not 0 < p[name] <= 1:
            raise DataParameterError(name, f"{p[name]!r} must lie in (0, 1].")
    for name in _POSITIVE:
        if p[name] <= 0:
            raise DataParameterError(name, f"{p[name]!r} must be positive.")
    for name in _NON_NEGATIVE:
        if p[name] < 0:
            raise DataParameterError(name, f"{p[name]!r} must not be negative.")
    if not -90 <= p["latitude"] <= 90:
        raise DataParameterError("latitude", f"{p['latitude']!r} must lie in [-90, 90] degrees north.")
    if not 0 <= p["t_ar1"] < 1:
        raise DataParameterError("t_ar1", f"{p['t_ar1']!r} must lie in [0, 1).")
    if p["dtr_wet"] > p["dtr_dry"]:
        raise DataParameterError("dtr_wet", f"{p['dtr_wet']!r} exceeds dtr_dry={p['dtr_dry']!r}; wet days have "
                                            "the smaller diurnal range.")
    p["spinup_days"] = int(p["spinup_days"])
    return p


def _weather(rng: np.random.Generator, doy: np.ndarray, p: dict) -> dict[str, np.ndarray]:
    n = doy.size
    u = rng.random(n).tolist()
    phi = p["t_ar1"]
    z = (rng.standard_normal(n) * p["t_sigma"] * np.sqrt(1 - phi ** 2)).tolist()
    amounts = rng.gamma(p["gamma_shape"], p["wet_day_mean"] / p["gamma_shape"], size=n)
    # precipitation occurrence: two-state Markov chain; temperature anomaly: AR(1) with variance t_sigma ** 2
    wet = np.empty(n, dtype=bool)
    anomaly = np.empty(n)
    state, a = False, 0.0
    p_wd, p_ww = p["p_wet_after_dry"], p["p_wet_after_wet"]
    for t in range(n):
        state = u[t] < (p_ww if state else p_wd)
        wet[t] = state
        a = phi * a + z[t]
        anomaly[t] = a
    prcp = np.where(wet, amounts, 0.0)
    seasonal = p["t_mean"] - p["t_amplitude"] * np.cos(2 * np.pi * (doy - p["t_coldest_doy"]) / 365.25)
    tmean = seasonal + anomaly
    dtr = np.where(wet, p["dtr_wet"], p["dtr_dry"]) * np.exp(0.1 * rng.standard_normal(n))
    tmax = tmean + dtr / 2
    tmin = tmean - dtr / 2
    # radiation: Angstrom fraction of top-of-atmosphere radiation, cloudier on wet days
    ra = extraterrestrial_radiation(p["latitude"], doy)
    dayl = day_length(p["latitude"], doy)
    cloud = np.clip(np.where(wet, 0.75, 0.3) + 0.1 * rng.standard_normal(n), 0.0, 1.0)
    rs = (0.25 + 0.5 * (1 - cloud)) * ra                              # MJ m-2 day-1
    srad = np.divide(rs * 1e6, dayl, out=np.zeros(n), where=dayl > 0)  # W m-2 over daylight (as Daymet)
    # humidity: dew point a little below tmin on dry days, at tmin on wet days
    dew_depression = np.where(wet, 0.0, 2.0) + np.abs(0.5 * rng.standard_normal(n))
    vp = saturation_vapour_pressure(tmin - dew_depression)
    # Hargreaves-Samani potential ET (mm/day); Ra in mm/day of evaporation equivalent is 0.408 * Ra
    pet = p["pet_scale"] * 0.0023 * 0.408 * ra * np.maximum(tmean + 17.8, 0.0) * np.sqrt(np.maximum(tmax - tmin, 0))
    return {"prcp": prcp, "tmean": tmean, "tmax": tmax, "tmin": tmin, "srad": srad, "dayl": dayl, "vp": vp,
            "pet": pet}


def _hydrology(w: dict[str, np.ndarray], p: dict) -> dict[str, np.ndarray]:
    n = w["prcp"].size
    out = {k: np.empty(n) for k in ("swe", "soil_moisture", "groundwater", "routing_store", "et", "qobs")}
    swe, soil, gw, fast = 0.0, 0.5 * p["smax"], 0.0, 0.0
    t_snow, t_melt, ddf, smax, beta = p["t_snow"], p["t_melt"], p["ddf"], p["smax"], p["beta"]
    k_perc, k_fast, k_base, lp = p["k_perc"], p["k_fast"], p["k_base"], p["lp"]
    prcp, tmean, pet = w["prcp"].tolist(), w["tmean"].tolist(), w["pet"].tolist()
    for t in range(n):
        pr, tm = prcp[t], tmean[t]
        if tm < t_snow:
            snow, rain = pr, 0.0
        else:
            snow, rain = 0.0, pr
        swe += snow
        melt = min(swe, ddf * max(tm - t_melt, 0.0))
        swe -= melt
        water = rain + melt
        quick = water * (soil / smax) ** beta
        soil += water - quick
        if soil > smax:
            quick += soil - smax
            soil = smax
        et = min(pet[t] * min(soil / (lp * smax), 1.0), soil)
        soil -= et
        perc = k_perc * soil
        soil -= perc
        gw += perc
        fast += quick
        q_fast = k_fast * fast
        q_base = k_base * gw
        fast -= q_fast
        gw -= q_base
        out["swe"][t], out["soil_moisture"][t], out["groundwater"][t] = swe, soil, gw
        out["routing_store"][t], out["et"][t], out["qobs"][t] = fast, et, q_fast + q_base
    return out


def synthetic_basin(seed: int = 0, start="1980-01-01", end="2014-12-31", **params) -> xr.Dataset:
    """A synthetic basin Dataset with known storages; same ``seed`` and parameters give identical data.

    Parameters are keyword arguments overriding :data:`DEFAULT_PARAMS` (a snowy basin like northern Maine).
    Returns the basin-Dataset variables (``prcp srad tmax tmin vp dayl tmean qobs swe``; no ``q_benchmark``:
    there is no benchmark model) plus the truth: ``soil_moisture``, ``groundwater``, ``routing_store``,
    ``pet`` and ``et``. Storages are end-of-day values; ``attrs['initial_storage']`` is the total storage (mm)
    before the first day, so the balance of day one closes too.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataParameterError("seed", f"{seed!r} is not a non-negative integer; pass e.g. seed=0.")
    p = _check_params(params)
    try:
        t0, t1 = pd.Timestamp(start), pd.Timestamp(end)
    except (ValueError, TypeError) as exc:
        raise DataParameterError("start/end", f"({start!r}, {end!r}) are not dates ({exc}); use 'YYYY-MM-DD'.") \
            from None
    if t1 < t0:
        raise DataParameterError("end", f"{end!r} is before start {start!r}; swap them.")
    time = pd.date_range(t0.normalize(), t1.normalize(), freq="D", unit="ns")
    spin = p["spinup_days"]
    full = pd.date_range(time[0] - pd.Timedelta(days=spin), time[-1], freq="D", unit="ns")
    rng = np.random.default_rng(int(seed))
    w = _weather(rng, full.day_of_year.to_numpy().astype(float), p)
    h = _hydrology(w, p)

    keep = slice(spin, None)
    storage = h["swe"] + h["soil_moisture"] + h["groundwater"] + h["routing_store"]
    initial = float(storage[spin - 1]) if spin > 0 else 0.5 * p["smax"]

    ds = xr.Dataset(coords={"time": ("time", time.to_numpy(),
                                     {"standard_name": "time", "long_name": "time (day of the daily value)",
                                      "axis": "T"})})
    for name in ("prcp", "srad", "tmax", "tmin", "vp", "dayl", "tmean"):
        ds[name] = xr.DataArray(w[name][keep], dims="time", attrs=dict(VARIABLE_ATTRS[name]))
    ds["qobs"] = xr.DataArray(h["qobs"][keep], dims="time",
                              attrs={**VARIABLE_ATTRS["qobs"], "comment": "true simulated streamflow (no noise)"})
    ds["swe"] = xr.DataArray(h["swe"][keep], dims="time",
                             attrs={**VARIABLE_ATTRS["swe"], "comment": "true end-of-day storage"})
    for name in ("soil_moisture", "groundwater", "routing_store"):
        ds[name] = xr.DataArray(h[name][keep], dims="time",
                                attrs={**VARIABLE_ATTRS[name],
                                       "comment": "true end-of-day storage"})
    ds["pet"] = xr.DataArray(w["pet"][keep], dims="time", attrs={**VARIABLE_ATTRS["pet"],
                                                                 "comment": "Hargreaves-Samani"})
    ds["et"] = xr.DataArray(h["et"][keep], dims="time", attrs=dict(VARIABLE_ATTRS["et"]))
    ds.attrs = {
        "basin_id": f"synthetic-{int(seed)}",
        "basin_name": "synthetic snowy basin",
        "latitude": float(p["latitude"]), "elevation": float(p["elevation"]), "area": float(p["area"]),
        "source": "xaiscope.data.synthetic.synthetic_basin (weather generator + degree-day snow + soil bucket)",
        "files": "[]",
        "seed": int(seed),
        "parameters": ", ".join(f"{k}={v}" for k, v in p.items()),
        "initial_storage": initial,
        "Conventions": "CF-1.8",
    }
    return ds
