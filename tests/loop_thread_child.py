"""Scenarios for tests/test_loop_thread.py, each in a process of its own (the runtime is chosen
once per process): ``python tests/loop_thread_child.py SCENARIO [TICKET]``. Prints one JSON
line with what it saw; the test asserts on it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sys
import threading
import time
from typing import Any

from helpers import socket_read_during_flood  # tests/ is on sys.path: this file is run as a script
from iroh_pair import _native, runtime
from iroh_pair.runtime import LoopThreadSelector, debug_stats
from iroh_pair.transport import Connection, Endpoint

ALPN = b"iroh-pair-test/1"
BULK_ALPN = b"iroh-pair-test/bulk"


def echo_or_block(req: bytes) -> bytes:
    """Echoes; ``block`` first holds the loop for 0.3 s (a misbehaving callback)."""
    if req == b"block":
        time.sleep(0.3)
    return req


async def served_pair() -> tuple[Endpoint, Endpoint, Connection]:
    a = await Endpoint.bind(alpns=[ALPN, BULK_ALPN])
    b = await Endpoint.bind()
    accept = asyncio.ensure_future(a.accept())
    cb = await b.connect(a.addr(), ALPN, timeout=5)
    ca = await asyncio.wait_for(accept, 5)
    assert ca is not None
    ca.serve(echo_or_block)
    return a, b, cb


async def bulk(a: Endpoint, b: Endpoint, size: int) -> tuple[str, str]:
    """``size`` random bytes on one stream; the server replies with their sha256."""

    async def server() -> str:
        conn = await a.accept()
        assert conn is not None
        send, recv = await conn.accept_bi()
        digest = hashlib.sha256(await recv.read_to_end(size)).hexdigest()
        await send.write_all(digest.encode())
        send.finish()
        await conn.closed()
        return digest

    serving = asyncio.ensure_future(server())
    data = os.urandom(size)
    conn = await b.connect(a.addr(), BULK_ALPN, timeout=5)
    send, recv = await conn.open_bi()
    await send.write_all(data)
    send.finish()
    got = (await recv.read_to_end(100)).decode()
    conn.close(7, b"bye")  # the side that read last closes
    await asyncio.wait_for(serving, 10)
    assert got == hashlib.sha256(data).hexdigest()
    return got, serving.result()


async def one_process() -> dict[str, Any]:
    a, b, conn = await served_pair()
    loop = asyncio.get_running_loop()
    out: dict[str, Any] = {"kind": _native.runtime_kind(), "workers": _native._debug_stats()["workers"]}
    out["echo"] = (await conn.request(b"hello", timeout=5)).decode()
    out["sequential_ok"] = all(
        [await conn.request(i.to_bytes(4, "big"), timeout=5) == i.to_bytes(4, "big") for i in range(1000)]
    )
    payloads = [i.to_bytes(4, "big") for i in range(2000)]
    out["queued_ok"] = await asyncio.gather(*(conn.request(p, timeout=20) for p in payloads)) == payloads

    # A timer and a plain socket are served while requests keep the runtime busy.
    got, out["flooded"] = await socket_read_during_flood(conn, b"during")
    out["socket_during_flood"] = got.decode()

    # An idle loop (only an accept pending, no timer) wakes for a socket written by a thread.
    left, right = socket.socketpair()
    left.setblocking(False)
    accepting = asyncio.ensure_future(a.accept())
    threading.Timer(0.05, right.send, (b"idle",)).start()
    async with asyncio.timeout(10):
        out["socket_when_idle"] = (await loop.sock_recv(left, 16)).decode()
    accepting.cancel()
    left.close()
    right.close()

    # Cancelled requests: nothing left behind, the connection still works.
    base = debug_stats()["pending_tokens"]
    for _ in range(200):
        f = conn.request(b"x" * 100, timeout=5)
        f.cancel()
    await asyncio.sleep(0.2)
    out["pending_after_cancel"] = debug_stats()["pending_tokens"] - base
    out["after_cancel"] = (await conn.request(b"still here", timeout=5)).decode()

    sent, seen = await bulk(a, b, 8 << 20)
    out["bulk_digest_match"] = sent == seen
    conn.close(3, b"done")
    await b.close()
    await a.close()
    sel = runtime.selector_of()
    out["drives"] = sel.drives if isinstance(sel, LoopThreadSelector) else 0
    return out


async def serve(ticket_out: bool = True) -> None:
    """Echo server: prints its ticket, serves until stdin closes."""
    async with await Endpoint.bind(alpns=[ALPN]) as ep:
        print(json.dumps({"ticket": ep.ticket(), "kind": _native.runtime_kind()}), flush=True)

        async def accept_all() -> None:
            while (conn := await ep.accept()) is not None:
                conn.serve(echo_or_block)

        accepting = asyncio.ensure_future(accept_all())
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        accepting.cancel()


async def client(ticket: str) -> dict[str, Any]:
    async with await Endpoint.bind() as ep:
        conn = await ep.connect(ticket, ALPN, timeout=5)
        ok = all([await conn.request(i.to_bytes(4, "big"), timeout=5) == i.to_bytes(4, "big") for i in range(500)])
        # One request holds the server's loop (and so its networking) for 0.3 s; the ones sent
        # meanwhile are late, not lost.
        blocked = conn.request(b"block", timeout=10)
        others = [i.to_bytes(4, "big") for i in range(50)]
        during = await asyncio.gather(*(conn.request(p, timeout=10) for p in others))
        out = {"sequential_ok": ok, "block": (await blocked).decode(), "during_block_ok": during == others}
        conn.close(0, b"")
        return {"kind": _native.runtime_kind(), **out}


def two_threads() -> dict[str, Any]:
    """Two threads, each with its own loop-thread loop and endpoints: they take turns running
    the one runtime, and both finish."""
    results: dict[str, bool] = {}

    async def job(name: str) -> None:
        a, b, conn = await served_pair()
        msgs = [f"{name}{i}".encode() for i in range(300)]
        results[name] = [await conn.request(m, timeout=5) for m in msgs] == msgs
        await b.close()
        await a.close()

    threads = [threading.Thread(target=run_loop_thread, args=(job(n),)) for n in ("t1", "t2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return {"alive": [t.is_alive() for t in threads], "results": results}


def run_loop_thread(main: Any) -> Any:
    """Runs ``main`` on a loop-thread loop (the runtime's entry point)."""
    return runtime.run(main, loop="loop-thread")


def enable() -> None:
    """Chooses the loop-thread runtime for this process, before any loop runs."""
    runtime.new_event_loop("loop-thread").close()


def refuse_default_loop() -> dict[str, Any]:
    enable()
    try:
        asyncio.run(Endpoint.bind())
    except RuntimeError as e:
        return {"error": str(e), "enabled": runtime.kind() == "loop-thread"}
    return {"error": None}


def refuse_late_enable() -> dict[str, Any]:
    async def use() -> None:
        await (await Endpoint.bind()).close()

    asyncio.run(use())
    try:
        enable()
    except RuntimeError as e:
        return {"error": str(e), "kind": _native.runtime_kind(), "enabled": runtime.kind() == "loop-thread"}
    return {"error": None}


def main() -> None:
    scenario = sys.argv[1]
    out: Any
    if scenario == "one-process":
        out = run_loop_thread(one_process())
    elif scenario == "serve":
        run_loop_thread(serve())
        return
    elif scenario == "client-loop-thread":
        out = run_loop_thread(client(sys.argv[2]))
    elif scenario == "client-default":
        out = asyncio.run(client(sys.argv[2]))
    elif scenario == "two-threads":
        out = two_threads()
    elif scenario == "refuse-default-loop":
        out = refuse_default_loop()
    elif scenario == "refuse-late-enable":
        out = refuse_late_enable()
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
