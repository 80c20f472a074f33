"""A QUIC connection to one authenticated peer (:class:`Connection`), and a stream the peer
opened with its first frame read (:class:`IncomingStream`).

Open a new stream for every message: streams are cheap, connections cost round trips. Each
awaitable starts one native operation through the loop's bridge; cancelling it aborts the
operation. Example::

    reply = await conn.request(b"ping", timeout=5)      # one stream, one frame each way
    served = conn.serve(lambda request: request)        # answer the peer's requests
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Union

from iroh_pair import _native
from iroh_pair._native import EndpointId, KindLimits
from iroh_pair.protocol.constants import StreamErrorCode
from iroh_pair.runtime._bridge import call, get_bridge, start
from iroh_pair.transport._streams import Data, RecvStream, SendStream

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "Handler",
    "CloseInfo",
    "PathInfo",
    "PathEvent",
    "Connection",
    "IncomingStream",
]

log = logging.getLogger("iroh_pair.transport")

# ``KindLimits`` (imported above) is the native class itself; its docstring, with an example, is
# the one written in rust/iroh-pair-native/src/limits.rs:
#
#     limits = KindLimits(0, {"pair2": 64 * 1024 + 64}, frame_timeout=10.0)
#     conn.serve_streams(on_stream, kind_limits=limits)   # header first, then the kind's limit
#     limits.set("msg", 16 * 1024 * 1024 + 1024)          # applies to streams accepted from now on

#: Default bound on one request or reply.
DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024

#: A request handler: request bytes in, reply bytes out (or an awaitable of them).
Handler = Callable[[bytes], Union[bytes, Awaitable[bytes]]]


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
        ``StreamErrorCode.HANDLER_ERROR``. Returns a future that resolves with the connection's
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
        header is refused with ``BAD_ENVELOPE``, a kind whose limit is 0 with ``NOT_ADMITTED``
        (its body is not read), a longer frame with ``FRAME_TOO_LARGE``, and a first frame that
        does not arrive whole within the limits' ``frame_timeout`` with ``TIMEOUT`` (the
        :class:`~iroh_pair.protocol.constants.StreamErrorCode` values). ``max_first_frame`` and
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

    def reject(self, code: int = StreamErrorCode.HANDLER_ERROR) -> None:
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


def _reject(incoming: _native.IncomingRequest, code: int = StreamErrorCode.HANDLER_ERROR) -> None:
    try:
        incoming.reject(code)
    except Exception:
        log.debug("could not refuse a request", exc_info=True)
