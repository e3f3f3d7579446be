"""The app opens typed paths only inside the allowed roots, and a bad checkpoint never breaks the open state."""

from __future__ import annotations

import os

import pytest
import torch

pn = pytest.importorskip("panel")

from xaiscope.core.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, save_checkpoint  # noqa: E402
from xaiscope.core.models import HydroLSTM  # noqa: E402
from xaiscope.core.paths import ENV_VAR, AllowedRoots  # noqa: E402
from xaiscope.data.synthetic import synthetic_basin  # noqa: E402

INPUTS = ["prcp", "srad", "tmax", "tmin", "vp"]


def _checkpoint(directory, ds, hidden=4):
    torch.manual_seed(0)
    model = HydroLSTM(n_inputs=5, hidden_size=hidden, num_layers=1)
    stats = {v: {"mean": float(ds[v].mean()), "std": float(ds[v].std())} for v in [*INPUTS, "qobs"]}
    return save_checkpoint(directory, model, {
        "kind": "hydro_lstm", "config": {"n_inputs": 5, "hidden_size": hidden, "num_layers": 1}, "inputs": INPUTS,
        "target": "qobs", "window": 365, "normalisation": stats, "data": {"basin_id": ds.attrs["basin_id"]},
        "epoch": 1})


@pytest.fixture(scope="module")
def basin():
    return synthetic_basin(seed=5, start="2000-01-01", end="2001-12-31")


