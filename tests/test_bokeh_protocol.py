"""Small arrays travel inside Bokeh's messages (dashboard/bokeh_protocol.py); the served pages decode them (the
browser tests of every view run on a server with it installed)."""

from __future__ import annotations

import base64
import gzip
import json

import numpy as np
import pytest

from xaiscope.dashboard import bokeh_protocol


@pytest.fixture
def inline():
    bokeh_protocol.inline_small_buffers(max_bytes=4096)
    yield
    bokeh_protocol.remove_inline_small_buffers()


def _patch_message():
    from bokeh.document import Document
    from bokeh.document.events import ColumnDataChangedEvent
    from bokeh.models import ColumnDataSource
    from bokeh.protocol import Protocol

    doc = Document()
    src = ColumnDataSource({"small": np.zeros(3), "big": np.zeros(3)})
    doc.add_root(src)
    small = np.random.default_rng(0).normal(size=365)
    src.data = {"small": small, "big": np.linspace(0, 1, 365)}
    msg = Protocol().create("PATCH-DOC", [ColumnDataChangedEvent(doc, src, "data")])
    return msg, small


def _arrays(content: dict) -> dict:
    out = {}
    for name, rep in content["events"][0]["data"]["entries"]:
        out[name] = rep["array"]["data"]
    return out


def test_without_the_patch_every_array_is_a_binary_buffer():
    bokeh_protocol.remove_inline_small_buffers()
    msg, _ = _patch_message()
    assert len(msg.buffers) == 2


def test_small_arrays_travel_inline_and_decode_to_the_same_bytes(inline):
    msg, small = _patch_message()
    assert len(msg.buffers) == 0
    data = _arrays(json.loads(msg.content_json))
    # what BokehJS does with an inline buffer: base64, then gunzip
    raw = gzip.decompress(base64.b64decode(data["small"]))
    np.testing.assert_array_equal(np.frombuffer(raw, dtype=np.float64), small)


def test_arrays_above_the_limit_stay_binary_frames(inline):
    bokeh_protocol.inline_small_buffers(max_bytes=1000)  # 365 float64 = 2920 bytes: above
    msg, small = _patch_message()
    assert len(msg.buffers) == 2
    assert bokeh_protocol.inline_limit() == 1000


def test_installing_twice_wraps_once(inline):
    from bokeh.core import serialization

    first = serialization.Serializer._encode_bytes
    bokeh_protocol.inline_small_buffers()
    assert serialization.Serializer._encode_bytes is first
    bokeh_protocol.remove_inline_small_buffers()
    assert not getattr(serialization.Serializer._encode_bytes, "__xs_inline__", False)
