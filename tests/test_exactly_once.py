"""Exactly once across restarts (PROTOCOL.md §13.8, issue 31 "Exactly once").

Two real Nodes in separate processes (tests/delivery_child.py; loopback, relay disabled, lookup
none; the receiver binds a fixed port so that a restarted receiver is where the sender's hint
says). The receiver's handler appends each message to a file: the number of lines is the
number of times the handler ran. The processes are killed with SIGKILL, never closed politely.

The control test runs the same receiver restart with the receiver's persistence disabled
(message ids in memory only, as before §13.8) and sees the message delivered twice: so the
scenario can tell a receiver that persists from one that does not.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from delivery_child import LOCAL, seed_pair

from iroh_pair.errors import RemoteError
from iroh_pair.protocol.messaging import new_message_id
from iroh_pair import Node
from iroh_pair.protocol import StreamErrorCode
from iroh_pair.store import PairedDevice

CHILD = Path(__file__).resolve().parent / "delivery_child.py"
DUPLICATE = int(StreamErrorCode.DUPLICATE)
#: Timeout of a retry after the receiver restarted: a request's first attempt waits this long on
#: the connection to the dead process before the node dials the new one.
RETRY_TIMEOUT = 5.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """A delivery_child.py process: JSON-line commands in, answers out (matched by tag)."""

    def __init__(self, proc: asyncio.subprocess.Process, ready: dict[str, Any]) -> None:
        self.proc = proc
        self.id: str = ready["id"]
        self.ticket: str = ready["ticket"]
        self._tag = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, *args: str, stderr: Path) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(CHILD), *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=open(stderr, "ab"), env=dict(os.environ),
        )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
        except TimeoutError:
            proc.kill()
            raise AssertionError(f"child {args[0]} did not start: {stderr.read_text()[-2000:]}")
        if not line:
            await proc.wait()
            raise AssertionError(f"child {args[0]} failed: {stderr.read_text()[-2000:]}")
        ready = json.loads(line)
        assert ready["event"] == "ready", ready
        return cls(proc, ready)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            fut = self._waiting.pop(msg.get("tag"), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("the child process exited"))

    async def call(self, op: str, *, wait: float = 60, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self._tag += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._tag] = fut
        self.proc.stdin.write((json.dumps(dict(kw, op=op, tag=self._tag)) + "\n").encode())
        await self.proc.stdin.drain()
        return await asyncio.wait_for(fut, wait)

    async def kill(self) -> None:
        """SIGKILL, and reap."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.proc.wait(), 30)
        await asyncio.wait_for(self._reader, 30)


class Pair:
    """A paired sender and receiver data directory, and their processes."""

    def __init__(self, tmp: Path, *, persist: bool = True) -> None:
        self.tmp = tmp
        self.sdir, self.rdir = tmp / "sender", tmp / "receiver"
        seed_pair(self.sdir, self.rdir)
        self.log = tmp / "handled.txt"
        self.log.touch()
        self.port = free_udp_port()
        self.persist = persist
        self.children: list[Child] = []

    async def receiver(self) -> Child:
        extra = () if self.persist else ("--no-persist",)
        r = await Child.start("receiver", str(self.rdir), "--port", str(self.port),
                              "--log", str(self.log), *extra, stderr=self.tmp / "receiver.err")
        self.children.append(r)
        return r

    async def sender(self, receiver: Child) -> Child:
        s = await Child.start("sender", str(self.sdir), stderr=self.tmp / "sender.err")
        self.children.append(s)
        await s.call("hint", id=receiver.id, ticket=receiver.ticket)
        return s

    def handled(self) -> list[str]:
        """One line per run of the receiver's handler."""
        return self.log.read_text().splitlines()

    async def close(self) -> None:
        for c in self.children:
            await c.kill()


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    p = Pair(tmp_path)
    try:
        yield p
    finally:
        await p.close()


async def test_receiver_restarted_answers_duplicate_and_handler_ran_once(pair: Pair) -> None:
    """Scenario A: M is delivered and answered; the receiver is SIGKILLed and restarted; the
    sender retries M: DUPLICATE, and the handler ran once. A new id is still delivered."""
    r = await pair.receiver()
    s = await pair.sender(r)
    mid = new_message_id().hex()
    first = await s.call("request", mid=mid, text="M", timeout=20)
    assert first == {"tag": first["tag"], "ok": True, "reply": "ok:M"}
    assert pair.handled() == ["M"]

    await r.kill()
    r = await pair.receiver()
    await s.call("hint", id=r.id, ticket=r.ticket)
    # the sender's connection to the dead process is silently gone: its first attempt times out
    # (RETRY_TIMEOUT), the second goes over a new connection
    retry = await s.call("request", mid=mid, text="M", timeout=RETRY_TIMEOUT)
    assert not retry["ok"] and retry["error"] == "RemoteError" and retry["code"] == DUPLICATE, retry
    assert "DUPLICATE" in retry["message"]
    again = await s.call("send", mid=mid, text="M", timeout=20)  # send: a duplicate is delivered
    assert again["ok"], again
    assert pair.handled() == ["M"]

    fresh = await s.call("request", mid=new_message_id().hex(), text="N", timeout=20)
    assert fresh["ok"] and fresh["reply"] == "ok:N", fresh
    assert pair.handled() == ["M", "N"]


