"""ENSO training: sample construction against a slow loop, a checkpoint per epoch that reloads, the CLI."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from xaiscope.core import cli
from xaiscope.core.checkpoint import load_checkpoint
from xaiscope.core.train_enso import EnsoTrainConfig, make_samples, nino_box_indices, predict, train_enso
from xaiscope.data.sst import demo_sst, nino34

PERIODS = dict(train_period=("1980-01", "1985-12"), val_period=("1986-01", "1986-12"),
               test_period=("1987-01", "1988-12"))


@pytest.fixture(scope="module")
def ds():
    return demo_sst().sel(time=slice("1980-01", "1988-12"))


def test_make_samples_against_loop(ds):
    stats = {"sst_anomaly": {"mean": 0.0, "std": 2.0}, "ssh_anomaly": {"mean": 0.0, "std": 0.05}}
    s = make_samples(ds, ("sst_anomaly", "ssh_anomaly"), 6, 3, stats, ("1981-01", "1982-12"))
    times = pd.DatetimeIndex(ds.time.values)
    idx = nino34(ds.sst_anomaly).values
    expect = [t for t in range(len(times)) if times[t - 5] >= pd.Timestamp("1981-01") and t >= 5
              and t + 3 < len(times) and times[t + 3] <= pd.Timestamp("1982-12-31")]
    assert list(s.init) == list(times[expect])
    for k, t in enumerate(expect):
        np.testing.assert_array_equal(s.x[k, :, 0], (ds.sst_anomaly.values[t - 5:t + 1] / 2.0).astype(np.float32))
        np.testing.assert_array_equal(s.x[k, :, 1], (ds.ssh_anomaly.values[t - 5:t + 1] / 0.05).astype(np.float32))
        np.testing.assert_array_equal(s.y_map[k], ds.sst_anomaly.values[t + 1:t + 4])
        np.testing.assert_allclose(s.y_nino[k], idx[t + 1:t + 4], rtol=1e-6)
    assert nino_box_indices(ds.lat, ds.lon) == (10, 13, 38, 49)


def test_train_writes_a_loadable_checkpoint_every_epoch(ds, tmp_path):
    cfg = EnsoTrainConfig(epochs=2, hidden=(3, 2), kernels=(3, 3), n_leads=2, batch_size=16, lim_modes=8, **PERIODS)
    res = train_enso(ds, tmp_path / "run", cfg, progress=False)
    assert [h["epoch"] for h in res.history] == [1, 2]
    for e in (1, 2):
        m = json.loads((tmp_path / "run" / f"epoch_{e:03d}" / "manifest.json").read_text())
        assert m["kind"] == "enso_convlstm" and m["epoch"] == e
    ck = load_checkpoint(tmp_path / "run" / "epoch_002")
    assert torch.equal(ck.model.sea_mask.bool(), torch.as_tensor(ds.land_mask.values == 0))
    assert set(res.test_skill) == {"convlstm", "persistence", "lim"}
    # the stored skill is the correlation of the reloaded model's forecasts (numpy corrcoef)
    stats = ck.manifest["normalisation"]
    test = make_samples(ds, ("sst_anomaly", "ssh_anomaly"), 6, 2, stats, PERIODS["test_period"])
    pred = predict(ck.model, test.x)["nino34"]
    r1 = np.corrcoef(pred[:, 0], test.y_nino[:, 0])[0, 1]
    assert np.isclose(res.test_skill["convlstm"][1]["r"], r1, atol=1e-5)
    assert res.test_skill["convlstm"][1]["n"] == len(test.x)


def test_cli_train_enso(tmp_path, capsys):
    rc = cli.main(["train", "enso", "--out", str(tmp_path / "c"), "--epochs", "1", "--hidden", "2", "--kernels", "3",
                   "--leads", "1", "--no-ssh", "--quiet", "--train-start", "1980-01", "--train-end", "2000-12",
                   "--val-start", "2001-01", "--val-end", "2001-12", "--test-start", "2002-01",
                   "--test-end", "2003-12"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "persistence" in out and (tmp_path / "c" / "epoch_001" / "weights.safetensors").exists()
