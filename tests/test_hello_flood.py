"""Hellos are cheap (issue 31): a flood of Hellos with the right session tag and invalid SPAKE2
points costs the host no SPAKE2 work and no attempt, and its loop keeps serving.

The host is a Node in a child process (tests/admission_host.py), so its CPU time is its own; it
counts its state machine's SPAKE2 calls (a spy around the real code). Attackers are plain
endpoints with fresh keys: each connection is closed by the host after its first bad Hello
(PROTOCOL_ERROR after the 1 s grace) and an unknown peer has 2 streams at a time, so the flood
opens new connections as it goes, two streams each, Hellos one after another on each stream.

Cost per Hello is measured twice and printed: the host's whole CPU time over the flood divided
by the Hellos (connections and streams included), against the same flood with a wrong session
tag (no PAKE at all: the transport's share), and the time spent in the state machine's
``receive`` per Hello.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from admission_host import HostProcess, hello_frame, invalid_points
from helpers import open_local_node, show
from iroh_pair import Node, errors
from iroh_pair.protocol import ALPN, MAX_MESSAGE, CloseCode, RejectCode, wire
from iroh_pair.transport import Connection, Endpoint, EndpointAddr

pytestmark = pytest.mark.slow

N_HELLOS = 1000


async def _one_hello(conn: Connection, frame: bytes) -> RejectCode | None:
    """One Hello on a new stream; the host's answer (a Reject's code), or None when the stream
    or connection went away first."""
    try:
        send, recv = await asyncio.wait_for(conn.open_bi(), 5)
        await send.write_frame(frame)
        send.finish()
        body = await asyncio.wait_for(recv.read_frame(MAX_MESSAGE), 10)
    except (errors.TransportError, TimeoutError):
        return None
    if body is None:
        return None
    msg = wire.decode(body)
    assert isinstance(msg, wire.Reject), f"a bad Hello got {type(msg).__name__}"
    return RejectCode.from_wire(msg.code)


async def flood(
    addr: EndpointAddr, tag: bytes, n: int, points: list[bytes]
) -> tuple[Counter[str], int, Counter[int]]:
    """Sends ``n`` Hellos with session tag ``tag`` and the invalid ``points`` (cycled) from
    fresh keys; returns the Reject codes counted by name, the connections it took and how
    each was closed (-1: not by the host within 10 s). Each answered Hello counts once; one
    lost to a closing connection is sent again."""
    answers: Counter[str] = Counter()
    closes: Counter[int] = Counter()
    sent = 0
    conns = 0
    while sent < n:
        ep = await Endpoint.bind()
        try:
            conn = await ep.connect(addr, ALPN, timeout=10)
        except errors.TransportError:
            await ep.close()
            continue
        conns += 1
        me = ep.id.to_bytes()

        async def worker() -> None:
            nonlocal sent
            while sent < n and not conn.is_closed:
                point = points[sent % len(points)]
                sent += 1  # taken before the await: the other worker sees it
                code = await _one_hello(conn, hello_frame(tag, me, point))
                if code is None:
                    sent -= 1  # lost with its connection: sent again on the next one
                    return
                answers[code.name] += 1

        await asyncio.gather(worker(), worker())
        # the host closes every connection that sent a bad Hello (after the 1 s grace)
        try:
            info = await asyncio.wait_for(conn.closed(), 10)
            closes[info.code if info.by_peer and info.code is not None else -1] += 1
        except TimeoutError:
            closes[-1] += 1
        conn.close(0, b"")
        await ep.close()
    return answers, conns, closes


async def _pinger(device: Node, host_id: object, stop: asyncio.Event, latencies: list[float]) -> None:
    """A paired device's requests to the host, one after another, until ``stop``."""
    from iroh_pair.transport import EndpointId

    assert isinstance(host_id, EndpointId)
    while not stop.is_set():
        t = time.perf_counter()
        assert await device.request(host_id, b"ping", timeout=10) == b"ping"
        latencies.append(time.perf_counter() - t)
        await asyncio.sleep(0.01)


@pytest.fixture
async def host_proc(tmp_path: Path) -> AsyncIterator[HostProcess]:
    h = await HostProcess.start(tmp_path / "host")
    try:
        yield h
    finally:
        await h.stop()


