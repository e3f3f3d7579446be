"""The hydro pipeline and the command line, end to end on a small synthetic basin."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from xaiscope.core import hydro
from xaiscope.core.cli import build_parser, main
from xaiscope.core.states import lstm_internals_loop
from xaiscope.data.synthetic import synthetic_basin

WINDOW = 60


@pytest.fixture(scope="module")
def basin():
    return synthetic_basin(seed=3, start="1990-01-01", end="1994-12-31")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, basin):
    out = tmp_path_factory.mktemp("run") / "hydro"
    nc = out.parent / "basin.nc"
    basin.to_netcdf(nc)
    rc = main(["train", "hydro", "--data", str(nc), "--out", str(out), "--epochs", "2", "--window", str(WINDOW),
               "--hidden-size", "6", "--batch-size", "128", "--seed", "5", "--quiet",
               "--train-start", "1990-03-01", "--train-end", "1992-12-31",
               "--test-start", "1993-01-01", "--test-end", "1994-12-31", "--device", "cpu"])
    assert rc == 0
    return out, nc


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    for cmd in (["--help"], ["train", "--help"], ["train", "hydro", "--help"], ["states", "--help"],
                ["evaluate", "--help"], ["info", "--help"], ["export", "--help"], ["serve", "--help"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(cmd)
        assert exc.value.code == 0
        assert "usage: xaiscope" in capsys.readouterr().out


def test_training_writes_a_series(trained):
    out, _ = trained
    epochs = sorted(p.name for p in out.glob("epoch_*"))
    assert epochs == ["epoch_001", "epoch_002"]
    m = json.loads((out / "epoch_002" / "manifest.json").read_text())
    assert m["kind"] == "hydro_lstm" and m["epoch"] == 2 and m["learning_rate"] == pytest.approx(1e-3)
    assert m["inputs"] == ["prcp", "srad", "tmax", "tmin", "vp"] and m["window"] == WINDOW
    assert set(m["normalisation"]) == {"prcp", "srad", "tmax", "tmin", "vp", "qobs"}
    assert m["data"]["basin_id"] == "synthetic-3" and m["seed"] == 5
    assert np.isfinite(m["test_metrics"]["nse"])
    # normalisation statistics come from the training period only
    train = xr.open_dataset(trained[1]).sel(time=slice("1990-03-01", "1992-12-31"))
    assert m["normalisation"]["prcp"]["mean"] == pytest.approx(float(train.prcp.mean()), rel=1e-5)
    # the two epochs differ (training happened) and are reproducible from the seed
    a = (out / "epoch_001" / "manifest.json").read_text()
    assert json.loads(a)["weights_sha256"] != m["weights_sha256"]


def test_training_is_reproducible(trained, tmp_path):
    out, nc = trained
    again = tmp_path / "again"
    main(["train", "hydro", "--data", str(nc), "--out", str(again), "--epochs", "1", "--window", str(WINDOW),
          "--hidden-size", "6", "--batch-size", "128", "--seed", "5", "--quiet",
          "--train-start", "1990-03-01", "--train-end", "1992-12-31",
          "--test-start", "1993-01-01", "--test-end", "1994-12-31", "--device", "cpu"])
    m1 = json.loads((out / "epoch_001" / "manifest.json").read_text())
    m2 = json.loads((again / "epoch_001" / "manifest.json").read_text())
    assert m1["weights_sha256"] == m2["weights_sha256"]


def test_window_states_match_loop_and_model(trained, basin):
    ckpt = hydro.load_hydro(trained[0])
    date = "1994-03-01"
    st = hydro.window_states(ckpt, basin, date, device="cpu")
    assert st.c.dims == ("time", "layer", "cell") and st.sizes["time"] == WINDOW
    assert pd.Timestamp(st.time.values[-1]) == pd.Timestamp(date)
    x = torch.from_numpy(hydro.normalised_inputs(ckpt, basin.sel(time=st.time)))[None]
    ref = lstm_internals_loop(ckpt.model.lstm, x)
    for name in ("c", "h", "i", "f", "g", "o"):
        np.testing.assert_allclose(st[name].values, getattr(ref, name)[0].numpy(), atol=1e-5, err_msg=name)
    with torch.no_grad():
        y = float(ckpt.model(x))
    s = ckpt.manifest["normalisation"]["qobs"]
    assert float(st.qsim) == pytest.approx(y * s["std"] + s["mean"], rel=1e-5)
    # simulate() gives the same number for that day from its batched windows
    sim = hydro.simulate(ckpt, basin, date, date, device="cpu")
    assert float(sim.values[0]) == pytest.approx(float(st.qsim), rel=1e-5)


def test_simulate_marks_days_without_a_full_window(trained, basin):
    ckpt = hydro.load_hydro(trained[0])
    sim = hydro.simulate(ckpt, basin, device="cpu")
    assert np.isnan(sim.values[: WINDOW - 1]).all() and np.isfinite(sim.values[WINDOW - 1:]).all()


def test_continuous_states_match_predict_sequence(trained, basin):
    ckpt = hydro.load_hydro(trained[0])
    st = hydro.continuous_states(ckpt, basin, "1991-01-01", "1991-12-31", device="cpu")
    assert st.sizes["time"] == 365 and st.attrs["mode"] == "continuous"
    x = torch.from_numpy(hydro.normalised_inputs(ckpt, basin.sel(time=slice("1991-01-01", "1991-12-31"))))[None]
    with torch.no_grad():
        y = ckpt.model.predict_sequence(x)[0].numpy()
    s = ckpt.manifest["normalisation"]["qobs"]
    np.testing.assert_allclose(st.qsim.values, y * s["std"] + s["mean"], rtol=1e-4, atol=1e-4)


def test_states_command_writes_netcdf(trained, tmp_path, capsys):
    out, nc = trained
    f = tmp_path / "states.nc"
    assert main(["states", str(out), "--data", str(nc), "--date", "1994-06-30", "--out", str(f)]) == 0
    ds = xr.open_dataset(f)
    assert set("chifgo") <= set(ds.data_vars) and ds.c.dims == ("time", "layer", "cell")
    assert ds.attrs["checkpoint_sha256"] == hydro.load_hydro(out).sha256
    assert ds.attrs["mode"] == "window" and ds.attrs["date"] == "1994-06-30"
    assert ds.c.attrs["long_name"] and ds.attrs["Conventions"].startswith("CF")
    f2 = tmp_path / "cont.nc"
    assert main(["states", str(out), "--data", str(nc), "--continuous", "--out", str(f2)]) == 0
    assert xr.open_dataset(f2).sizes["time"] == xr.open_dataset(nc).sizes["time"]


def test_bad_inputs_give_one_clear_error(trained, tmp_path, capsys):
    out, nc = trained
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{}")
    (bad / "weights.safetensors").write_bytes(b"garbage")
    assert main(["states", str(bad), "--data", str(nc), "--date", "1994-06-30", "--out", str(tmp_path / "x.nc")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xaiscope states: error:") and "manifest lacks" in err and len(err.splitlines()) == 1
    assert main(["states", str(out), "--data", str(nc), "--date", "1990-01-10", "--out", str(tmp_path / "x.nc")]) == 2
    assert "too early" in capsys.readouterr().err
    assert main(["states", str(out), "--data", str(tmp_path / "nope"), "--date", "1994-01-10",
                 "--out", str(tmp_path / "x.nc")]) == 2
    assert "no such data" in capsys.readouterr().err
    assert main(["states", str(out), "--basin", "01013500", "--date", "1994-01-10",
                 "--out", str(tmp_path / "x.nc")]) == 2
    assert "not bundled" in capsys.readouterr().err
    no_srad = xr.open_dataset(nc).drop_vars("srad")
    with pytest.raises(Exception, match="srad"):
        hydro.normalised_inputs(hydro.load_hydro(out), no_srad)


def test_evaluate_and_info(trained, capsys):
    out, nc = trained
    assert main(["evaluate", str(out), "--data", str(nc), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    ckpt = hydro.load_hydro(out)
    assert res["model"]["nse"] == pytest.approx(ckpt.manifest["test_metrics"]["nse"], rel=1e-6)
    assert main(["info", str(out)]) == 0
    assert "hydro_lstm" in capsys.readouterr().out


def test_simulation_cache(trained, basin, tmp_path, monkeypatch):
    monkeypatch.setenv("XAISCOPE_CACHE_DIR", str(tmp_path / "cache"))
    ckpt = hydro.load_hydro(trained[0])
    fresh = hydro.simulate(ckpt, basin, device="cpu", cache=False)
    first = hydro.simulate(ckpt, basin, device="cpu")  # full record: computed and stored
    stored = list((tmp_path / "cache" / "simulations").glob("*.nc"))
    assert len(stored) == 1 and stored[0].name.startswith(ckpt.sha256[:16])
    np.testing.assert_array_equal(first.values, fresh.values)

    def refuse(*a, **k):
        raise AssertionError("the model must not run when the simulation is cached")

    monkeypatch.setattr(ckpt.model, "forward", refuse)
    part = hydro.simulate(ckpt, basin, "1993-02-01", "1993-03-31", device="cpu")
    np.testing.assert_array_equal(part.values, fresh.sel(time=slice("1993-02-01", "1993-03-31")).values)
    # other inputs → other key → the model runs again
    changed = basin.copy()
    changed["prcp"] = basin.prcp * 1.5
    assert hydro.data_key(ckpt, changed) != hydro.data_key(ckpt, basin)
    with pytest.raises(AssertionError, match="must not run"):
        hydro.simulate(ckpt, changed, "1993-02-01", "1993-03-31", device="cpu")
    monkeypatch.undo()
    monkeypatch.setenv("XAISCOPE_CACHE_DIR", str(tmp_path / "cache"))
    # a damaged cache file is recomputed, not trusted
    stored[0].write_bytes(b"not netcdf")
    again = hydro.simulate(ckpt, basin, "1993-02-01", "1993-03-31", device="cpu")
    np.testing.assert_array_equal(again.values, part.values)
