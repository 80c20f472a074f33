"""Per-kind first-frame limits in the native serve loop (``KindLimits``) and the concurrent
stream cap, over real iroh endpoints on 127.0.0.1 (docs/PROTOCOL.md §2, §9.1, §10.3)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest

from iroh_pair import errors
from iroh_pair.protocol.constants import StreamErrorCode
from iroh_pair.transport import (
    Connection,
    Endpoint,
    IncomingStream,
    KindLimits,
    NetworkOptions,
    RecvStream,
    SendStream,
)

from helpers import ALPN

PAIR_LIMIT = 64 * 1024 + 64


def header(kind: str, version: int = 1) -> bytes:
    k = kind.encode()
    return bytes([version, len(k)]) + k


def frame(body: bytes, declared: int | None = None) -> bytes:
    n = len(body) if declared is None else declared
    return n.to_bytes(4, "big") + body


async def connected(a: Endpoint, b: Endpoint) -> tuple[Connection, Connection]:
    """b dials a; returns (a's side, b's side)."""
    accept = asyncio.ensure_future(a.accept())
    cb = await b.connect(a.addr(), ALPN, timeout=5)
    ca = await asyncio.wait_for(accept, 5)
    assert ca is not None
    return ca, cb


class Served:
    """Collects the streams the serve loop hands over, answering each with b"ok"."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.arrived = asyncio.Event()

    def __call__(self, s: IncomingStream) -> None:
        self.frames.append(s.first_frame)
        s.respond(b"ok")
        self.arrived.set()


async def refusal(send: SendStream, recv: RecvStream) -> int:
    """The code the acceptor refused the stream with: its RESET_STREAM on our receive half,
    checked against its STOP_SENDING on our send half."""
    with pytest.raises(errors.StreamReset) as e:
        await asyncio.wait_for(recv.read(10), 10)
    stopped = await asyncio.wait_for(send.stopped(), 10)
    assert stopped == e.value.code
    return e.value.code


@pytest.fixture
async def served() -> AsyncIterator[tuple[Connection, Connection, KindLimits, Served]]:
    a = await Endpoint.bind(alpns=[ALPN])
    b = await Endpoint.bind(alpns=[ALPN])
    try:
        ca, cb = await connected(a, b)
        limits = KindLimits(0, {"pair2": PAIR_LIMIT, "msg": 1 << 20}, frame_timeout=30.0)
        on = Served()
        serving = ca.serve_streams(on, kind_limits=limits)
        yield ca, cb, limits, on
        serving.cancel()
    finally:
        await b.close()
        await a.close()


def test_kind_limits_object() -> None:
    k = KindLimits(100, {"pair2": 7}, frame_timeout=2.5)
    assert (k.get("pair2"), k.get("other"), k.default, k.frame_timeout) == (7, 100, 100, 2.5)
    k.set("msg", 0)
    k.set_default(5)
    k.set_frame_timeout(1.0)
    assert k.per_kind == {"pair2": 7, "msg": 0}
    assert (k.get("msg"), k.get("other"), k.frame_timeout) == (0, 5, 1.0)
    k.unset("msg")
    assert k.get("msg") == 5
    for bad in ("", "Pair", "a" * 33, "pa ir", "é"):
        with pytest.raises(ValueError):
            k.set(bad, 1)
    with pytest.raises(ValueError):
        KindLimits(1, {"UPPER": 1})
    for t in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            k.set_frame_timeout(t)
    with pytest.raises(OverflowError):
        k.set("x", -1)
    assert "pair2" in repr(k)


async def test_admitted_frame_is_handed_over_unchanged(
    served: tuple[Connection, Connection, KindLimits, Served],
) -> None:
    _, cb, _, on = served
    body = header("pair2") + b"M1" * 1000
    # exactly at the limit (the limit counts the header too)
    big = header("pair2") + b"x" * (PAIR_LIMIT - len(header("pair2")))
    for first in (body, big):
        send, recv = await cb.open_bi()
        await send.write_all(frame(first))
        send.finish()
        assert await asyncio.wait_for(recv.read_to_end(10), 10) == b"ok"
    assert on.frames == [body, big]


