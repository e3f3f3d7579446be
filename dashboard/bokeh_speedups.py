"""Make repainting Bokeh figures cheap in the browser (the cost behind a live date scrubber).

Profiling the cell-state view in Chromium (``benchmarks/scrub_latency.py``; traced with the DevTools protocol)
showed that most of the time from a slider move to the new picture went to the browser recomputing styles, not to
drawing: at every paint BokehJS (3.x)

1. rewrites the position stylesheet of every renderer's DOM element (``InlineStyleSheet._update`` sets
   ``<style>.textContent`` even when the text is unchanged, and positions computed from datetime ranges differ in
   the twelfth decimal between paints), which Chromium treats as a changed style rule; and
2. then asks ``getComputedStyle`` for CSS-variable overrides of every line/fill/text property of every scalar
   visual (axes, grids, titles, spans, legends) and for the plot's base font size — each call after (1) forces a
   full style recalculation, and with Panel's design stylesheets adopted in every shadow root a recalculation costs
   milliseconds. About 30 forced recalculations per update on six linked figures.

:class:`BokehSpeedups` is an invisible component whose render script patches BokehJS once per page:

- (1) rounds pixel lengths in those stylesheets to 1/100 px and skips rewriting a stylesheet whose text is
  unchanged (no visible change: these elements are empty, positioned boxes);
- (2) memoises, per DOM element, the CSS-variable lookups of visuals and the base font size. xaiscope styles its
  figures through Bokeh properties, never through ``--bk-*`` CSS variables, so the memo never hides a change;
  ``window.xsResetBokehCssCache()`` clears it (presentation mode calls it when fonts grow).

Each patch checks that the BokehJS internals it replaces exist and leaves BokehJS untouched otherwise, so a newer
Bokeh degrades to its own (slower) behaviour instead of breaking. Works the same under ``panel serve`` and in a
notebook; nothing is fetched from anywhere.
"""

from __future__ import annotations

import panel as pn

PATCH_JS = r"""
(function () {
  const B = window.Bokeh;
  if (!B || typeof B.require !== "function" || window.__xsBokehSpeedups) return;
  window.__xsBokehSpeedups = [];
  const done = window.__xsBokehSpeedups;
  let memo = new WeakMap();
  window.xsResetBokehCssCache = function () { memo = new WeakMap(); };
  const memoFor = (el) => { let m = memo.get(el); if (m === undefined) { m = new Map(); memo.set(el, m); } return m; };
  try {
    const S = B.require("core/dom").InlineStyleSheet;
    const orig = S && S.prototype && S.prototype._update;
    if (typeof orig === "function") {
      // positions are computed from data ranges in float64 and jitter by ~1e-12 px between paints: round to
      // 1/100 px so that an unmoved element keeps the same text
      const round = (css) => css.replace(/(-?\d+\.\d{3,})px/g, (_, n) => Number(n).toFixed(2) + "px");
      S.prototype._update = function (css) {
        if (typeof css === "string" && css.indexOf("px") >= 0) css = round(css);
        if (this.el == null || this.el.textContent !== css) orig.call(this, css);
      };
      done.push("stylesheets");
    }
  } catch (e) { console.debug("xaiscope: stylesheet patch skipped", e); }
  try {
    const V = B.require("core/visuals/visual").VisualProperties;
    const orig = V && V.prototype && V.prototype._get_css_value;
    if (typeof orig === "function") {
      V.prototype._get_css_value = function (name) {
        const el = this.obj && this.obj.el;
        if (el == null) return orig.call(this, name);
        const m = memoFor(el), key = (this.css_prefix || "") + name;
        let v = m.get(key);
        if (v === undefined) { v = orig.call(this, name); m.set(key, v); }
        return v;
      };
      done.push("css-values");
    }
  } catch (e) { console.debug("xaiscope: css value patch skipped", e); }
  try {
    const PV = B.require("models/plots/plot_canvas").PlotView;
    const desc = PV && Object.getOwnPropertyDescriptor(PV.prototype, "base_font_size");
    if (desc && typeof desc.get === "function") {
      const get = desc.get;
      Object.defineProperty(PV.prototype, "base_font_size", {
        configurable: true, enumerable: desc.enumerable, set: desc.set,
        get() {
          if (this.el == null) return get.call(this);
          const m = memoFor(this.el);
          if (!m.has("\u0000font")) m.set("\u0000font", get.call(this));
          return m.get("\u0000font");
        },
      });
      done.push("font-size");
    }
  } catch (e) { console.debug("xaiscope: font size patch skipped", e); }
})();
"""


class BokehSpeedups(pn.reactive.ReactiveHTML):
    """Invisible; put one anywhere in a layout that holds frequently updated Bokeh figures."""

    _template = '<div id="xs_speedups" style="display:none"></div>'
    _scripts = {"render": PATCH_JS}

    def __init__(self, **params):
        params.setdefault("width", 0)
        params.setdefault("height", 0)
        params.setdefault("margin", 0)
        params.setdefault("sizing_mode", "fixed")
        super().__init__(**params)
