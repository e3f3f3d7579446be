"""The xaiscope web app: a template with a sidebar (view, checkpoint, basin data) over the registered views.

Run it with ``xaiscope serve`` (which calls :func:`serve`), or ``panel serve`` on this file::

    panel serve dashboard/app.py --args --checkpoint PATH --data demo

Everything (JavaScript, CSS, fonts) is served by the app itself; nothing is fetched from the internet.
The URL keeps the view, checkpoint, basin, day, mode, layer, internal, selected cells and presentation mode,
so a copied link reopens the same picture.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

import panel as pn
import param

from xaiscope.dashboard.about import about_card
from xaiscope.dashboard.cellstate import CellStateExplorer
from xaiscope.dashboard.registry import VIEWS, register_view
from xaiscope.dashboard.state import AppState

log = logging.getLogger("xaiscope.dashboard")

# --- the views: one line each --------------------------------------------------------------------------
register_view("cells", "LSTM cell states (rainfall-runoff)", CellStateExplorer,
              "What the hydrology LSTM stores in its cells: snow, soil water, seasonality.")
import xaiscope.dashboard.enso  # noqa: E402,F401 - registers the ENSO view
import xaiscope.dashboard.tracin  # noqa: E402,F401 - registers the TracIn view
import xaiscope.dashboard.lrp  # noqa: E402,F401 - registers the LRP-vs-adjoint view

URL_KEYS = {"mode": "mode", "link_date": "date", "layer": "layer", "gate": "internal", "cells": "cells"}

# Plain CSS for the page (no web fonts: the system font stack only).
APP_CSS = """
:root { --xs-font: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
body, .bk-root { font-family: var(--xs-font); }
body.xs-present #sidebar, body.xs-present .sidenav, body.xs-present #sidebar-button { display: none !important; }
body.xs-present #main { margin-left: 0 !important; }
html.xs-present { font-size: 125%; }  /* rem-sized text (buttons, bootstrap) grows with it */
body.xs-present { font-size: 130%; --bokeh-font-size: 18px; }
body.xs-present .bk-panel-models-markup-HTML { font-size: 1.3em; }
"""

PRESENT_JS = """
document.body.classList.toggle('xs-present', cb_obj.value);
document.documentElement.classList.toggle('xs-present', cb_obj.value);
if (window.xsResetBokehCssCache) { window.xsResetBokehCssCache(); }
"""


class PresentationClass(pn.reactive.ReactiveHTML):
    """Invisible: keeps the page's ``xs-present`` class (the presentation-mode CSS) in step with ``present``,
    from the first render on (a page opened with ``?present=true`` starts large)."""

    present = param.Boolean(default=False)

    _template = '<div id="xs_present" style="display:none"></div>'
    _js = ("document.body.classList.toggle('xs-present', data.present);"
           "document.documentElement.classList.toggle('xs-present', data.present);"
           "if (window.xsResetBokehCssCache) { window.xsResetBokehCssCache(); }")
    _scripts = {"render": _js, "present": _js}

    def __init__(self, **params):
        params.update(width=0, height=0, margin=0, sizing_mode="fixed")
        super().__init__(**params)


class AppShell(param.Parameterized):
    """What the sidebar sets besides the state: the view and presentation mode (kept in the URL)."""

    view = param.Selector(default="cells", objects=list(VIEWS) or ["cells"])
    presentation = param.Boolean(default=False)


def _configure_extension() -> None:
    # The bootstrap design bundles everything it needs (the Fast and Material designs pull Google Fonts).
    pn.extension("tabulator", sizing_mode="stretch_width", notifications=True, design="bootstrap",
                 throttled=False, global_css=[APP_CSS])


def create_app(checkpoints: Sequence | None = None, data: Sequence | None = None, device: str | None = None,
               state: AppState | None = None, allowed_roots: Sequence | None = None) -> pn.template.BaseTemplate:
    """Build one app page (one per browser session). Arguments as in :func:`serve`."""
    _configure_extension()
    state = state or AppState(checkpoints=checkpoints, data=data, device=device, allowed_roots=allowed_roots)
    shell = AppShell(view=next(iter(VIEWS)))
    shell.param.view.objects = list(VIEWS)
    args = pn.state.session_args or {}
    present0 = args.get("present", [b""])[0] in (b"true", b"1", b"True")

    views: dict[str, object] = {}

    def get_view(key: str):
        if key not in views:
            spec = VIEWS[key]
            try:
                views[key] = spec.factory(state=state)
            except Exception as err:  # noqa: BLE001 - show, log, keep running
                log.error("cannot create view %s", key, exc_info=True)
                return pn.pane.Alert(f"Cannot open the view {spec.title!r}: {err}", alert_type="danger")
            v = views[key]
            if pn.state.location is not None and isinstance(v, CellStateExplorer):
                pn.state.location.sync(v, URL_KEYS)
            if isinstance(v, CellStateExplorer):
                v.presentation = shell.presentation
        return views[key]

    main = pn.Column(sizing_mode="stretch_width")

    def show_view(*_):
        main.objects = [get_view(shell.view)]
        # the checkpoint / basin pickers drive the shared state: shown only for views that use them
        uses = bool(getattr(VIEWS[shell.view].factory, "uses_sidebar_pickers", True))
        for w in pickers:
            w.visible = uses

    view_w = pn.widgets.RadioBoxGroup(name="View", options={s.title: k for k, s in VIEWS.items()},
                                      value=shell.view)
    view_w.link(shell, value="view", bidirectional=True)
    ckpt_w = pn.widgets.Select.from_param(state.param.checkpoint, name="Checkpoint")
    data_w = pn.widgets.Select.from_param(state.param.dataset, name="Basin data")
    path_w = pn.widgets.TextInput(name="Open another checkpoint (path on the server)",
                                  placeholder="/path/to/checkpoint folder or file")
    open_btn = pn.widgets.Button(name="Open checkpoint", button_type="primary")
    present_w = pn.widgets.Toggle(name="Presentation mode", value=present0, button_type="light", width=170,
                                  margin=(5, 10))
    present_w.jscallback(value=PRESENT_JS)
    present_w.link(shell, value="presentation", bidirectional=True)
    present_css = PresentationClass(present=present0)
    shell.param.watch(lambda e: setattr(present_css, "present", e.new), "presentation")
    state_error = pn.pane.Alert("", alert_type="danger", visible=False)
    busy = pn.indicators.LoadingSpinner(value=False, size=24, name="", visible=False)
    # a plain rule, not pn.layout.Divider: Divider builds its model without Panel's stylesheet rewriting, so under
    # concurrent sessions its class stylesheet could stay a cdn.holoviz.org link (the load test saw it)
    pickers_md = pn.pane.Markdown("#### Model and data")
    pickers_div = pn.pane.HTML('<hr style="border:none;border-top:1px solid #d0d4da;margin:6px 0">',
                               sizing_mode="stretch_width")

    def on_open(_):
        path = (path_w.value or "").strip()
        if not path:
            state_error.param.update(object="Type the path of a checkpoint folder or file first.", visible=True)
            return
        state_error.visible = False
        if state.add_checkpoint(path) is None:  # outside the allowed folders, or not a loadable checkpoint
            state_error.param.update(object=state.error, visible=True)

    open_btn.on_click(on_open)

    def on_presentation(event):
        for v in views.values():
            if isinstance(v, CellStateExplorer):
                v.presentation = event.new

    def on_loading(event):
        busy.param.update(value=event.new, visible=event.new)

    pickers = [pickers_md, ckpt_w, data_w, pickers_div, path_w, open_btn]
    shell.param.watch(on_presentation, "presentation")
    shell.param.watch(show_view, "view")
    state.param.watch(on_loading, "loading")

    if pn.state.location is not None:
        pn.state.location.sync(shell, {"view": "view", "presentation": "present"})
        pn.state.location.sync(state, {"checkpoint": "checkpoint", "dataset": "basin"})
    show_view()

    sidebar = [
        pn.pane.Markdown("#### View"), view_w,
        pickers_md, ckpt_w, data_w, busy, state_error,
        pickers_div, path_w, open_btn,
        pn.pane.Markdown(
            "<small>Everything runs on this machine; the page fetches nothing from the internet. "
            "The address bar keeps the view, basin, day and selected cells: copy it to share the picture.</small>"),
        about_card(roots=state.allowed_roots.describe()),
    ]
    template = pn.template.BootstrapTemplate(
        title="xaiscope — inside geoscience neural networks",
        sidebar=sidebar, main=[main, present_css], collapsed_sidebar=present0, header=[present_w],
        header_background="#1a365d", sidebar_width=300, main_max_width="1600px",
        # no global busy spinner: it toggles CSS classes on every server round trip (every scrub step), which
        # makes the browser lay out the whole page again; long work shows its own progress instead
        busy_indicator=None,
    )
    if present0:
        shell.presentation = True
    return template


def serve_resources_locally() -> None:
    """Make every Panel resource URL point at this server, whatever another session is doing.

    Panel decides between its CDN and the server's ``/static`` through a process-wide setting that rendering a
    page for a notebook switches to "cdn" for a moment (``panel.io.resources.set_resource_mode``). With many
    sessions at once, a model built during such a moment got a stylesheet link to cdn.holoviz.org (seen in the load
    test). A served app never wants the CDN, so ``use_cdn`` answers False in this process (where Panel looks it up
    at call time, and in the template module, which imported it by name).
    """
    import panel.io.resources as resources
    import panel.reactive as reactive
    import panel.template.base as template_base

    def use_cdn() -> bool:
        return False

    resources.use_cdn = use_cdn
    template_base.use_cdn = use_cdn

    # Component stylesheets are rewritten to the document's `dist_url` template variable, and to the CDN when the
    # document has none yet — which is the case while a session's page is being built, before Panel renders its HTML
    # (`panel.io.server.server_html_page_for_session`). With 20 sessions opening at once the load test still saw
    # ~6 stylesheet links per page to cdn.holoviz.org from that window. Here the CDN is never the answer.
    original = getattr(resources.patch_stylesheet, "__wrapped__", resources.patch_stylesheet)

    def local_dist() -> str:
        from panel.io.state import state

        return f"{state.rel_path}/{resources.LOCAL_DIST}" if state.rel_path else resources.LOCAL_DIST

    def patch_stylesheet(stylesheet, dist_url):
        return original(stylesheet, local_dist() if dist_url == resources.CDN_DIST else dist_url)

    patch_stylesheet.__wrapped__ = original
    resources.patch_stylesheet = patch_stylesheet
    reactive.patch_stylesheet = patch_stylesheet


def set_torch_threads(n: int | None) -> None:
    """Cap torch's intra-op threads (``None``: leave torch's default)."""
    if n:
        import torch

        torch.set_num_threads(int(n))


def _origins(address: str, port: int) -> list[str]:
    if address in ("0.0.0.0", "::", ""):
        return ["*"]
    return [f"{address}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"]


def serve(port: int = 5006, address: str = "127.0.0.1", checkpoints: Sequence[str | Path] = (),
          data: Sequence[str | Path] = (), device: str | None = None, show: bool = False, threaded: bool = False,
          torch_threads: int | None = 1, allowed_roots: Sequence[str | Path] = (), **kwargs):
    """Serve the app (blocking unless ``threaded``).

    A path typed into the page must lie in an allowed root: the defaults of
    :meth:`xaiscope.core.paths.AllowedRoots.for_app` (assets, working directory, cache folder, the folders of
    ``checkpoints`` and ``data``, ``$XAISCOPE_ALLOWED_ROOTS``) plus ``allowed_roots`` (``--allow-root``).

    ``checkpoints`` are offered before the demo checkpoints; ``data`` specs before the demo and synthetic basins
    (see :func:`xaiscope.dashboard.sources.parse_data_spec`). Returns the server (threaded) or blocks.
    ``torch_threads`` (default 1) caps torch's intra-op threads in the server process: the work per request is
    small and a second thread only fights the server's event loop for the CPU (``None`` keeps torch's default).
    """
    set_torch_threads(torch_threads)
    serve_resources_locally()
    from xaiscope.dashboard.session import guard_released_connections

    guard_released_connections()  # pages closed while the server is busy: no AssertionError tracebacks
    if not logging.getLogger().handlers and not log.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from xaiscope.dashboard.sources import default_checkpoints

    ck = [str(Path(c).expanduser()) for c in checkpoints]
    ck += [p for p in default_checkpoints().values() if p not in ck]
    data = list(data)
    from xaiscope.core.paths import AllowedRoots

    roots = AllowedRoots.for_app(paths=[*ck, *data], extra=allowed_roots)  # resolved once, at start-up
    log.info("paths typed into the app may lie in: %s", roots.describe())

    def page():
        return create_app(checkpoints=ck, data=data, device=device, allowed_roots=roots)

    log.info("xaiscope app on http://%s:%d/", address, port)
    kwargs.setdefault("liveness", True)  # GET /liveness answers at once (GET / builds a whole page)
    return pn.serve(page, port=port, address=address, show=show, title="xaiscope", threaded=threaded,
                    websocket_origin=_origins(address, port), **kwargs)


def _argv_options(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="panel serve dashboard/app.py --args")
    p.add_argument("--checkpoint", action="append", default=[])
    p.add_argument("--data", action="append", default=[])
    p.add_argument("--device", default=None)
    p.add_argument("--allow-root", action="append", default=[])
    return p.parse_known_args(list(argv))[0]


if pn.state.served:  # `panel serve dashboard/app.py [--args ...]`
    serve_resources_locally()
    _opts = _argv_options(sys.argv[1:])
    set_torch_threads(1)
    from xaiscope.dashboard.sources import default_checkpoints as _defaults

    _ck = list(_opts.checkpoint) + [p for p in _defaults().values() if p not in _opts.checkpoint]
    create_app(checkpoints=_ck, data=_opts.data, device=_opts.device, allowed_roots=_opts.allow_root).servable()
