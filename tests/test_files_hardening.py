"""Hardening of file transfer (issue #34, review findings): strangers cost little, nothing
waits without a timeout, bad input gets a typed error and nothing is lost. Real nodes on
loopback; a misbehaving sender is played by a test endpoint in the middle (as in
tests/test_files_faults.py) or by raw offers (as in tests/test_files_protocol.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers import open_local_node, show
from test_files import inbox, paired, write_random  # noqa: F401  (the fixture)
from test_files_resume import Child, sender_and_receiver_dir  # noqa: F401  (the fixture)

from iroh_pair import DestinationChanged, FileChanged, FileOffer, FileProgress, Node, TooManyTransfers, TransferRefused, _native
from iroh_pair import _node as node_module
from iroh_pair._files import FILE_KIND, decode_reply, encode_offer
from iroh_pair.store import PairedDevice
from iroh_pair.transport import Endpoint, EndpointAddr, EndpointId, NetworkOptions

MiB = 1 << 20
Paired = tuple[Node, Node, PairedDevice, PairedDevice]


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".iroh-pair-"))


async def raw_offer(sender: Node, to: PairedDevice, name: str, size: int, h: str,
                    timeout: float = 60) -> dict[str, object]:
    """A single-file offer with a fresh offer id, as send_file sends it: the reply."""
    payload = encode_offer(name, size, h, offer_id=secrets.token_hex(16))
    return decode_reply(await sender.request(to, payload, kind=FILE_KIND, timeout=timeout))


@pytest.fixture
async def three(tmp_path: Path) -> AsyncIterator[tuple[Node, Node, Node, PairedDevice,
                                                        PairedDevice]]:
    """(receiver, sender a, sender b, the receiver as a sees it, as b sees it)."""
    receiver = await open_local_node(tmp_path / "receiver", "receiver")
    a = await open_local_node(tmp_path / "a", "a")
    b = await open_local_node(tmp_path / "b", "b")
    try:
        devs = []
        for sender in (a, b):
            hosted = await receiver.host_pairing()
            devs.append(await sender.join(hosted.code))
            await hosted.wait(10)
        yield receiver, a, b, devs[0], devs[1]
    finally:
        for n in (b, a, receiver):
            await n.close()


# -- 1. receive jobs are bounded, and so is a stalled fetch -------------------------------------


async def test_offers_beyond_the_caps_are_refused_with_too_many_transfers(
    three: tuple[Node, Node, Node, PairedDevice, PairedDevice], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The receiver's handler holds every offer (a user who has not answered yet). Sender a's
    first FILE_RECEIVES_PER_DEVICE (4) offers are taken; its fifth is answered at once "failed",
    type TooManyTransfers (send_file raises TooManyTransfers), and the handler never sees it.
    Sender b is not held up by a's four; with the total cap at 5, b's second offer is refused
    too. Once the held offers end, a is served again. (The old receiver took every offer: the
    fifth waited in the handler like the others, and the test timed out waiting for a reply.)"""
    receiver, a, b, to_r_a, to_r_b = three
    release = asyncio.Event()
    seen: list[str] = []

    async def hold(offer: FileOffer) -> Path | None:
        seen.append(offer.sender.name)
        await release.wait()
        return None  # declined

    receiver.on_file_offer(hold)
    h = "cd" * 32
    held = [asyncio.ensure_future(raw_offer(a, to_r_a, f"f{i}", 10, h)) for i in range(4)]
    async with asyncio.timeout(20):
        while len(seen) < 4:
            await asyncio.sleep(0.02)
    t0 = time.monotonic()
    reply = await raw_offer(a, to_r_a, "fifth", 10, h, timeout=10)
    assert (reply["status"], reply.get("type")) == ("failed", "TooManyTransfers"), reply
    assert time.monotonic() - t0 < 5
    src = write_random(tmp_path / "x.bin", 1000)
    with pytest.raises(TooManyTransfers):
        await a.send_file(to_r_a, src, timeout=10)
    assert seen == ["a"] * 4  # the refused ones never reached the handler
    # another device still gets in (its own cap), until the total cap
    monkeypatch.setattr(node_module, "FILE_RECEIVES_TOTAL", 5)
    from_b = asyncio.ensure_future(raw_offer(b, to_r_b, "b1", 10, h))
    async with asyncio.timeout(20):
        while len(seen) < 5:
            await asyncio.sleep(0.02)
    assert seen[-1] == "b"
    reply = await raw_offer(b, to_r_b, "b2", 10, h, timeout=10)
    assert (reply["status"], reply.get("type")) == ("failed", "TooManyTransfers"), reply
    show("files", "offers beyond the caps", reply=reply)
    release.set()
    for r in await asyncio.gather(*held, from_b):
        assert r["status"] == "declined", r
    # the jobs ended: the caps are free again
    assert receiver._file_active == {}
    reply = await raw_offer(a, to_r_a, "again", 10, h, timeout=10)
    assert reply["status"] == "declined", reply


