"""A Node in its own process for tests/test_exactly_once.py (PROTOCOL.md §13.8).

    python tests/delivery_child.py receiver DATA_DIR --port P --log FILE [--no-persist]
    python tests/delivery_child.py sender DATA_DIR

Loopback only (relay disabled, lookup none, no portmapper). The data directories are paired
beforehand (:func:`seed_pair`), so a restarted process finds its identity, keys and registry.
The process prints JSON lines on stdout: first ``{"event": "ready", "id": ..., "ticket": ...}``,
then one answer per command. Commands are JSON lines on stdin, each with a ``tag`` that its
answer repeats; they run concurrently:

* receiver: its handler (kind ``msg``) appends the message text and a newline to ``--log`` (the
  side effect whose count the tests check) and replies ``ok:<text>``.
  ``{"op": "die_after_commit"}``: the next message's id is committed to the registry, then the
  process kills itself with SIGKILL before the reply leaves (the reply is lost).
  ``--no-persist``: the control of the test's design: no registry behind the message ids
  (memory only), as before §13.8.
* sender: ``{"op": "hint", "id": ..., "ticket": ...}`` sets where the peer is (paired devices
  are dialed by id; without lookup the node needs the address);
  ``{"op": "send" | "request", "mid": hex, "text": ..., "timeout": s}`` answers
  ``{"ok": true, "reply": ...}`` or ``{"ok": false, "error": class, "code": n, "message": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from iroh_pair.errors import IrohPairError, RemoteError
from iroh_pair.store import ensure_data_dir, load_or_create_secret_key
from iroh_pair.protocol.kdf import SessionKeys
from iroh_pair import Node
from iroh_pair.store import REGISTRY_FILE, DeviceRegistry, PairedDevice
from iroh_pair.transport import EndpointAddr, EndpointId, NetworkOptions

#: Loopback only: no relays, no address lookup, no portmapper.
LOCAL = NetworkOptions.loopback()


def seed_pair(dir_a: Path, dir_b: Path) -> tuple[EndpointId, EndpointId]:
    """Two data directories paired with each other (identities, mirrored session keys, each in
    the other's registry), as a finished pairing leaves them; returns (id_a, id_b)."""
    id_a = load_or_create_secret_key(ensure_data_dir(dir_a)).public()
    id_b = load_or_create_secret_key(ensure_data_dir(dir_b)).public()
    a_to_b, b_to_a = os.urandom(32), os.urandom(32)
    for d, peer, keys, name in (
        (dir_a, id_b, SessionKeys(send=a_to_b, receive=b_to_a), "b"),
        (dir_b, id_a, SessionKeys(send=b_to_a, receive=a_to_b), "a"),
    ):
        with DeviceRegistry(d / REGISTRY_FILE) as reg:
            reg.add_or_replace(PairedDevice(peer, name, "other", "", "", 0.0, None, keys))
    return id_a, id_b


def emit(**obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def commands() -> Any:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        yield json.loads(line)


async def receiver(args: argparse.Namespace) -> None:
    node = await Node.open(args.data_dir, name="receiver",
                           options=LOCAL.replace(bind_addrs=(f"127.0.0.1:{args.port}",)))
    log = Path(args.log)
    if args.no_persist:
        node._deliveries.store = None  # the control: message ids in memory only
    die = False

    def handler(dev: PairedDevice, data: bytes) -> bytes:
        with open(log, "a") as f:  # the side effect; the page cache survives SIGKILL
            f.write(data.decode() + "\n")
        return b"ok:" + data

    node.on_message(handler)
    record = node.registry.record_delivered

    def record_then_maybe_die(peer: EndpointId, mid: bytes, when: float | None = None) -> bool:
        new = record(peer, mid, when)
        if die:  # committed (durably); the reply has not been sent yet
            os.kill(os.getpid(), signal.SIGKILL)
        return new

    setattr(node.registry, "record_delivered", record_then_maybe_die)  # noqa: B010
    emit(event="ready", id=str(node.id), ticket=node.ticket())
    async for cmd in commands():
        if cmd["op"] == "die_after_commit":
            die = True
        emit(tag=cmd.get("tag"), ok=True)
    await node.close()


async def sender(args: argparse.Namespace) -> None:
    # dial_timeout: a dial to the dead receiver fails sooner
    node = await Node.open(args.data_dir, name="sender", options=LOCAL, dial_timeout=5.0)
    emit(event="ready", id=str(node.id), ticket=node.ticket())
    tasks: set[asyncio.Task[None]] = set()

    async def run(cmd: dict[str, Any]) -> None:
        tag = cmd.get("tag")
        if cmd["op"] == "hint":
            node._hints[EndpointId.parse(cmd["id"])] = EndpointAddr.from_ticket(cmd["ticket"])
            emit(tag=tag, ok=True)
            return
        dev = node.devices()[0]
        mid = bytes.fromhex(cmd["mid"])
        data = cmd["text"].encode()
        try:
            if cmd["op"] == "send":
                await node.send(dev, data, message_id=mid, timeout=cmd["timeout"])
                emit(tag=tag, ok=True, reply=None)
            else:
                reply = await node.request(dev, data, message_id=mid, timeout=cmd["timeout"])
                emit(tag=tag, ok=True, reply=reply.decode())
        except (IrohPairError, TimeoutError) as e:
            code = e.code if isinstance(e, RemoteError) else None
            emit(tag=tag, ok=False, error=type(e).__name__, code=code, message=str(e))

    async for cmd in commands():
        t = asyncio.ensure_future(run(cmd))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    await node.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=("receiver", "sender"))
    p.add_argument("data_dir")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--log", default="")
    p.add_argument("--no-persist", action="store_true")
    args = p.parse_args()
    asyncio.run(receiver(args) if args.role == "receiver" else sender(args))


if __name__ == "__main__":
    main()
