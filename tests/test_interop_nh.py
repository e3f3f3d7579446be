"""neuralhydrology run directories opened as hydro checkpoints, checked against neuralhydrology's own CustomLSTM.

The fixtures (tests/fixtures/neuralhydrology, made by make_fixtures.py in a separate neuralhydrology venv) are a
real two-epoch neuralhydrology run on the shipped basin and, per epoch, the per-timestep h/c, gates and
predictions of neuralhydrology's CustomLSTM (weights copied from the trained CudaLSTM) on a fixed 120-day window.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from xaiscope.core import hydro
from xaiscope.core.checkpoint import list_series, load_checkpoint, load_series
from xaiscope.core.errors import CheckpointError
from xaiscope.core.interop_nh import NeuralHydrologyError, is_nh_run, learning_rate_at
from xaiscope.core.states import lstm_internals

torch.set_num_threads(1)

FIX = Path(__file__).parent / "fixtures" / "neuralhydrology"
RUN = FIX / "run"
OURS = {"prcp(mm/day)": "prcp", "srad(W/m2)": "srad", "tmax(C)": "tmax", "tmin(C)": "tmin", "vp(Pa)": "vp"}


def _expected(epoch: int):
    return np.load(FIX / f"expected_epoch{epoch:03d}.npz")


def _dataset(exp) -> xr.Dataset:
    """The fixture's raw inputs as an xaiscope basin Dataset (our variable names, its dates)."""
    return xr.Dataset({OURS[str(v)]: ("time", exp["x_raw"][:, j].astype(np.float64))
                       for j, v in enumerate(exp["inputs"])},
                      coords={"time": pd.to_datetime(exp["dates"])})


@pytest.fixture
def travelled_run(tmp_path) -> Path:
    """The run directory copied elsewhere with every absolute path in config.yml pointing nowhere."""
    dest = tmp_path / "moved" / "my_run"
    shutil.copytree(RUN, dest)
    cfg = dest / "config.yml"
    cfg.write_text(re.sub(r"(?m)^(\w+(_dir|_file)): .*$", r"\1: /nonexistent/elsewhere/\1", cfg.read_text()))
    return dest


def _edit_config(run: Path, key: str, value: str) -> None:
    cfg = run / "config.yml"
    text = cfg.read_text()
    pattern = rf"(?m)^{key}:.*(\n- .*)*$"
    new = f"{key}: {value}"
    text = re.sub(pattern, new, text) if re.search(pattern, text) else text + f"\n{new}\n"
    cfg.write_text(text)


