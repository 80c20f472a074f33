"""The outbox (``Node.enqueue``, ``Node.outbox``, ``Node.cancel``): messages queued for a paired
device are stored in the registry and delivered when it is reachable, in order, exactly once,
across restarts of either side; a full outbox raises ``OutboxFull``; an expired message is
removed with an "outbox_expired" event.

The delivery tests use real endpoints and the local relay and lookup server
(:class:`~iroh_pair.testing.LocalServers`, on 127.0.0.1), so that restarted nodes find each
other by EndpointId alone; the receiver (and in one test the sender) is a process of its own
(tests/outbox_peer.py), killed with SIGKILL where the test says so.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from iroh_pair import (
    EndpointId,
    Node,
    NodeEvent,
    OutboxFull,
    PairedDevice,
    PendingMessage,
    SecretKey,
    UnknownDevice,
    new_message_id,
)
from iroh_pair.protocol.kdf import SessionKeys
from iroh_pair.store import REGISTRY_FILE, DeviceRegistry
from iroh_pair.store._registry import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
from iroh_pair.testing import DNS_BIN, RELAY_BIN, LocalServers, find_binary
from iroh_pair.transport import NetworkOptions

from helpers import skip_or_fail

PEER = Path(__file__).resolve().parent / "outbox_peer.py"

#: QUIC idle timeout and keep-alive of every node: a killed peer is noticed this soon.
IDLE_TIMEOUT = 2.0
KEEP_ALIVE = 0.5
#: The longest wait between delivery attempts in these tests (``outbox_retry_max``).
RETRY_MAX = 2.0
DIAL_TIMEOUT = 3.0
#: A queued message reaches a receiver that just became reachable within this.
DELIVERED_WITHIN = 20.0


# --------------------------------------------------------------------------------------------
# the registry's outbox table


def _new_eid() -> EndpointId:
    return SecretKey.generate().public()


def _registry_with_device(tmp_path: Path) -> tuple[DeviceRegistry, EndpointId]:
    reg = DeviceRegistry(tmp_path / REGISTRY_FILE)
    eid = _new_eid()
    reg.add_or_replace(PairedDevice(eid, "b", "other", "", "", 1.0, None,
                                    SessionKeys(send=os.urandom(32), receive=os.urandom(32))))
    return reg, eid


def test_registry_outbox_keeps_order_limits_and_expiry(tmp_path: Path) -> None:
    reg, eid = _registry_with_device(tmp_path)
    with reg:
        ids = [new_message_id() for _ in range(3)]
        for i, mid in enumerate(ids):
            p = reg.outbox_add(eid, mid, "msg", b"x" * 10, expires=100.0 + i, max_messages=3,
                               max_bytes=40, now=50.0)
            assert p == PendingMessage(mid, eid, "msg", 10, 50.0, 100.0 + i)
        with pytest.raises(OutboxFull) as full:  # by count
            reg.outbox_add(eid, new_message_id(), "msg", b"", expires=200.0, max_messages=3, max_bytes=40)
        assert (full.value.count, full.value.used, full.value.max_messages) == (3, 30, 3)
        assert [p.id for p in reg.outbox_list()] == ids == [p.id for p in reg.outbox_list(eid)]
        head = reg.outbox_head(eid)
        assert head is not None and head[0].id == ids[0] and head[1] == b"x" * 10
        reg.outbox_failed(ids[0], "Timeout: no")
        assert reg.outbox_list()[0].attempts == 1 and reg.outbox_list()[0].last_error == "Timeout: no"
        assert reg.outbox_remove(ids[1]) and not reg.outbox_remove(ids[1])
        with pytest.raises(OutboxFull) as full:  # by bytes: 20 queued + 21 > 40
            reg.outbox_add(eid, new_message_id(), "msg", b"y" * 21, expires=200.0, max_messages=3, max_bytes=40)
        assert (full.value.used, full.value.size, full.value.max_bytes) == (20, 21, 40)
        assert reg.outbox_next_expiry(eid) == 100.0
        assert [p.id for p in reg.outbox_expire(eid, now=100.0)] == [ids[0]]
        assert [p.id for p in reg.outbox_list()] == [ids[2]] and reg.outbox_devices() == [eid]
        with pytest.raises(UnknownDevice):
            reg.outbox_add(_new_eid(), new_message_id(), "msg", b"", expires=1.0, max_messages=1, max_bytes=1)
        assert reg.remove(eid)  # unpairing drops the device's queue
        assert reg.outbox_list() == [] and reg.outbox_devices() == []


def test_schema_2_registry_gains_the_outbox(tmp_path: Path) -> None:
    """A registry of schema 2 (delivered ids, no outbox) opens, keeps its rows and is
    migrated to SCHEMA_VERSION (3)."""
    p = tmp_path / REGISTRY_FILE
    db = sqlite3.connect(p, isolation_level=None)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    MIGRATIONS[0](db)
    MIGRATIONS[1](db)
    eid = _new_eid()
    db.execute("INSERT INTO devices VALUES (?,?,?,?,?,?,?,?,?)",
               (eid.to_bytes(), "b", "other", "", "", 1.0, None, os.urandom(32), os.urandom(32)))
    mid = os.urandom(16)
    db.execute("INSERT INTO delivered VALUES (?,?,?,?)", (eid.to_bytes(), mid, 1, time.time()))
    db.execute("PRAGMA user_version = 2")
    db.close()
    with DeviceRegistry(p) as r:
        assert [d.endpoint_id for d in r.list()] == [eid] and r.is_delivered(eid, mid)
        r.outbox_add(eid, new_message_id(), "msg", b"hi", expires=time.time() + 60,
                     max_messages=10, max_bytes=100)
        assert len(r.outbox_list()) == 1
    db = sqlite3.connect(p)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    finally:
        db.close()


# --------------------------------------------------------------------------------------------
# a node's outbox, in one process (the receiver stays down)


async def _pair_loopback(tmp_path: Path, **tuning: Any) -> tuple[Node, Path]:
    """Node "a" (open, with ``tuning``) and the data directory of "b" (closed), paired on
    loopback: b never comes back, so a's messages for it wait."""
    a = await Node.open(tmp_path / "a", name="a", options=NetworkOptions.loopback(), **tuning)
    b = await Node.open(tmp_path / "b", name="b", options=NetworkOptions.loopback())
    try:
        hosted = await a.host_pairing()
        await b.join(hosted.code)
        await hosted.wait(10)
    finally:
        await b.close()
    return a, tmp_path / "b"


