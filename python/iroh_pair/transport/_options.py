"""The network options of an endpoint or a node (:class:`NetworkOptions`), with named presets.

One frozen value says which relays, which address lookup, which local addresses and which QUIC
limits an endpoint uses. Pick a preset and change single fields with :meth:`NetworkOptions.replace`::

    from iroh_pair.transport import Endpoint, NetworkOptions

    ep = await Endpoint.bind(options=NetworkOptions.loopback())       # tests, one machine
    node = await Node.open(path, options=NetworkOptions.lan())         # one LAN, no server
    node = await Node.open(path)                                       # NetworkOptions.n0()
    opts = NetworkOptions.self_hosted(["https://relay.example/"], LookupConfig(
        pkarr_url="https://dns.example/pkarr", dns_origin="dns.example"))
    opts = opts.replace(idle_timeout=60.0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

__all__ = ["LookupConfig", "NetworkOptions", "Relay", "Lookup"]


@dataclass(frozen=True, slots=True)
class LookupConfig:
    """Self-hosted address lookup: a pkarr relay to publish to and resolve from, the DNS
    origin domain of the lookup server, and optionally the DNS server to ask (``"ip:port"``).

    Example::

        LookupConfig(pkarr_url="https://dns.example/pkarr", dns_origin="dns.example")
    """

    pkarr_url: str
    dns_origin: str
    dns_server: str | None = None


#: ``NetworkOptions.relay``: no relays, n0's public relays, or your own relay URLs.
Relay = Union[Literal["disabled", "default"], tuple[str, ...]]
#: ``NetworkOptions.lookup``: no address lookup, n0's DNS/pkarr servers, or your own.
Lookup = Union[Literal["none", "n0"], LookupConfig]

_LOOPBACK = ("127.0.0.1:0",)


@dataclass(frozen=True, slots=True)
class NetworkOptions:
    """How an endpoint reaches the network: relays, address lookup, local addresses, QUIC limits.

    The field defaults are :meth:`n0` (production: n0's public relays and address lookup, all
    interfaces, portmapper on). Use a preset (:meth:`loopback`, :meth:`lan`, :meth:`n0`,
    :meth:`self_hosted`, or ``LocalServers.options()`` in tests) and :meth:`replace` single
    fields. Accepted by ``Endpoint.bind(options=...)`` and ``Node.open(options=...)``.

    - ``relay``: ``"disabled"``, ``"default"`` (n0's public relays) or a tuple of relay URLs.
    - ``lookup``: ``"none"``, ``"n0"`` (n0's DNS and pkarr servers) or a :class:`LookupConfig`.
    - ``bind_addrs``: local ``"ip:port"`` sockets; empty for all interfaces on a free port.
      ``clear_ip=True`` with no ``bind_addrs`` gives a relay-only endpoint.
    - ``portmapper``: probe the gateway for a port mapping (UPnP, NAT-PMP, PCP).
    - ``mdns``: LAN discovery with no server (beside any ``lookup``): the endpoint advertises
      its id and addresses on the LAN and finds other ids there; ``Endpoint.lan_events``
      reports devices appearing and leaving. Needs an address on a multicast-capable
      interface, so pair it with ``bind_addrs=()`` or a LAN address.
    - ``ca_certs``: a PEM bundle of extra trusted roots for the endpoint's own TLS clients,
      beside the built-in web roots (a self-hosted relay or pkarr server with a private
      certificate). The relay's QUIC address discovery is always TLS, even for ``http://``.
    - ``keep_alive``, ``idle_timeout`` (seconds): override iroh's QUIC defaults (5 s and 30 s);
      ``max_bi_streams``: its limit of concurrent bidirectional streams per connection (100).

    Example::

        >>> NetworkOptions.loopback().bind_addrs
        ('127.0.0.1:0',)
        >>> NetworkOptions.lan().replace(idle_timeout=60.0).idle_timeout
        60.0
    """

    relay: Relay = "default"
    lookup: Lookup = "n0"
    bind_addrs: tuple[str, ...] = ()
    clear_ip: bool = False
    portmapper: bool = True
    mdns: bool = False
    ca_certs: bytes | None = None
    keep_alive: float | None = None
    idle_timeout: float | None = None
    max_bi_streams: int | None = None

    def __post_init__(self) -> None:
        # Lists become tuples, so that the value stays frozen (and hashable).
        if not isinstance(self.relay, str):
            object.__setattr__(self, "relay", tuple(self.relay))
        object.__setattr__(self, "bind_addrs", tuple(self.bind_addrs))
        if self.ca_certs is not None:
            object.__setattr__(self, "ca_certs", bytes(self.ca_certs))

    @classmethod
    def loopback(cls) -> NetworkOptions:
        """One machine only (tests, demos): 127.0.0.1 on a free port, no relays, no address
        lookup, portmapper off. The default of ``Endpoint.bind``."""
        return cls(relay="disabled", lookup="none", bind_addrs=_LOOPBACK, portmapper=False)

    @classmethod
    def lan(cls) -> NetworkOptions:
        """One LAN, no server: all interfaces, mDNS discovery on, no relays, no address lookup,
        portmapper off."""
        return cls(relay="disabled", lookup="none", bind_addrs=(), portmapper=False, mdns=True)

    @classmethod
    def n0(cls) -> NetworkOptions:
        """Production over the internet with n0's public relays and DNS address lookup, all
        interfaces, portmapper on. The default of ``Node.open``."""
        return cls()

    @classmethod
    def self_hosted(
        cls,
        relay_urls: Sequence[str],
        lookup: Lookup = "none",
        *,
        ca_certs: bytes | None = None,
        bind_addrs: Sequence[str] = (),
    ) -> NetworkOptions:
        """Your own relays (``relay_urls``) and address lookup (a :class:`LookupConfig`; see
        docs/SELF_HOSTING.md), ``ca_certs`` for a private certificate; all interfaces unless
        ``bind_addrs``; portmapper off.

        Example::

            NetworkOptions.self_hosted(
                ["https://relay.example/"],
                LookupConfig(pkarr_url="https://dns.example/pkarr", dns_origin="dns.example"),
            )
        """
        if isinstance(relay_urls, str):
            raise TypeError("relay_urls is a list of URLs, not one string")
        return cls(relay=tuple(relay_urls), lookup=lookup, bind_addrs=tuple(bind_addrs),
                   portmapper=False, ca_certs=ca_certs)

    def replace(self, **changes: Any) -> NetworkOptions:
        """A copy with the given fields changed (:func:`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)

    @property
    def uses_relay(self) -> bool:
        """Whether relays are on."""
        return self.relay != "disabled"

    @property
    def uses_lookup(self) -> bool:
        """Whether an address lookup service is on."""
        return self.lookup != "none"
