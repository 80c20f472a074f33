"""The ``iroh-pair`` command: pair devices and message them from a terminal.

Exit codes: 0 success, 1 error, 2 usage, 3 pairing failed, 4 timed out, 130 interrupted.
Every error is one line on stderr; progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from .errors import IrohPairError
from .lan import looks_spoken
from .node import Node, PairingFailed
from .registry import PairedDevice, safe_display
from .transport import LookupConfig

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PAIRING, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


def default_data_dir() -> Path:
    env = os.environ.get("IROH_PAIR_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "iroh-pair"


def network_options(args: argparse.Namespace) -> dict[str, Any]:
    """Node.open options from the command line: n0's public services unless told otherwise."""
    opts: dict[str, Any] = {}
    if args.local:
        opts.update(relay="disabled", lookup="none", bind_addrs=("127.0.0.1:0",), portmapper=False)
    if lan_mode(args):
        if args.local:
            raise UsageError("--lan and --local exclude each other (mDNS needs a LAN interface)")
        opts.update(relay="disabled", lookup="none", bind_addrs=(), portmapper=False, mdns=True)
    if args.relay:
        opts["relay"] = list(args.relay)
    if args.pkarr_url or args.dns_origin:
        if not (args.pkarr_url and args.dns_origin):
            raise UsageError("--pkarr-url and --dns-origin go together")
        opts["lookup"] = LookupConfig(args.pkarr_url, args.dns_origin, args.dns_server)
    if args.bind:
        opts["bind_addrs"] = tuple(args.bind)
    if args.no_portmapper:
        opts["portmapper"] = False
    if args.ca_cert:
        try:
            opts["ca_certs"] = b"".join(Path(f).read_bytes() for f in args.ca_cert)
        except OSError as e:
            raise UsageError(f"cannot read --ca-cert: {e}") from None
    return opts


class UsageError(Exception):
    pass


def lan_mode(args: argparse.Namespace) -> bool:
    """``--lan`` (before or after the command), or joining with a spoken LAN code."""
    code = getattr(args, "code", None)
    return bool(getattr(args, "lan", False)) or (isinstance(code, str) and looks_spoken(code))


def describe(dev: PairedDevice) -> str:
    kind = safe_display(dev.device_type, 20)
    return f"{safe_display(dev.name, 40)}  ({kind})  {dev.endpoint_id}"


@contextlib.asynccontextmanager
async def progress(text: str, quiet: bool) -> AsyncIterator[None]:
    """A waiting indicator on stderr (only on a terminal)."""
    if quiet:
        yield
        return
    if not sys.stderr.isatty():
        print(f"{text}...", file=sys.stderr, flush=True)
        yield
        return

    async def spin() -> None:
        frames = "|/-\\"
        i = 0
        while True:
            print(f"\r{text} {frames[i % 4]}", end="", file=sys.stderr, flush=True)
            i += 1
            await asyncio.sleep(0.2)

    task = asyncio.ensure_future(spin())
    try:
        yield
    finally:
        task.cancel()
        print("\r" + " " * (len(text) + 2) + "\r", end="", file=sys.stderr, flush=True)


async def open_node(args: argparse.Namespace) -> Node:
    return await Node.open(args.data_dir, name=args.name, **network_options(args))


def report_stats(node: Node, args: argparse.Namespace) -> None:
    """With --stats: the endpoint's native counters (connections, streams) as the last line."""
    if args.stats:
        stats = node.endpoint.stats()
        if args.json:
            print(json.dumps({"event": "stats", "stats": stats}), flush=True)
        else:
            print("stats: " + ", ".join(f"{k}={v}" for k, v in stats.items()), file=sys.stderr)


async def cmd_id(args: argparse.Namespace) -> int:
    async with await open_node(args) as node:
        print(node.id)
    return EXIT_OK


async def cmd_devices(args: argparse.Namespace) -> int:
    async with await open_node(args) as node:
        devs = node.devices()
        if args.json:
            print(json.dumps([
                {"id": str(d.endpoint_id), "name": d.name, "type": d.device_type, "paired_at": d.paired_at,
                 "last_seen": d.last_seen} for d in devs
            ]))
        elif not devs:
            print("no paired devices", file=sys.stderr)
        for d in devs if not args.json else []:
            print(describe(d))
    return EXIT_OK


