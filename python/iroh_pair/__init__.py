"""iroh-pair: pair devices and keep them talking, over iroh, from asyncio.

The transport (:mod:`iroh_pair.transport`) is a thin native binding of iroh 1.x; everything
above it (connection cache, pairing, registry, messaging) is Python.
"""

from __future__ import annotations

from iroh_pair import _native
from iroh_pair._cache import ConnectionCache
from iroh_pair._native import EndpointAddr, EndpointId, SecretKey
from iroh_pair._node import Node
from iroh_pair._pairing import SasCheck
from iroh_pair._peer import RequestPeer
from iroh_pair.errors import IrohPairError
from iroh_pair.protocol import spake as _spake
from iroh_pair.transport import Connection, Endpoint, RecvStream, SendStream

# The sans-I/O protocol computes SPAKE2 with the native implementation (see protocol/spake.py).
_spake.use_backend(_native.Spake2)

__all__ = [
    "Connection",
    "ConnectionCache",
    "Endpoint",
    "EndpointAddr",
    "EndpointId",
    "IrohPairError",
    "Node",
    "RecvStream",
    "RequestPeer",
    "SasCheck",
    "SecretKey",
    "SendStream",
]

__version__ = "0.1.0"
