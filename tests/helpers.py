"""Helpers shared by the test modules (importable as `helpers`: tests/ is on sys.path)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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
