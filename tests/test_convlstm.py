"""ConvLSTM: shapes, registry/checkpoint round trip, land masking, and state extraction against a slow numpy
step-by-step reference (explicit kernel loops, circular longitude padding)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xaiscope.core import convlstm as CL
from xaiscope.core.checkpoint import load_checkpoint, save_checkpoint
from xaiscope.core.models import MODELS, build_model

SMALL = dict(n_inputs=2, hidden=(3, 2, 4), kernels=(3, 1, 5), n_lat=7, n_lon=9, window=4, n_leads=3,
             nino_box=(2, 5, 3, 7))


def small_model(seed=0, land=True):
    torch.manual_seed(seed)
    m = CL.EnsoConvLSTM(**SMALL).double()
    if land:
        mask = np.zeros((7, 9), int)
        mask[0:3, 0:2] = 1
        mask[5, 8] = 1
        m.set_sea_mask(mask)
    return m


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def numpy_reference(model, x):
    """Per-step ConvLSTM in numpy with explicit kernel loops; returns per layer (h, c) arrays (T, C, lat, lon)."""
    sea = model.sea_mask.numpy() > 0
    x = np.where(sea, np.nan_to_num(x), 0.0)
    t = x.shape[0]
    states = [(np.zeros((h, 7, 9)), np.zeros((h, 7, 9))) for h in model.hidden]
    out = [([], []) for _ in model.hidden]
    for s in range(t):
        inp = x[s]
        for li, cell in enumerate(model.cells):
            h, c = states[li]
            z = np.concatenate([inp, h], 0)
            k = cell.kernel
            p = k // 2
            zp = np.pad(z, ((0, 0), (0, 0), (p, p)), mode="wrap")
            zp = np.pad(zp, ((0, 0), (p, p), (0, 0)))
            w = cell.conv.weight.detach().numpy()
            b = cell.conv.bias.detach().numpy()
            gates = np.zeros((w.shape[0], 7, 9))
            for o in range(w.shape[0]):
                acc = np.full((7, 9), b[o])
                for ci in range(w.shape[1]):
                    for dy in range(k):
                        for dx in range(k):
                            acc = acc + w[o, ci, dy, dx] * zp[ci, dy:dy + 7, dx:dx + 9]
                gates[o] = acc
            n = cell.hidden
            i, f, g, o_ = gates[:n], gates[n:2 * n], gates[2 * n:3 * n], gates[3 * n:]
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o_) * np.tanh(c)
            states[li] = (h, c)
            out[li][0].append(h)
            out[li][1].append(c)
            inp = h
    return [(np.stack(a), np.stack(b)) for a, b in out]


def test_registered_and_default_sizes():
    assert MODELS["enso_convlstm"] is CL.EnsoConvLSTM
    m = build_model("enso_convlstm", {})
    assert m.hidden == [16, 16, 32] and m.kernels == [3, 3, 5] and m.window == 6 and m.n_leads == 6
    out = m(torch.randn(2, 6, 2, 24, 72))
    assert out["map"].shape == (2, 6, 24, 72)
    assert out["nino34"].shape == (2, 6) and out["phase_logits"].shape == (2, 6, 3)


def test_states_equal_slow_numpy_loop():
    m = small_model()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 2, 7, 9))
    x[:, :, 0, 0] = np.nan  # land cell with NaN input
    ds = CL.convlstm_states(m, torch.as_tensor(x))
    assert ds.h.dims == ("time", "layer", "channel", "lat", "lon")
    assert ds.h.shape == (4, 3, 4, 7, 9)
    ref = numpy_reference(m, x)
    for layer, (h, c) in enumerate(ref):
        n = h.shape[1]
        np.testing.assert_allclose(ds.h.values[:, layer, :n], h, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ds.c.values[:, layer, :n], c, rtol=1e-5, atol=1e-6)
        assert np.isnan(ds.h.values[:, layer, n:]).all() and ds.n_channels.values[layer] == n
    # the map head reads the top layer's last hidden state
    out = m(torch.as_tensor(x)[None])
    top = torch.as_tensor(ref[-1][0][-1])[None]
    np.testing.assert_allclose(out["map"].detach().numpy(), (m.map_head(top) * m.sea_mask).detach().numpy(),
                               atol=1e-10)


def test_land_values_never_change_outputs_or_loss():
    m = small_model(seed=1)
    rng = np.random.default_rng(1)
    land = m.sea_mask.numpy() == 0
    x = torch.as_tensor(rng.normal(size=(3, 4, 2, 7, 9)))
    tmap = torch.as_tensor(rng.normal(size=(3, 3, 7, 9)))
    tnino = torch.as_tensor(rng.normal(size=(3, 3)))
    out = m(x)
    loss, parts = CL.enso_loss(out, tmap, tnino, m.sea_mask)
    land_t = torch.as_tensor(land)
    x2 = torch.where(land_t, torch.as_tensor(rng.normal(50, 10, size=x.shape)), x)
    x2[0, 0, 0, 0, 0] = float("nan")  # land cell (0, 0)
    t2 = torch.where(land_t, torch.full_like(tmap, float("nan")), tmap)
    t2[0, 0, 0, 1] = 1e6  # land cell (0, 1)
    out2 = m(x2)
    loss2, _ = CL.enso_loss(out2, t2, tnino, m.sea_mask)
    assert torch.equal(out["map"], out2["map"]) and torch.equal(out["nino34"], out2["nino34"])
    assert loss.item() == loss2.item()
    assert (out["map"].detach().numpy()[..., land] == 0).all()
    # but a sea value does change it
    x3 = x.clone()
    x3[0, -1, 0, 4, 4] += 1.0
    assert not torch.equal(m(x3)["map"], out["map"])
    # the map part is the mean squared error over sea cells (numpy reference)
    d = (out["map"] - tmap).detach().numpy()[..., ~land]
    np.testing.assert_allclose(parts["map_mse"].item(), np.mean(d ** 2), rtol=1e-12)


def test_phase_classes_and_checkpoint_round_trip(tmp_path):
    nino = torch.tensor([-1.0, -0.5, -0.49, 0.0, 0.49, 0.5, 2.0])
    assert CL.phase_class(nino).tolist() == [0, 0, 1, 1, 1, 2, 2]
    m = small_model(seed=2).float()
    save_checkpoint(tmp_path / "ck", m, {"kind": "enso_convlstm", "config": {**SMALL, "hidden": list(SMALL["hidden"]),
                                                                              "kernels": list(SMALL["kernels"]),
                                                                              "nino_box": list(SMALL["nino_box"])}})
    ck = load_checkpoint(tmp_path / "ck")
    x = torch.randn(1, 4, 2, 7, 9)
    assert torch.equal(ck.model.sea_mask, m.sea_mask)
    assert torch.allclose(ck.model(x)["map"], m(x)["map"])


def test_bad_inputs():
    m = small_model()
    with pytest.raises(CL.ConvLSTMError, match="expected inputs"):
        m(torch.randn(1, 4, 3, 7, 9))
    with pytest.raises(CL.ConvLSTMError, match="land mask shape"):
        m.set_sea_mask(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="odd"):
        CL.EnsoConvLSTM(kernels=(3, 4, 5))
