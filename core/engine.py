"""The shared inference engine: one per server process, used by every browser session.

Views never call models themselves; they ask the engine, which

* keeps **one copy of each model** per (checkpoint sha256, device): two sessions that open the same checkpoint
  (even from two paths) get the identical model object (:meth:`Engine.share`);
* runs everything under ``torch.inference_mode`` with the device policy of :mod:`xaiscope.core.device`
  (exact float32 internals; TF32 only where :data:`~xaiscope.core.device.TF32_OPS` allows it);
* **micro-batches** requests of the same shape for the same model from concurrent sessions: the cell-state
  view's 365-day windows are queued for at most ``max_wait_ms`` (only while other requests are in flight) and
  run as one batched forward through the fast exact internals of :mod:`xaiscope.core.states`, at most
  ``max_batch`` at a time;
* survives **out-of-memory** on an accelerator: a failing batch is split in halves down to single items, then
  the work moves to the CPU copy of the model; each fallback leaves a note (:meth:`Engine.about`) the app shows;
* **caches results** on simple keys in one LRU bounded in bytes (NumPy, xarray, pandas and torch sizes are
  counted), computing each key once even when several sessions ask at the same time.

``get_engine()`` returns the process's engine (settings from the environment, see
:meth:`EngineSettings.from_env`); ``configure_engine(settings)`` replaces it (``xaiscope serve`` does, from its
flags); ``Engine(settings)`` builds a private one (tests, benchmarks). No Panel here.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import sys
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

import numpy as np
import pandas as pd
import torch
import xarray as xr

from xaiscope.core.checkpoint import Checkpoint
from xaiscope.core.device import (
    TF32_OPS, choose_device, exact_math, is_out_of_memory, release_memory, tf32_math,
)
from xaiscope.core.errors import XaiscopeError

__all__ = [
    "EngineSettings", "Engine", "ResultCache", "MicroBatcher", "EngineError", "get_engine", "configure_engine",
    "reset_engine", "sizeof", "run_in_batches",
]

ENV_DEVICE = "XAISCOPE_DEVICE"
ENV_CACHE_MB = "XAISCOPE_CACHE_MB"
ENV_THREADS = "XAISCOPE_THREADS"
ENV_MAX_BATCH = "XAISCOPE_MAX_BATCH"
ENV_MAX_WAIT_MS = "XAISCOPE_MAX_WAIT_MS"


class EngineError(XaiscopeError):
    """A bad engine setting, or work that cannot run even after every fallback."""


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class EngineSettings:
    """How the engine runs.

    device: ``None``/``"auto"`` (CUDA, then MPS, else CPU), ``"cpu"``, ``"cuda[:N]"``, ``"mps"``.
    cache_mb: memory bound of the result cache in MB (0 disables caching).
    threads: torch intra-op threads (``None``: leave torch's setting).
    max_batch: most requests run in one batched forward; max_wait_ms: how long a request may wait for others.
    tf32: allow TF32 on CUDA for the operations in :data:`~xaiscope.core.device.TF32_OPS`.
    """

    device: str | None = None
    cache_mb: float = 512.0
    threads: int | None = None
    max_batch: int = 32
    max_wait_ms: float = 3.0
    tf32: bool = True

    def __post_init__(self):
        if self.device is not None and not isinstance(self.device, str):
            object.__setattr__(self, "device", str(self.device))
        checks = (
            ("cache_mb", self.cache_mb, 0, "a size in MB, 0 or more (0 disables the result cache)"),
            ("max_batch", self.max_batch, 1, "a whole number of requests, 1 or more"),
            ("max_wait_ms", self.max_wait_ms, 0, "milliseconds, 0 or more"),
        )
        for name, value, low, what in checks:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value) \
                    or value < low:
                raise EngineError(f"engine setting {name}={value!r} is not valid: give {what}.")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise EngineError(f"engine setting threads={self.threads!r} is not valid: give a whole number, 1 or "
                              "more (or leave it out to keep torch's default).")
        if not isinstance(self.max_batch, int):
            raise EngineError(f"engine setting max_batch={self.max_batch!r} is not valid: give a whole number.")

    @classmethod
    def from_env(cls, environ: dict | None = None, **overrides) -> EngineSettings:
        """Settings from ``$XAISCOPE_DEVICE``, ``$XAISCOPE_CACHE_MB``, ``$XAISCOPE_THREADS``,
        ``$XAISCOPE_MAX_BATCH``, ``$XAISCOPE_MAX_WAIT_MS``; ``overrides`` that are not ``None`` (command-line
        flags) win. A value that is not a number raises :class:`EngineError` naming the variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, var, conv in (("device", ENV_DEVICE, str), ("cache_mb", ENV_CACHE_MB, float),
                                ("threads", ENV_THREADS, int), ("max_batch", ENV_MAX_BATCH, int),
                                ("max_wait_ms", ENV_MAX_WAIT_MS, float)):
            text = str(env.get(var, "")).strip()
            if not text:
                continue
            try:
                values[name] = conv(text)
            except ValueError as err:
                raise EngineError(f"${var}={text!r} is not valid: give a {'whole ' if conv is int else ''}number "
                                  f"(or unset it).") from err
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# ------------------------------------------------------------------------------------------------- sizes
def sizeof(obj: Any, _seen: set | None = None) -> int:
    """Bytes held by ``obj``: array/tensor buffers (NumPy, torch, xarray, pandas) plus containers, roughly."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if torch.is_tensor(obj):
        return int(obj.element_size() * obj.nelement())
    if isinstance(obj, (xr.Dataset, xr.DataArray)):
        variables = obj.variables.values() if isinstance(obj, xr.Dataset) else [obj.variable, *(
            c.variable for c in obj.coords.values())]
        return sum(int(v.nbytes) for v in variables) + 1024
    if isinstance(obj, (pd.DataFrame, pd.Series)):
        return int(np.sum(obj.memory_usage(index=True, deep=True)))
    if isinstance(obj, pd.Index):
        return int(obj.memory_usage(deep=True))
    if isinstance(obj, dict):
        return sys.getsizeof(obj) + sum(sizeof(k, seen) + sizeof(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset, deque)):
        return sys.getsizeof(obj) + sum(sizeof(v, seen) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sys.getsizeof(obj) + sum(sizeof(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    return sys.getsizeof(obj)


# --------------------------------------------------------------------------------------------- the cache
class ResultCache:
    """Thread-safe LRU cache bounded in bytes (:func:`sizeof`), on simple hashable keys.

    ``get_or_compute`` computes a missing key once even when several threads ask at the same time (later callers
    wait for the running computation). A value larger than the whole bound is returned but not kept.
    ``max_bytes=0`` disables keeping anything; ``max_bytes=None`` bounds only the number of entries
    (``max_items``, also usable together with a byte bound).
    """

    def __init__(self, max_bytes: int | None, max_items: int | None = None):
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self.max_items = None if max_items is None else int(max_items)
        self._data: OrderedDict = OrderedDict()  # key -> (value, nbytes)
        self._lock = threading.RLock()
        self._running: dict[Hashable, threading.Lock] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def _lookup(self, key):
        with self._lock:
            item = self._data.get(key)
            if item is not None:
                self._data.move_to_end(key)
                self.hits += 1
                return True, item[0]
        return False, None

    def get(self, key, default=None):
        found, value = self._lookup(key)
        return value if found else default

    def put(self, key, value) -> None:
        nbytes = sizeof(value)
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            if self.max_bytes is not None and nbytes > self.max_bytes:
                return
            self._data[key] = (value, nbytes)
            self.bytes += nbytes
            while self._data and ((self.max_bytes is not None and self.bytes > self.max_bytes)
                                  or (self.max_items is not None and len(self._data) > self.max_items)):
                _, (_, size) = self._data.popitem(last=False)
                self.bytes -= size
                self.evictions += 1

    def get_or_compute(self, key, compute: Callable[[], Any]):
        found, value = self._lookup(key)
        if found:
            return value
        with self._lock:
            key_lock = self._running.setdefault(key, threading.Lock())
        with key_lock:
            found, value = self._lookup(key)  # computed by another caller while this one waited
            if found:
                return value
            try:
                with self._lock:
                    self.misses += 1
                value = compute()
                self.put(key, value)
            finally:
                with self._lock:
                    self._running.pop(key, None)
        return value

    def running(self, key) -> bool:
        with self._lock:
            return key in self._running

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def keys(self) -> list:
        with self._lock:
            return list(self._data)

    def clear(self, prefix: tuple | None = None) -> None:
        """Drop everything, or the keys (tuples) that start with ``prefix``."""
        with self._lock:
            for key in list(self._data):
                if prefix is None or (isinstance(key, tuple) and key[:len(prefix)] == prefix):
                    self.bytes -= self._data.pop(key)[1]

    def stats(self) -> dict:
        with self._lock:
            asked = self.hits + self.misses
            return {"entries": len(self._data), "used_mb": self.bytes / 1e6,
                    "max_mb": float("inf") if self.max_bytes is None else self.max_bytes / 1e6,
                    "hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                    "hit_rate": self.hits / asked if asked else float("nan")}


class NamespacedCache:
    """A view of the current engine's result cache under a key prefix (keys are tuples ``prefix + key``).

    Resolves :func:`get_engine` on every call, so it follows :func:`configure_engine`."""

    def __init__(self, prefix: str, engine: Engine | None = None):
        self.prefix = (prefix,)
        self._engine = engine

    def _cache(self) -> ResultCache:
        return (self._engine or get_engine()).cache

    def _key(self, key) -> tuple:
        return self.prefix + (key if isinstance(key, tuple) else (key,))

    def get_or_compute(self, key, compute: Callable[[], Any]):
        return self._cache().get_or_compute(self._key(key), compute)

    def __contains__(self, key) -> bool:
        return self._key(key) in self._cache()

    def running(self, key) -> bool:
        return self._cache().running(self._key(key))

    def clear(self) -> None:
        self._cache().clear(self.prefix)


# ------------------------------------------------------------------------------------- out-of-memory policy
def run_in_batches(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, batch_size: int, *,
                   device: torch.device | str = "cpu", cpu_fn: Callable[[torch.Tensor], Any] | None = None,
                   notes: list | None = None, what: str = "work") -> tuple[Any, int]:
    """``fn`` over ``x`` (batch first) in batches of at most ``batch_size``; results concatenated on the CPU.

    ``fn(xb)`` returns a tensor/array or a tuple of them, batch first. On an out-of-memory error
    (:func:`~xaiscope.core.device.is_out_of_memory`) the batch size is halved and the failed batch retried, down
    to 1; if a single item still does not fit and ``device`` is not the CPU, the rest runs through ``cpu_fn``.
    Each step down appends a line to ``notes``. Returns ``(result, batch size that worked on device)`` (1 after
    a move to the CPU); a failure on the CPU raises :class:`EngineError`.
    """
    device = torch.device(device)
    size = max(1, int(batch_size))
    parts: list = []
    start, n = 0, x.shape[0]
    on_cpu = device.type == "cpu"
    run, device_size = fn, None
    while start < n:
        xb = x[start:start + size]
        try:
            out = run(xb)
        except Exception as err:  # noqa: BLE001 - only out-of-memory errors are handled
            if not is_out_of_memory(err):
                raise
            release_memory(device)
            if size > 1:
                size = max(1, size // 2)
                if notes is not None:
                    notes.append(f"{what}: out of memory on {device}; retried in batches of {size}.")
                continue
            if on_cpu or cpu_fn is None:
                raise EngineError(
                    f"{what}: out of memory on {'the CPU' if on_cpu else device} even for a single item; close "
                    "other programs, pick a smaller record, or start the app with --device cpu."
                ) from err
            if notes is not None:
                notes.append(f"{what}: out of memory on {device} even for one item; continued on the CPU.")
            device_size = 1
            run, on_cpu, size, device = cpu_fn, True, max(1, int(batch_size)), torch.device("cpu")
            continue
        parts.append(out)
        start += xb.shape[0]
    return _concat(parts), (size if device_size is None else device_size)


def _to_cpu(t):
    return t.detach().to("cpu") if torch.is_tensor(t) else torch.as_tensor(np.asarray(t))


def _concat(parts: list):
    if isinstance(parts[0], tuple):
        return tuple(torch.cat([_to_cpu(p[k]) for p in parts]) for k in range(len(parts[0])))
    return torch.cat([_to_cpu(p) for p in parts])


# ------------------------------------------------------------------------------------------ micro-batching
class MicroBatcher:
    """A queue that runs requests of the same group together.

    ``submit(group, item) -> Future``; one worker thread takes the oldest group's requests (at most
    ``max_batch``) and calls ``run_batch(group, items) -> results`` (one per item, in order). A lone request runs
    at once; while other requests are in flight (the last batch held several, or more are queued) the worker
    waits up to ``max_wait`` seconds for the batch to fill.
    """

    def __init__(self, run_batch: Callable[[Hashable, list], list], max_batch: int = 32, max_wait: float = 0.003,
                 name: str = "xaiscope-engine"):
        self.run_batch = run_batch
        self.max_batch = max(1, int(max_batch))
        self.max_wait = float(max_wait)
        self._cond = threading.Condition()
        self._pending: OrderedDict[Hashable, list] = OrderedDict()
        self._first: dict[Hashable, float] = {}
        self._busy_recent = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._name = name
        self.batches = 0
        self.requests = 0
        self.largest = 0

    def submit(self, group: Hashable, item: Any) -> Future:
        fut: Future = Future()
        with self._cond:
            if self._closed:
                raise EngineError("the engine was shut down; reload the page.")
            if group not in self._pending:
                self._pending[group] = []
                self._first[group] = time.monotonic()
            self._pending[group].append((item, fut))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return fut

    def _take(self) -> tuple[Hashable, list] | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed and not self._pending:
                return None
            group = next(iter(self._pending))
            if self._busy_recent or len(self._pending[group]) > 1:
                deadline = self._first[group] + self.max_wait
                while len(self._pending[group]) < self.max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            queue = self._pending[group]
            batch, rest = queue[:self.max_batch], queue[self.max_batch:]
            if rest:
                self._pending[group] = rest
                self._pending.move_to_end(group)
                self._first[group] = time.monotonic()
            else:
                del self._pending[group]
                del self._first[group]
            self._busy_recent = len(batch) > 1 or bool(self._pending)
            self.batches += 1
            self.requests += len(batch)
            self.largest = max(self.largest, len(batch))
            return group, batch

    def _loop(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            group, batch = taken
            live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                results = self.run_batch(group, [item for item, _ in live])
            except BaseException as err:  # noqa: BLE001 - every waiter gets the error
                for _, fut in live:
                    fut.set_exception(err)
                continue
            for (_, fut), res in zip(live, results):
                fut.set_result(res)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stats(self) -> dict:
        with self._cond:
            return {"batches": self.batches, "requests": self.requests, "largest_batch": self.largest,
                    "mean_batch": self.requests / self.batches if self.batches else float("nan"),
                    "max_batch": self.max_batch, "max_wait_ms": self.max_wait * 1e3}


# -------------------------------------------------------------------------------------------------- engine
@dataclass
class ModelEntry:
    """One model copy held by the engine."""

    sha256: str
    device: torch.device
    model: torch.nn.Module
    checkpoint: Checkpoint
    batch_limit: int | None = None  # lowered after an out-of-memory error
    tf32_ok: bool | None = None  # None: not checked yet

    @property
    def nbytes(self) -> int:
        return sum(p.element_size() * p.nelement() for p in self.model.parameters()) + sum(
            b.element_size() * b.nelement() for b in self.model.buffers())


class Engine:
    """Shared models, batched inference and a byte-bounded result cache (see the module docstring)."""

    def __init__(self, settings: EngineSettings | None = None):
        self.settings = settings or EngineSettings()
        if self.settings.threads:
            torch.set_num_threads(int(self.settings.threads))
        self.cache = ResultCache(int(self.settings.cache_mb * 1e6))
        self.batcher = MicroBatcher(self._run_batch, self.settings.max_batch, self.settings.max_wait_ms / 1e3)
        self._lock = threading.RLock()
        self._checkpoints: dict[str, Checkpoint] = {}  # model key -> the first checkpoint (its model is shared)
        self._by_path: dict[tuple, Checkpoint] = {}  # (path, mtime) -> loaded checkpoint
        self._models: dict[tuple[str, str], ModelEntry] = {}
        self._device_locks: dict[str, threading.Lock] = {}
        self._notes: deque[str] = deque(maxlen=50)
        self.default_device = choose_device(self.settings.device)

    # ----------------------------------------------------------------------------------- devices, notes
    def device(self, preference=None) -> torch.device:
        """``preference`` (as :func:`~xaiscope.core.device.choose_device`), or the engine's device."""
        if preference is None or (isinstance(preference, str) and preference.strip().lower() in ("", "none")):
            return self.default_device
        return preference if isinstance(preference, torch.device) else choose_device(preference)

    def note(self, text: str) -> None:
        """Record a line the app shows in its About panel (e.g. an out-of-memory fallback)."""
        stamp = time.strftime("%H:%M:%S")
        with self._lock:
            self._notes.append(f"{stamp} {text}")

    @property
    def notes(self) -> list[str]:
        with self._lock:
            return list(self._notes)

    def _device_lock(self, device: torch.device) -> threading.Lock | None:
        """Accelerator work is serialised per device (the TF32 switches are process-wide)."""
        if device.type == "cpu":
            return None
        with self._lock:
            return self._device_locks.setdefault(str(device), threading.Lock())

    # -------------------------------------------------------------------------------------------- models
    @staticmethod
    def model_key(ckpt: Checkpoint) -> str | None:
        """What identifies a model copy: the weights' sha256 and the model kind and configuration."""
        if not ckpt.sha256:
            return None
        import hashlib
        import json

        spec = json.dumps([ckpt.manifest.get("kind"), ckpt.manifest.get("config")], sort_keys=True, default=str)
        return f"{ckpt.sha256}:{hashlib.sha256(spec.encode()).hexdigest()[:12]}"

    def share(self, ckpt: Checkpoint) -> Checkpoint:
        """``ckpt`` holding the process's one model object for its weights (sha256) and configuration.

        The first checkpoint opened with these weights keeps its model; any later one (another session, another
        path with the same weights) gets that model object instead of its own copy, which is then freed. The
        :class:`Checkpoint` itself (path, manifest, files) stays the caller's. Returns ``ckpt``.
        """
        key = self.model_key(ckpt)
        if key is None:
            return ckpt
        with self._lock:
            canonical = self._checkpoints.setdefault(key, ckpt)
            if canonical is ckpt:
                ckpt.model.eval()
            elif ckpt.model is not canonical.model:
                ckpt.model = canonical.model
        return ckpt

    def open_checkpoint(self, path) -> Checkpoint:
        """Load a checkpoint (cached by path and modification time) holding the shared model."""
        from pathlib import Path

        from xaiscope.core.checkpoint import load_checkpoint

        p = Path(path).expanduser().resolve()
        key = ("checkpoint", str(p), p.stat().st_mtime if p.exists() else 0.0)
        return self.share(self.cache_checkpoint(key, lambda: load_checkpoint(p)))

    def cache_checkpoint(self, key, load: Callable[[], Checkpoint]) -> Checkpoint:
        with self._lock:
            if key in self._by_path:
                return self._by_path[key]
        ckpt = load()
        with self._lock:
            return self._by_path.setdefault(key, ckpt)

    def entry(self, ckpt: Checkpoint, device=None) -> ModelEntry:
        """The engine's copy of ``ckpt``'s model on ``device`` (one per sha256 and device)."""
        ckpt = self.share(ckpt)
        dev = self.device(device)
        key = (self.model_key(ckpt) or f"id:{id(ckpt)}", str(dev))
        with self._lock:
            found = self._models.get(key)
            if found is not None:
                return found
            if dev.type == "cpu":
                model = ckpt.model
                if next(model.parameters(), torch.empty(0)).device.type != "cpu":
                    model.to("cpu")
            else:
                model = copy.deepcopy(ckpt.model).to(dev)
            model.eval()
            entry = ModelEntry(sha256=ckpt.sha256, device=dev, model=model, checkpoint=ckpt)
            self._models[key] = entry
            return entry

    def model(self, ckpt: Checkpoint, device=None) -> torch.nn.Module:
        return self.entry(ckpt, device).model

    def forward(self, ckpt: Checkpoint, x, fn: Callable | None = None, device=None, what: str = "model",
                tf32: str | None = None) -> Any:
        """``fn(model, xb)`` (default ``model(xb)``) over the batch ``x`` on the engine's model copy, in
        ``inference_mode``, with the out-of-memory fallback (smaller batches, then the CPU copy). ``tf32``
        names an entry of :data:`~xaiscope.core.device.TF32_OPS` allowed to use TF32 on CUDA. Results on the
        CPU (a tensor or a tuple of tensors)."""
        entry = self.entry(ckpt, device)
        fn = fn or (lambda model, xb: model(xb))
        x = torch.as_tensor(x)
        dev = entry.device

        def on_device(xb):
            with torch.inference_mode():
                return fn(entry.model, xb.to(dev))

        def on_cpu(xb):
            cpu = self.entry(ckpt, "cpu")
            with torch.inference_mode():
                return fn(cpu.model, xb)

        limit = entry.batch_limit or max(int(x.shape[0]), 1)
        lock = self._device_lock(dev)
        notes: list[str] = []
        use_tf32 = bool(tf32) and dev.type == "cuda" and self.settings.tf32 and entry.tf32_ok is not False
        try:
            if lock is not None:
                lock.acquire()
            if use_tf32 and entry.tf32_ok is None:
                entry.tf32_ok = self._check_tf32(entry, on_device, x[: min(limit, 256)], tf32)
                use_tf32 = entry.tf32_ok
            precision = (contextlib.nullcontext() if dev.type == "cpu"  # no TF32 on a CPU: leave the switches
                         else tf32_math() if use_tf32 else exact_math())
            with precision:
                out, used = run_in_batches(on_device, x, limit, device=dev, cpu_fn=on_cpu, notes=notes, what=what)
        finally:
            if lock is not None:
                lock.release()
        if used < limit and dev.type != "cpu":
            entry.batch_limit = used
        for line in notes:
            self.note(f"{line} (checkpoint {entry.sha256[:12]})")
        return out

    def _check_tf32(self, entry: ModelEntry, on_device, xb, op: str) -> bool:
        tol = TF32_OPS.get(op, 0.0)
        with exact_math():
            exact = on_device(xb)
        with tf32_math():
            fast = on_device(xb)
        exact = exact[-1] if isinstance(exact, tuple) else exact
        fast = fast[-1] if isinstance(fast, tuple) else fast
        diff = float((exact.float() - fast.float()).abs().max())
        ok = diff <= tol
        self.note(f"TF32 for {op} on {entry.device}: max |Δ| {diff:.2e} vs exact float32 "
                  f"({'within' if ok else 'above'} {tol:g}; {'TF32 used' if ok else 'exact float32 kept'}) "
                  f"(checkpoint {entry.sha256[:12]})")
        return ok

    # --------------------------------------------------------------------------------- cached results
    def cached(self, key: tuple, compute: Callable[[], Any]):
        """``compute()`` once per ``key`` (a tuple starting with a namespace string) in the result cache."""
        return self.cache.get_or_compute(key, compute)

    # ---------------------------------------------------------------------------- hydrology (cell states)
    def _window_key(self, ckpt, data_key, date, dev) -> tuple:
        return ("hydro.window", ckpt.sha256, data_key, pd.Timestamp(date).normalize().value, str(dev))

    def has_window(self, ckpt: Checkpoint, data_key: str, date, device=None) -> bool:
        return self._window_key(ckpt, data_key, date, self.device(device)) in self.cache

    def window_states(self, ckpt: Checkpoint, ds: xr.Dataset, date, data_key: str | None = None,
                      device=None) -> xr.Dataset:
        """:func:`xaiscope.core.hydro.window_states` through the batching queue; cached on
        (sha256, ``data_key``, day, device) when ``data_key`` is given."""
        ckpt = self.share(ckpt)
        dev = self.device(device)
        date = pd.Timestamp(date).normalize()
        if data_key is None:
            return self._window_now(ckpt, ds, date, dev)
        return self.cache.get_or_compute(self._window_key(ckpt, data_key, date, dev),
                                         lambda: self._window_now(ckpt, ds, date, dev))

    def window_states_many(self, ckpt: Checkpoint, ds: xr.Dataset, dates: Sequence, data_key: str,
                           device=None) -> list[xr.Dataset]:
        """Several days at once: the missing ones are queued together (one batched forward)."""
        from xaiscope.core import hydro

        ckpt = self.share(ckpt)
        dev = self.device(device)
        out: dict[int, Any] = {}
        waiting = []
        for k, d in enumerate(dates):
            d = pd.Timestamp(d).normalize()
            key = self._window_key(ckpt, data_key, d, dev)
            found = self.cache.get(key)
            if found is not None:
                out[k] = found
                continue
            x, days = hydro.window_inputs(ckpt, ds, d)
            waiting.append((k, key, d, days, self.batcher.submit(self._group(ckpt, dev, x), (ckpt, dev, x))))
        for k, key, d, days, fut in waiting:
            value = self._window_dataset(ckpt, ds, d, days, fut.result())
            self.cache.put(key, value)
            out[k] = value
        return [out[k] for k in range(len(dates))]

    @staticmethod
    def _group(ckpt: Checkpoint, dev: torch.device, x: np.ndarray) -> tuple:
        return ("window", Engine.model_key(ckpt) or id(ckpt), str(dev), tuple(x.shape))

    def _window_now(self, ckpt, ds, date, dev) -> xr.Dataset:
        from xaiscope.core import hydro

        x, days = hydro.window_inputs(ckpt, ds, date)
        result = self.batcher.submit(self._group(ckpt, dev, x), (ckpt, dev, x)).result()
        return self._window_dataset(ckpt, ds, date, days, result)

    @staticmethod
    def _window_dataset(ckpt, ds, date, days, result) -> xr.Dataset:
        from types import SimpleNamespace

        from xaiscope.core import hydro

        arrays, y = result
        return hydro.window_dataset(ckpt, ds, date, days, SimpleNamespace(**arrays), y)

    def _run_batch(self, group: tuple, items: list) -> list:
        """The batching queue's worker: one batched forward of the windows in ``items``."""
        from xaiscope.core import hydro

        ckpt, dev = items[0][0], items[0][1]
        x = torch.from_numpy(np.stack([it[2] for it in items]))
        h, c, i, f, g, o, y = self.forward(ckpt, x, fn=hydro.window_forward, device=dev,
                                           what="cell-state windows")
        states = {"h": h, "c": c, "i": i, "f": f, "g": g, "o": o}
        y = y.numpy()
        results = []
        for k in range(len(items)):
            # copies: a cached window must not keep the whole batch alive
            results.append(({name: t[k:k + 1].numpy().copy() for name, t in states.items()}, float(y[k])))
        return results

    def continuous_states(self, ckpt: Checkpoint, ds: xr.Dataset, data_key: str | None = None, start=None,
                          end=None, device=None) -> xr.Dataset:
        """:func:`xaiscope.core.hydro.continuous_states` on the engine's model (out-of-memory safe); cached on
        (sha256, ``data_key``, start, end, device) when ``data_key`` is given."""
        from xaiscope.core import hydro

        ckpt = self.share(ckpt)
        dev = self.device(device)

        def run(x):
            return self.forward(ckpt, x, fn=hydro.continuous_forward, device=dev, what="continuous pass")

        def build():
            return hydro.continuous_states(ckpt, ds, start, end, run=run)

        if data_key is None:
            return build()
        key = ("hydro.continuous", ckpt.sha256, data_key, str(start), str(end), str(dev))
        return self.cache.get_or_compute(key, build)

    def predictor(self, ckpt: Checkpoint, device=None) -> Callable[[np.ndarray], np.ndarray]:
        """``predict(windows (B, T, n_in)) -> (B,)`` on the engine's model: batches of at most the model's
        working batch size, out-of-memory fallback, TF32 on CUDA within ``TF32_OPS["simulate"]``."""
        ckpt = self.share(ckpt)
        dev = self.device(device)

        def predict(arr: np.ndarray) -> np.ndarray:
            out = self.forward(ckpt, torch.from_numpy(np.ascontiguousarray(arr)), device=dev,
                               what="simulation", tf32="simulate")
            return out.reshape(-1).numpy()

        return predict

    def simulate(self, ckpt: Checkpoint, ds: xr.Dataset, start=None, end=None, device=None,
                 batch_size: int = 2048, cache: bool = True, progress=None) -> xr.DataArray:
        """:func:`xaiscope.core.hydro.simulate` through :meth:`predictor` (stored simulations are used as
        there)."""
        from xaiscope.core import hydro

        ckpt = self.share(ckpt)
        return hydro.simulate(ckpt, ds, start, end, batch_size=batch_size, cache=cache, progress=progress,
                              predict=self.predictor(ckpt, device))

    # ---------------------------------------------------------------------------------------- reporting
    def about(self) -> dict:
        """Settings, device, models held (sha256, device, size), cache use, batching and notes."""
        with self._lock:
            models = [{"sha256": e.sha256, "kind": e.checkpoint.manifest.get("kind", "?"),
                       "path": str(e.checkpoint.path), "device": str(e.device), "mb": e.nbytes / 1e6,
                       "batch_limit": e.batch_limit, "tf32": e.tf32_ok} for e in self._models.values()]
            checkpoints = len(self._checkpoints)
        return {
            "settings": dataclasses.asdict(self.settings),
            "device": str(self.default_device),
            "torch_threads": torch.get_num_threads(),
            "checkpoints": checkpoints,
            "models": models,
            "cache": self.cache.stats(),
            "batching": self.batcher.stats(),
            "notes": self.notes,
            "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
                         "xarray": xr.__version__, "pandas": pd.__version__},
        }

    def close(self) -> None:
        self.batcher.close()


# ----------------------------------------------------------------------------------------------- singleton
_ENGINE: Engine | None = None
_ENGINE_LOCK = threading.Lock()


def get_engine() -> Engine:
    """The process's engine (created on first use with :meth:`EngineSettings.from_env`)."""
    global _ENGINE
    engine = _ENGINE
    if engine is not None:
        return engine
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = Engine(EngineSettings.from_env())
        return _ENGINE


def configure_engine(settings: EngineSettings | None = None, **overrides) -> Engine:
    """Replace the process's engine (``settings``, or the environment plus ``overrides``)."""
    global _ENGINE
    settings = settings or EngineSettings.from_env(**overrides)
    engine = Engine(settings)
    with _ENGINE_LOCK:
        old, _ENGINE = _ENGINE, engine
    if old is not None:
        old.close()
    return engine


def reset_engine() -> None:
    """Forget the process's engine (the next :func:`get_engine` builds a fresh one)."""
    global _ENGINE
    with _ENGINE_LOCK:
        old, _ENGINE = _ENGINE, None
    if old is not None:
        old.close()
