"""Cross-language interop: the Python `Node` against the plain-Rust `iroh-pair-node`.

The Rust binary shares no code with the package (only docs/PROTOCOL.md and the vector files):
pairing version 2 in both roles with the SAS shown to (and approved by) both applications and
equal on both sides, a SAS declined on the Rust side leaving nothing stored on either side,
version 1 refused both ways with the typed UNSUPPORTED_VERSION, strangers that cannot block the
Rust host, sealed requests both ways on the pairing connection, a wrong code, and tampered /
replayed messages, delivered message ids that survive the Rust process being killed (§13.8),
all on 127.0.0.1 with relays, address lookup and the portmapper off. The
Rust side's own vector checks run in `cargo test -p iroh-pair-node`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from iroh_pair.protocol.code import PairingCode
from iroh_pair.errors import PairingFailed, RemoteError, StreamReset
from iroh_pair.protocol.messaging import new_message_id
from iroh_pair import Node, NodeEvent, SasCheck
from iroh_pair.protocol import (
    ALPN,
    MAX_MESSAGE,
    PAIR_KIND,
    PAIR_KIND_V1,
    RejectCode,
    StreamErrorCode,
    encode_header,
    wire,
)
from iroh_pair.store import PairedDevice
from iroh_pair.transport import Connection, Endpoint, EndpointAddr, NetworkOptions

LOCAL = NetworkOptions.loopback()
TIMEOUT = 30.0


class RustNode:
    """One `iroh-pair-node` process; its JSON lines are read with timeouts."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self._taken: set[int] = set()

    @classmethod
    async def start(cls, binary: Path, *args: str) -> RustNode:
        proc = await asyncio.create_subprocess_exec(
            str(binary),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return cls(proc)

    async def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"no line from the Rust node in time; so far: {self.lines}") from None
        if not raw:
            raise AssertionError(f"the Rust node exited; output so far: {self.lines}")
        line: dict[str, Any] = json.loads(raw)
        self.lines.append(line)
        return line

    async def event(self, name: str) -> dict[str, Any]:
        """The first line with ``"event": name`` not returned before (lines of other events
        stay available, so the order of events from concurrent tasks does not matter)."""
        i = 0
        while True:
            while i < len(self.lines):
                line = self.lines[i]
                if i not in self._taken and line.get("event") == name:
                    self._taken.add(i)
                    return line
                if line.get("event") == "error":
                    raise AssertionError(f"the Rust node failed: {line}")
                i += 1
            await self._read()

    async def wait(self) -> int:
        """Reads to the end and returns the exit status."""
        while True:
            try:
                await self._read()
            except AssertionError:
                break
        return await asyncio.wait_for(self.proc.wait(), TIMEOUT)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await asyncio.wait_for(self.proc.wait(), TIMEOUT)


@contextlib.asynccontextmanager
async def rust(binary: Path, *args: str) -> AsyncIterator[RustNode]:
    node = await RustNode.start(binary, *args)
    try:
        yield node
    finally:
        await node.stop()


@contextlib.asynccontextmanager
async def py_node(path: Path, name: str) -> AsyncIterator[Node]:
    node = await Node.open(path, name=name, options=LOCAL)
    node.on_message(lambda dev, data: b"py got " + data)
    try:
        yield node
    finally:
        await node.close()


async def paired_sas(node: Node, events: list[NodeEvent]) -> str:
    """The SAS of the node's first "paired" event."""
    for _ in range(200):
        for ev in events:
            if ev.kind == "paired":
                return ev.detail
        await asyncio.sleep(0.02)
    raise AssertionError("no paired event")


def collect(node: Node) -> tuple[list[NodeEvent], asyncio.Task[None]]:
    events: list[NodeEvent] = []

    async def run() -> None:
        async for ev in node.events():
            events.append(ev)

    return events, asyncio.ensure_future(run())