@pytest.mark.parametrize(
    "raw, expected",
    [
        # bad envelopes: version, kind length 0 and 33, a character outside [a-z0-9._-],
        # a frame too short for its header, a frame of 0 and 1 bytes
        (frame(header("pair2", version=2) + b"M1"), StreamErrorCode.BAD_ENVELOPE),
        (frame(bytes([1, 0]) + b"M1"), StreamErrorCode.BAD_ENVELOPE),
        (frame(bytes([1, 33]) + b"a" * 33), StreamErrorCode.BAD_ENVELOPE),
        (frame(bytes([1, 5]) + b"Pair2" + b"M1"), StreamErrorCode.BAD_ENVELOPE),
        (frame(bytes([1, 5]) + b"pa\x002"), StreamErrorCode.BAD_ENVELOPE),
        (frame(bytes([1, 5]) + b"pai", declared=5), StreamErrorCode.BAD_ENVELOPE),
        (frame(b""), StreamErrorCode.BAD_ENVELOPE),
        (frame(b"\x01"), StreamErrorCode.BAD_ENVELOPE),
        # a kind whose limit is 0 (the default here), declared 16 MiB with no body sent: refused
        # on the header alone
        (frame(header("sync"), declared=16 << 20), StreamErrorCode.NOT_ADMITTED),
        (frame(header("pair2"), declared=PAIR_LIMIT + 1), StreamErrorCode.FRAME_TOO_LARGE),
        (frame(header("msg"), declared=(1 << 20) + 1), StreamErrorCode.FRAME_TOO_LARGE),
        (frame(header("pair2"), declared=0xFFFFFFFF), StreamErrorCode.FRAME_TOO_LARGE),
    ],
)
async def test_each_refusal_code_reaches_the_opener(
    served: tuple[Connection, Connection, KindLimits, Served], raw: bytes, expected: int
) -> None:
    ca, cb, _, on = served
    send, recv = await cb.open_bi()
    await send.write_all(raw)  # no finish: the acceptor decides on what it has
    assert await refusal(send, recv) == expected
    assert on.frames == []
    assert not ca.is_closed and not cb.is_closed  # a refused stream does not close anything


async def test_truncated_first_frame_is_frame_too_large(
    served: tuple[Connection, Connection, KindLimits, Served],
) -> None:
    _, cb, _, on = served
    for raw in (frame(header("pair2") + b"M1", declared=100), b"\x00\x00\x00\x10\x01\x05pa"):
        send, recv = await cb.open_bi()
        await send.write_all(raw)
        send.finish()
        with pytest.raises(errors.StreamReset) as e:
            await asyncio.wait_for(recv.read(10), 10)
        assert e.value.code == StreamErrorCode.FRAME_TOO_LARGE
    assert on.frames == []


async def test_not_admitted_is_decided_before_the_body(
    served: tuple[Connection, Connection, KindLimits, Served],
) -> None:
    ca, cb, _, _ = served
    # The body never comes and the frame timeout is 30 s: a refusal within 10 s can only have
    # been decided on the header. The acceptor received only the header's few bytes.
    rx_before = ca.stats()["stream_frames_rx"]
    send, recv = await cb.open_bi()
    await send.write_all(frame(header("sync"), declared=1 << 24))
    assert await refusal(send, recv) == StreamErrorCode.NOT_ADMITTED
    # and what the opener sends after the refusal is not taken
    with pytest.raises(errors.StreamReset):
        for _ in range(100):
            await asyncio.wait_for(send.write_all(b"y" * 65536), 10)
    assert ca.stats()["stream_frames_rx"] - rx_before < 40


async def test_stalled_first_frame_is_reset_with_timeout(
    served: tuple[Connection, Connection, KindLimits, Served],
) -> None:
    ca, cb, limits, on = served
    limits.set_frame_timeout(0.6)
    # Half a frame, then silence; and a frame trickled one byte at a time, every 0.1 s, which
    # never stalls for long but does not arrive whole in time either.
    stalled_send, stalled_recv = await cb.open_bi()
    t0 = time.monotonic()
    await stalled_send.write_all(frame(header("pair2") + b"x" * 100, declared=200))

    trickle_send, trickle_recv = await cb.open_bi()
    whole = frame(header("pair2") + b"y" * 40)

    async def trickle() -> None:
        for i in range(len(whole)):
            await trickle_send.write_all(whole[i : i + 1])
            await asyncio.sleep(0.1)

    task = asyncio.ensure_future(trickle())
    try:
        assert await refusal(stalled_send, stalled_recv) == StreamErrorCode.TIMEOUT
        elapsed = time.monotonic() - t0
        assert await refusal(trickle_send, trickle_recv) == StreamErrorCode.TIMEOUT
    finally:
        task.cancel()
    print(f"\nstalled first frame reset with TIMEOUT after {elapsed:.3f} s (frame_timeout 0.6 s)")
    assert elapsed >= 0.55  # not before the timeout (a lower bound only: never an upper one)
    assert on.frames == []
    # The connection still serves.
    send, recv = await cb.open_bi()
    await send.write_all(frame(header("pair2") + b"M1"))
    send.finish()
    assert await asyncio.wait_for(recv.read_to_end(10), 10) == b"ok"


