"""send_file survives the receiver going away (issue #34): a receiver process killed mid-
transfer and started again, and an offer whose message stream drops while the receiver keeps
fetching (its retry is answered ``DUPLICATE`` by the messaging layer).

The receiver reports what it read from the network for the file (iroh-blobs' stats: payload
and hash tree, ``FileReceipt.transferred``); after a restart at >= 1/2 it must be well under the
size, and the file byte-identical.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import show
from test_files import CHILD, MiB, inbox, paired, sha256, write_random  # noqa: F401 (fixture)

from iroh_pair import FileOffer, FileProgress, NetworkOptions, Node, errors
from iroh_pair._files import FILE_KIND, decode_reply, encode_offer
from iroh_pair.protocol.constants import StreamErrorCode
from iroh_pair.store import PairedDevice
from iroh_pair.transport import EndpointAddr

Paired = tuple[Node, Node, PairedDevice, PairedDevice]
#: The sender notices a killed receiver when its connection idles out: short here (iroh's
#: default is 30 s) so that the test does not wait long; nothing else depends on it.
IDLE = 6.0


@pytest.fixture
async def sender_and_receiver_dir(
    tmp_path: Path,
) -> AsyncIterator[tuple[Node, PairedDevice, Path]]:
    """(the sender, the receiver as it sees it, the receiver's data directory, closed: a child
    process opens it)."""
    opts = NetworkOptions.loopback().replace(idle_timeout=IDLE, keep_alive=1.0)
    sender = await Node.open(tmp_path / "sender", name="sender", options=opts)
    receiver = await Node.open(tmp_path / "receiver", name="receiver",
                               options=NetworkOptions.loopback())
    hosted = await receiver.host_pairing()
    await sender.join(hosted.code)
    dev = await hosted.wait(10)
    receiver_dev = sender.device(receiver.id)
    await receiver.close()
    del dev
    try:
        yield sender, receiver_dev, receiver.data_dir
    finally:
        await sender.close()


class Child:
    """files_child.py in ``receive`` mode: its JSON lines as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, object]] = []
        self.changed = asyncio.Event()
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, data_dir: Path, sender: Node, box: Path) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(CHILD), "receive", str(data_dir),
            sender.endpoint.addr().to_ticket(), str(box), stdout=asyncio.subprocess.PIPE)
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():
            self.lines.append(json.loads(raw))
            self.changed.set()

    async def wait_for(self, event: str, timeout: float = 60) -> dict[str, object]:
        async with asyncio.timeout(timeout):
            while True:
                for ev in self.lines:
                    if ev.get("event") == event:
                        return ev
                if self.proc.returncode is not None or self.reader.done():
                    raise AssertionError(f"the child ended: {self.lines}")
                self.changed.clear()
                await self.changed.wait()

    async def kill(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        code = await self.proc.wait()
        await self.reader
        return code


async def test_send_file_survives_a_killed_and_restarted_receiver(
    sender_and_receiver_dir: tuple[Node, PairedDevice, Path], tmp_path: Path
) -> None:
    """The receiver's process is SIGKILLed at >= 1/2 of a 256 MiB file (as the sender sees it
    served) and started again with its handler: the SAME send_file call completes, the file is
    byte-identical, and the restarted receiver read well under the full size."""
    sender, receiver_dev, data_dir = sender_and_receiver_dir
    size = 256 * MiB
    src = write_random(tmp_path / "big.bin", size)
    box = inbox(tmp_path)
    half = asyncio.Event()
    sent: list[FileProgress] = []

    def watch(p: FileProgress) -> None:
        sent.append(p)
        if p.done >= size // 2:
            half.set()

    child = await Child.start(data_dir, sender, box)
    try:
        ready = await child.wait_for("ready")
        sender._hints[receiver_dev.endpoint_id] = EndpointAddr.from_ticket(str(ready["ticket"]))
        sending = asyncio.ensure_future(
            sender.send_file(receiver_dev, src, progress=watch, timeout=300))
        await asyncio.wait_for(half.wait(), 120)
        assert await child.kill() == -signal.SIGKILL
        first = [e for e in child.lines if e.get("event") == "progress"]
        assert not sending.done() and list(box.iterdir()) == []
        got_before = first[-1]["done"] if first else 0
        assert isinstance(got_before, int) and got_before < size
        # started again: same data directory, another port
        child = await Child.start(data_dir, sender, box)
        ready = await child.wait_for("ready")
        sender._hints[receiver_dev.endpoint_id] = EndpointAddr.from_ticket(str(ready["ticket"]))
        receipt = await asyncio.wait_for(sending, 240)
        stored = await child.wait_for("stored", 30)
    finally:
        await child.kill()
    assert receipt.name == "big.bin" and receipt.size == size
    assert sha256(box / "big.bin") == sha256(src)
    assert sorted(p.name for p in box.iterdir()) == ["big.bin"]
    stats = stored["stats"]
    assert isinstance(stats, dict)
    wire = stats["wire_bytes_recv"]  # the restarted endpoint's counter: all it received
    show("files", "receiver killed at >= 1/2 and restarted, same send_file", size=size,
         received_before_kill=got_before, read_after_restart=receipt.transferred,
         wire_bytes_recv_after_restart=wire)
    assert 0 < receipt.transferred <= size * 0.6
    assert isinstance(wire, int) and receipt.transferred <= wire <= size * 0.65
    assert (await sender.blob_store()).offered(receiver_dev.endpoint_id) == []


async def test_a_dropped_offer_stream_does_not_fail_a_stored_file(
    paired: Paired, tmp_path: Path
) -> None:
    """The connection carrying the offer is closed while the receiver fetches: the messaging
    layer retries the offer under its message id (``IN_PROGRESS`` while the fetch runs, then
    ``DUPLICATE``, whose reply is not kept); send_file asks again under a fresh message id and
    gets the stored answer from the receiver's job for the offer id. The handler runs once,
    the content is fetched once, one file is stored."""
    host, joiner, host_dev, _ = paired
    size = 128 * MiB
    box = inbox(tmp_path)
    offers: list[FileOffer] = []
    eighth = asyncio.Event()

    def take(offer: FileOffer) -> Path:
        offers.append(offer)
        return box

    def watch(offer: FileOffer, p: FileProgress) -> None:
        if p.done >= size // 8:
            eighth.set()

    host.on_file_offer(take, progress=watch)
    src = write_random(tmp_path / "big.bin", size)
    sending = asyncio.ensure_future(joiner.send_file(host_dev, src, timeout=120))
    await asyncio.wait_for(eighth.wait(), 60)
    closed = 0
    for st in list(joiner._conns.values()):  # the messaging connection(s), not the blobs one
        if st.conn.remote_id == host.id:
            st.conn.close(0, b"test: dropped")
            closed += 1
    assert closed >= 1
    receipt = await sending
    assert receipt.name == "big.bin" and sha256(box / "big.bin") == sha256(src)
    assert sorted(p.name for p in box.iterdir()) == ["big.bin"]
    assert len(offers) == 1
    assert size <= receipt.transferred < size * 1.1  # fetched once
    rejected = host.stats().rejections
    show("files", "offer stream dropped mid-transfer", rejections=rejected)
    assert rejected.get(StreamErrorCode.DUPLICATE.name, 0) >= 1  # the case this is about


async def test_send_file_gives_up_when_the_receiver_does_not_come_back(
    sender_and_receiver_dir: tuple[Node, PairedDevice, Path], tmp_path: Path
) -> None:
    """Killed and not started again: send_file raises a transport error once
    ``reconnect_timeout`` has passed after the loss was noticed, and withdraws the offer."""
    sender, receiver_dev, data_dir = sender_and_receiver_dir
    size = 64 * MiB
    src = write_random(tmp_path / "big.bin", size)
    box = inbox(tmp_path)
    quarter = asyncio.Event()
    child = await Child.start(data_dir, sender, box)
    try:
        ready = await child.wait_for("ready")
        sender._hints[receiver_dev.endpoint_id] = EndpointAddr.from_ticket(str(ready["ticket"]))
        sending = asyncio.ensure_future(sender.send_file(
            receiver_dev, src, reconnect_timeout=2.0,
            progress=lambda p: quarter.set() if p.done >= size // 4 else None))
        await asyncio.wait_for(quarter.wait(), 60)
    finally:
        await child.kill()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(errors.TransportError):
        await asyncio.wait_for(sending, 90)
    show("files", "receiver gone for good: send_file gave up", seconds=round(loop.time() - t0, 1))
    assert list(box.iterdir()) == []
    assert (await sender.blob_store()).offered(receiver_dev.endpoint_id) == []


async def test_an_offer_answered_before_a_restart_is_answered_again(
    paired: Paired, tmp_path: Path
) -> None:
    """The receiver stored a file and restarted (its reply may not have arrived): the sender's
    retry of the same offer (same offer id, a fresh message id) gets the same "stored" answer
    from DATA_DIR/file-offers.json: the handler is not asked again, no second copy appears."""
    host, joiner, host_dev, _ = paired
    box = inbox(tmp_path)
    asked: list[str] = []

    def take(offer: FileOffer) -> Path:
        asked.append(offer.name)
        return box

    host.on_file_offer(take)
    jb = await joiner.blob_store()
    h, size = await jb.add_path(write_random(tmp_path / "a.bin", 200_000))
    payload = encode_offer("a.bin", size, h, offer_id="ab" * 16)
    jb.grant(host.id, h)
    first = decode_reply(await joiner.request(host_dev, payload, kind=FILE_KIND, timeout=30))
    assert first["status"] == "stored" and first["name"] == "a.bin" and asked == ["a.bin"]
    await host.close()
    again = await Node.open(host.data_dir, name="host", options=NetworkOptions.loopback())
    try:
        again.on_file_offer(take)
        joiner._hints[host.id] = again.endpoint.addr()
        second = decode_reply(await joiner.request(host_dev, payload, kind=FILE_KIND, timeout=30))
        assert second == first
        assert asked == ["a.bin"] and sorted(p.name for p in box.iterdir()) == ["a.bin"]
        # another offer id is another offer: asked, stored beside it (nothing fetched)
        other = encode_offer("a.bin", size, h, offer_id="cd" * 16)
        third = decode_reply(await joiner.request(host_dev, other, kind=FILE_KIND, timeout=30))
        assert third["name"] == "a (2).bin" and third["read"] == 0 and len(asked) == 2
    finally:
        jb.ungrant(host.id, h)
        await again.close()
