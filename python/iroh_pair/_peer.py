"""Request/response between endpoints, the right way: one cached connection per peer and ALPN,
one new stream per message, both directions.

:class:`RequestPeer` is the layer under :class:`~iroh_pair.Node` for applications that bring
their own protocol (their own ALPNs, no pairing): it serves handlers for several ALPNs, adopts
inbound connections into its :class:`~iroh_pair.ConnectionCache` (so requests to a peer that
dialed us reuse that connection), and dials everything else through the cache. Example::

    async with RequestPeer(endpoint, {b"my-app/1": handle}) as peer:
        peer.add_address(other_addr)                 # first contact; later by id alone
        reply = await peer.request(other_addr.id, b"my-app/1", b"hello")
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from iroh_pair._cache import ConnectionCache
from iroh_pair.errors import IrohPairError
from iroh_pair.protocol.constants import CloseCode
from iroh_pair.transport import (
    DEFAULT_MAX_MESSAGE,
    CloseInfo,
    Connection,
    Endpoint,
    EndpointAddr,
    EndpointId,
    Handler,
)

__all__ = ["RequestPeer", "Links"]

log = logging.getLogger("iroh_pair.peer")


class Links:
    """The dial and accept loop shared by :class:`RequestPeer` and :class:`~iroh_pair.Node`:
    dials through address hints (else by id, through address lookup), admits each inbound
    connection through a hook, adopts it into the cache, and hands every connection, dialed or
    accepted, to ``setup`` (which starts serving it).

    - ``admit(conn) -> bool``: whether to keep an inbound connection; it closes the ones it
      refuses (with its own code and reason).
    - ``setup(conn)``: starts serving a connection (called once per dial, once per accept).
    - ``refuse_on_shutdown(conn)``: closes an admitted connection the cache no longer takes
      (the cache is closing); the accept loop then ends.

    The cache (``links.cache``) is made here, so that its dials come back through :meth:`dial`.
    Example::

        links = Links(endpoint, admit=lambda conn: True, setup=serve,
                      refuse_on_shutdown=lambda conn: conn.close(0, b"shutting down"))
        task = asyncio.ensure_future(links.accept_loop())
        conn = await links.cache.get(peer_id, ALPN)
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        admit: Callable[[Connection], bool],
        setup: Callable[[Connection], object],
        refuse_on_shutdown: Callable[[Connection], None],
        dial_timeout: float = 10.0,
        request_timeout: float | None = 30.0,
    ) -> None:
        self.endpoint = endpoint
        self.dial_timeout = dial_timeout
        self.hints: dict[EndpointId, EndpointAddr] = {}
        self._admit = admit
        self._setup = setup
        self._refuse_on_shutdown = refuse_on_shutdown
        self.cache: ConnectionCache[EndpointId, Connection] = ConnectionCache(
            endpoint.id, self.dial, default_timeout=request_timeout
        )

    async def dial(self, peer: EndpointId, alpn: bytes) -> Connection:
        """Dials ``peer`` (at its hint, if any) and sets the connection up (the cache's dialer)."""
        target: EndpointAddr | EndpointId = self.hints.get(peer, peer)
        conn = await self.endpoint.connect(target, alpn, timeout=self.dial_timeout)
        self._setup(conn)
        return conn

    async def accept_loop(self) -> None:
        """Accepts until the endpoint closes (or the cache refuses a connection)."""
        while (conn := await self.endpoint.accept()) is not None:
            if not self._admit(conn):
                continue
            try:
                self.cache.adopt(conn)
            except IrohPairError:
                self._refuse_on_shutdown(conn)
                return
            self._setup(conn)


class RequestPeer:
    """Serves ``handlers`` (ALPN -> handler) on ``endpoint`` and sends requests through a cache.

    ``request_timeout`` bounds each request attempt (a timed-out request evicts its connection
    and, when idempotent, is retried once on a new one); ``dial_timeout`` bounds each dial.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        handlers: Mapping[bytes, Handler] | None = None,
        *,
        request_timeout: float | None = 30.0,
        dial_timeout: float = 10.0,
        max_request: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        self.endpoint = endpoint
        self.handlers = dict(handlers or {})
        self.max_request = max_request
        self._links = Links(
            endpoint, admit=self._admit, setup=self._serve,
            refuse_on_shutdown=lambda conn: conn.close(CloseCode.OK, b"shutting down"),
            dial_timeout=dial_timeout, request_timeout=request_timeout,
        )
        self.cache = self._links.cache
        self._serving: dict[int, asyncio.Future[CloseInfo]] = {}
        self._accept_task: asyncio.Task[None] | None = None

    @property
    def dial_timeout(self) -> float:
        """The bound of each dial (seconds)."""
        return self._links.dial_timeout

    def start(self) -> RequestPeer:
        """Starts accepting connections (call once, from the running loop)."""
        if self._accept_task is None:
            self._accept_task = asyncio.ensure_future(self._links.accept_loop())
        return self

    def add_address(self, addr: EndpointAddr) -> None:
        """An address to dial ``addr.id`` at, for first contact (kept in memory only). Without
        one, dials go by EndpointId alone through the endpoint's address lookup."""
        self._links.hints[addr.id] = addr

    def request(
        self,
        peer: EndpointId,
        alpn: bytes,
        payload: bytes,
        *,
        timeout: float | None = None,
        idempotent: bool = True,
        max_response: int = DEFAULT_MAX_MESSAGE,
    ) -> Coroutine[Any, Any, bytes]:
        """Sends ``payload`` to ``peer`` on a new stream of the cached connection; the coroutine
        returns the reply. See :meth:`ConnectionCache.request` for timeouts and the retry rule.
        (It is the cache's coroutine itself, not one wrapped around it.)"""
        if timeout is None:
            return self.cache.request(
                peer, alpn, payload, idempotent=idempotent, max_response=max_response
            )
        return self.cache.request(
            peer, alpn, payload, timeout=timeout, idempotent=idempotent, max_response=max_response
        )

    async def send(self, peer: EndpointId, alpn: bytes, payload: bytes, *, timeout: float | None = None) -> None:
        """One-way: returns once the peer has read the whole message and answered (empty)."""
        await self.request(peer, alpn, payload, timeout=timeout, max_response=0)

    def _admit(self, conn: Connection) -> bool:
        if conn.alpn not in self.handlers:
            conn.close(CloseCode.OK, b"no handler")
            return False
        return True

    def _serve(self, conn: Connection) -> None:
        handler = self.handlers.get(conn.alpn)
        if handler is None:
            return
        fut = conn.serve(handler, max_request=self.max_request)
        self._serving[conn.stable_id] = fut
        fut.add_done_callback(lambda _: self._serving.pop(conn.stable_id, None))

    async def aclose(self) -> None:
        """Stops accepting, closes every cached connection (not the endpoint)."""
        if self._accept_task is not None:
            self._accept_task.cancel()
        for fut in list(self._serving.values()):
            fut.cancel()
        await self.cache.aclose()

    async def __aenter__(self) -> RequestPeer:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<RequestPeer {self.endpoint.id.fmt_short()} serving={len(self._serving)} {self.cache!r}>"
