"""Agreement between a relevance map and a sensitivity (adjoint) map on the same (lat, lon) grid.

Metrics (NaN cells — land, or missing in either map — are left out):

* :func:`pattern_correlation` — centred Pearson correlation with cos(lat) area weights.
* :func:`top_mask` / :func:`topk_jaccard` — the "large" cells of a map are the cells of largest |value| that
  together cover ``k`` % of the sea area (cos-lat weighted); Jaccard = area(both large) / area(either large).
* :func:`sign_agreement` — area fraction of cells where both maps have the same sign (optionally only over the
  cells where either is large).
* :func:`agreement_map` — 0 neither large, 1 only relevance large, 2 only sensitivity large, 3 both (NaN on land);
  CF ``flag_values``/``flag_meanings`` attributes.
* :func:`region_shares` — each map's share of Σ|value| in the named regions of :func:`region_masks`. Relevance
  and per-cell sensitivities are per-cell quantities (what perturbing/explaining that cell does), so shares are
  plain sums over cells, not area-weighted.

Named regions (longitudes 0..360 °E; every sea cell gets the first region whose rule it meets):

1. ``southern_ocean`` — lat ≤ 40°S.
2. ``equatorial_pacific_waveguide`` — 10°S–10°N, 120°E–70°W (120–290 °E), Pacific side of the Americas.
3. ``eastern_boundary`` — Pacific-side cells north of 40°S, east of 180°, with land within ``coast_width``
   degrees (default 10°) to their east in the same row: the coastal waveguide along the Americas.
4. ``north_pacific`` — north of 10°N, 100 °E–290 °E, Pacific side.
5. ``indian_ocean`` — 40°S–30°N, 20–120 °E.
6. ``atlantic`` — north of 40°S, east of 290 °E or west of 20 °E, or between 240 and 290 °E with land to the
   west in the same row (the Gulf of Mexico and Caribbean).
7. ``other`` — the rest (mostly the South Pacific outside the waveguides).

"Pacific side" of a cell between 240 and 290 °E means no land cell lies west of it (from 240 °E) in its row.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from xaiscope.core.errors import XaiscopeError

REGIONS = ("southern_ocean", "equatorial_pacific_waveguide", "eastern_boundary", "north_pacific", "indian_ocean",
           "atlantic", "other")
AGREEMENT_FLAGS = {0: "neither", 1: "only_relevance", 2: "only_sensitivity", 3: "both"}


class AgreementError(XaiscopeError, ValueError):
    """Maps that cannot be compared (different grids, no common sea cells, bad k)."""


def _pair(a: xr.DataArray, b: xr.DataArray):
    for name, m in (("relevance", a), ("sensitivity", b)):
        if not isinstance(m, xr.DataArray) or set(m.dims) != {"lat", "lon"}:
            raise AgreementError(f"{name}: needs an xarray DataArray with dims (lat, lon), got "
                                 f"{getattr(m, 'dims', type(m).__name__)}.")
    a, b = a.transpose("lat", "lon"), b.transpose("lat", "lon")
    if a.shape != b.shape or not (np.allclose(a.lat, b.lat) and np.allclose(a.lon, b.lon)):
        raise AgreementError(f"the maps are on different grids ({a.sizes['lat']}×{a.sizes['lon']} vs "
                             f"{b.sizes['lat']}×{b.sizes['lon']}); regrid the sensitivity to the model grid with "
                             f"xaiscope.data.sensitivity.read_sensitivity(..., like=...).")
    return a, b


def area_weights(da: xr.DataArray) -> np.ndarray:
    """cos(lat) per cell, (lat, lon)."""
    return np.broadcast_to(np.cos(np.deg2rad(da.lat.values))[:, None], (da.sizes["lat"], da.sizes["lon"])).copy()


def pattern_correlation(a: xr.DataArray, b: xr.DataArray) -> float:
    """Area-weighted (cos lat) centred Pearson correlation over cells finite in both maps."""
    a, b = _pair(a, b)
    w = area_weights(a)
    ok = np.isfinite(a.values) & np.isfinite(b.values)
    if ok.sum() < 3:
        raise AgreementError("fewer than 3 cells are finite in both maps; nothing to correlate.")
    x, y, w = a.values[ok], b.values[ok], w[ok]
    w = w / w.sum()
    xm, ym = x - (w * x).sum(), y - (w * y).sum()
    den = np.sqrt((w * xm ** 2).sum() * (w * ym ** 2).sum())
    return float((w * xm * ym).sum() / den) if den > 0 else float("nan")


def _check_k(k):
    if not 0 < k <= 100:
        raise AgreementError(f"k: {k} must be a percentage in (0, 100].")


def top_mask(m: xr.DataArray, k: float = 10.0) -> xr.DataArray:
    """Boolean map of the largest-|value| cells covering ``k`` % of the finite cells' area (the cell that
    crosses the threshold is included)."""
    _check_k(k)
    v = np.abs(m.transpose("lat", "lon").values)
    w = area_weights(m)
    ok = np.isfinite(v)
    idx = np.flatnonzero(ok.ravel())
    order = idx[np.argsort(-v.ravel()[idx], kind="stable")]
    cum = np.cumsum(w.ravel()[order])
    n = int(np.searchsorted(cum, k / 100.0 * cum[-1] - 1e-12)) + 1
    out = np.zeros(v.size, bool)
    out[order[:n]] = True
    return xr.DataArray(out.reshape(v.shape), dims=("lat", "lon"), coords={"lat": m.lat, "lon": m.lon},
                        name="top_mask", attrs={"k_percent": k})


def topk_jaccard(a: xr.DataArray, b: xr.DataArray, k: float = 10.0) -> float:
    """Area-weighted Jaccard index of the top-``k`` % areas of both maps (cells finite in both)."""
    a, b = _pair(a, b)
    ok = np.isfinite(a.values) & np.isfinite(b.values)
    ta, tb = top_mask(a.where(ok), k).values, top_mask(b.where(ok), k).values
    w = area_weights(a)
    union = (w * (ta | tb)).sum()
    return float((w * (ta & tb)).sum() / union) if union > 0 else float("nan")


def sign_agreement(a: xr.DataArray, b: xr.DataArray, k: float | None = None) -> float:
    """Area fraction of cells where both maps have the same sign; with ``k``, only over cells in either map's
    top-``k`` % area."""
    a, b = _pair(a, b)
    ok = np.isfinite(a.values) & np.isfinite(b.values)
    if k is not None:
        ok = ok & (top_mask(a.where(ok), k).values | top_mask(b.where(ok), k).values)
    w = area_weights(a)[ok]
    same = np.sign(a.values[ok]) == np.sign(b.values[ok])
    return float((w * same).sum() / w.sum()) if w.sum() > 0 else float("nan")


def agreement_map(relevance: xr.DataArray, sensitivity: xr.DataArray, k: float = 10.0) -> xr.DataArray:
    """0 neither, 1 only relevance, 2 only sensitivity, 3 both large (top-``k`` % area); NaN where either map is."""
    a, b = _pair(relevance, sensitivity)
    ok = np.isfinite(a.values) & np.isfinite(b.values)
    ta, tb = top_mask(a.where(ok), k).values, top_mask(b.where(ok), k).values
    code = np.where(ok, ta.astype(float) + 2.0 * tb.astype(float), np.nan)
    return xr.DataArray(code, dims=("lat", "lon"), coords={"lat": a.lat, "lon": a.lon}, name="agreement",
                        attrs={"long_name": f"where the relevance and the sensitivity are large (top {k} % area)",
                               "flag_values": list(AGREEMENT_FLAGS),
                               "flag_meanings": " ".join(AGREEMENT_FLAGS.values()), "k_percent": k})


# ------------------------------------------------------------------------------------------- regions
def region_masks(land_mask: xr.DataArray, coast_width: float = 10.0) -> xr.DataArray:
    """Disjoint boolean masks (region, lat, lon) of the sea cells (``land_mask`` 1 land, 0 sea), rules in the
    module docstring; every sea cell is in exactly one region."""
    if set(land_mask.dims) != {"lat", "lon"}:
        raise AgreementError(f"land_mask needs dims (lat, lon), got {land_mask.dims}.")
    lm = land_mask.transpose("lat", "lon")
    land = np.asarray(lm.values) != 0
    lat = lm.lat.values.astype(float)
    lon = np.mod(lm.lon.values.astype(float), 360)
    LAT, LON = np.meshgrid(lat, lon, indexing="ij")
    sea = ~land
    # Atlantic side of the Americas between 240 and 290 °E: land west of the cell (from 240 °E) in its row
    west_land = np.zeros_like(land)
    east_coast = np.zeros_like(land)
    for i in range(lat.size):
        for j in range(lon.size):
            if 240 <= lon[j] <= 290:
                west_land[i, j] = bool(np.any(land[i] & (lon >= 240) & (lon < lon[j])))
            d_east = np.mod(lon - lon[j], 360)
            east_coast[i, j] = bool(np.any(land[i] & (d_east > 0) & (d_east <= coast_width + 1e-9)))
    atlantic_side = (LON > 290) | (LON < 20) | ((LON >= 240) & (LON <= 290) & west_land)
    pacific_side = ~atlantic_side
    rules = {
        "southern_ocean": LAT <= -40,
        "equatorial_pacific_waveguide": (np.abs(LAT) <= 10) & (LON >= 120) & (LON <= 290) & pacific_side,
        "eastern_boundary": (LAT > -40) & (LON >= 180) & pacific_side & east_coast,
        "north_pacific": (LAT > 10) & (LON >= 100) & (LON <= 290) & pacific_side,
        "indian_ocean": (LAT > -40) & (LAT <= 30) & (LON >= 20) & (LON < 120),
        "atlantic": (LAT > -40) & atlantic_side,
    }
    taken = ~sea
    out = []
    for name in REGIONS[:-1]:
        m = rules[name] & ~taken
        out.append(m)
        taken = taken | m
    out.append(~taken)
    return xr.DataArray(np.stack(out), dims=("region", "lat", "lon"),
                        coords={"region": list(REGIONS), "lat": lm.lat, "lon": lm.lon}, name="region_mask",
                        attrs={"coast_width_deg": coast_width})


def region_shares(m: xr.DataArray, masks: xr.DataArray) -> dict[str, float]:
    """Share of Σ|m| (finite cells) in each region of ``masks`` (region, lat, lon); sums to 1 over the regions."""
    v = np.abs(m.transpose("lat", "lon").values)
    mk = masks.transpose("region", "lat", "lon").values
    if mk.shape[1:] != v.shape:
        raise AgreementError(f"region masks are {mk.shape[1:]} but the map is {v.shape}; build them from this "
                             f"grid's land mask.")
    v = np.where(np.isfinite(v), v, 0.0)
    total = v.sum()
    return {str(r): float((v * mk[i]).sum() / total) if total > 0 else float("nan")
            for i, r in enumerate(masks.region.values)}


def adjoint_relevance(sensitivity: xr.DataArray, anomaly: xr.DataArray) -> xr.DataArray:
    """Sensitivity × input anomaly: the first-order (Taylor) contribution of each cell's anomaly to the QoI — the
    relevance the dynamics assign, comparable with LRP relevance of the same input."""
    out = sensitivity * anomaly
    out.name = "adjoint_relevance"
    return out


def compare(relevance: xr.DataArray, sensitivity: xr.DataArray, k: float = 10.0,
            land_mask: xr.DataArray | None = None) -> dict:
    """All metrics at once: ``pattern_correlation``, ``topk_jaccard``, ``sign_agreement``, ``sign_agreement_top``
    and, with ``land_mask``, ``relevance_shares`` / ``sensitivity_shares`` per region."""
    out = {"pattern_correlation": pattern_correlation(relevance, sensitivity),
           "topk_jaccard": topk_jaccard(relevance, sensitivity, k),
           "sign_agreement": sign_agreement(relevance, sensitivity),
           "sign_agreement_top": sign_agreement(relevance, sensitivity, k), "k_percent": k}
    if land_mask is not None:
        masks = region_masks(land_mask)
        out["relevance_shares"] = region_shares(relevance, masks)
        out["sensitivity_shares"] = region_shares(sensitivity, masks)
    return out
