"""The loop-thread runtime (``iroh_pair.runtime``, ``loop="loop-thread"``): iroh run by the asyncio
loop's own thread.

The runtime is chosen once per process, and this test process runs the default one, so every
scenario runs in a child process (tests/loop_thread_child.py) over real iroh endpoints on
127.0.0.1; the tests assert on what the child reports."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHILD = Path(__file__).resolve().parent / "loop_thread_child.py"
BAD_STDERR = ("panicked", "Fatal Python error", "Exception ignored", "Traceback")


def child(*args: str, timeout: float = 120) -> dict[str, Any]:
    p = subprocess.run([sys.executable, str(CHILD), *args], capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    for bad in BAD_STDERR:
        assert bad not in p.stderr, p.stderr[-3000:]
    out: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


@pytest.fixture
def loop_thread_server() -> Iterator[str]:
    """An echo server in a loop-thread process; yields its ticket."""
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), "serve"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["kind"] == "loop-thread"
        yield str(ready["ticket"])
    finally:
        proc.stdin.close()  # the server's signal to stop
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    err = proc.stderr.read()
    assert proc.returncode == 0, err[-3000:]
    for bad in BAD_STDERR:
        assert bad not in err, err[-3000:]


def test_one_process_requests_bulk_timers_sockets_cancellation() -> None:
    out = child("one-process")
    assert out["kind"] == "loop-thread" and out["workers"] == 1  # a current-thread runtime
    assert out["echo"] == "hello"
    assert out["sequential_ok"] and out["queued_ok"]
    # Another fd and a timer are served while the runtime is busy, and an idle loop (nothing
    # but a pending accept) wakes for a socket another thread wrote.
    assert out["socket_during_flood"] == "during" and out["flooded"] > 0
    assert out["socket_when_idle"] == "idle"
    assert out["pending_after_cancel"] == 0 and out["after_cancel"] == "still here"
    assert out["bulk_digest_match"]
    # The selector ran the runtime (and so iroh): nothing else could have.
    assert out["drives"] > 1000


@pytest.mark.parametrize("client", ["client-loop-thread", "client-default"])
def test_two_processes(loop_thread_server: str, client: str) -> None:
    """A loop-thread server, and a client on either runtime. One request holds the server's
    loop for 0.3 s (so its networking too): the requests sent meanwhile are late, not lost."""
    out = child(client, loop_thread_server)
    assert out["kind"] == ("loop-thread" if client == "client-loop-thread" else "multi-thread")
    assert out["sequential_ok"]
    assert out["block"] == "block" and out["during_block_ok"]


def test_two_threads_take_turns() -> None:
    out = child("two-threads")
    assert out["alive"] == [False, False]
    assert out["results"] == {"t1": True, "t2": True}


def test_a_loop_that_does_not_run_iroh_is_refused() -> None:
    """Once the loop-thread runtime is chosen, a plain asyncio loop would wait forever for iroh:
    it gets RuntimeError, which names the entry point to use instead."""
    out = child("refuse-default-loop")
    assert out["enabled"] is True
    assert out["error"] is not None and 'iroh_pair.runtime.run(..., loop="loop-thread")' in out["error"]


def test_enable_after_the_default_runtime_started_is_refused() -> None:
    out = child("refuse-late-enable")
    assert out["kind"] == "multi-thread" and out["enabled"] is False
    assert out["error"] is not None and "multi-thread runtime" in out["error"]


def test_selector_needs_a_pollable_selector() -> None:
    import selectors

    from iroh_pair.runtime import LoopThreadSelector

    with pytest.raises(TypeError, match="fileno"):
        LoopThreadSelector(selectors.SelectSelector())