class Asked:
    """A ``confirm`` callback that records every SAS question and answers ``answer``."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.checks: list[SasCheck] = []

    def __call__(self, check: SasCheck) -> bool:
        self.checks.append(check)
        return self.answer


def rust_devices(state: Path) -> list[dict[str, Any]]:
    """What the Rust node stored (nothing when it never wrote its registry)."""
    path = state / "devices.json"
    if not path.exists():
        return []
    devices: list[dict[str, Any]] = json.loads(path.read_text())["devices"]
    return devices


def rust_device(state: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((state / "devices.json").read_text())
    devices: list[dict[str, Any]] = data["devices"]
    assert len(devices) == 1
    return devices[0]


def check_keys(dev: PairedDevice, stored: dict[str, Any]) -> None:
    """The Rust side stored the mirror image of our directional keys."""
    assert stored["send"] == dev.keys.receive.hex()
    assert stored["receive"] == dev.keys.send.hex()


def wrong_words(code: PairingCode) -> str:
    words = list(code.words)
    words[0] = "zoo" if words[0] != "zoo" else "abandon"
    return str(PairingCode(tuple(words), code.tag, code.ticket))


async def test_python_host_rust_joiner(rust_node: Path, tmp_path: Path) -> None:
    async with py_node(tmp_path / "py", "py-host") as host:
        events, task = collect(host)
        asked = Asked()
        hosted = await host.host_pairing(confirm=asked)
        state = tmp_path / "rs"
        async with rust(
            rust_node, "join", str(hosted.code), "--state", str(state), "--name", "rusty",
            "--serve", "--then-request", "hello python",
        ) as r:
            ready = await r.event("ready")
            paired = await r.event("paired")
            dev = await hosted.wait(TIMEOUT)
            assert str(dev.endpoint_id) == ready["id"]
            assert paired["peer"] == str(host.id) and paired["name"] == "py-host"
            assert dev.name == "rusty" and paired["role"] == "joiner"
            assert paired["sas"] == await paired_sas(host, events)
            # version 2: both applications were shown the same SAS before anything was stored
            sas = await r.event("sas")
            assert sas["role"] == "joiner" and sas["approve"] is True
            assert [c.sas for c in asked.checks] == [sas["sas"]] == [paired["sas"]]
            assert asked.checks[0].peer_id == bytes.fromhex(ready["id"])
            assert asked.checks[0].peer_info is not None and asked.checks[0].peer_info.name == "rusty"
            assert sas["formatted"] == asked.checks[0].formatted
            check_keys(dev, rust_device(state))
            # Rust -> Python on the pairing connection
            reply = await r.event("reply")
            assert reply["text"] == "py got hello python"
            # Python -> Rust on the same connection
            assert await host.request(dev, b"hello rust", timeout=TIMEOUT) == b"rust got hello rust"
            msg = await r.event("message")
            assert msg["text"] == "hello rust" and msg["peer"] == str(host.id)
            assert msg["stats"]["connections_dialed"] == 1
            assert msg["stats"]["connections_accepted"] == 0
            assert host.endpoint.stats()["connections_accepted"] == 1
            assert host.counters["messages_delivered"] == 1
        task.cancel()


async def test_rust_host_python_joiner(rust_node: Path, tmp_path: Path) -> None:
    state = tmp_path / "rs"
    async with rust(
        rust_node, "host", "--state", str(state), "--name", "rusty", "--serve",
        "--then-request", "hello python",
    ) as r:
        ready = await r.event("ready")
        code = (await r.event("code"))["code"]
        async with py_node(tmp_path / "py", "py-joiner") as joiner:
            events, task = collect(joiner)
            asked = Asked()
            dev = await joiner.join(code, timeout=TIMEOUT, confirm=asked)
            assert str(dev.endpoint_id) == ready["id"] and dev.name == "rusty"
            paired = await r.event("paired")
            assert paired["peer"] == str(joiner.id) and paired["name"] == "py-joiner"
            assert paired["role"] == "host"
            assert paired["sas"] == await paired_sas(joiner, events)
            sas = await r.event("sas")
            assert sas["role"] == "host" and sas["peer"] == str(joiner.id)
            assert [c.sas for c in asked.checks] == [sas["sas"]] == [paired["sas"]]
            assert asked.checks[0].peer_info is None  # the joiner learns the host's info later
            check_keys(dev, rust_device(state))
            # Python -> Rust, then Rust -> Python, on the pairing connection
            assert await joiner.request(dev, b"hello rust", timeout=TIMEOUT) == b"rust got hello rust"
            msg = await r.event("message")
            assert msg["text"] == "hello rust"
            reply = await r.event("reply")
            assert reply["text"] == "py got hello python"
            # one connection, accepted by the Rust host, dialed by Python
            assert reply["stats"]["connections_accepted"] == 1
            assert reply["stats"]["connections_dialed"] == 0
            assert joiner.endpoint.stats()["connections_accepted"] == 0
            assert joiner.counters["messages_delivered"] == 1
            task.cancel()


async def test_wrong_code_python_host_rust_joiner(
    rust_node: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="iroh_pair.node")
    async with py_node(tmp_path / "py", "py-host") as host:
        hosted = await host.host_pairing()
        async with rust(rust_node, "join", wrong_words(hosted.code), "--state", str(tmp_path / "rs")) as r:
            failed = await r.event("failed")
            assert failed["code"] == int(RejectCode.WRONG_CODE) == 10
            assert failed["by_peer"] is False  # the joiner detects it (host MAC)
            assert await r.wait() == 1
        for _ in range(100):
            if "WRONG_CODE" in caplog.text:
                break
            await asyncio.sleep(0.05)
        assert "WRONG_CODE" in caplog.text
        assert hosted.offer.attempts_used == 1 and not hosted.done
        assert host.devices() == []


async def test_wrong_code_rust_host_python_joiner(rust_node: Path, tmp_path: Path) -> None:
    async with rust(rust_node, "host", "--state", str(tmp_path / "rs")) as r:
        code = PairingCode.parse((await r.event("code"))["code"])
        async with py_node(tmp_path / "py", "py-joiner") as joiner:
            with pytest.raises(PairingFailed) as e:
                await joiner.join(wrong_words(code), timeout=TIMEOUT)
            assert e.value.code == RejectCode.WRONG_CODE and not e.value.by_peer
            failed = await r.event("failed")
            assert failed["code"] == 10 and failed["by_peer"] is True
            assert joiner.devices() == []
            # the code is still good for the right words (2 attempts left)
            dev = await joiner.join(str(code), timeout=TIMEOUT)
            assert (await r.event("paired"))["peer"] == str(joiner.id)
            assert dev.endpoint_id in [d.endpoint_id for d in joiner.devices()]


async def test_tampered_and_replayed_rust_to_python(rust_node: Path, tmp_path: Path) -> None:
    state = tmp_path / "rs"
    async with py_node(tmp_path / "py", "py-host") as host:
        hosted = await host.host_pairing()
        async with rust(rust_node, "join", str(hosted.code), "--state", str(state)) as r:
            await r.event("paired")
            assert await r.wait() == 0
        dev = await hosted.wait(TIMEOUT)
        target = ("--state", str(state), "--peer-addr", host.ticket())
        # a good request from a new process (new connection, new subkeys)
        async with rust(rust_node, "request", str(host.id), "ping", *target) as r:
            assert (await r.event("reply"))["text"] == "py got ping"
        async with rust(rust_node, "request", str(host.id), "bad", "--tamper", *target) as r:
            refused = await r.event("refused")
            assert refused["code"] == int(StreamErrorCode.TAMPERED) == 16
        assert host.rejections == {"TAMPERED": 1}
        async with rust(rust_node, "request", str(host.id), "twice", "--replay", *target) as r:
            assert (await r.event("reply"))["text"] == "py got twice"
            refused = await r.event("refused")
            assert refused["code"] == int(StreamErrorCode.REPLAYED) == 17
        assert host.rejections == {"TAMPERED": 1, "REPLAYED": 1}
        assert host.counters["messages_delivered"] == 2
        assert host.counters["messages_rejected"] == 2
        assert dev.name == "iroh-pair-node"


async def test_tampered_replayed_duplicate_python_to_rust(rust_node: Path, tmp_path: Path) -> None:
    """The Rust receiver refuses bad sealed messages with the spec's stream error codes."""
    async with py_node(tmp_path / "py", "py-host") as host:
        hosted = await host.host_pairing()
        async with rust(rust_node, "join", str(hosted.code), "--state", str(tmp_path / "rs"), "--serve") as r:
            await r.event("paired")
            dev = await hosted.wait(TIMEOUT)
            assert await host.request(dev, b"one", timeout=TIMEOUT) == b"rust got one"
            conn = host.cache.peek(dev.endpoint_id, ALPN)
            assert conn is not None
            channel = host._channel(conn, dev)

            async def refused(payload: bytes) -> int:
                with pytest.raises(RemoteError) as e:
                    await conn.request(payload, max_response=1 << 20, timeout=TIMEOUT)
                return e.value.code

            mid = new_message_id()
            good = encode_header("msg") + channel.seal("msg", b"two", message_id=mid)
            bad = bytearray(encode_header("msg") + channel.seal("msg", b"three"))
            bad[-1] ^= 1
            assert await refused(bytes(bad)) == StreamErrorCode.TAMPERED
            reply = await conn.request(good, max_response=1 << 20, timeout=TIMEOUT)
            assert channel.open("msg", reply, reply_to=mid).plaintext == b"rust got two"
            assert await refused(good) == StreamErrorCode.REPLAYED
            again = encode_header("msg") + channel.seal("msg", b"two", message_id=mid)
            assert await refused(again) == StreamErrorCode.DUPLICATE
            other = encode_header("sync") + channel.seal("sync", b"four")
            assert await refused(other) == StreamErrorCode.UNKNOWN_KIND
            names = [(await r.event("rejected_incoming"))["name"] for _ in range(3)]
            assert names == ["TAMPERED", "REPLAYED", "DUPLICATE"]
            assert await host.request(dev, b"five", timeout=TIMEOUT) == b"rust got five"
            msg = await r.event("message")
            while msg["text"] != "five":
                msg = await r.event("message")  # "one", "two", then "five"
            assert msg["stats"]["rejections"] == {"TAMPERED": 1, "REPLAYED": 1, "DUPLICATE": 1}
            assert msg["stats"]["messages_delivered"] == 3
            assert host.endpoint.stats()["connections_accepted"] == 1


