"""The asyncio half of the async bridge (the Rust half is ``rust/iroh-pair-native/src/bridge.rs``).

Each native operation that may wait is started with a token. It either completes at once (the
value is returned directly) or returns ``PENDING``; then its result arrives later through the
bridge's queue. Rust writes to one file descriptor when the queue turns non-empty; the loop
watches it with ``add_reader`` and drains every queued completion in one call. Tokio threads
never take the GIL and never wake the loop more than once per batch.

There is one bridge per running event loop, so separate loops (one per test, one per thread)
each get their own. This module is internal: the transport calls :func:`start` / :func:`call`,
the loops of :mod:`iroh_pair.runtime` find a loop's bridge with :func:`bridge_of` and mark the
loops that run iroh themselves with :func:`mark_driven`.

How the transport uses it (illustrative; ``conn`` is a native ``Connection``)::

    from iroh_pair.runtime._bridge import call, start

    fut = start(conn.request, b"ping", 1 << 20, None)  # started now; a future, no coroutine
    reply = await fut
    send, recv = await call(conn.open_bi)              # the same, awaited at once
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from iroh_pair import _native

__all__ = ["Bridge", "Operation", "get_bridge", "bridge_of", "mark_driven", "call", "start"]

T = TypeVar("T")

#: A subscription's callbacks get ``(ok, value)``: ``on_item`` for each item, ``on_end`` once
#: for the last one; ``value`` is an exception instance when ``ok`` is False.
StreamCallback = Callable[[bool, Any], None]


class Bridge:
    """Tokens to futures for one event loop."""

    __slots__ = ("native", "loop", "_futures", "_streams", "_tokens", "_closed", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.native = _native.Bridge()
        self.loop = loop
        self._futures: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, tuple[StreamCallback, StreamCallback]] = {}
        self._tokens = itertools.count(1)
        self._closed = False
        loop.add_reader(self.native.fileno(), self._drain)

    def token(self) -> int:
        """A fresh token for one operation."""
        return next(self._tokens)

    def _drain(self) -> None:
        # Resolves futures and calls subscription callbacks natively (see Bridge::drain).
        self.native.drain(self._futures, self._streams)

    def subscribe(self, on_item: StreamCallback, on_end: StreamCallback) -> int:
        """Registers callbacks for a persistent subscription; returns its token."""
        token = self.token()
        self._streams[token] = (on_item, on_end)
        return token

    def unsubscribe(self, token: int) -> None:
        """Stops a subscription and aborts its native task."""
        self._streams.pop(token, None)
        self.native.cancel(token)

    def close(self) -> None:
        """Stops watching the wake-up fd (the loop is closing)."""
        if not self._closed:
            self._closed = True
            try:
                self.loop.remove_reader(self.native.fileno())
            except (RuntimeError, ValueError, OSError):
                pass

    def pending(self) -> int:
        """Operations whose native tasks are still running."""
        return self.native.pending_count()

    def __repr__(self) -> str:
        completed, wakeups, resumed, spawned = self.native.counters()
        return (
            f"<Bridge pending={self.pending()} futures={len(self._futures)} "
            f"streams={len(self._streams)} completed={completed} wakeups={wakeups} "
            f"resumed={resumed} spawned={spawned}>"
        )


_bridges: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Bridge] = weakref.WeakKeyDictionary()
#: Loops that run iroh while they wait (the loop-thread runtime's, see :func:`mark_driven`).
_driven_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def bridge_of(loop: asyncio.AbstractEventLoop) -> Bridge | None:
    """The bridge of ``loop`` once a native operation created it, else None (for the selectors
    of :mod:`iroh_pair.runtime`, which must not create one)."""
    return _bridges.get(loop)


def mark_driven(loop: asyncio.AbstractEventLoop) -> None:
    """Records that ``loop`` runs iroh itself while it waits (the loop-thread runtime): its
    bridge may then be created in a process that runs iroh on its loops' thread."""
    _driven_loops.add(loop)


def get_bridge() -> Bridge:
    """The bridge of the running loop, created on first use.

    The first bridge of a loop that does not run iroh itself fixes the process's runtime as the
    multi-thread one. In a process that runs iroh on its loops' thread (the ``"loop-thread"``
    loop of :mod:`iroh_pair.runtime`) such a loop would wait forever, so it gets RuntimeError
    instead."""
    loop = asyncio.get_running_loop()
    b = _bridges.get(loop)
    if b is None:
        if loop not in _driven_loops:
            try:
                _native.use_runtime("multi-thread")
            except RuntimeError:
                raise RuntimeError(
                    "this process runs iroh on its event loops' thread, so a loop that uses iroh "
                    "must come from iroh_pair.runtime.run(..., loop=\"loop-thread\") or "
                    "iroh_pair.runtime.new_event_loop(\"loop-thread\"); this one would never "
                    "run iroh"
                ) from None
        b = Bridge(loop)
        _bridges[loop] = b
        _hook_loop_close(loop, b)
    return b


def _hook_loop_close(loop: asyncio.AbstractEventLoop, bridge: Bridge) -> None:
    """Removes the reader when the loop closes, so the fd is not left registered."""
    original_close = loop.close

    def close() -> None:
        bridge.close()
        _bridges.pop(loop, None)
        original_close()

    try:
        loop.close = close  # type: ignore[method-assign]
    except AttributeError:  # a loop class with __slots__: the reader dies with the selector
        pass


PENDING: Any = _native.PENDING


async def call(op: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Starts a native operation ``op(bridge, token, *args, **kwargs)`` and returns its result
    (see :func:`start`; cancelling the wait aborts the native task)."""
    return await start(op, *args, **kwargs)


class Operation(asyncio.Future[Any]):
    """The future of a native operation started by :func:`start`. Cancelling it (directly, or
    by cancelling a task that awaits it) aborts the native task."""

    __slots__ = ("_bridge", "_token")

    def __init__(self, bridge: Bridge, token: int) -> None:
        super().__init__(loop=bridge.loop)
        self._bridge = bridge
        self._token = token

    def cancel(self, msg: Any | None = None) -> bool:
        if not self.done():
            self._bridge._futures.pop(self._token, None)
            self._bridge.native.cancel(self._token)
        return super().cancel(msg)


def start(op: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
    """Starts a native operation ``op(bridge, token, *args, **kwargs)`` at once and returns its
    future: already done when the operation completed inline, else an :class:`Operation`.

    Unlike :func:`call`, no coroutine (and, under ``gather``, no task) stands between the caller
    and the result, which matters for the many small operations of a busy connection. An error raised while starting is set on the future, so it surfaces
    where the result is awaited, as it would from a coroutine."""
    b = get_bridge()
    token = next(b._tokens)
    try:
        r = op(b.native, token, *args, **kwargs)
    except Exception as e:
        done = b.loop.create_future()
        done.set_exception(e)
        return done
    if r is not PENDING:
        done = b.loop.create_future()
        done.set_result(r)
        return done
    fut = Operation(b, token)
    b._futures[token] = fut
    return fut
