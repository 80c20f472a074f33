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

__all__ = ["Target", "LookupConfig", "LanEvent", "Endpoint"]

#: What ``connect`` accepts as the peer.
Target = Union[EndpointAddr, EndpointId, str]


@dataclass(frozen=True, slots=True)
class LookupConfig:
    """Self-hosted address lookup: a pkarr relay to publish to and resolve from, the DNS
    origin domain of the lookup server, and optionally the DNS server to ask (``"ip:port"``)."""

    pkarr_url: str
    dns_origin: str
    dns_server: str | None = None


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
