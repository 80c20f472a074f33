"""Files between paired devices (issue #34): real nodes on loopback, iroh-blobs underneath.

Content is compared by SHA-256 of the source and the stored file (independent of the BLAKE3
hash the transfer itself verifies). Refusals are checked on both sides: the fetcher gets
``TransferRefused`` and no file, and the provider's counters show it refused before serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers import open_local_node, show

from iroh_pair import FileOffer, FileProgress, Node, errors
from iroh_pair._files import (
    FILE_KIND,
    BlobStore,
    decode_reply,
    encode_offer,
    sanitize_file_name,
    unique_destination,
)
from iroh_pair.store import PairedDevice
from iroh_pair.transport import Endpoint, NetworkOptions

MiB = 1 << 20
CHILD = Path(__file__).resolve().parent / "files_child.py"


def sha256(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_random(p: Path, size: int) -> Path:
    with p.open("wb") as f:
        left = size
        while left:
            n = min(left, 4 * MiB)
            f.write(os.urandom(n))
            left -= n
    return p


@pytest.fixture
async def paired(tmp_path: Path) -> AsyncIterator[tuple[Node, Node, PairedDevice, PairedDevice]]:
    """(host, joiner, the host as the joiner sees it, the joiner as the host sees it)."""
    host = await open_local_node(tmp_path / "host", "host")
    joiner = await open_local_node(tmp_path / "joiner", "joiner")
    hosted = await host.host_pairing()
    host_dev = await joiner.join(hosted.code)
    joiner_dev = await hosted.wait(10)
    try:
        yield host, joiner, host_dev, joiner_dev
    finally:
        await joiner.close()
        await host.close()


def inbox(tmp_path: Path, name: str = "inbox") -> Path:
    d = tmp_path / name
    d.mkdir()
    return d


async def test_small_file_arrives_byte_identical(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path
) -> None:
    host, joiner, host_dev, _ = paired
    box = inbox(tmp_path)
    offers: list[FileOffer] = []

    def take(offer: FileOffer) -> Path:
        offers.append(offer)
        return box

    host.on_file_offer(take)
    src = write_random(tmp_path / "note.txt", 1000)
    receipt = await joiner.send_file(host_dev, src, timeout=30)
    dest = box / "note.txt"
    assert receipt.name == "note.txt" and receipt.size == 1000
    assert sha256(dest) == sha256(src)
    assert [(o.name, o.size, o.hash, o.sender.endpoint_id) for o in offers] == [
        ("note.txt", 1000, receipt.hash, joiner.id)
    ]
    assert sorted(p.name for p in box.iterdir()) == ["note.txt"]  # no temporary left
    # the offer ended with the transfer
    assert (await joiner.blob_store()).offered(host.id) == []


async def test_the_other_direction_and_an_empty_file(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path
) -> None:
    host, joiner, _, joiner_dev = paired
    box = inbox(tmp_path)
    joiner.on_file_offer(lambda offer: box)
    src = tmp_path / "empty.bin"
    src.write_bytes(b"")
    receipt = await host.send_file(joiner_dev, src, timeout=30)
    assert receipt.size == 0 and (box / "empty.bin").read_bytes() == b""
    assert receipt.hash == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


async def test_256_mib_file_arrives_byte_identical_with_progress(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path
) -> None:
    host, joiner, host_dev, _ = paired
    size = 256 * MiB
    box = inbox(tmp_path)
    got: list[FileProgress] = []
    sent: list[FileProgress] = []
    host.on_file_offer(lambda offer: box, progress=lambda offer, p: got.append(p))
    src = write_random(tmp_path / "big.bin", size)
    t0 = time.perf_counter()
    receipt = await joiner.send_file(host_dev, src, progress=sent.append, timeout=300)
    total = time.perf_counter() - t0
    assert receipt.size == size
    assert sha256(box / "big.bin") == sha256(src)
    # progress on both sides: increasing, ending at the size
    for seq in (got, sent):
        assert seq and seq[-1].done == size and seq[-1].total == size
        assert all(a.done <= b.done for a, b in zip(seq, seq[1:]))
    assert len(got) > 2 and len(sent) > 2
    fetch_rate = got[-1].rate / MiB
    show("files", "256 MiB send_file on loopback", seconds=round(total, 2),
         overall_mib_s=round(size / MiB / total, 1), receiver_fetch_mib_s=round(fetch_rate, 1))


async def test_a_name_of_255_bytes_arrives(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path
) -> None:
    """The longest name a file system allows (the temporary name must not be longer)."""
    host, joiner, host_dev, _ = paired
    box = inbox(tmp_path)
    host.on_file_offer(lambda offer: box)
    name = "é" * 125 + "x.txt"
    assert len(name.encode()) == 255
    src = write_random(tmp_path / name, 5000)
    receipt = await joiner.send_file(host_dev, src, timeout=30)
    assert receipt.name == name and sha256(box / name) == sha256(src)
    assert [p.name for p in box.iterdir()] == [name]


async def test_declined_offer_transfers_nothing(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path
) -> None:
    host, joiner, host_dev, _ = paired
    box = inbox(tmp_path)
    seen: list[str] = []

    async def decline(offer: FileOffer) -> None:
        seen.append(offer.name)
        return None

    host.on_file_offer(decline)
    src = write_random(tmp_path / "no.bin", 100_000)
    with pytest.raises(errors.OfferDeclined) as e:
        await joiner.send_file(host_dev, src, timeout=30)
    assert "declined by the receiver" in str(e.value)
    assert seen == ["no.bin"] and list(box.iterdir()) == []
    stats = (await joiner.blob_store()).stats()
    assert stats["requests_allowed"] == 0 and joiner.endpoint.stats()["blob_connections_accepted"] == 0
    assert (await joiner.blob_store()).offered(host.id) == []


async def test_no_handler_declines(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path
) -> None:
    _, joiner, host_dev, _ = paired
    src = write_random(tmp_path / "x.bin", 10)
    with pytest.raises(errors.OfferDeclined, match="takes no files"):
        await joiner.send_file(host_dev, src, timeout=30)


async def test_unpaired_endpoint_that_knows_the_hash_gets_nothing(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path
) -> None:
    host, joiner, host_dev, joiner_dev = paired
    # the host offers a file to the joiner (the offer is live)
    blobs = await host.blob_store()
    h, size = await blobs.add_path(write_random(tmp_path / "secret.bin", 300_000))
    blobs.grant(joiner_dev.endpoint_id, h)
    stranger_store = await BlobStore.open(tmp_path / "stranger-blobs")
    async with await Endpoint.bind(NetworkOptions.loopback()) as stranger:
        dest = tmp_path / "stolen.bin"
        with pytest.raises(errors.TransferRefused):
            await stranger_store.fetch(stranger, host.endpoint.addr(), h, dest, size=size)
        assert not dest.exists()
        assert not await stranger_store.has(h)
    await stranger_store.close()
    assert blobs.stats()["connections_refused"] == 1
    assert blobs.stats()["requests_allowed"] == 0
    # the paired device it was offered to does get it
    dest = tmp_path / "mine.bin"
    jb = await joiner.blob_store()
    got = await jb.fetch(joiner.endpoint, host_dev.endpoint_id, h, dest, size=size)
    assert (got.hash, got.size) == (h, size) and got.bytes_read >= size
    assert sha256(dest) == sha256(tmp_path / "secret.bin")
    blobs.ungrant(joiner_dev.endpoint_id, h)


async def test_paired_device_gets_only_what_was_offered_to_it(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path
) -> None:
    host, joiner, host_dev, joiner_dev = paired
    blobs = await host.blob_store()
    offered, size_a = await blobs.add_path(write_random(tmp_path / "a.bin", 50_000))
    other, size_b = await blobs.add_path(write_random(tmp_path / "b.bin", 50_000))
    blobs.grant(joiner_dev.endpoint_id, offered)
    jb = await joiner.blob_store()
    with pytest.raises(errors.TransferRefused):
        await jb.fetch(joiner.endpoint, host_dev.endpoint_id, other, tmp_path / "b.out", size=size_b)
    assert not (tmp_path / "b.out").exists() and not await jb.has(other)
    assert blobs.stats()["requests_refused"] == 1
    # once the offer is withdrawn, the offered one is refused too
    blobs.ungrant(joiner_dev.endpoint_id, offered)
    with pytest.raises(errors.TransferRefused):
        await jb.fetch(joiner.endpoint, host_dev.endpoint_id, offered, tmp_path / "a.out",
                       size=size_a)
    assert not (tmp_path / "a.out").exists() and not await jb.has(offered)
    assert blobs.stats()["requests_allowed"] == 0


async def test_traversal_names_from_the_peer_are_sanitised(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path
) -> None:
    """A raw offer (as a hostile sender would send it) names ../../escape.txt: the file lands
    in the receiver's directory as escape.txt, an existing one is not replaced."""
    host, joiner, host_dev, _ = paired
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "escape.txt").write_bytes(b"already here")
    names: list[str] = []

    def take(offer: FileOffer) -> Path:
        names.append(offer.name)
        return deep

    host.on_file_offer(take)
    jb = await joiner.blob_store()
    src = write_random(tmp_path / "payload.bin", 4096)
    h, size = await jb.add_path(src)
    for raw in ("../../escape.txt", "/etc/escape.txt", "..\\..\\escape.txt"):
        jb.grant(host.id, h)
        try:
            reply = decode_reply(
                await joiner.request(host_dev, encode_offer(raw, size, h), kind=FILE_KIND, timeout=30)
            )
        finally:
            jb.ungrant(host.id, h)
        assert reply["status"] == "stored", reply
    assert names == ["escape.txt"] * 3
    assert sorted(p.name for p in deep.iterdir()) == [
        "escape (2).txt", "escape (3).txt", "escape (4).txt", "escape.txt"]
    assert (deep / "escape.txt").read_bytes() == b"already here"
    assert sha256(deep / "escape (2).txt") == sha256(src)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "a" / "escape.txt").exists()