async def test_reply_lost_in_a_receiver_crash_is_not_delivered_twice(pair: Pair) -> None:
    """Scenario A, worst moment: the receiver commits M's id, then dies before its reply leaves
    (SIGKILL from inside the registry call). The sender got no answer; after the restart its
    retry of M is a duplicate (send returns normally), and the handler ran once."""
    r = await pair.receiver()
    s = await pair.sender(r)
    await r.call("die_after_commit")
    mid = new_message_id().hex()
    lost = await s.call("send", mid=mid, text="L", timeout=5)
    assert not lost["ok"], lost  # no reply: the sender cannot know it was delivered
    await asyncio.wait_for(r.proc.wait(), 30)
    assert r.proc.returncode == -signal.SIGKILL
    assert pair.handled() == ["L"]

    r = await pair.receiver()
    await s.call("hint", id=r.id, ticket=r.ticket)
    retry = await s.call("send", mid=mid, text="L", timeout=20)
    assert retry["ok"], retry
    dup = await s.call("request", mid=mid, text="L", timeout=20)
    assert not dup["ok"] and dup["code"] == DUPLICATE, dup
    assert pair.handled() == ["L"]


async def test_sender_restarted_retries_and_handler_ran_once(pair: Pair) -> None:
    """Scenario B: the sender sends M and is SIGKILLed as soon as the handler has run (before or
    after the reply reached it: it cannot tell); restarted, it retries M: DUPLICATE, handled
    once. Then the receiver restarts too, and the retry is still a duplicate."""
    r = await pair.receiver()
    s = await pair.sender(r)
    mid = new_message_id().hex()
    pending = asyncio.ensure_future(s.call("request", mid=mid, text="M", timeout=20))
    async with asyncio.timeout(30):
        while pair.handled() != ["M"]:
            await asyncio.sleep(0.001)
    await s.kill()
    pending.cancel()

    s = await pair.sender(r)
    retry = await s.call("request", mid=mid, text="M", timeout=20)
    assert not retry["ok"] and retry["code"] == DUPLICATE and "DUPLICATE" in retry["message"], retry
    assert (await s.call("send", mid=mid, text="M", timeout=20))["ok"]
    assert pair.handled() == ["M"]

    await s.kill()
    await r.kill()
    r = await pair.receiver()
    s = await pair.sender(r)
    retry = await s.call("request", mid=mid, text="M", timeout=20)
    assert not retry["ok"] and retry["code"] == DUPLICATE, retry
    assert pair.handled() == ["M"]


async def test_control_without_persistence_a_restarted_receiver_delivers_again(
    tmp_path: Path,
) -> None:
    """The test's control: scenario A against a receiver that keeps message ids in memory only
    (the code before §13.8). The retry is delivered a second time, so scenario A can fail."""
    p = Pair(tmp_path, persist=False)
    try:
        r = await p.receiver()
        s = await p.sender(r)
        mid = new_message_id().hex()
        assert (await s.call("request", mid=mid, text="M", timeout=20))["ok"]
        dup = await s.call("request", mid=mid, text="M", timeout=20)
        assert dup["code"] == DUPLICATE, dup  # in memory, the same process still knows it
        await r.kill()
        r = await p.receiver()
        await s.call("hint", id=r.id, ticket=r.ticket)
        retry = await s.call("request", mid=mid, text="M", timeout=RETRY_TIMEOUT)
        assert retry["ok"], retry
        assert p.handled() == ["M", "M"]  # delivered twice: what persistence prevents
    finally:
        await p.close()


# --------------------------------------------------------------------------------------------
# in one process: handler failures and concurrent duplicates (two real nodes on loopback)


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[tuple[Node, Node, PairedDevice]]:
    """(receiver, sender, the receiver as the sender's device)."""
    seed_pair(tmp_path / "s", tmp_path / "r")
    receiver = await Node.open(tmp_path / "r", name="receiver", options=LOCAL)
    sender = await Node.open(tmp_path / "s", name="sender", options=LOCAL)
    sender._hints[receiver.id] = receiver.endpoint.addr()
    try:
        yield receiver, sender, sender.device(receiver.id)
    finally:
        await sender.close()
        await receiver.close()


