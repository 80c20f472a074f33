"""good.py's program with misuses: mypy --strict must report every line marked ``# misuse``
(and no other), against the installed package alone (tests/test_installed_typing.py).

Several come from the native module's types (EndpointId, Endpoint.bind's ALPNs), so a wheel
without its stub, or without py.typed, fails the check.
"""

from __future__ import annotations

from pathlib import Path

from iroh_pair import Node, SasCheck
from iroh_pair.errors import PairingFailed, Timeout
from iroh_pair.transport import Endpoint


async def says_yes(check: SasCheck) -> str:
    return "yes"


async def join(data_dir: Path, code: str) -> None:
    async with await Node.open(data_dir, name="phone") as node:
        try:
            device = await node.join(code, confirm=says_yes)  # misuse: confirm must give a bool
        except PairingFailed as e:
            print(e.code.nmae)  # misuse: no such attribute
            return
        await node.request(device, "hello")  # misuse: text, not bytes
        reply: bytes = node.request(device, b"hello")  # misuse: not awaited
        short: int = device.endpoint_id.fmt_short()  # misuse: fmt_short gives a str
        print(reply, short)
        try:
            await node.request(device, b"x", timeout="10 s")  # misuse: timeout is a float
        except Timeout as t:
            print(t.code)  # misuse: Timeout has no code


async def transport() -> None:
    server = await Endpoint.bind(alpns=["example-app/1"])  # misuse: ALPNs are bytes
    conn = await server.connect(server.id, "example-app/1")  # misuse: an ALPN is bytes
    send, recv = await conn.open_bi()
    send.write_frame(b"ping")  # misuse: the coroutine is never awaited
    frame: bytes = await recv.read_frame(max_len=1024)  # misuse: read_frame may give None
    print(frame)