async def test_a_full_outbox_raises_its_typed_error(tmp_path: Path) -> None:
    a, _ = await _pair_loopback(tmp_path, outbox_max_messages=3, outbox_max_bytes=100, dial_timeout=1.0)
    try:
        first = a.enqueue("b", b"x" * 60)
        with pytest.raises(OutboxFull) as e:  # 60 + 50 > 100 bytes
            a.enqueue("b", b"y" * 50)
        assert (e.value.used, e.value.size, e.value.max_bytes) == (60, 50, 100)
        assert "full" in str(e.value)
        a.enqueue("b", b"z" * 20)
        a.enqueue("b", b"z" * 20)
        with pytest.raises(OutboxFull) as e:  # a fourth message
            a.enqueue("b", b"")
        assert (e.value.count, e.value.max_messages) == (3, 3)
        assert [p.size for p in a.outbox("b")] == [60, 20, 20]  # nothing was stored by the refusals
        assert a.cancel(first.id) and not a.cancel(first.id)
        a.enqueue("b", b"w" * 60)  # room again
        assert [p.size for p in a.outbox()] == [20, 20, 60]
        with pytest.raises(UnknownDevice):
            a.enqueue("nobody", b"")
        # no wait beyond the receiver's delivered-id window: a retry after it could run twice
        with pytest.raises(ValueError, match="delivered-id window"):
            a.enqueue("b", b"late", ttl=24 * 3600 + 1)
        assert a.cancel(a.outbox()[-1].id)  # room for one: the longest ttl allowed is taken
        assert a.enqueue("b", b"w" * 60, ttl=24 * 3600).expires <= time.time() + 24 * 3600
    finally:
        await a.close()
    with pytest.raises(ValueError, match="delivered-id window"):
        await Node.open(tmp_path / "x", options=NetworkOptions.loopback(), outbox_ttl=7 * 24 * 3600)
    # the queue is in the registry: it is there after a restart
    a = await Node.open(tmp_path / "a", name="a", options=NetworkOptions.loopback(), dial_timeout=1.0)
    try:
        assert [p.size for p in a.outbox("b")] == [20, 20, 60]
    finally:
        await a.close()