async def test_invalid_point_hellos_are_cheap(host_proc: HostProcess, tmp_path: Path) -> None:
    host = host_proc
    addr = EndpointAddr.from_ticket(host.ready["ticket"])
    paired = await open_local_node(tmp_path / "paired", "paired")
    late = await open_local_node(tmp_path / "late", "late")
    try:
        code0 = await host.call("host")
        dev = await paired.join(code0["code"], timeout=30)
        assert (await host.call("wait", index=0))["device"] == "paired"
        points = invalid_points(N_HELLOS)

        # Every Hello reaches the SPAKE2 point check here: the per-offer rate limit (10/s, the
        # rest BUSY before any check, shown below) is lifted for this code, so that the cost
        # measured is that of the check itself.
        assert (await host.call("hello_rate", rate=1e9, burst=1e9))["ok"]
        target = await host.call("host")
        tag = bytes.fromhex(target["tag"])
        wrong_tag = bytes(b ^ 0xFF for b in tag)

        # Baseline: the same flood with a tag no offer has (BAD_TAG: no PAKE work at all).
        s0 = await host.call("stats")
        c0 = (await host.call("cpu"))["cpu"]
        base_answers, base_conns, base_closes = await flood(addr, wrong_tag, N_HELLOS, points)
        c1 = (await host.call("cpu"))["cpu"]
        assert base_answers == Counter({"BAD_TAG": N_HELLOS})

        # The flood, while the paired device keeps making requests.
        stop = asyncio.Event()
        latencies: list[float] = []
        pinger = asyncio.ensure_future(_pinger(paired, dev.endpoint_id, stop, latencies))
        s1 = await host.call("stats")
        c2 = (await host.call("cpu"))["cpu"]
        t0 = time.perf_counter()
        answers, conns, closes = await flood(addr, tag, N_HELLOS, points)
        elapsed = time.perf_counter() - t0
        c3 = (await host.call("cpu"))["cpu"]
        s2 = await host.call("stats")
        stop.set()
        await asyncio.wait_for(pinger, 20)

        per_hello_ms = (c3 - c2) / N_HELLOS * 1e3
        base_ms = (c1 - c0) / N_HELLOS * 1e3
        machine_us = (s2["hello_seconds"] - s1["hello_seconds"]) / max(1, s2["hellos"] - s1["hellos"]) * 1e6
        show("hello-flood", f"{N_HELLOS} Hellos, right tag, invalid points",
             answers=dict(answers), connections=conns, seconds=f"{elapsed:.2f}",
             host_cpu_per_hello_ms=f"{per_hello_ms:.3f}",
             host_cpu_per_bad_tag_hello_ms=f"{base_ms:.3f}",
             point_check_share_ms=f"{per_hello_ms - base_ms:.3f}",
             state_machine_per_hello_us=f"{machine_us:.1f}",
             spake_starts=s2["spake_starts"] - s1["spake_starts"],
             spake_finishes=s2["spake_finishes"] - s1["spake_finishes"],
             point_checks=s2["spake_checks"] - s1["spake_checks"],
             requests_meanwhile=len(latencies),
             request_max_ms=f"{max(latencies) * 1e3:.1f}" if latencies else "-",
             host_closes=dict(closes), baseline_closes=dict(base_closes))
        # each one rejected MALFORMED, none counted as an attempt
        assert answers == Counter({"MALFORMED": N_HELLOS})
        assert s2["offers"][1]["attempts_used"] == 0
        # the loop kept serving the paired device meanwhile
        assert len(latencies) >= 5
        # no scalar multiplication: SPAKE2 was never started for these Hellos
        assert s2["spake_starts"] == s1["spake_starts"], "a bad Hello cost a SPAKE2 start"
        # the host closed each connection after its bad Hellos: PROTOCOL_ERROR (a wrong tag:
        # PAIRING_FAILED)
        assert closes == Counter({int(CloseCode.PROTOCOL_ERROR): conns})
        assert base_closes == Counter({int(CloseCode.PAIRING_FAILED): base_conns})

        # ... and the code still pairs.
        assert (await late.join(target["code"], timeout=30)).name == "host"
        assert (await host.call("wait", index=1))["device"] == "late"
    finally:
        await late.close()
        await paired.close()


async def test_bad_hellos_do_not_starve_the_joiner(host_proc: HostProcess, tmp_path: Path) -> None:
    """At the default Hello rate (10 per second per offer), a fast flood of invalid points is
    refused MALFORMED before it can take one of the offer's Hello tokens: none is counted, and a
    real joiner that comes right after (no pause for the bucket to refill) pairs."""
    host = host_proc
    addr = EndpointAddr.from_ticket(host.ready["ticket"])
    late = await open_local_node(tmp_path / "late", "late")
    try:
        target = await host.call("host")
        s1 = await host.call("stats")
        t0 = time.perf_counter()
        answers, conns, _ = await flood(addr, bytes.fromhex(target["tag"]), 200, invalid_points(200))
        elapsed = time.perf_counter() - t0
        s2 = await host.call("stats")
        show("hello-flood", "200 Hellos at the default rate limit", answers=dict(answers),
             connections=conns, seconds=f"{elapsed:.2f}",
             spake_starts=s2["spake_starts"] - s1["spake_starts"])
        assert answers == Counter({"MALFORMED": 200})
        assert s2["offers"][0]["attempts_used"] == 0
        assert s2["spake_starts"] == s1["spake_starts"]
        assert (await late.join(target["code"], timeout=30)).name == "host"
    finally:
        await late.close()