@pytest.fixture
def layout(tmp_path, basin, monkeypatch):
    """allowed/{good, good2, broken}, outside/{good}; the working directory is elsewhere."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XAISCOPE_CACHE_DIR", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    _checkpoint(tmp_path / "allowed" / "good", basin)
    _checkpoint(tmp_path / "allowed" / "good2", basin, hidden=3)
    _checkpoint(tmp_path / "outside" / "good", basin)
    broken = _checkpoint(tmp_path / "allowed" / "broken", basin)
    w = broken / WEIGHTS_FILE
    w.write_bytes(w.read_bytes()[:100])  # truncated
    return tmp_path


def _state(layout, basin, **kw):
    from xaiscope.dashboard.state import AppState

    state = AppState(checkpoints=[str(layout / "allowed" / "good")], data=[basin], **kw)
    assert state.error == "" and state.ckpt is not None
    return state


def test_default_roots_hold_the_command_line_folders(layout, basin):
    state = _state(layout, basin)
    roots = state.allowed_roots.roots
    assert (layout / "allowed").resolve() in roots and (layout / "work").resolve() in roots
    assert (layout / "cache").resolve() in roots
    assert (layout / "outside").resolve() not in roots


def test_add_checkpoint_inside_roots(layout, basin):
    state = _state(layout, basin)
    label = state.add_checkpoint(str(layout / "allowed" / "good2"))
    assert label == state.checkpoint and state.error == ""
    assert state.ckpt.manifest["config"]["hidden_size"] == 3


@pytest.mark.parametrize("typed", [
    "{root}/outside/good",
    "{root}/allowed/../outside/good",
    "{root}/allowed/link",
    "/etc/passwd",
    "",
    "{root}/allowed/good\x00/../../outside/good",
])
def test_add_checkpoint_outside_refused_and_state_stays_usable(layout, basin, typed):
    (layout / "allowed" / "link").symlink_to(layout / "outside" / "good")
    state = _state(layout, basin)
    before_objects = list(state.param.checkpoint.objects)
    before_label, before_ckpt = state.checkpoint, state.ckpt
    assert state.add_checkpoint(typed.format(root=layout)) is None
    assert "may only open files inside" in state.error or "empty" in state.error or "NUL" in state.error
    if "may only" in state.error:
        assert str((layout / "allowed").resolve()) in state.error and "--allow-root" in state.error
    # nothing was added and the open checkpoint is still open
    assert list(state.param.checkpoint.objects) == before_objects
    assert state.checkpoint == before_label and state.ckpt is before_ckpt and state.ds is not None
    # and the state keeps working
    assert state.add_checkpoint(str(layout / "allowed" / "good2")) is not None
    assert state.error == "" and state.ckpt.manifest["config"]["hidden_size"] == 3


def test_symlinked_epoch_folder_leading_out_is_refused(layout, basin):
    run = layout / "allowed" / "run"
    run.mkdir()
    (run / "epoch_001").symlink_to(layout / "allowed" / "good2", target_is_directory=True)
    (run / "epoch_002").symlink_to(layout / "outside" / "good", target_is_directory=True)
    state = _state(layout, basin)
    before = state.ckpt
    assert state.add_checkpoint(str(run)) is None  # the run folder's last epoch lies outside
    assert "may only open files inside" in state.error and state.ckpt is before
    (run / "epoch_002").unlink()
    assert state.add_checkpoint(str(run)) is not None and state.error == ""


def test_broken_checkpoint_inside_roots_shows_error_and_keeps_state(layout, basin):
    state = _state(layout, basin)
    before = state.ckpt
    assert state.add_checkpoint(str(layout / "allowed" / "broken")) is None
    assert "broken" in state.error and ("truncated" in state.error or "does not match" in state.error)
    assert state.ckpt is before and "broken" not in state.param.checkpoint.objects
    (layout / "allowed" / "garbage").mkdir()
    (layout / "allowed" / "garbage" / MANIFEST_FILE).write_text("{{{ not json")
    assert state.add_checkpoint(str(layout / "allowed" / "garbage")) is None
    assert "not valid JSON" in state.error and state.ckpt is before


def test_allow_root_and_env_extend_the_roots(layout, basin, monkeypatch):
    state = _state(layout, basin, allowed_roots=[str(layout / "outside")])
    assert state.add_checkpoint(str(layout / "outside" / "good")) is not None and state.error == ""
    monkeypatch.setenv(ENV_VAR, os.pathsep.join(["/nonexistent-root", str(layout / "outside")]))
    state2 = _state(layout, basin)
    assert state2.add_checkpoint(str(layout / "outside" / "good")) is not None and state2.error == ""
    # an explicit AllowedRoots is used as it is
    state3 = _state(layout, basin, allowed_roots=AllowedRoots([layout / "allowed" / "good2"]))
    assert state3.add_checkpoint(str(layout / "allowed" / "good2")) is not None
    assert state3.add_checkpoint(str(layout / "allowed" / "good")) is None


def test_add_data_is_confined(layout, basin):
    state = _state(layout, basin)
    basin.to_netcdf(layout / "outside" / "basin.nc")
    basin.to_netcdf(layout / "allowed" / "basin.nc")
    assert state.add_data(str(layout / "outside" / "basin.nc")) is None
    assert "may only open files inside" in state.error
    assert state.add_data(f"{layout}/allowed/../outside/basin.nc") is None
    label = state.add_data(str(layout / "allowed" / "basin.nc"))
    assert label == state.dataset and state.error == "" and state.ds is not None


def test_sidebar_open_button_shows_the_refusal(layout, basin):
    from xaiscope.dashboard.app import create_app
    from xaiscope.dashboard.state import AppState

    state = AppState(checkpoints=[str(layout / "allowed" / "good")], data=[basin])
    app = create_app(state=state)
    widgets = [o for o in app.sidebar.objects if hasattr(o, "value") or isinstance(o, pn.widgets.Button)]
    text = next(w for w in widgets if isinstance(w, pn.widgets.TextInput))
    button = next(w for w in widgets if isinstance(w, pn.widgets.Button))
    alert = next(o for o in app.sidebar.objects if isinstance(o, pn.pane.Alert))
    text.value = str(layout / "outside" / "good")
    button.clicks += 1
    assert alert.visible and "may only open files inside" in alert.object
    assert state.ckpt is not None
    text.value = str(layout / "allowed" / "good2")
    button.clicks += 1
    assert not alert.visible and state.error == "" and state.ckpt.manifest["config"]["hidden_size"] == 3


def test_serve_flag_passes_allow_root_through(monkeypatch):
    from xaiscope.core import cli
    import xaiscope.dashboard.app as app

    seen = {}
    monkeypatch.setattr(app, "serve", lambda **kw: seen.update(kw))
    assert cli.main(["serve", "--allow-root", "/data/a", "--allow-root", "/data/b"]) == 0
    assert seen["allowed_roots"] == ["/data/a", "/data/b"]
    assert cli.main(["serve"]) == 0 and seen["allowed_roots"] == []
    assert app._argv_options(["--allow-root", "/x"]).allow_root == ["/x"]
