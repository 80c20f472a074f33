"""iroh-pair: pair devices and keep them talking, over iroh, from asyncio.

Everything an application needs is importable from here::

    import asyncio
    from iroh_pair import Node, PairingFailed

    async def main() -> None:
        async with await Node.open("~/.local/share/myapp", name="laptop") as node:
            hosted = await node.host_pairing()
            print("pairing code:", hosted.code)
            try:
                device = await hosted.wait()
            except PairingFailed as e:
                print("not paired:", e.code.name)
                return
            print(await node.request(device, b"hello"))

    asyncio.run(main())

The layers under it are public modules of their own: :mod:`iroh_pair.transport` (the thin
native binding of iroh 1.x), :mod:`iroh_pair.runtime` (how iroh and asyncio share the
process), :mod:`iroh_pair.protocol` (the sans-I/O protocol), :mod:`iroh_pair.store` (the data
directory), :mod:`iroh_pair.errors` (every exception, all re-exported here) and
:mod:`iroh_pair.testing` (local relay and lookup servers for tests). Modules whose name starts
with an underscore are the implementation.
"""

from __future__ import annotations

from iroh_pair import _native
from iroh_pair._cache import CacheStats, ConnectionCache
from iroh_pair._files import FileOffer, FileProgress, FileReceipt, FileTransfer
from iroh_pair._node import (
    AdmissionStats,
    HostedPairing,
    MessageHandler,
    Node,
    NodeCounters,
    NodeEvent,
    NodeEventKind,
    NodeStats,
    PathKind,
)
from iroh_pair._pairing import ConfirmSas, SasCheck
from iroh_pair._peer import RequestPeer
from iroh_pair.errors import (
    AmbiguousDevice,
    AmbiguousNameplate,
    BadSessionTag,
    BadTicket,
    BadWordCount,
    BindError,
    CacheClosedError,
    FileChanged,
    FileTransferError,
    OfferDeclined,
    OfferTooLarge,
    TooManyTransfers,
    TransferRefused,
    TransferStalled,
    DestinationChanged,
    DiskFull,
    VerificationFailed,
    ConfigError,
    ConnectError,
    ConnectionLost,
    DataDirLocked,
    FrameTooLarge,
    InvalidCode,
    InvalidDeviceInfo,
    InvalidKey,
    InvalidTicket,
    IrohPairError,
    KeyFileCorrupt,
    MalformedCode,
    MessageRejected,
    NameplateNotFound,
    OutboxFull,
    PairingFailed,
    ProtocolError,
    RegistryCorrupt,
    RegistryError,
    RegistrySchemaTooNew,
    RemoteError,
    StreamClosed,
    StreamReset,
    Timeout,
    TransportError,
    TruncatedFrame,
    UnknownDevice,
    UnknownWord,
)
from iroh_pair.protocol.code import PairingCode
from iroh_pair.protocol.constants import CloseCode, RejectCode, StreamErrorCode
from iroh_pair.protocol.device import DeviceInfo
from iroh_pair.protocol.kdf import Role
from iroh_pair.protocol.lan import LanCode
from iroh_pair.protocol.messaging import new_message_id
from iroh_pair.protocol.spake import use_backend as _use_spake_backend
from iroh_pair.store import DeviceRegistry, PairedDevice, PendingMessage
from iroh_pair.transport import (
    Chunk,
    CloseInfo,
    Connection,
    Endpoint,
    EndpointAddr,
    EndpointId,
    IncomingStream,
    KindLimits,
    LanEvent,
    LookupConfig,
    NetworkOptions,
    PathEvent,
    PathInfo,
    RecvStream,
    RelayConfig,
    SecretKey,
    SendStream,
)

# The sans-I/O protocol computes SPAKE2 with the native implementation (protocol/spake.py).
_use_spake_backend(_native.Spake2)

__all__ = [
    # The node: a device's identity, its paired devices, pairing and encrypted messages.
    "Node",
    "NodeEvent",
    "NodeEventKind",
    "PathKind",
    "NodeStats",
    "NodeCounters",
    "AdmissionStats",
    "HostedPairing",
    "PairedDevice",
    "PendingMessage",
    "DeviceInfo",
    "MessageHandler",
    "new_message_id",
    # files between paired devices
    "FileOffer",
    "FileProgress",
    "FileReceipt",
    "FileTransfer",
    # Pairing: the codes, and what the SAS confirmation callback gets.
    "PairingCode",
    "LanCode",
    "SasCheck",
    "ConfirmSas",
    "Role",
    # The code tables (Reject reasons, close codes, stream error codes).
    "RejectCode",
    "CloseCode",
    "StreamErrorCode",
    # Request/response on your own ALPNs, through the connection cache.
    "RequestPeer",
    "ConnectionCache",
    "CacheStats",
    # The transport: endpoints, connections, streams, ids and addresses.
    "Endpoint",
    "Connection",
    "SendStream",
    "RecvStream",
    "IncomingStream",
    "EndpointId",
    "EndpointAddr",
    "SecretKey",
    "Chunk",
    "KindLimits",
    "LookupConfig",
    "NetworkOptions",
    "RelayConfig",
    "CloseInfo",
    "PathInfo",
    "PathEvent",
    "LanEvent",
    # The data directory's registry of paired devices.
    "DeviceRegistry",
    # Exceptions (iroh_pair.errors; the tree is in its docstring).
    "IrohPairError",
    "TransportError",
    "BindError",
    "ConnectError",
    "ConnectionLost",
    "StreamReset",
    "StreamClosed",
    "FrameTooLarge",
    "TruncatedFrame",
    "Timeout",
    "RemoteError",
    "InvalidKey",
    "InvalidTicket",
    "InvalidCode",
    "UnknownWord",
    "BadWordCount",
    "MalformedCode",
    "BadSessionTag",
    "BadTicket",
    "InvalidDeviceInfo",
    "ConfigError",
    "ProtocolError",
    "MessageRejected",
    "PairingFailed",
    "NameplateNotFound",
    "AmbiguousNameplate",
    "CacheClosedError",
    "OutboxFull",
    "FileTransferError",
    "FileChanged",
    "OfferTooLarge",
    "TransferRefused",
    "DiskFull",
    "VerificationFailed",
    "OfferDeclined",
    "TooManyTransfers",
    "TransferStalled",
    "DestinationChanged",
    "DataDirLocked",
    "KeyFileCorrupt",
    "RegistryError",
    "RegistryCorrupt",
    "RegistrySchemaTooNew",
    "UnknownDevice",
    "AmbiguousDevice",
]

__version__ = "0.1.0"
