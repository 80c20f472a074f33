"""Admission of unknown peers (docs/PROTOCOL.md §9.1): strangers cannot block pairing.

Real Nodes and real iroh endpoints on loopback. Attackers are plain
:class:`~iroh_pair.transport.Endpoint`s with a fresh key each (every connection is a new
stranger). The host whose memory is measured runs in a child process (tests/admission_host.py),
so its VmRSS is the host's alone.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from admission_host import HostProcess
from helpers import open_local_node, show
from iroh_pair import Node, errors
from iroh_pair._node import PAIR_FRAME_LIMIT, UNKNOWN_START_TIMEOUT
from iroh_pair._pairing import HOST_FIRST_FRAME_TIMEOUT
from iroh_pair.protocol import ALPN, PAIR_KIND, CloseCode, StreamErrorCode, encode_header
from iroh_pair.transport import (
    CloseInfo,
    Connection,
    Endpoint,
    EndpointAddr,
    RecvStream,
    SendStream,
)

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
#: Slack on top of a stated timeout before a close counts as missing (loaded CI machines).
SLACK = 10.0


@dataclass
class Stranger:
    """One attacker connection (a fresh key) and what it saw."""

    ep: Endpoint
    conn: Connection
    started: float
    closed: asyncio.Future[CloseInfo]
    streams: list[tuple[SendStream, RecvStream]] = field(default_factory=list)
    stream_errors: list[int] = field(default_factory=list)
    blocked_opens: int = 0


async def stranger(addr: EndpointAddr) -> Stranger:
    ep = await Endpoint.bind()
    conn = await ep.connect(addr, ALPN, timeout=10)
    return Stranger(ep, conn, time.monotonic(), asyncio.ensure_future(conn.closed()))


def frame_start(kind: str, declared: int) -> bytes:
    """A first frame's 4-byte length (``declared``) and envelope header: the body never comes."""
    return struct.pack(">I", declared) + encode_header(kind)


async def stall(s: Stranger, kind: str, declared: int, payload: int, tries: int = 4) -> None:
    """Opens up to ``tries`` streams on ``s`` (an unknown peer gets 2 at once), each starting a
    first frame of ``declared`` bytes of which ``payload`` are sent, then nothing more."""
    for _ in range(tries):
        try:
            send, recv = await asyncio.wait_for(s.conn.open_bi(), 0.3)
        except TimeoutError:
            s.blocked_opens += 1  # no stream credit (the host's cap): no use trying on
            return
        except errors.TransportError:
            return
        s.streams.append((send, recv))
        try:
            await asyncio.wait_for(send.write_all(frame_start(kind, declared) + b"x" * payload), 2.0)
        except TimeoutError:
            pass  # flow control: the host does not read it (cancelling resets the stream)
        except errors.StreamReset as e:
            s.stream_errors.append(e.code)
        except errors.TransportError:
            return


async def close_all(strangers: list[Stranger]) -> None:
    for s in strangers:
        s.conn.close(0, b"")
        await s.ep.close()


@pytest.fixture
async def host_proc(tmp_path: Path) -> AsyncIterator[HostProcess]:
    h = await HostProcess.start(tmp_path / "host")
    try:
        yield h
    finally:
        await h.stop()


