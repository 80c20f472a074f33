"""docs/PROTOCOL.md §15 against a lying sender: raw offers, as a hostile paired device would
send them, whose size or hash does not match what it serves. Real nodes on loopback.

The receiver must store nothing under the destination name, and never more than the offered
size (§15.3). The honest offer of the same content, sent afterwards, still arrives: the checks
refuse the lie, not the content.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_files import paired, sha256, write_random  # noqa: F401  (the fixture)

from iroh_pair import FileOffer, FileTransferError, Node
from iroh_pair._files import FILE_KIND, decode_reply, encode_offer
from iroh_pair.store import PairedDevice

KiB = 1 << 10


async def _offer_raw(
    sender: Node, to: PairedDevice, receiver_id: object, name: str, size: int, h: str
) -> dict[str, object]:
    """Grants ``h`` and sends a raw offer claiming ``size``: the receiver's reply."""
    blobs = await sender.blob_store()
    blobs.grant(receiver_id, h)  # type: ignore[arg-type]
    try:
        return decode_reply(
            await sender.request(to, encode_offer(name, size, h), kind=FILE_KIND, timeout=60)
        )
    finally:
        blobs.ungrant(receiver_id, h)  # type: ignore[arg-type]


async def test_an_offer_smaller_than_its_content_is_refused(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path  # noqa: F811
) -> None:
    """The sender claims half the real size (a receiver that trusts it would write more than it
    accepted): the fetch stops, the reply is "failed", no file and no complete blob."""
    host, joiner, host_dev, _ = paired
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    host.on_file_offer(lambda offer: inbox)
    src = write_random(tmp_path / "big.bin", 2048 * KiB)
    jb = await joiner.blob_store()
    h, size = await jb.add_path(src)

    reply = await _offer_raw(joiner, host_dev, host.id, "big.bin", size // 2, h)
    assert reply["status"] == "failed", reply
    assert sorted(inbox.iterdir()) == []  # nothing, not even a temporary name
    hb = await host.blob_store()
    assert not await hb.has(h)

    # the truth about the same content is accepted (and the partial data is not in the way)
    reply = await _offer_raw(joiner, host_dev, host.id, "big.bin", size, h)
    assert reply["status"] == "stored", reply
    assert sha256(inbox / "big.bin") == sha256(src)


async def test_an_offer_of_content_the_sender_does_not_serve_fails_cleanly(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path  # noqa: F811
) -> None:
    """A hash the sender's store does not hold (granted, so the provider admits the request):
    the receiver gets no data, replies "failed", and stores nothing."""
    host, joiner, host_dev, _ = paired
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    seen: list[FileOffer] = []

    def take(offer: FileOffer) -> Path:
        seen.append(offer)
        return inbox

    host.on_file_offer(take)
    missing = "ab" * 32
    reply = await _offer_raw(joiner, host_dev, host.id, "ghost.bin", 100 * KiB, missing)
    assert reply["status"] == "failed", reply
    assert [o.hash for o in seen] == [missing]
    assert sorted(inbox.iterdir()) == []
    assert not await (await host.blob_store()).has(missing)


async def test_an_offer_larger_than_its_content_is_refused(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path  # noqa: F811
) -> None:
    """The sender claims more than the content holds: the verified content is shorter than
    offered, so nothing is stored under the name and the reply is "failed"."""
    host, joiner, host_dev, _ = paired
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    host.on_file_offer(lambda offer: inbox)
    src = write_random(tmp_path / "small.bin", 64 * KiB)
    jb = await joiner.blob_store()
    h, size = await jb.add_path(src)
    reply = await _offer_raw(joiner, host_dev, host.id, "small.bin", size * 4, h)
    assert reply["status"] == "failed", reply
    assert sorted(inbox.iterdir()) == []


async def test_a_fetch_of_content_shorter_than_offered_never_writes_the_name(
    paired: tuple[Node, Node, PairedDevice, PairedDevice], tmp_path: Path  # noqa: F811
) -> None:
    """One level down from the offer: the native fetch is given the offered size, the verified
    content is shorter, so it fails before the export and the destination name is never
    created (not even for a moment before Python would remove it)."""
    host, joiner, host_dev, joiner_dev = paired
    src = write_random(tmp_path / "short.bin", 64 * KiB)
    hb, jb = await host.blob_store(), await joiner.blob_store()
    h, size = await hb.add_path(src)
    hb.grant(joiner_dev.endpoint_id, h)
    dest = tmp_path / "short.out"
    with pytest.raises(FileTransferError, match="offered"):
        await jb.fetch(joiner.endpoint, host_dev.endpoint_id, h, dest, size=size * 4)
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".iroh-pair-")] == []
    hb.ungrant(joiner_dev.endpoint_id, h)