def _print_message(dev: PairedDevice, data: bytes, as_json: bool) -> None:
    text = data.decode("utf-8", errors="replace")
    if as_json:
        print(json.dumps({"event": "message", "from": str(dev.endpoint_id), "name": dev.name, "text": text}),
              flush=True)
    else:
        print(f"{safe_display(dev.name, 40)}: {safe_display(text, 4000)}", flush=True)


async def _listen(node: Node, args: argparse.Namespace, count: int | None) -> None:
    done = asyncio.Event()
    received = 0

    def on_message(dev: PairedDevice, data: bytes) -> None:
        nonlocal received
        _print_message(dev, data, args.json)
        received += 1
        if count is not None and received >= count:
            done.set()

    node.on_message(on_message)
    await done.wait()
    # The sender reads last (our reply), so it closes: wait for that rather than cutting the
    # reply off by closing first.
    await node.wait_disconnected(timeout=5.0)


async def cmd_host(args: argparse.Namespace) -> int:
    async with await open_node(args) as node:
        hosted = await node.host_pairing(ttl=args.ttl, words=args.words, lan=lan_mode(args))
        spoken = None if hosted.spoken is None else str(hosted.spoken)
        if args.json:
            print(json.dumps({"event": "code", "code": str(hosted.code), "spoken": spoken,
                              "id": str(node.id)}), flush=True)
        elif spoken is not None:
            print(f"pairing code for a device on this LAN (single use, expires in {args.ttl:.0f} s):",
                  file=sys.stderr)
            print(spoken, flush=True)
            print(f"from another network use the full code: {hosted.code}", file=sys.stderr)
        else:
            print(f"pairing code (single use, expires in {args.ttl:.0f} s):", file=sys.stderr)
            print(str(hosted.code), flush=True)
        async with progress("waiting for the other device", args.quiet or args.json):
            dev = await hosted.wait()
        _report_paired(node, dev, args)
        if args.listen:
            node.on_message(lambda d, data: _print_message(d, data, args.json))
            await asyncio.Event().wait()
    return EXIT_OK


def _report_paired(node: Node, dev: PairedDevice, args: argparse.Namespace) -> None:
    sas = node.last_sas(dev.endpoint_id)
    if args.json:
        print(json.dumps({"event": "paired", "id": str(dev.endpoint_id), "name": dev.name, "sas": sas}),
              flush=True)
    else:
        print(f"paired with {describe(dev)}")
        print(f"check that both screens show: {sas}")


async def cmd_join(args: argparse.Namespace) -> int:
    async with await open_node(args) as node:
        async with progress("pairing", args.quiet or args.json):
            dev = await node.join(args.code, timeout=args.timeout)
        _report_paired(node, dev, args)
    return EXIT_OK


async def cmd_send(args: argparse.Namespace) -> int:
    async with await open_node(args) as node:
        dev = node.device(args.device)
        async with progress(f"sending to {safe_display(dev.name, 40)}", args.quiet or args.json):
            await node.send(dev, args.text.encode(), timeout=args.timeout)
        if args.json:
            print(json.dumps({"event": "delivered", "to": str(dev.endpoint_id)}), flush=True)
        else:
            print(f"delivered to {safe_display(dev.name, 40)}", file=sys.stderr)
        report_stats(node, args)
    return EXIT_OK


async def cmd_listen(args: argparse.Namespace) -> int:
    async with await open_node(args) as node:
        # Report "listening" only once a sender started now can find this node by id.
        if node.uses_servers:
            async with progress("getting reachable (relay, address lookup)", args.quiet or args.json):
                await node.wait_reachable()
        if args.json:
            print(json.dumps({"event": "listening", "id": str(node.id)}), flush=True)
        else:
            print(f"listening as {node.id} (Ctrl-C to stop)", file=sys.stderr)
        await _listen(node, args, args.count)
        report_stats(node, args)
    return EXIT_OK


