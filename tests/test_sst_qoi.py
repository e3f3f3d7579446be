"""SST-QoI set-up: QoI vs an explicit loop, sample alignment, training, checkpoints, CLI, shipped demo series."""

import json

import numpy as np
import pytest
import torch
import xarray as xr

from xaiscope.core import cli
from xaiscope.core.checkpoint import load_checkpoint
from xaiscope.core.sst_qoi import (DEFAULT_BOX, SstQoiError, SstQoiMLP, SstQoiTrainConfig, checkpoint_inputs,
                                   demo_checkpoint, make_qoi_samples, qoi_index, to_map, train_sst_qoi)
from xaiscope.data.sst import demo_sst

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ds():
    return demo_sst(with_ssh=False)


def test_qoi_index_matches_explicit_loop(ds):
    q = qoi_index(ds).values
    (la0, la1), (lo0, lo1) = DEFAULT_BOX
    num = np.zeros(ds.sizes["time"])
    den = 0.0
    for i, la in enumerate(ds.lat.values):
        for j, lo in enumerate(ds.lon.values):
            if la0 <= la <= la1 and lo0 <= lo <= lo1 and int(ds.land_mask[i, j]) == 0:
                w = np.cos(np.deg2rad(la))
                num += w * ds.sst_anomaly.values[:, i, j]
                den += w
    assert den > 0
    np.testing.assert_allclose(q, num / den, rtol=1e-5, atol=1e-6)


def test_samples_pair_input_at_t_minus_lag_with_sign_at_t(ds):
    s = make_qoi_samples(ds, 5)
    q = qoi_index(ds).values
    assert len(s.y) == ds.sizes["time"] - 5
    k = 40
    assert s.input_time[k] + np.timedelta64(0, "D") < s.target_time[k]
    assert (s.target_time[k].year * 12 + s.target_time[k].month) - (s.input_time[k].year * 12 + s.input_time[k].month) == 5
    assert s.y[k] == int(q[k + 5] > 0)
    sea = ds.land_mask.values.ravel() == 0
    np.testing.assert_array_equal(s.x[k], ds.sst_anomaly.values[k].ravel()[sea].astype(np.float32))


@pytest.mark.parametrize("lag", [-1, 13, 2.5, True])
def test_bad_lag(ds, lag):
    with pytest.raises(SstQoiError, match="lag"):
        make_qoi_samples(ds, lag)


def test_box_without_sea_is_a_clear_error(ds):
    with pytest.raises(Exception, match="holds no sea cell"):
        qoi_index(ds, (30, 45), (262, 262))  # inland North America


def test_training_writes_series_and_learns(ds, tmp_path):
    cfg = SstQoiTrainConfig(lag=1, epochs=4, hidden=(8,), seed=1)
    res = train_sst_qoi(ds, tmp_path / "run", cfg)
    dirs = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert dirs == [f"epoch_{e:03d}" for e in range(1, 5)]
    ck = load_checkpoint(tmp_path / "run" / "epoch_004")
    m = ck.manifest
    assert m["lag"] == 1 and m["box"]["lat_bounds"] == list(DEFAULT_BOX[0])
    assert len(m["sea_cells"]) == int((ds.land_mask == 0).sum())
    lrs = [json.loads((tmp_path / "run" / d / "manifest.json").read_text())["learning_rate"] for d in dirs]
    assert lrs[0] == pytest.approx(1e-3) and lrs[1] == pytest.approx(1e-3 * 0.97)
    # validation split: shuffled, disjoint, covering every sample
    n = ds.sizes["time"] - 1
    assert len(set(res.train_index) | set(res.val_index)) == n and not set(res.train_index) & set(res.val_index)
    assert not np.all(np.diff(res.val_index) == 1)
    # the saved model reproduces the training model, and beats the majority class on the training part
    x = checkpoint_inputs(m, ds)[:-1]
    s = make_qoi_samples(ds, 1)
    with torch.no_grad():
        np.testing.assert_allclose(ck.model(torch.as_tensor(x)).numpy(), res.model(torch.as_tensor(x)).numpy(),
                                   rtol=1e-6, atol=1e-6)
        pred = ck.model(torch.as_tensor(x)).argmax(1).numpy()
    acc = (pred[res.train_index] == s.y[res.train_index]).mean()
    assert acc > max(s.y.mean(), 1 - s.y.mean()) + 0.1
    # class balancing: weights inversely proportional to the training class counts
    counts = np.bincount(s.y[res.train_index])
    np.testing.assert_allclose(m["class_weights"], counts.sum() / (2 * counts))


def test_to_map_roundtrip(ds):
    m = load_checkpoint(demo_checkpoint(3)).manifest
    vals = np.arange(len(m["sea_cells"]), dtype=float)
    da = to_map(vals, m)
    assert da.dims == ("lat", "lon") and int(da.notnull().sum()) == len(vals)
    np.testing.assert_array_equal(da.values.ravel()[m["sea_cells"]], vals)
    assert bool(da.isnull().values[ds.land_mask.values == 1].all())


def test_checkpoint_inputs_reject_other_grid(ds):
    m = load_checkpoint(demo_checkpoint(0)).manifest
    with pytest.raises(SstQoiError, match="regrid"):
        checkpoint_inputs(m, ds.isel(lat=slice(1, None)))


@pytest.mark.parametrize("lag", [0, 3, 6, 12])
def test_shipped_demo_checkpoints(ds, lag):
    root = demo_checkpoint(lag)
    epochs = sorted(root.glob("epoch_*"))
    assert len(epochs) >= 3
    assert sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) <= 1.0e6
    ck = load_checkpoint(epochs[-1])
    assert isinstance(ck.model, SstQoiMLP) and ck.manifest["lag"] == lag
    x = checkpoint_inputs(ck.manifest, ds)
    s = make_qoi_samples(ds, lag)
    with torch.no_grad():
        pred = ck.model(torch.as_tensor(x[: len(s.y)])).argmax(1).numpy()
    assert (pred == s.y).mean() > 0.8


def test_cli_train_sst_qoi(tmp_path, capsys):
    rc = cli.main(["train", "sst-qoi", "--out", str(tmp_path / "c"), "--lag", "2", "--epochs", "2",
                   "--hidden", "4"])
    assert rc == 0
    assert (tmp_path / "c" / "epoch_002" / "manifest.json").exists()
    assert "validation accuracy" in capsys.readouterr().out
    assert cli.main(["train", "sst-qoi", "--out", str(tmp_path / "d"), "--lag", "20", "--epochs", "1"]) == 2


def test_model_shape_error():
    with pytest.raises(ValueError, match="expected inputs"):
        SstQoiMLP(5)(torch.zeros(2, 4))
