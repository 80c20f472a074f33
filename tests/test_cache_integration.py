"""The connection cache over real iroh endpoints, counted by the serving side's native counters."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest

from iroh_pair import RequestPeer
from iroh_pair.transport import Endpoint, EndpointAddr, SecretKey

ALPN = b"iroh-pair-cache-test/1"


def echo(req: bytes) -> bytes:
    return req


@pytest.fixture
async def peers() -> AsyncIterator[tuple[RequestPeer, RequestPeer]]:
    ea = await Endpoint.bind(alpns=[ALPN])
    eb = await Endpoint.bind(alpns=[ALPN])
    a = RequestPeer(ea, {ALPN: echo}).start()
    b = RequestPeer(eb, {ALPN: echo}).start()
    a.add_address(eb.addr())
    b.add_address(ea.addr())
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()
        await ea.close()
        await eb.close()


async def test_thousand_requests_one_connection(peers: tuple[RequestPeer, RequestPeer]) -> None:
    a, b = peers
    for i in range(1000):
        assert await a.request(b.endpoint.id, ALPN, b"%d" % i, timeout=5) == b"%d" % i
    s = b.endpoint.stats()
    assert s["connections_accepted"] == 1
    assert s["bi_streams_accepted"] == 1000
    assert a.cache.stats().dials == 1 and a.cache.stats().reuses == 999


async def test_hundred_concurrent_requests_one_dial(peers: tuple[RequestPeer, RequestPeer]) -> None:
    a, b = peers
    replies = await asyncio.gather(*(a.request(b.endpoint.id, ALPN, b"x%d" % i) for i in range(100)))
    assert replies == [b"x%d" % i for i in range(100)]
    assert a.endpoint.stats()["connections_dialed"] == 1
    assert b.endpoint.stats()["connections_accepted"] == 1


async def test_requests_reuse_an_inbound_connection(peers: tuple[RequestPeer, RequestPeer]) -> None:
    a, b = peers
    await a.request(b.endpoint.id, ALPN, b"hello", timeout=5)
    await asyncio.sleep(0.05)
    assert await b.request(a.endpoint.id, ALPN, b"back", timeout=5) == b"back"
    assert b.endpoint.stats()["connections_dialed"] == 0  # adopted a's connection
    assert a.endpoint.stats()["connections_accepted"] == 0
    assert b.cache.stats().adoptions == 1


SERVER = """
import asyncio, json, sys
from iroh_pair.transport import Endpoint, SecretKey
async def main():
    ep = await Endpoint.bind(secret_key=SecretKey.from_bytes(bytes.fromhex(sys.argv[1])), alpns=[sys.argv[2].encode()])
    print(json.dumps({"ticket": ep.ticket()}), flush=True)
    while (conn := await ep.accept()) is not None:
        conn.serve(lambda r: b"served:" + r)
asyncio.run(main())
"""


async def _start_server(key: SecretKey) -> tuple[subprocess.Popen[str], EndpointAddr]:
    p = subprocess.Popen(
        [sys.executable, "-c", SERVER, key.to_bytes().hex(), ALPN.decode()],
        stdout=subprocess.PIPE, text=True,
    )
    assert p.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(p.stdout.readline), 20)
    return p, EndpointAddr.from_ticket(json.loads(line)["ticket"])


async def test_peer_killed_and_restarted_is_redialed_once() -> None:
    key = SecretKey.generate()
    proc, addr = await _start_server(key)
    ep = await Endpoint.bind()
    a = RequestPeer(ep, {}, request_timeout=2.0).start()
    try:
        a.add_address(addr)
        assert await a.request(addr.id, ALPN, b"one") == b"served:one"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc, addr2 = await _start_server(key)  # same key, new process, new port
        assert addr2.id == addr.id and addr2.ip_addrs != addr.ip_addrs
        a.add_address(addr2)
        t = time.monotonic()
        assert await a.request(addr.id, ALPN, b"two") == b"served:two"
        elapsed = time.monotonic() - t
        assert elapsed < 2.0 + a.dial_timeout
        assert ep.stats()["connections_dialed"] == 2
        st = a.cache.stats()
        assert st.evictions >= 1 and st.retries == 1 and st.live == 1
        print(f"recovered after {elapsed:.2f}s (request timeout 2.0s + one dial)")
    finally:
        proc.kill()
        proc.wait()
        await a.aclose()
        await ep.close()


async def test_simultaneous_dials_settle_on_one_shared_connection() -> None:
    for round_ in range(20):
        ea = await Endpoint.bind(alpns=[ALPN])
        eb = await Endpoint.bind(alpns=[ALPN])
        a = RequestPeer(ea, {ALPN: echo}).start()
        b = RequestPeer(eb, {ALPN: echo}).start()
        a.add_address(eb.addr())
        b.add_address(ea.addr())
        try:
            ra, rb = await asyncio.gather(
                a.request(eb.id, ALPN, b"from a", timeout=5), b.request(ea.id, ALPN, b"from b", timeout=5)
            )
            assert (ra, rb) == (b"from a", b"from b")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if a.cache.stats().live == 1 and b.cache.stats().live == 1 and not (
                    a.cache.stats().draining or b.cache.stats().draining
                ):
                    break
                await asyncio.sleep(0.02)
            ca = a.cache.peek(eb.id, ALPN)
            cb = b.cache.peek(ea.id, ALPN)
            assert ca is not None and cb is not None, round_
            assert not ca.is_closed and not cb.is_closed
            label = b"iroh-pair test: same connection"
            assert ca.export_keying_material(label, b"", 32) == cb.export_keying_material(label, b"", 32), round_
            assert a.cache.stats().live == 1 and b.cache.stats().live == 1
            # and it still carries requests both ways
            assert await a.request(eb.id, ALPN, b"again", timeout=5) == b"again"
            assert await b.request(ea.id, ALPN, b"again", timeout=5) == b"again"
        finally:
            await a.aclose()
            await b.aclose()
            await ea.close()
            await eb.close()


@pytest.mark.slow
async def test_idle_connection_opens_no_streams(peers: tuple[RequestPeer, RequestPeer]) -> None:
    a, b = peers
    await a.request(b.endpoint.id, ALPN, b"warm up", timeout=5)
    before = dict(b.endpoint.stats())
    pings_before = a.cache.peek(b.endpoint.id, ALPN).stats()["pings_tx"]  # type: ignore[union-attr]
    await asyncio.sleep(15)  # longer than the 5 s QUIC keep-alive interval
    after = b.endpoint.stats()
    for k in ("bi_streams_accepted", "uni_streams_accepted", "connections_accepted"):
        assert after[k] == before[k], k
    conn = a.cache.peek(b.endpoint.id, ALPN)
    assert conn is not None and not conn.is_closed  # kept up by QUIC keep-alive alone
    assert conn.stats()["pings_tx"] > pings_before