async def test_strangers_cannot_block_pairing(host_proc: HostProcess, tmp_path: Path) -> None:
    """8 strangers that send nothing and 8 that stall mid-frame are all closed within the
    stated timeouts; a real joiner that arrives right after them pairs; the host's memory
    grows by less than 20 MiB."""
    host = host_proc
    addr = EndpointAddr.from_ticket(host.ready["ticket"])
    # Warm-up: a first device pairs (the host's code paths and allocator are warm).
    warm = await open_local_node(tmp_path / "warm", "warm")
    joiner = await open_local_node(tmp_path / "joiner", "joiner")
    strangers: list[Stranger] = []
    try:
        code0 = await host.call("host")
        await warm.join(code0["code"], timeout=30)
        assert (await host.call("wait", index=0))["device"] == "warm"
        code1 = await host.call("host")
        await host.call("host")  # stays live: the start timer, not the offer's end, must act
        await asyncio.sleep(0.5)
        before = host.rss_kib()
        peak = before
        sampling = True

        async def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, host.rss_kib())
                await asyncio.sleep(0.02)

        sampler = asyncio.ensure_future(sample())
        t0 = time.monotonic()
        for _ in range(8):  # connect, then send nothing
            strangers.append(await stranger(addr))
        stalls = [
            (PAIR_KIND, 16 * MiB, 64),          # a pair2 frame declared far over its limit
            (PAIR_KIND, 60 * 1024, 1000),       # a pair2 frame under the limit, never finished
            ("msg", 16 * MiB, 1 * MiB),         # a messaging frame from a stranger, 1 MiB of it
            (PAIR_KIND, 16 * MiB, 1 * MiB),     # 1 MiB (under QUIC's 1.25 MB stream window)
        ]
        for i in range(8):  # open streams and stall mid-frame
            s = await stranger(addr)
            strangers.append(s)
            kind, declared, payload = stalls[i % len(stalls)]
            await stall(s, kind, declared, payload, tries=16)
        attack_done = time.monotonic()
        # The real joiner arrives while the last strangers still hold every slot.
        device = await joiner.join(code1["code"], timeout=30)
        joined = time.monotonic()
        assert (await host.call("wait", index=1))["device"] == "joiner"
        assert device.name == "host"

        closes = []
        for s in strangers:
            # each one is closed by eviction or by the 5 s start timer
            info = await asyncio.wait_for(s.closed, UNKNOWN_START_TIMEOUT + SLACK)
            closes.append((info, time.monotonic() - s.started))
        sampling = False
        await sampler
        after = host.rss_kib()
        stats = await host.call("stats")
        growth_mib = (peak - before) / 1024
        show("admission", "16 strangers then a joiner",
             rss_before_mib=f"{before / 1024:.1f}", rss_peak_mib=f"{peak / 1024:.1f}",
             rss_after_mib=f"{after / 1024:.1f}", growth_mib=f"{growth_mib:.2f}",
             attack_s=f"{attack_done - t0:.2f}", joiner_paired_after_s=f"{joined - attack_done:.2f}",
             slowest_close_s=f"{max(t for _, t in closes):.2f}",
             reasons=sorted({bytes(i.reason).decode() for i, _ in closes}),
             streams_opened=[len(s.streams) for s in strangers[8:]],
             opens_blocked=[s.blocked_opens for s in strangers[8:]],
             stream_errors=[s.stream_errors for s in strangers[8:]],
             evicted=stats["node"]["unknown_evicted"],
             start_timeouts=stats["node"]["unknown_start_timeouts"])
        for info, _ in closes:
            assert info.code == CloseCode.NOT_PAIRED
            assert bytes(info.reason) in (b"evicted", b"pairing did not start")
        reasons = [bytes(i.reason) for i, _ in closes]
        assert b"evicted" in reasons and b"pairing did not start" in reasons
        assert stats["node"]["unknown_evicted"] + stats["node"]["unknown_start_timeouts"] >= 16
        assert stats["unknown"] == 0
        # an unknown peer never has more than 2 streams open
        assert all(len(s.streams) <= 2 for s in strangers)
        assert growth_mib < 20, f"the host grew {growth_mib:.1f} MiB during the attack"
    finally:
        await close_all(strangers)
        await joiner.close()
        await warm.close()


async def test_ten_devices_pair_in_turn_keeping_their_connections(tmp_path: Path) -> None:
    """Each paired connection stops counting as unknown: the 5th..10th devices pair too, and
    the earlier ones keep their connections (none is evicted as an idle stranger)."""
    host = await open_local_node(tmp_path / "host", "host")
    release = asyncio.Event()
    inside = 0

    async def gate(dev: object, data: bytes) -> bytes:
        nonlocal inside
        inside += 1
        if inside >= 8:
            release.set()
        await asyncio.wait_for(release.wait(), 20)
        return data

    host.on_message(lambda dev, data: data)
    host.on_message(gate, kind="gate")
    joiners: list[Node] = []
    conns: list[Connection] = []
    try:
        for i in range(10):
            j = await open_local_node(tmp_path / f"j{i}", f"j{i}")
            joiners.append(j)
            hosted = await host.host_pairing()
            await j.join(str(hosted.code), timeout=30)
            assert (await hosted.wait(10)).name == f"j{i}"
            c = j.cache.peek(host.id, ALPN)
            assert c is not None
            conns.append(c)
        assert len(host.devices()) == 10
        assert host.counters["unknown_promoted"] == 10 and not host._unknown
        assert host.counters["unknown_evicted"] == 0
        # every joiner still has its pairing connection, and it carries messages
        for j, c in zip(joiners, conns):
            assert not c.is_closed
            assert await j.request(host.id, b"ping", timeout=10) == b"ping"
            assert j.cache.peek(host.id, ALPN) is c
        assert host.endpoint.stats()["connections_accepted"] == 10
        # paired limits: a message over an unknown peer's 64 KiB, and 8 concurrent streams
        big = os.urandom(MiB)
        assert await joiners[0].request(host.id, big, timeout=20) == big
        replies = await asyncio.gather(
            *(joiners[1].request(host.id, bytes([k]), kind="gate", timeout=20) for k in range(8))
        )
        assert replies == [bytes([k]) for k in range(8)]
    finally:
        for j in joiners:
            await j.close()
        await host.close()


