"""A Node in its own process for the resume tests of tests/test_files.py (killed mid-transfer).

    python tests/files_child.py fetch DATA_DIR TICKET HASH SIZE DEST
    python tests/files_child.py send DATA_DIR TICKET PATH
    python tests/files_child.py receive DATA_DIR TICKET DIR

The data directories are paired beforehand (loopback only). ``fetch`` fetches blob HASH of SIZE
bytes from the peer at TICKET (an EndpointAddr ticket) into its blob store and writes it to
DEST; ``send`` sends the file at PATH to the paired device at TICKET with ``Node.send_file``;
``receive`` takes every file offer into DIR (``Node.on_file_offer``) until it is killed, after
printing ``{"event": "ready", "ticket": ...}`` (its own address), and ``{"event": "stored",
"name": ..., "stats": endpoint counters}`` for each file stored.
Prints JSON lines: ``{"event": "progress", "done": n}`` as it goes, then ``{"event": "done",
"bytes_read": n, "wire_sent": n, "wire_recv": n, ...}`` (``wire_*``: the endpoint's bytes on
the wire, from iroh's socket counters, since this process started) or ``{"event": "error",
"error": class, "message": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from iroh_pair import FileOffer, FileProgress, NetworkOptions, Node
from iroh_pair.errors import IrohPairError
from iroh_pair.transport import EndpointAddr


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def progress(p: FileProgress) -> None:
    emit(event="progress", done=p.done)


async def main(mode: str, data_dir: str, ticket: str, rest: list[str]) -> int:
    async with await Node.open(data_dir, name=mode, options=NetworkOptions.loopback()) as node:
        peer = EndpointAddr.from_ticket(ticket)
        try:
            if mode == "receive":
                box = Path(rest[0])

                def take(offer: FileOffer) -> Path:
                    emit(event="offer", name=offer.name, size=offer.size)
                    return box

                node.on_file_offer(take, progress=lambda o, p: progress(p))
                node._hints[peer.id] = peer
                emit(event="ready", ticket=node.endpoint.addr().to_ticket())
                seen: set[str] = set()
                while True:  # until killed
                    for f in sorted(box.iterdir()):
                        if f.name not in seen and not f.name.startswith("."):
                            seen.add(f.name)
                            emit(event="stored", name=f.name, stats=node.endpoint.stats())
                    await asyncio.sleep(0.1)
            elif mode == "fetch":
                blobs = await node.blob_store()
                got = await blobs.fetch(node.endpoint, peer, rest[0], Path(rest[2]),
                                        size=int(rest[1]), progress=progress)
                st = node.endpoint.stats()
                emit(event="done", bytes_read=got.bytes_read, seconds=got.seconds,
                     wire_sent=st["wire_bytes_sent"], wire_recv=st["wire_bytes_recv"])
            else:
                node._hints[peer.id] = peer  # paired devices are dialed by id: no lookup here
                receipt = await node.send_file(peer.id, rest[0], progress=progress, timeout=300)
                st = node.endpoint.stats()
                emit(event="done", bytes_read=receipt.transferred, name=receipt.name,
                     wire_sent=st["wire_bytes_sent"], wire_recv=st["wire_bytes_recv"])
        except IrohPairError as e:
            emit(event="error", error=type(e).__name__, message=str(e))
            return 1
        return 0


if __name__ == "__main__":
    a = sys.argv[1:]
    sys.exit(asyncio.run(main(a[0], a[1], a[2], a[3:])))