async def test_an_expired_message_raises_its_event_and_is_gone(tmp_path: Path) -> None:
    a, _ = await _pair_loopback(tmp_path, dial_timeout=1.0, outbox_retry_max=2.0)
    events: list[NodeEvent] = []

    async def watch() -> None:
        async for ev in a.events():
            events.append(ev)

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.sleep(0)
        keep = a.enqueue("b", b"stays", ttl=3600)
        gone = a.enqueue("b", b"expires", ttl=1.5)
        t0 = time.monotonic()
        async with asyncio.timeout(10):
            while not any(ev.kind == "outbox_expired" for ev in events):
                await asyncio.sleep(0.05)
        took = time.monotonic() - t0
        (ev,) = [ev for ev in events if ev.kind == "outbox_expired"]
        assert ev.detail == gone.id.hex() and ev.name == "b" and ev.device_id == gone.device
        assert 1.5 <= took < 1.5 + 4.0, took
        assert [p.id for p in a.outbox()] == [keep.id]
        assert a.outbox()[0].attempts >= 1 and a.outbox()[0].last_error  # it was tried, and failed
        assert not a.cancel(gone.id)
    finally:
        watcher.cancel()
        await a.close()


# --------------------------------------------------------------------------------------------
# delivery across processes, through the local servers


@pytest.fixture
async def servers() -> AsyncIterator[LocalServers]:
    if find_binary(RELAY_BIN) is None or find_binary(DNS_BIN) is None:
        skip_or_fail("the relay and lookup server binaries are not built")
    async with LocalServers(start_timeout=30) as s:
        yield s


def _options(servers: LocalServers) -> NetworkOptions:
    return servers.options().replace(idle_timeout=IDLE_TIMEOUT, keep_alive=KEEP_ALIVE)


async def _open(servers: LocalServers, path: Path, name: str) -> Node:
    return await Node.open(path, name=name, options=_options(servers), dial_timeout=DIAL_TIMEOUT,
                           outbox_retry_max=RETRY_MAX)


async def _pair(servers: LocalServers, tmp_path: Path) -> tuple[Path, Path]:
    """The data directories of "a" and "b", paired (both nodes closed)."""
    a = await _open(servers, tmp_path / "a", "a")
    b = await _open(servers, tmp_path / "b", "b")
    try:
        hosted = await a.host_pairing()
        await b.join(hosted.code)
        await hosted.wait(10)
    finally:
        await b.close()
        await a.close()
    return tmp_path / "a", tmp_path / "b"


