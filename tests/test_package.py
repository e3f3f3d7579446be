"""Packaging: one import namespace, nothing called `core` or `data` at top level, assets reachable."""

import subprocess
import sys
from importlib import metadata


def test_only_the_xaiscope_namespace_is_installed(tmp_path):
    code = (
        "import importlib.util as u, xaiscope.core, xaiscope.data, xaiscope.dashboard, xaiscope.assets;"
        "print(u.find_spec('core') is None, u.find_spec('data') is None, u.find_spec('dashboard') is None,"
        " xaiscope.assets.ASSETS.joinpath('camels_us', 'SOURCES.md').exists())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True", "True"]
    # what the installed distribution put into site-packages (read away from the source tree, whose
    # build metadata lists source files)
    code = ("from importlib import metadata; "
            "print('\\n'.join(sorted({str(f).split('/')[0] for f in metadata.files('xaiscope') or []})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    tops = set(out.stdout.split())
    assert tops and not tops & {"core", "data", "dashboard", "assets", "core.py", "data.py"}, tops


def test_core_and_data_import_without_ui_libraries(tmp_path):
    code = (
        "import sys, xaiscope.core.hydro, xaiscope.core.states, xaiscope.core.cli, xaiscope.data.camels,"
        " xaiscope.data.sst;"
        "print(sorted(m for m in ('panel', 'holoviews', 'bokeh', 'geoviews') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_console_script():
    out = subprocess.run([sys.executable, "-m", "xaiscope.core.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout and "serve" in out.stdout
    assert metadata.entry_points(group="console_scripts", name="xaiscope")
