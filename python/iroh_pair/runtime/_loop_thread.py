"""Run iroh on the asyncio loop's own thread: no thread hops between iroh and Python.

By default iroh runs on tokio's worker threads (:mod:`iroh_pair.runtime`), and each completion
crosses to the loop's thread (a wake-up through the bridge's fd), each write back to a worker.
On a small machine a thread that sleeps and is woken by another costs tens of microseconds,
several times per request. With the loop-thread runtime the process runs iroh on a current-
thread tokio runtime instead, and the loop runs it while it waits: its selector calls
``Bridge.drive``, which runs iroh's tasks, sockets and timers until a completion is queued, one
of the loop's own file descriptors is ready, or the loop's next timer is due. Nothing crosses
threads.

Measured on 2 cores over loopback with ``bench/transport.py`` (ratios to plain Rust iroh in the
same run). Client and server in two processes (``--split``), this runtime against the
multi-thread one with two workers (three runs): sequential p50 1.34-1.42x against 1.63-1.90x
(1.27-1.31x in interleaved A/B runs), 5,000 queued requests 137-161% against 80-123%, one
stream 93-103% against 66-93%, a new connection per message 0.94-1.01x against 1.20-1.37x;
against its one-worker default on 2 cores (:mod:`iroh_pair.runtime`; one run): sequential
1.06x against 1.33x, queued 210% against 81%, one stream 94% against 80%, a connection per
message 0.92x against 1.26x; on a second machine (one run, against one worker): sequential
1.19x against 1.70x, queued 152% against 95%, one stream 106% against 59%. Client and server in
one process, where one thread does both sides' work, it is slower (two runs, against two
workers): sequential p50 1.55-1.92x against 1.58-1.63x, one stream 50-64% against 83-96%. So it
suits a process that is one peer.

Costs, which is why it is not the default:

- It is chosen for the whole process, before iroh's first use (:func:`enable`, which
  :func:`run` and :func:`new_event_loop` call). Every loop that uses iroh in that process must
  come from here: any other loop gets RuntimeError at its first native operation (it would never
  run iroh). Loops in several threads work, but take turns running iroh.
- iroh runs only while a loop waits: a callback that holds the loop for 100 ms holds this
  process's networking for 100 ms too (QUIC timers included). Blocking work belongs in
  ``loop.run_in_executor``, as asyncio already asks.
- iroh and Python share one core: with client and server in one process, both sides' crypto
  and packet work is on that core (slower than the default runtime there; see the benchmarks).

Use::

    iroh_pair.loop_thread.run(main())
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

from . import _bridge, _native
from ._selector import BridgeSelector, find, make_loop

__all__ = ["LoopThreadSelector", "enable", "enabled", "new_event_loop", "run", "selector_of"]

T = TypeVar("T")


class LoopThreadSelector(BridgeSelector):
    """A selector that runs iroh while the loop waits (see the module's text). ``drives``
    counts the waits that ran the runtime."""

    def __init__(self, inner: selectors.BaseSelector | None = None) -> None:
        super().__init__(inner)
        fileno = getattr(self.inner, "fileno", None)
        if fileno is None:
            raise TypeError(f"{type(self.inner).__name__} has no fileno() to wait on; use an epoll or kqueue selector")
        self._fd: int = fileno()
        self.drives = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        bridge = self._bridge()
        if bridge is None:
            return self.inner.select(timeout)
        self.drives += 1
        queued = bridge.native.drive(self._fd, -1 if timeout is None else max(0, int(timeout * 1e6)))
        events = self.inner.select(0)
        if queued:
            # Completions pushed during the drive did not write the bridge's fd: report it here.
            key = self.inner.get_map().get(bridge.native.fileno())
            if key is not None and not any(k is key for k, _ in events):
                events.append((key, selectors.EVENT_READ))
        return events

    def __repr__(self) -> str:
        return f"<LoopThreadSelector drives={self.drives}>"


def enable() -> None:
    """Makes this process run iroh on its loops' thread. Raises RuntimeError when iroh already
    runs on the default (multi-thread) runtime here: choose before the first native operation."""
    _native.use_runtime("loop-thread")


def enabled() -> bool:
    """Whether this process runs iroh on its loops' thread."""
    return _native.runtime_kind() == "loop-thread"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new selector event loop that runs iroh while it waits (calls :func:`enable`). For
    ``asyncio.Runner(loop_factory=...)`` or ``asyncio.run(..., loop_factory=...)`` (3.12+)."""
    enable()
    loop = make_loop(LoopThreadSelector())
    _bridge.driven_loops.add(loop)
    return loop


def selector_of(loop: asyncio.AbstractEventLoop | None = None) -> LoopThreadSelector | None:
    """The selector of ``loop`` (default: the running loop), or None when the loop was not
    made by :func:`new_event_loop`."""
    return find(loop, LoopThreadSelector)


def run(main: Coroutine[Any, Any, T], *, debug: bool | None = None) -> T:
    """Like :func:`asyncio.run`, on a loop from :func:`new_event_loop`."""
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
