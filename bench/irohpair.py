"""This package as a contender, at two layers.

* ``raw``: the binding itself, :class:`iroh_pair.transport.Connection`: ``request`` on the
  client, the native ``serve`` loop on the server (also what ``bench/transport.py`` measures).
* ``layer``: the cache/request layer, :class:`iroh_pair.RequestPeer` on both sides
  (requests go through the :class:`~iroh_pair.ConnectionCache`, with its default
  per-request timeout); pairing runs one layer up, in :class:`iroh_pair.Node`.

Client and server share one process (as the Rust node's bench mode does), except for
idle-connection memory (the server is another process) and pairing (host and joiner are two
processes, driven by bench/run.py).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from typing import TYPE_CHECKING

from bench.common import ALPN, REPLY, REQUEST, WARMUP, Result, emit, idle_result, latency_summary, rss_kib

if TYPE_CHECKING:
    from iroh_pair import Node
    from iroh_pair.transport import Connection, Endpoint

#: Concurrent bidirectional streams per connection: iroh's default, which the package keeps.
STREAM_LIMIT = 100


async def serve_raw(ep: Endpoint, workload: str) -> None:
    """The server half of a raw cell, for every connection ``ep`` accepts: a bulk stream is
    counted and the count sent back; anything else is served requests (``REPLY`` bytes each)."""
    reply = bytes([7]) * REPLY
    sinks: set[asyncio.Task[None]] = set()

    async def sink(conn: Connection) -> None:
        send, recv = await conn.accept_bi()
        n = 0
        if workload == "bulk":  # a sized transfer: the length, then the data in 1 MiB blocks
            left = int.from_bytes(await recv.read_exact(8), "big")
            while left:
                n += len(await recv.read_exact(min(left, 1 << 20)))
                left -= min(left, 1 << 20)
            assert await recv.read(1) == b"", "data past the announced length"
        else:  # "bulk-copy": whatever arrives, until the end of the stream
            while data := await recv.read(1 << 20):
                n += len(data)
        await send.write_all(n.to_bytes(8, "big"))
        send.finish()

    while (conn := await ep.accept()) is not None:
        if workload.startswith("bulk"):
            t = asyncio.ensure_future(sink(conn))
            sinks.add(t)
            t.add_done_callback(sinks.discard)
        else:
            conn.serve(lambda req: reply)


def datagrams(stats: dict[str, int]) -> int:
    """UDP datagrams a connection sent and received."""
    return stats["udp_tx_datagrams"] + stats["udp_rx_datagrams"]


async def raw_worker(
    workload: str, count: int, mib: int, samples: bool = False, peer: str | None = None
) -> Result:
    """One cell of the raw binding: sequential | queued | bulk | bulk-copy | connect-per-message.
    The server shares this process, or with ``peer`` (a ticket) is a :func:`raw_server` in
    another one. ``bulk`` is a sized transfer: an 8-byte length, then one Chunk written ``mib``
    times (not copied, as plain Rust's bench writes one ``Bytes``), read with ``read_exact`` in
    1 MiB blocks (one copy, into ``bytes``). ``bulk-copy`` writes ``bytes`` (one copy in) and
    reads with ``read(1 MiB)`` until the end of the stream (one copy out, a read per arrival)."""
    from iroh_pair.transport import Chunk, Endpoint, EndpointAddr

    server = None
    if peer is None:
        server = await Endpoint.bind(alpns=[ALPN])
        serving = asyncio.ensure_future(serve_raw(server, workload))
        addr = server.addr()
    else:
        addr = EndpointAddr.from_ticket(peer)
    client = await Endpoint.bind()
    conn = await client.connect(addr, ALPN, timeout=10)
    payload = bytes([1]) * REQUEST
    out: Result = {"workload": workload}
    if workload in ("sequential", "queued"):
        for _ in range(WARMUP):
            await conn.request(payload)
    if workload == "sequential":
        lat = []
        before = conn.stats()
        start = time.perf_counter()
        for _ in range(count):
            t = time.perf_counter()
            r = await conn.request(payload)
            lat.append(time.perf_counter() - t)
            assert len(r) == REPLY
        out.update(latency_summary(lat, time.perf_counter() - start, samples))
        out["datagrams_per_request"] = round((datagrams(conn.stats()) - datagrams(before)) / count, 2)
    elif workload == "queued":
        start = time.perf_counter()
        await asyncio.gather(*(conn.request(payload) for _ in range(count)))
        out.update(count=count, msg_per_s=round(count / (time.perf_counter() - start), 1))
    elif workload == "connect-per-message":
        # What the cache prevents: a new connection for every message.
        lat = []
        start = time.perf_counter()
        for _ in range(count):
            t = time.perf_counter()
            c = await client.connect(addr, ALPN, timeout=10)
            assert len(await c.request(payload)) == REPLY
            c.close(0, b"done")
            lat.append(time.perf_counter() - t)
        out.update(latency_summary(lat, time.perf_counter() - start, samples))
    elif workload.startswith("bulk"):
        chunk: bytes | Chunk = bytes(1 << 20) if workload == "bulk-copy" else Chunk(bytes(1 << 20))
        start = time.perf_counter()
        send, recv = await conn.open_bi()
        if workload == "bulk":
            await send.write_all((mib << 20).to_bytes(8, "big"))
        for _ in range(mib):
            await send.write_all(chunk)
        send.finish()
        got = int.from_bytes(await recv.read_to_end(8), "big")
        total = time.perf_counter() - start
        assert got == mib << 20, f"the server counted {got} bytes"
        out.update(mib=mib, mib_per_s=round(mib / total, 1))
    else:
        raise ValueError(f"unknown workload {workload!r}")
    await client.close()
    if server is not None:
        serving.cancel()
        await server.close()
    return out


async def raw_server(workload: str) -> None:
    """The server of a two-process raw cell: prints its ticket, serves until stdin closes."""
    from iroh_pair.transport import Endpoint

    ep = await Endpoint.bind(alpns=[ALPN])
    serving = asyncio.ensure_future(serve_raw(ep, workload))
    emit({"event": "ready", "ticket": ep.ticket()})
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    serving.cancel()
    await ep.close()


async def layer_worker(workload: str, count: int, samples: bool = False) -> Result:
    """One cell of the cache/request layer: sequential | queued, RequestPeer to RequestPeer."""
    from iroh_pair import RequestPeer
    from iroh_pair.transport import Endpoint

    reply = bytes([7]) * REPLY
    payload = bytes([1]) * REQUEST
    server_ep = await Endpoint.bind(alpns=[ALPN])
    client_ep = await Endpoint.bind()
    server = RequestPeer(server_ep, {ALPN: lambda req: reply}).start()
    client = RequestPeer(client_ep).start()
    client.add_address(server_ep.addr())
    peer = server_ep.id
    for _ in range(WARMUP):
        await client.request(peer, ALPN, payload)
    out: Result = {"workload": workload}
    if workload == "sequential":
        lat = []
        start = time.perf_counter()
        for _ in range(count):
            t = time.perf_counter()
            r = await client.request(peer, ALPN, payload)
            lat.append(time.perf_counter() - t)
            assert len(r) == REPLY
        out.update(latency_summary(lat, time.perf_counter() - start, samples))
    elif workload == "queued":
        start = time.perf_counter()
        await asyncio.gather(*(client.request(peer, ALPN, payload) for _ in range(count)))
        out.update(count=count, msg_per_s=round(count / (time.perf_counter() - start), 1))
    else:
        raise ValueError(f"unknown workload {workload!r} for the layer")
    await client.aclose()
    await server.aclose()
    await client_ep.close()
    await server_ep.close()
    return out


async def idle_connections(ticket: str, count: int) -> Result:
    """RSS growth per idle connection to the echo server at ``ticket`` (another process): one
    warm-up connection (kept), then ``count`` more, held idle for a second."""
    from iroh_pair.transport import EndpointAddr, Endpoint

    addr = EndpointAddr.from_ticket(ticket)
    ep = await Endpoint.bind()
    warm = await ep.connect(addr, ALPN, timeout=10)
    await asyncio.sleep(0.5)
    before = rss_kib()
    conns = [await ep.connect(addr, ALPN, timeout=10) for _ in range(count)]
    await asyncio.sleep(1.0)
    after = rss_kib()
    open_ = sum(not c.is_closed for c in conns)
    for c in [warm, *conns]:
        c.close(0, b"done")
    await ep.close()
    return idle_result(count, open_, before, after)


async def serve_forever() -> None:
    """A server for idle-connections cells when the Rust node is not built: prints its ticket,
    then accepts connections and holds them until killed."""
    from iroh_pair.transport import Endpoint

    ep = await Endpoint.bind(alpns=[ALPN])
    emit({"event": "ready", "ticket": ep.ticket()})
    held = []
    while (conn := await ep.accept()) is not None:
        held.append(conn)


async def _local_node(path: str, name: str) -> Node:
    """A Node reachable on loopback only: no relays, no address lookup, no portmapper."""
    from iroh_pair import NetworkOptions, Node

    return await Node.open(path, name=name, options=NetworkOptions.loopback())


async def pair_host() -> Result:
    """Hosts one pairing code on a loopback-only Node: prints ``code``, then ``paired`` with
    the protocol messages the host received after the QUIC handshake, then waits for the
    joiner to close the connection."""
    d = tempfile.mkdtemp(prefix="iroh-pair-bench-host-")
    try:
        node = await _local_node(d, "bench-host")
        try:
            hosted = await node.host_pairing()
            emit({"event": "code", "code": str(hosted.code)})
            await hosted.wait(60)
            emit({
                "event": "paired",
                "pairing_messages_received": node.counters["pairing_messages_received"],
                "connections_accepted": node.endpoint.stats()["connections_accepted"],
            })
            # The joiner reads last (the host's confirmation), so it closes: closing here first
            # could cut that message off.
            await node.wait_disconnected(timeout=30)
            return {"event": "done"}
        finally:
            await node.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def pair_join(code: str) -> Result:
    """Joins ``code`` from a fresh loopback-only Node: prints ``ready`` once the node is open
    (the driver's clock starts there), then ``paired`` as soon as ``join`` returns."""
    d = tempfile.mkdtemp(prefix="iroh-pair-bench-join-")
    try:
        node = await _local_node(d, "bench-join")
        try:
            emit({"event": "ready"})
            t = time.perf_counter()
            await node.join(code, timeout=60)
            ms = (time.perf_counter() - t) * 1e3
            emit({"event": "paired", "join_ms_in_process": round(ms, 2)})
            return {"event": "done"}
        finally:
            await node.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
