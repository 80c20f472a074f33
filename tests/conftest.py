"""Shared fixtures: real iroh endpoints on 127.0.0.1, relays, lookup and portmapper off."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from iroh_pair.transport import Endpoint

from helpers import ALPN, node_binary

@pytest.fixture
def rust_node() -> Path:
    """The Rust peer binary; CI builds it, so a missing binary fails under IROH_PAIR_REQUIRE_ALL."""
    p = node_binary()
    if p is None:
        if os.environ.get("IROH_PAIR_REQUIRE_ALL"):
            pytest.fail("iroh-pair-node is not built (cargo build --release -p iroh-pair-node)")
        pytest.skip("iroh-pair-node is not built")
    return p


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Endpoint, Endpoint]]:
    """Two endpoints on loopback; the first serves ALPN."""
    a = await Endpoint.bind(alpns=[ALPN])
    b = await Endpoint.bind(alpns=[ALPN])
    try:
        yield a, b
    finally:
        await b.close()
        await a.close()
