"""Typed asyncio objects over the native iroh binding: endpoints, connections and streams.

These are thin: each awaitable starts one native operation through the loop's bridge
(:mod:`iroh_pair._bridge`). Identities and addresses (:class:`EndpointId`, :class:`SecretKey`,
:class:`EndpointAddr`) are the native classes themselves.

Every wait can be bounded: dials take ``timeout``, requests take ``timeout``, and any other
await can be wrapped in :func:`asyncio.timeout`; cancelling an await aborts its native task, and
a write or request cancelled midway resets its stream (the peer never sees a truncated message
as complete).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

from . import _native
from ._bridge import call, get_bridge, start
from ._native import Chunk, EndpointAddr, EndpointId, KindLimits, SecretKey

#: What the write methods take. A :class:`Chunk` (Rust-owned bytes: see
#: :meth:`RecvStream.read_chunks`) is written without a copy; anything else is copied once.
Data = Union[bytes, bytearray, memoryview, Chunk]

__all__ = [
    "Endpoint",
    "Connection",
    "SendStream",
    "RecvStream",
    "EndpointId",
    "EndpointAddr",
    "SecretKey",
    "Chunk",
    "Data",
    "CloseInfo",
    "PathInfo",
    "PathEvent",
    "LanEvent",
    "LookupConfig",
    "Handler",
    "IncomingStream",
    "KindLimits",
    "STREAM_CANCELLED",
    "STREAM_DROPPED",
    "HANDLER_ERROR",
    "FRAME_TOO_LARGE",
    "STREAM_TIMEOUT",
    "UNKNOWN_KIND",
    "BAD_ENVELOPE",
    "NOT_ADMITTED",
    "DEFAULT_MAX_MESSAGE",
]

log = logging.getLogger("iroh_pair.transport")

#: Stream error codes (see docs/PROTOCOL.md, "Stream error codes").
STREAM_CANCELLED: int = _native.STREAM_CANCELLED
STREAM_DROPPED: int = _native.STREAM_DROPPED
HANDLER_ERROR: int = _native.HANDLER_ERROR
FRAME_TOO_LARGE: int = _native.FRAME_TOO_LARGE
STREAM_TIMEOUT: int = _native.STREAM_TIMEOUT
UNKNOWN_KIND: int = _native.UNKNOWN_KIND
BAD_ENVELOPE: int = _native.BAD_ENVELOPE
NOT_ADMITTED: int = _native.NOT_ADMITTED

# ``KindLimits`` (imported above) is the native class itself; its docstring, with an example, is
# the one written in rust/iroh-pair-native/src/limits.rs:
#
#     limits = KindLimits(0, {"pair2": 64 * 1024 + 64}, frame_timeout=10.0)
#     conn.serve_streams(on_stream, kind_limits=limits)   # header first, then the kind's limit
#     limits.set("msg", 16 * 1024 * 1024 + 1024)          # applies to streams accepted from now on

#: Default bound on one request or reply.
DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024

#: What ``connect`` accepts as the peer.
Target = Union[EndpointAddr, EndpointId, str]

#: A request handler: request bytes in, reply bytes out (or an awaitable of them).
Handler = Callable[[bytes], Union[bytes, Awaitable[bytes]]]


@dataclass(frozen=True, slots=True)
class LookupConfig:
    """Self-hosted address lookup: a pkarr relay to publish to and resolve from, the DNS
    origin domain of the lookup server, and optionally the DNS server to ask (``"ip:port"``)."""

    pkarr_url: str
    dns_origin: str
    dns_server: str | None = None


@dataclass(frozen=True, slots=True)
class CloseInfo:
    """How a connection ended. ``code`` is the application close code when an application
    closed it; ``kind`` is "application", "locally_closed", "timed_out", "reset" or
    "transport"."""

    code: int | None
    reason: bytes
    by_peer: bool
    kind: str


@dataclass(frozen=True, slots=True)
class PathInfo:
    """One network path of a connection: ``kind`` is "relay" or "direct"."""

    id: int
    kind: str
    addr: str
    selected: bool
    rtt: float


@dataclass(frozen=True, slots=True)
class PathEvent:
    """A change of a connection's paths. ``event`` is "opened", "closed", "selected", or
    "snapshot": the first event of every subscription, and again whenever events were dropped;
    ``paths`` then holds the current paths."""

    event: str
    id: int | None
    kind: str | None
    addr: str | None
    paths: tuple[PathInfo, ...] = ()


class SendStream:
    """The sending half of a QUIC stream. Finish it when done: a stream dropped unfinished is
    reset with :data:`STREAM_DROPPED`."""

    __slots__ = ("_n",)

    def __init__(self, native: _native.SendStream) -> None:
        self._n = native

    @property
    def id(self) -> int:
        """The stream's index within its connection."""
        return self._n.id

    async def write(self, data: Data) -> int:
        """Writes some of ``data``; returns how many bytes were accepted."""
        n: int = await call(self._n.write, data)
        return n

    async def write_all(self, data: Data) -> None:
        """Writes all of ``data``."""
        await call(self._n.write_all, data)

    async def write_frame(self, data: Data) -> None:
        """Writes ``data`` as one frame (u32 big-endian length, then the bytes)."""
        await call(self._n.write_frame, data)

    def finish(self) -> None:
        """Ends the stream; the peer reads what was written, then the end."""
        self._n.finish()

    def reset(self, code: int) -> None:
        """Abandons the stream; the peer's reads fail with ``StreamReset(code)``."""
        self._n.reset(code)

    async def stopped(self) -> int | None:
        """Waits until the peer received everything (``None``) or stopped the stream (its code)."""
        r: int | None = await call(self._n.stopped)
        return r

    def __repr__(self) -> str:
        return f"<SendStream id={self.id}>"


