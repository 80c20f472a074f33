"""Typed asyncio objects over the native iroh binding: endpoints, connections and streams.

These are thin: each awaitable starts one native operation through the loop's bridge
(:mod:`iroh_pair.runtime`). Identities and addresses (:class:`EndpointId`, :class:`SecretKey`,
:class:`EndpointAddr`) are the native classes themselves.

Every wait can be bounded: dials take ``timeout``, requests take ``timeout``, and any other
await can be wrapped in :func:`asyncio.timeout`; cancelling an await aborts its native task, and
a write or request cancelled midway resets its stream (the peer never sees a truncated message
as complete). Streams are reset and stopped with the codes of
:class:`~iroh_pair.protocol.constants.StreamErrorCode`. Example::

    from iroh_pair.transport import Endpoint

    async with await Endpoint.bind(alpns=[b"my-app/1"]) as server, await Endpoint.bind() as client:
        accepting = asyncio.ensure_future(server.accept())
        conn = await client.connect(server.addr(), b"my-app/1")
        (await accepting).serve(lambda request: b"echo: " + request)
        assert await conn.request(b"hi") == b"echo: hi"
"""

from __future__ import annotations

from iroh_pair._native import Chunk, EndpointAddr, EndpointId, KindLimits, SecretKey
from iroh_pair.transport._connection import (
    DEFAULT_MAX_MESSAGE,
    CloseInfo,
    Connection,
    Handler,
    IncomingStream,
    PathEvent,
    PathInfo,
)
from iroh_pair.transport._endpoint import Endpoint, LanEvent, Target
from iroh_pair.transport._options import LookupConfig, NetworkOptions, RelayConfig
from iroh_pair.transport._streams import Data, RecvStream, SendStream

__all__ = [
    "Endpoint",
    "Connection",
    "SendStream",
    "RecvStream",
    "IncomingStream",
    "EndpointId",
    "EndpointAddr",
    "SecretKey",
    "Chunk",
    "Data",
    "Target",
    "Handler",
    "CloseInfo",
    "PathInfo",
    "PathEvent",
    "LanEvent",
    "LookupConfig",
    "NetworkOptions",
    "RelayConfig",
    "KindLimits",
    "DEFAULT_MAX_MESSAGE",
]
