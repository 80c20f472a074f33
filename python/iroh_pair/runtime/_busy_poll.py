"""The ``"busy-poll"`` loop of :mod:`iroh_pair.runtime`: before it blocks, it watches the native
bridge for a short while, for lower latency at the price of some CPU.

With the default loop, each native completion reaches asyncio by waking the loop's thread out of
``epoll_wait``; on a small (virtual) machine a thread that sleeps and is woken by another costs
tens of microseconds, and a request/reply crosses onto the loop's thread at least once on each
side. A busy-polling loop, before it blocks, spins on the bridge's queue with the GIL released
(``Bridge.spin``) and picks the completion up as soon as it is pushed.

The polling window adapts the way Linux KVM's halt-polling does: it grows (doubling, from
:data:`GROW_START_US`, up to ``busy_poll_us``) when the loop blocked and a completion woke it
within the window, and shrinks (halving, to zero below :data:`GROW_START_US`) when a wait lasted
longer than ``busy_poll_us``. So an idle or slowly paced application stops spinning after a
few wake-ups, and a busy request/reply exchange spins at every wait.

No spinning while a bulk transfer (an exact read or whole write over 64 KiB) or a dial is in
flight: those keep tokio's workers busy (copies, handshake crypto), and on a small machine a
spinning thread would take their CPU.

Costs: up to ``busy_poll_us`` of one core per wait while exchanges are in flight, and other
file descriptors (sockets of other asyncio transports) are seen up to ``busy_poll_us`` later
while the loop spins. Timers are never delayed: a spin stops at the next timer's deadline.
Whether it pays depends on the machine and on whether client and server share a process:
measured results are in ``bench/RESULTS.md`` ("Runtime choices"). Choose it with
``iroh_pair.runtime.run(main(), loop="busy-poll", busy_poll_us=200)``.
"""

from __future__ import annotations

import asyncio
import selectors
import time

from iroh_pair.runtime._selector import BridgeSelector, make_loop

__all__ = ["BusyPollSelector", "DEFAULT_BUSY_POLL_US", "GROW_START_US", "check_window", "new_event_loop"]

#: The default largest polling window, in microseconds: about one request/reply on loopback.
DEFAULT_BUSY_POLL_US = 200
#: The window the first growth step sets; a window shrunk below it is zero.
GROW_START_US = 10


class BusyPollSelector(BridgeSelector):
    """A selector that spins on the loop's bridge before it blocks (see the module's text).

    Wraps another selector (``selectors.DefaultSelector()`` unless given); registrations go to
    it unchanged. ``spins``, ``hits`` and ``window_us`` show what it did: waits that spun, spins
    that found a completion, and the current polling window. No spin while a bulk transfer or
    a dial is in flight (``Bridge.heavy_count()``)."""

    def __init__(self, busy_poll_us: int = DEFAULT_BUSY_POLL_US, inner: selectors.BaseSelector | None = None) -> None:
        check_window(busy_poll_us)
        super().__init__(inner)
        self.max_us = busy_poll_us
        self.window_us = 0
        self.spins = 0
        self.hits = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Spins on the bridge for up to the current window (none during bulk transfers and
        dials, none past ``timeout``), then waits in the wrapped selector; adapts the window."""
        bridge = self._bridge() if self.max_us else None
        if bridge is None or timeout is not None and timeout <= 0:
            return self.inner.select(timeout)
        window = self.window_us if timeout is None else min(self.window_us, int(timeout * 1e6))
        start = time.perf_counter()
        if window and not bridge.native.heavy_count():
            ready = self.inner.select(0)
            if ready:
                return ready
            self.spins += 1
            hit = bridge.native.spin(window)
            if timeout is not None:
                timeout = max(0.0, timeout - (time.perf_counter() - start))
            if hit:
                # The wake-up fd is written just after the push that ended the spin.
                self.hits += 1
                return self.inner.select(timeout)
        ready = self.inner.select(timeout)
        waited_us = (time.perf_counter() - start) * 1e6
        if waited_us > self.max_us:
            # A long wait: spinning was (or would have been) wasted; spin less.
            half = self.window_us // 2
            self.window_us = half if half >= GROW_START_US else 0
        elif self.window_us < self.max_us:
            # A completion woke the loop soon after it blocked: a longer window catches it.
            fd = bridge.native.fileno()
            if any(key.fd == fd for key, _ in ready):
                self.window_us = min(self.max_us, max(GROW_START_US, self.window_us * 2))
        return ready

    def __repr__(self) -> str:
        return (
            f"<BusyPollSelector max_us={self.max_us} window_us={self.window_us} "
            f"spins={self.spins} hits={self.hits}>"
        )


def check_window(busy_poll_us: int) -> None:
    """ValueError unless ``busy_poll_us`` is 0 to 1,000,000 microseconds."""
    if not 0 <= busy_poll_us <= 1_000_000:
        raise ValueError(f"busy_poll_us must be between 0 and 1,000,000, got {busy_poll_us}")


def new_event_loop(busy_poll_us: int = DEFAULT_BUSY_POLL_US) -> asyncio.AbstractEventLoop:
    """A new selector event loop whose waits busy-poll the native bridge for up to
    ``busy_poll_us`` microseconds (0: never, the same as the default loop)."""
    return make_loop(BusyPollSelector(busy_poll_us))
