"""The native transport over real iroh endpoints on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable
from pathlib import Path

import pytest

from iroh_pair import errors
from iroh_pair.protocol.constants import StreamErrorCode
from iroh_pair.runtime import debug_stats
from iroh_pair.runtime._bridge import get_bridge
from iroh_pair.transport import (
    Chunk,
    Connection,
    Endpoint,
    EndpointAddr,
    EndpointId,
    RecvStream,
    SecretKey,
    SendStream,
)

from helpers import ALPN


async def connected(a: Endpoint, b: Endpoint) -> tuple[Connection, Connection]:
    """b dials a; returns (a's side, b's side)."""
    accept = asyncio.ensure_future(a.accept())
    cb = await b.connect(a.addr(), ALPN, timeout=5)
    ca = await asyncio.wait_for(accept, 5)
    assert ca is not None
    return ca, cb


async def announced_stream(a: Endpoint, b: Endpoint) -> tuple[SendStream, RecvStream]:
    """b opens a stream to a and writes one byte, which a reads (a stream is announced to the
    peer by its first byte): (b's send half, a's receive half)."""
    ca, cb = await connected(a, b)
    send, _ = await cb.open_bi()
    await send.write_all(b"x")
    _, recv = await ca.accept_bi()
    assert await recv.read(1) == b"x"
    return send, recv


async def test_keys_ids_and_tickets() -> None:
    k = SecretKey.generate()
    k2 = SecretKey.from_bytes(k.to_bytes())
    assert k2.public() == k.public()
    eid = k.public()
    assert EndpointId.parse(str(eid)) == eid
    assert EndpointId.from_bytes(eid.to_bytes()) == eid
    assert len({eid, EndpointId.parse(str(eid))}) == 1
    other = SecretKey.generate().public()
    assert (eid < other) != (other < eid)
    addr = EndpointAddr(eid, ip_addrs=["127.0.0.1:4433"])
    assert EndpointAddr.from_ticket(addr.to_ticket()) == addr
    assert addr.without_ip_addrs().ip_addrs == []
    with pytest.raises(errors.InvalidKey):
        EndpointId.parse("not-an-id")
    with pytest.raises(errors.InvalidKey):
        SecretKey.from_bytes(b"short")
    with pytest.raises(errors.InvalidTicket):
        EndpointAddr.from_ticket("endpointgarbage")
    with pytest.raises(ValueError):  # typed errors for bad input are ValueErrors too
        EndpointAddr(eid, ip_addrs=["nonsense"])


async def test_echo_request_response(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    ca, cb = await connected(a, b)
    serving = ca.serve(lambda req: b"echo:" + req)
    assert await cb.request(b"hello", timeout=5) == b"echo:hello"
    assert cb.remote_id == a.id and ca.remote_id == b.id
    assert cb.side == "client" and ca.side == "server"
    assert cb.alpn == ALPN
    serving.cancel()


async def test_async_handler_and_handler_error(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    ca, cb = await connected(a, b)

    async def handler(req: bytes) -> bytes:
        await asyncio.sleep(0.001)
        if req == b"boom":
            raise RuntimeError("handler failed")
        return req.upper()

    serving = ca.serve(handler)
    assert await cb.request(b"abc", timeout=5) == b"ABC"
    with pytest.raises(errors.RemoteError) as e:
        await cb.request(b"boom", timeout=5)
    # the code is the enum member, and the message names it (not a bare number)
    assert e.value.code is StreamErrorCode.HANDLER_ERROR
    assert str(e.value) == "the peer refused the request: HANDLER_ERROR (3)"
    assert await cb.request(b"still usable", timeout=5) == b"STILL USABLE"
    serving.cancel()


async def test_thousand_sequential_streams_one_connection(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    ca, cb = await connected(a, b)
    serving = ca.serve(lambda req: req)
    for i in range(1000):
        body = i.to_bytes(4, "big")
        assert await cb.request(body, timeout=5) == body
    s = a.stats()
    assert s["connections_accepted"] == 1
    assert s["bi_streams_accepted"] == 1000
    assert s["requests_served"] == 1000
    assert b.stats()["connections_dialed"] == 1
    serving.cancel()


async def test_woken_operations_finish_on_the_loop_or_as_tasks(
    pair: tuple[Endpoint, Endpoint],
) -> None:
    """An operation that waits is polled once more by the loop when first woken: a request
    whose reply arrived completes there, with no tokio task. One that still waits goes on as a
    tokio task, as a large exact read does at once."""
    a, b = pair
    ca, cb = await connected(a, b)
    serving = ca.serve(lambda req: req)
    bridge = get_bridge()
    completed0, _, resumed0, spawned0 = bridge.native.counters()
    n = 200
    for i in range(n):
        assert await cb.request(i.to_bytes(4, "big"), timeout=5) == i.to_bytes(4, "big")
    completed, _, resumed, spawned = bridge.native.counters()
    assert completed - completed0 == 2 * n  # each request: served, then answered
    # The reply can come in two packets (data, then the end): then the second poll waits.
    assert resumed - resumed0 >= n // 2
    assert spawned - spawned0 <= n // 2
    serving.cancel()

    send, recv = await announced_stream(a, b)
    # Half of a small exact read arrives: the loop's poll finds it short, a task waits on.
    _, _, resumed, spawned = bridge.native.counters()
    reading = asyncio.ensure_future(recv.read_exact(2048))
    await asyncio.sleep(0)
    await send.write_all(b"a" * 1024)
    await asyncio.sleep(0.2)
    assert bridge.native.counters()[2:] == (resumed, spawned + 1)
    await send.write_all(b"b" * 1024)
    assert await asyncio.wait_for(reading, 5) == b"a" * 1024 + b"b" * 1024

    # An exact read over 64 KiB goes to a task at its first wake-up (4 MiB, over iroh's stream
    # window of 1.25 MB, could not all be there). The writer runs on a loop of its own (its own
    # bridge), so only the read counts here.
    _, _, resumed, spawned = bridge.native.counters()
    reading = asyncio.ensure_future(recv.read_exact(4 << 20))
    await asyncio.sleep(0)
    data = bytes(range(256)) * (4 << 12)
    writer = threading.Thread(target=lambda: asyncio.run(send.write_all(data)))
    writer.start()
    assert await asyncio.wait_for(reading, 10) == data
    writer.join(10)
    assert bridge.native.counters()[2:] == (resumed, spawned + 1)


async def test_answered_requests_cost_no_stop_and_reset(pair: tuple[Endpoint, Endpoint]) -> None:
    """A request is one frame and the end of its stream. The server reads that end before it
    lets the stream go, so iroh does not send STOP_SENDING, which the client would answer with
    a RESET_STREAM (two needless packets per request). A stream that goes on past its first
    frame is still stopped."""
    a, b = pair
    ca, cb = await connected(a, b)

    async def slow(req: bytes) -> bytes:  # answered through IncomingRequest.respond
        await asyncio.sleep(0)
        return req

    serving = ca.serve(lambda req: req)
    n = 200
    for i in range(n):
        assert await cb.request(i.to_bytes(4, "big"), timeout=5) == i.to_bytes(4, "big")
    serving.cancel()
    # The end of a request can arrive in a packet of its own, after the server answered:
    # then the stop is right. On loopback that is a few percent of requests, not all of them.
    assert ca.stats()["stop_sending_tx"] < n // 4
    assert cb.stats()["reset_stream_tx"] < n // 4

    ca2, cb2 = await connected(a, b)
    serving = ca2.serve(slow)
    for i in range(n):
        assert await cb2.request(b"q%d" % i, timeout=5) == b"q%d" % i
    assert ca2.stats()["stop_sending_tx"] < n // 4

    # More after the first frame: the server wants none of it and stops the stream.
    send, recv = await cb2.open_bi()
    await send.write_frame(b"question")
    await send.write_all(b"and more that nobody reads")
    assert await recv.read_to_end(100) == b"question"
    assert await asyncio.wait_for(send.stopped(), 5) == 0
    serving.cancel()


async def test_five_thousand_concurrent_requests(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    ca, cb = await connected(a, b)
    serving = ca.serve(lambda req: req[::-1])
    payloads = [os.urandom(200) for _ in range(5000)]
    replies = await asyncio.gather(*(cb.request(p, timeout=60) for p in payloads))
    assert replies == [p[::-1] for p in payloads]
    assert a.stats()["bi_streams_accepted"] == 5000
    assert a.stats()["connections_accepted"] == 1
    serving.cancel()


async def test_64_mib_on_one_stream(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    ca, cb = await connected(a, b)
    total = 64 * 1024 * 1024
    chunk = os.urandom(1 << 20)
    expected = hashlib.sha256()

    async def receiver() -> tuple[int, str]:
        send, recv = await ca.accept_bi()
        h = hashlib.sha256()
        n = 0
        while data := await recv.read(1 << 20):
            h.update(data)
            n += len(data)
        send.finish()
        return n, h.hexdigest()

    task = asyncio.ensure_future(receiver())
    send, _recv = await cb.open_bi()
    for _ in range(64):
        await send.write_all(chunk)
        expected.update(chunk)
    send.finish()
    n, digest = await asyncio.wait_for(task, 60)
    assert n == total
    assert digest == expected.hexdigest()


async def test_frames_and_exact_reads(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    ca, cb = await connected(a, b)
    send, recv = await cb.open_bi()
    await send.write_frame(b"one")
    await send.write_frame(b"")
    await send.write_all(b"raw-tail")
    send.finish()
    s2, r2 = await ca.accept_bi()
    assert await r2.read_frame(100) == b"one"
    assert await r2.read_frame(100) == b""
    assert await r2.read_exact(3) == b"raw"
    with pytest.raises(errors.TruncatedFrame):
        await r2.read_exact(100)
    s2.finish()
    assert await recv.read_to_end(10) == b""

    # Many packets each: frames, exact reads and read_to_end join them in order; past the
    # limit read_to_end refuses.
    big = os.urandom(300_000)
    send, _ = await cb.open_bi()
    await send.write_frame(big)
    await send.write_all(big)
    await send.write_all(big)
    send.finish()
    _, r3 = await ca.accept_bi()
    assert await r3.read_frame(len(big)) == big
    assert await r3.read_exact(len(big)) == big
    assert await r3.read_to_end(len(big)) == big
    send, _ = await cb.open_bi()
    await send.write_all(big)
    send.finish()
    _, r4 = await ca.accept_bi()
    with pytest.raises(errors.FrameTooLarge):
        await r4.read_to_end(len(big) - 1)


async def test_frames_at_block_edges_sent_in_pieces(pair: tuple[Endpoint, Endpoint]) -> None:
    # A frame body is gathered, as it arrives, into owned blocks of 64 KiB (frame.rs,
    # read_body): sizes around the block edges, written in uneven pieces, come back intact,
    # through read_frame and through the serve loop.
    a, b = pair
    ca, cb = await connected(a, b)
    sizes = [1, 65535, 65536, 65537, 2 * 65536, 2 * 65536 + 1, 5 * 65536 - 7]
    bodies = [os.urandom(n) for n in sizes]
    send, _ = await cb.open_bi()
    stream = b"".join(len(x).to_bytes(4, "big") + x for x in bodies)
    for i in range(0, len(stream), 999):
        await send.write_all(stream[i : i + 999])
    send.finish()
    _, r = await ca.accept_bi()
    for x in bodies:
        assert await r.read_frame(1 << 20) == x
    assert await r.read_frame(1 << 20) is None

    got: list[bytes] = []

    def handler(req: bytes) -> bytes:
        got.append(req)
        return b"ok"

    serving = ca.serve(handler, max_request=1 << 20)
    for x in bodies:
        assert await cb.request(x, timeout=10) == b"ok"
    assert got == bodies
    serving.cancel()


async def test_read_n_never_returns_more_than_n(pair: tuple[Endpoint, Endpoint]) -> None:
    # A read waiting when data arrives completes at its first wake-up (polled again by the loop,
    # or as a tokio task), then takes what landed meanwhile (on the loop's thread): up to n
    # bytes in all, in order, and the end only after the data.
    send, recv = await announced_stream(*pair)
    for n, size in ((5000, 300_000), (1, 3000), (70_000, 300_000)):
        data = os.urandom(size)
        first = asyncio.ensure_future(recv.read(n))
        await asyncio.sleep(0.02)
        assert not first.done()
        await send.write_all(data)
        got = [await first]
        total = len(got[0])
        while total < size:
            got.append(await recv.read(n))
            total += len(got[-1])
        assert all(0 < len(g) <= n for g in got), (n, sorted({len(g) for g in got})[-3:])
        assert b"".join(got) == data
    send.finish()
    assert await recv.read(10) == b""


async def test_concurrent_reads_keep_the_order(pair: tuple[Endpoint, Endpoint]) -> None:
    # Two reads waiting on one stream: the first must not top up with bytes that come after
    # what the second one took.
    send, recv = await announced_stream(*pair)
    data = os.urandom(2_000_000)
    for _ in range(5):
        first = asyncio.ensure_future(recv.read(1 << 20))
        second = asyncio.ensure_future(recv.read(1 << 20))
        await asyncio.sleep(0.02)
        writer = asyncio.ensure_future(send.write_all(data))  # more than the stream's window
        got = [await first, await second]
        total = sum(map(len, got))
        while total < len(data):
            got.append(await recv.read(1 << 20))
            total += len(got[-1])
        await writer
        assert b"".join(got) == data
    send.finish()
    assert await recv.read(10) == b""


def test_chunk_is_read_only_bytes_like() -> None:
    data = os.urandom(100_000)
    c = Chunk(data)
    assert len(c) == len(data) and bytes(c) == data and c == data and c == Chunk(c)
    assert c == bytearray(data) and c != data[:-1] and c != 3
    assert memoryview(c).tobytes() == data and memoryview(c).readonly
    assert hashlib.sha256(c).digest() == hashlib.sha256(data).digest()
    with pytest.raises(TypeError):
        memoryview(c)[0] = 0
    with pytest.raises(TypeError):
        hash(c)  # compares by content like bytearray, so unhashable
    with pytest.raises(TypeError):
        Chunk(3)  # type: ignore[arg-type]
    src = bytearray(b"abc")
    copied = Chunk(src)
    src[0] = ord("z")  # a chunk is a copy of a mutable buffer, never a view of it
    assert copied == b"abc" and repr(copied) == "Chunk(3 bytes)"
    assert Chunk(memoryview(b"abcdef")[::2]) == b"ace"  # non-contiguous buffers too


async def test_read_chunks_and_write_a_chunk_without_a_copy(pair: tuple[Endpoint, Endpoint]) -> None:
    # read_chunks gives up to n bytes, in order, as the chunks iroh received, [] at the end;
    # the same chunks written to another stream arrive intact (forwarding), and a Chunk written
    # many times (a bulk sender's one buffer) arrives every time.
    a, b = pair
    ca, cb = await connected(a, b)
    send, _ = await cb.open_bi()
    data = os.urandom(3_000_000)
    writer = asyncio.ensure_future(send.write_all(data))
    _, recv = await ca.accept_bi()
    fwd_send, _ = await ca.open_bi()
    await fwd_send.write_all(b"F")
    _, fwd_recv = await cb.accept_bi()
    forwarded = asyncio.ensure_future(fwd_recv.read_to_end(len(data) + 1))
    reads: list[list[Chunk]] = []
    while sum(len(c) for r in reads for c in r) < len(data):
        reads.append(await recv.read_chunks(100_000))
        assert reads[-1] and sum(map(len, reads[-1])) <= 100_000
        for c in reads[-1]:
            await fwd_send.write_all(c)
    await writer
    send.finish()
    assert await recv.read_chunks() == []
    assert b"".join(bytes(c) for r in reads for c in r) == data
    fwd_send.finish()
    assert await asyncio.wait_for(forwarded, 10) == b"F" + data

    block = Chunk(os.urandom(1 << 20))
    send2, _ = await cb.open_bi()

    async def write() -> None:
        for _ in range(8):
            await send2.write_all(block)
        await send2.write_frame(block)
        send2.finish()

    writing = asyncio.ensure_future(write())
    _, r2 = await ca.accept_bi()
    async with asyncio.timeout(20):
        assert await r2.read_exact(8 << 20) == bytes(block) * 8
        assert await r2.read_frame(2 << 20) == bytes(block)
        assert await r2.read_chunks() == []
        await writing


async def test_read_frame_too_large_before_allocating(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    ca, cb = await connected(a, b)
    send, _ = await cb.open_bi()
    # A 4 GiB length prefix: allocating it would be visible; the error must come first.
    await send.write_all(b"\xff\xff\xff\xff" + b"x" * 10)
    _, r = await ca.accept_bi()
    with pytest.raises(errors.FrameTooLarge) as e:
        await r.read_frame(1024)
    assert e.value.length == 0xFFFFFFFF and e.value.limit == 1024


async def test_truncated_frame(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    ca, cb = await connected(a, b)
    send, _ = await cb.open_bi()
    await send.write_all(b"\x00\x00\x00\x10" + b"only-ten!!")
    send.finish()
    _, r = await ca.accept_bi()
    with pytest.raises(errors.TruncatedFrame):
        await r.read_frame(1024)
    send2, _ = await cb.open_bi()
    await send2.write_all(b"\x00\x00")
    send2.finish()
    _, r2 = await ca.accept_bi()
    with pytest.raises(errors.TruncatedFrame):
        await r2.read_frame(1024)


async def test_oversized_request_is_refused(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    ca, cb = await connected(a, b)
    seen: list[bytes] = []

    def handler(req: bytes) -> bytes:
        seen.append(req)
        return b"ok"

    serving = ca.serve(handler, max_request=1000)
    with pytest.raises(errors.RemoteError):
        await cb.request(b"x" * 5000, timeout=5)
    assert await cb.request(b"small", timeout=5) == b"ok"
    assert seen == [b"small"]
    with pytest.raises(errors.FrameTooLarge):
        await cb.request(b"small", max_response=1, timeout=5)
    serving.cancel()


async def test_close_code_and_reason_seen_by_peer(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    ca, cb = await connected(a, b)
    cb.close(42, b"done here")
    info = await asyncio.wait_for(ca.closed(), 5)
    assert info.code == 42
    assert info.reason == b"done here"
    assert info.by_peer
    assert ca.is_closed
    with pytest.raises(errors.ConnectionLost) as e:
        await ca.open_bi()
    assert e.value.code == 42


async def test_endpoint_close_returns_tasks_to_baseline() -> None:
    await asyncio.sleep(0.2)
    gc.collect()
    baseline = debug_stats()["live_tasks"]
    a = await Endpoint.bind(alpns=[ALPN])
    b = await Endpoint.bind(alpns=[ALPN])
    ca, cb = await connected(a, b)
    serving = ca.serve(lambda r: r)
    for _ in range(20):
        await cb.request(b"x", timeout=5)
    events = cb.path_events()
    first = await asyncio.wait_for(anext(events), 5)
    assert first.event == "snapshot"
    assert [p.kind for p in first.paths] == ["direct"] and first.paths[0].selected
    assert debug_stats()["live_tasks"] > baseline
    await b.close()
    await a.close()
    await asyncio.wait_for(serving, 5)
    await events.aclose()
    del ca, cb, events
    deadline = time.monotonic() + 10
    while debug_stats()["live_tasks"] > baseline and time.monotonic() < deadline:
        gc.collect()
        await asyncio.sleep(0.05)
    assert debug_stats()["live_tasks"] <= baseline
    assert debug_stats()["pending_tokens"] == 0


async def test_dial_silent_udp_port_times_out() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    try:
        async with await Endpoint.bind() as ep:
            target = EndpointAddr(SecretKey.generate().public(), ip_addrs=[f"127.0.0.1:{port}"])
            t = time.monotonic()
            with pytest.raises(errors.Timeout):
                await ep.connect(target, ALPN, timeout=1.0)
            assert time.monotonic() - t < 3.0
    finally:
        sock.close()


async def test_dial_unknown_id_fails_at_once() -> None:
    async with await Endpoint.bind() as ep:
        t = time.monotonic()
        with pytest.raises(errors.ConnectError):
            await ep.connect(SecretKey.generate().public(), ALPN, timeout=10.0)
        assert time.monotonic() - t < 2.0


async def test_wrong_alpn_is_a_connect_error(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    accepting = asyncio.ensure_future(a.accept())  # handshakes progress only while accepting
    with pytest.raises(errors.ConnectError):
        await b.connect(a.addr(), b"not-served/1", timeout=5)
    for _ in range(100):  # the server side counts it on its own schedule
        if a.stats()["handshakes_failed"]:
            break
        await asyncio.sleep(0.02)
    assert a.stats()["handshakes_failed"] == 1
    assert not accepting.done()  # the failed handshake is not handed out as a connection
    accepting.cancel()


async def test_cancelled_read_leaves_connection_usable(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    ca, cb = await connected(a, b)
    send, recv = await cb.open_bi()
    await send.write_all(b"ping")
    _, r2 = await ca.accept_bi()
    assert await r2.read_exact(4) == b"ping"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await r2.read(10)  # nothing more is coming
    assert debug_stats()["pending_tokens"] == 0
    serving = ca.serve(lambda req: req)
    assert await cb.request(b"after", timeout=5) == b"after"
    serving.cancel()


async def test_cancelled_write_resets_stream(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    ca, cb = await connected(a, b)
    send, _ = await cb.open_bi()
    await send.write_all(b"start")
    _, r2 = await ca.accept_bi()
    big = b"z" * (64 << 20)  # far beyond the flow-control window: blocks while nobody reads
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await send.write_all(big)
    received = 0
    with pytest.raises(errors.StreamReset) as e:
        while data := await r2.read(1 << 20):
            received += len(data)
    assert e.value.code == StreamErrorCode.CANCELLED
    assert received < len(big)
    assert debug_stats()["pending_tokens"] == 0


async def test_cancelled_request_never_delivers_truncated(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    ca, cb = await connected(a, b)
    seen: list[int] = []

    def handler(req: bytes) -> bytes:
        seen.append(len(req))
        return b"ok"

    serving = ca.serve(handler, max_request=128 << 20)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await cb.request(b"q" * (64 << 20))
    assert await cb.request(b"next", timeout=10) == b"ok"
    assert all(n in (4, 64 << 20) for n in seen), seen
    serving.cancel()


async def test_request_is_a_future_started_at_once(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    ca, cb = await connected(a, b)
    seen: list[bytes] = []
    gate = asyncio.Event()

    async def held(req: bytes) -> bytes:
        await gate.wait()
        return req

    def handler(req: bytes) -> bytes | Awaitable[bytes]:
        seen.append(req)
        return held(req) if req == b"cancel me" else req + b"!"

    serving = ca.serve(handler)
    fut = cb.request(b"eager", timeout=5)
    assert isinstance(fut, asyncio.Future)
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert seen == [b"eager"], "the request went out before anyone awaited it"
    assert await fut == b"eager!"
    # An argument refused while starting fails the future, not the call.
    bad = cb.request(b"x", timeout=-1.0)
    with pytest.raises(ValueError, match="timeout"):
        await bad
    # Cancelling the future itself aborts the request: its stream is reset, never finished.
    stuck = cb.request(b"cancel me", timeout=5)
    while b"cancel me" not in seen and time.monotonic() < deadline + 5:
        await asyncio.sleep(0.01)
    assert stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    deadline = time.monotonic() + 5
    while debug_stats()["pending_tokens"] > 1 and time.monotonic() < deadline:  # 1: the serve loop
        await asyncio.sleep(0.01)
    assert debug_stats()["pending_tokens"] == 1
    assert await cb.request(b"after", timeout=5) == b"after!"
    gate.set()
    serving.cancel()


async def test_request_timeout_is_typed(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    ca, cb = await connected(a, b)

    async def slow(req: bytes) -> bytes:
        await asyncio.sleep(5)
        return req

    serving = ca.serve(slow)
    with pytest.raises(errors.Timeout):
        await cb.request(b"x", timeout=0.2)
    serving.cancel()


async def test_dropped_send_stream_is_reset_not_finished(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    ca, cb = await connected(a, b)
    send, _ = await cb.open_bi()
    await send.write_all(b"partial message")
    del send
    gc.collect()
    _, r2 = await ca.accept_bi()
    with pytest.raises(errors.StreamReset) as e:
        await r2.read_to_end(1000)
    assert e.value.code == StreamErrorCode.DROPPED


async def test_ten_thousand_cancelled_requests_leak_nothing(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    ca, cb = await connected(a, b)
    gate = asyncio.Event()

    async def stuck(req: bytes) -> bytes:
        await gate.wait()
        return req

    serving = ca.serve(stuck)
    await asyncio.sleep(0.1)
    baseline = debug_stats()["live_tasks"]
    pending_baseline = debug_stats()["pending_tokens"]  # the serve loop's own subscription
    assert pending_baseline == 1
    tasks = [asyncio.ensure_future(cb.request(b"x" * 200)) for _ in range(10_000)]
    await asyncio.sleep(0.2)
    for t in tasks:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        s = debug_stats()
        if s["pending_tokens"] == pending_baseline and s["live_tasks"] <= baseline:
            break
        await asyncio.sleep(0.05)
    s = debug_stats()
    assert s["pending_tokens"] == pending_baseline
    assert s["live_tasks"] <= baseline
    gate.set()
    assert await cb.request(b"alive", timeout=5) == b"alive"
    serving.cancel()


def _one_loop_exchange() -> bytes:
    async def main() -> bytes:
        a = await Endpoint.bind(alpns=[ALPN])
        b = await Endpoint.bind(alpns=[ALPN])
        ca, cb = await connected(a, b)
        serving = ca.serve(lambda r: r + b"!")
        r = await cb.request(b"loop", timeout=5)
        serving.cancel()
        await b.close()
        await a.close()
        return r

    return asyncio.run(main())


def test_two_loops_in_sequence() -> None:
    assert _one_loop_exchange() == b"loop!"
    assert _one_loop_exchange() == b"loop!"


def test_two_threads_each_with_its_own_loop() -> None:
    results: list[bytes] = []
    errors_seen: list[BaseException] = []

    def run() -> None:
        try:
            results.append(_one_loop_exchange())
        except BaseException as e:  # noqa: BLE001 - reported below
            errors_seen.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors_seen
    assert results == [b"loop!", b"loop!"]


CHILD = """
import asyncio, sys
from iroh_pair.transport import Endpoint
ALPN = b"child/1"
async def main():
    a = await Endpoint.bind(alpns=[ALPN])
    b = await Endpoint.bind()
    acc = asyncio.ensure_future(a.accept())
    cb = await b.connect(a.addr(), ALPN, timeout=5)
    ca = await acc
    ca.serve(lambda r: r)
    assert await cb.request(b"hi", timeout=5) == b"hi"