async def test_a_cut_fetch_resumes_from_the_verified_data(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path
) -> None:
    """A fetch cancelled after a quarter (its connection dropped) and started again reads only
    what the store does not have yet."""
    host, joiner, host_dev, joiner_dev = paired
    size = 256 * MiB
    src = write_random(tmp_path / "big.bin", size)
    blobs = await host.blob_store()
    h, _ = await blobs.add_path(src)
    blobs.grant(joiner_dev.endpoint_id, h)
    jb = await joiner.blob_store()
    quarter = asyncio.Event()

    def watch(p: FileProgress) -> None:
        if p.done >= size // 4:
            quarter.set()

    first = asyncio.ensure_future(
        jb.fetch(joiner.endpoint, host_dev.endpoint_id, h, tmp_path / "cut.bin", size=size,
                 progress=watch))
    await asyncio.wait_for(quarter.wait(), 120)
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    assert not (tmp_path / "cut.bin").exists() and not await jb.has(h)
    got = await jb.fetch(joiner.endpoint, host_dev.endpoint_id, h, tmp_path / "whole.bin",
                         size=size)
    assert sha256(tmp_path / "whole.bin") == sha256(src)
    show("files", "resumed fetch after a cancel at >= 1/4", size=size, read_again=got.bytes_read)
    assert got.bytes_read <= size * 0.8
    blobs.ungrant(joiner_dev.endpoint_id, h)