async def cmd_unpair(args: argparse.Namespace) -> int:
    async with await open_node(args) as node:
        dev = await node.unpair(args.device)
        print(f"unpaired {describe(dev)}", file=sys.stderr)
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iroh-pair", description="Pair devices and message them over iroh.")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(),
                   help="where the key and paired devices live (default: %(default)s)")
    p.add_argument("--name", help="this device's name, shown to peers (default: the host name)")
    p.add_argument("--json", action="store_true", help="machine-readable output (JSON lines)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("--stats", action="store_true",
                   help="print the connection and stream counters when the command ends")
    net = p.add_argument_group("network (default: n0's public relays and address lookup)")
    net.add_argument("--local", action="store_true", help="loopback only: no relays, no lookup")
    net.add_argument("--lan", action="store_true",
                     help="LAN mode: find devices over mDNS, no server needed (no public relays or "
                          "lookup unless --relay/--pkarr-url); host prints a short spoken code")
    net.add_argument("--relay", action="append", metavar="URL", help="a self-hosted relay (repeatable)")
    net.add_argument("--pkarr-url", help="self-hosted address lookup: pkarr relay URL")
    net.add_argument("--dns-origin", help="self-hosted address lookup: DNS origin domain")
    net.add_argument("--dns-server", metavar="IP:PORT", help="DNS server to resolve lookups with")
    net.add_argument("--bind", action="append", metavar="IP:PORT", help="local address to bind (repeatable)")
    net.add_argument("--no-portmapper", action="store_true", help="do not probe the gateway for port mapping")
    net.add_argument("--ca-cert", action="append", metavar="PEM",
                     help="trust this CA certificate for self-hosted servers (repeatable)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("id", help="print this device's EndpointId").set_defaults(fn=cmd_id)
    h = sub.add_parser("host", help="create a pairing code and wait for the other device")
    h.add_argument("--ttl", type=float, default=300.0, help="seconds the code is valid (default 300)")
    h.add_argument("--words", type=int, default=3, help="secret words in the code (default 3)")
    h.add_argument("--listen", action="store_true", help="after pairing, keep printing messages")
    h.add_argument("--lan", action="store_true", default=argparse.SUPPRESS,
                   help="LAN mode, with a code to read aloud (e.g. 7-ocean-tiger-river)")
    h.set_defaults(fn=cmd_host)
    j = sub.add_parser("join", help="pair with the device that shows CODE")
    j.add_argument("code", help="the full code, or a spoken LAN code like 7-ocean-tiger-river")
    j.add_argument("--lan", action="store_true", default=argparse.SUPPRESS, help="LAN mode")
    j.add_argument("--timeout", type=float, default=60.0)
    j.set_defaults(fn=cmd_join)
    sub.add_parser("devices", help="list paired devices").set_defaults(fn=cmd_devices)
    s = sub.add_parser("send", help="send TEXT to DEVICE (exits once delivered)")
    s.add_argument("device", help="name, EndpointId or id prefix")
    s.add_argument("text")
    s.add_argument("--timeout", type=float, default=30.0)
    s.add_argument("--lan", action="store_true", default=argparse.SUPPRESS, help="LAN mode")
    s.set_defaults(fn=cmd_send)
    li = sub.add_parser("listen", help="print messages from paired devices")
    li.add_argument("--count", type=int, help="exit after this many messages")
    li.add_argument("--lan", action="store_true", default=argparse.SUPPRESS, help="LAN mode")
    li.set_defaults(fn=cmd_listen)
    u = sub.add_parser("unpair", help="forget DEVICE")
    u.add_argument("device")
    u.set_defaults(fn=cmd_unpair)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = asyncio.run(args.fn(args))
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as e:
        print(f"iroh-pair: {e}", file=sys.stderr)
        return EXIT_USAGE
    except PairingFailed as e:
        print(f"iroh-pair: {e}", file=sys.stderr)
        return EXIT_PAIRING
    except TimeoutError as e:
        print(f"iroh-pair: timed out{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return EXIT_TIMEOUT
    except (IrohPairError, OSError, ValueError) as e:
        print(f"iroh-pair: {safe_display(str(e), 300)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