async def test_failed_handler_records_nothing_and_the_retry_is_delivered(
    nodes: tuple[Node, Node, PairedDevice],
) -> None:
    receiver, sender, dev = nodes
    calls: list[bytes] = []
    done: list[bytes] = []

    def handler(d: PairedDevice, data: bytes) -> bytes:
        calls.append(data)
        if len(calls) == 1:
            raise RuntimeError("the database is down")
        done.append(data)
        return b"done"

    receiver.on_message(handler)
    mid = new_message_id()
    with pytest.raises(RemoteError) as e:
        await sender.request(dev, b"job", message_id=mid, timeout=10)
    assert e.value.code is StreamErrorCode.HANDLER_ERROR
    assert str(e.value).startswith(f"HANDLER_ERROR (3): message {mid.hex()} to ")
    assert str(e.value).endswith(" made the handler fail")
    assert not receiver.registry.is_delivered(sender.id, mid)  # nothing recorded
    assert await sender.request(dev, b"job", message_id=mid, timeout=10) == b"done"
    assert receiver.registry.is_delivered(sender.id, mid)
    await sender.send(dev, b"job", message_id=mid, timeout=10)  # duplicate: counts as sent
    assert calls == [b"job", b"job"] and done == [b"job"]
    assert receiver.rejections.get("DUPLICATE") == 1


async def test_concurrent_duplicate_is_in_progress_while_the_handler_runs(
    nodes: tuple[Node, Node, PairedDevice],
) -> None:
    receiver, sender, dev = nodes
    release = asyncio.Event()
    ran: list[bytes] = []

    async def slow(d: PairedDevice, data: bytes) -> bytes:
        ran.append(data)
        await asyncio.wait_for(release.wait(), 30)
        return b"finally"

    receiver.on_message(slow)
    mid = new_message_id()
    first = asyncio.ensure_future(sender.request(dev, b"slow", message_id=mid, timeout=30))
    async with asyncio.timeout(10):
        while not receiver._deliveries.in_flight(sender.id, mid):
            await asyncio.sleep(0.005)
    # a duplicate with little time: retried on IN_PROGRESS until its timeout, then refused
    with pytest.raises(RemoteError) as e:
        await sender.request(dev, b"slow", message_id=mid, timeout=2.0)
    assert e.value.code == StreamErrorCode.IN_PROGRESS and "IN_PROGRESS" in str(e.value)
    retries = receiver.rejections["IN_PROGRESS"]
    assert retries >= 2  # the sender did retry after its backoff
    # a duplicate with time to wait: a send completes (DUPLICATE once the handler returned), a
    # request learns it was a duplicate
    later_send = asyncio.ensure_future(sender.send(dev, b"slow", message_id=mid, timeout=30))
    later_request = asyncio.ensure_future(
        sender.request(dev, b"slow", message_id=mid, timeout=30)
    )
    async with asyncio.timeout(10):
        while receiver.rejections["IN_PROGRESS"] < retries + 2:
            await asyncio.sleep(0.005)
    assert not receiver.registry.is_delivered(sender.id, mid)  # still running: not recorded
    release.set()
    assert await first == b"finally"
    await later_send
    with pytest.raises(RemoteError) as e:
        await later_request
    assert e.value.code == StreamErrorCode.DUPLICATE
    assert ran == [b"slow"]
    assert receiver.registry.is_delivered(sender.id, mid)


async def test_unpair_forgets_the_ids(nodes: tuple[Node, Node, PairedDevice]) -> None:
    receiver, sender, dev = nodes
    receiver.on_message(lambda d, data: data)
    mid = new_message_id()
    assert await sender.request(dev, b"x", message_id=mid, timeout=10) == b"x"
    peer = receiver.device(sender.id)
    assert receiver.registry.delivered_count(sender.id) == 1
    await receiver.unpair(peer)
    assert receiver.registry.delivered_count(sender.id) == 0
    assert not receiver._deliveries.in_flight(sender.id, mid)
    receiver.registry.add_or_replace(peer)  # paired again (same keys, for the test)
    receiver._devices[sender.id] = receiver.registry.get(sender.id)  # type: ignore[assignment]
    assert not receiver.registry.is_delivered(sender.id, mid)
    assert receiver._deliveries.begin(sender.id, mid) is None  # starts with no ids
