"""Running background results back into a browser session's document.

Views do long work off the event loop (``asyncio.to_thread``) and then must change Bokeh models with the document's
lock held: :func:`run_in_doc` schedules ``fn(*args)`` as a next-tick callback of the session's document and awaits
it. A session can end (tab closed) while the work runs; Bokeh then tears its document down, and
:func:`run_in_doc` raises :class:`SessionClosed` instead of failing inside Bokeh.

:func:`guard_released_connections` (installed by ``xaiscope serve``) stops a Bokeh server race from filling the log
with ``AssertionError`` tracebacks when pages close while the server is busy (see there).
"""

from __future__ import annotations

import asyncio
import logging

from panel.io.state import set_curdoc

log = logging.getLogger("xaiscope.dashboard")


class SessionClosed(Exception):
    """The browser session ended while background work for it was running."""


def doc_closed(doc) -> bool:
    """Whether the browser session of ``doc`` has ended (Bokeh then removes its document's callback manager)."""
    return not hasattr(doc.callbacks, "_change_callbacks")


async def run_in_doc(doc, fn, *args, timeout: float = 24 * 3600):
    """Run ``fn(*args)`` on the event loop with ``doc``'s lock (so that it may change Bokeh models) and wait for
    its result (exceptions propagate). Raises :class:`SessionClosed` when the session has ended."""
    if doc_closed(doc):
        raise SessionClosed()
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def call():
        try:
            with set_curdoc(doc):
                result = fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed to the awaiting coroutine
            if not fut.done():
                fut.set_exception(err)
        else:
            if not fut.done():
                fut.set_result(result)

    doc.add_next_tick_callback(call)
    return await asyncio.wait_for(fut, timeout=timeout)


def guard_released_connections() -> None:
    """Make Bokeh's websocket ``on_close`` a no-op for a connection the server has already released.

    Bokeh's server pings every websocket client periodically (``keep_alive_milliseconds``, 37 s by default). When a
    ping finds a socket already closed by the browser before tornado has processed that close, which happens when
    the event loop was busy (e.g. building other sessions while pages are closed), ``BokehTornado._keep_alive``
    releases the connection (``client_lost`` detaches its session; bokeh/bokeh#13654, #13655). When tornado then
    processes the close, ``WSHandler.on_close`` asks the released connection for its session, and
    ``ServerConnection.session`` fails with a bare ``AssertionError``, logged by tornado as an uncaught exception
    with a traceback. Nothing is lost (the session was already let go); this guard only skips that second clean-up.
    Idempotent; affects every Bokeh server in the process (Panel's handler inherits Bokeh's ``on_close``).
    """
    from bokeh.server.views import ws

    if getattr(ws.WSHandler.on_close, "_xaiscope_guard", False):
        return
    original = ws.WSHandler.on_close

    def on_close(self) -> None:
        connection = getattr(self, "connection", None)
        if connection is not None and getattr(connection, "_session", True) is None:
            log.info("WebSocket connection closed after the server had released it (failed keep-alive ping): "
                     "code=%s", getattr(self, "close_code", None))
            return None
        return original(self)

    on_close._xaiscope_guard = True
    on_close.__wrapped__ = original
    ws.WSHandler.on_close = on_close
