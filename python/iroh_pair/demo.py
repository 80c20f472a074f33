"""The two-device demo: pair, message both ways, restart both, and talk again by EndpointId alone.

    python -m iroh_pair.demo

It runs on an embedded default: a relay and an address-lookup server of its own on 127.0.0.1
(:class:`iroh_pair.testing.LocalServers`), so it needs no internet and touches no public service.
Each device is a separate ``iroh-pair`` process with its own data directory; after the restart
they are new processes on new ports and find each other through the lookup server, by
EndpointId alone: no address is stored or handed over.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from iroh_pair.testing import LocalServers

__all__ = ["run"]

T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:6.2f}s] {text}", flush=True)


class Device:
    """One device: the ``iroh-pair`` command run in its own data directory."""

    def __init__(self, name: str, data_dir: Path, net: list[str]) -> None:
        self.name = name
        self.base = [sys.executable, "-m", "iroh_pair", "--data-dir", str(data_dir), "--name", name,
                     "--json", "--stats", *net]

    async def start(self, *args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *self.base, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )

    async def run(self, *args: str, timeout: float = 60) -> list[Any]:
        p = await self.start(*args)
        out, err = await asyncio.wait_for(p.communicate(), timeout)
        if p.returncode != 0:
            raise SystemExit(f"{self.name}: iroh-pair {' '.join(args)} failed: {err.decode().strip()}")
        return [json.loads(x) for x in out.decode().splitlines() if x.strip()]


async def read_event(p: asyncio.subprocess.Process, timeout: float = 60) -> dict[str, Any]:
    assert p.stdout is not None
    line = await asyncio.wait_for(p.stdout.readline(), timeout)
    if not line:
        err = b"" if p.stderr is None else await p.stderr.read()
        raise SystemExit(f"a device exited early: {err.decode().strip()}")
    return dict(json.loads(line))


async def stop(p: asyncio.subprocess.Process) -> None:
    if p.returncode is None:
        p.terminate()
        try:
            await asyncio.wait_for(p.wait(), 10)
        except TimeoutError:
            p.kill()
            await p.wait()


def counts(ev: dict[str, Any]) -> str:
    s = ev.get("stats", {})
    return (f"connections dialed {s.get('connections_dialed', 0)}, accepted {s.get('connections_accepted', 0)}; "
            f"streams opened {s.get('bi_streams_opened', 0)}, accepted {s.get('bi_streams_accepted', 0)}")


async def exchange(sender: Device, receiver: Device, text: str) -> None:
    """``receiver`` listens (a fresh process on a fresh port), ``sender`` sends (another fresh
    process): the sender finds the receiver by EndpointId through the lookup server."""
    listener = await receiver.start("listen", "--count", "1")
    try:
        ready = await read_event(listener)
        say(f"{receiver.name} listening as {ready['id'][:16]}... (new process, new port)")
        sent = await sender.run("send", receiver.name, text)
        say(f"{sender.name} -> {receiver.name}: delivered ({counts(sent[-1])})")
        msg = await read_event(listener)
        say(f"{receiver.name} received from {msg['name']}: {msg['text']!r}")
        stats = await read_event(listener)
        say(f"{receiver.name}: {counts(stats)}")
    finally:
        await stop(listener)


async def main(keep: bool) -> None:
    say("starting a local relay and address-lookup server on 127.0.0.1")
    async with LocalServers() as servers:
        net = servers.cli_args()
        say(f"relay {servers.relay_urls[0]}, lookup {servers.lookup.pkarr_url}")
        tmp = Path(tempfile.mkdtemp(prefix="iroh-pair-demo-"))
        alice = Device("alice", tmp / "alice", net)
        bob = Device("bob", tmp / "bob", net)

        say("alice hosts a pairing code")
        host = await alice.start("host", "--listen", "--yes")
        try:
            code = await read_event(host)
            say(f"code: {code['code'][:40]}... (words.tag.ticket)")
            joined = (await bob.run("join", str(code["code"]), "--yes"))[-1]
            paired = await read_event(host)
            say(f"bob paired with {joined['name']}, alice paired with {paired['name']}; "
                f"SAS {joined['sas']} == {paired['sas']}")
            sent = await bob.run("send", "alice", "hello alice")
            msg = await read_event(host)
            say(f"alice received from {msg['name']}: {msg['text']!r} ({counts(sent[-1])})")
        finally:
            await stop(host)

        say("both devices restart: every process from now on is new, on a new port")
        await exchange(alice, bob, "hello bob, alice here after the restart")
        await exchange(bob, alice, "hello alice, bob here after the restart")
        devices = await alice.run("devices")
        say(f"alice's registry: {[d['name'] for d in devices[-1]]} (ids only, no addresses)")
        say("done")
        if keep:
            say(f"data directories kept in {tmp}")


def run() -> None:
    """``python -m iroh_pair.demo [--keep]``: runs the demo (``--keep`` keeps the data
    directories)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="keep the data directories")
    args = ap.parse_args()
    asyncio.run(main(args.keep))


if __name__ == "__main__":
    run()
