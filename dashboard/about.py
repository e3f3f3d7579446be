"""The "About this server" section of the sidebar: engine settings, device, models held, cache use, notes.

:func:`about_markdown` is plain Python (tested without a server); :func:`about_card` wraps it in a collapsible
Panel card that refreshes when opened or on its button.
"""

from __future__ import annotations

import math

from xaiscope.core.engine import Engine, get_engine


def _versions() -> dict[str, str]:
    out = {}
    for name in ("panel", "bokeh", "holoviews"):
        try:
            module = __import__(name)
            out[name] = str(getattr(module, "__version__", "?"))
        except ImportError:
            continue
    return out


def about_markdown(engine: Engine | None = None, roots: str | None = None) -> str:
    """Markdown of :meth:`Engine.about` (plus panel/bokeh versions and the allowed data roots)."""
    info = (engine or get_engine()).about()
    s, cache, batching = info["settings"], info["cache"], info["batching"]
    rate = cache["hit_rate"]
    lines = [
        "**Engine**",
        f"- device in use: `{info['device']}` (asked: `{s['device'] or 'auto'}`), torch threads: "
        f"{info['torch_threads']}",
        f"- batching: at most {s['max_batch']} requests per forward, wait ≤ {s['max_wait_ms']:g} ms; "
        f"{batching['requests']} requests in {batching['batches']} batches (largest {batching['largest_batch']})",
        f"- result cache: {cache['used_mb']:.1f} of {cache['max_mb']:.0f} MB, {cache['entries']} entries, "
        f"hit rate {'–' if math.isnan(rate) else f'{100 * rate:.0f} %'} ({cache['hits']} hits, "
        f"{cache['misses']} misses, {cache['evictions']} evicted)",
        f"- TF32 on CUDA: {'allowed for the simulated discharge only' if s['tf32'] else 'off'}; "
        "cell states always exact float32",
        "",
        f"**Models held** ({len(info['models'])} cop{'y' if len(info['models']) == 1 else 'ies'}, "
        f"{info['checkpoints']} checkpoint(s))",
    ]
    for m in info["models"]:
        lines.append(f"- `{m['sha256'][:12]}…` {m['kind']} on `{m['device']}`, {m['mb']:.2f} MB"
                     + (f", batch limit {m['batch_limit']}" if m["batch_limit"] else ""))
    if not info["models"]:
        lines.append("- none yet")
    if info["notes"]:
        lines += ["", "**Notes**"] + [f"- {n}" for n in info["notes"][-10:]]
    if roots:
        lines += ["", f"**Allowed data roots**: {roots}"]
    versions = {**info["versions"], **_versions()}
    lines += ["", "**Versions**: " + ", ".join(f"{k} {v}" for k, v in versions.items())]
    return "\n".join(lines)


def about_card(roots: str | None = None):
    """A collapsed sidebar card "About this server" (refreshed when opened and by its button)."""
    import panel as pn

    text = pn.pane.Markdown("", sizing_mode="stretch_width", styles={"font-size": "0.85em"})
    refresh = pn.widgets.Button(name="Refresh", button_type="light", width=90)
    card = pn.Card(text, refresh, title="About this server", collapsed=True, sizing_mode="stretch_width")

    def update(*_):
        try:
            text.object = about_markdown(roots=roots)
        except Exception as err:  # noqa: BLE001 - the About panel must never break the page
            text.object = f"Cannot read the engine state: {err}"

    refresh.on_click(update)
    card.param.watch(lambda e: update() if not e.new else None, "collapsed")
    return card
