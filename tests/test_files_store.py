"""The blob stores keep only what is in use (issue #34), with real nodes on loopback.

A sent file is hashed where it is (the sender's store references it: no copy), a received
file's copy in the receiver's store is collected once the file is out (it costs its size
once, not twice), the verified data of a fetch that was cut is kept for the resume, and the
same content sent again from another path, after the first file changed, still arrives.

The stores collect garbage every ``iroh_pair._files.GC_INTERVAL`` seconds; the tests make it
short.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest
from helpers import show
from test_files import inbox, paired, sha256, write_random
from test_files_faults import restore, tamper

import iroh_pair._files
from iroh_pair import FileChanged, FileTransferError, Node
from iroh_pair._files import BlobStore
from iroh_pair.store import PairedDevice

__all__ = ["paired"]  # the fixture, imported

MiB = 1 << 20
GC = 0.2


@pytest.fixture(autouse=True)
def quick_gc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iroh_pair._files, "GC_INTERVAL", GC)


def stored_bytes(store: Path) -> int:
    """Bytes of the files a store keeps beside its database (data, hash trees, bitfields)."""
    return sum(p.stat().st_size for p in store.rglob("*") if p.is_file() and p.name != "blobs.db")


async def status_becomes(blobs: BlobStore, h: str, want: str, timeout: float = 15.0) -> str:
    """Polls the store's status of ``h`` until it is ``want`` or ``timeout`` passed; returns the
    last status."""
    end = time.monotonic() + timeout
    while True:
        got = await blobs.status(h)
        if got == want or time.monotonic() > end:
            return got
        await asyncio.sleep(0.05)


async def test_a_sent_file_is_not_copied_and_a_received_one_is_stored_once(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path
) -> None:
    """24 MiB sent: the sender's store holds its hash tree only (the file is referenced where it
    is), the receiver's store drops its copy once the file is out, and neither touches the
    files themselves: the sent file is still there, unchanged, and the received one is
    byte-identical. (With stores that copy on import and keep every blob, the sender's store
    held the whole file and the receiver's stayed "complete".)"""
    host, joiner, _, joiner_dev = paired
    size = 24 * MiB
    src = write_random(tmp_path / "s.bin", size)
    digest = sha256(src)
    box = inbox(tmp_path)
    joiner.on_file_offer(lambda offer: box)
    receipt = await host.send_file(joiner_dev, src, timeout=120)
    sender_kept = stored_bytes(host.data_dir / "blobs")
    hb, jb = await host.blob_store(), await joiner.blob_store()
    receiver = await status_becomes(jb, receipt.hash, "absent")
    receiver_kept = stored_bytes(joiner.data_dir / "blobs")
    sender = await status_becomes(hb, receipt.hash, "absent")
    show("files", "store sizes after a send", size=size, sender_store=sender_kept,
         receiver_store_after_gc=receiver_kept, sender_status=sender, receiver_status=receiver)
    assert sender_kept < size // 8, "the sender's store copied the file"
    assert receiver == "absent" and receiver_kept < size // 8, "the receiver kept a copy"
    assert sender == "absent", "the sender's store still lists a file no offer holds"
    assert sha256(box / "s.bin") == digest
    assert src.exists() and sha256(src) == digest, "garbage collection touched the sent file"


async def test_the_same_content_from_another_path_after_the_first_changed(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path
) -> None:
    """``a.bin`` is sent, copied to ``b.bin``, then overwritten with other bytes; ``b.bin`` (the
    first content) is sent next and arrives: the store references files where they are, and
    the content is read from a path that still holds it. The sender's store has forgotten
    ``a.bin`` before the second send (the first offer ended). (Measured: this also passes with
    the collection switched off, so it guards the referencing, not the collection.)"""
    host, joiner, _, joiner_dev = paired
    size = 4 * MiB
    a = write_random(tmp_path / "a.bin", size)
    digest = sha256(a)
    box = inbox(tmp_path)
    joiner.on_file_offer(lambda offer: box)
    first = await host.send_file(joiner_dev, a, timeout=60)
    b = tmp_path / "b.bin"
    shutil.copyfile(a, b)
    write_random(a, size)
    hb = await host.blob_store()
    assert await status_becomes(hb, first.hash, "absent") == "absent"
    second = await host.send_file(joiner_dev, b, timeout=60)
    assert second.hash == first.hash and second.name == "b.bin"
    assert sha256(box / "b.bin") == digest == sha256(box / "a.bin")


async def test_the_data_of_a_cut_fetch_outlives_garbage_collection(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path
) -> None:
    """A fetch stopped halfway (the sender's file changed there: its validated read stops)
    leaves verified data in the receiver's store; many collections later it is still there
    ("partial"), and once the sender's file is repaired the fetch reads only the rest."""
    host, joiner, host_dev, joiner_dev = paired
    size = 8 * MiB
    src = write_random(tmp_path / "c.bin", size)
    hb, jb = await host.blob_store(), await joiner.blob_store()
    h, _ = await hb.add_path(src)
    middle = size // 2 + 1000
    orig = tamper(src, middle)
    hb.grant(joiner_dev.endpoint_id, h)
    dest = tmp_path / "c.out"
    with pytest.raises(FileTransferError):
        await jb.fetch(joiner.endpoint, host_dev.endpoint_id, h, dest, size=size)
    await asyncio.sleep(GC * 15)  # many collections
    assert await jb.status(h) == "partial"
    restore(src, middle, orig)
    got = await jb.fetch(joiner.endpoint, host_dev.endpoint_id, h, dest, size=size)
    show("files", "resumed after garbage collections", size=size, read_after=got.bytes_read)
    assert sha256(dest) == sha256(src)
    assert got.bytes_read <= size * 0.75
    hb.ungrant(joiner_dev.endpoint_id, h)
    assert await status_becomes(jb, h, "absent") == "absent"


async def test_a_file_changed_after_its_offer_is_file_changed_for_the_sender(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path
) -> None:
    """The sender's file is overwritten in the middle after it was offered (the receiver's
    handler does it, before it accepts): the sender's store reads the file where it is, its
    check against the hash stops there, the receiver answers "failed", and ``send_file``
    raises :class:`FileChanged` naming the file (not a bare FileTransferError: the sender can
    act on it). Nothing stays at the receiver."""
    host, joiner, _, joiner_dev = paired
    size = 8 * MiB
    src = write_random(tmp_path / "d.bin", size)
    box = inbox(tmp_path)

    def accept_after_a_change(offer: object) -> Path:
        tamper(src, size // 2)
        return box

    joiner.on_file_offer(accept_after_a_change)
    with pytest.raises(FileChanged) as e:
        await host.send_file(joiner_dev, src, timeout=60)
    show("files", "changed after the offer", error=str(e.value)[:160])
    assert e.value.path == str(src)
    assert list(box.iterdir()) == []


async def test_content_the_receivers_store_only_references_is_checked_before_it_is_stored(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path
) -> None:
    """The receiver's store is also its sending side's: it has just hashed a file of its own
    (``mine.bin``, as ``send_file`` does) that holds the very content the sender now offers,
    and that file was changed since. The fetch reads nothing (the store has the hash), so the
    export would copy the changed file: it is checked against the hash first, the offer fails,
    and nothing is stored under the name. (Without the check the receiver stored the changed
    bytes under the offered name, reporting them as verified.)"""
    host, joiner, _, joiner_dev = paired
    size = 4 * MiB
    src = write_random(tmp_path / "offered.bin", size)
    mine = tmp_path / "mine.bin"
    shutil.copyfile(src, mine)
    jb = await joiner.blob_store()
    h, _ = await jb.add_path(mine)
    tamper(mine, size // 2)
    box = inbox(tmp_path)
    joiner.on_file_offer(lambda offer: box)
    with pytest.raises(FileTransferError, match="changed: not exported"):
        await host.send_file(joiner_dev, src, timeout=60)
    assert list(box.iterdir()) == []
    assert sha256(src) != sha256(mine)
