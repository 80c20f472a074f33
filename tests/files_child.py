"""A receiving Node in its own process for the resume test of tests/test_files.py.

    python tests/files_child.py DATA_DIR TICKET HASH SIZE DEST

Opens the node in DATA_DIR (paired beforehand, loopback only), fetches blob HASH of SIZE bytes
from the peer at TICKET (an EndpointAddr ticket) into its blob store and writes it to DEST.
Prints JSON lines: ``{"event": "progress", "done": n}`` as it goes, then ``{"event": "done",
"bytes_read": n, "seconds": s}`` or ``{"event": "error", "error": class, "message": ...}``.
The test kills it with SIGKILL in the middle and runs it again.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from iroh_pair import FileProgress, NetworkOptions, Node
from iroh_pair.errors import IrohPairError
from iroh_pair.transport import EndpointAddr


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def main(data_dir: str, ticket: str, hash: str, size: int, dest: str) -> int:
    async with await Node.open(data_dir, name="receiver", options=NetworkOptions.loopback()) as node:
        blobs = await node.blob_store()

        def progress(p: FileProgress) -> None:
            emit(event="progress", done=p.done)

        try:
            got = await blobs.fetch(node.endpoint, EndpointAddr.from_ticket(ticket), hash,
                                    Path(dest), size=size, progress=progress)
        except IrohPairError as e:
            emit(event="error", error=type(e).__name__, message=str(e))
            return 1
        emit(event="done", bytes_read=got.bytes_read, seconds=got.seconds)
        return 0


if __name__ == "__main__":
    a = sys.argv[1:]
    sys.exit(asyncio.run(main(a[0], a[1], a[2], int(a[3]), a[4])))