# ------------------------------------------------------------------------------------- numbers vs the fixtures
@pytest.mark.parametrize("epoch", [1, 2])
def test_states_equal_neuralhydrology_customlstm(epoch, travelled_run):
    exp = _expected(epoch)
    ckpt = load_checkpoint(travelled_run / f"model_epoch{epoch:03d}.pt")
    assert ckpt.kind == "hydro_lstm" and ckpt.manifest["epoch"] == epoch
    assert ckpt.inputs == [OURS[str(v)] for v in exp["inputs"]]
    ds = _dataset(exp)
    x = hydro.normalised_inputs(ckpt, ds)          # the product's normalisation with the run's scaler
    np.testing.assert_allclose(x, exp["x_norm"], rtol=0, atol=1e-6)
    internals = lstm_internals(ckpt.model.lstm, torch.from_numpy(x)[None])
    for name in ("h", "c", "i", "f", "g", "o"):
        got = getattr(internals, name)[0, :, 0].numpy()          # (time, cell) of the one layer
        np.testing.assert_allclose(got, exp[name], rtol=0, atol=1e-5, err_msg=name)
    out = hydro.continuous_states(ckpt, ds)
    np.testing.assert_allclose(out["qsim"].values, exp["y_mm_per_day"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["c"].values[:, 0], exp["c"], rtol=0, atol=1e-5)


def test_fixture_inputs_are_the_shipped_basin():
    """neuralhydrology's CAMELS-US columns and xaiscope's variables read the same numbers from the same file."""
    from xaiscope.data.camels import demo_basin

    exp = _expected(1)
    demo = demo_basin().sel(time=pd.to_datetime(exp["dates"]))
    for j, v in enumerate(exp["inputs"]):
        np.testing.assert_allclose(demo[OURS[str(v)]].values, exp["x_raw"][:, j], rtol=1e-6, err_msg=str(v))


def test_run_is_a_series_with_learning_rates(travelled_run):
    assert is_nh_run(travelled_run) and is_nh_run(travelled_run / "model_epoch001.pt")
    files = list_series(travelled_run)
    assert [f.name for f in files] == ["model_epoch001.pt", "model_epoch002.pt"]
    series = load_series(travelled_run)
    # config.yml: learning_rate {0: 0.001, 2: 0.0005}: epoch 1 trains with 1e-3, epoch 2 with 5e-4
    assert [c.manifest["learning_rate"] for c in series] == [1e-3, 5e-4]
    assert series[0].sha256 != series[1].sha256
    last = load_checkpoint(travelled_run)
    assert last.manifest["epoch"] == 2 and last.sha256 == series[1].sha256
    m = last.manifest
    assert m["window"] == 30 and m["target"] == "qobs" and m["config"]["hidden_size"] == 8
    assert m["train_period"] == ["1999-10-01", "2001-09-30"] and m["test_period"] == ["2002-10-01", "2003-09-30"]
    assert m["data"]["config_data_dir"].startswith("/nonexistent")

    from xaiscope.core.influence import load_run
    assert [c.manifest["epoch"] for c in load_run(travelled_run)] == [1, 2]


def test_learning_rate_schedule():
    cfg = {"learning_rate": {0: 0.01, 3: 0.005, 10: 0.001}}
    assert [learning_rate_at(cfg, e) for e in (1, 2, 3, 9, 10, 30)] == [0.01, 0.01, 0.005, 0.005, 0.001, 0.001]
    assert learning_rate_at({"learning_rate": 0.002}, 7) == 0.002


# ------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("key,value,message", [
    ("model", "ealstm", "'ealstm' is not supported; xaiscope opens cudalstm and customlstm"),
    ("model", "mtslstm", "MTS-LSTM"),
    ("head", "gmm", "head 'gmm' is not supported"),
    ("output_activation", "relu", "output_activation 'relu'"),
    ("static_attributes", "[area_gages2, elev_mean]", "static_attributes"),
    ("forcings", "[maurer]", "Daymet"),
    ("dataset", "camels_gb", "camels_gb"),
    ("dynamic_inputs", "[prcp(mm/day), tmax(C), PET(mm/d)]", "unknown variable 'PET(mm/d)'"),
])
def test_unsupported_runs_get_clear_errors(travelled_run, key, value, message):
    _edit_config(travelled_run, key, value)
    with pytest.raises(NeuralHydrologyError, match=re.escape(message)):
        load_checkpoint(travelled_run)


def test_missing_files(travelled_run):
    (travelled_run / "train_data" / "train_data_scaler.yml").unlink()
    with pytest.raises(NeuralHydrologyError, match="train_data_scaler.yml: missing"):
        load_checkpoint(travelled_run)
    for f in travelled_run.glob("model_epoch*.pt"):
        f.unlink()
    with pytest.raises(NeuralHydrologyError, match="no model_epochNNN.pt"):
        load_checkpoint(travelled_run)


def test_extra_tensors_and_unsafe_files(travelled_run):
    pt = travelled_run / "model_epoch002.pt"
    state = torch.load(pt, weights_only=True)
    torch.save({**state, "embedding_net.statics_embedding.net.0.weight": torch.zeros(3, 3)}, pt)
    with pytest.raises(NeuralHydrologyError, match="no counterpart"):
        load_checkpoint(travelled_run)
    torch.save({"state": state, "fn": print}, pt)   # pickled code: refused by weights_only
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(travelled_run)


def test_scaler_lacking_a_variable(travelled_run):
    _edit_config(travelled_run, "dynamic_inputs", "[prcp(mm/day), srad(W/m2), tmax(C), tmin(C), dayl(s)]")
    with pytest.raises(NeuralHydrologyError, match=r"no centre/scale for \['dayl\(s\)'\]"):
        load_checkpoint(travelled_run)


