"""docs/PROTOCOL.md §15.2 against a raw iroh-blobs client: the sender's blob provider admits a
connection only from an EndpointId with a live offer, serves a get request only for a hash
offered to that EndpointId and only as one raw blob, and refuses get-many, push and observe.

The attacker is ``iroh-pair-blobs-bench attack`` (rust/blobs-bench/src/attack.rs): plain
iroh-blobs 0.104, dialing the provider of a real package node on loopback as a paired device's
own key (read from its ``secret.key``) or as a stranger's fresh key, and asking for one kind of
request. It reports ``refused`` only when the provider closed the connection or reset the
request's stream with iroh-blobs' permission code and no content arrived. A plain raw get of an
offered hash by the same attacker is served (the control: the attacker works, so a refusal is
the provider's doing). The provider's counters show where each refusal happened.

The offered blob is itself a valid hash sequence (the 32-byte hash of a second blob held in the
same store, never offered): a provider that walked children on request would hand that second
blob out. Every test here fails against a provider weakened in the check it attacks (the run is
recorded in the commit that added this file).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT, open_local_node, skip_or_fail
from test_files import write_random

from iroh_pair import Node
from iroh_pair._files import BlobStore
from iroh_pair.transport import EndpointId

KiB = 1 << 10
BIN = "iroh-pair-blobs-bench"

#: every request a paired device must not get through (the control, ``get-blob``, aside)
REFUSED_MODES = ("get-hashseq", "get-ranges-children", "get-many", "push", "observe", "get-other")


def attack_binary() -> Path:
    """``$IROH_PAIR_BLOBS_BENCH``, else target/release (``$CARGO_TARGET_DIR``, the repository's),
    else beside ``$IROH_PAIR_NODE`` (as bench/files.py finds it). Missing: skipped, or a failure
    under ``IROH_PAIR_REQUIRE_ALL`` (CI builds it with ``cargo build --release --bins``)."""
    env = os.environ.get("IROH_PAIR_BLOBS_BENCH")
    if env:
        candidates = [Path(env)]
    else:
        dirs = [Path(os.environ["CARGO_TARGET_DIR"]) / "release"] if os.environ.get("CARGO_TARGET_DIR") else []
        dirs.append(ROOT / "target" / "release")
        if os.environ.get("IROH_PAIR_NODE"):
            dirs.append(Path(os.environ["IROH_PAIR_NODE"]).parent)
        candidates = [d / BIN for d in dirs]
    for p in candidates:
        if p.exists():
            return p
    skip_or_fail(f"{BIN} is not built ({' or '.join(map(str, candidates))}): "
                 f"cargo build --release -p iroh-pair-blobs-bench")
    raise AssertionError("unreachable")


async def attack(host: Node, mode: str, hash: str, *, key_file: Path | None = None,
                 other: str | None = None) -> dict[str, object]:
    """Runs one attack on ``host``'s provider; its JSON report."""
    args = [str(attack_binary()), "attack", host.endpoint.addr().to_ticket(), hash, mode]
    if key_file is not None:
        args += ["--key-file", str(key_file)]
    if other is not None:
        args += ["--other", other]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, (
        f"{BIN} attack failed (rc {proc.returncode}; a binary built before the attack subcommand "
        f"needs a rebuild): {err.decode(errors='replace')[-2000:]}")
    report: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    assert report["mode"] == mode, report
    return report


@dataclass
class Scene:
    host: Node
    blobs: BlobStore
    #: the paired device (closed: the attacker is the only endpoint with its key)
    device: EndpointId
    key_file: Path
    #: offered to ``device``: a hash sequence whose one child is ``secret``
    seq: str
    #: in the host's store, never offered
    secret: str
    secret_size: int


@pytest.fixture
async def scene(tmp_path: Path) -> AsyncIterator[Scene]:
    host = await open_local_node(tmp_path / "host", "host")
    joiner = await open_local_node(tmp_path / "joiner", "joiner")
    try:
        hosted = await host.host_pairing()
        await joiner.join(hosted.code)
        device = (await hosted.wait(10)).endpoint_id
    finally:
        await joiner.close()
    key_file = tmp_path / "joiner" / "secret.key"
    assert key_file.stat().st_size == 32
    try:
        blobs = await host.blob_store()
        secret, secret_size = await blobs.add_path(write_random(tmp_path / "secret.bin", 256 * KiB))
        seq_file = tmp_path / "seq.bin"
        seq_file.write_bytes(bytes.fromhex(secret))
        seq, _ = await blobs.add_path(seq_file)
        yield Scene(host, blobs, device, key_file, seq, secret, secret_size)
    finally:
        await host.close()


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


async def test_the_attacker_gets_an_offered_blob_as_the_paired_device(scene: Scene) -> None:
    """The control: the raw client, as the paired device, is served what was offered to it
    (32 verified bytes: the hash sequence's one hash), so its refusals below are real."""
    scene.blobs.grant(scene.device, scene.seq)
    before = scene.blobs.stats()
    r = await attack(scene.host, "get-blob", scene.seq, key_file=scene.key_file)
    assert (r["outcome"], r["bytes"]) == ("served", 32), r
    assert r["id"] == str(scene.device)
    assert delta(before, scene.blobs.stats()) == {
        "connections_refused": 0, "requests_allowed": 1, "requests_refused": 0}


#: what the provider's counters show for each refused request of a paired device: get-many and
#: push are refused by iroh-blobs itself (``RequestMode::Disabled`` in files.rs ``MASK``), before
#: the police task sees them; get-ranges-children first gets the root raw (allowed)
COUNTED = {
    "get-hashseq": (0, 1),
    "get-ranges-children": (1, 1),
    "get-many": (0, 0),
    "push": (0, 0),
    "observe": (0, 1),
    "get-other": (0, 1),
}


@pytest.mark.parametrize("mode", REFUSED_MODES)
async def test_the_paired_device_gets_nothing_else(scene: Scene, mode: str) -> None:
    """As the paired device with a live offer of the hash sequence: asking for its child (as a
    hash sequence, or by ranges past the root), for anything by get-many, pushing, observing,
    or a raw get of the blob that was not offered, is refused on the request (the connection is
    admitted), with no content."""
    scene.blobs.grant(scene.device, scene.seq)
    target = scene.secret if mode == "get-other" else scene.seq
    before = scene.blobs.stats()
    r = await attack(scene.host, mode, target, key_file=scene.key_file,
                     other=scene.secret if mode == "get-many" else None)
    assert (r["outcome"], r["level"], r["bytes"]) == ("refused", "request", 0), r
    allowed, refused = COUNTED[mode]
    assert delta(before, scene.blobs.stats()) == {
        "connections_refused": 0, "requests_allowed": allowed, "requests_refused": refused}, r
    if mode == "push":
        assert not await scene.blobs.has(str(r["pushed"]))


@pytest.mark.parametrize("mode", ("get-blob", *REFUSED_MODES))
async def test_a_stranger_is_refused_at_the_connection(scene: Scene, mode: str) -> None:
    """A fresh key, while the hash sequence is offered to the paired device: every request,
    the plain raw get of the offered hash included, ends with the connection refused before
    any request is read."""
    scene.blobs.grant(scene.device, scene.seq)
    target = scene.secret if mode == "get-other" else scene.seq
    before = scene.blobs.stats()
    r = await attack(scene.host, mode, target, other=scene.secret if mode == "get-many" else None)
    assert (r["outcome"], r["level"], r["bytes"]) == ("refused", "connection", 0), r
    assert r["id"] != str(scene.device)
    assert delta(before, scene.blobs.stats()) == {
        "connections_refused": 1, "requests_allowed": 0, "requests_refused": 0}, r
    if mode == "push":
        assert not await scene.blobs.has(str(r["pushed"]))


async def test_a_withdrawn_offer_is_refused(scene: Scene, tmp_path: Path) -> None:
    """Two offers to the paired device; one withdrawn: its raw get is refused on the request
    (the other offer still admits the connection) and the other is served; both withdrawn: the
    connection itself is refused."""
    other, _ = await scene.blobs.add_path(write_random(tmp_path / "other.bin", 64 * KiB))
    scene.blobs.grant(scene.device, scene.seq)
    scene.blobs.grant(scene.device, other)
    r = await attack(scene.host, "get-blob", scene.seq, key_file=scene.key_file)
    assert r["outcome"] == "served", r
    scene.blobs.ungrant(scene.device, scene.seq)
    r = await attack(scene.host, "get-blob", scene.seq, key_file=scene.key_file)
    assert (r["outcome"], r["level"], r["bytes"]) == ("refused", "request", 0), r
    r = await attack(scene.host, "get-blob", other, key_file=scene.key_file)
    assert (r["outcome"], r["bytes"]) == ("served", 64 * KiB), r
    scene.blobs.ungrant(scene.device, other)
    before = scene.blobs.stats()
    r = await attack(scene.host, "get-blob", other, key_file=scene.key_file)
    assert (r["outcome"], r["level"], r["bytes"]) == ("refused", "connection", 0), r
    assert delta(before, scene.blobs.stats()) == {
        "connections_refused": 1, "requests_allowed": 0, "requests_refused": 0}


async def test_counted_grants_under_concurrent_offers(scene: Scene) -> None:
    """Two live offers of the same content to the same device (two ``send_file`` of the same
    file at once) are two grants: ending one leaves the content served, ending both refuses
    it."""
    scene.blobs.grant(scene.device, scene.seq)
    scene.blobs.grant(scene.device, scene.seq)
    scene.blobs.ungrant(scene.device, scene.seq)
    r = await attack(scene.host, "get-blob", scene.seq, key_file=scene.key_file)
    assert (r["outcome"], r["bytes"]) == ("served", 32), r
    scene.blobs.ungrant(scene.device, scene.seq)
    r = await attack(scene.host, "get-blob", scene.seq, key_file=scene.key_file)
    assert (r["outcome"], r["bytes"]) == ("refused", 0), r
