"""The ``"loop-thread"`` loop of :mod:`iroh_pair.runtime`: iroh runs on the asyncio loop's own
thread, so nothing crosses threads between iroh and Python.

By default iroh runs on tokio's worker threads, and each completion crosses to the loop's
thread (a wake-up through the bridge's fd), each write back to a worker. With the loop-thread
runtime the process runs iroh on a current-thread tokio runtime instead, and the loop runs it
while it waits: its selector calls ``Bridge.drive``, which runs iroh's tasks, sockets and timers
until a completion is queued, one of the loop's own file descriptors is ready, or the loop's
next timer is due. It suits a process that is one peer; with client and server in one process
one thread does both sides' work (measured results: ``bench/RESULTS.md``, "Runtime
choices").

Costs, which is why it is not the default:

- It is chosen for the whole process, before iroh's first use (:func:`enable`, which
  :func:`new_event_loop` calls). Every loop that uses iroh in that process must come from here:
  any other loop gets RuntimeError at its first native operation (it would never run iroh).
  Loops in several threads work, but take turns running iroh.
- iroh runs only while a loop waits: a callback that holds the loop for 100 ms holds this
  process's networking for 100 ms too (QUIC timers included). Blocking work belongs in
  ``loop.run_in_executor``, as asyncio already asks.
- iroh and Python share one core.

Choose it with ``iroh_pair.runtime.run(main(), loop="loop-thread")``.
"""

from __future__ import annotations

import asyncio
import selectors

from iroh_pair import _native
from iroh_pair.runtime import _bridge
from iroh_pair.runtime._selector import BridgeSelector, make_loop

__all__ = ["LoopThreadSelector", "enable", "new_event_loop"]


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
        """Runs iroh (``Bridge.drive``) until a completion is queued, one of the loop's file
        descriptors is ready or ``timeout`` passes; then reports the ready ones."""
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


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new selector event loop that runs iroh while it waits (calls :func:`enable`)."""
    enable()
    loop = make_loop(LoopThreadSelector())
    _bridge.mark_driven(loop)
    return loop
