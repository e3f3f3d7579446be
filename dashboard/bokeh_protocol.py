"""Send small arrays inside Bokeh's messages instead of as separate websocket frames (a served app only).

A Bokeh server message is a header, a metadata and a content frame, then two more frames (a JSON reference and the
bytes) for every NumPy array in it. One day of the cell-state scrubber changes ~13 arrays of 365 values (3 KB
each): 29 websocket frames. Measured on the 2-core machine, writing a frame costs the server about a millisecond of
wall time — each write wakes the browser's network process, which then competes for the same cores — so the frames,
not the computation (1–4 ms), were most of the server's time per step (`benchmarks/scrub_latency.py`: "server:
whole step, message included").

:func:`inline_small_buffers` makes the server's serializer put arrays up to ``max_bytes`` into the message's JSON as
base64 (of a stored gzip stream: BokehJS gunzips every inline buffer, and compressing 3 KB at Bokeh's level costs
~0.7 ms) — the encoding BokehJS already reads for standalone and notebook documents — and send larger ones as binary
frames as before. One day of a scrub is then 3 frames. Process-wide and idempotent; the browser needs no change.
"""

from __future__ import annotations

import base64
import gzip

from bokeh.core import serialization as _ser

DEFAULT_MAX_BYTES = 64 * 1024

_installed: dict[str, int] = {}


def inline_small_buffers(max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Encode byte buffers of at most ``max_bytes`` inline (base64) in every Bokeh message of this process."""
    _installed["max_bytes"] = int(max_bytes)
    if getattr(_ser.Serializer._encode_bytes, "__xs_inline__", False):
        return
    original = _ser.Serializer._encode_bytes

    def _encode_bytes(self, obj):
        size = obj.nbytes if isinstance(obj, memoryview) else len(obj)
        if self._deferred and size <= _installed["max_bytes"]:
            raw = obj.tobytes() if isinstance(obj, memoryview) else bytes(obj)
            # BokehJS gunzips every inline buffer; a stored (level 0) gzip costs a CRC, Bokeh's level 2 ~0.7 ms
            data = base64.b64encode(gzip.compress(raw, compresslevel=0, mtime=1)).decode("ascii")
            return _ser.BytesRep(type="bytes", data=data)
        return original(self, obj)

    _encode_bytes.__xs_inline__ = True
    _encode_bytes.__wrapped__ = original
    _ser.Serializer._encode_bytes = _encode_bytes


def inline_limit() -> int | None:
    """The inline limit in bytes when :func:`inline_small_buffers` is installed, else ``None``."""
    return _installed.get("max_bytes")


def remove_inline_small_buffers() -> None:
    """Undo :func:`inline_small_buffers` (tests)."""
    current = _ser.Serializer._encode_bytes
    if getattr(current, "__xs_inline__", False):
        _ser.Serializer._encode_bytes = current.__wrapped__
    _installed.clear()
