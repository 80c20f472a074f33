"""Encrypted messaging between real paired nodes, attacked over raw streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import open_local_node

from iroh_pair import Node, errors
from iroh_pair.protocol.constants import MESSAGING_BINDING_LABEL as CHANNEL_BINDING_LABEL
from iroh_pair.protocol.messaging import MessageChannel, derive_subkey, new_message_id, nonce
from iroh_pair.protocol import ALPN, StreamErrorCode, encode_header
from iroh_pair.store import PairedDevice
from iroh_pair.transport import Connection



open_node = open_local_node


@pytest.fixture
async def paired(tmp_path: Path) -> AsyncIterator[tuple[Node, Node, PairedDevice]]:
    host = await open_node(tmp_path / "host", "host")
    joiner = await open_node(tmp_path / "joiner", "joiner")
    hosted = await host.host_pairing()
    dev = await joiner.join(hosted.code)
    try:
        yield host, joiner, dev
    finally:
        await joiner.close()
        await host.close()


def raw_channel(joiner: Node, dev: PairedDevice) -> tuple[Connection, MessageChannel]:
    """The joiner's live connection to the host, and a sealing channel of our own on it (the
    same keys and channel binding the node uses, but its own counters)."""
    conn = joiner.cache.peek(dev.endpoint_id, ALPN)
    assert conn is not None
    binding = conn.export_keying_material(CHANNEL_BINDING_LABEL, b"", 32)
    return conn, MessageChannel(joiner.id, dev.endpoint_id, dev.keys, binding)


async def test_tampered_replayed_and_reordered_over_raw_streams(
    paired: tuple[Node, Node, PairedDevice],
) -> None:
    host, joiner, dev = paired
    got: list[bytes] = []
    host.on_message(lambda d, data: got.append(data))
    conn, ch = raw_channel(joiner, dev)
    head = encode_header("msg")
    # a fresh channel on the same connection restarts at counter 0; the node's own channel has
    # not sent anything on it yet, so the host's window is fresh too.
    sealed = [ch.seal("msg", b"m%d" % i) for i in range(4)]
    for i in (2, 0, 3):  # out of order: accepted
        assert await conn.request(head + sealed[i], timeout=5) == b""
    assert got == [b"m2", b"m0", b"m3"]
    with pytest.raises(errors.RemoteError) as e:  # replayed
        await conn.request(head + sealed[0], timeout=5)
    assert e.value.code == StreamErrorCode.REPLAYED
    bad = bytearray(sealed[1])
    bad[-1] ^= 0x01
    with pytest.raises(errors.RemoteError) as e:  # tampered
        await conn.request(head + bytes(bad), timeout=5)
    assert e.value.code == StreamErrorCode.TAMPERED
    with pytest.raises(errors.RemoteError) as e:  # sealed for another stream kind
        await conn.request(encode_header("sync") + sealed[1], timeout=5)
    assert e.value.code in (StreamErrorCode.UNKNOWN_KIND, StreamErrorCode.TAMPERED)
    assert await conn.request(head + sealed[1], timeout=5) == b""  # the untampered one is fine
    assert got == [b"m2", b"m0", b"m3", b"m1"]
    assert host.rejections == {"REPLAYED": 1, "TAMPERED": 1}
    assert host.counters["messages_rejected"] == 2


async def test_retry_with_same_message_id_is_delivered_once(
    paired: tuple[Node, Node, PairedDevice],
) -> None:
    host, joiner, dev = paired
    got: list[bytes] = []
    host.on_message(lambda d, data: got.append(data))
    conn, ch = raw_channel(joiner, dev)
    head = encode_header("msg")
    mid = b"\x07" * 16
    assert await conn.request(head + ch.seal("msg", b"once", message_id=mid), timeout=5) == b""
    with pytest.raises(errors.RemoteError) as e:  # a retry: new counter, same message id
        await conn.request(head + ch.seal("msg", b"once", message_id=mid), timeout=5)
    assert e.value.code == StreamErrorCode.DUPLICATE
    assert got == [b"once"]


async def test_node_send_retried_with_one_message_id_is_handled_once(
    paired: tuple[Node, Node, PairedDevice],
) -> None:
    """The application-level retry of Node.send/request: same message_id, handled once."""
    host, joiner, dev = paired
    got: list[bytes] = []
    host.on_message(lambda d, data: got.append(data))
    mid = new_message_id()
    for _ in range(3):
        await joiner.send(dev, b"exactly once", message_id=mid)  # retries after "no answer"
    assert got == [b"exactly once"]
    with pytest.raises(errors.RemoteError) as e:
        await joiner.request(dev, b"exactly once", message_id=mid)
    assert e.value.code == StreamErrorCode.DUPLICATE
    assert "DUPLICATE (18)" in str(e.value) and mid.hex() in str(e.value)  # the code's name
    assert host.registry.is_delivered(joiner.id, mid)  # persisted (§13.8)
    with pytest.raises(ValueError):
        await joiner.send(dev, b"x", message_id=b"short")
    await joiner.send(dev, b"another")  # a fresh id by default
    assert got == [b"exactly once", b"another"]


async def test_nonces_never_repeat_across_reconnects_and_restarts(tmp_path: Path) -> None:
    host = await open_node(tmp_path / "host", "host")
    joiner = await open_node(tmp_path / "joiner", "joiner")
    hosted = await host.host_pairing()
    dev = await joiner.join(hosted.code)
    host.on_message(lambda d, data: data)
    host_addr = host.endpoint.addr()
    used: list[tuple[bytes, bytes]] = []
    try:
        for round_ in range(20):
            if round_ in (7, 14):  # restart the joiner: a new process state, same key
                await joiner.close()
                joiner = await open_node(tmp_path / "joiner", "joiner")
                dev = joiner.device(host.id)
            joiner._hints[host.id] = host_addr
            for _ in range(3):
                assert await joiner.request(dev, b"ping", timeout=5) == b"ping"
            conn = joiner.cache.peek(host.id, ALPN)
            assert conn is not None
            st = joiner._conns[conn.stable_id]
            assert st.channel is not None
            binding = conn.export_keying_material(CHANNEL_BINDING_LABEL, b"", 32)
            key = derive_subkey(dev.keys.send, binding, joiner.id, host.id)
            used += [(key, nonce(c)) for c in range(st.channel.next_counter)]
            conn.close(0, b"reconnect")
            await asyncio.sleep(0.05)
        assert len(used) == 60
        assert len(set(used)) == len(used)
    finally:
        await joiner.close()
        await host.close()
