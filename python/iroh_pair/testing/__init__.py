"""Test infrastructure: the self-hosted relay and address-lookup servers as local subprocesses.

:class:`LocalServers` runs the workspace's ``iroh-pair-relay`` and ``iroh-pair-dns`` binaries on
127.0.0.1 for tests, demos and single-host setups (never a public service). The binaries are
found through ``$IROH_PAIR_RELAY_BIN`` / ``$IROH_PAIR_DNS_BIN``, then ``target/release`` and
``target/debug`` of the source tree, then ``$PATH``. Example::

    from iroh_pair.testing import LocalServers

    async with LocalServers() as servers:
        a = await Endpoint.bind(servers.options(), alpns=[ALPN])
        b = await Endpoint.bind(servers.options(), alpns=[ALPN])
        await b.online()
        conn = await a.connect(b.id, ALPN)   # found through the lookup server
"""

from __future__ import annotations

from iroh_pair.testing._servers import (
    DEFAULT_ORIGIN,
    DNS_BIN,
    RELAY_BIN,
    LocalServers,
    ServerError,
    ServerNotFound,
    ServerProcess,
    ServerStartError,
    find_binary,
)

__all__ = [
    "DEFAULT_ORIGIN",
    "DNS_BIN",
    "RELAY_BIN",
    "LocalServers",
    "ServerError",
    "ServerNotFound",
    "ServerProcess",
    "ServerStartError",
    "find_binary",
]