async def test_limits_changed_at_runtime_apply_to_the_next_stream(
    served: tuple[Connection, Connection, KindLimits, Served],
) -> None:
    _, cb, limits, on = served

    async def attempt(kind: str, size: int) -> int | bytes:
        send, recv = await cb.open_bi()
        await send.write_all(frame(header(kind) + b"z" * size))
        send.finish()
        try:
            return await asyncio.wait_for(recv.read_to_end(10), 10)
        except errors.StreamReset as e:
            return e.code

    assert await attempt("sync", 10) == StreamErrorCode.NOT_ADMITTED
    limits.set("sync", 1000)
    assert await attempt("sync", 10) == b"ok"
    assert await attempt("sync", 2000) == StreamErrorCode.FRAME_TOO_LARGE
    limits.set_default(1 << 16)
    assert await attempt("other", 2000) == b"ok"
    assert await attempt("sync", 2000) == StreamErrorCode.FRAME_TOO_LARGE  # its own limit wins
    limits.set("msg", 0)
    assert await attempt("msg", 10) == StreamErrorCode.NOT_ADMITTED
    # A stream accepted before a change keeps its limits: open one, let it be accepted with
    # its header, then forbid the kind and send the rest.
    send, recv = await cb.open_bi()
    body = header("late") + b"w" * 100
    await send.write_all(frame(body)[:10])
    await asyncio.sleep(0.3)  # accepted by now (its header has arrived)
    limits.set("late", 0)
    await send.write_all(frame(body)[10:])
    send.finish()
    assert await asyncio.wait_for(recv.read_to_end(10), 10) == b"ok"
    assert await attempt("late", 10) == StreamErrorCode.NOT_ADMITTED
    assert len(on.frames) == 3


async def _open_and_announce(cb: Connection) -> tuple[SendStream, RecvStream]:
    send, recv = await cb.open_bi()
    await send.write_all(frame(header("pair2"), declared=100))  # a first frame still arriving
    return send, recv


async def test_concurrent_stream_cap_holds() -> None:
    # QUIC cannot take back stream credit once granted: an endpoint that keeps unknown peers to
    # 2 streams binds with max_bi_streams=2 and raises it for a peer it trusts.
    a = await Endpoint.bind(NetworkOptions.loopback().replace(max_bi_streams=2), alpns=[ALPN])
    b = await Endpoint.bind(alpns=[ALPN])
    try:
        ca, cb = await connected(a, b)
        limits = KindLimits(PAIR_LIMIT, frame_timeout=30.0)
        on = Served()
        serving = ca.serve_streams(on, kind_limits=limits)
        s1, r1 = await _open_and_announce(cb)
        s2, r2 = await _open_and_announce(cb)
        third = asyncio.ensure_future(cb.open_bi())
        await asyncio.sleep(1.0)
        assert not third.done(), "a third stream opened past the cap of 2"
        # One stream ends (its first frame completes, the reply is read): the third opens.
        await s1.write_all(b"x" * (100 - 7))
        s1.finish()
        assert await asyncio.wait_for(r1.read_to_end(10), 10) == b"ok"
        s3, r3 = await asyncio.wait_for(third, 10)
        await s3.write_all(frame(header("pair2")))
        s3.finish()
        assert await asyncio.wait_for(r3.read_to_end(10), 10) == b"ok"
        # Still at most 2: s2 is open, s3 done, so one more opens and the next waits.
        s4, _ = await asyncio.wait_for(_open_and_announce(cb), 10)
        fifth = asyncio.ensure_future(cb.open_bi())
        await asyncio.sleep(1.0)
        assert not fifth.done(), "a stream opened past the cap of 2"
        # Raising the cap at runtime (a peer that is now trusted) lets it open at once.
        ca.set_max_concurrent_bi_streams(10)
        await asyncio.wait_for(fifth, 10)
        assert len(on.frames) == 2
        for s in (s2, s4):
            s.reset(0)
        serving.cancel()
    finally:
        await b.close()
        await a.close()


