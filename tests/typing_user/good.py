"""A user's program: what an app written against the installed package looks like.

tests/test_installed_typing.py copies it out of the repository and type-checks it under
``mypy --strict`` against the installed wheel alone (the package's inline types, py.typed and
the native stub). It is not run. bad.py is the same program with one misuse each.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from iroh_pair import Node, PairedDevice, SasCheck
from iroh_pair.errors import (
    ConnectError,
    IrohPairError,
    PairingFailed,
    RemoteError,
    Timeout,
    TransportError,
)
from iroh_pair.transport import (
    Connection,
    Endpoint,
    EndpointAddr,
    EndpointId,
    RecvStream,
    SendStream,
)

APP_ALPN = b"example-app/1"


async def same_on_both_screens(check: SasCheck) -> bool:
    answer = await asyncio.to_thread(input, f"Do both screens show {check.formatted}? [y/N] ")
    return answer.strip().lower() == "y"


async def on_message(device: PairedDevice, data: bytes) -> bytes:
    return f"{device.name} said {len(data)} bytes".encode()


async def host(data_dir: Path) -> PairedDevice:
    """Shows a code, waits for the other device, then answers its messages."""
    async with await Node.open(data_dir, name="laptop") as node:
        hosted = await node.host_pairing(confirm=same_on_both_screens)
        print("pairing code:", hosted.code)
        device = await hosted.wait(timeout=300.0)
        node.on_message(on_message)
        await node.wait_disconnected(timeout=60.0)
        return device


async def join(data_dir: Path, code: str) -> str | None:
    """Pairs with a code and sends one request; a failure is typed, not a string."""
    async with await Node.open(data_dir, name="phone") as node:
        try:
            device = await node.join(code, confirm=same_on_both_screens)
        except PairingFailed as e:
            print("pairing failed:", e.code.name, "by the peer" if e.by_peer else "here")
            return None
        try:
            reply: bytes = await node.request(device, b"hello", timeout=10.0)
        except Timeout:
            return None
        except IrohPairError as e:
            print("could not deliver:", e)
            return None
        ids: list[EndpointId] = [d.endpoint_id for d in node.devices()]
        print("paired with", [i.fmt_short() for i in ids])
        return reply.decode()


async def echo_server(endpoint: Endpoint) -> None:
    """The transport alone, for an app's own protocol: one framed request, one reply."""
    while (conn := await endpoint.accept()) is not None:
        send, recv = await conn.accept_bi()
        request = await recv.read_frame(max_len=1024)
        await send.write_frame(request or b"")
        send.finish()


async def transport_round_trip() -> bytes:
    server = await Endpoint.bind(alpns=[APP_ALPN])
    client = await Endpoint.bind()
    task = asyncio.create_task(echo_server(server))
    try:
        addr: EndpointAddr = server.addr()
        conn: Connection = await client.connect(addr, APP_ALPN, timeout=5.0)
        streams: tuple[SendStream, RecvStream] = await conn.open_bi()
        send, recv = streams
        await send.write_frame(b"ping")
        send.finish()
        pong = await recv.read_frame(max_len=1024)
        conn.close()
        return pong if pong is not None else b""
    except (ConnectError, RemoteError) as e:
        raise SystemExit(f"no round trip: {e}") from e
    except TransportError:
        raise
    finally:
        task.cancel()
        await client.close()
        await server.close()


if __name__ == "__main__":
    print(asyncio.run(transport_round_trip()))
