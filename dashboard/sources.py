"""Where the dashboard's checkpoints and basin data come from, and the caches that keep them loaded.

A *data source* is a label shown in the sidebar plus a way to open a basin Dataset: the bundled demo basin,
the synthetic basin, a CAMELS-US folder and basin id, a forcing file or a NetCDF file. Checkpoints are paths
(folders or files) opened with :func:`xaiscope.core.hydro.load_hydro`. Everything here is plain Python
(no Panel), so the state logic can be tested without a browser.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import xarray as xr

from xaiscope.core.engine import ResultCache
from xaiscope.core.errors import XaiscopeError

log = logging.getLogger("xaiscope.dashboard")

DEMO_LABEL = "CAMELS-US 01031500 (demo)"
SYNTHETIC_LABEL = "Synthetic snowy basin (seed 0)"


@dataclass
class DataSource:
    """A basin dataset the user can pick: ``label`` in the sidebar, ``key`` for caches, ``opener`` to load."""

    label: str
    key: str
    opener: Callable[[], xr.Dataset] = field(repr=False)

    def open(self) -> xr.Dataset:
        return _DATASETS.get_or_compute(self.key, self.opener)


class LRUCache(ResultCache):
    """A small thread-safe least-recently-used cache bounded in entries, on simple (hashable) keys: the engine's
    :class:`~xaiscope.core.engine.ResultCache` (a value is computed once even when several sessions ask for it at the
    same time) without a byte bound."""

    def __init__(self, maxsize: int = 64):
        super().__init__(max_bytes=None, max_items=maxsize)
        self.maxsize = maxsize


_DATASETS = LRUCache(maxsize=8)


def _open_spec(spec: str, basin: str | None = None) -> xr.Dataset:
    from xaiscope.core.hydro import open_basin_data

    return open_basin_data(spec, basin)


def default_sources() -> list[DataSource]:
    """The bundled demo basin and the synthetic basin."""
    return [
        DataSource(DEMO_LABEL, "demo", lambda: _open_spec("demo")),
        DataSource(SYNTHETIC_LABEL, "synthetic:0", lambda: _open_spec("synthetic:0")),
    ]


def _camels_basins(folder: Path) -> list[str]:
    """Basin ids offered by a CAMELS-US folder: its basin list file, else the forcing files found in it."""
    for name in ("basin_list.txt", "basins.txt"):
        if (folder / name).exists():
            from xaiscope.data.camels import read_basin_list

            return read_basin_list(folder / name)
    ids = sorted({p.name.split("_")[0] for p in folder.rglob("*_lump_cida_forcing_leap.txt")})
    return ids


def parse_data_spec(spec: str | Path, roots=None) -> list[DataSource]:
    """Turn one ``--data`` value into data sources.

    Accepted: ``demo``; ``synthetic`` or ``synthetic:SEED``; ``FOLDER#BASIN`` (a CAMELS-US folder and a basin
    id); ``FOLDER`` (every basin of its ``basin_list.txt``); a forcing ``.txt`` file; a NetCDF basin file.
    ``roots`` (an :class:`~xaiscope.core.paths.AllowedRoots`, for specs typed into the app) confines the path:
    outside them :class:`~xaiscope.core.errors.PathNotAllowedError`.
    """
    text = str(spec).strip()
    if text in ("", "demo"):
        return [default_sources()[0]]
    if text.startswith("synthetic"):
        seed = text.partition(":")[2] or "0"
        if not seed.isdigit():
            raise XaiscopeError(f"--data {text!r}: write 'synthetic' or 'synthetic:SEED' with an integer seed.")
        return [DataSource(f"Synthetic snowy basin (seed {seed})", f"synthetic:{seed}",
                           lambda s=seed: _open_spec(f"synthetic:{s}"))]
    path_text, _, basin = text.partition("#")
    path = Path(path_text).expanduser() if roots is None else roots.confine(path_text)
    if not path.exists():
        raise XaiscopeError(
            f"--data {text!r}: {path} does not exist. Give a CAMELS-US folder (optionally FOLDER#BASIN_ID), a "
            "forcing .txt file, a NetCDF basin file, 'demo' or 'synthetic[:SEED]'."
        )
    path = path.resolve()
    if path.is_dir():
        basins = [basin] if basin else _camels_basins(path)
        if not basins:
            raise XaiscopeError(
                f"--data {text!r}: {path} is a folder without a basin_list.txt or CAMELS forcing files; give the "
                "basin as FOLDER#BASIN_ID."
            )
        return [DataSource(f"{b} ({path.name})", f"{path}#{b}", lambda b=b: _open_spec(str(path), b))
                for b in basins]
    return [DataSource(path.name, str(path), lambda: _open_spec(str(path), basin or None))]


def default_checkpoints(kind: str = "hydro_lstm") -> dict[str, str]:
    """The demo checkpoints of model ``kind`` shipped in ``assets/checkpoints`` (label → path), in a stable
    order (the hydrology views cannot open the ENSO checkpoints)."""
    from xaiscope.assets import ASSETS

    root = ASSETS / "checkpoints"
    found: dict[str, str] = {}
    if root.is_dir():
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            manifests = [sub / "manifest.json"] if (sub / "manifest.json").exists() else sorted(
                sub.glob("epoch_*/manifest.json"))
            if manifests and _manifest_kind(manifests[-1]) in (kind, None):
                found[sub.name] = str(sub)
    return found


def _manifest_kind(path: Path) -> str | None:
    import json

    try:
        return json.loads(path.read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def checkpoint_label(path: str | Path, taken: dict) -> str:
    """A short unique label for a checkpoint path."""
    p = Path(path)
    label = p.name if p.name not in ("", ".") else str(p)
    if p.name.startswith("epoch_") and p.parent.name:
        label = f"{p.parent.name}/{p.name}"
    base, k = label, 2
    while label in taken and taken[label] != str(path):
        label = f"{base} ({k})"
        k += 1
    return label


def dataset_key(ds: xr.Dataset) -> str:
    """A cache key for a Dataset given as an object (not a path): basin id, record span and object id."""
    t = ds["time"].values
    return f"obj:{ds.attrs.get('basin_id', '?')}:{t[0]}:{t[-1]}:{id(ds)}"
