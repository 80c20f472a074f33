"""What a node keeps on disk, in its data directory: its identity and its paired devices.

- the identity: ``secret.key`` (the node's Ed25519 secret key, created once, so its EndpointId
  is stable) and ``lock`` (one running node per directory): :func:`ensure_data_dir`,
  :func:`load_or_create_secret_key`, :class:`DataDirLock`;
- the registry ``registry.db`` (SQLite): one :class:`PairedDevice` per paired EndpointId, with
  the pairing's session keys and no addresses, and the delivered message ids of
  docs/PROTOCOL.md §13.8, and the outbox (:class:`PendingMessage`): :class:`DeviceRegistry`.

:class:`iroh_pair.Node` uses both; they are public for tools that inspect a data directory.
Example::

    from iroh_pair.store import REGISTRY_FILE, DeviceRegistry, ensure_data_dir

    with DeviceRegistry(ensure_data_dir("/var/lib/myapp") / REGISTRY_FILE) as registry:
        for device in registry.list():
            print(device)
"""

from __future__ import annotations

from iroh_pair.store._identity import (
    KEY_FILE,
    LOCK_FILE,
    DataDirLock,
    ensure_data_dir,
    load_or_create_secret_key,
)
from iroh_pair.store._registry import (
    DELIVERED_WINDOW,
    REGISTRY_FILE,
    DeviceRegistry,
    PairedDevice,
    PendingMessage,
    safe_display,
    sanitize_text,
)

__all__ = [
    "DELIVERED_WINDOW",
    "KEY_FILE",
    "LOCK_FILE",
    "REGISTRY_FILE",
    "DataDirLock",
    "DeviceRegistry",
    "PairedDevice",
    "PendingMessage",
    "ensure_data_dir",
    "load_or_create_secret_key",
    "safe_display",
    "sanitize_text",
]
