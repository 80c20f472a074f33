"""aioquic (pure-Python QUIC) as a contender.

The server has a self-signed certificate made at startup (ECDSA P-256, for "localhost"); the
client verifies it (it is the client's only trust anchor), so like iroh the connection is
authenticated. Every request is a new bidirectional stream carrying the package's request
protocol (a framed request, the reply to the end of the stream), driven through aioquic's
asyncio event API (``QuicConnectionProtocol.quic_event_received``), which is how aioquic's own
HTTP/3 code uses it; the stream reader/writer API on top of it only adds work. Limits are
aioquic's defaults: 128 concurrent bidirectional streams (fixed in ``QuicConnection``), 1 MiB
of connection and stream flow-control window.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from typing import TYPE_CHECKING, Any, cast

from bench.common import ALPN, REPLY, REQUEST, WARMUP, Result, emit, frame, idle_result, latency_summary, rss_kib

if TYPE_CHECKING:
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import QuicEvent

STREAM_LIMIT = 128
HOST = "127.0.0.1"


def version() -> str:
    from importlib.metadata import version as v

    return v("aioquic")


def make_cert() -> tuple[Any, Any, str]:
    """A self-signed certificate for "localhost": (certificate, private key, PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key, cert.public_bytes(serialization.Encoding.PEM).decode()


def _server_config(cert: Any, key: Any) -> QuicConfiguration:
    from aioquic.quic.configuration import QuicConfiguration

    cfg = QuicConfiguration(is_client=False, alpn_protocols=[ALPN.decode()])
    cfg.certificate = cert
    cfg.private_key = key
    return cfg


def _client_config(pem: str) -> QuicConfiguration:
    from aioquic.quic.configuration import QuicConfiguration

    cfg = QuicConfiguration(is_client=True, alpn_protocols=[ALPN.decode()], server_name="localhost")
    cfg.load_verify_locations(cadata=pem.encode())
    return cfg


def _protocols() -> tuple[type[QuicConnectionProtocol], type[QuicConnectionProtocol], type[Client]]:
    """The protocol classes (defined on first use: aioquic is imported only when it runs)."""
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic.events import StreamDataReceived

    reply = bytes([7]) * REPLY

    class RequestServer(QuicConnectionProtocol):
        """Answers every stream's framed request with ``reply`` once the frame is complete."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._bufs: dict[int, bytearray] = {}

        def quic_event_received(self, event: QuicEvent) -> None:
            if not isinstance(event, StreamDataReceived):
                return
            buf = self._bufs.get(event.stream_id)
            if buf is None:
                buf = self._bufs[event.stream_id] = bytearray()
            buf += event.data
            if len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                del self._bufs[event.stream_id]
                self._quic.send_stream_data(event.stream_id, reply, end_stream=True)
            # datagram_received() transmits after the events are processed

    class BulkServer(QuicConnectionProtocol):
        """Counts a stream's bytes; at its end, answers with the count (u64 big-endian)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._counts: dict[int, int] = {}

        def quic_event_received(self, event: QuicEvent) -> None:
            if not isinstance(event, StreamDataReceived):
                return
            n = self._counts.get(event.stream_id, 0) + len(event.data)
            self._counts[event.stream_id] = n
            if event.end_stream:
                self._quic.send_stream_data(event.stream_id, n.to_bytes(8, "big"), end_stream=True)

    class ClientProto(QuicConnectionProtocol):
        """``request`` opens a stream, sends the bytes and the end, resolves with the reply."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._waiting: dict[int, tuple[bytearray, asyncio.Future[bytes]]] = {}

        def request(self, data: bytes, chunks: int = 1) -> asyncio.Future[bytes]:
            sid = self._quic.get_next_available_stream_id()
            for _ in range(chunks):
                self._quic.send_stream_data(sid, data)
            self._quic.send_stream_data(sid, b"", end_stream=True)
            fut: asyncio.Future[bytes] = self._loop.create_future()
            self._waiting[sid] = (bytearray(), fut)
            self.transmit()
            return fut

        def quic_event_received(self, event: QuicEvent) -> None:
            if not isinstance(event, StreamDataReceived) or event.stream_id not in self._waiting:
                return
            buf, fut = self._waiting[event.stream_id]
            buf += event.data
            if event.end_stream:
                del self._waiting[event.stream_id]
                fut.set_result(bytes(buf))

    return RequestServer, BulkServer, cast("type[Client]", ClientProto)


if TYPE_CHECKING:

    class Client(QuicConnectionProtocol):
        def request(self, data: bytes, chunks: int = 1) -> asyncio.Future[bytes]: ...


async def _serve(protocol: type[QuicConnectionProtocol], cert: Any, key: Any) -> tuple[Any, int]:
    from aioquic.asyncio.server import serve

    server = await serve(HOST, 0, configuration=_server_config(cert, key), create_protocol=protocol)
    assert server._transport is not None
    port: int = server._transport.get_extra_info("sockname")[1]
    return server, port


async def _connect(cls: type[Client], port: int, pem: str) -> tuple[Client, asyncio.DatagramTransport]:
    """A client connection on its own UDP socket (aioquic's model), handshake done."""
    from aioquic.quic.connection import QuicConnection

    loop = asyncio.get_running_loop()
    quic = QuicConnection(configuration=_client_config(pem))
    transport, protocol = await loop.create_datagram_endpoint(lambda: cls(quic), local_addr=(HOST, 0))
    protocol.connect((HOST, port))
    await protocol.wait_connected()
    return protocol, transport


def _close(protocol: Client, transport: asyncio.DatagramTransport) -> None:
    protocol.close()  # sends CONNECTION_CLOSE now
    transport.close()


async def worker(workload: str, count: int, mib: int, samples: bool = False) -> Result:
    """One cell: sequential | queued | bulk | connect-per-message."""
    request_server, bulk_server, client_cls = _protocols()
    cert, key, pem = make_cert()
    server, port = await _serve(bulk_server if workload == "bulk" else request_server, cert, key)
    data = frame(bytes([1]) * REQUEST)
    out: Result = {"workload": workload}
    if workload == "connect-per-message":
        lat = []
        start = time.perf_counter()
        for _ in range(count):
            t = time.perf_counter()
            c, tr = await _connect(client_cls, port, pem)
            assert len(await c.request(data)) == REPLY
            _close(c, tr)
            lat.append(time.perf_counter() - t)
        out.update(latency_summary(lat, time.perf_counter() - start, samples))
    else:
        conn, tr = await _connect(client_cls, port, pem)
        if workload in ("sequential", "queued"):
            for _ in range(WARMUP):
                await conn.request(data)
        if workload == "sequential":
            lat = []
            start = time.perf_counter()
            for _ in range(count):
                t = time.perf_counter()
                r = await conn.request(data)
                lat.append(time.perf_counter() - t)
                assert len(r) == REPLY
            out.update(latency_summary(lat, time.perf_counter() - start, samples))
        elif workload == "queued":
            start = time.perf_counter()
            await asyncio.gather(*(conn.request(data) for _ in range(count)))
            out.update(count=count, msg_per_s=round(count / (time.perf_counter() - start), 1))
        elif workload == "bulk":
            # No backpressure in aioquic's API: everything is buffered at once (what its
            # StreamWriter.write does), then sent as flow and congestion control allow.
            start = time.perf_counter()
            got = int.from_bytes(await conn.request(bytes(1 << 20), chunks=mib), "big")
            total = time.perf_counter() - start
            assert got == mib << 20
            out.update(mib=mib, mib_per_s=round(mib / total, 1))
        else:
            raise ValueError(f"unknown workload {workload!r}")
        _close(conn, tr)
    server.close()
    return out


async def serve_forever() -> None:
    """The server of the idle-connections cell (its own process): prints its port and
    certificate, then answers requests until killed."""
    request_server, _, _ = _protocols()
    cert, key, pem = make_cert()
    _, port = await _serve(request_server, cert, key)
    emit({"event": "ready", "peer": json.dumps({"port": port, "cert": pem})})
    await asyncio.Event().wait()


async def idle_connections(peer: str, count: int) -> Result:
    """RSS growth per idle connection to the aioquic server ``peer`` (another process)."""
    info = json.loads(peer)
    port, pem = int(info["port"]), str(info["cert"])
    _, _, client_cls = _protocols()
    warm = await _connect(client_cls, port, pem)
    await asyncio.sleep(0.5)
    before = rss_kib()
    conns = [await _connect(client_cls, port, pem) for _ in range(count)]
    await asyncio.sleep(1.0)
    after = rss_kib()
    open_ = sum(not c._quic._close_event for c, _ in conns)
    for c, tr in [warm, *conns]:
        _close(c, tr)
    return idle_result(count, open_, before, after)
