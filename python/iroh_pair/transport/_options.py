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
    # a relay without QUIC address discovery (no certificate), e.g. a local iroh-pair-relay:
    opts = NetworkOptions.self_hosted([RelayConfig("http://127.0.0.1:3340/", quic_port=None)])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

__all__ = ["LookupConfig", "NetworkOptions", "Relay", "RelayConfig", "Lookup", "DEFAULT_RELAY_QUIC_PORT"]


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


#: iroh's default port for a relay's QUIC address discovery (``DEFAULT_RELAY_QUIC_PORT``).
DEFAULT_RELAY_QUIC_PORT = 7842

_QAD = "#qad="


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """One relay: its URL and where its QUIC address discovery (QAD) answers.

    QAD tells an endpoint the public address it is seen from (its hole-punching candidate). iroh
    probes it at ``quic_port`` of the URL's host, and picks its home relay (what
    ``Endpoint.online()`` waits for) only after its first net report, which waits for that
    probe. A relay that does not answer there holds every start until iroh's probe timeout
    (3 s), so say so: ``quic_port=None`` for a relay that runs no QAD (``iroh-pair-relay``
    without a certificate, as in ``LocalServers``), or the port it does run it on.

    ``NetworkOptions.relay`` also takes plain strings: ``"URL"`` (QAD at
    :data:`DEFAULT_RELAY_QUIC_PORT`), ``"URL#qad=none"`` or ``"URL#qad=PORT"``, the form the
    command line's ``--relay`` and the relay server's ready line (``client_relay_url``) use; see
    :meth:`parse`. The ``#qad=`` part configures this side only and is never sent.

    Example::

        >>> RelayConfig("http://127.0.0.1:3340/", quic_port=None).quic_port is None
        True
        >>> RelayConfig.parse("http://127.0.0.1:3340/#qad=none")
        RelayConfig(url='http://127.0.0.1:3340/', quic_port=None)
        >>> RelayConfig.parse("https://relay.example/").quic_port
        7842
    """

    url: str
    quic_port: int | None = DEFAULT_RELAY_QUIC_PORT

    def __post_init__(self) -> None:
        if _QAD in self.url:
            raise ValueError(f"relay URL {self.url!r}: give the QAD port as quic_port=, or use RelayConfig.parse")
        port = self.quic_port
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
            raise ValueError(f"relay {self.url!r}: quic_port must be None or a port (1-65535), got {port!r}")

    @classmethod
    def parse(cls, text: str) -> RelayConfig:
        """Reads ``"URL"``, ``"URL#qad=none"`` or ``"URL#qad=PORT"``.

        Raises:
            ValueError: the ``#qad=`` part is neither ``none`` nor a port (1-65535).
        """
        url, sep, qad = text.partition(_QAD)
        if not sep:
            return cls(url)
        if qad == "none":
            return cls(url, quic_port=None)
        if qad.isdigit() and 0 < int(qad) < 65536:
            return cls(url, quic_port=int(qad))
        raise ValueError(f"relay {text!r}: #qad= takes 'none' or a port (1-65535), got {qad!r}")

    def __str__(self) -> str:
        """The :meth:`parse` form: ``URL``, ``URL#qad=none`` or ``URL#qad=PORT``."""
        if self.quic_port == DEFAULT_RELAY_QUIC_PORT:
            return self.url
        return f"{self.url}{_QAD}{'none' if self.quic_port is None else self.quic_port}"


#: ``NetworkOptions.relay``: no relays, n0's public relays, or your own relays.
Relay = Union[Literal["disabled", "default"], tuple[RelayConfig, ...]]
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

    - ``relay``: ``"disabled"``, ``"default"`` (n0's public relays) or your own relays, a tuple of
      :class:`RelayConfig` (strings are read with :meth:`RelayConfig.parse`: ``"URL"``,
      ``"URL#qad=none"`` for a relay without QUIC address discovery, ``"URL#qad=PORT"``).
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
            relays = tuple(r if isinstance(r, RelayConfig) else RelayConfig.parse(r) for r in self.relay)
            object.__setattr__(self, "relay", relays)
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
        relay_urls: Sequence[str | RelayConfig],
        lookup: Lookup = "none",
        *,
        ca_certs: bytes | None = None,
        bind_addrs: Sequence[str] = (),
    ) -> NetworkOptions:
        """Your own relays (``relay_urls``: URLs or :class:`RelayConfig`) and address lookup (a :class:`LookupConfig`; see
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
        relays = tuple(r if isinstance(r, RelayConfig) else RelayConfig.parse(r) for r in relay_urls)
        return cls(relay=relays, lookup=lookup, bind_addrs=tuple(bind_addrs),
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
