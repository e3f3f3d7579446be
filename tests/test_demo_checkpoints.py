"""The shipped demo checkpoints: exact internals, the snow cell, reported skill, reproducibility."""

import json

import numpy as np
import pytest
import torch

from xaiscope.assets import ASSETS
from xaiscope.core import hydro
from xaiscope.core.analysis import best_cell, cell_correlations
from xaiscope.core.checkpoint import list_series, load_checkpoint
from xaiscope.core.states import lstm_internals_loop
from xaiscope.core.train import HydroTrainConfig, train_hydro

DEMOS = {"hydro_01031500": "demo", "hydro_synthetic": "synthetic"}


def _data(name):
    ckpt = hydro.load_hydro(ASSETS / "checkpoints" / name)
    if DEMOS[name] == "synthetic":
        seed = int(ckpt.manifest["data"]["basin_id"].rsplit("-", 1)[1])
        return ckpt, hydro.open_basin_data(f"synthetic:{seed}")
    return ckpt, hydro.open_basin_data("demo")


@pytest.fixture(scope="module", params=sorted(DEMOS))
def demo(request):
    return request.param, *_data(request.param)


def test_series_has_every_epoch_with_learning_rate(demo):
    name, ckpt, _ = demo
    paths = list_series(ASSETS / "checkpoints" / name)
    assert len(paths) == ckpt.manifest["epochs"] >= 10
    lrs = [json.loads((p / "manifest.json").read_text())["learning_rate"] for p in paths]
    cfg = HydroTrainConfig(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in ckpt.manifest["training_config"].items()})
    assert lrs == [cfg.lr_at(e) for e in range(1, len(paths) + 1)]


def test_window_internals_match_loop(demo):
    _, ckpt, ds = demo
    st = hydro.window_states(ckpt, ds, "2005-03-01", device="cpu")
    x = torch.from_numpy(hydro.normalised_inputs(ckpt, ds.sel(time=st.time)))[None]
    ref = lstm_internals_loop(ckpt.model.lstm, x)
    for name in ("c", "h", "i", "f", "g", "o"):
        np.testing.assert_allclose(st[name].values, getattr(ref, name)[0].numpy(), atol=1e-5, rtol=0, err_msg=name)


def test_continuous_internals_match_loop(demo):
    _, ckpt, ds = demo
    st = hydro.continuous_states(ckpt, ds, device="cpu")
    x = torch.from_numpy(hydro.normalised_inputs(ckpt, ds))[None]
    ref = lstm_internals_loop(ckpt.model.lstm, x)
    scale = max(1.0, float(ref.c.abs().max()))
    for name in ("c", "h", "i", "f", "g", "o"):
        np.testing.assert_allclose(st[name].values, getattr(ref, name)[0].numpy(), atol=1e-5 * scale, rtol=0,
                                   err_msg=name)


def test_reported_skill_is_what_the_checkpoint_gives(demo):
    _, ckpt, ds = demo
    m = ckpt.manifest["test_metrics"]
    sim = hydro.simulate(ckpt, ds, *ckpt.manifest["test_period"], device="cpu")
    obs = ds.qobs.sel(time=sim.time)
    got = hydro.skill(obs.values, sim.values)
    assert got["nse"] == pytest.approx(m["nse"], abs=1e-4) and got["kge"] == pytest.approx(m["kge"], abs=1e-4)
    assert got["nse"] > 0.6  # far better than the mean-flow baseline (NSE 0)


def test_synthetic_model_has_a_snow_cell():
    ckpt, ds = _data("hydro_synthetic")
    st = hydro.continuous_states(ckpt, ds, device="cpu")
    spin_up = slice(str(ds.time.values[365])[:10], None)  # the first year starts from a zero state
    corr = cell_correlations(st.c.sel(time=spin_up), {"swe": ds.swe.sel(time=spin_up)}, max_lag=0)
    layer, cell, r = best_cell(corr, "swe")
    # independent check with numpy on the chosen cell
    c = st.c.sel(time=spin_up, layer=layer, cell=cell).values
    assert np.corrcoef(c, ds.swe.sel(time=spin_up).values)[0, 1] == pytest.approx(r, abs=1e-6)
    assert abs(r) >= 0.9


def test_first_epoch_reproducible_from_manifest(demo, tmp_path):
    """Retraining one epoch with the settings stored in the manifest gives the shipped epoch-1 weights."""
    name, ckpt, ds = demo
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in ckpt.manifest["training_config"].items()}
    cfg.update(epochs=1, eval_every=10**6, device="cpu")
    train_hydro(ds, tmp_path / "again", HydroTrainConfig(**cfg), progress=False)
    shipped = load_checkpoint(ASSETS / "checkpoints" / name / "epoch_001").model.state_dict()
    again = load_checkpoint(tmp_path / "again" / "epoch_001").model.state_dict()
    for k, v in shipped.items():
        torch.testing.assert_close(again[k], v, atol=1e-5, rtol=1e-4, msg=k)


def test_shipped_simulation_is_what_the_model_computes(demo):
    _, ckpt, ds = demo
    shipped = list((ckpt.extra["weights_path"].parent / "simulations").glob("*.nc"))
    assert len(shipped) == 1 and shipped[0].name.startswith(ckpt.sha256[:16])
    assert shipped[0].name.split("_")[1].startswith(hydro.data_key(ckpt, ds)[:16])  # it is used, not stale
    cached = hydro.simulate(ckpt, ds, "2005-01-01", "2005-12-31", device="cpu")
    fresh = hydro.simulate(ckpt, ds, "2005-01-01", "2005-12-31", device="cpu", cache=False)
    np.testing.assert_allclose(cached.values, fresh.values, rtol=1e-5, atol=1e-5)
