"""Checkpoints: safetensors + manifest round trips, and every way a file can be bad."""

import json
import os
import pickle

import pytest
import torch

from xaiscope.core.checkpoint import (
    MANIFEST_FILE, WEIGHTS_FILE, export_safetensors, list_series, load_checkpoint, load_series, save_checkpoint,
    sha256_file,
)
from xaiscope.core.errors import CheckpointError, UnknownModelError
from xaiscope.core.models import MODELS, HydroLSTM, build_model


def _manifest(**extra):
    return {"kind": "hydro_lstm", "config": {"n_inputs": 5, "hidden_size": 8, "num_layers": 2},
            "inputs": ["prcp", "srad", "tmax", "tmin", "vp"], "epoch": 1, "learning_rate": 1e-3, **extra}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return HydroLSTM(n_inputs=5, hidden_size=8, num_layers=2).eval()


def test_round_trip_identical_outputs(tmp_path, model):
    save_checkpoint(tmp_path / "ck", model, _manifest())
    ck = load_checkpoint(tmp_path / "ck")
    x = torch.randn(3, 40, 5)
    with torch.no_grad():
        assert torch.equal(ck.model(x), model(x))
    for k, v in model.state_dict().items():
        assert torch.equal(ck.model.state_dict()[k], v), k
    m = json.loads((tmp_path / "ck" / MANIFEST_FILE).read_text())
    assert m["weights_sha256"] == sha256_file(tmp_path / "ck" / WEIGHTS_FILE) == ck.sha256
    assert ck.inputs == ["prcp", "srad", "tmax", "tmin", "vp"] and not ck.model.training


def test_registry_did_you_mean():
    assert "hydro_lstm" in MODELS
    with pytest.raises(UnknownModelError, match="Did you mean 'hydro_lstm'"):
        build_model("hydro_lstn", {})


def test_unknown_config_field_named(tmp_path, model):
    save_checkpoint(tmp_path / "ck", model, _manifest())
    m = json.loads((tmp_path / "ck" / MANIFEST_FILE).read_text())
    m["config"]["hiden_size"] = 3
    (tmp_path / "ck" / MANIFEST_FILE).write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="hiden_size"):
        load_checkpoint(tmp_path / "ck")


def test_shape_mismatch_names_tensor(tmp_path, model):
    save_checkpoint(tmp_path / "ck", model, _manifest())
    m = json.loads((tmp_path / "ck" / MANIFEST_FILE).read_text())
    m["config"]["hidden_size"] = 9
    (tmp_path / "ck" / MANIFEST_FILE).write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match=r"lstm\.weight_ih_l0.*\(32, 5\).*\(36, 5\)"):
        load_checkpoint(tmp_path / "ck")


def test_truncated_weights(tmp_path, model):
    save_checkpoint(tmp_path / "ck", model, _manifest())
    w = tmp_path / "ck" / WEIGHTS_FILE
    w.write_bytes(w.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or corrupted|does not match"):
        load_checkpoint(tmp_path / "ck")
    # without the sha check the safetensors reader itself must refuse it
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(tmp_path / "ck", verify=False)


def test_flipped_byte_detected_by_sha(tmp_path, model):
    save_checkpoint(tmp_path / "ck", model, _manifest())
    w = tmp_path / "ck" / WEIGHTS_FILE
    data = bytearray(w.read_bytes())
    data[-3] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the manifest"):
        load_checkpoint(tmp_path / "ck")


def test_bad_manifest_json(tmp_path, model):
    save_checkpoint(tmp_path / "ck", model, _manifest())
    (tmp_path / "ck" / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "ck")


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.safetensors")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"lstm.weight_ih_l0": _Evil(marker)}, path)
    (tmp_path / "evil.json").write_text(json.dumps(_manifest()))
    # the same file *would* run code if unpickled the unsafe way:
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # prove the file is really hostile
    assert marker.exists()


def test_plain_pt_state_dict_accepted(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "m.pt")
    (tmp_path / "m.json").write_text(json.dumps(_manifest()))
    ck = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(2, 10, 5)
    with torch.no_grad():
        assert torch.equal(ck.model(x), model(x))


def test_pt_without_manifest(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="needs a manifest"):
        load_checkpoint(tmp_path / "m.pt")


def test_pickled_module_refused(tmp_path, model):
    torch.save(model, tmp_path / "whole.pt")  # a pickled nn.Module, not a state dict
    (tmp_path / "whole.json").write_text(json.dumps(_manifest()))
    with pytest.raises(CheckpointError, match="refused|state dict"):
        load_checkpoint(tmp_path / "whole.pt")


def test_single_file_export(tmp_path, model):
    save_checkpoint(tmp_path / "ck", model, _manifest())
    ck = load_checkpoint(tmp_path / "ck")
    out = export_safetensors(ck, tmp_path / "one.safetensors")
    ck2 = load_checkpoint(out)
    assert ck2.manifest["source_sha256"] == ck.sha256
    for k, v in ck.model.state_dict().items():
        assert torch.equal(ck2.model.state_dict()[k], v)


def test_series(tmp_path, model):
    for e in (1, 2, 10):
        save_checkpoint(tmp_path / "run" / f"epoch_{e:03d}", model, _manifest(epoch=e, learning_rate=0.1 / e))
    paths = list_series(tmp_path / "run")
    assert [p.name for p in paths] == ["epoch_001", "epoch_002", "epoch_010"]
    assert [c.manifest["learning_rate"] for c in load_series(tmp_path / "run")] == [0.1, 0.05, 0.01]
    # the run folder itself loads its last epoch
    assert load_checkpoint(tmp_path / "run").manifest["epoch"] == 10
    with pytest.raises(CheckpointError, match="no epoch_NNN"):
        list_series(tmp_path)


def test_newer_format_version(tmp_path, model):
    save_checkpoint(tmp_path / "ck", model, _manifest())
    m = json.loads((tmp_path / "ck" / MANIFEST_FILE).read_text())
    m["format_version"] = 99
    (tmp_path / "ck" / MANIFEST_FILE).write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="upgrade xaiscope"):
        load_checkpoint(tmp_path / "ck")


def test_forget_bias_initialisation():
    m = HydroLSTM(hidden_size=4, num_layers=2, initial_forget_bias=3.0)
    plain = HydroLSTM(hidden_size=4, num_layers=2, initial_forget_bias=0.0)
    for k in range(2):
        b = getattr(m.lstm, f"bias_hh_l{k}")
        b0 = getattr(plain.lstm, f"bias_hh_l{k}")
        # forget rows are shifted by +3 relative to the uniform init range (|b0| <= 1/sqrt(H))
        assert (b[4:8] > 3.0 - 0.51).all() and (b0[4:8].abs() <= 0.51).all()
        assert (b[:4].abs() <= 0.51).all()


def test_pickle_module_not_used_on_safe_paths(tmp_path, model, monkeypatch):
    save_checkpoint(tmp_path / "ck", model, _manifest())

    def boom(*a, **k):
        raise AssertionError("pickle must not be used to load a safetensors checkpoint")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    load_checkpoint(tmp_path / "ck")


def test_builtin_kinds_load_without_importing_their_module_first():
    import subprocess
    import sys

    code = ("from xaiscope.assets import ASSETS; from xaiscope.core.checkpoint import load_checkpoint; "
            "print(load_checkpoint(ASSETS / 'checkpoints' / 'enso_convlstm').kind, load_checkpoint(ASSETS / 'checkpoints' / 'sst_qoi_lag03').kind)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["enso_convlstm", "sst_qoi_mlp"]
