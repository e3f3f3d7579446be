"""ConvLSTM for monthly SST anomaly maps: next maps, Niño 3.4 and ENSO phase for leads 1..n_leads.

Architecture (defaults as in the ENSO ConvLSTM blog post the ENSO issue cites): 6 input months of maps with
``n_inputs`` channels (SST anomaly, optionally SSH anomaly), 3 stacked ConvLSTM layers with 16/16/32 channels and
kernels 3/3/5 (Shi et al. 2015 cell without peepholes; gate order i, f, g, o as in PyTorch). Padding is circular
in longitude (the grid is global, 0..360) and zero in latitude. Land: inputs are set to 0 on land inside the
model (so land values, NaN included, never matter), forecast maps are 0 on land, and :func:`enso_loss` counts
sea cells only.

Forecast design: **multi-lead heads** (direct forecasting). From the last layer's final hidden state,

* ``map``: a 1×1 convolution → one SST anomaly map per lead (``n_leads`` channels);
* ``nino34``: sea-masked mean pooling over the whole grid and over the Niño 3.4 box → linear → one value per lead;
* ``phase``: the same pooled features → 3 logits per lead (0 La Niña, 1 neutral, 2 El Niño; ±0.5 °C).

Why not an autoregressive rollout of the map head: the inputs include fields the model does not forecast (SSH),
so a rollout would have to feed back incomplete inputs; rollout errors compound over 6 steps; and direct heads
give every lead from one forward pass (what the interactive view needs) and train each lead on its own target.

State maps: :func:`convlstm_states` returns one ``xr.Dataset`` with variables ``h`` and ``c`` of dims
``(time, layer, channel, lat, lon)``; layers with fewer channels than the widest are **padded with NaN**
(``n_channels`` (layer) says how many are real), so one object serves every layer selector.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xaiscope.core.errors import XaiscopeError
from xaiscope.core.models import register_model

PHASE_NAMES = ("La Niña", "neutral", "El Niño")


class ConvLSTMError(XaiscopeError, ValueError):
    """Inputs that do not fit a ConvLSTM (shape, grid, channels)."""


class ConvLSTMCell(nn.Module):
    """One ConvLSTM layer: gates = conv([x, h]) (4·hidden channels, order i, f, g, o)."""

    def __init__(self, in_channels: int, hidden: int, kernel: int, periodic_lon: bool = True):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"kernel sizes must be odd, got {kernel}")
        self.in_channels, self.hidden, self.kernel, self.periodic_lon = in_channels, hidden, kernel, periodic_lon
        self.conv = nn.Conv2d(in_channels + hidden, 4 * hidden, kernel, padding=0)

    def pad(self, z: torch.Tensor) -> torch.Tensor:
        p = self.kernel // 2
        if p == 0:
            return z
        if self.periodic_lon:
            z = F.pad(z, (p, p, 0, 0), mode="circular")
            return F.pad(z, (0, 0, p, p))
        return F.pad(z, (p, p, p, p))

    def forward(self, x, h, c):
        gates = self.conv(self.pad(torch.cat([x, h], dim=1)))
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


@register_model("enso_convlstm")
class EnsoConvLSTM(nn.Module):
    """ConvLSTM ENSO forecaster (see the module docstring). Constructor arguments are the checkpoint config.

    Parameters
    ----------
    n_inputs : channels per month (1: SST anomaly; 2: SST and SSH anomalies).
    hidden : channels of each ConvLSTM layer.
    kernels : kernel size of each layer (odd).
    n_lat, n_lon : grid size (the sea mask buffer has this shape and is saved with the weights).
    window : input months.
    n_leads : forecast leads (months 1..n_leads).
    nino_box : (i0, i1, j0, j1) grid index slice of the Niño 3.4 box (default: the 5° grid 55°S–60°N, 0..355°E).
    periodic_lon : circular padding in longitude (global grids).
    """

    def __init__(self, n_inputs: int = 2, hidden: Sequence[int] = (16, 16, 32), kernels: Sequence[int] = (3, 3, 5),
                 n_lat: int = 24, n_lon: int = 72, window: int = 6, n_leads: int = 6,
                 nino_box: Sequence[int] = (10, 13, 38, 49), periodic_lon: bool = True):
        super().__init__()
        hidden, kernels = [int(h) for h in hidden], [int(k) for k in kernels]
        if len(hidden) != len(kernels) or not hidden:
            raise ValueError(f"hidden {hidden} and kernels {kernels} must be non-empty and of equal length")
        if min(hidden) < 1 or n_inputs < 1 or n_leads < 1 or window < 1:
            raise ValueError("n_inputs, hidden sizes, window and n_leads must be positive")
        i0, i1, j0, j1 = (int(v) for v in nino_box)
        if not (0 <= i0 < i1 <= n_lat and 0 <= j0 < j1 <= n_lon):
            raise ValueError(f"nino_box {tuple(nino_box)} lies outside the {n_lat}×{n_lon} grid")
        self.n_inputs, self.hidden, self.kernels = n_inputs, hidden, kernels
        self.n_lat, self.n_lon, self.window, self.n_leads = n_lat, n_lon, window, n_leads
        self.nino_box, self.periodic_lon = (i0, i1, j0, j1), periodic_lon
        chans = [n_inputs] + hidden[:-1]
        self.cells = nn.ModuleList(ConvLSTMCell(ci, h, k, periodic_lon) for ci, h, k in zip(chans, hidden, kernels))
        top = hidden[-1]
        self.map_head = nn.Conv2d(top, n_leads, 1)
        self.nino_head = nn.Linear(2 * top, n_leads)
        self.phase_head = nn.Linear(2 * top, 3 * n_leads)
        self.register_buffer("sea_mask", torch.ones(n_lat, n_lon))

    # ------------------------------------------------------------------------------------ helpers
    def set_sea_mask(self, land_mask) -> None:
        """Set the sea mask from a land mask (array or DataArray, 1 = land) on the model grid."""
        m = np.asarray(getattr(land_mask, "values", land_mask))
        if m.shape != (self.n_lat, self.n_lon):
            raise ConvLSTMError(f"land mask shape {m.shape} differs from the model grid ({self.n_lat}, {self.n_lon}).")
        self.sea_mask.copy_(torch.as_tensor(m == 0, dtype=self.sea_mask.dtype))

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[2] != self.n_inputs or x.shape[3:] != (self.n_lat, self.n_lon):
            raise ConvLSTMError(f"expected inputs (batch, months, {self.n_inputs}, {self.n_lat}, {self.n_lon}), "
                                f"got {tuple(x.shape)}.")
        sea = self.sea_mask.to(dtype=x.dtype) > 0
        return torch.where(sea, torch.nan_to_num(x, nan=0.0), torch.zeros((), dtype=x.dtype, device=x.device))

    def run(self, x: torch.Tensor, keep_states: bool = False):
        """Run the stack over time. Returns the top layer's final h and, with ``keep_states``, per layer the
        lists of h and c at every month: ``[(h (B, T, C_l, lat, lon), c (…)), …]``."""
        x = self._check(x)
        b, t = x.shape[:2]
        hs = [x.new_zeros(b, h, self.n_lat, self.n_lon) for h in self.hidden]
        cs = [x.new_zeros(b, h, self.n_lat, self.n_lon) for h in self.hidden]
        kept = [([], []) for _ in self.hidden]
        for step in range(t):
            inp = x[:, step]
            for layer, cell in enumerate(self.cells):
                hs[layer], cs[layer] = cell(inp, hs[layer], cs[layer])
                inp = hs[layer]
                if keep_states:
                    kept[layer][0].append(hs[layer])
                    kept[layer][1].append(cs[layer])
        states = [(torch.stack(h, 1), torch.stack(c, 1)) for h, c in kept] if keep_states else None
        return hs[-1], states

    def heads(self, top: torch.Tensor) -> dict[str, torch.Tensor]:
        sea = self.sea_mask.to(dtype=top.dtype)
        i0, i1, j0, j1 = self.nino_box
        glob = (top * sea).sum((2, 3)) / sea.sum().clamp_min(1)
        box_sea = sea[i0:i1, j0:j1]
        box = (top[:, :, i0:i1, j0:j1] * box_sea).sum((2, 3)) / box_sea.sum().clamp_min(1)
        feats = torch.cat([glob, box], 1)
        return {
            "map": self.map_head(top) * sea,
            "nino34": self.nino_head(feats),
            "phase_logits": self.phase_head(feats).reshape(-1, self.n_leads, 3),
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: (batch, months, n_inputs, lat, lon) anomalies (NaN/land allowed) → dict with ``map``
        (batch, n_leads, lat, lon; 0 on land), ``nino34`` (batch, n_leads) and ``phase_logits``
        (batch, n_leads, 3)."""
        top, _ = self.run(x)
        return self.heads(top)