class StallingRelay:
    """An endpoint on the blobs ALPN between the receiver and the sender: it passes the
    receiver's request on to the sender and the response back, up to ``limit`` bytes, then
    stops forwarding and holds the stream and the connection open (QUIC keep-alives go on, so
    nothing times out on its own)."""

    def __init__(self, relay: Endpoint, upstream: EndpointAddr, limit: int) -> None:
        self.relay, self.upstream, self.limit = relay, upstream, limit
        self.forwarded = 0
        self.stalled = asyncio.Event()
        self.task = asyncio.ensure_future(self._serve())

    async def _serve(self) -> None:
        alpn = bytes(_native.BlobStore.ALPN)
        conn = await self.relay.accept()
        assert conn is not None
        send, recv = await conn.accept_bi()
        request = await recv.read_to_end(1 << 20)
        up = await self.relay.connect(self.upstream, alpn)
        up_send, up_recv = await up.open_bi()
        await up_send.write_all(request)
        up_send.finish()
        while self.forwarded < self.limit:
            data = await up_recv.read(min(65536, self.limit - self.forwarded))
            if not data:
                break
            await send.write_all(data)
            self.forwarded += len(data)
        self.stalled.set()
        await asyncio.Event().wait()  # until cancelled

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task


async def test_a_fetch_whose_sender_stops_sending_fails_with_transfer_stalled(
    paired: Paired, tmp_path: Path
) -> None:
    """The receiver fetches an 8 MiB blob through a relay that forwards 1 MiB of the response
    and then nothing, keeping the connection open. With ``stall_timeout=1.5`` the fetch is
    cancelled: the reply is "failed", type TransferStalled, within a few seconds of the stall;
    nothing at the destination name, no temporary, the blob not complete in the store. (The
    old receiver waited as long as the connection lived: no reply within the test's 20 s.)"""
    host, joiner, host_dev, _ = paired
    size = 8 * MiB
    src = write_random(tmp_path / "s.bin", size)
    jb = await joiner.blob_store()
    h, _ = await jb.add_path(src)
    box = inbox(tmp_path)
    host.on_file_offer(lambda offer: box, stall_timeout=1.5)
    async with await Endpoint.bind(NetworkOptions.loopback(),
                                   alpns=[bytes(_native.BlobStore.ALPN)]) as relay_ep:
        jb.grant(relay_ep.id, h)
        relay = StallingRelay(relay_ep, joiner.endpoint.addr(), 1 * MiB)

        def via_relay(dev: PairedDevice, conn: object) -> EndpointAddr | EndpointId:
            return relay_ep.addr()

        host._fetch_target = via_relay  # type: ignore[method-assign]
        try:
            offering = asyncio.ensure_future(raw_offer(joiner, host_dev, "s.bin", size, h))
            await asyncio.wait_for(relay.stalled.wait(), 20)
            stalled_at = time.monotonic()
            reply = await asyncio.wait_for(offering, 20)
            waited = time.monotonic() - stalled_at
        finally:
            await relay.close()
            jb.ungrant(relay_ep.id, h)
    show("files", "sender stopped sending", reply=reply, forwarded=relay.forwarded,
         seconds_after_stall=round(waited, 2))
    assert (reply["status"], reply.get("type")) == ("failed", "TransferStalled"), reply
    assert "no progress" in str(reply["error"])
    assert 1.0 <= waited < 8
    assert list(box.iterdir()) == []
    assert not await (await host.blob_store()).has(h)


# -- 2. the receiver's temporary tree cannot be swapped for a link ------------------------------


