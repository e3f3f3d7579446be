"""A page closed while the server is busy: Bokeh's keep-alive ping releases the connection first, then tornado's
close of the same socket must not fail (dashboard.session.guard_released_connections).

The sequence is Bokeh's own code (BokehTornado._keep_alive / client_lost, WSHandler.on_close, ServerConnection)
on stand-ins for the socket, the session and the server; the served reproduction is benchmarks/close_mid_build.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest


class _ClosedSocket:
    """The browser closed it; tornado has not processed the close yet (its event loop was busy)."""

    close_code, close_reason = 1001, None

    def ping(self, data):
        from tornado.websocket import WebSocketClosedError

        raise WebSocketClosedError()


class _Session:
    def __init__(self):
        self.subscribers, self.lost = set(), 0

    def subscribe(self, connection):
        self.subscribers.add(connection)

    def unsubscribe(self, connection):
        self.subscribers.discard(connection)

    def notify_connection_lost(self):
        self.lost += 1


def _released_by_keep_alive():
    """A websocket handler whose connection Bokeh's keep-alive released after a failed ping."""
    from bokeh.server.connection import ServerConnection
    from bokeh.server.tornado import BokehTornado
    from bokeh.server.views.ws import WSHandler

    session = _Session()
    conn = ServerConnection(protocol=None, socket=_ClosedSocket(), application_context=None, session=session)
    server = SimpleNamespace(_clients={conn})
    server.client_lost = lambda c: BokehTornado.client_lost(server, c)
    BokehTornado._keep_alive(server)  # the ping fails: the connection is released
    assert not server._clients and conn._session is None and not session.subscribers
    handler = WSHandler.__new__(WSHandler)  # what tornado holds for the socket
    handler.connection, handler.application = conn, server
    handler.close_code, handler.close_reason = 1001, None
    return handler, session


@pytest.fixture
def restore_on_close():
    from bokeh.server.views.ws import WSHandler

    original = WSHandler.on_close
    yield
    WSHandler.on_close = original


def test_close_after_keep_alive_release_fails_in_bokeh(restore_on_close):
    from bokeh.server.views.ws import WSHandler

    WSHandler.on_close = getattr(WSHandler.on_close, "__wrapped__", WSHandler.on_close)  # Bokeh's own
    handler, _ = _released_by_keep_alive()
    with pytest.raises(AssertionError):  # what the server log showed, as a tornado traceback
        handler.on_close()


def test_guard_makes_that_close_a_no_op_and_keeps_normal_closes(restore_on_close):
    from bokeh.server.connection import ServerConnection
    from bokeh.server.views.ws import WSHandler

    from xaiscope.dashboard.session import guard_released_connections

    guard_released_connections()
    guard_released_connections()  # idempotent: wrapped once
    assert WSHandler.on_close.__wrapped__.__name__ == "on_close"
    assert not getattr(WSHandler.on_close.__wrapped__, "_xaiscope_guard", False)
    handler, _ = _released_by_keep_alive()
    handler.on_close()  # no AssertionError
    # an ordinary close still tells the session and releases the connection
    session = _Session()
    conn = ServerConnection(protocol=None, socket=_ClosedSocket(), application_context=None, session=session)
    released = []
    handler = WSHandler.__new__(WSHandler)
    handler.connection = conn
    handler.application = SimpleNamespace(client_lost=lambda c: (released.append(c), c.detach_session()))
    handler.close_code, handler.close_reason = 1001, None
    handler.on_close()
    assert session.lost == 1 and released == [conn] and conn._session is None


def test_serve_installs_the_guard(monkeypatch, restore_on_close):
    """``xaiscope serve`` (dashboard.app.serve) installs the guard before the server starts."""
    import panel as pn
    from bokeh.server.views.ws import WSHandler

    from xaiscope.dashboard import app

    WSHandler.on_close = getattr(WSHandler.on_close, "__wrapped__", WSHandler.on_close)
    monkeypatch.setattr(pn, "serve", lambda *a, **k: "served")
    assert app.serve(port=1, show=False) == "served"
    assert getattr(WSHandler.on_close, "_xaiscope_guard", False)