def enso_loss(out: dict, target_map: torch.Tensor, target_nino: torch.Tensor, sea_mask: torch.Tensor,
              weights: tuple[float, float, float] = (1.0, 1.0, 0.2), phase_threshold: float = 0.5):
    """Masked training loss: mean squared error of the maps over sea cells only (land and NaN targets never
    count), MSE of Niño 3.4, cross-entropy of the phase derived from the target Niño 3.4 (±threshold).
    ``target_map`` (B, n_leads, lat, lon), ``target_nino`` (B, n_leads). Returns (total, parts dict)."""
    sea = (sea_mask > 0) & torch.isfinite(target_map)
    err = torch.where(sea, out["map"] - torch.nan_to_num(target_map), torch.zeros((), dtype=out["map"].dtype))
    map_mse = (err ** 2).sum() / sea.sum().clamp_min(1)
    ok = torch.isfinite(target_nino)
    tn = torch.nan_to_num(target_nino)
    nino_mse = ((out["nino34"] - tn)[ok] ** 2).mean() if ok.any() else out["nino34"].sum() * 0
    cls = phase_class(tn, phase_threshold)
    cls = torch.where(ok, cls, torch.full_like(cls, -100))
    ce = F.cross_entropy(out["phase_logits"].reshape(-1, 3), cls.reshape(-1), ignore_index=-100) if ok.any() \
        else out["phase_logits"].sum() * 0
    total = weights[0] * map_mse + weights[1] * nino_mse + weights[2] * ce
    return total, {"map_mse": map_mse.detach(), "nino_mse": nino_mse.detach(), "phase_ce": ce.detach()}