async def test_a_temporary_tree_swapped_for_a_symlink_sends_nothing_through_it(
    paired: Paired, tmp_path: Path
) -> None:
    """A directory of three 3 MiB files (one in a subdirectory). While the first file arrives,
    someone with write access to the destination directory moves the receiver's
    ``.iroh-pair-X.partial`` away and puts a symbolic link to another directory in its place.
    The receiver fails the offer with DestinationChanged (the sender's send_file raises it);
    nothing lands in the link's target, the moved tree is emptied, no directory appears under
    the offer's name. (The old receiver wrote every file through the link: the target held
    a.bin, b.bin and sub/c.bin.)"""
    host, joiner, host_dev, _ = paired
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    for rel in ("a.bin", "b.bin", "sub/c.bin"):
        write_random(src / rel, 3 * MiB)
    box = inbox(tmp_path)
    target = tmp_path / "elsewhere"
    target.mkdir()
    moved = tmp_path / "moved"
    swapped: list[str] = []

    def swap(offer: FileOffer, p: object) -> None:
        if swapped:
            return
        [tmp] = [q for q in box.iterdir() if q.name.startswith(".iroh-pair-")]
        os.rename(tmp, moved)
        os.symlink(target, tmp)
        swapped.append(tmp.name)

    host.on_file_offer(lambda offer: box, progress=swap)
    with pytest.raises(DestinationChanged) as e:
        await joiner.send_file(host_dev, src, timeout=60)
    show("files", "temporary tree swapped for a link", error=str(e.value)[:200])
    assert swapped
    assert sorted(p.name for p in target.rglob("*")) == []  # nothing through the link
    assert sorted(p.name for p in moved.rglob("*")) == []  # our tree, emptied where it went
    assert [p.name for p in box.iterdir()] == swapped  # only the link someone else put there
    assert (box / swapped[0]).is_symlink()


async def test_a_subdirectory_swapped_for_a_symlink_is_refused(
    paired: Paired, tmp_path: Path
) -> None:
    """The same with a directory inside the temporary tree (possible for its owner: the tree
    is 0700): ``sub`` is replaced by a link while ``sub/a.bin`` arrives, before ``sub/c.bin``.
    DestinationChanged, nothing in the link's target (sub/a.bin, being written at the time,
    went to the real ``sub`` through its descriptor), the tree removed. (The old receiver
    wrote sub/a.bin and sub/c.bin into the link's target.)"""
    host, joiner, host_dev, _ = paired
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    write_random(src / "sub" / "a.bin", 3 * MiB)
    write_random(src / "sub" / "c.bin", 3 * MiB)
    box = inbox(tmp_path)
    target = tmp_path / "elsewhere"
    target.mkdir()
    moved = tmp_path / "moved-sub"
    swapped: list[Path] = []

    def swap(offer: FileOffer, p: object) -> None:
        if swapped:
            return
        [tmp] = [q for q in box.iterdir() if q.name.startswith(".iroh-pair-")]
        sub = tmp / "sub"
        os.rename(sub, moved)
        os.symlink(target, sub)
        swapped.append(sub)

    host.on_file_offer(lambda offer: box, progress=swap)
    with pytest.raises(DestinationChanged):
        await joiner.send_file(host_dev, src, timeout=60)
    assert swapped
    assert sorted(p.name for p in target.rglob("*")) == []
    assert list(box.iterdir()) == []  # the temporary tree removed (the link with it)


# -- 3. the sender does not follow a file swapped for a link after the walk ---------------------