async def run_child(
    args: list[str], *, kill_at: int | None = None, kill_when: asyncio.Event | None = None
) -> tuple[list[dict[str, object]], int | None]:
    """Runs files_child.py with ``args``: its JSON lines and exit code. SIGKILL once it reports
    ``kill_at`` bytes done, or once ``kill_when`` is set."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD), *args, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    out = proc.stdout
    lines: list[dict[str, object]] = []

    async def read() -> None:
        while raw := await out.readline():
            ev = json.loads(raw)
            lines.append(ev)
            done = ev.get("done")
            if kill_at is not None and isinstance(done, int) and done >= kill_at:
                return

    try:
        async with asyncio.timeout(180):
            reading = asyncio.ensure_future(read())
            waits: set[asyncio.Future[Any]] = {reading}
            if kill_when is not None:
                waits.add(asyncio.ensure_future(kill_when.wait()))
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if kill_at is not None or (kill_when is not None and kill_when.is_set()):
                proc.send_signal(signal.SIGKILL)
            for w in waits:
                if not w.done():
                    w.cancel()
            return lines, await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_killed_receiver_resumes_after_restart(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path
) -> None:
    """The receiver's process is killed (SIGKILL) at about half of a 256 MiB fetch and started
    again: it completes, and the bytes on the wire after the restart (the endpoints' socket
    counters: what the restarted receiver received, what the sender sent meanwhile) are well
    under the full size; the payload it read (``bytes_read``) too."""
    host, joiner, host_dev, joiner_dev = paired
    size = 256 * MiB
    src = write_random(tmp_path / "big.bin", size)
    blobs = await host.blob_store()
    h, _ = await blobs.add_path(src)
    blobs.grant(joiner_dev.endpoint_id, h)
    await joiner.close()  # its data directory goes to the child process
    ticket = host.endpoint.addr().to_ticket()
    dest = tmp_path / "received.bin"
    args = ["fetch", str(joiner.data_dir), ticket, h, str(size), str(dest)]
    sent0 = host.endpoint.stats()["wire_bytes_sent"]
    lines, code = await run_child(args, kill_at=size // 2)
    assert code == -signal.SIGKILL, lines
    assert not dest.exists()
    sent1 = host.endpoint.stats()["wire_bytes_sent"]
    assert sent1 - sent0 >= size // 2  # the counter sees the first half go out
    lines, code = await run_child(args)
    assert code == 0, lines
    done = lines[-1]
    assert done["event"] == "done", lines
    assert sha256(dest) == sha256(src)
    read, recv = done["bytes_read"], done["wire_recv"]
    assert isinstance(read, int) and isinstance(recv, int)
    sent = host.endpoint.stats()["wire_bytes_sent"] - sent1
    show("files", "receiver killed at 1/2 and restarted", size=size, read_after_restart=read,
         wire_recv_after_restart=recv, wire_sent_after_restart=sent)
    assert read <= recv <= size * 0.6  # what was read came over the wire, well under the size
    assert read <= sent <= size * 0.6
    blobs.ungrant(joiner_dev.endpoint_id, h)


async def test_a_killed_sender_resumes_when_it_offers_again(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path
) -> None:
    """The sending process is killed (SIGKILL) at about half of a 256 MiB transfer (as the
    receiver sees it); started again, it offers the same file, and the receiver fetches only
    what it had not verified yet: the bytes on the wire after the restart (the receiver's
    socket counters, and the restarted sender's) are well under the full size.

    Known limit (docs/FILES.md): the restarted sender is started only once the receiver has
    noticed the death (its connections to the old process timed out, ~35 s). Offered again
    before that, the receiver's dial back to the same EndpointId times out in iroh even at the
    new process's address (seen with cancelling the old fetch and closing the old connections
    too), so that offer fails."""
    host, joiner, _, _ = paired
    size = 256 * MiB
    src = write_random(tmp_path / "big.bin", size)
    box = inbox(tmp_path)
    half = asyncio.Event()

    def watch(offer: FileOffer, p: FileProgress) -> None:
        if p.done >= size // 2:
            half.set()

    joiner.on_file_offer(lambda offer: box, progress=watch)
    await host.close()  # its data directory goes to the child process
    args = ["send", str(host.data_dir), joiner.endpoint.addr().to_ticket(), str(src)]
    recv0 = joiner.endpoint.stats()["wire_bytes_recv"]
    lines, code = await run_child(args, kill_when=half)
    assert code == -signal.SIGKILL, lines
    assert list(box.iterdir()) == []
    assert await joiner.wait_disconnected(90)  # see the known limit above
    recv1 = joiner.endpoint.stats()["wire_bytes_recv"]
    assert recv1 - recv0 >= size // 2  # the counter sees the first half come in
    lines, code = await run_child(args)
    assert code == 0, lines
    done = lines[-1]
    assert done["event"] == "done" and done["name"] == "big.bin", lines
    assert sha256(box / "big.bin") == sha256(src)
    read, sent = done["bytes_read"], done["wire_sent"]
    assert isinstance(read, int) and isinstance(sent, int)
    recv = joiner.endpoint.stats()["wire_bytes_recv"] - recv1
    show("files", "sender killed at 1/2 and restarted", size=size, read_after_restart=read,
         wire_recv_after_restart=recv, wire_sent_after_restart=sent)
    assert read <= recv <= size * 0.6  # what was read came over the wire, well under the size
    assert read <= sent <= size * 0.6


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("../../etc/passwd", "passwd"),
        ("/abs/path/x.txt", "x.txt"),
        ("C:\\Windows\\evil.exe", "evil.exe"),
        ("..", "file"),
        (".", "file"),
        ("", "file"),
        (".hidden", "hidden"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("com1.tar.gz", "_com1.tar.gz"),
        ("a\x00b\x1bc\u202ed.txt", "abcd.txt"),
        ("what?.txt", "what_.txt"),
        ("trailing. . ", "trailing"),
        ("ok name (1).pdf", "ok name (1).pdf"),
        # Unicode spaces are spaces: normalised, and stripped at the ends like ASCII ones
        ("\u00a0report.pdf\u00a0", "report.pdf"),
        ("\u2003\u3000 .\u00a0", "file"),
        ("a\u2003b.txt", "a b.txt"),
        ("trailing.\u00a0.\u202f", "trailing"),
        # reserved as Windows reads them: the part before the first dot, trailing spaces off
        ("CON .txt", "_CON .txt"),
        ("con.", "_con"),
        ("NUL  ", "_NUL"),
        ("Aux\u00a0.log", "_Aux .log"),
        ("lpt1 . tar", "_lpt1 . tar"),
        ("COM\u00b9.txt", "_COM\u00b9.txt"),
    ],
)
def test_sanitize_file_name(raw: str, clean: str) -> None:
    assert sanitize_file_name(raw) == clean


def test_sanitize_keeps_names_within_255_bytes() -> None:
    long = "é" * 300 + ".txt"
    s = sanitize_file_name(long)
    assert len(s.encode()) <= 255 and s.endswith(".txt")


def test_unique_destination_never_picks_an_existing_name(tmp_path: Path) -> None:
    assert unique_destination(tmp_path, "a.txt") == tmp_path / "a.txt"
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "a (2).txt").write_text("x")
    assert unique_destination(tmp_path, "a.txt") == tmp_path / "a (3).txt"
    (tmp_path / "noext").write_text("x")
    assert unique_destination(tmp_path, "noext") == tmp_path / "noext (2)"
    # a name at the 255-byte limit with a multibyte extension: the new name fits in 255 bytes
    long = "x" * 240 + ".ééééééé"
    assert len(long.encode()) == 255
    (tmp_path / long).write_text("x")
    other = unique_destination(tmp_path, long)
    assert other.name.endswith(" (2).ééééééé") and len(other.name.encode()) <= 255


async def test_file_kind_is_reserved(paired: tuple[Node, Node, PairedDevice, PairedDevice]) -> None:
    host, *_ = paired
    with pytest.raises(ValueError, match="reserved"):
        host.on_message(lambda d, b: None, kind=FILE_KIND)
    await asyncio.sleep(0)
