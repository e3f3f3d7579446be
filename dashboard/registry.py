"""The view registry: the app's sidebar lists every registered view; adding a view is one line.

    from xaiscope.dashboard.registry import register_view
    register_view("enso", "ENSO forecasts", EnsoExplorer)

A view class is a ``pn.viewable.Viewer`` whose constructor accepts ``state=AppState`` (plus its own parameters).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ViewSpec:
    key: str  # short name used in the URL (?view=cells)
    title: str  # shown in the sidebar
    factory: Callable  # factory(state=AppState) -> Viewer
    description: str = ""


VIEWS: dict[str, ViewSpec] = {}


def register_view(key: str, title: str, factory: Callable, description: str = "") -> ViewSpec:
    """Add a view to the app (keys are unique; registering the same key again replaces it)."""
    spec = ViewSpec(key, title, factory, description)
    VIEWS[key] = spec
    return spec