class Peer:
    """tests/outbox_peer.py in a process of its own."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, servers: LocalServers, data_dir: Path, name: str, **cfg: Any) -> Peer:
        cfg.update(
            data_dir=str(data_dir), name=name, relays=[str(r) for r in servers.relays],
            pkarr_url=servers.pkarr_url, dns_origin=servers.origin, dns_server=servers.dns_server,
            idle_timeout=IDLE_TIMEOUT, keep_alive=KEEP_ALIVE, dial_timeout=DIAL_TIMEOUT,
            retry_max=RETRY_MAX,
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(PEER), json.dumps(cfg),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
        )
        peer = cls(proc)
        assert "ready" in await peer.line(45)
        return peer

    async def line(self, timeout: float) -> dict[str, Any]:
        p = self.proc
        assert p.stdout is not None and p.stderr is not None
        async with asyncio.timeout(timeout):
            line = await p.stdout.readline()
        if not line:
            err = (await p.stderr.read()).decode(errors="replace")[-3000:]
            raise AssertionError(f"the peer process ended ({await p.wait()}): {err}")
        out: dict[str, Any] = json.loads(line)
        return out

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> dict[str, Any]:
        """SIGTERM: the node closes; its last line (rejections)."""
        self.proc.send_signal(signal.SIGTERM)
        last = await self.line(30)
        assert await asyncio.wait_for(self.proc.wait(), 30) == 0
        return last


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


async def _wait_for(what: str, cond: Any, timeout: float) -> float:
    """Polls ``cond()`` until true; returns the seconds it took."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


@pytest.mark.slow
async def test_a_message_queued_while_the_receiver_is_down_arrives_when_it_starts(
        servers: LocalServers, tmp_path: Path) -> None:
    a_dir, b_dir = await _pair(servers, tmp_path)
    log = tmp_path / "b.log"
    a = await _open(servers, a_dir, "a")
    b: Peer | None = None
    try:
        assert await a.wait_reachable()
        p = a.enqueue("b", b"written while b was off")
        assert [q.id for q in a.outbox("b")] == [p.id]
        # b is down: attempts fail, and are retried (with backoff, not in a tight loop)
        await _wait_for("a failed attempt", lambda: a.outbox()[0].attempts >= 1, 30)
        await asyncio.sleep(2 * RETRY_MAX)
        (pending,) = a.outbox()
        assert 1 <= pending.attempts <= 1 + (2 * RETRY_MAX + DIAL_TIMEOUT) / 0.5 and pending.last_error
        print(f"\n[outbox] while b was down: {pending.attempts} attempts, last: {pending.last_error}")
        assert _lines(log) == []
        b = await Peer.start(servers, b_dir, "b", log=str(log))
        took = await _wait_for("delivery", lambda: _lines(log) == ["written while b was off"],
                               DELIVERED_WITHIN)
        await _wait_for("the outbox empties", lambda: a.outbox() == [], 10)
        print(f"[outbox] delivered {took:.1f} s after b was ready")
        assert (await b.stop())["rejections"] == {}
        assert _lines(log) == ["written while b was off"]
    finally:
        if b is not None:
            await b.kill()
        await a.close()


@pytest.mark.slow
async def test_100_messages_queued_across_a_restart_of_the_sender_arrive_once_in_order(
        servers: LocalServers, tmp_path: Path) -> None:
    """Sender a, a process, queues 0..49 and is SIGKILLed while delivering them; started again
    it queues 50..99. Receiver b (a process, each message slowed down) logs 0..99, each once,
    in order."""
    a_dir, b_dir = await _pair(servers, tmp_path)
    log = tmp_path / "b.log"
    b = await Peer.start(servers, b_dir, "b", log=str(log), handler_delay=0.02)
    a1 = a2 = None
    try:
        msgs = [f"m-{i:03d}" for i in range(100)]
        a1 = await Peer.start(servers, a_dir, "a", target="b", enqueue=msgs[:50])
        assert (await a1.line(10))["enqueued"] == 50
        await _wait_for("10 delivered", lambda: len(_lines(log)) >= 10, DELIVERED_WITHIN)
        await a1.kill()  # mid-delivery
        at_kill = len(_lines(log))
        assert at_kill < 50, "the sender was killed too late to interrupt anything"
        a2 = await Peer.start(servers, a_dir, "a", target="b", enqueue=msgs[50:])
        assert (await a2.line(10))["enqueued"] == 50
        assert "outbox_empty" in await a2.line(60)
        last = await b.stop()
        print(f"\n[outbox] sender killed after {at_kill} of 50 were logged; the receiver "
              f"refused {last['rejections']}")
        assert _lines(log) == msgs
    finally:
        for p in (a1, a2, b):
            if p is not None:
                await p.kill()