async def test_python_dials_rust_serve_after_pairing(rust_node: Path, tmp_path: Path) -> None:
    """A paired device reconnects: the Rust `serve` mode admits it on a new connection."""
    state = tmp_path / "rs"
    async with py_node(tmp_path / "py", "py-host") as host:
        hosted = await host.host_pairing()
        async with rust(rust_node, "join", str(hosted.code), "--state", str(state)) as r:
            await r.event("paired")
            assert await r.wait() == 0
        dev = await hosted.wait(TIMEOUT)
        async with rust(rust_node, "serve", "--state", str(state)) as r:
            ready = await r.event("ready")
            assert ready["id"] == str(dev.endpoint_id)
            host._hints[dev.endpoint_id] = EndpointAddr.from_ticket(ready["ticket"])
            assert await host.request(dev, b"again", timeout=TIMEOUT) == b"rust got again"
            msg = await r.event("message")
            assert msg["text"] == "again" and msg["stats"]["connections_accepted"] == 1


async def test_rust_receiver_remembers_delivered_ids_across_a_kill(
    rust_node: Path, tmp_path: Path
) -> None:
    """§13.8 on the Rust side: a request delivered once, then the Rust process is killed
    (SIGKILL, no shutdown) and restarted on the same state directory; the retry with the same
    message id is answered DUPLICATE and not delivered again, a new id still is."""
    state = tmp_path / "rs"
    async with py_node(tmp_path / "py", "py-host") as host:
        hosted = await host.host_pairing()
        async with rust(rust_node, "join", str(hosted.code), "--state", str(state)) as r:
            await r.event("paired")
            assert await r.wait() == 0
        dev = await hosted.wait(TIMEOUT)
        mid = new_message_id()

        async def serve() -> RustNode:
            r = await RustNode.start(rust_node, "serve", "--state", str(state))
            ready = await r.event("ready")
            host._hints[dev.endpoint_id] = EndpointAddr.from_ticket(ready["ticket"])
            return r

        first = await serve()
        try:
            assert await host.request(dev, b"job", message_id=mid, timeout=TIMEOUT) == b"rust got job"
            msg = await first.event("message")
            assert msg["text"] == "job" and msg["message_id"] == mid.hex()
        finally:
            await first.stop()  # SIGKILL
        assert first.proc.returncode == -9
        stale = host.cache.peek(dev.endpoint_id, ALPN)
        if stale is not None:
            stale.close()  # the killed process sent no CONNECTION_CLOSE
        second = await serve()
        try:
            with pytest.raises(RemoteError) as e:
                await host.request(dev, b"job", message_id=mid, timeout=TIMEOUT)
            assert e.value.code == StreamErrorCode.DUPLICATE
            rejected = await second.event("rejected_incoming")
            assert rejected["name"] == "DUPLICATE"
            assert await host.request(dev, b"other", timeout=TIMEOUT) == b"rust got other"
            msg = await second.event("message")
            assert msg["text"] == "other"
            assert msg["stats"]["messages_delivered"] == 1  # "job" was not delivered again
        finally:
            await second.stop()


