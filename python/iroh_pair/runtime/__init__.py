"""How iroh and asyncio share this process, chosen in one place: :func:`run` (or
:func:`new_event_loop`, the same choice as a loop factory).

iroh runs on tokio; Python code runs on an asyncio loop; native completions reach the loop
through the bridge (a queue and one wake-up fd). Three loops are on offer::

    from iroh_pair import runtime

    runtime.run(main())                              # like asyncio.run: iroh on tokio worker threads
    runtime.run(main(), worker_threads=2)            # the same, on 2 worker threads
    runtime.run(main(), loop="busy-poll")            # spins briefly on the bridge before it sleeps
    runtime.run(main(), loop="loop-thread")          # iroh runs on the loop's own thread

    with asyncio.Runner(loop_factory=lambda: runtime.new_event_loop("busy-poll")) as r:
        r.run(main())                                # the same choice, for your own runner

``"default"``: a plain asyncio loop (``asyncio.run(main())`` is the same thing); iroh runs on
tokio's multi-thread runtime beside it. Its worker count is chosen once per process, before the
first endpoint or native operation: by ``worker_threads=`` here, else by the
``IROH_PAIR_WORKER_THREADS`` environment variable (for a process whose loop you do not create),
else one per core but one (the loop's thread needs a core too), and at least one. One worker
keeps a request's packet, stream and crypto work on one thread (fewest wake-ups between
threads): best for a process that is one peer. Two suit bulk data between two endpoints of one
process (tests, tools).

``"busy-poll"``: the default runtime, on a loop that, before it blocks, watches the bridge for
up to ``busy_poll_us`` microseconds (adaptive: it stops spinning when the application goes
idle, and never spins during a bulk transfer or a dial). Lower latency for request/reply in a
process with a core to spare, for some CPU. :class:`BusyPollSelector` shows what it did.

``"loop-thread"``: iroh on a current-thread tokio runtime that the loop runs while it waits:
no thread hops at all. It is chosen for the whole process: every loop that uses iroh there
must come from here (another gets RuntimeError), and a callback that holds the loop holds the
process's networking too. :class:`LoopThreadSelector` shows what it did.

Why each exists: ``docs/ARCHITECTURE.md`` ("Design decisions"); measured results of the three:
``bench/RESULTS.md`` ("Runtime choices"). Choosing a
runtime or worker count that contradicts the process's earlier choice raises RuntimeError; an
unknown loop kind or a count outside 1 to :data:`MAX_WORKER_THREADS` raises ValueError, a
count that is not an int TypeError; none of these fixes anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from iroh_pair import _native
from iroh_pair.runtime import _busy_poll, _loop_thread
from iroh_pair.runtime._bridge import get_bridge
from iroh_pair.runtime._busy_poll import DEFAULT_BUSY_POLL_US, BusyPollSelector
from iroh_pair.runtime._loop_thread import LoopThreadSelector
from iroh_pair.runtime import _selector

__all__ = [
    "LoopKind",
    "MAX_WORKER_THREADS",
    "DEFAULT_BUSY_POLL_US",
    "run",
    "new_event_loop",
    "worker_threads",
    "kind",
    "selector_of",
    "BusyPollSelector",
    "LoopThreadSelector",
    "debug_stats",
]

T = TypeVar("T")

#: The loops on offer (see the module's text).
LoopKind = Literal["default", "busy-poll", "loop-thread"]

#: The largest worker count accepted (a larger ``IROH_PAIR_WORKER_THREADS`` is ignored).
MAX_WORKER_THREADS: int = _native.MAX_WORKER_THREADS

_KINDS = ("default", "busy-poll", "loop-thread")


def _factory(
    loop: str, worker_threads: int | None, busy_poll_us: int | None
) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Checks the choice, applies its process-wide part, and returns the loop factory (None for
    asyncio's own loop). Raises before anything is fixed when the arguments are wrong."""
    if loop not in _KINDS:
        raise ValueError(f"unknown loop {loop!r}: expected one of {', '.join(map(repr, _KINDS))}")
    if worker_threads is not None and (isinstance(worker_threads, bool) or not isinstance(worker_threads, int)):
        raise TypeError(f"worker thread count must be an int, got {type(worker_threads).__name__}")
    if busy_poll_us is not None and loop != "busy-poll":
        raise ValueError(f"busy_poll_us applies to the busy-poll loop, not to {loop!r}")
    if loop == "loop-thread":
        if worker_threads is not None:
            _native.use_runtime("loop-thread", worker_threads)  # ValueError: it has no workers
        return _loop_thread.new_event_loop
    us = DEFAULT_BUSY_POLL_US if busy_poll_us is None else busy_poll_us
    if loop == "busy-poll":
        _busy_poll.check_window(us)  # before anything is fixed
    if worker_threads is not None:
        _native.use_runtime("multi-thread", worker_threads)
    if loop == "busy-poll":
        return lambda: _busy_poll.new_event_loop(us)
    return None


