"""The shared state of the app: which checkpoint and which basin data are open.

Every view reads an :class:`AppState`; the sidebar writes it. Loading errors (a broken checkpoint, an
unreadable file, inputs the checkpoint does not know) are caught here, logged with their traceback and kept in
``error`` so that the views can show them while the app keeps running.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import param
import xarray as xr

from xaiscope.core.checkpoint import Checkpoint
from xaiscope.core.engine import get_engine
from xaiscope.core.errors import USER_ERRORS, XaiscopeError
from xaiscope.core.paths import AllowedRoots
from xaiscope.dashboard.sources import (
    DataSource, checkpoint_label, dataset_key, default_checkpoints, default_sources, parse_data_spec,
)

log = logging.getLogger("xaiscope.dashboard")


def describe_error(err: BaseException) -> str:
    """The message shown to the user: user errors as they are, anything else with its type."""
    if isinstance(err, USER_ERRORS):
        return str(err)
    return f"{type(err).__name__}: {err} (see the server log for the traceback)"


class AppState(param.Parameterized):
    """Loaded checkpoint and dataset, shared by all views.

    Parameters
    ----------
    checkpoints : paths (folders/files) or loaded :class:`Checkpoint` objects; default: the demo checkpoints.
    data : ``--data`` specs (see :func:`~xaiscope.dashboard.sources.parse_data_spec`) or ``xr.Dataset`` objects;
        the demo and synthetic basins are always offered after them.
    device : torch device preference (``None``: automatic).
    allowed_roots : the folders a path typed into the app may lie in (see :mod:`xaiscope.core.paths`): an
        :class:`~xaiscope.core.paths.AllowedRoots`, or extra folders (``--allow-root``) added to the defaults
        (assets, working directory, cache folder, the folders of ``checkpoints`` and ``data``,
        ``$XAISCOPE_ALLOWED_ROOTS``). The ``checkpoints`` and ``data`` given here are trusted (command line).
    """

    checkpoint = param.Selector(default=None, objects=[], allow_None=True, doc="label of the open checkpoint")
    dataset = param.Selector(default=None, objects=[], allow_None=True, doc="label of the open basin data")
    device = param.String(default=None, allow_None=True)

    ckpt = param.Parameter(default=None, doc="the loaded Checkpoint (None until loaded or on error)")
    ds = param.Parameter(default=None, doc="the loaded basin xr.Dataset")
    data_key = param.String(default="", doc="cache key of the loaded dataset")
    error = param.String(default="", doc="last loading error, shown by the views")
    loading = param.Boolean(default=False)

    def __init__(self, checkpoints=None, data=None, device: str | None = None, allowed_roots=None, **params):
        if not isinstance(allowed_roots, AllowedRoots):
            given = [c for c in (checkpoints if isinstance(checkpoints, (list, tuple)) else [checkpoints])]
            given += list(data) if isinstance(data, (list, tuple)) else [data]
            extra = [allowed_roots] if isinstance(allowed_roots, (str, Path)) else list(allowed_roots or ())
            allowed_roots = AllowedRoots.for_app(paths=given, extra=extra)
        self.allowed_roots = allowed_roots
        self._checkpoint_objects: dict[str, Any] = {}
        self._sources: dict[str, DataSource] = {}
        self._setup_errors: list[str] = []
        ck = self._collect_checkpoints(checkpoints)
        src = self._collect_sources(data)
        super().__init__(device=device, **params)
        self.param.checkpoint.objects = list(ck)
        self.param.dataset.objects = list(src)
        with param.parameterized.discard_events(self):
            if self.checkpoint is None and ck:
                self.checkpoint = next(iter(ck))
            if self.dataset is None and src:
                self.dataset = self._default_dataset()
        self.load()
        if self._setup_errors and not self.error:
            self.error = "\n".join(self._setup_errors)

    # ---------------------------------------------------------------------------------------- options
    def _collect_checkpoints(self, checkpoints) -> dict[str, Any]:
        if checkpoints is None or (isinstance(checkpoints, (list, tuple)) and not checkpoints):
            items = list(default_checkpoints().values())
        elif isinstance(checkpoints, (str, Path, Checkpoint)):
            items = [checkpoints]
        else:
            items = list(checkpoints)
        for item in items:
            if isinstance(item, Checkpoint):
                label = checkpoint_label(item.path, self._checkpoint_objects)
                if item.manifest.get("epoch") is not None and not Path(item.path).name.startswith("epoch_"):
                    label = f"{label} (epoch {item.manifest['epoch']})"
                self._checkpoint_objects[label] = item
            else:
                path = str(Path(item).expanduser())
                self._checkpoint_objects[checkpoint_label(path, self._checkpoint_objects)] = path
        return self._checkpoint_objects

    def _collect_sources(self, data) -> dict[str, DataSource]:
        items = [] if data is None else ([data] if isinstance(data, (str, Path, xr.Dataset)) else list(data))
        for item in items:
            if isinstance(item, xr.Dataset):
                label = str(item.attrs.get("basin_name") or item.attrs.get("basin_id") or "dataset")
                src = DataSource(label, dataset_key(item), lambda item=item: item)
                self._sources[src.label] = src
                continue
            try:
                for src in parse_data_spec(item):
                    self._sources[src.label] = src
            except USER_ERRORS as err:
                log.warning("cannot offer data %r: %s", item, err)
                self._setup_errors.append(str(err))
        for src in default_sources():
            if not any(s.key == src.key for s in self._sources.values()):
                self._sources[src.label] = src
        return self._sources

    def _default_dataset(self) -> str:
        """The first data source, or the basin the checkpoint was trained on when none was given."""
        labels = list(self._sources)
        ck = self._checkpoint_objects.get(self.checkpoint)
        basin = ""
        if isinstance(ck, Checkpoint):
            basin = str((ck.manifest.get("data") or {}).get("basin_id", ""))
        elif isinstance(ck, str) and "synthetic" in Path(ck).name:
            basin = "synthetic"
        if basin.startswith("synthetic"):
            for label, src in self._sources.items():
                if src.key.startswith("synthetic"):
                    return label
        return labels[0]

    @property
    def sources(self) -> dict[str, DataSource]:
        return dict(self._sources)

    def add_data(self, spec: str | Path, select: bool = True) -> str | None:
        """Offer basin data typed into the app (a path confined to :attr:`allowed_roots`, ``demo`` or
        ``synthetic[:SEED]``); return its label, or ``None`` with the message in ``error``."""
        try:
            sources = parse_data_spec(spec, roots=self.allowed_roots)
        except Exception as err:  # noqa: BLE001
            log.warning("cannot add data %r: %s", spec, err, exc_info=not isinstance(err, USER_ERRORS))
            self.error = f"Data {str(spec)[:300]!r}: {describe_error(err)}"
            return None
        for src in sources:
            self._sources[src.label] = src
        self.param.dataset.objects = list(self._sources)
        label = sources[0].label
        if select:
            self.dataset = label
        return label

    def add_checkpoint(self, path: str | Path | Checkpoint, select: bool = True) -> str | None:
        """Offer another checkpoint (and open it); return its label.

        A path (typed into the app) must lie inside :attr:`allowed_roots` and hold a checkpoint that loads;
        otherwise the message goes to ``error``, nothing is added, the open checkpoint stays open and ``None`` is
        returned.
        """
        if not isinstance(path, Checkpoint):
            from xaiscope.core.hydro import load_hydro

            try:
                path = str(self.allowed_roots.confine(path))
                loaded = load_hydro(path)
                # the files actually read (e.g. an epoch folder that is a symlink) must lie inside too
                self.allowed_roots.confine(loaded.extra.get("weights_path") or path)
            except Exception as err:  # noqa: BLE001 - any failure must reach the user, not kill the app
                log.warning("cannot add checkpoint %r: %s", path, err, exc_info=not isinstance(err, USER_ERRORS))
                self.error = f"Checkpoint {str(path)[:300]!r}: {describe_error(err)}"
                return None
        before = set(self._checkpoint_objects)
        self._collect_checkpoints([path])
        new = [k for k in self._checkpoint_objects if k not in before] or [
            k for k, v in self._checkpoint_objects.items() if v == str(Path(str(path)).expanduser())]
        self.param.checkpoint.objects = list(self._checkpoint_objects)
        label = new[-1]
        if select:
            self.checkpoint = label
        return label

    # ---------------------------------------------------------------------------------------- loading
    @param.depends("checkpoint", "dataset", "device", watch=True)
    def load(self) -> None:
        """Open the selected checkpoint and dataset; on failure keep the message in ``error``."""
        from xaiscope.core.hydro import load_hydro

        self.loading = True
        try:
            ckpt = ds = None
            key = ""
            errors = []
            item = self._checkpoint_objects.get(self.checkpoint)
            try:
                if item is None:
                    raise XaiscopeError(
                        "no checkpoint to open: start the app with --checkpoint PATH (a checkpoint folder or "
                        "file), or add one in the sidebar."
                    )
                ckpt = item if isinstance(item, Checkpoint) else load_hydro(item)
                # one copy per weights sha256 for every session of this process (see xaiscope.core.engine)
                ckpt = get_engine().share(ckpt)
                if not hasattr(ckpt.model, "lstm"):
                    raise XaiscopeError(
                        f"{ckpt.path}: model kind {ckpt.kind!r} has no LSTM; the cell-state view needs a "
                        "hydro_lstm checkpoint."
                    )
            except Exception as err:  # noqa: BLE001 - any failure must reach the user, not kill the app
                log.error("cannot open checkpoint %r", self.checkpoint, exc_info=True)
                errors.append(f"Checkpoint {self.checkpoint!r}: {describe_error(err)}")
                ckpt = None
            src = self._sources.get(self.dataset)
            try:
                if src is None:
                    raise XaiscopeError("no basin data selected; pick one in the sidebar.")
                ds, key = src.open(), src.key
            except Exception as err:  # noqa: BLE001
                log.error("cannot open data %r", self.dataset, exc_info=True)
                errors.append(f"Data {self.dataset!r}: {describe_error(err)}")
                ds, key = None, ""
            with param.parameterized.batch_call_watchers(self):
                self.error = "\n".join(errors)
                self.ckpt, self.ds, self.data_key = ckpt, ds, key
        finally:
            self.loading = False

    @property
    def ok(self) -> bool:
        return self.ckpt is not None and self.ds is not None and not self.error