# -- version 2: a declined SAS, version 1 refused, strangers ---------------------------------


async def test_rust_joiner_declines_the_sas_nothing_stored(rust_node: Path, tmp_path: Path) -> None:
    """The Rust joiner's user says no: both sides fail with SAS_DECLINED, nothing is stored,
    and the declined code ends on the Python host (§8.3)."""
    state = tmp_path / "rs"
    async with py_node(tmp_path / "py", "py-host") as host:
        asked = Asked()
        hosted = await host.host_pairing(confirm=asked)
        async with rust(rust_node, "join", str(hosted.code), "--state", str(state),
                        "--confirm", "no") as r:
            sas = await r.event("sas")
            assert sas["approve"] is False
            failed = await r.event("failed")
            assert failed["code"] == int(RejectCode.SAS_DECLINED) == 16
            assert failed["name"] == "SAS_DECLINED" and failed["by_peer"] is False
            assert await r.wait() == 1
        with pytest.raises(PairingFailed) as e:
            await hosted.wait(TIMEOUT)
        assert e.value.code == RejectCode.SAS_DECLINED and e.value.by_peer
        # the host saw the same SAS (its Confirm arrived before the joiner's Reject), or none
        assert [c.sas for c in asked.checks] in ([], [sas["sas"]])
        assert host.devices() == []
    assert rust_devices(state) == []