def phase_class(nino: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """0 La Niña (≤ -threshold), 1 neutral, 2 El Niño (≥ threshold)."""
    return (1 + (nino >= threshold).long() - (nino <= -threshold).long())


@torch.no_grad()
def convlstm_states(model: EnsoConvLSTM, x, time=None, lat=None, lon=None, land_mask=None):
    """Hidden and cell state maps of every layer and channel at every input month, for one input sequence.

    ``x``: (months, n_inputs, lat, lon) or (1, months, n_inputs, lat, lon) (tensor or array). Returns an
    ``xr.Dataset`` with ``h`` and ``c`` dims (time, layer, channel, lat, lon) (float32; channels beyond a layer's
    width are NaN), ``n_channels`` (layer), ``hidden`` attribute, and ``land_mask`` when given. Values over land
    are the model's (they are computed there, from zero inputs).
    """
    import xarray as xr

    xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if xt.ndim == 4:
        xt = xt[None]
    if xt.ndim != 5 or xt.shape[0] != 1:
        raise ConvLSTMError(f"convlstm_states takes one sequence (months, channels, lat, lon), got {tuple(xt.shape)}.")
    p = next(model.parameters())
    model.eval()
    _, states = model.run(xt.to(device=p.device, dtype=p.dtype), keep_states=True)
    t = xt.shape[1]
    width = max(model.hidden)
    h = np.full((t, len(model.hidden), width, model.n_lat, model.n_lon), np.nan, dtype=np.float32)
    c = np.full_like(h, np.nan)
    for layer, (hl, cl) in enumerate(states):
        n = hl.shape[2]
        h[:, layer, :n] = hl[0].float().cpu().numpy()
        c[:, layer, :n] = cl[0].float().cpu().numpy()
    coords = {"time": np.arange(t) if time is None else np.asarray(time),
              "layer": np.arange(len(model.hidden)), "channel": np.arange(width),
              "lat": np.arange(model.n_lat) if lat is None else np.asarray(lat),
              "lon": np.arange(model.n_lon) if lon is None else np.asarray(lon)}
    dims = ("time", "layer", "channel", "lat", "lon")
    ds = xr.Dataset(
        {"h": (dims, h, {"long_name": "ConvLSTM hidden state"}),
         "c": (dims, c, {"long_name": "ConvLSTM cell state"}),
         "n_channels": ("layer", np.asarray(model.hidden), {"long_name": "channels of each layer (rest NaN)"})},
        coords=coords, attrs={"hidden": list(model.hidden), "kernels": list(model.kernels),
                              "padding": "channels beyond n_channels[layer] are NaN"})
    if land_mask is not None:
        ds["land_mask"] = (("lat", "lon"), np.asarray(getattr(land_mask, "values", land_mask)).astype("int8"))
    return ds