class RecvStream:
    """The receiving half of a QUIC stream."""

    __slots__ = ("_n",)

    def __init__(self, native: _native.RecvStream) -> None:
        self._n = native

    @property
    def id(self) -> int:
        """The stream's index within its connection."""
        return self._n.id

    async def read(self, n: int = 65536) -> bytes:
        """Up to ``n`` bytes as soon as any are available; ``b""`` at the end of the stream.

        For bulk data of a known size prefer :meth:`read_exact` in large blocks (1 MiB): it
        waits natively for the whole block, one wake-up of the loop per block instead of one
        per burst of packets (on 2 cores, ~300 against ~250 MiB/s)."""
        r: bytes = await call(self._n.read, n)
        return r

    async def read_chunks(self, n: int = 1 << 20) -> list[Chunk]:
        """Up to ``n`` bytes, as the :class:`Chunk` objects iroh received (one per packet,
        about 1.2 KB each), without copying them; ``[]`` at the end of the stream. A chunk is
        read-only bytes-like (``len``, ``bytes()``, ``memoryview()``, ``hashlib``,
        ``file.write``); writing it to another stream does not copy it either."""
        r: list[Chunk] = await call(self._n.read_chunks, n)
        return r

    async def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes; raises :class:`~iroh_pair.errors.TruncatedFrame` if the stream
        ends first."""
        r: bytes = await call(self._n.read_exact, n)
        return r

    async def read_to_end(self, limit: int) -> bytes:
        """Everything up to the end; raises :class:`~iroh_pair.errors.FrameTooLarge` past
        ``limit`` bytes."""
        r: bytes = await call(self._n.read_to_end, limit)
        return r

    async def read_frame(self, max_len: int) -> bytes | None:
        """One frame, or ``None`` at a clean end of stream. A length prefix over ``max_len``
        raises :class:`~iroh_pair.errors.FrameTooLarge` before anything is allocated."""
        r: bytes | None = await call(self._n.read_frame, max_len)
        return r

    def stop(self, code: int) -> None:
        """Asks the peer to stop sending, with ``code``."""
        self._n.stop(code)

    def __repr__(self) -> str:
        return f"<RecvStream id={self.id}>"


def _paths(native: _native.Connection) -> tuple[PathInfo, ...]:
    return tuple(
        PathInfo(id=p["id"], kind=p["kind"], addr=p["addr"], selected=p["selected"], rtt=p["rtt"])
        for p in native.paths()
    )


class Connection:
    """A QUIC connection to one authenticated peer on one ALPN.

    Open a new stream for every message: streams are cheap, connections cost round trips.
    """

    __slots__ = ("_n", "_remote_id", "_alpn", "__weakref__")

    def __init__(self, native: _native.Connection) -> None:
        self._n = native
        self._remote_id = native.remote_id
        self._alpn = native.alpn

    @property
    def native(self) -> _native.Connection:
        """The native connection object."""
        return self._n

    @property
    def remote_id(self) -> EndpointId:
        """The peer's id, authenticated by the QUIC handshake."""
        return self._remote_id

    @property
    def alpn(self) -> bytes:
        """The negotiated ALPN."""
        return self._alpn

    @property
    def side(self) -> Literal["client", "server"]:
        """``"client"`` if this side dialed, ``"server"`` if it accepted."""
        return "client" if self._n.side == "client" else "server"

    @property
    def stable_id(self) -> int:
        """A process-local id of this connection."""
        return self._n.stable_id

    @property
    def is_closed(self) -> bool:
        """Whether the connection has closed (either side) or was lost."""
        return self._n.is_closed

    @property
    def rtt(self) -> float | None:
        """Round-trip time of the selected path, in seconds."""
        return self._n.rtt

    async def open_bi(self) -> tuple[SendStream, RecvStream]:
        """Opens a bidirectional stream."""
        s, r = await call(self._n.open_bi)
        return SendStream(s), RecvStream(r)

    async def accept_bi(self) -> tuple[SendStream, RecvStream]:
        """Accepts the peer's next bidirectional stream."""
        s, r = await call(self._n.accept_bi)
        return SendStream(s), RecvStream(r)

    async def open_uni(self) -> SendStream:
        """Opens a unidirectional stream."""
        return SendStream(await call(self._n.open_uni))

    async def accept_uni(self) -> RecvStream:
        """Accepts the peer's next unidirectional stream."""
        return RecvStream(await call(self._n.accept_uni))

    def close(self, code: int = 0, reason: bytes = b"") -> None:
        """Closes the connection; the peer sees ``code`` and ``reason``. Only the side that
        reads last should close."""
        self._n.close(code, reason)

    async def closed(self) -> CloseInfo:
        """Waits until the connection is closed, and says how."""
        code, reason, by_peer, kind = await call(self._n.closed)
        return CloseInfo(code=code, reason=reason, by_peer=by_peer, kind=kind)

    def export_keying_material(self, label: bytes, context: bytes, length: int) -> bytes:
        """TLS keying material (RFC 5705): the same bytes on both ends of this connection,
        different on every other. Used as the channel binding of pairing."""
        return self._n.export_keying_material(label, context, length)

    def paths(self) -> tuple[PathInfo, ...]:
        """A snapshot of the connection's open paths."""
        return _paths(self._n)

    def stats(self) -> dict[str, int]:
        """This connection's counters since it opened: UDP datagrams and bytes
        (``udp_tx_datagrams``, ``udp_rx_bytes``, ...), ``lost_packets``, and QUIC frames:
        ``stream_frames_tx``/``_rx``, ``acks_tx``, ``pings_tx``, ``max_streams_tx``,
        ``max_data_tx`` (connection and stream flow control), ``stop_sending_tx`` and
        ``reset_stream_tx``."""
        return self._n.stats()

    def request(
        self,
        payload: Data,
        *,
        max_response: int = DEFAULT_MAX_MESSAGE,
        timeout: float | None = None,
    ) -> asyncio.Future[bytes]:
        """Sends ``payload`` on a new stream; the returned future resolves with the reply.

        One native call, started at once (not when awaited): ``await conn.request(data)``.
        Returning a future rather than a coroutine spares every request a coroutine, and under
        ``asyncio.gather`` a task. Cancelling the future, or a task awaiting it, aborts the
        request and resets its stream.

        The future fails with :class:`~iroh_pair.errors.Timeout` after ``timeout`` seconds
        (the stream is then reset), :class:`~iroh_pair.errors.RemoteError` when the peer's
        handler refused it, and :class:`~iroh_pair.errors.FrameTooLarge` for a reply over
        ``max_response`` bytes.
        """
        return start(self._n.request, payload, max_response, timeout)

    async def send(
        self, payload: Data, *, timeout: float | None = None
    ) -> None:
        """Sends a one-way message; returns once the peer has read all of it (its empty reply)."""
        await self.request(payload, max_response=0, timeout=timeout)

    def serve(
        self,
        handler: Handler,
        *,
        max_request: int = DEFAULT_MAX_MESSAGE,
        frame_timeout: float = 30.0,
    ) -> asyncio.Future[CloseInfo]:
        """Answers every request stream of this connection with ``handler`` until it closes.

        The native serve loop accepts streams and reads each request (the stream's first
        frame); ``handler`` runs on the loop (a plain function inline, a coroutine function as
        a task per request). A handler that raises refuses the request with
        :data:`HANDLER_ERROR`. Returns a future that resolves with the connection's
        :class:`CloseInfo` when serving ends; cancel it to stop serving.
        """
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()

        async def run_async(incoming: _native.IncomingRequest, aw: Awaitable[bytes]) -> None:
            try:
                reply = await aw
            except Exception:
                log.exception("request handler failed")
                _reject(incoming)
                return
            _respond(incoming, reply)

        def on_item(ok: bool, value: Any) -> None:
            # The native drain called ``handler`` and sent every bytes reply itself; here are
            # the rest: (incoming, result) for other results, or the handler's exception.
            if not ok:
                log.error("request handler failed", exc_info=value)
                return
            incoming, reply = value
            if inspect.isawaitable(reply):
                t = loop.create_task(run_async(incoming, reply))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            else:
                _respond(incoming, reply)

        return self._serve(on_item, tasks, max_request, frame_timeout, handler)

    def serve_streams(
        self,
        on_stream: Callable[[IncomingStream], None],
        *,
        max_first_frame: int = DEFAULT_MAX_MESSAGE,
        frame_timeout: float = 30.0,
        kind_limits: KindLimits | None = None,
    ) -> asyncio.Future[CloseInfo]:
        """Like :meth:`serve`, but hands each accepted stream (its first frame read) to
        ``on_stream``, which answers it, refuses it, or takes its streams for an exchange of
        several messages. ``on_stream`` runs inline on the loop and must not block.

        With ``kind_limits`` (a :class:`KindLimits`), the native loop reads the first frame's
        length and envelope header before its body and applies the kind's limit there: a bad
        header is refused with :data:`BAD_ENVELOPE`, a kind whose limit is 0 with
        :data:`NOT_ADMITTED` (its body is not read), a longer frame with
        :data:`FRAME_TOO_LARGE`, and a first frame that does not arrive whole within the
        limits' ``frame_timeout`` with :data:`STREAM_TIMEOUT`. ``max_first_frame`` and
        ``frame_timeout`` are then not used. The first frame handed over is unchanged
        (header and message). Example::

            limits = KindLimits(0, {"pair2": 64 * 1024 + 64}, frame_timeout=10.0)
            served = conn.serve_streams(dispatch, kind_limits=limits)
        """
        def on_item(ok: bool, incoming: Any) -> None:
            if ok:
                on_stream(IncomingStream(incoming))

        return self._serve(on_item, set(), max_first_frame, frame_timeout, None, kind_limits)

    def set_max_concurrent_bi_streams(self, n: int) -> None:
        """Sets how many bidirectional streams the peer may have open at once (QUIC
        MAX_STREAMS). Open streams are not touched: after lowering it, the peer opens no new
        stream until fewer than ``n`` are open (its ``open_bi`` waits). Example::

            conn.set_max_concurrent_bi_streams(2)   # an unknown peer: two streams at a time
        """
        self._n.set_max_concurrent_bi_streams(n)

    def _serve(
        self,
        on_item: Callable[[bool, Any], None],
        tasks: set[asyncio.Task[None]],
        max_first_frame: int,
        frame_timeout: float,
        handler: Handler | None,
        kind_limits: KindLimits | None = None,
    ) -> asyncio.Future[CloseInfo]:
        b = get_bridge()
        done: asyncio.Future[CloseInfo] = b.loop.create_future()

        def on_end(ok: bool, value: Any) -> None:
            if done.done():
                return
            if ok:
                code, reason, by_peer, kind = value
                done.set_result(CloseInfo(code=code, reason=reason, by_peer=by_peer, kind=kind))
            else:
                done.set_exception(value)

        token = b.subscribe(on_item, on_end)
        self._n.serve(b.native, token, max_first_frame, frame_timeout, handler, kind_limits)

        def stop(fut: asyncio.Future[CloseInfo]) -> None:
            if fut.cancelled():
                b.unsubscribe(token)
                for t in tasks:
                    t.cancel()

        done.add_done_callback(stop)
        return done

    async def path_events(self) -> AsyncGenerator[PathEvent, None]:
        """Path changes as they happen, until the connection closes. Starts with a "snapshot"
        event of the current :meth:`paths`, and yields another whenever events were dropped."""
        b = get_bridge()
        queue: asyncio.Queue[PathEvent | None] = asyncio.Queue()
        queue.put_nowait(PathEvent("snapshot", None, None, None, _paths(self._n)))

        def on_item(ok: bool, ev: Any) -> None:
            if not ok:
                return
            if ev["event"] == "lagged":
                queue.put_nowait(PathEvent("snapshot", None, None, None, _paths(self._n)))
            else:
                queue.put_nowait(PathEvent(ev["event"], ev["id"], ev["kind"], ev["addr"]))

        def on_end(ok: bool, value: Any) -> None:
            queue.put_nowait(None)

        token = b.subscribe(on_item, on_end)
        self._n.path_events(b.native, token)
        try:
            while (ev := await queue.get()) is not None:
                yield ev
        finally:
            b.unsubscribe(token)

    def __repr__(self) -> str:
        return (
            f"<Connection remote={self._remote_id.fmt_short()} alpn={self._alpn!r} "
            f"side={self.side} closed={self.is_closed}>"
        )


