"""One side of a files benchmark cell in its own process (``bench/files.py`` starts it).

    python bench/files_worker.py pair HOST_DIR JOIN_DIR
    python bench/files_worker.py receive DATA_DIR INBOX
    python bench/files_worker.py send DATA_DIR TICKET PATH

``pair`` pairs two fresh data directories on loopback (both nodes in this process) and exits.
``receive`` opens the node in DATA_DIR (loopback), opens its blob store, accepts every offer
into INBOX and prints ``{"event": "ready", "ticket": ...}``; for each file it prints
``{"event": "received", ...}`` with the fetch's own duration (``Fetched.seconds``), the wall
time of fetch + export (around the package's ``BlobStore.fetch``) and the bytes read.
``send`` opens the node in DATA_DIR, opens its blob store, prints ``{"event": "ready"}``, then
times ``Node.send_file`` to the device at TICKET and prints ``{"event": "sent", ...}`` with the
wall time of the import (around the package's ``BlobStore.add_path``) and of the whole call.
Both then wait until stdin closes (the driver reads their peak RSS meanwhile).

The phase timings wrap two methods of ``iroh_pair._files.BlobStore`` in this process only; the
package's code runs unchanged inside the wrappers.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from iroh_pair import FileOffer, NetworkOptions, Node
from iroh_pair import _files
from iroh_pair.transport import EndpointAddr

#: Phase timings of this process, filled by the wrappers below.
PHASES: dict[str, float | int] = {}


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def _wrap_phases() -> None:
    add_path = _files.BlobStore.add_path
    fetch = _files.BlobStore.fetch

    async def timed_add_path(self: _files.BlobStore, path: Path) -> tuple[str, int]:
        t = time.perf_counter()
        r = await add_path(self, path)
        PHASES["import_s"] = time.perf_counter() - t
        return r

    async def timed_fetch(self: _files.BlobStore, *args: Any, **kwargs: Any) -> _files.Fetched:
        t = time.perf_counter()
        r = await fetch(self, *args, **kwargs)
        PHASES["fetch_export_s"] = time.perf_counter() - t
        PHASES["fetch_s"] = r.seconds
        PHASES["bytes_read"] = r.bytes_read
        return r

    _files.BlobStore.add_path = timed_add_path  # type: ignore[method-assign]
    _files.BlobStore.fetch = timed_fetch  # type: ignore[method-assign]


async def wait_stdin() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


async def pair(host_dir: str, join_dir: str) -> None:
    opts = NetworkOptions.loopback()
    async with await Node.open(host_dir, name="bench-sender", options=opts) as host, \
            await Node.open(join_dir, name="bench-receiver", options=opts) as joiner:
        hosted = await host.host_pairing()
        await joiner.join(hosted.code)
        await hosted.wait(10)
    emit(event="paired")


async def receive(data_dir: str, inbox: str) -> None:
    box = Path(inbox)
    async with await Node.open(data_dir, name="bench-receiver", options=NetworkOptions.loopback()) as node:
        await node.blob_store()
        done = asyncio.Event()

        def take(offer: FileOffer) -> Path:
            PHASES.clear()
            return box

        node.on_file_offer(take)
        emit(event="ready", ticket=node.endpoint.addr().to_ticket())
        reader = asyncio.ensure_future(wait_stdin())
        while not reader.done():
            await asyncio.sleep(0.05)
            if "fetch_s" in PHASES and not done.is_set():
                done.set()
                emit(event="received", **PHASES)
        await reader


async def send(data_dir: str, ticket: str, path: str) -> None:
    async with await Node.open(data_dir, name="bench-sender", options=NetworkOptions.loopback()) as node:
        peer = EndpointAddr.from_ticket(ticket)
        node._hints[peer.id] = peer  # paired devices are dialed by id: no lookup on loopback
        await node.blob_store()
        emit(event="ready")
        t = time.perf_counter()
        receipt = await node.send_file(peer.id, path, timeout=900)
        total = time.perf_counter() - t
        emit(event="sent", send_file_s=total, size=receipt.size, transferred=receipt.transferred, **PHASES)
        await wait_stdin()


def main() -> None:
    a = sys.argv[1:]
    if a[:1] == ["pair"]:
        asyncio.run(pair(a[1], a[2]))
    elif a[:1] == ["receive"]:
        _wrap_phases()
        asyncio.run(receive(a[1], a[2]))
    elif a[:1] == ["send"]:
        _wrap_phases()
        asyncio.run(send(a[1], a[2], a[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
