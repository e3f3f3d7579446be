"""Hostile, truncated, corrupted and mismatched checkpoint files: nothing runs, and each gives one clear error —
from the library, from `xaiscope info` (exit 2, one line, no traceback) and in the app (the state stays usable)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from xaiscope.core.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint
from xaiscope.core.errors import CheckpointError
from xaiscope.core.models import HydroLSTM

INPUTS = ["prcp", "srad", "tmax", "tmin", "vp"]


def _manifest(**extra):
    return {"kind": "hydro_lstm", "config": {"n_inputs": 5, "hidden_size": 8, "num_layers": 2},
            "inputs": INPUTS, "epoch": 1, **extra}


def _model():
    torch.manual_seed(0)
    return HydroLSTM(n_inputs=5, hidden_size=8, num_layers=2).eval()


class _Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _evil_state(marker):
    state = dict(_model().state_dict())
    state["lstm.weight_ih_l0"] = _Evil(marker)
    return state


# ------------------------------------------------------------------------------------------- bad files
# each builder: (tmp, marker) -> path of the bad checkpoint; BAD maps a case to (builder, message regex)

def _pt_reduce(tmp, marker):
    torch.save(_evil_state(marker), tmp / "evil.pt")
    (tmp / "evil.json").write_text(json.dumps(_manifest()))
    return tmp / "evil.pt"


def _pt_legacy_reduce(tmp, marker):
    torch.save(_evil_state(marker), tmp / "evil.pth", _use_new_zipfile_serialization=False)
    (tmp / "evil.json").write_text(json.dumps(_manifest()))
    return tmp / "evil.pth"


def _raw_pickle_bin(tmp, marker):
    with open(tmp / "evil.bin", "wb") as fh:
        pickle.dump(_evil_state(marker), fh, protocol=4)
    (tmp / "evil.json").write_text(json.dumps(_manifest()))
    return tmp / "evil.bin"


def _pickle_named_safetensors(tmp, marker):
    torch.save(_evil_state(marker), tmp / "model.safetensors")
    (tmp / "model.json").write_text(json.dumps(_manifest()))
    return tmp / "model.safetensors"


def _raw_pickle_as_weights_in_folder(tmp, marker):
    ck = tmp / "ck"
    ck.mkdir()
    with open(ck / WEIGHTS_FILE, "wb") as fh:
        pickle.dump(_evil_state(marker), fh)
    (ck / MANIFEST_FILE).write_text(json.dumps(_manifest()))
    return ck


def _manifest_points_to_pickle(tmp, marker):
    ck = tmp / "ck"
    ck.mkdir()
    torch.save(_evil_state(marker), ck / "weights.pt")
    (ck / MANIFEST_FILE).write_text(json.dumps(_manifest(weights_file="weights.pt")))
    return ck


def _manifest_points_outside(tmp, marker):
    save_checkpoint(tmp / "other", _model(), _manifest())
    ck = save_checkpoint(tmp / "ck", _model(), _manifest())
    m = json.loads((ck / MANIFEST_FILE).read_text())
    m["weights_file"] = "../other/" + WEIGHTS_FILE
    (ck / MANIFEST_FILE).write_text(json.dumps(m))
    return ck


def _weights_symlink_outside(tmp, marker):
    save_checkpoint(tmp / "other", _model(), _manifest())
    ck = save_checkpoint(tmp / "ck", _model(), _manifest())
    (ck / WEIGHTS_FILE).unlink()
    (ck / WEIGHTS_FILE).symlink_to(tmp / "other" / WEIGHTS_FILE)
    return ck


def _truncated_safetensors(tmp, marker):
    ck = save_checkpoint(tmp / "ck", _model(), _manifest())
    w = ck / WEIGHTS_FILE
    w.write_bytes(w.read_bytes()[: len(w.read_bytes()) // 2])
    return ck


def _truncated_header(tmp, marker):
    ck = save_checkpoint(tmp / "ck", _model(), _manifest())
    (ck / WEIGHTS_FILE).write_bytes((ck / WEIGHTS_FILE).read_bytes()[:5])
    return ck


def _corrupted_bytes(tmp, marker):
    ck = save_checkpoint(tmp / "ck", _model(), _manifest())
    data = bytearray((ck / WEIGHTS_FILE).read_bytes())
    data[len(data) - 17] ^= 0x55  # inside the tensor data: still a valid safetensors file
    (ck / WEIGHTS_FILE).write_bytes(bytes(data))
    return ck


def _manifest_garbage(tmp, marker):
    ck = save_checkpoint(tmp / "ck", _model(), _manifest())
    (ck / MANIFEST_FILE).write_bytes(b"\xff\xfe{\x00garbage \x9c")
    return ck


def _manifest_deeply_nested(tmp, marker):
    ck = save_checkpoint(tmp / "ck", _model(), _manifest())
    (ck / MANIFEST_FILE).write_text("[" * 200_000 + "]" * 200_000)
    return ck


def _manifest_wrong_types(tmp, marker):
    ck = save_checkpoint(tmp / "ck", _model(), _manifest())
    m = json.loads((ck / MANIFEST_FILE).read_text())
    m["kind"] = ["hydro_lstm"]
    (ck / MANIFEST_FILE).write_text(json.dumps(m))
    return ck


def _embedded_manifest_garbage(tmp, marker):
    from safetensors.torch import save_file

    save_file(dict(_model().state_dict()), str(tmp / "one.safetensors"), metadata={"xaiscope.manifest": "{oops"})
    return tmp / "one.safetensors"


def _shape_mismatch(tmp, marker):
    ck = save_checkpoint(tmp / "ck", _model(), _manifest())
    m = json.loads((ck / MANIFEST_FILE).read_text())
    m["config"]["num_layers"] = 3
    (ck / MANIFEST_FILE).write_text(json.dumps(m))
    return ck


def _huge_config(tmp, marker):
    # a manifest asking for a model of ~2e13 parameters (80 TB) next to small weights: refused while the model
    # is built on the meta device, before anything of that size is allocated
    ck = save_checkpoint(tmp / "ck", _model(), _manifest())
    m = json.loads((ck / MANIFEST_FILE).read_text())
    m["config"]["hidden_size"] = 2_000_000
    (ck / MANIFEST_FILE).write_text(json.dumps(m))
    return ck


def _million_layers(tmp, marker):
    # would take hours to build even on the meta device: stopped after the first few layers
    ck = save_checkpoint(tmp / "ck", _model(), _manifest())
    m = json.loads((ck / MANIFEST_FILE).read_text())
    m["config"]["num_layers"] = 1_000_000
    (ck / MANIFEST_FILE).write_text(json.dumps(m))
    return ck


def _negative_size(tmp, marker):
    ck = save_checkpoint(tmp / "ck", _model(), _manifest())
    m = json.loads((ck / MANIFEST_FILE).read_text())
    m["config"]["hidden_size"] = -4
    (ck / MANIFEST_FILE).write_text(json.dumps(m))
    return ck


def _wrong_dtype(tmp, marker):
    from safetensors.torch import save_file

    ck = save_checkpoint(tmp / "ck", _model(), _manifest())
    state = {k: (v * 1000).to(torch.int32) for k, v in _model().state_dict().items()}
    save_file(state, str(ck / WEIGHTS_FILE))
    m = json.loads((ck / MANIFEST_FILE).read_text())
    m.pop("weights_sha256")
    (ck / MANIFEST_FILE).write_text(json.dumps(m))
    return ck


def _weights_is_a_folder(tmp, marker):
    ck = tmp / "ck"
    (ck / WEIGHTS_FILE).mkdir(parents=True)
    (ck / MANIFEST_FILE).write_text(json.dumps(_manifest()))
    return ck


BAD = {
    "pt_reduce": (_pt_reduce, "refused.*would run code.*Nothing from it was run"),
    "pt_legacy_reduce": (_pt_legacy_reduce, "refused"),
    "raw_pickle_bin": (_raw_pickle_bin, "refused"),
    "pickle_named_safetensors": (_pickle_named_safetensors, "not a readable safetensors file"),
    "raw_pickle_as_weights_in_folder": (_raw_pickle_as_weights_in_folder, "not a readable safetensors file"),
    "manifest_points_to_pickle": (_manifest_points_to_pickle, "refused"),
    "manifest_points_outside": (_manifest_points_outside, "not a plain file name"),
    "weights_symlink_outside": (_weights_symlink_outside, "symlink that leads out"),
    "truncated_safetensors": (_truncated_safetensors, "truncated or corrupted"),
    "truncated_header": (_truncated_header, "truncated or corrupted"),
    "corrupted_bytes": (_corrupted_bytes, "sha256 .* does not match the manifest"),
    "manifest_garbage": (_manifest_garbage, "manifest is not valid JSON"),
    "manifest_deeply_nested": (_manifest_deeply_nested, "not valid JSON|must be a JSON object"),
    "manifest_wrong_types": (_manifest_wrong_types, "'kind' must be a model kind name"),
    "embedded_manifest_garbage": (_embedded_manifest_garbage, "embedded manifest is not valid JSON"),
    "shape_mismatch": (_shape_mismatch, r"missing tensor\(s\) \['lstm.weight_ih_l2'"),
    "huge_config": (_huge_config, "describes a model far larger than the weights file"),
    "million_layers": (_million_layers, "describes a model far larger than the weights file"),
    "negative_size": (_negative_size, "cannot build model kind 'hydro_lstm'"),
    "wrong_dtype": (_wrong_dtype, r"10 tensors \('head\.bias', .* and 7 more\) have dtype int32 but the model "
                                 "expects float32"),
    "weights_is_a_folder": (_weights_is_a_folder, "cannot read the checkpoint"),
}
PICKLES = [k for k, (_, msg) in BAD.items() if "reduce" in k or "pickle" in k]


@pytest.fixture(params=sorted(BAD))
def bad(request, tmp_path):
    marker = tmp_path / "PWNED"
    build, msg = BAD[request.param]
    (tmp_path / "files").mkdir()
    path = build(tmp_path / "files", marker)
    return request.param, path, msg, marker


def test_library_gives_one_clear_error(bad):
    name, path, msg, marker = bad
    with pytest.raises(CheckpointError, match=msg) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) or str(path.parent) in str(info.value)
    assert "\n" not in str(info.value)
    assert not marker.exists(), "code from the file ran"


@pytest.mark.parametrize("name", PICKLES)
def test_the_pickles_are_really_hostile(tmp_path, name):
    """The files above would run code if unpickled the unsafe way (so the tests that they do not can fail)."""
    marker = tmp_path / "PWNED"
    path = BAD[name][0](tmp_path, marker)
    weights = path / (WEIGHTS_FILE if name.endswith("folder") else "weights.pt") if path.is_dir() else path
    assert not marker.exists()
    with open(weights, "rb") as fh:
        head = fh.read(2)
    with open(weights, "rb") as fh:  # a file object: torch.load does not look at the name
        if head == b"PK":  # torch's zip format
            torch.load(fh, weights_only=False)
        else:
            try:
                torch.load(fh, weights_only=False)
            except Exception:  # noqa: BLE001 - a raw pickle (not torch's legacy format): pickle.load runs it
                fh.seek(0)
                pickle.load(fh)
    assert marker.exists()


def test_cli_info_one_line_no_traceback(bad, capsys):
    from xaiscope.core.cli import main

    name, path, msg, marker = bad
    rc = main(["info", str(path)])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xaiscope info: error: "), err
    assert "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize("name", ["pt_reduce", "raw_pickle_bin", "truncated_safetensors", "wrong_dtype"])
def test_cli_process_exit_code_and_single_line(tmp_path, name):
    marker = tmp_path / "PWNED"
    path = BAD[name][0](tmp_path, marker)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "xaiscope.core.cli", "info", str(path)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xaiscope info: error: "), proc.stderr
    assert not marker.exists()


def test_app_shows_the_error_and_stays_usable(bad, tmp_path):
    pytest.importorskip("panel")
    from xaiscope.dashboard.state import AppState
    from xaiscope.data.synthetic import synthetic_basin

    name, path, msg, marker = bad
    ds = synthetic_basin(seed=1, start="2000-01-01", end="2001-12-31")
    stats = {v: {"mean": float(ds[v].mean()), "std": float(ds[v].std())} for v in [*INPUTS, "qobs"]}
    good = save_checkpoint(tmp_path / "good", _model(), _manifest(
        target="qobs", window=365, normalisation=stats, data={"basin_id": ds.attrs["basin_id"]}))
    state = AppState(checkpoints=[str(good)], data=[ds], allowed_roots=[tmp_path])
    assert state.error == "" and state.ckpt is not None
    before = (state.checkpoint, state.ckpt, list(state.param.checkpoint.objects))
    assert state.add_checkpoint(str(path)) is None
    assert state.error.startswith("Checkpoint ") and CheckpointError.__name__ not in state.error
    import re

    assert re.search(msg, state.error), state.error
    assert (state.checkpoint, state.ckpt, list(state.param.checkpoint.objects)) == before
    assert not marker.exists()
    # still usable: the open checkpoint still computes
    with torch.no_grad():
        assert state.ckpt.model(torch.zeros(1, 10, 5)).shape == (1,)


def test_float64_and_float16_weights_are_accepted(tmp_path):
    from safetensors.torch import save_file

    model = _model()
    for dtype in (torch.float64, torch.float16):
        ck = save_checkpoint(tmp_path / str(dtype), model, _manifest())
        save_file({k: v.to(dtype) for k, v in model.state_dict().items()}, str(ck / WEIGHTS_FILE))
        loaded = load_checkpoint(ck, verify=False)
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[k], v.to(dtype).to(v.dtype)), k


def test_weights_file_in_the_folder_by_another_name_is_fine(tmp_path):
    ck = save_checkpoint(tmp_path / "ck", _model(), _manifest())
    (ck / WEIGHTS_FILE).rename(ck / "model.safetensors")
    m = json.loads((ck / MANIFEST_FILE).read_text())
    m["weights_file"] = "model.safetensors"
    (ck / MANIFEST_FILE).write_text(json.dumps(m))
    assert load_checkpoint(ck).kind == "hydro_lstm"
