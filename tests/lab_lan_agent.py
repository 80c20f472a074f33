#!/usr/bin/env python3
"""One process inside a LAN lab device (``rust/lab/src/lan.rs``): LAN discovery with no server.

Every node here runs with relays off, address lookup off and mDNS on (the CLI's LAN mode:
``NetworkOptions.lan()``): only mDNS
can find anyone. Output is JSON lines on stdout (``event`` and ``at``); commands arrive on
stdin, one per line (``stop``; EOF means the same; other commands per mode).

Modes (``--mode``):

* ``host``: hosts a LAN pairing (``host_pairing(lan=True)``), prints ``code`` (the spoken code,
  and, for the harness's secrecy checks, the words and the session tag), an ``attempts`` line
  whenever the offer's attempt counter changes, ``paired``; then answers messages until
  ``stop`` and prints ``done``.
* ``join``: joins ``--code`` (``paired``, or ``join_failed`` with the reject code); then waits
  for ``stop`` and prints ``done``.
* ``serve``: opens the node (``open`` with its sockets and paired devices) and answers
  messages; ``ping N`` sends N requests to the paired device (``pinged``); ``stop``: ``done``.
* ``reconnect``: opens the node and requests ``--peer`` by its EndpointId alone (``reconnected``
  with the time it took), then ``--requests`` more, and reports the connection's paths
  (``exchanged``); waits for ``stop``, ``done``.
* ``capture``: a raw mDNS capture (UDP 5353 on 224.0.0.251 and ff02::fb): every packet as a
  ``packet`` line (source, phase, raw hex and the parsed records). ``mark PHASE`` sets the
  phase of the following packets; ``attack`` reads the nameplate from the captured service
  names and tries a join with three random words (``attack`` line with the outcome).
* ``endpoint-serve`` / ``endpoint-dial``: raw endpoints (no Node): the first accepts and echoes;
  on ``stop ID...`` it waits (at most ``--listen`` s) until mDNS has shown it those ids, then
  prints ``done`` with the LAN devices it saw. The second first watches the LAN for ``--peer``
  (at most ``--listen`` s), then dials it by id with ``--timeout`` and prints ``dial`` (ok, or
  the error's type and how long it took), with the LAN devices it saw over mDNS; it stays on
  the LAN, still announcing itself, until its stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ipaddress
import json
import re
import socket
import struct
import sys
import time
from collections import Counter
from typing import Any

from iroh_pair.errors import IrohPairError, PairingFailed
from iroh_pair import Node, NodeEvent
from iroh_pair.protocol import ALPN
from iroh_pair.store import PairedDevice
from iroh_pair.transport import Connection, Endpoint, EndpointId, NetworkOptions
from iroh_pair.protocol.words import generate_words

T0 = time.monotonic()
#: mDNS only: no relay, no lookup server, every interface (what the CLI's --lan does).
LAN = NetworkOptions.lan()
TEST_ALPN = b"iroh-pair-lab-lan/1"
MDNS_PORT = 5353
MDNS_V4 = "224.0.0.251"
MDNS_V6 = "ff02::fb"


def now() -> float:
    return round(time.monotonic() - T0, 3)


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "at": now(), **fields}), flush=True)


def id_label(ep: EndpointId) -> str:
    """The mDNS instance label of an EndpointId, as iroh-mdns-address-lookup writes it:
    RFC 4648 base32 of the 32 bytes, no padding, lower case (52 characters)."""
    return base64.b32encode(ep.to_bytes()).decode().rstrip("=").lower()


def paths_of(conn: Connection | None) -> list[dict[str, Any]]:
    if conn is None:
        return []
    return [{"kind": p.kind, "addr": p.addr, "selected": p.selected} for p in conn.paths()]


# ------------------------------------------------------------------ a minimal DNS parser


class DnsError(ValueError):
    pass


TYPES = {1: "A", 12: "PTR", 16: "TXT", 28: "AAAA", 33: "SRV", 47: "NSEC", 255: "ANY"}


def read_name(buf: bytes, off: int) -> tuple[str, int]:
    """A (possibly compressed) domain name at ``off``: the dotted name without the final dot,
    and the offset just after it in the original position."""
    labels: list[str] = []
    end: int | None = None
    jumps = 0
    while True:
        if off >= len(buf):
            raise DnsError("name runs past the end")
        n = buf[off]
        if n == 0:
            off += 1
            break
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(buf):
                raise DnsError("truncated pointer")
            if end is None:
                end = off + 2
            target = ((n & 0x3F) << 8) | buf[off + 1]
            jumps += 1
            if jumps > 32 or target >= len(buf):
                raise DnsError("bad compression pointer")
            off = target
            continue
        if n & 0xC0:
            raise DnsError(f"bad label length byte {n:#x}")
        label = buf[off + 1: off + 1 + n]
        if len(label) != n:
            raise DnsError("truncated label")
        labels.append(label.decode("utf-8", errors="backslashreplace"))
        off += 1 + n
    return ".".join(labels), (off if end is None else end)


def parse_rdata(buf: bytes, rtype: int, off: int, rdlen: int) -> Any:
    rd = buf[off: off + rdlen]
    if len(rd) != rdlen:
        raise DnsError("truncated rdata")
    if rtype == 1:
        if rdlen != 4:
            raise DnsError("A rdata is not 4 bytes")
        return str(ipaddress.IPv4Address(rd))
    if rtype == 28:
        if rdlen != 16:
            raise DnsError("AAAA rdata is not 16 bytes")
        return str(ipaddress.IPv6Address(rd))
    if rtype == 12:
        return read_name(buf, off)[0]
    if rtype == 33:
        if rdlen < 7:
            raise DnsError("short SRV")
        prio, weight, port = struct.unpack("!HHH", rd[:6])
        return {"priority": prio, "weight": weight, "port": port, "target": read_name(buf, off + 6)[0]}
    if rtype == 16:
        strings: list[str] = []
        i = 0
        while i < rdlen:
            n = rd[i]
            s = rd[i + 1: i + 1 + n]
            if len(s) != n:
                raise DnsError("truncated TXT string")
            strings.append(s.decode("utf-8", errors="backslashreplace"))
            i += 1 + n
        return strings
    return rd.hex()


def parse_dns(buf: bytes) -> dict[str, Any]:
    """The header flags, questions and records of one DNS message (raises :class:`DnsError`)."""
    if len(buf) < 12:
        raise DnsError("shorter than a header")
    mid, flags, qd, an, ns, ar = struct.unpack("!6H", buf[:12])
    off = 12
    questions: list[dict[str, Any]] = []
    for _ in range(qd):
        name, off = read_name(buf, off)
        if off + 4 > len(buf):
            raise DnsError("truncated question")
        qtype, qclass = struct.unpack("!HH", buf[off: off + 4])
        off += 4
        questions.append({"name": name, "type": TYPES.get(qtype, str(qtype)), "class": qclass & 0x7FFF,
                          "unicast_response": bool(qclass & 0x8000)})
    records: list[dict[str, Any]] = []
    for section, count in (("answer", an), ("authority", ns), ("additional", ar)):
        for _ in range(count):
            name, off = read_name(buf, off)
            if off + 10 > len(buf):
                raise DnsError("truncated record header")
            rtype, rclass, ttl, rdlen = struct.unpack("!HHIH", buf[off: off + 10])
            off += 10
            data = parse_rdata(buf, rtype, off, rdlen)
            off += rdlen
            records.append({"section": section, "name": name, "type": TYPES.get(rtype, str(rtype)),
                            "class": rclass & 0x7FFF, "ttl": ttl, "data": data})
    if off != len(buf):
        raise DnsError(f"{len(buf) - off} trailing bytes")
    return {"id": mid, "response": bool(flags & 0x8000), "questions": questions, "records": records}


# ------------------------------------------------------------------ capture


class Capture:
    """Raw mDNS sockets (IPv4, and IPv6 when the interface has it) beside the nodes' own."""

    def __init__(self, iface_ip: str) -> None:
        self.phase = "start"
        self.count: Counter[str] = Counter()
        self.nameplates: set[int] = set()
        self.socks: list[socket.socket] = []
        s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        s4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s4.bind(("0.0.0.0", MDNS_PORT))
        mreq = struct.pack("4s4s", socket.inet_aton(MDNS_V4), socket.inet_aton(iface_ip))
        s4.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        s4.setblocking(False)
        self.socks.append(s4)
        self.v6_error: str | None = None
        try:
            s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
            s6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s6.bind(("::", MDNS_PORT))
            idx = socket.if_nametoindex("eth0")
            mreq6 = socket.inet_pton(socket.AF_INET6, MDNS_V6) + struct.pack("@I", idx)
            s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq6)
            s6.setblocking(False)
            self.socks.append(s6)
        except OSError as e:
            self.v6_error = repr(e)

    async def run(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data, addr = await loop.sock_recvfrom(sock, 9000)
            self.handle(data, addr[0], addr[1])

    def handle(self, data: bytes, src: str, sport: int) -> None:
        entry: dict[str, Any] = {"from": src, "sport": sport, "phase": self.phase, "len": len(data),
                                 "hex": data.hex()}
        try:
            msg = parse_dns(data)
            entry.update(msg)
            for name in [q["name"] for q in msg["questions"]] + [r["name"] for r in msg["records"]]:
                m = re.search(r"_iroh-pair-(\d+)\._udp\.local$", name)
                if m:
                    self.nameplates.add(int(m.group(1)))
        except DnsError as e:
            entry["parse_error"] = str(e)
        self.count[self.phase] += 1
        emit("packet", **entry)


async def run_capture(args: argparse.Namespace) -> int:
    cap = Capture(args.iface_ip)
    tasks = [asyncio.create_task(cap.run(s)) for s in cap.socks]
    emit("capturing", sockets=len(cap.socks), v6_error=cap.v6_error)
    attack: dict[str, Any] | None = None
    reader = await stdin_reader()
    while line := await reader.readline():
        cmd = line.decode().split()
        if not cmd:
            continue
        if cmd[0] == "stop":
            break
        if cmd[0] == "mark" and len(cmd) == 2:
            cap.phase = cmd[1]
            emit("marked", phase=cap.phase)
        elif cmd[0] == "attack":
            attack = await try_wrong_words(args, cap)
            emit("attack", **attack)
    for t in tasks:
        t.cancel()
    emit("done", packets=dict(cap.count), nameplates=sorted(cap.nameplates), attack=attack)
    return 0


async def try_wrong_words(args: argparse.Namespace, cap: Capture) -> dict[str, Any]:
    """What an eavesdropper on the LAN can do: read the nameplate off the air, guess words."""
    deadline = time.monotonic() + 15
    while not cap.nameplates and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    if len(cap.nameplates) != 1:
        return {"ok": False, "error": f"nameplates seen: {sorted(cap.nameplates)}"}
    nameplate = next(iter(cap.nameplates))
    guess = f"{nameplate}-{'-'.join(generate_words(3))}"
    node = await Node.open(args.data, name=args.label, options=LAN)
    base = {"nameplate": nameplate, "id": str(node.id), "label": id_label(node.id)}
    t = time.monotonic()
    try:
        dev = await node.join(guess, timeout=30)
        return {"ok": True, "paired_with": str(dev.endpoint_id), **base}
    except PairingFailed as e:
        return {"ok": False, "error_type": type(e).__name__, "reject": e.code.name,
                "seconds": round(time.monotonic() - t, 3), "devices": len(node.devices()), **base}
    except (IrohPairError, TimeoutError) as e:
        return {"ok": False, "error_type": type(e).__name__, "error": str(e)[:300], **base}
    finally:
        await node.close()


# ------------------------------------------------------------------ nodes


async def stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


class NodeAgent:
    def __init__(self, args: argparse.Namespace, node: Node) -> None:
        self.args = args
        self.node = node
        self.events: list[dict[str, Any]] = []
        self.received = 0

    async def follow(self) -> None:
        ev: NodeEvent
        async for ev in self.node.events():
            self.events.append({"at": now(), "kind": ev.kind, "path": ev.path})
            emit("node_event", kind=ev.kind, path=ev.path, device=str(ev.device_id))

    def echo(self, dev: PairedDevice, data: bytes) -> bytes:
        self.received += 1
        return b"echo:" + data

    def first_event(self, kind: str) -> float | None:
        return next((e["at"] for e in self.events if e["kind"] == kind), None)

    def info(self) -> dict[str, Any]:
        return {"id": str(self.node.id), "label": id_label(self.node.id),
                "sockets": self.node.endpoint.bound_sockets(),
                "devices": [str(d.endpoint_id) for d in self.node.devices()]}

    async def request_n(self, dev: PairedDevice, n: int, tag: bytes) -> list[float]:
        rtts = []
        for i in range(n):
            t = time.monotonic()
            msg = b"%s:%d" % (tag, i)
            reply = await self.node.request(dev, msg, timeout=10)
            if reply != b"echo:" + msg:
                raise AssertionError(f"bad reply {reply[:40]!r}")
            rtts.append(round((time.monotonic() - t) * 1000, 2))
        return rtts

    def conn_paths(self, peer: EndpointId) -> list[dict[str, Any]]:
        return paths_of(self.node.cache.peek(peer, ALPN))

    def done(self, **extra: Any) -> None:
        emit("done", **self.info(), received=self.received, events=self.events, **extra)


async def run_node(args: argparse.Namespace) -> int:
    node = await Node.open(args.data, name=args.label, options=LAN)
    agent = NodeAgent(args, node)
    follow = asyncio.create_task(agent.follow())
    node.on_message(agent.echo)
    emit("open", **agent.info())
    reader = await stdin_reader()
    try:
        extra: dict[str, Any] = {}
        if args.mode == "host":
            hosted = await node.host_pairing(lan=True, ttl=args.ttl)
            assert hosted.spoken is not None
            emit("code", spoken=str(hosted.spoken), nameplate=hosted.spoken.nameplate,
                 words=list(hosted.spoken.words), tag=hosted.code.tag.hex(), full=str(hosted.code))

            async def watch_attempts() -> None:
                seen = 0
                while True:
                    if hosted.offer.attempts_used != seen:
                        seen = hosted.offer.attempts_used
                        emit("attempts", used=seen, left=hosted.offer.attempts_left, done=hosted.done)
                    await asyncio.sleep(0.05)

            watcher = asyncio.create_task(watch_attempts())
            try:
                dev = await hosted.wait(args.wait)
            finally:
                await asyncio.sleep(0.1)
                watcher.cancel()
            emit("paired", peer=str(dev.endpoint_id), attempts_used=hosted.offer.attempts_used,
                 sas=node.last_sas(dev.endpoint_id))
            extra["attempts_used"] = hosted.offer.attempts_used
        elif args.mode == "join":
            t = time.monotonic()
            try:
                dev = await node.join(args.code, timeout=args.wait)
            except PairingFailed as e:
                emit("join_failed", error_type=type(e).__name__, reject=e.code.name)
                return 0
            emit("paired", peer=str(dev.endpoint_id), seconds=round(time.monotonic() - t, 3),
                 sas=node.last_sas(dev.endpoint_id))
        elif args.mode == "reconnect":
            peer = node.device(EndpointId.parse(args.peer))
            t = time.monotonic()
            await agent.request_n(peer, 1, b"first")
            took = time.monotonic() - t
            emit("reconnected", seconds=round(took, 3), paths=agent.conn_paths(peer.endpoint_id))
            rtts = await agent.request_n(peer, args.requests, b"msg")
            await asyncio.sleep(0.5)
            ok = await wait_for(lambda: node.on_lan(peer), 10)
            emit("exchanged", requests=len(rtts) + 1, rtt_ms=rtts, paths=agent.conn_paths(peer.endpoint_id),
                 on_lan=ok, lan_appeared_at=agent.first_event("lan_appeared"),
                 cache={k: getattr(node.cache.stats(), k) for k in ("dials", "dial_failures", "live")})
            extra["reconnect_s"] = round(took, 3)
        # serve (and everyone after their part): answer until stop; "ping N" talks back.
        while line := await reader.readline():
            cmd = line.decode().split()
            if not cmd:
                continue
            if cmd[0] == "stop":
                break
            if cmd[0] == "ping" and len(cmd) == 2:
                devs = node.devices()
                if len(devs) != 1:
                    emit("error", error=f"ping: {len(devs)} paired devices")
                    return 1
                rtts = await agent.request_n(devs[0], int(cmd[1]), b"back")
                emit("pinged", requests=len(rtts), rtt_ms=rtts, paths=agent.conn_paths(devs[0].endpoint_id),
                     on_lan=node.on_lan(devs[0]))
        agent.done(**extra)
        return 0
    finally:
        follow.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await node.close()


async def wait_for(cond: Any, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


# ------------------------------------------------------------------ raw endpoints


async def run_endpoint(args: argparse.Namespace) -> int:
    ep = await Endpoint.bind(LAN, alpns=[TEST_ALPN])
    seen: dict[str, list[str]] = {}

    async def watch() -> None:
        async for ev in ep.lan_events():
            if ev.event == "discovered":
                seen[str(ev.id)] = list(ev.addrs)
                emit("lan_event", kind=ev.event, id=str(ev.id), addrs=list(ev.addrs))

    watcher = asyncio.create_task(watch())
    emit("open", id=str(ep.id), sockets=ep.bound_sockets())
    try:
        if args.mode == "endpoint-serve":
            async def serve() -> None:
                while (conn := await ep.accept()) is not None:
                    conn.serve(lambda req: b"echo:" + req)
                    emit("accepted", peer=str(conn.remote_id))

            server = asyncio.create_task(serve())
            reader = await stdin_reader()
            expected: list[str] = []
            while line := await reader.readline():
                if line.split()[:1] == [b"stop"]:
                    expected = [w.decode() for w in line.split()[1:]]
                    break
            server.cancel()
            # mDNS answers may be lost or late: give the named devices time to be heard
            await wait_for(lambda: all(i in seen for i in expected), args.listen)
            emit("done", lan_seen=seen)
            return 0
        target = EndpointId.parse(args.peer)
        # Listen first: whether the target's advertisements reach this device on their own.
        # (The crate reports only passive discoveries: an id found while being dialed is not.)
        await wait_for(lambda: str(target) in seen, args.listen)
        out: dict[str, Any] = {"timeout": args.timeout, "listened_s": args.listen,
                               "saw_target_on_lan": str(target) in seen}
        t = time.monotonic()
        try:
            conn = await ep.connect(target, TEST_ALPN, timeout=args.timeout)
            out["connect_s"] = round(time.monotonic() - t, 3)
            reply = await asyncio.wait_for(conn.request(b"hello"), 10)
            out.update(ok=reply == b"echo:hello", paths=paths_of(conn))
            conn.close(0, b"bye")
        except (IrohPairError, TimeoutError) as e:
            out.update(ok=False, error_type=type(e).__name__, error=str(e)[:300])
        out["elapsed_s"] = round(time.monotonic() - t, 3)
        out["lan_seen"] = seen
        emit("dial", **out)
        reader = await stdin_reader()  # stay on the LAN, announcing, until the lab is done
        while await reader.readline():
            pass
        return 0
    finally:
        watcher.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await ep.close()


async def amain(args: argparse.Namespace) -> int:
    try:
        if args.mode == "capture":
            return await run_capture(args)
        if args.mode.startswith("endpoint-"):
            return await run_endpoint(args)
        return await run_node(args)
    except Exception as e:  # reported to the harness, which fails the scenario
        emit("error", error=f"{type(e).__name__}: {e}"[:2000])
        return 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--mode", required=True, choices=("host", "join", "serve", "reconnect", "capture",
                                                     "endpoint-serve", "endpoint-dial"))
    p.add_argument("--label", default="agent")
    p.add_argument("--data", help="the node's data directory")
    p.add_argument("--code", help="join: the spoken code")
    p.add_argument("--peer", help="reconnect / endpoint-dial: the EndpointId to reach")
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--ttl", type=float, default=120.0)
    p.add_argument("--wait", type=float, default=60.0, help="host/join: how long pairing may take")
    p.add_argument("--timeout", type=float, default=10.0, help="endpoint-dial: the connect timeout")
    p.add_argument("--listen", type=float, default=5.0,
                   help="endpoint-dial: at most this long, watch the LAN for the target before dialing; "
                        "endpoint-serve: at most this long, wait to hear the ids named by stop")
    p.add_argument("--iface-ip", help="capture: the device's IPv4 address (joins the group there)")
    args = p.parse_args()
    if args.mode in ("host", "join", "serve", "reconnect", "capture") and not args.data:
        p.error("--data is needed")
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
