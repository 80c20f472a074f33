"""The self-hosted relay and address-lookup servers as local subprocesses: for tests, demos,
development, and devices on one machine or without internet (``iroh-pair servers``).

:class:`LocalServers` runs the workspace's ``iroh-pair-relay`` and ``iroh-pair-dns`` binaries on
127.0.0.1 (never a public service). Each is found through ``$IROH_PAIR_RELAY_BIN`` /
``$IROH_PAIR_DNS_BIN``, then ``target/release`` and ``target/debug`` of the source tree, then
this Python's scripts directory and ``$PATH``; failing that, the one binary that holds both,
``iroh-pair-servers``, which an installed package gets with ``pip install 'iroh-pair[servers]'``
(the companion wheel ``iroh-pair-servers``). Example::

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
    SERVERS_BIN,
    LocalServers,
    ServerError,
    ServerNotFound,
    ServerProcess,
    ServerStartError,
    find_binary,
    server_command,
)

__all__ = [
    "DEFAULT_ORIGIN",
    "DNS_BIN",
    "RELAY_BIN",
    "SERVERS_BIN",
    "LocalServers",
    "ServerError",
    "ServerNotFound",
    "ServerProcess",
    "ServerStartError",
    "find_binary",
    "server_command",
]
