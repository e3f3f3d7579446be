"""TorchScript export: raw physical inputs in, physical outputs out, equal to the Python model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xaiscope.core.checkpoint import load_checkpoint
from xaiscope.core.cli import main
from xaiscope.core.errors import CheckpointError
from xaiscope.core.export import ExportError, export_torchscript

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "checkpoints"
HYDRO = ASSETS / "hydro_01031500"
SST = ASSETS / "sst_qoi_lag03"
NH_FIX = Path(__file__).parent / "fixtures" / "neuralhydrology"


def _hydro_by_hand(ckpt, x_raw: np.ndarray, sequence: bool = False) -> np.ndarray:
    """Normalise with the manifest's statistics (numpy, float64), run the model, de-normalise."""
    stats = ckpt.manifest["normalisation"]
    mean = np.array([stats[v]["mean"] for v in ckpt.inputs])
    std = np.array([stats[v]["std"] for v in ckpt.inputs])
    z = torch.from_numpy(((x_raw.astype(np.float64) - mean) / std).astype(np.float32))
    with torch.no_grad():
        out, _ = ckpt.model.lstm(z)
        y = ckpt.model.head(out if sequence else out[:, -1]).numpy().astype(np.float64)
    t = stats[ckpt.manifest["target"]]
    return y * t["std"] + t["mean"]


def test_hydro_torchscript_equals_model_on_raw_inputs(tmp_path):
    ckpt = load_checkpoint(HYDRO)
    res = export_torchscript(ckpt, tmp_path / "hydro.pt")
    module = torch.jit.load(str(res.path))
    rng = np.random.default_rng(42)
    stats = ckpt.manifest["normalisation"]
    x = np.stack([stats[v]["mean"] + stats[v]["std"] * rng.standard_normal((2, 400)) for v in ckpt.inputs],
                 axis=-1).astype(np.float32)
    x[..., 0] = np.abs(x[..., 0])                             # precipitation ≥ 0
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    assert got.shape == (2, 1)
    np.testing.assert_allclose(got, _hydro_by_hand(ckpt, x), rtol=0, atol=1e-5)
    # float64 inputs (a Fortran real(8) array) are accepted and cast
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x.astype(np.float64))).numpy(), got, atol=1e-6)
    with pytest.raises(Exception, match="n_inputs"):
        module(torch.zeros(1, 10, 3))


def test_hydro_sequence_export(tmp_path):
    ckpt = load_checkpoint(HYDRO)
    res = export_torchscript(ckpt, tmp_path / "seq.pt", sequence=True)
    x = np.load(NH_FIX / "expected_epoch001.npz")["x_raw"][None]   # 120 real days of the shipped basin
    with torch.no_grad():
        got = torch.jit.load(str(res.path))(torch.from_numpy(x)).numpy()
    assert got.shape == (1, 120, 1)
    np.testing.assert_allclose(got, _hydro_by_hand(ckpt, x, sequence=True), rtol=0, atol=1e-5)


def test_neuralhydrology_run_exports_and_matches_neuralhydrology(tmp_path):
    """The exported module of a neuralhydrology run reproduces neuralhydrology's own prediction in mm/day."""
    res = export_torchscript(NH_FIX / "run", tmp_path / "nh.pt", sequence=True)
    exp = np.load(NH_FIX / "expected_epoch002.npz")
    with torch.no_grad():
        got = torch.jit.load(str(res.path))(torch.from_numpy(exp["x_raw"][None])).numpy()[0, :, 0]
    np.testing.assert_allclose(got, exp["y_mm_per_day"], rtol=0, atol=1e-5)


def test_sst_qoi_export_on_maps(tmp_path):
    ckpt = load_checkpoint(SST)
    res = export_torchscript(ckpt, tmp_path / "sst.pt")
    m = ckpt.manifest
    n_lat, n_lon = len(m["grid"]["lat"]), len(m["grid"]["lon"])
    rng = np.random.default_rng(1)
    maps = rng.standard_normal((4, n_lat, n_lon)).astype(np.float32)
    cells = np.asarray(m["sea_cells"])
    land = np.setdiff1d(np.arange(n_lat * n_lon), cells)
    maps.reshape(4, -1)[:, land] = np.nan                      # land is NaN in real fields: ignored
    with torch.no_grad():
        got = torch.jit.load(str(res.path))(torch.from_numpy(maps)).numpy()
        z = torch.from_numpy(maps.reshape(4, -1)[:, cells] / np.float32(m["normalisation"]["sst_anomaly"]["std"]))
        want = torch.softmax(ckpt.model(z), -1).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)


def test_cli_prints_max_difference(tmp_path, capsys):
    out = tmp_path / "model.pt"
    assert main(["export", "torchscript", str(HYDRO), str(out)]) == 0
    text = capsys.readouterr().out
    assert "max abs difference to the Python model" in text
    diff = float(text.split("max abs difference to the Python model on seeded sample inputs: ")[1].split()[0])
    assert 0 <= diff <= 1e-4
    assert torch.jit.load(str(out)) is not None
    # the safetensors export keeps working in both spellings
    assert main(["export", str(HYDRO), "--out", str(tmp_path / "a.safetensors")]) == 0
    assert main(["export", "safetensors", str(HYDRO), str(tmp_path / "b.safetensors")]) == 0
    assert load_checkpoint(tmp_path / "b.safetensors").sha256


def test_bad_checkpoints_get_clear_errors(tmp_path, capsys):
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "manifest.json").write_text(json.dumps({"kind": "hydro_lstm", "config": {}}))
    (bad / "weights.safetensors").write_bytes(b"not a safetensors file")
    assert main(["export", "torchscript", str(bad), str(tmp_path / "x.pt")]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(CheckpointError):
        export_torchscript(tmp_path / "missing", tmp_path / "y.pt")
    with pytest.raises(ExportError, match="does not export to TorchScript; kinds that do: hydro_lstm, sst_qoi_mlp"):
        export_torchscript(ASSETS / "enso_convlstm", tmp_path / "enso.pt")
    assert not (tmp_path / "enso.pt").exists()


def test_mismatch_above_tolerance_is_refused(tmp_path, monkeypatch):
    """A module that disagrees with the Python model (simulated: the reference shifted by 1e-3) is not kept."""
    from xaiscope.core import export

    reference = export.reference_outputs
    monkeypatch.setattr(export, "reference_outputs", lambda c, x, sequence=False: reference(c, x, sequence) + 1e-3)
    with pytest.raises(ExportError, match=r"differs from the Python model by 0.001 .*tolerance 0.0001"):
        export_torchscript(HYDRO, tmp_path / "strict.pt")
    assert not (tmp_path / "strict.pt").exists()