async def test_a_file_swapped_for_a_symlink_after_the_walk_is_not_sent(
    paired: Paired, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory's walk sees ``a.txt`` as a regular file; right after it (before the
    import, which opens by path) ``a.txt`` is replaced by a symbolic link to a secret file
    outside the directory. The import is real; the lstat after it sees the link: send_file
    raises FileChanged (``path`` the file), the receiver is never offered anything and the
    secret is not in its inbox, and no grant is left. (The old sender imported the secret
    through the link and offered it as a.txt: the receiver stored the secret.)"""
    host, joiner, host_dev, _ = paired
    src = tmp_path / "docs"
    src.mkdir()
    (src / "a.txt").write_bytes(b"harmless\n")
    (src / "b.txt").write_bytes(b"also harmless\n")
    secret = tmp_path / "secret.key"
    secret.write_bytes(b"TOP SECRET " * 100)
    box = inbox(tmp_path)
    offers: list[FileOffer] = []

    def take(offer: FileOffer) -> Path:
        offers.append(offer)
        return box

    host.on_file_offer(take)
    for fn in ("walk_tree", "walk_tree_stat"):  # whichever the sender walks with
        if hasattr(node_module, fn):
            real = getattr(node_module, fn)

            def walk_then_swap(root: Path, real: Any = real) -> Any:
                listed = real(root)
                os.unlink(src / "a.txt")
                os.symlink(secret, src / "a.txt")
                return listed

            monkeypatch.setattr(node_module, fn, walk_then_swap)
    with pytest.raises(FileChanged) as e:
        await joiner.send_file(host_dev, src, timeout=30)
    show("files", "file swapped for a link after the walk", error=str(e.value)[:200])
    assert e.value.path == str(src / "a.txt")
    assert offers == []
    assert [p.read_bytes() for p in box.rglob("*") if p.is_file()] == []
    assert (await joiner.blob_store()).offered(host.id) == []


# -- 6. unpairing withdraws the device's offers and stops what it was sending -------------------


async def test_unpairing_withdraws_every_offer_to_the_device(
    paired: Paired, tmp_path: Path
) -> None:
    """A send_file to the host is under way (the host's handler has not answered, so the grant
    lives). The sender unpairs the host: a fetch of the offered hash by the host's endpoint is
    refused (TransferRefused, the provider's refusal counted) and nothing is written. (With the
    old sender the grant outlived the unpairing, as long as send_file kept retrying the
    offer: the fetch got the whole file.)"""
    host, joiner, host_dev, joiner_dev = paired
    src = write_random(tmp_path / "f.bin", 256 * 1024)
    asked = asyncio.Event()

    async def never(offer: FileOffer) -> Path | None:
        asked.set()
        await asyncio.Event().wait()
        return None

    host.on_file_offer(never)
    jb = await joiner.blob_store()
    sending = joiner.start_file(host_dev, src, timeout=60)
    try:
        await asyncio.wait_for(asked.wait(), 20)
        [h] = jb.offered(host.id)
        refused0 = jb.stats()
        await joiner.unpair(host_dev)
        assert jb.offered(host.id) == []
        hb = await host.blob_store()
        dest = tmp_path / "got.bin"
        with pytest.raises(TransferRefused):
            await hb.fetch(host.endpoint, joiner.endpoint.addr(), h, dest, size=256 * 1024)
        after = jb.stats()
        assert (after["connections_refused"] + after["requests_refused"]
                > refused0["connections_refused"] + refused0["requests_refused"])
        assert not dest.exists()
    finally:
        sending.cancel()
        with contextlib.suppress(BaseException):
            await sending


async def test_unpairing_cancels_the_offers_being_received_from_the_device(
    paired: Paired, tmp_path: Path
) -> None:
    """The host is receiving an offer from the joiner (its handler still deciding) and unpairs
    the joiner: the receive job is cancelled (the handler sees CancelledError) and no job of
    the joiner's is left. (The old receiver kept the job running after the unpairing.)"""
    host, joiner, host_dev, joiner_dev = paired
    asked = asyncio.Event()
    cancelled = asyncio.Event()

    async def deciding(offer: FileOffer) -> Path | None:
        asked.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return None

    host.on_file_offer(deciding)
    offering = asyncio.ensure_future(raw_offer(joiner, host_dev, "x.bin", 10, "ef" * 32))
    try:
        await asyncio.wait_for(asked.wait(), 20)
        await host.unpair(joiner_dev)
        await asyncio.wait_for(cancelled.wait(), 5)
        assert host._file_active == {} and host._file_jobs == {}
    finally:
        offering.cancel()
        with contextlib.suppress(BaseException):
            await offering


# -- 4. one device's offers do not push out another's remembered answers ------------------------