async def test_rust_host_declines_the_sas_nothing_stored(rust_node: Path, tmp_path: Path) -> None:
    """The Rust host's user says no: the Python joiner fails with SAS_DECLINED from the peer
    and stores nothing; the Rust host stores nothing and ends the code."""
    state = tmp_path / "rs"
    async with rust(rust_node, "host", "--state", str(state), "--confirm", "no") as r:
        code = (await r.event("code"))["code"]
        async with py_node(tmp_path / "py", "py-joiner") as joiner:
            asked = Asked()
            with pytest.raises(PairingFailed) as e:
                await joiner.join(code, timeout=TIMEOUT, confirm=asked)
            assert e.value.code == RejectCode.SAS_DECLINED and e.value.by_peer
            sas = await r.event("sas")
            assert sas["role"] == "host" and sas["approve"] is False
            assert [c.sas for c in asked.checks] == [sas["sas"]]
            failed = await r.event("failed")
            assert failed["code"] == 16 and failed["by_peer"] is False
            ended = await r.event("offer_ended")
            assert ended["code"] == 16  # the code gets no more attempts
            assert joiner.devices() == []
            assert await r.wait() == 1
    assert rust_devices(state) == []


async def test_version_1_peer_gets_the_typed_version_error_from_the_rust_host(
    rust_node: Path, tmp_path: Path
) -> None:
    """A version-1 joiner, crafted by hand: a ``pair`` stream with a version-1 Hello (tag, id,
    pA). The Rust host answers Reject(UNSUPPORTED_VERSION) naming both versions, finishes, does
    no PAKE work and counts no attempt (the code still pairs afterwards)."""
    async with rust(rust_node, "host", "--state", str(tmp_path / "rs"), "--serve") as r:
        code = PairingCode.parse((await r.event("code"))["code"])
        async with await Endpoint.bind() as ep:
            conn = await ep.connect(EndpointAddr.from_ticket(code.ticket), ALPN, timeout=5)
            send, recv = await conn.open_bi()
            v1_hello = b"\x01" + code.tag + ep.id.to_bytes() + b"A" + bytes(32)
            assert len(v1_hello) == 82
            await send.write_frame(encode_header(PAIR_KIND_V1) + v1_hello)
            body = await asyncio.wait_for(recv.read_frame(MAX_MESSAGE), TIMEOUT)
            assert body is not None
            msg = wire.decode(body)
            assert isinstance(msg, wire.Reject)
            assert msg.code == RejectCode.UNSUPPORTED_VERSION and int(msg.code) == 14
            assert "version 1" in msg.text and "version 2" in msg.text
            assert await asyncio.wait_for(recv.read_frame(MAX_MESSAGE), TIMEOUT) is None
            refused = await r.event("version_refused")
            assert refused["peer"] == str(ep.id) and refused["version"] == 1
            # an unpaired version-1 peer's connection is closed after the grace period
            info = await asyncio.wait_for(conn.closed(), TIMEOUT)
            assert info.code == 2 and info.by_peer
        async with py_node(tmp_path / "py", "py-joiner") as joiner:
            dev = await joiner.join(str(code), timeout=TIMEOUT)
            paired = await r.event("paired")
            assert paired["peer"] == str(joiner.id) and dev.name == "iroh-pair-node"
            assert paired["stats"]["version_refused"] == 1
            # Hello + Confirm + Accept of the one real attempt: the v1 Hello was not processed
            assert paired["stats"]["pairing_messages_received"] == 3


