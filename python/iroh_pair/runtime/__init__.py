"""How many threads run iroh in this process.

iroh runs on tokio's multi-thread runtime, beside the asyncio loop's own thread. Its worker
count is chosen once per process, before the first endpoint or native operation: by
:func:`use_worker_threads`, else by the ``IROH_PAIR_WORKER_THREADS`` environment variable,
else one per core but one (the loop's thread needs a core too), and at least one.

The count is a trade, measured on 2 cores (where the default is one worker) against plain
Rust iroh on the same workload (``bench/transport.py``, ``bench/run.py`` and interleaved runs):

- **One worker** keeps all of the process's packet, stream and crypto work on one thread, so a
  request and its reply need fewer wake-ups between threads. Sequential p50: with client and
  server in one process 1.08-1.37x plain Rust's against 1.52-1.89x with two workers; as two
  processes 1.33-1.56x against 1.48-1.74x. Queued requests, one stream and a new connection
  per message between two processes: the same or better. On a second machine, where plain
  Rust's p50 was ~100 us rather than ~140 us, one process: 1.62-1.83x against 1.94-2.22x.
- **Two workers** (one per core) spread the work of two peers that share a process: one
  stream there carried 66-85% of plain Rust's MiB/s against 45-70% on one worker (72-74%
  against 62-70% on the second machine).

So a process that is one peer (the usual case) is best served by the default; tests or tools
that move bulk data between two endpoints of one process may want ``use_worker_threads(2)``.
On machines with more cores the default leaves one core to the loop's thread.
:mod:`iroh_pair.loop_thread` goes further (no worker thread at all, iroh on the loop's
thread), with costs of its own::

    from iroh_pair import runtime
    runtime.use_worker_threads(2)   # before the first endpoint
"""

from __future__ import annotations

from . import _native

__all__ = ["MAX_WORKER_THREADS", "use_worker_threads", "worker_threads"]

#: The largest count accepted (a larger ``IROH_PAIR_WORKER_THREADS`` is ignored).
MAX_WORKER_THREADS: int = _native.MAX_WORKER_THREADS


def use_worker_threads(n: int) -> None:
    """Runs iroh on ``n`` tokio worker threads in this process instead of the default (see
    the module's text).

    Call it before the first endpoint or native operation. Raises TypeError for a non-int,
    ValueError for ``n`` outside 1 to :data:`MAX_WORKER_THREADS`, and RuntimeError when the
    runtime already started, or was chosen, with another count, or when this process runs iroh
    on its loop's thread (:mod:`iroh_pair.loop_thread`)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"worker thread count must be an int, got {type(n).__name__}")
    _native.use_runtime("multi-thread", n)


def worker_threads() -> int | None:
    """The number of worker threads that run (or, once chosen, will run) iroh in this process;
    None until :func:`use_worker_threads` chose it or the runtime started, and on the
    loop-thread runtime."""
    return _native.worker_threads()
