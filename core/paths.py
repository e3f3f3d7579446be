"""Which files a browser user may open: paths typed into the app are confined to a set of root folders.

The web app is used from many browser sessions, and a path typed into it (e.g. "Open another checkpoint") is
opened by the *server*. Such a path must lie inside one of the allowed roots:

* the shipped assets folder (demo data and checkpoints),
* the folder that holds each checkpoint / data path given on the command line (``--checkpoint``, ``--data``),
* the current working directory of the server,
* the xaiscope cache folder (``$XAISCOPE_CACHE_DIR`` or ``~/.cache/xaiscope``),
* every folder given with ``xaiscope serve --allow-root DIR`` (repeatable) or listed in the environment variable
  ``XAISCOPE_ALLOWED_ROOTS`` (separated by ``os.pathsep``, ``:`` on Linux and macOS).

Paths and roots are resolved (symlinks followed, ``..`` removed, relative paths taken from the working directory)
before the check, and a path is inside a root only when it is the root or lies below it *component by
component*: ``/data-evil`` is not inside ``/data``, a symlink inside a root that points outside is refused, and a
root that is itself a symlink allows what its target holds. The command line (a local user on their own machine)
is not confined.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

from xaiscope.core.errors import PathNotAllowedError

ENV_VAR = "XAISCOPE_ALLOWED_ROOTS"

__all__ = ["ENV_VAR", "AllowedRoots", "confine", "default_roots", "roots_from_env", "spec_folder"]


def _text(path) -> str:
    """The path as text; anything that is not a str/PathLike, is empty or holds a NUL byte is refused."""
    if isinstance(path, bytes):
        try:
            path = path.decode("utf-8")
        except UnicodeDecodeError:
            raise PathNotAllowedError("the path is not valid UTF-8 text; type the path of a file or folder.") from None
    if not isinstance(path, (str, os.PathLike)):
        raise PathNotAllowedError(f"{path!r} is not a path; type the path of a file or folder.")
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if "\x00" in text:
        raise PathNotAllowedError(f"{text!r}: a path may not contain a NUL byte; type the path of a file or folder.")
    if not text.strip():
        raise PathNotAllowedError("the path is empty; type the path of a checkpoint (or data) file or folder.")
    return text.strip()


def _resolve(path) -> Path:
    """Absolute, symlink-free form of ``path`` (which need not exist)."""
    try:
        return Path(_text(path)).expanduser().resolve(strict=False)
    except (OSError, RuntimeError, ValueError) as err:  # e.g. a symlink loop, an unknown ~user
        raise PathNotAllowedError(f"{path!s}: cannot resolve this path ({err}).") from err


def default_roots() -> list[Path]:
    """The shipped assets folder, the current working directory and the xaiscope cache folder."""
    from xaiscope.assets import ASSETS

    cache = os.environ.get("XAISCOPE_CACHE_DIR") or str(Path.home() / ".cache" / "xaiscope")
    return [Path(ASSETS), Path.cwd(), Path(cache)]


def roots_from_env(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Folders listed in ``XAISCOPE_ALLOWED_ROOTS`` (``os.pathsep``-separated; empty entries ignored)."""
    value = (os.environ if environ is None else environ).get(ENV_VAR, "")
    return [Path(part) for part in value.split(os.pathsep) if part.strip()]


def spec_folder(spec) -> Path | None:
    """The folder that holds a ``--checkpoint`` / ``--data`` path (``FOLDER#BASIN`` → FOLDER's parent); None for
    ``demo``, ``synthetic[:SEED]`` and in-memory objects."""
    if not isinstance(spec, (str, os.PathLike)):
        return None
    text = os.fspath(spec)
    if isinstance(text, bytes) or not text.strip() or "\x00" in text:
        return None
    text = text.strip()
    if text == "demo" or text.startswith("synthetic"):
        return None
    text = text.partition("#")[0] or text
    return Path(text).expanduser().resolve(strict=False).parent


class AllowedRoots:
    """A set of root folders; :meth:`confine` accepts only paths inside one of them.

    ``AllowedRoots(roots)`` holds exactly ``roots``; :meth:`for_app` adds the defaults (see the module doc).
    """

    def __init__(self, roots: Iterable[str | os.PathLike] = ()):
        self._roots: list[Path] = []
        if isinstance(roots, (str, bytes, os.PathLike)):
            roots = [roots]
        for root in roots:
            self.add(root)

    @classmethod
    def for_app(cls, paths: Iterable = (), extra: Iterable[str | os.PathLike] = (), *, defaults: bool = True,
                environ: Mapping[str, str] | None = None) -> "AllowedRoots":
        """The roots of a served app: the defaults (assets, working directory, cache folder; ``defaults=False``
        leaves them out), the folder of each command-line checkpoint/data spec in ``paths``, the folders in
        ``extra`` (``--allow-root``) and those in ``XAISCOPE_ALLOWED_ROOTS``."""
        found: list = list(default_roots()) if defaults else []
        found += [f for f in (spec_folder(p) for p in paths) if f is not None]
        found += list(extra or ())
        found += roots_from_env(environ)
        return cls(found)

    def add(self, root: str | os.PathLike) -> Path:
        """Allow ``root`` (resolved; a symlinked root allows its target) and return its resolved form."""
        try:
            resolved = _resolve(root)
        except PathNotAllowedError as err:
            raise PathNotAllowedError(f"cannot use {root!r} as an allowed root: {err}") from err
        if resolved not in self._roots:
            self._roots.append(resolved)
        return resolved

    @property
    def roots(self) -> tuple[Path, ...]:
        return tuple(self._roots)

    def __iter__(self):
        return iter(self._roots)

    def __len__(self) -> int:
        return len(self._roots)

    def __repr__(self) -> str:
        return f"AllowedRoots({[str(r) for r in self._roots]!r})"

    def __contains__(self, path) -> bool:
        try:
            self.confine(path)
        except PathNotAllowedError:
            return False
        return True

    def describe(self) -> str:
        return ", ".join(str(r) for r in self._roots) or "none"

    def confine(self, path) -> Path:
        """``path`` resolved, if it lies inside an allowed root; else :class:`PathNotAllowedError`."""
        resolved = _resolve(path)
        for root in self._roots:
            if resolved == root or resolved.is_relative_to(root):
                return resolved
        raise PathNotAllowedError(
            f"{_text(path)}: this app may only open files inside {self.describe()}. To allow another folder, "
            f"start the app with `xaiscope serve --allow-root DIR` (repeatable) or set the environment variable "
            f"{ENV_VAR} to the folders, separated by {os.pathsep!r}."
        )


def confine(path, roots: AllowedRoots | Iterable[str | os.PathLike]) -> Path:
    """``path`` resolved (symlinks followed) if it lies inside one of ``roots``; else
    :class:`~xaiscope.core.errors.PathNotAllowedError` naming the allowed roots and how to add one."""
    allowed = roots if isinstance(roots, AllowedRoots) else AllowedRoots(roots)
    return allowed.confine(path)
