"""Strangers cost little (brief rule 6) at the QUIC handshake: a peer that sends its first
packet and then nothing more must not hold up the next incoming connection.

The staller is a real iroh endpoint dialing through a UDP relay of this test that forwards its
first datagram (the client Initial) to the server and drops everything else, so the server
holds a handshake that never completes. Before handshakes ran concurrently, the server's
``accept`` waited on that handshake until it failed, and the honest client behind it was
accepted only afterwards (``handshakes_failed`` then already 1). The stalled handshake itself
is dropped on the server's handshake timer. Real endpoints on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import cast

from iroh_pair.transport import Endpoint, EndpointAddr

ALPN = b"stall-test/1"


class FirstDatagramOnly(asyncio.DatagramProtocol):
    """Relays the first datagram it receives to ``target`` and drops everything after it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.seen = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen += 1
        if self.seen == 1 and self.transport is not None:
            # from the relay's own socket: the server answers the relay, which drops it
            self.transport.sendto(data, self.target)


async def test_a_stalled_handshake_does_not_hold_up_the_next_connection() -> None:
    loop = asyncio.get_running_loop()
    async with await Endpoint.bind(alpns=[ALPN]) as server, \
            await Endpoint.bind() as staller, await Endpoint.bind() as honest:
        [server_ip] = [a for a in server.addr().ip_addrs if a.startswith("127.")]
        host, port = server_ip.rsplit(":", 1)
        relay_transport, relay = await loop.create_datagram_endpoint(
            lambda: FirstDatagramOnly((host, int(port))), local_addr=("127.0.0.1", 0),
            family=socket.AF_INET)
        relay_port = relay_transport.get_extra_info("sockname")[1]
        accepted: list[object] = []

        async def accept_all() -> None:
            while (conn := await server.accept()) is not None:
                accepted.append(conn)

        accepting = asyncio.ensure_future(accept_all())
        stalled = asyncio.ensure_future(staller.connect(
            EndpointAddr(server.id, [], [f"127.0.0.1:{relay_port}"]), ALPN, timeout=60))
        try:
            while relay.seen == 0:  # the server has the staller's Initial
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # and has begun its handshake
            conn = await honest.connect(server.addr(), ALPN, timeout=30)
            async with asyncio.timeout(30):
                while not accepted:
                    await asyncio.sleep(0.01)
            # the honest one came through while the stalled handshake still hangs
            assert server.stats()["handshakes_failed"] == 0
            assert not stalled.done()
            assert len(accepted) == 1 and conn.remote_id == server.id
            # and the stalled one is dropped on the server's handshake timer (10 s), well
            # before QUIC's idle timeout (30 s) would end it
            async with asyncio.timeout(25):
                while server.stats()["handshakes_failed"] == 0:
                    await asyncio.sleep(0.1)
        finally:
            stalled.cancel()
            accepting.cancel()
            for t in (stalled, accepting):
                with contextlib.suppress(BaseException):
                    await t
            relay_transport.close()
