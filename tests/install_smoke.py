"""An installed iroh_pair works: two loopback nodes pair (SAS compared) and exchange a message.

Run with the Python of the environment under test, outside the repository (so the installed
package is imported, not python/): ``scripts/test-arm64`` runs it under qemu against the
aarch64 wheel, ``scripts/build-wheels --check-sdist`` against the sdist. Prints what it did and
exits 0, or raises. Uses the public API only (as a user would).
"""

from __future__ import annotations

import asyncio
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import iroh_pair
from iroh_pair import Node, PairedDevice, SasCheck
from iroh_pair.transport import NetworkOptions


async def open_loopback(path: Path, name: str) -> Node:
    return await Node.open(path, name=name, options=NetworkOptions.loopback())


async def main() -> None:
    here = Path(iroh_pair.__file__).resolve().parent
    print(f"iroh_pair {iroh_pair.__version__} from {here}")
    print(f"python {platform.python_version()} on {platform.machine()} ({sys.platform})")
    start = time.monotonic()
    seen: dict[str, str] = {}

    def approve(side: str) -> Callable[[SasCheck], Awaitable[bool]]:
        async def confirm(check: SasCheck) -> bool:
            seen[side] = check.formatted
            return True
        return confirm

    with tempfile.TemporaryDirectory() as tmp:
        host = await open_loopback(Path(tmp) / "host", "host")
        joiner = await open_loopback(Path(tmp) / "joiner", "joiner")
        try:
            print(f"nodes open: host {host.id.fmt_short()}, joiner {joiner.id.fmt_short()}")
            hosted = await host.host_pairing(confirm=approve("host"))
            on_joiner: PairedDevice = await joiner.join(str(hosted.code), confirm=approve("joiner"))
            on_host = await hosted.wait(60)
            assert on_joiner.endpoint_id == host.id and on_host.endpoint_id == joiner.id
            assert seen["host"] == seen["joiner"], seen
            print(f"paired: SAS {seen['host']} on both sides ({time.monotonic() - start:.1f} s)")

            host.on_message(lambda dev, data: b"ack from " + dev.name.encode() + b": " + data)
            reply = await joiner.request(on_joiner, b"hello over loopback", timeout=60)
            assert reply == b"ack from joiner: hello over loopback", reply
            print(f"request -> reply: {reply.decode()!r}")
        finally:
            await joiner.close()
            await host.close()
    print(f"OK in {time.monotonic() - start:.1f} s")


if __name__ == "__main__":
    asyncio.run(main())