# --------------------------------------------------------------------------------------------------- CLI
def test_cli_info_and_states(travelled_run, tmp_path, capsys):
    from xaiscope.core.cli import main

    assert main(["info", str(travelled_run)]) == 0
    out = capsys.readouterr().out
    assert "hydro_lstm" in out and "learning_rate: 0.0005" in out and "neuralhydrology" in out
    nc = tmp_path / "states.nc"
    assert main(["states", str(travelled_run), "--data", "demo", "--date", "2002-01-28", "--out", str(nc)]) == 0
    with xr.open_dataset(nc) as ds:
        assert dict(ds.sizes) == {"time": 30, "layer": 1, "cell": 8}
        # window mode starts from a zero state 30 days before the date: check h against the same window run
        # through neuralhydrology's numbers is not possible (the fixture starts 90 days earlier), so check the
        # prediction against the product's own simulate (one window per day) instead.
        ckpt = load_checkpoint(travelled_run)
        sim = hydro.simulate(ckpt, hydro.open_basin_data("demo"), "2002-01-28", "2002-01-28", cache=False)
        np.testing.assert_allclose(float(ds["qsim"]), float(sim.values[0]), rtol=1e-6)
    assert main(["info", str(tmp_path / "nothing_here")]) == 2


# ------------------------------------------------------------------------------ neuralhydrology itself
def test_against_neuralhydrology_directly(travelled_run):
    """With neuralhydrology importable: its CudaLSTM → CustomLSTM on random inputs vs our states."""
    pytest.importorskip("neuralhydrology")
    from neuralhydrology.modelzoo.cudalstm import CudaLSTM
    from neuralhydrology.modelzoo.customlstm import CustomLSTM
    from neuralhydrology.utils.config import Config

    cfg = Config(travelled_run / "config.yml")
    cuda = CudaLSTM(cfg)
    cuda.load_state_dict(torch.load(travelled_run / "model_epoch002.pt", weights_only=True))
    custom = CustomLSTM(cfg)
    custom.copy_weights(cuda)
    custom.eval()
    x = torch.randn(3, 50, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = custom({"x_d": {v: x[:, :, j:j + 1] for j, v in enumerate(cfg.dynamic_inputs)}})
    ckpt = load_checkpoint(travelled_run)
    internals = lstm_internals(ckpt.model.lstm, x)
    np.testing.assert_allclose(internals.h[:, :, 0].numpy(), ref["h_n"].numpy(), atol=1e-5)
    np.testing.assert_allclose(internals.c[:, :, 0].numpy(), ref["c_n"].numpy(), atol=1e-5)
    np.testing.assert_allclose(ckpt.model.predict_sequence(x).detach().numpy(), ref["y_hat"][..., 0].numpy(),
                               atol=1e-5)


def test_own_series_with_a_config_file_is_not_taken_for_a_run(tmp_path):
    """A folder of xaiscope epoch checkpoints that happens to hold a config.yml stays an xaiscope series."""
    series = tmp_path / "series"
    shutil.copytree(Path(__file__).resolve().parents[1] / "assets" / "checkpoints" / "hydro_synthetic", series)
    (series / "config.yml").write_text("anything: 1\n")
    assert not is_nh_run(series)
    assert all(p.name.startswith("epoch_") for p in list_series(series))
    assert load_checkpoint(series).kind == "hydro_lstm"


def test_app_opens_a_run_directory(travelled_run):
    """The sidebar's "Open checkpoint" (AppState.add_checkpoint) takes a run directory; a refused run shows why."""
    pytest.importorskip("panel")
    from xaiscope.dashboard.state import AppState

    state = AppState(data="demo", allowed_roots=[str(travelled_run.parent)])
    label = state.add_checkpoint(str(travelled_run))
    assert label is not None and state.checkpoint == label
    assert state.ok and state.ckpt.manifest["neuralhydrology"]["model"] == "cudalstm"
    bad = travelled_run.parent / "ea_run"
    shutil.copytree(travelled_run, bad)
    _edit_config(bad, "model", "ealstm")
    assert state.add_checkpoint(str(bad)) is None
    assert "'ealstm' is not supported" in state.error
    assert state.checkpoint == label
