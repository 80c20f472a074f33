"""Helpers shared by the test modules (importable as `helpers`: tests/ is on sys.path)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from iroh_pair.node import Node

ROOT = Path(__file__).resolve().parent.parent
ALPN = b"iroh-pair-test/1"


def node_binary() -> Path | None:
    """The plain-Rust peer (rust/node), if built: $IROH_PAIR_NODE, then target/release, debug."""
    env = os.environ.get("IROH_PAIR_NODE")
    if env:
        return Path(env)
    for profile in ("release", "debug"):
        p = ROOT / "target" / profile / "iroh-pair-node"
        if p.exists():
            return p
    found = shutil.which("iroh-pair-node")
    return Path(found) if found else None

#: Node options for loopback-only tests: no relays, no address lookup, no portmapper.
LOCAL_NODE: dict[str, object] = dict(
    relay="disabled", lookup="none", bind_addrs=("127.0.0.1:0",), portmapper=False
)


async def open_local_node(path: Path, name: str) -> Node:
    """A Node in ``path`` reachable on loopback only."""
    from iroh_pair.node import Node

    return await Node.open(path, name=name, **LOCAL_NODE)  # type: ignore[arg-type]