def new_event_loop(
    loop: LoopKind = "default",
    *,
    worker_threads: int | None = None,
    busy_poll_us: int | None = None,
) -> asyncio.AbstractEventLoop:
    """A new event loop of kind ``loop`` (see the module's text), for
    ``asyncio.Runner(loop_factory=...)``; ``worker_threads`` chooses the process's worker count
    (default runtime only), ``busy_poll_us`` the busy-poll loop's largest window (default
    :data:`DEFAULT_BUSY_POLL_US`, 0 never spins). Example::

        with asyncio.Runner(loop_factory=lambda: runtime.new_event_loop("loop-thread")) as r:
            r.run(main())
    """
    factory = _factory(loop, worker_threads, busy_poll_us)
    return asyncio.new_event_loop() if factory is None else factory()


def run(
    main: Coroutine[Any, Any, T],
    *,
    loop: LoopKind = "default",
    worker_threads: int | None = None,
    busy_poll_us: int | None = None,
    debug: bool | None = None,
) -> T:
    """Like :func:`asyncio.run`, on a loop of kind ``loop`` (see :func:`new_event_loop` and the
    module's text). With the defaults it is :func:`asyncio.run`. Example::

        runtime.run(main(), loop="busy-poll", busy_poll_us=200)
    """
    try:
        factory = _factory(loop, worker_threads, busy_poll_us)
    except BaseException:
        main.close()  # never started: no "never awaited" warning on top of the error
        raise
    with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)


def worker_threads() -> int | None:
    """The number of worker threads that run (or, once chosen, will run) iroh in this process;
    None until it was chosen or the runtime started, and on the loop-thread runtime."""
    return _native.worker_threads()


def kind() -> Literal["multi-thread", "loop-thread"] | None:
    """The runtime this process chose: ``"multi-thread"`` (the default and busy-poll loops),
    ``"loop-thread"``, or None before the first choice or native operation."""
    k = _native.runtime_kind()
    if k == "loop-thread":
        return "loop-thread"
    return "multi-thread" if k == "multi-thread" else None


def selector_of(loop: asyncio.AbstractEventLoop | None = None) -> BusyPollSelector | LoopThreadSelector | None:
    """The selector of ``loop`` (default: the running loop) when it came from
    :func:`new_event_loop` with ``"busy-poll"`` or ``"loop-thread"``, else None: its counters
    show what the loop did (``spins``, ``hits``, ``window_us``; ``drives``)."""
    sel = _selector.selector_of(loop)
    return sel if isinstance(sel, (BusyPollSelector, LoopThreadSelector)) else None


def debug_stats() -> dict[str, int]:
    """Counters for tests and debugging: tokio's live tasks and workers (native), and the running
    loop's operations still pending on the bridge (``pending_tokens``, when a loop runs)."""
    stats = dict(_native._debug_stats())
    try:
        stats["pending_tokens"] = get_bridge().pending()
    except RuntimeError:
        pass
    return stats
