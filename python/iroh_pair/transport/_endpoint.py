"""A bound iroh endpoint (:class:`Endpoint`): dials and accepts connections, finds peers.

Use :meth:`Endpoint.bind`; close it with :meth:`Endpoint.close` (or ``async with``) to end its
connections gracefully. Example::

    async with await Endpoint.bind(alpns=[ALPN]) as ep:
        conn = await ep.connect(ticket, ALPN, timeout=10)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

from iroh_pair import _native
from iroh_pair._native import EndpointAddr, EndpointId, SecretKey
from iroh_pair.runtime._bridge import call, get_bridge
from iroh_pair.transport._connection import Connection
from iroh_pair.transport._options import LookupConfig, NetworkOptions

__all__ = ["Target", "LanEvent", "Endpoint"]

#: What ``connect`` accepts as the peer.
Target = Union[EndpointAddr, EndpointId, str]


@dataclass(frozen=True, slots=True)
class LanEvent:
    """A device seen or lost on the LAN (see :meth:`Endpoint.lan_events`)."""

    event: Literal["discovered", "expired"]
    id: EndpointId
    addrs: tuple[str, ...]


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
        options: NetworkOptions | None = None,
        *,
        secret_key: SecretKey | None = None,
        alpns: Sequence[bytes] = (),
    ) -> Endpoint:
        """Binds a new endpoint with ``options`` (:class:`NetworkOptions`; by default
        :meth:`NetworkOptions.loopback`: relays, address lookup and portmapper off, bound to
        127.0.0.1 on a free port). For production pass :meth:`NetworkOptions.n0` or your own
        servers (:meth:`NetworkOptions.self_hosted`); change one field with
        ``options.replace(...)``. Example::

            ep = await Endpoint.bind(NetworkOptions.n0().replace(idle_timeout=60.0), alpns=[ALPN])
        """
        if options is None:
            options = NetworkOptions.loopback()
        native = await call(
            _native.Endpoint.bind,
            options,
            secret_key=secret_key,
            alpns=[bytes(a) for a in alpns],
        )
        return cls(native)

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
        ``mdns=True`` in the options of :meth:`bind` (:class:`ValueError` otherwise)."""
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
        """The native counters: connections accepted and dialed, streams by kind, requests
        served; and the bytes on the wire from iroh's socket counters: ``wire_bytes_sent`` /
        ``wire_bytes_recv`` (every transport), ``ipv4_bytes_sent``, ``ipv6_bytes_recv``,
        ``relay_bytes_sent``, ... (per transport)::

            before = ep.stats()["wire_bytes_recv"]
            ...
            print("received on the wire:", ep.stats()["wire_bytes_recv"] - before)
        """
        return self._n.stats()

    async def __aenter__(self) -> Endpoint:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Endpoint id={self.id.fmt_short()} closed={self.is_closed}>"
