"""iroh-pair: pair devices and keep them talking, over iroh, from asyncio.

The transport (:mod:`iroh_pair.transport`) is a thin native binding of iroh 1.x; everything
above it (connection cache, pairing, registry, messaging) is Python.
"""

from __future__ import annotations

from ._native import EndpointAddr, EndpointId, SecretKey
from .errors import IrohPairError
from .transport import Connection, Endpoint, RecvStream, SendStream

__all__ = [
    "Connection",
    "Endpoint",
    "EndpointAddr",
    "EndpointId",
    "IrohPairError",
    "RecvStream",
    "SecretKey",
    "SendStream",
]

__version__ = "0.1.0"