async def test_unknown_connections_closed_when_last_offer_ends(tmp_path: Path) -> None:
    # unknown_start_timeout: only the offers' end may close them here
    host = await open_local_node(tmp_path / "host", "host", unknown_start_timeout=60.0)
    strangers: list[Stranger] = []
    try:
        first = await host.host_pairing(ttl=1.0)
        second = await host.host_pairing(ttl=3.0)
        for _ in range(2):
            strangers.append(await stranger(host.endpoint.addr()))
        s = await stranger(host.endpoint.addr())
        strangers.append(s)
        await stall(s, PAIR_KIND, 1000, 10, tries=1)
        with pytest.raises(Exception):
            await first.wait(10)
        await asyncio.sleep(0.3)
        assert not any(s.conn.is_closed for s in strangers), "closed while a code is still live"
        with pytest.raises(Exception):
            await second.wait(10)
        for s in strangers:
            info = await asyncio.wait_for(s.closed, SLACK)
            assert info.code == CloseCode.NOT_PAIRED
            assert bytes(info.reason) == b"no pairing code is hosted"
        assert host.counters["unknown_closed_offer_end"] == 3 and not host._unknown
        # and no stranger is admitted now
        late = await stranger(host.endpoint.addr())
        strangers.append(late)
        info = await asyncio.wait_for(late.closed, SLACK)
        assert info.code == CloseCode.NOT_PAIRED
    finally:
        await close_all(strangers)
        await host.close()


async def _stream_refusal(s: Stranger, first: bytes, body: int) -> tuple[int | None, int]:
    """Sends ``first`` then up to ``body`` bytes on a new stream; returns the stream error code
    the host answered with (from the write or the read) and the bytes written."""
    send, recv = await s.conn.open_bi()
    written = 0
    code: int | None = None
    try:
        await send.write_all(first)
        written = len(first)
        chunk = b"y" * 65536
        while written < body:
            await asyncio.wait_for(send.write_all(chunk), 10)
            written += len(chunk)
    except errors.StreamReset as e:
        code = e.code
    if code is None:
        try:
            await asyncio.wait_for(recv.read(), 10)
        except errors.StreamReset as e:
            code = e.code
    return code, written


async def test_stranger_cannot_send_large_first_frames(tmp_path: Path) -> None:
    """A messaging kind from a stranger is refused on its header (NOT_ADMITTED, body unread);
    a pair2 frame over 64 KiB + 64 is FRAME_TOO_LARGE; an unknown peer gets 2 streams."""
    host = await open_local_node(tmp_path / "host", "host")
    seen: list[bytes] = []
    host.on_message(lambda dev, data: seen.append(data))
    strangers: list[Stranger] = []
    try:
        await host.host_pairing()
        a = await stranger(host.endpoint.addr())
        strangers.append(a)
        code, written = await _stream_refusal(a, frame_start("msg", 16 * MiB), 16 * MiB)
        assert code == StreamErrorCode.NOT_ADMITTED
        assert written < 16 * MiB  # stopped on the header: the body could not all be sent
        b = await stranger(host.endpoint.addr())
        strangers.append(b)
        code, _ = await _stream_refusal(b, frame_start(PAIR_KIND, PAIR_FRAME_LIMIT + 1), 1024)
        assert code == StreamErrorCode.FRAME_TOO_LARGE
        # 2 stalled streams: a third cannot even be opened (no stream credit)
        c = await stranger(host.endpoint.addr())
        strangers.append(c)
        await stall(c, PAIR_KIND, 1000, 10, tries=3)
        assert len(c.streams) == 2 and c.blocked_opens == 1
        # the stalled ones end by the start timer (5 s) or the first-frame timeout (10 s)
        info = await asyncio.wait_for(c.closed, max(UNKNOWN_START_TIMEOUT, HOST_FIRST_FRAME_TIMEOUT) + SLACK)
        assert info.code == CloseCode.NOT_PAIRED
        show("admission", "first-frame limits", msg_bytes_sent_before_refusal=written)
        assert seen == []
    finally:
        await close_all(strangers)
        await host.close()


async def test_newcomer_refused_only_when_every_slot_is_pairing(tmp_path: Path) -> None:
    """Four handshakes in progress (each host-side SAS question still open) fill the slots:
    none is evicted for a stranger, who is refused instead; then all four pair."""
    host = await open_local_node(tmp_path / "host", "host")
    asked = 0
    answer = asyncio.Event()

    async def confirm(check: object) -> bool:
        nonlocal asked
        asked += 1
        await asyncio.wait_for(answer.wait(), 30)
        return True

    joiners = [await open_local_node(tmp_path / f"j{i}", f"j{i}") for i in range(4)]
    strangers: list[Stranger] = []
    try:
        codes = [await host.host_pairing(confirm=confirm) for _ in joiners]
        joins = [asyncio.ensure_future(j.join(str(h.code), timeout=60)) for j, h in zip(joiners, codes)]
        for _ in range(200):
            if asked == 4:
                break
            await asyncio.sleep(0.05)
        assert asked == 4 and len(host._unknown) == 4
        s = await stranger(host.endpoint.addr())
        strangers.append(s)
        info = await asyncio.wait_for(s.closed, SLACK)
        assert info.code == CloseCode.NOT_PAIRED and bytes(info.reason) == b"busy: try again"
        assert host.counters["unknown_refused"] == 1 and host.counters["unknown_evicted"] == 0
        answer.set()
        devices = await asyncio.wait_for(asyncio.gather(*joins), 60)
        assert sorted(d.name for d in devices) == ["host"] * 4
        assert len(host.devices()) == 4 and host.counters["unknown_promoted"] == 4
    finally:
        await close_all(strangers)
        for j in joiners:
            await j.close()
        await host.close()