async def test_rust_joiner_facing_a_version_1_host_reports_unsupported_version(
    rust_node: Path, tmp_path: Path
) -> None:
    """A version-1 host does not know ``pair2`` and resets it with UNKNOWN_KIND before any
    reply: the Rust joiner fails with UNSUPPORTED_VERSION, naming version 2."""
    async with await Endpoint.bind(alpns=[ALPN]) as old_host:
        code = PairingCode.generate(old_host.ticket())
        seen: list[bytes] = []

        async def version_1_host() -> None:
            conn = await old_host.accept()
            assert conn is not None
            send, recv = await conn.accept_bi()
            first = await recv.read_frame(MAX_MESSAGE)
            assert first is not None
            seen.append(first)
            recv.stop(int(StreamErrorCode.UNKNOWN_KIND))
            send.reset(int(StreamErrorCode.UNKNOWN_KIND))
            await asyncio.sleep(TIMEOUT)

        task = asyncio.ensure_future(version_1_host())
        try:
            async with rust(rust_node, "join", str(code), "--state", str(tmp_path / "rs")) as r:
                failed = await r.event("failed")
                assert failed["code"] == int(RejectCode.UNSUPPORTED_VERSION) == 14
                assert failed["name"] == "UNSUPPORTED_VERSION"
                assert "version 2" in failed["reason"]
                assert await r.wait() == 1
            assert seen and seen[0].startswith(encode_header(PAIR_KIND))
        finally:
            task.cancel()
    assert rust_devices(tmp_path / "rs") == []


async def _closed_code(conn: Connection) -> int | None:
    info = await asyncio.wait_for(conn.closed(), TIMEOUT)
    return info.code


async def test_strangers_cannot_block_the_rust_host(rust_node: Path, tmp_path: Path) -> None:
    """With a code hosted by the Rust node (4 unknown slots): 8 strangers that send nothing,
    4 that stall inside a pair2 first frame, one that opens a messaging stream. The messaging
    stream is refused NOT_ADMITTED before its body, a stranger's third concurrent stream is not
    granted, every stranger is closed NOT_PAIRED (evicted by a newcomer, or past its 5 s start
    deadline), and a real joiner arriving after all of them pairs."""
    async with rust(rust_node, "host", "--state", str(tmp_path / "rs"), "--serve") as r:
        code = PairingCode.parse((await r.event("code"))["code"])
        target = EndpointAddr.from_ticket(code.ticket)
        eps: list[Endpoint] = []

        async def stranger() -> Connection:
            ep = await Endpoint.bind()
            eps.append(ep)
            return await ep.connect(target, ALPN, timeout=5)

        try:
            conns = [await stranger() for _ in range(8)]  # idle
            for i in range(4):  # stalled: a 60,000-byte pair2 frame's first 8 bytes, then nothing
                c = await stranger()
                conns.append(c)
                s, _ = await c.open_bi()
                await s.write((60_000).to_bytes(4, "big") + encode_header(PAIR_KIND) + b"\x01")
                if i == 0:
                    # at most 2 concurrent streams for a stranger: the third is not granted
                    s2, _ = await c.open_bi()
                    await s2.write(b"\x00")
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(c.open_bi(), 1.0)
            # a messaging kind from an unknown peer: NOT_ADMITTED after the header, the declared
            # 1,000-byte body never sent
            c = await stranger()
            conns.append(c)
            send, recv = await c.open_bi()
            await send.write((1000).to_bytes(4, "big") + encode_header("msg"))
            with pytest.raises(StreamReset) as e:
                await asyncio.wait_for(recv.read_frame(MAX_MESSAGE), TIMEOUT)
            assert e.value.code == StreamErrorCode.NOT_ADMITTED
            codes = await asyncio.gather(*(_closed_code(c) for c in conns))
            assert codes == [4] * 13, codes  # NOT_PAIRED
            async with py_node(tmp_path / "py", "py-joiner") as joiner:
                dev = await joiner.join(str(code), timeout=TIMEOUT)
                paired = await r.event("paired")
                assert paired["peer"] == str(joiner.id) and dev.name == "iroh-pair-node"
                stats = paired["stats"]
                # 13 strangers in 4 slots: 9 evicted, the last 4 closed by the start deadline
                assert stats["evicted"] == 9 and stats["start_timeouts"] == 4, stats
                assert stats["not_admitted"] == 1
                assert stats["unknown_connections"] == 0  # the joiner was promoted
        finally:
            for ep in eps:
                await ep.close()
