"""Directories, progress as an async iterator, and files that change while they are sent
(issue #34): real nodes on loopback.

A directory arrives when the set of its paths (files and empty directories) and the SHA-256
of every file are the same on both sides; nothing may appear outside the directory the
receiver's handler chose, whatever paths a hostile offer names.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest
from helpers import show
from test_files import MiB, inbox, paired, sha256, write_random  # noqa: F401 (fixture)

from iroh_pair import FileOffer, FileProgress, FileTransfer, Node, errors
from iroh_pair._files import (
    FILE_KIND,
    MAX_DIR_ENTRIES,
    OfferEntry,
    decode_reply,
    encode_dir_offer,
    parse_offer,
    sanitize_entries,
    sanitize_relative_path,
    walk_tree,
)
from iroh_pair.store import PairedDevice

Paired = tuple[Node, Node, PairedDevice, PairedDevice]


def tree(root: Path) -> dict[str, str | None]:
    """Every path under ``root`` (relative, ``/``): SHA-256 for files, None for directories."""
    out: dict[str, str | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[Path(dirpath, d).relative_to(root).as_posix()] = None
        for f in filenames:
            p = Path(dirpath, f)
            out[p.relative_to(root).as_posix()] = sha256(p)
    return out


def make_tree(root: Path) -> Path:
    (root / "docs" / "deep" / "er").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "a.txt").write_bytes(b"hello")
    (root / "empty.bin").write_bytes(b"")
    write_random(root / "docs" / "big1.bin", 3 * MiB)
    write_random(root / "docs" / "deep" / "er" / "big2.bin", 2 * MiB + 12345)
    (root / "docs" / "deep" / "note.md").write_text("# note\n")
    (root / "docs" / "same-as-a.txt").write_bytes(b"hello")  # the same content twice
    return root


async def test_a_directory_tree_arrives_byte_identical(paired: Paired, tmp_path: Path) -> None:
    host, joiner, host_dev, _ = paired
    box = inbox(tmp_path)
    src = make_tree(tmp_path / "project")
    os.symlink(src / "a.txt", src / "link-to-a")  # skipped, never followed
    os.symlink(tmp_path, src / "docs" / "link-out")
    offers: list[FileOffer] = []
    got: list[FileProgress] = []

    def take(offer: FileOffer) -> Path:
        offers.append(offer)
        return box

    host.on_file_offer(take, progress=lambda o, p: got.append(p))
    sent: list[FileProgress] = []
    dialed = host.endpoint.stats()["connections_dialed"]
    receipt = await joiner.send_file(host_dev, src, progress=sent.append, timeout=120)
    # rule 1: the receiver fetched the 6 files over one blobs connection, dialed once
    assert host.endpoint.stats()["connections_dialed"] - dialed == 1
    expected = {k: v for k, v in tree(src).items() if "link" not in k}
    assert tree(box / "project") == expected
    assert "empty-dir" in expected and expected["empty.bin"] == sha256(src / "empty.bin")
    total = sum((src / k).stat().st_size for k, v in expected.items() if v is not None)
    assert (receipt.is_directory, receipt.name, receipt.size, receipt.files) == (
        True, "project", total, 6)
    assert receipt.transferred >= 5 * MiB
    [offer] = offers
    assert offer.is_directory and offer.files == 6 and offer.size == total and offer.hash == ""
    assert set(offer.paths) == {k for k in expected if k not in ("docs", "docs/deep",
                                                                 "docs/deep/er")}
    assert sorted(p.name for p in box.iterdir()) == ["project"]  # no temporary left
    for seq in (got, sent):  # aggregated over the tree, ending at the total
        assert seq and seq[-1].done == total and all(p.total == total for p in seq)
        assert all(a.done <= b.done for a, b in zip(seq, seq[1:]))
    assert (await joiner.blob_store()).offered(host.id) == []
    # the same directory again: a new name beside it, nothing fetched again
    again = await joiner.send_file(host_dev, src, timeout=120)
    assert again.name == "project (2)" and again.transferred == 0
    assert tree(box / "project (2)") == expected


async def test_an_empty_directory_arrives(paired: Paired, tmp_path: Path) -> None:
    host, joiner, host_dev, _ = paired
    box = inbox(tmp_path)
    host.on_file_offer(lambda offer: box)
    (tmp_path / "nothing").mkdir()
    receipt = await joiner.send_file(host_dev, tmp_path / "nothing", timeout=30)
    assert receipt.is_directory and receipt.files == 0 and receipt.size == 0
    assert (box / "nothing").is_dir() and list((box / "nothing").iterdir()) == []


async def test_a_hostile_directory_offer_stays_inside(paired: Paired, tmp_path: Path) -> None:
    """A raw directory offer (as a hostile sender would send it) with traversal paths: every
    file lands inside the directory the receiver chose."""
    host, joiner, host_dev, _ = paired
    box = tmp_path / "in" / "box"
    box.mkdir(parents=True)
    host.on_file_offer(lambda offer: box)
    jb = await joiner.blob_store()
    payload = write_random(tmp_path / "payload.bin", 4096)
    h, size = await jb.add_path(payload)
    raw = ["../x1", "/etc/x2", "a/../../x3", "a\\..\\x4", "../../in/x5", "./.././/x6"]
    before = {p for p in tmp_path.rglob("*")}
    jb.grant(host.id, h)
    try:
        reply = decode_reply(await joiner.request(
            host_dev, encode_dir_offer("../../evil", [OfferEntry(r, size, h) for r in raw]),
            kind=FILE_KIND, timeout=30))
    finally:
        jb.ungrant(host.id, h)
    assert reply["status"] == "stored", reply
    assert reply["name"] == "evil"
    assert tree(box / "evil") == {
        "x1": sha256(payload), "etc": None, "etc/x2": sha256(payload), "a": None,
        "a/x3": sha256(payload), "a/x4": sha256(payload), "in": None,
        "in/x5": sha256(payload), "x6": sha256(payload)}
    after = {p for p in tmp_path.rglob("*")}
    stores = (host.data_dir, joiner.data_dir)  # their blob stores change, nothing else may
    new = {p for p in after - before if not any(d in p.parents for d in stores)}
    assert {p for p in new if box not in p.parents} == set()


async def test_a_directory_offer_with_clashing_paths_is_refused(
    paired: Paired, tmp_path: Path
) -> None:
    """Two entries that sanitise to the same path (or a file that is another's directory):
    the offer fails, nothing is fetched, no directory appears."""
    host, joiner, host_dev, _ = paired
    box = inbox(tmp_path)
    host.on_file_offer(lambda offer: box)
    jb = await joiner.blob_store()
    h, size = await jb.add_path(write_random(tmp_path / "p.bin", 100))
    for paths in (["../x", "/x"], ["a", "a/b"], ["a/b", "a"]):
        jb.grant(host.id, h)
        try:
            reply = decode_reply(await joiner.request(
                host_dev, encode_dir_offer("d", [OfferEntry(p, size, h) for p in paths]),
                kind=FILE_KIND, timeout=30))
        finally:
            jb.ungrant(host.id, h)
        assert reply["status"] == "failed", (paths, reply)
    assert list(box.iterdir()) == []
    assert jb.stats()["requests_allowed"] == 0


async def test_a_failed_directory_leaves_nothing(paired: Paired, tmp_path: Path) -> None:
    """One file of the tree cannot be fetched (not offered): the offer fails, the temporary
    tree is removed and no directory appears at the destination name."""
    host, joiner, host_dev, _ = paired
    box = inbox(tmp_path)
    host.on_file_offer(lambda offer: box)
    jb = await joiner.blob_store()
    ok, n1 = await jb.add_path(write_random(tmp_path / "ok.bin", 1000))
    secret, n2 = await jb.add_path(write_random(tmp_path / "secret.bin", 1000))
    jb.grant(host.id, ok)  # `secret` is listed but not offered
    try:
        reply = decode_reply(await joiner.request(
            host_dev, encode_dir_offer("d", [OfferEntry("a/ok.bin", n1, ok),
                                             OfferEntry("b/secret.bin", n2, secret)]),
            kind=FILE_KIND, timeout=30))
    finally:
        jb.ungrant(host.id, ok)
    assert reply["status"] == "failed", reply
    assert list(box.iterdir()) == []


async def test_a_declined_directory_transfers_nothing(paired: Paired, tmp_path: Path) -> None:
    host, joiner, host_dev, _ = paired
    box = inbox(tmp_path)
    seen: list[FileOffer] = []

    def decline(offer: FileOffer) -> None:
        seen.append(offer)

    host.on_file_offer(decline)
    src = make_tree(tmp_path / "project")
    with pytest.raises(errors.OfferDeclined):
        await joiner.send_file(host_dev, src, timeout=60)
    assert [o.name for o in seen] == ["project"] and seen[0].is_directory
    assert list(box.iterdir()) == []
    assert (await joiner.blob_store()).stats()["requests_allowed"] == 0
    assert joiner.endpoint.stats()["blob_connections_accepted"] == 0
    assert (await joiner.blob_store()).offered(host.id) == []


async def test_a_directory_over_the_entry_limit_is_refused_at_the_sender(
    paired: Paired, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, joiner, host_dev, _ = paired
    host.on_file_offer(lambda offer: tmp_path)
    import iroh_pair._files as files

    monkeypatch.setattr(files, "MAX_DIR_ENTRIES", 5)
    src = tmp_path / "many"
    src.mkdir()
    for i in range(6):
        (src / f"{i}.txt").write_text(str(i))
    with pytest.raises(errors.OfferTooLarge, match="more than 5 entries"):
        await joiner.send_file(host_dev, src, timeout=30)
    assert not (tmp_path / "many (2)").exists()
    with pytest.raises(errors.OfferTooLarge):
        encode_dir_offer("x", [OfferEntry(str(i), 0, "0" * 64) for i in range(6)])


def test_the_offer_message_is_bounded() -> None:
    """The real limits: entry count and bytes (under the 16 MiB messaging frame)."""
    with pytest.raises(errors.OfferTooLarge, match="at most 10000"):
        encode_dir_offer("x", [OfferEntry(str(i)) for i in range(MAX_DIR_ENTRIES + 1)])
    long = "d/" * 2000 + "f"
    with pytest.raises(errors.OfferTooLarge, match="bytes"):
        encode_dir_offer("x", [OfferEntry(f"{long}{i}", 1, "0" * 64) for i in range(2000)])
    with pytest.raises(ValueError):
        parse_offer(b'{"v":1,"name":"x","size":1,"dir":[{"path":"a","size":2,"hash":"'
                    + b"0" * 64 + b'"}]}')  # size is not the sum


@pytest.mark.parametrize(
    ("raw", "clean"),
    [("../x", "x"), ("/etc/x", "etc/x"), ("a/../../x", "a/x"), ("a\\..\\x", "a/x"),
     ("a/./b//c", "a/b/c"), ("CON/x", "_CON/x"), (".git/config", "git/config")],
)
def test_sanitize_relative_path(raw: str, clean: str) -> None:
    assert sanitize_relative_path(raw) == clean


def test_sanitize_entries_refuses_clashes_and_empty_paths() -> None:
    files, dirs = sanitize_entries((OfferEntry("a/b", 1, "0" * 64), OfferEntry("e")))
    assert [f.path for f in files] == ["a/b"] and dirs == ["e"]
    for bad in ((OfferEntry(".."),), (OfferEntry("x"), OfferEntry("./x")),
                # on a case-insensitive file system these would be one file: refused up front
                (OfferEntry("A.txt", 1, "0" * 64), OfferEntry("a.txt", 1, "1" * 64))):
        with pytest.raises(ValueError):
            sanitize_entries(bad)


def test_walk_tree_skips_links_and_keeps_empty_dirs(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "f.txt").write_text("x")
    os.symlink(tmp_path / "d" / "f.txt", tmp_path / "link")
    os.symlink(tmp_path / "d", tmp_path / "dirlink")
    os.mkfifo(tmp_path / "fifo")
    files, empty = walk_tree(tmp_path)
    assert [r for r, _ in files] == ["d/f.txt"] and empty == ["d/e"]


async def test_progress_as_an_async_iterator(paired: Paired, tmp_path: Path) -> None:
    """start_file's FileTransfer: progress items while it runs, ending with the total; then
    awaiting it gives the receipt (the docstring's example, run)."""
    host, joiner, host_dev, _ = paired
    box = inbox(tmp_path)
    host.on_file_offer(lambda offer: box)
    src = write_random(tmp_path / "holiday.mp4", 64 * MiB)
    transfer = joiner.start_file(host_dev, src, timeout=120)
    assert isinstance(transfer, FileTransfer)
    seen: list[FileProgress] = []
    async for p in transfer:
        seen.append(p)
        print(f"{100 * p.done // max(p.total, 1)}%")
    receipt = await transfer
    assert transfer.done() and receipt.size == 64 * MiB
    assert sha256(box / "holiday.mp4") == sha256(src)
    assert len(seen) >= 2 and seen[-1].done == seen[-1].total == 64 * MiB
    assert all(a.done <= b.done for a, b in zip(seen, seen[1:]))
    show("files", "start_file progress items for 64 MiB", items=len(seen))


async def test_an_async_iterator_ends_and_await_raises_on_failure(
    paired: Paired, tmp_path: Path
) -> None:
    _, joiner, host_dev, _ = paired  # the host has no handler: declined
    transfer = joiner.start_file(host_dev, write_random(tmp_path / "x.bin", 10), timeout=30)
    items = [p async for p in transfer]
    assert all(p.done == 0 for p in items)
    with pytest.raises(errors.OfferDeclined):
        await transfer
    with pytest.raises(errors.UnknownDevice):
        joiner.start_file("nobody", tmp_path / "x.bin")


async def test_a_file_that_grows_while_it_is_imported_is_not_offered(
    paired: Paired, tmp_path: Path
) -> None:
    """A writer appends to the file during the import: FileChanged, and no offer is made."""
    host, joiner, host_dev, _ = paired
    offers: list[FileOffer] = []

    def take(offer: FileOffer) -> Path:
        offers.append(offer)
        return tmp_path

    host.on_file_offer(take)
    src = write_random(tmp_path / "growing.log", 128 * MiB)
    stop = threading.Event()
    started = threading.Event()

    def append() -> None:
        with src.open("ab") as f:
            while not stop.is_set():
                f.write(b"x" * 4096)
                f.flush()
                started.set()
                stop.wait(0.005)

    writer = threading.Thread(target=append)
    writer.start()
    try:
        started.wait(5)
        with pytest.raises(errors.FileChanged) as e:
            await joiner.send_file(host_dev, src, timeout=60)
    finally:
        stop.set()
        writer.join()
    assert e.value.path == str(src)
    assert offers == [] and (await joiner.blob_store()).offered(host.id) == []
    await asyncio.sleep(0)