asyncio.run(main())
"""


def test_fifty_processes_bind_connect_exchange_exit() -> None:
    for i in range(50):
        t = time.monotonic()
        p = subprocess.run(
            [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=10
        )
        assert p.returncode == 0, (i, p.stderr)
        assert time.monotonic() - t < 10
        for bad in ("panicked", "Fatal Python error", "Exception ignored"):
            assert bad not in p.stderr, (i, p.stderr)


def _run_node(rust_node: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(rust_node), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


async def test_raw_streams_with_plain_rust_peer_python_dials(rust_node: Path) -> None:
    proc = _run_node(rust_node, "echo", "--alpn", ALPN.decode())
    try:
        assert proc.stdout is not None
        ready = json.loads(await asyncio.to_thread(proc.stdout.readline))
        async with await Endpoint.bind() as ep:
            conn = await ep.connect(ready["ticket"], ALPN, timeout=5)
            assert str(conn.remote_id) == ready["id"]
            data = os.urandom(3_000_017)
            send, recv = await conn.open_bi()

            async def write() -> None:
                for i in range(0, len(data), 65_521):
                    await send.write_all(data[i : i + 65_521])
                send.finish()

            _, back = await asyncio.gather(write(), recv.read_to_end(len(data)))
            assert back == data  # exactly the bytes written: no framing imposed
            conn.close(0, b"done")
    finally:
        proc.kill()
        proc.wait()


async def test_raw_streams_with_plain_rust_peer_rust_dials(rust_node: Path) -> None:
    async with await Endpoint.bind(alpns=[ALPN]) as ep:

        async def echo_server() -> int:
            conn = await ep.accept()
            assert conn is not None
            send, recv = await conn.accept_bi()
            n = 0
            while data := await recv.read(65536):
                await send.write_all(data)
                n += len(data)
            send.finish()
            await conn.closed()
            return n

        server = asyncio.ensure_future(echo_server())
        p = await asyncio.create_subprocess_exec(
            str(rust_node), "send-raw", ep.ticket(), "--alpn", ALPN.decode(), "--bytes", "2000003",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(p.communicate(), 30)
        assert p.returncode == 0, err
        line = json.loads(out.decode().strip().splitlines()[-1])
        assert line == {"event": "sent", "bytes": 2000003, "echoed": 2000003, "match": True}
        assert await asyncio.wait_for(server, 10) == 2000003