@dataclass(frozen=True, slots=True)
class LanEvent:
    """A device seen or lost on the LAN (see :meth:`Endpoint.lan_events`)."""

    event: Literal["discovered", "expired"]
    id: EndpointId
    addrs: tuple[str, ...]


class IncomingStream:
    """A stream the peer opened, with its first frame already read (see
    :meth:`Connection.serve_streams`). Answer it exactly once: :meth:`respond`, :meth:`reject`
    or :meth:`take_streams`. Left unanswered, it is reset when collected."""

    __slots__ = ("_n",)

    def __init__(self, native: _native.IncomingRequest) -> None:
        self._n = native

    @property
    def first_frame(self) -> bytes:
        """The body of the stream's first frame."""
        return self._n.request

    def respond(self, data: Data) -> None:
        """Sends ``data`` as the whole reply and finishes the stream (does not wait)."""
        self._n.respond(data)

    def reject(self, code: int = HANDLER_ERROR) -> None:
        """Refuses the stream: resets the reply and stops the request with ``code``."""
        self._n.reject(code)

    def take_streams(self) -> tuple[SendStream, RecvStream]:
        """The stream's two halves, for an exchange of several frames."""
        s, r = self._n.take_streams()
        return SendStream(s), RecvStream(r)


def _respond(incoming: _native.IncomingRequest, reply: object) -> None:
    if not isinstance(reply, (bytes, bytearray, memoryview)):
        log.error("request handler returned %s, not bytes", type(reply).__name__)
        _reject(incoming)
        return
    try:
        incoming.respond(reply)
    except Exception:  # the stream is gone (peer reset it): nothing left to answer
        log.debug("could not send a reply", exc_info=True)


