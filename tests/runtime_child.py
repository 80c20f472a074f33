"""Scenarios for tests/test_runtime.py, each in a process of its own (the worker count is chosen
once per process): ``python tests/runtime_child.py SCENARIO``. Prints one JSON line with what
it saw; the test asserts on it."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from loop_thread_child import bulk, served_pair  # tests/ is on sys.path: run as a script
from iroh_pair import _native, runtime


def workers(n: Any) -> None:
    """Chooses ``n`` worker threads through the runtime's entry point (the loop it makes is not
    needed: the choice is the process's)."""
    runtime.new_event_loop(worker_threads=n).close()


def loop_thread() -> None:
    """Chooses the loop-thread runtime through the runtime's entry point."""
    runtime.new_event_loop("loop-thread").close()


def error_of(f: Any, *args: Any) -> str | None:
    """The name and text of what ``f(*args)`` raised, or None."""
    try:
        f(*args)
    except Exception as e:  # noqa: BLE001 - reported to the test, which checks the type
        return f"{type(e).__name__}: {e}"
    return None


async def traffic() -> dict[str, Any]:
    """Requests (sequential and queued) and a 4 MiB stream between two endpoints of this process."""
    a, b, conn = await served_pair()
    seq = [await conn.request(b"r%d" % i) for i in range(300)]
    queued = await asyncio.gather(*(conn.request(b"q%d" % i) for i in range(2000)))
    sent, served = await bulk(a, b, 4 << 20)
    conn.close(0, b"done")
    await b.close()
    await a.close()
    return {
        "sequential_ok": seq == [b"r%d" % i for i in range(300)],
        "queued_ok": list(queued) == [b"q%d" % i for i in range(2000)],
        "bulk_ok": sent == served,
    }


def two_workers() -> dict[str, Any]:
    workers(2)  # not the default on a 2-core machine (one)
    out: dict[str, Any] = {"chosen": runtime.worker_threads()}
    out.update(asyncio.run(traffic()))
    out["workers"] = _native._debug_stats()["workers"]
    out["again"] = error_of(workers, 2)
    out["other"] = error_of(workers, 1)
    out["loop_thread"] = error_of(loop_thread)
    return out


def default() -> dict[str, Any]:
    out: dict[str, Any] = {"before": runtime.worker_threads()}
    out.update(asyncio.run(traffic()))
    out["after"] = runtime.worker_threads()
    out["workers"] = _native._debug_stats()["workers"]
    out["late_other"] = error_of(workers, out["workers"] + 1)
    out["late_same"] = error_of(workers, out["workers"])
    return out


def bad_counts() -> dict[str, Any]:
    out: dict[str, Any] = {repr(n): error_of(workers, n) for n in (0, -1, 1025, 2**70, "2", True, 1.5)}
    out["count_for_loop_thread"] = error_of(_native.use_runtime, "loop-thread", 2)
    out["native_too_many"] = error_of(_native.use_runtime, "multi-thread", runtime.MAX_WORKER_THREADS + 1)
    # None of these fixed anything: the process may still choose either runtime.
    out["after"] = {"kind": _native.runtime_kind(), "workers": runtime.worker_threads()}
    return out


def loop_thread_first() -> dict[str, Any]:
    loop_thread()
    return {"error": error_of(workers, 1), "workers": runtime.worker_threads()}


SCENARIOS = {"two-workers": two_workers, "default": default, "bad-counts": bad_counts, "loop-thread-first": loop_thread_first}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]]()), flush=True)