async def test_one_devices_many_offers_do_not_evict_anothers_answer(
    three: tuple[Node, Node, Node, PairedDevice, PairedDevice],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With room for 5 answers in all and 3 per device: sender a's one offer is answered
    (declined) and remembered; sender b then sends 8 offers. a's retry of its offer (same offer
    id) is still answered from memory (the handler is not asked again), file-offers.json holds
    a's answer and only b's 3 newest, and no temporary file is left beside it. (The old
    receiver kept the last 5 answers whoever sent them: b's offers pushed a's out, and a's
    retry ran the handler again.)"""
    receiver, a, b, to_r_a, to_r_b = three
    monkeypatch.setattr(node_module, "FILE_OFFERS_REMEMBERED", 5)
    monkeypatch.setattr(node_module, "FILE_OFFERS_PER_DEVICE", 3, raising=False)
    asked: list[str] = []

    def decline(offer: FileOffer) -> None:
        asked.append(f"{offer.sender.name}:{offer.name}")
        return None

    receiver.on_file_offer(decline)
    h = "ab" * 32
    a_offer = encode_offer("a.bin", 10, h, offer_id=secrets.token_hex(16))

    async def ask(sender: Node, to: PairedDevice, payload: bytes) -> dict[str, object]:
        return decode_reply(await sender.request(to, payload, kind=FILE_KIND, timeout=20))

    assert (await ask(a, to_r_a, a_offer))["status"] == "declined"
    b_ids = [secrets.token_hex(16) for _ in range(8)]
    for i, oid in enumerate(b_ids):
        assert (await ask(b, to_r_b, encode_offer(f"b{i}", 10, h, offer_id=oid)))[
            "status"] == "declined"
    assert len(asked) == 9
    assert (await ask(a, to_r_a, a_offer))["status"] == "declined"
    assert len(asked) == 9, asked  # answered from memory
    stored = json.loads((receiver.data_dir / "file-offers.json").read_text())
    by = {(p, i) for p, i, _ in stored}
    assert (str(a.id), json.loads(a_offer)["id"]) in by
    assert {i for p, i in by if p == str(b.id)} == set(b_ids[-3:])
    assert [p.name for p in receiver.data_dir.iterdir() if p.name.endswith(".tmp")] == []


# -- 5. a killed receiver's temporary tree is removed when it starts again ----------------------


async def test_a_killed_receivers_temporary_tree_is_swept_when_it_starts_again(
    sender_and_receiver_dir: tuple[Node, PairedDevice, Path], tmp_path: Path
) -> None:
    """A directory of two 48 MiB files goes to a receiver process, which is SIGKILLed once a
    quarter has been served: its ``.iroh-pair-X.partial`` tree stays in the inbox. Started
    again on the same data directory, the receiver removes that tree (it recorded it in
    DATA_DIR/file-partials.json before making it) and the same send_file completes: the inbox
    holds the directory and no temporary. (The old receiver never removed it: the leftover
    was still in the inbox beside the directory.)"""
    sender, receiver_dev, data_dir = sender_and_receiver_dir
    size = 48 * MiB
    src = tmp_path / "album"
    src.mkdir()
    for name in ("1.bin", "2.bin"):
        write_random(src / name, size)
    box = inbox(tmp_path)
    quarter = asyncio.Event()

    def watch(p: FileProgress) -> None:
        if p.done >= size // 2:
            quarter.set()

    child = await Child.start(data_dir, sender, box)
    try:
        ready = await child.wait_for("ready")
        sender._hints[receiver_dev.endpoint_id] = EndpointAddr.from_ticket(str(ready["ticket"]))
        sending = asyncio.ensure_future(
            sender.send_file(receiver_dev, src, progress=watch, timeout=300))
        await asyncio.wait_for(quarter.wait(), 120)
        assert await child.kill() == -signal.SIGKILL
        left = temporaries(box)
        assert len(left) == 1 and not sending.done(), left  # the killed receiver's tree
        child = await Child.start(data_dir, sender, box)
        ready = await child.wait_for("ready")
        assert not (box / left[0]).exists()  # swept as the node opened
        sender._hints[receiver_dev.endpoint_id] = EndpointAddr.from_ticket(str(ready["ticket"]))
        receipt = await asyncio.wait_for(sending, 240)
    finally:
        await child.kill()
    show("files", "killed receiver's temporary tree swept", leftover=left[0],
         read_after_restart=receipt.transferred)
    assert receipt.is_directory and receipt.name == "album"
    assert sorted(p.name for p in box.iterdir()) == ["album"]
    assert sorted(p.name for p in (box / "album").iterdir()) == ["1.bin", "2.bin"]
    assert json.loads((data_dir / "file-partials.json").read_text()) == []
