"""Running background results back into a browser session's document.

Views do long work off the event loop (``asyncio.to_thread``) and then must change Bokeh models with the document's
lock held: :func:`run_in_doc` schedules ``fn(*args)`` as a next-tick callback of the session's document and awaits
it. A session can end (tab closed) while the work runs; Bokeh then tears its document down, and
:func:`run_in_doc` raises :class:`SessionClosed` instead of failing inside Bokeh.
"""

from __future__ import annotations

import asyncio

from panel.io.state import set_curdoc


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
