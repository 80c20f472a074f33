"""Nodes over real iroh endpoints on loopback: pairing, admission, encrypted messaging."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import open_local_node

from iroh_pair import Node, errors
from iroh_pair.protocol.code import PairingCode
from iroh_pair.errors import PairingFailed
from iroh_pair.protocol import ALPN, CloseCode, PairingOffer, RejectCode, StreamErrorCode
from iroh_pair.store import DeviceRegistry
from iroh_pair.transport import Endpoint



open_node = open_local_node


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    a = await open_node(tmp_path / "a", "alpha")
    b = await open_node(tmp_path / "b", "beta")
    try:
        yield a, b
    finally:
        await b.close()
        await a.close()


async def until_idle(offer: PairingOffer) -> None:
    for _ in range(100):
        if not offer.busy(time.monotonic()):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the host's pairing session did not end")


def wrong_words(code: PairingCode) -> str:
    words = list(code.words)
    words[0] = "zoo" if words[0] != "zoo" else "abandon"
    return str(PairingCode(tuple(words), code.tag, code.ticket))


async def test_pairing_happy_path(nodes: tuple[Node, Node]) -> None:
    host, joiner = nodes
    hosted = await host.host_pairing()
    dev_h = await joiner.join(str(hosted.code))
    dev_j = await hosted.wait(5)
    assert dev_h.endpoint_id == host.id and dev_h.name == "alpha"
    assert dev_j.endpoint_id == joiner.id and dev_j.name == "beta"
    # directional keys, mirrored
    assert dev_h.keys.send != dev_h.keys.receive
    assert dev_h.keys.send == dev_j.keys.receive
    assert dev_h.keys.receive == dev_j.keys.send
    # exactly one connection; the host received Hello, Confirm and Accept
    assert host.endpoint.stats()["connections_accepted"] == 1
    assert host.counters["pairing_messages_received"] == 3
    assert [d.endpoint_id for d in host.devices()] == [joiner.id]
    assert [d.endpoint_id for d in joiner.devices()] == [host.id]


async def test_sas_strings_agree(nodes: tuple[Node, Node]) -> None:
    host, joiner = nodes
    seen_h: list[str] = []
    seen_j: list[str] = []

    async def collect(node: Node, out: list[str]) -> None:
        async for ev in node.events():
            if ev.kind == "paired":
                out.append(ev.detail)
                return

    tasks = [asyncio.ensure_future(collect(host, seen_h)), asyncio.ensure_future(collect(joiner, seen_j))]
    await asyncio.sleep(0)
    hosted = await host.host_pairing()
    await joiner.join(hosted.code)
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(seen_h[0]) == 6 and seen_h[0].isdigit()
    assert seen_h == seen_j


async def test_host_closing_right_after_wait_does_not_fail_the_joiner(tmp_path: Path) -> None:
    """hosted.wait() returns only once the joiner has the host's last message, so a host that
    closes at once (as `iroh-pair host` does) never leaves the joiner with CONNECTION_LOST.
    The joiner is the CLI in another process (in one process the timing rarely shows it)."""
    failures = []
    for i in range(12):
        host = await open_local_node(tmp_path / f"h{i}", f"host{i}")
        hosted = await host.host_pairing()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "iroh_pair", "--data-dir", str(tmp_path / f"j{i}"), "--local",
            "--json", "join", str(hosted.code), "--timeout", "20", "--yes",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            await hosted.wait(30)
        finally:
            await host.close()
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        if proc.returncode != 0:
            failures.append(err.decode()[-300:])
    assert failures == []


async def test_wrong_code_fails_on_both_sides_and_stores_nothing(nodes: tuple[Node, Node]) -> None:
    host, joiner = nodes
    hosted = await host.host_pairing()
    with pytest.raises(PairingFailed) as e:
        await joiner.join(wrong_words(hosted.code))
    assert e.value.code == RejectCode.WRONG_CODE
    assert host.devices() == [] and joiner.devices() == []
    assert not hosted.done  # attempts remain: the right words still work
    await until_idle(hosted.offer)  # the host ends its session when the joiner's Reject arrives
    await joiner.join(hosted.code)
    assert (await hosted.wait(5)).endpoint_id == joiner.id


async def test_burned_after_three_attempts(tmp_path: Path, nodes: tuple[Node, Node]) -> None:
    host, _ = nodes
    hosted = await host.host_pairing()
    joiners = [await open_node(tmp_path / f"j{i}", f"j{i}") for i in range(20)]
    try:
        bad = wrong_words(hosted.code)
        # 20 at once: one session at a time, so most are refused BUSY (not counted)
        results = await asyncio.gather(*(j.join(bad, timeout=30) for j in joiners), return_exceptions=True)
        assert all(isinstance(r, (PairingFailed, errors.IrohPairError)) for r in results), results
        assert 1 <= hosted.offer.attempts_used <= 3
        # then one after another until the code burns
        for j in joiners:
            if hosted.done:
                break
            await until_idle(hosted.offer)
            with pytest.raises((PairingFailed, errors.IrohPairError)):
                await j.join(bad, timeout=30)
            assert hosted.offer.attempts_used <= 3
        assert hosted.offer.attempts_used == 3
        with pytest.raises(PairingFailed) as e:
            await hosted.wait(5)
        assert e.value.code == RejectCode.BURNED
        late = await open_node(tmp_path / "late", "late")
        try:
            with pytest.raises((PairingFailed, errors.ConnectionLost)):
                await late.join(hosted.code, timeout=10)
            assert late.devices() == []
        finally:
            await late.close()
    finally:
        for j in joiners:
            await j.close()
    assert host.devices() == []


async def test_messages_both_ways_on_the_pairing_connection(nodes: tuple[Node, Node]) -> None:
    host, joiner = nodes
    host.on_message(lambda dev, data: b"host got " + data)
    got: list[bytes] = []
    joiner.on_message(lambda dev, data: got.append(data))
    hosted = await host.host_pairing()
    dev = await joiner.join(hosted.code)
    for i in range(100):
        assert await joiner.request(dev, b"m%d" % i) == b"host got m%d" % i
    await host.send(joiner.id, b"to joiner")
    assert got == [b"to joiner"]
    # exactly one connection over pairing plus 100 messages, counted on the accepting side
    assert host.endpoint.stats()["connections_accepted"] == 1
    assert joiner.endpoint.stats()["connections_accepted"] == 0
    assert host.counters["messages_delivered"] == 100


async def test_unpaired_endpoint_is_not_admitted(nodes: tuple[Node, Node]) -> None:
    host, _ = nodes
    async with await Endpoint.bind() as stranger:
        conn = await stranger.connect(host.endpoint.addr(), ALPN, timeout=5)
        info = await asyncio.wait_for(conn.closed(), 5)
        assert info.code == 4  # NOT_PAIRED
    assert host.counters["not_admitted"] == 1


async def test_unpaired_msg_stream_reset_while_hosting(nodes: tuple[Node, Node]) -> None:
    host, _ = nodes
    seen: list[bytes] = []
    host.on_message(lambda dev, data: seen.append(data))
    await host.host_pairing()
    async with await Endpoint.bind() as stranger:
        conn = await stranger.connect(host.endpoint.addr(), ALPN, timeout=5)
        from iroh_pair.protocol import encode_header

        with pytest.raises(errors.RemoteError) as e:
            await conn.request(encode_header("msg") + b"x" * 100, timeout=5)
        assert e.value.code is StreamErrorCode.NOT_ADMITTED
        assert str(e.value) == "the peer refused the request: NOT_ADMITTED (8)"
    assert seen == []


async def test_lock_excludes_second_node(tmp_path: Path) -> None:
    from iroh_pair.errors import DataDirLocked

    a = await open_node(tmp_path / "a", "a")
    try:
        with pytest.raises(DataDirLocked):
            await open_node(tmp_path / "a", "a2")
    finally:
        await a.close()
    again = await open_node(tmp_path / "a", "a")
    assert again.id == a.id  # the key is stable across restarts
    await again.close()


async def test_loopback_node_is_reachable_at_once(nodes: tuple[Node, Node]) -> None:
    # No relay, no lookup: nothing to wait for (the servers' tests cover the waiting).
    a, _ = nodes
    assert not a.uses_servers
    async with asyncio.timeout(1):
        assert await a.wait_reachable()


async def test_registry_has_no_address_columns(nodes: tuple[Node, Node]) -> None:
    host, joiner = nodes
    hosted = await host.host_pairing()
    await joiner.join(hosted.code)
    import sqlite3

    db = sqlite3.connect(host.data_dir / "registry.db")
    cols = [r[1].lower() for r in db.execute("PRAGMA table_info(devices)")]
    db.close()
    assert cols
    assert not [c for c in cols if any(w in c for w in ("addr", "ip", "port", "relay"))]
    assert isinstance(host.registry, DeviceRegistry)


async def test_cancelled_code_fails_its_waiter_and_the_joiner(nodes: tuple[Node, Node]) -> None:
    host, joiner = nodes
    hosted = await host.host_pairing()
    assert host.hosting
    hosted.cancel()
    with pytest.raises(PairingFailed) as e:
        await hosted.wait(5)
    assert e.value.code == RejectCode.CANCELLED and hosted.done and not host.hosting
    # no code is live: the host admits no stranger, and closes the joiner's connection
    not_admitted = host.counters["not_admitted"]
    # (the joiner sees the close as ConnectionLost, or as PairingFailed(CONNECTION_LOST) when
    # its pairing stream was already open)
    with pytest.raises((errors.ConnectionLost, PairingFailed)) as lost:
        await joiner.join(hosted.code, timeout=10)
    assert getattr(lost.value, "code", None) in (CloseCode.NOT_PAIRED, RejectCode.CONNECTION_LOST), lost.value
    assert host.counters["not_admitted"] == not_admitted + 1
    assert host.devices() == [] and joiner.devices() == []
    # a code that paired is not undone by cancel()
    second = await host.host_pairing()
    device = await joiner.join(second.code)
    second.cancel()
    assert await second.wait(5) == host.device(joiner.id) and device.endpoint_id == host.id