async def test_lowering_the_cap_does_not_take_back_granted_credit(
    served: tuple[Connection, Connection, KindLimits, Served],
) -> None:
    # What the docstring says: with the default credit of 100 already granted at the
    # handshake, lowering the cap to 2 afterwards does not stop a third stream.
    ca, cb, _, _ = served
    ca.set_max_concurrent_bi_streams(2)
    opened = [await asyncio.wait_for(_open_and_announce(cb), 10) for _ in range(3)]
    assert len(opened) == 3
    for s, _ in opened:
        s.reset(0)


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


# The attacker runs in its own process, so its buffers do not count in the host's RSS. Each of
# its streams declares a 16 MiB first frame of an admitted kind and sends only PART of it, then
# stalls. "bulk": the parts in 4 KiB writes, round robin over the streams. "interleaved": the
# parts in 16-byte pieces, each round followed by a complete 8 KiB request on a stream of its
# own (served and freed by the host), so that the stalled streams' bytes arrive in the same
# receive buffers as far more bytes that the host is done with: a reader that kept iroh's
# received chunks (slices of those shared buffers) instead of copying them would keep all of
# it alive.
ATTACKER = r"""
import asyncio, os, sys
from iroh_pair.transport import Endpoint, EndpointAddr
ALPN, STREAMS, PART, MODE = sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

async def main() -> None:
    ep = await Endpoint.bind(alpns=[ALPN])
    conn = await ep.connect(EndpointAddr.from_ticket(sys.argv[1]), ALPN, timeout=10)
    streams = []
    for _ in range(STREAMS):
        s, _r = await conn.open_bi()
        await s.write_all((16 << 20).to_bytes(4, "big") + bytes([1, 4]) + b"blob")
        streams.append(s)
    piece = 4096 if MODE == "bulk" else 16
    block = os.urandom(piece)
    request = bytes([1, 4]) + b"blob" + os.urandom(8192)
    for _ in range(PART // piece):
        for s in streams:
            await s.write_all(block)
        if MODE == "interleaved":
            assert await conn.request(request, timeout=10) == b"ok"
        await asyncio.sleep(0)
    print("sent", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


@pytest.mark.parametrize("mode, part", [("bulk", 512 * 1024), ("interleaved", 48 * 1024)])
async def test_partial_16_mib_frames_cost_only_what_arrived(mode: str, part: int) -> None:
    streams = 16
    a = await Endpoint.bind(alpns=[ALPN])
    try:
        conns: list[Connection] = []
        limits = KindLimits(32 << 20, frame_timeout=120.0)
        served = 0

        def on_stream(s: IncomingStream) -> None:
            nonlocal served
            served += 1
            s.respond(b"ok")

        async def accept() -> None:
            c = await a.accept()
            assert c is not None
            conns.append(c)
            c.serve_streams(on_stream, kind_limits=limits)

        acceptor = asyncio.ensure_future(accept())
        for _ in range(3):  # settle the allocator before the baseline
            await asyncio.sleep(0.2)
        base = _rss_kib()
        child = subprocess.Popen(
            [sys.executable, "-c", ATTACKER, a.addr().to_ticket(), ALPN.decode(), str(streams),
             str(part), mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            await asyncio.wait_for(acceptor, 30)
            conn = conns[0]
            line = await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(None, child.stdout.readline), 240  # type: ignore[union-attr]
            )
            assert line.strip() == "sent"
            sent = streams * part
            deadline = time.monotonic() + 30
            while conn.stats()["udp_rx_bytes"] < sent and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            received = conn.stats()["udp_rx_bytes"]
            grown = _rss_kib() - base
            print(
                f"\n{mode}: {streams} streams declaring 16 MiB each, {part // 1024} KiB sent on "
                f"each ({sent / 2**20:.2f} MiB held), {served} complete requests served, "
                f"{received / 2**20:.1f} MiB of UDP received; host RSS {base / 1024:.1f} -> "
                f"{(base + grown) / 1024:.1f} MiB (+{grown / 1024:.1f} MiB)"
            )
            assert received >= sent
            assert served == (0 if mode == "bulk" else part // 16)
            assert grown * 1024 < sent + 8 * 2**20, f"RSS grew {grown} KiB for {sent} bytes sent"
        finally:
            if child.stdin:
                child.stdin.close()
            child.wait(10)
    finally:
        await a.close()