def _reject(incoming: _native.IncomingRequest, code: int = HANDLER_ERROR) -> None:
    try:
        incoming.reject(code)
    except Exception:
        log.debug("could not refuse a request", exc_info=True)


class Endpoint:
    """A bound iroh endpoint: dials and accepts connections.

    Use :meth:`bind`; close it with :meth:`close` (or ``async with``) to end its connections
    gracefully.
    """

    __slots__ = ("_n", "__weakref__")

    def __init__(self, native: _native.Endpoint) -> None:
        self._n = native

    @classmethod
    async def bind(
        cls,
        *,
        secret_key: SecretKey | None = None,
        alpns: Sequence[bytes] = (),
        relay: Literal["disabled", "default"] | Sequence[str] = "disabled",
        bind_addrs: Sequence[str] = ("127.0.0.1:0",),
        clear_ip: bool = False,
        portmapper: bool = False,
        lookup: Literal["none", "n0"] | LookupConfig = "none",
        mdns: bool = False,
        ca_certs: bytes | None = None,
        keep_alive: float | None = None,
        idle_timeout: float | None = None,
        max_bi_streams: int | None = None,
    ) -> Endpoint:
        """Binds a new endpoint.

        The defaults are for local use and tests: relays off, address lookup off, portmapper
        off, bound to 127.0.0.1 on a free port. For production pass ``relay="default"``,
        ``lookup="n0"`` and ``bind_addrs=()`` (all interfaces), or your own servers:
        ``relay=[url, ...]`` and ``lookup=LookupConfig(...)``.

        ``mdns=True`` adds LAN discovery with no server (n0's mDNS address lookup, beside any
        ``lookup``): the endpoint advertises its id and addresses on the LAN and finds other ids
        there; :meth:`lan_events` reports devices appearing and leaving. It needs an address on
        a multicast-capable interface, so pair it with ``bind_addrs=()`` or a LAN address.

        ``ca_certs`` (a PEM bundle) adds trusted roots for the endpoint's own TLS clients, beside
        the built-in web roots: a self-hosted relay or pkarr server with a private certificate.
        The relay's QUIC address discovery (how an endpoint behind NAT learns its public
        address, needed for hole punching) is always TLS, even for an ``http://`` relay URL.

        ``clear_ip=True`` with no ``bind_addrs`` gives a relay-only endpoint. ``keep_alive`` and
        ``idle_timeout`` (seconds) override iroh's QUIC defaults (5 s and 30 s);
        ``max_bi_streams`` its limit of concurrent bidirectional streams per connection (100).
        """
        if isinstance(relay, str):
            relay_mode, relay_urls = relay, []
        else:
            relay_mode, relay_urls = "custom", list(relay)
        kwargs: dict[str, Any] = {}
        if isinstance(lookup, LookupConfig):
            kwargs.update(
                lookup="custom",
                pkarr_url=lookup.pkarr_url,
                dns_origin=lookup.dns_origin,
                dns_server=lookup.dns_server,
            )
        else:
            kwargs["lookup"] = lookup
        native = await call(
            _native.Endpoint.bind,
            secret_key=secret_key,
            alpns=[bytes(a) for a in alpns],
            relay=relay_mode,
            relay_urls=relay_urls,
            bind_addrs=[] if clear_ip and tuple(bind_addrs) == ("127.0.0.1:0",) else list(bind_addrs),
            clear_ip=clear_ip,
            portmapper=portmapper,
            mdns=mdns,
            ca_certs=None if ca_certs is None else bytes(ca_certs),
            keep_alive=keep_alive,
            idle_timeout=idle_timeout,
            max_bi_streams=max_bi_streams,
            **kwargs,
        )
        return cls(native)

    @property
    def native(self) -> _native.Endpoint:
        """The native endpoint object."""
        return self._n

    @property
    def id(self) -> EndpointId:
        """This endpoint's id."""
        return self._n.id

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._n.is_closed

    def addr(self) -> EndpointAddr:
        """How to reach this endpoint right now (for first contact or tests, never to store)."""
        return self._n.addr()

    def ticket(self) -> str:
        """iroh's ticket string for :meth:`addr`."""
        return self._n.addr().to_ticket()

    def bound_sockets(self) -> list[str]:
        """The local UDP sockets."""
        return self._n.bound_sockets()

    async def online(self) -> None:
        """Waits until the endpoint is connected to its home relay."""
        await call(self._n.online)

    async def lookup(self, id: EndpointId, *, fresh: bool = False) -> EndpointAddr:
        """Asks the address lookup services (DNS, pkarr, mDNS) for ``id``'s published
        record and returns the first one found. ``fresh=True`` clears the DNS cache first
        (a "not found" is cached too). Raises :class:`~iroh_pair.errors.ConnectError` when no
        service knows ``id``; no timeout of its own (wrap it in ``asyncio.timeout``)."""
        found: EndpointAddr = await call(self._n.lookup, id, fresh)
        return found

    async def connect(self, target: Target, alpn: bytes, *, timeout: float | None = 10.0) -> Connection:
        """Dials ``target`` (an :class:`EndpointAddr`, an :class:`EndpointId` found through
        address lookup, or a ticket string) on ``alpn``.

        Raises :class:`~iroh_pair.errors.ConnectError` when the dial fails and
        :class:`~iroh_pair.errors.Timeout` when it takes longer than ``timeout`` seconds.
        """
        native = await call(self._n.connect, target, bytes(alpn), timeout)
        return Connection(native)

    async def accept(self) -> Connection | None:
        """The next incoming connection; ``None`` once the endpoint is closed."""
        native = await call(self._n.accept)
        return None if native is None else Connection(native)

    async def close(self) -> None:
        """Closes all connections gracefully and stops the endpoint."""
        await call(self._n.close)

    async def lan_events(self) -> AsyncGenerator[LanEvent, None]:
        """Devices seen (``"discovered"``, again when their addresses change) or lost
        (``"expired"``) on the LAN through mDNS, until the generator is closed. Needs
        ``mdns=True`` at :meth:`bind` (:class:`ValueError` otherwise)."""
        b = get_bridge()
        queue: asyncio.Queue[LanEvent | None] = asyncio.Queue()

        def on_item(ok: bool, ev: Any) -> None:
            if ok:
                queue.put_nowait(LanEvent(ev["event"], ev["id"], tuple(ev["addrs"])))

        def on_end(ok: bool, value: Any) -> None:
            queue.put_nowait(None)

        token = b.subscribe(on_item, on_end)
        try:
            self._n.lan_events(b.native, token)
        except BaseException:
            b.unsubscribe(token)
            raise
        try:
            while (ev := await queue.get()) is not None:
                yield ev
        finally:
            b.unsubscribe(token)

    def mdns_announce(self, service: str) -> _native.MdnsAnnouncement:
        """Starts announcing this endpoint (id and addresses only) on the LAN under the DNS-SD
        service ``service`` (1-15 letters, digits, hyphens) until the returned object's
        ``close()``. Used for the LAN nameplate; works without ``mdns=True``."""
        return self._n.mdns_announce(service)

    async def mdns_browse(self, service: str, *, timeout: float = 5.0, settle: float = 0.5) -> list[EndpointAddr]:
        """The endpoints announcing ``service`` on the LAN (not this one): empty if none was seen
        within ``timeout`` seconds; after the first, waits ``settle`` more for others."""
        found: list[EndpointAddr] = await call(self._n.mdns_browse, service, timeout, settle)
        return found

    def stats(self) -> dict[str, int]:
        """The native counters: connections accepted and dialed, streams by kind, requests served."""
        return self._n.stats()

    async def __aenter__(self) -> Endpoint:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Endpoint id={self.id.fmt_short()} closed={self.is_closed}>"


def debug_stats() -> dict[str, int]:
    """The bridge's pending operations (running loop) and tokio's live task count."""
    stats = dict(_native._debug_stats())
    try:
        stats["pending_tokens"] = get_bridge().pending()
    except RuntimeError:
        pass
    return stats