@pytest.mark.slow
async def test_the_receiver_killed_mid_delivery_loses_and_doubles_nothing(
        servers: LocalServers, tmp_path: Path) -> None:
    """a queues m-000..m-009 for b (a process). b #1 is SIGKILLed while its handler runs
    m-003 (not delivered: its id is not recorded); b #2 SIGKILLs itself right after m-006's id
    is committed, before its reply goes out (a's attempt fails, yet it was delivered); b #3
    gets the rest and answers the retry of m-006 DUPLICATE. The log holds each message once,
    in order, and a's outbox is empty."""
    a_dir, b_dir = await _pair(servers, tmp_path)
    log = tmp_path / "b.log"
    msgs = [f"m-{i:03d}" for i in range(10)]
    a = await _open(servers, a_dir, "a")
    b: Peer | None = None
    try:
        assert await a.wait_reachable()
        b = await Peer.start(servers, b_dir, "b", log=str(log), hang_on="m-003")
        ids = [a.enqueue("b", m.encode()).id for m in msgs]
        assert (await b.line(DELIVERED_WITHIN)) == {"in_handler": "m-003"}
        await b.kill()
        assert _lines(log) == msgs[:3]
        assert [p.id for p in a.outbox()] == ids[3:]  # m-003 onwards wait

        b = await Peer.start(servers, b_dir, "b", log=str(log), kill_after_commit="m-006")
        assert await asyncio.wait_for(b.proc.wait(), DELIVERED_WITHIN) == -signal.SIGKILL
        assert _lines(log) == msgs[:7]
        # its reply never went out: a still holds m-006, and has counted failed attempts
        await _wait_for("a notices", lambda: a.outbox()[0].attempts >= 1, 3 * IDLE_TIMEOUT + 10)
        assert [p.id for p in a.outbox()] == ids[6:]

        b = await Peer.start(servers, b_dir, "b", log=str(log))
        await _wait_for("the outbox empties", lambda: a.outbox() == [], DELIVERED_WITHIN)
        assert (await b.stop())["rejections"] == {"DUPLICATE": 1}  # the retry of m-006
        assert _lines(log) == msgs
    finally:
        if b is not None:
            await b.kill()
        await a.close()


@pytest.mark.slow
async def test_a_connected_event_ends_the_retry_wait(
        servers: LocalServers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """a's first attempt fails (b is down) and its next one is at least 15 s away (the first
    wait made 30 s here); b starts and sends a message of its own to a: a's "connected" event
    wakes a's outbox, which delivers at once, long before the wait would have ended."""
    import iroh_pair._node

    a_dir, b_dir = await _pair(servers, tmp_path)
    log = tmp_path / "b.log"
    monkeypatch.setattr(iroh_pair._node, "OUTBOX_RETRY_MIN", 30.0)
    a = await Node.open(a_dir, name="a", options=_options(servers), dial_timeout=DIAL_TIMEOUT,
                        outbox_retry_max=60.0)
    got: list[bytes] = []
    a.on_message(lambda dev, data: got.append(data))
    b: Peer | None = None
    try:
        assert await a.wait_reachable()
        a.enqueue("b", b"for b")
        await _wait_for("the first attempt fails", lambda: a.outbox()[0].attempts == 1, 30)
        failed_at = time.monotonic()
        b = await Peer.start(servers, b_dir, "b", log=str(log), target="a", enqueue=["for a"])
        await _wait_for("b's message", lambda: got == [b"for a"], DELIVERED_WITHIN)
        await _wait_for("a's message", lambda: _lines(log) == ["for b"], 5)
        took = time.monotonic() - failed_at
        print(f"\n[outbox] delivered {took:.1f} s after the failed attempt (next one was >= 15 s away)")
        assert took < 15.0 and a.outbox() == []
    finally:
        if b is not None:
            await b.kill()
        await a.close()
