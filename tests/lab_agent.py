#!/usr/bin/env python3
"""One iroh-pair node inside a lab device (or on loopback): pairs, messages, reports JSON lines.

Started by the lab harness (``rust/lab``, ``iroh-pair-lab``) in a device's network namespace, or
by ``bench/soak.py`` on loopback. It uses only the package's public API: :class:`Node` with the
lab's relay and lookup servers, ``host_pairing``/``join``, ``request``, ``on_message``,
``events``, and the connection's ``paths()``/``path_events()``.

Every line on stdout is one JSON object with ``event`` and ``at`` (seconds since the agent
started). Commands arrive on stdin, one per line: ``stop`` (finish and exit; EOF means the
same) and ``mark NAME`` (record the time of NAME, e.g. ``link_up``).

Roles:

* ``host``: hosts a pairing code (prints ``code``), waits for the joiner (``paired``), answers
  messages until ``stop``, then prints ``done`` with what it received.
* ``join``: joins with ``--code`` (``paired``), then does its ``--work``:

  - ``direct``: keeps requests flowing until the selected path is direct (``direct``);
  - ``relayed``: watches the paths for ``--observe`` s, sends ``--transfer-mib`` MiB (in
    4 MiB messages, each answered with its SHA-256) and ``--requests`` requests;
  - ``steady``: numbered messages until ``stop``; prints ``steady`` after 20 and
    ``recovered`` at the first one through after ``mark link_up``;
  - ``soak``: numbered messages for ``--minutes``, a ``sample`` line every ``--sample-every``
    seconds (messages, the interval's latency p50/p99/max and histogram, RSS, open fds);
    ``--resume`` (no ``--code``): a restarted joiner continues with the peer it paired with
    before, at the message its outbox file (``soak-outbox`` in ``--data``) names, under the
    same message id (what ``bench/soak.py`` uses after killing a joiner).

Constant-size state (issue #35): whatever runs for an hour keeps no per-message record. The
receiver keeps the ids it got in :class:`IdWindow` (a bitmap window over the id space plus
counters for repeats and gaps), the sender its latencies in :class:`LatencyHistogram` (fixed
log-spaced buckets: p50/p99 within 2%, max exact), reset every sample interval; the host also
prints a ``sample`` line (RSS, fds, receive counters) every ``--sample-every`` seconds instead
of keeping them. ``--leak`` (tests only) makes the host's handler keep every payload: the
deliberate leak with which ``tests/test_soak.py`` checks that the soak's RSS check can fail.

Application-level exactly-once: the sender retries each message until it is acknowledged,
always under the same ``message_id`` (``Node.request(..., message_id=...)``), so the receiving
node's duplicate filter hands it to the application at most once; a retry of a message that
was handled but whose reply was lost comes back as ``RemoteError(DUPLICATE)``, which counts as
delivered. The payload also carries a sequence number (``seq:N:``) so that the receiver can
count deliveries per message and report any repeat: that is what the outage test checks.

Network options: ``--relay URL --pkarr-url URL --dns-origin DOMAIN --dns-server IP:PORT`` (the
lab's servers) and ``--ca-cert FILE`` (the lab CA, PEM: trusted for the relay's QUIC address
discovery, which is how a node behind NAT learns its public address), or ``--local`` (loopback
only: no relay, no lookup).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import sys
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from iroh_pair.errors import IrohPairError, RemoteError
from iroh_pair.protocol.constants import StreamErrorCode as MessageErrorCode
from iroh_pair.protocol.messaging import new_message_id
from iroh_pair import Node, NodeEvent
from iroh_pair.protocol import ALPN
from iroh_pair.store import PairedDevice
from iroh_pair.transport import Connection, LookupConfig, NetworkOptions

T0 = time.monotonic()
CHUNK = 4 * 1024 * 1024


def now() -> float:
    return round(time.monotonic() - T0, 3)


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout."""
    print(json.dumps({"event": event, "at": now(), **fields}), flush=True)


def rss_kb() -> int:
    """This process's resident set size in KiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory_kb() -> dict[str, int]:
    """RSS split into anonymous (heap, stacks: where a leak grows) and file-backed pages (the
    extension's and the interpreter's code and data, paged in the first time a path runs, e.g. at
    the first reconnect), and the thread count (Linux /proc)."""
    out = {"rss_anon_kb": 0, "rss_file_kb": 0, "threads": 0}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "RssAnon":
            out["rss_anon_kb"] = int(value.split()[0])
        elif key == "RssFile":
            out["rss_file_kb"] = int(value.split()[0])
        elif key == "Threads":
            out["threads"] = int(value.split()[0])
    return out


def open_fds() -> int:
    """How many file descriptors this process has open (Linux /proc)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


class LatencyHistogram:
    """Latencies in fixed log-spaced buckets (HDR-style, constant size): bucket ``i`` holds
    ``[MIN * G**i, MIN * G**(i+1))`` seconds, so a quantile read from it is within ``G - 1``
    (4%, reported at the bucket's geometric middle: within 2%) of the true one; ``max`` is
    exact. ``counts`` is a plain list, ``sparse()`` its non-zero buckets (what a ``sample``
    line carries, so a harness can merge intervals).

    >>> h = LatencyHistogram()
    >>> for x in (0.001, 0.002, 0.003): h.add(x)
    >>> round(h.quantile(0.5) * 1000, 1), h.max
    (2.0, 0.003)
    """

    MIN = 1e-5  # 10 µs
    G = 1.04
    BUCKETS = 420  # up to MIN * G**420 ≈ 140 s; longer ones land in the last bucket

    def __init__(self) -> None:
        self.counts = [0] * self.BUCKETS
        self.n = 0
        self.max = 0.0
        self.total = 0.0

    @classmethod
    def index(cls, seconds: float) -> int:
        if seconds <= cls.MIN:
            return 0
        return min(cls.BUCKETS - 1, int(math.log(seconds / cls.MIN) / math.log(cls.G)))

    @classmethod
    def value(cls, i: int) -> float:
        return float(cls.MIN * cls.G ** (i + 0.5))

    def add(self, seconds: float) -> None:
        self.counts[self.index(seconds)] += 1
        self.n += 1
        self.total += seconds
        self.max = max(self.max, seconds)

    def merge_sparse(self, sparse: dict[str, int], mx: float) -> None:
        for k, c in sparse.items():
            self.counts[int(k)] += c
            self.n += c
        self.max = max(self.max, mx)

    def quantile(self, q: float) -> float | None:
        if self.n == 0:
            return None
        rank = max(1, math.ceil(q * self.n))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return min(self.value(i), self.max)
        return self.max

    def sparse(self) -> dict[str, int]:
        return {str(i): c for i, c in enumerate(self.counts) if c}

    def summary(self) -> dict[str, Any]:
        return {"n": self.n, "p50_ms": ms(self.quantile(0.5)), "p99_ms": ms(self.quantile(0.99)),
                "max_ms": ms(self.max) if self.n else None}


class IdWindow:
    """The message ids a receiver got, in constant space: a bitmap over ``[base, base+size)``
    plus counters. Ids arrive roughly in order (the sender retries each until acknowledged);
    when an id beyond the window arrives, the window slides and every id it leaves behind
    without having seen it counts as missing (the first 50 are kept). A second bitmap marks ids
    seen more than once, so ``exactly_once`` is exact within the window.

    >>> w = IdWindow(64)
    >>> for n in (0, 1, 1, 3): w.add(n)
    >>> w.report()["unique"], w.report()["repeated_deliveries"], w.report()["missing"]
    (3, 1, [2])
    """

    def __init__(self, size: int = 1 << 16) -> None:
        self.size = size - size % 8
        self.base = 0
        self.bits = bytearray(self.size // 8)
        self.rep = bytearray(self.size // 8)
        self.unique = 0
        self.deliveries = 0
        self.repeated = 0  # deliveries beyond the first, per id
        self.repeated_ids = 0  # ids delivered more than once
        self.below = 0  # ids below the window (already slid past): counted as repeats
        self.max_id = -1
        self.missing_slid = 0
        self.missing_first: list[int] = []

    def _slide(self, n: int) -> None:
        """Moves the window so that it ends at ``n`` (whole bytes): every id it leaves behind
        unseen is missing (all are below ``n``, which has just arrived)."""
        shift = max(n - (self.base + self.size) + 1, self.size // 4)  # a quarter at least
        shift = -(-shift // 8) * 8  # whole bytes
        nbytes = shift // 8
        gone = self.bits[:nbytes]
        seen = sum(bin(b).count("1") for b in gone)
        self.missing_slid += shift - seen
        if len(self.missing_first) < 50:
            for i in range(self.base, self.base + shift):
                off = i - self.base
                if off >= self.size or not self.bits[off >> 3] >> (off & 7) & 1:
                    self.missing_first.append(i)
                    if len(self.missing_first) == 50:
                        break
        if nbytes >= len(self.bits):
            self.bits = bytearray(len(self.bits))
            self.rep = bytearray(len(self.rep))
        else:
            self.bits = self.bits[nbytes:] + bytearray(nbytes)
            self.rep = self.rep[nbytes:] + bytearray(nbytes)
        self.base += shift

    def add(self, n: int) -> None:
        """Records one delivery of id ``n`` (``n >= 0``)."""
        self.deliveries += 1
        if n < self.base:
            self.below += 1
            self.repeated += 1
            return
        if n >= self.base + self.size:
            self._slide(n)
        off = n - self.base
        byte, bit = off >> 3, 1 << (off & 7)
        if self.bits[byte] & bit:
            self.repeated += 1
            if not self.rep[byte] & bit:
                self.rep[byte] |= bit
                self.repeated_ids += 1
        else:
            self.bits[byte] |= bit
            self.unique += 1
        self.max_id = max(self.max_id, n)

    def report(self) -> dict[str, Any]:
        missing = list(self.missing_first)
        count = self.missing_slid
        for i in range(self.base, self.max_id + 1):
            off = i - self.base
            if not self.bits[off >> 3] >> (off & 7) & 1:
                count += 1
                if len(missing) < 50:
                    missing.append(i)
        return {
            "unique": self.unique,
            "deliveries": self.deliveries,
            "repeated_deliveries": self.repeated,
            "repeated_ids": self.repeated_ids,
            "exactly_once": self.unique - self.repeated_ids,
            "below_window": self.below,
            "applied": self.unique,  # once per id, by construction of handle()
            "max_id": self.max_id,
            "missing": missing,
            "missing_count": count,
        }


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 2)


class PathWatch:
    """Follows the peer's connection in the node's cache (a new one after a redial): every path
    event, every path kind ever listed by ``paths()``, and the selected kind over time."""

    def __init__(self, node: Node, peer: PairedDevice) -> None:
        self.node = node
        self.peer = peer
        # bounded, for hour-long soaks: the last path events, the first selected kinds
        self.log: deque[dict[str, Any]] = deque(maxlen=200)
        self.kinds_listed: set[str] = set()
        self.selected_seq: list[str] = []  # distinct consecutive selected kinds (first 100)
        self.selected_changes = 0
        self.conn_ids: deque[int] = deque(maxlen=20)
        self.connections = 0
        self.direct_at: float | None = None
        self._watched: Connection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        self._last_selected: str | None = None

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._poll()))

    def stop(self) -> None:
        for t in self._tasks:
            t.cancel()

    def selected(self) -> str | None:
        conn = self._watched
        if conn is None:
            return None
        for p in conn.paths():
            if p.selected:
                return p.kind
        return None

    def _note(self, conn: Connection) -> None:
        for p in conn.paths():
            self.kinds_listed.add(p.kind)
            if p.selected:
                if self._last_selected != p.kind:
                    self._last_selected = p.kind
                    self.selected_changes += 1
                    if len(self.selected_seq) < 100:
                        self.selected_seq.append(p.kind)
                    self.log.append({"at": now(), "selected": p.kind, "addr": p.addr})
                    emit("path", selected=p.kind, addr=p.addr, conn=conn.stable_id)
                    self._changed.set()
                if p.kind == "direct" and self.direct_at is None:
                    self.direct_at = time.monotonic()

    async def _poll(self) -> None:
        while True:
            conn = self.node.cache.peek(self.peer.endpoint_id, ALPN)
            if conn is not None and conn is not self._watched:
                self._watched = conn
                self.conn_ids.append(conn.stable_id)
                self.connections += 1
                emit("connection", conn=conn.stable_id, side=conn.side, n=self.connections)
                self._tasks.append(asyncio.create_task(self._events(conn)))
            if self._watched is not None and not self._watched.is_closed:
                self._note(self._watched)
            await asyncio.sleep(0.1)

    async def _events(self, conn: Connection) -> None:
        with contextlib.suppress(IrohPairError):
            async for ev in conn.path_events():
                if ev.event == "snapshot":
                    entry: dict[str, Any] = {
                        "at": now(), "event": "snapshot",
                        "paths": [f"{p.kind}{'*' if p.selected else ''}" for p in ev.paths],
                    }
                    for p in ev.paths:
                        self.kinds_listed.add(p.kind)
                else:
                    entry = {"at": now(), "event": ev.event, "kind": ev.kind, "addr": ev.addr}
                    if ev.kind:
                        self.kinds_listed.add(ev.kind)
                self.log.append(entry)
                # the line's own "event" is "path_event"; the path event's name goes in "what"
                emit("path_event", conn=conn.stable_id, what=entry["event"],
                     **{k: v for k, v in entry.items() if k not in ("at", "event")})
                if not conn.is_closed:
                    self._note(conn)

    async def wait_direct(self, limit: float) -> bool:
        deadline = time.monotonic() + limit
        while self.direct_at is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 0.2)):
                    await self._changed.wait()
        return True

    def summary(self) -> dict[str, Any]:
        return {
            "selected_sequence": self.selected_seq,
            "kinds_listed": sorted(self.kinds_listed),
            "direct_ever_listed": "direct" in self.kinds_listed,
            "direct_ever_selected": "direct" in self.selected_seq,
            "selected_changes": self.selected_changes,
            "connections_seen": self.connections,
            "path_log": list(self.log)[-60:],
        }


class Agent:
    def __init__(self, args: argparse.Namespace, node: Node) -> None:
        self.args = args
        self.node = node
        self.peer: PairedDevice | None = None
        self.watch: PathWatch | None = None
        self.marks: dict[str, float] = {}
        self.stop = asyncio.Event()
        self.node_events: Counter[str] = Counter()
        self.rss: deque[tuple[float, int]] = deque(maxlen=120)  # the last 10 minutes at 5 s
        # receiver side
        self.ids = IdWindow()
        self.leaked: list[bytes] = []  # --leak: every payload, kept (the deliberate leak)
        self.blob_bytes = 0
        self.requests_answered = 0

    # ---------------------------------------------------------------- plumbing

    async def read_commands(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            cmd = line.decode().strip().split()
            if not cmd:
                continue
            if cmd[0] == "stop":
                break
            if cmd[0] == "mark" and len(cmd) == 2:
                self.marks[cmd[1]] = time.monotonic()
                emit("marked", name=cmd[1])
        self.stop.set()

    async def follow_events(self) -> None:
        ev: NodeEvent
        async for ev in self.node.events():
            self.node_events[ev.kind] += 1
            emit("node_event", kind=ev.kind, path=ev.path, detail=ev.detail[:120])

    async def sample_rss(self) -> None:
        """RSS every ``--sample-every`` s (the last 120 kept); the host also prints each as a
        ``sample`` line with its open fds and receive counters (the joiner's soak prints its own)."""
        while True:
            kb = rss_kb()
            self.rss.append((now(), kb))
            if self.args.role == "host":
                ids = self.ids
                emit("sample", rss_kb=kb, **memory_kb(), fds=open_fds(), unique=ids.unique, repeated=ids.repeated,
                     max_id=ids.max_id, leaked=len(self.leaked))
            await asyncio.sleep(self.args.sample_every)

    def paired(self, dev: PairedDevice) -> None:
        self.peer = dev
        self.watch = PathWatch(self.node, dev)
        self.watch.start()
        emit("paired", peer=str(dev.endpoint_id), name=dev.name, sas=self.node.last_sas(dev.endpoint_id))

    def common(self) -> dict[str, Any]:
        st = self.node.cache.stats()
        return {
            "label": self.args.label,
            "cache": {k: getattr(st, k) for k in ("dials", "dial_failures", "adoptions", "evictions",
                                                   "retries", "duplicates", "live")},
            "node_events": dict(self.node_events),
            "counters": dict(self.node.counters),
            "paths": self.watch.summary() if self.watch else None,
            "rss_kb": list(self.rss),
            "fds": open_fds(),
            # what the endpoint knows of itself at the end: with QUIC address discovery at the
            # relay this includes the NAT-mapped public address
            "ip_addrs": self.node.endpoint.addr().ip_addrs,
        }

    # ---------------------------------------------------------------- host

    def handle(self, dev: PairedDevice, data: bytes) -> bytes:
        if data.startswith(b"seq:"):
            n = int(data.split(b":", 2)[1])
            self.ids.add(n)  # the application applies n only on its first delivery
            if self.args.leak:
                self.leaked.append(data)
            return b"ack:%d" % n
        if data.startswith(b"blob:"):
            self.blob_bytes += len(data) - 5
            return hashlib.sha256(data[5:]).digest()
        self.requests_answered += 1
        return b"echo:" + data

    async def run_host(self) -> None:
        self.node.on_message(self.handle)
        # The code carries the endpoint's ticket: wait until the endpoint has its home relay,
        # or the ticket holds only private addresses the joiner cannot reach.
        t = time.monotonic()
        if not self.args.local:  # without a relay there is no "online"
            async with asyncio.timeout(30):
                await self.node.endpoint.online()
        addr = self.node.endpoint.addr()
        emit("online", seconds=round(time.monotonic() - t, 3), relay_urls=addr.relay_urls, ip_addrs=addr.ip_addrs)
        hosted = await self.node.host_pairing(ttl=120)
        emit("code", code=str(hosted.code))
        self.paired(await hosted.wait(90))
        await self.stop.wait()
        emit(
            "done",
            role="host",
            received=self.ids.report(),
            leaked=len(self.leaked),
            blob_bytes=self.blob_bytes,
            requests_answered=self.requests_answered,
            **self.common(),
        )

    # ---------------------------------------------------------------- joiner

    async def run_join(self) -> None:
        started = time.monotonic()
        if self.args.resume:  # restarted: the peer paired before, from the registry
            devs = self.node.devices()
            if len(devs) != 1:
                raise RuntimeError(f"--resume needs exactly one paired device, found {len(devs)}")
            dev = devs[0]
        else:
            dev = await self.node.join(self.args.code, timeout=60)
        paired_at = time.monotonic()
        self.paired(dev)
        addr = self.node.endpoint.addr()
        emit("addrs", relay_urls=addr.relay_urls, ip_addrs=addr.ip_addrs)
        work = {"direct": self.work_direct, "relayed": self.work_relayed,
                "steady": self.work_steady, "soak": self.work_soak}[self.args.work]
        result = await work(dev, started, paired_at)
        emit("done", role="join", work=self.args.work, pair_s=round(paired_at - started, 3),
             **result, **self.common())

    async def ping(self, dev: PairedDevice, i: int, timeout: float = 5.0) -> float:
        t = time.monotonic()
        msg = b"ping:%d" % i
        reply = await self.node.request(dev, msg, timeout=timeout)
        if reply != b"echo:" + msg:
            raise AssertionError(f"bad reply {reply[:40]!r}")
        return time.monotonic() - t

    async def traffic(self, dev: PairedDevice, every: float, errors: list[str]) -> None:
        i = 0
        while True:
            try:
                await self.ping(dev, i)
            except (IrohPairError, TimeoutError) as e:
                errors.append(repr(e)[:200])
            i += 1
            await asyncio.sleep(every)

    async def work_direct(self, dev: PairedDevice, started: float, paired_at: float) -> dict[str, Any]:
        assert self.watch is not None
        errors: list[str] = []
        t = asyncio.create_task(self.traffic(dev, 0.1, errors))
        try:
            ok = await self.watch.wait_direct(self.args.direct_timeout)
        finally:
            t.cancel()
        out: dict[str, Any] = {"direct": ok, "traffic_errors": errors[:5]}
        if ok and self.watch.direct_at is not None:
            out["time_to_direct_s"] = round(self.watch.direct_at - paired_at, 3)
            out["time_to_direct_from_join_s"] = round(self.watch.direct_at - started, 3)
            emit("direct", time_to_direct_s=out["time_to_direct_s"], sequence=self.watch.selected_seq)
            rtts = [await self.ping(dev, 10_000 + i) for i in range(20)]
            out["direct_rtt_p50_ms"] = ms(percentile(rtts, 0.5))
            out["selected_after_pings"] = self.watch.selected()
        return out

    async def work_relayed(self, dev: PairedDevice, started: float, paired_at: float) -> dict[str, Any]:
        assert self.watch is not None
        errors: list[str] = []
        t = asyncio.create_task(self.traffic(dev, 0.1, errors))
        await asyncio.sleep(self.args.observe)
        t.cancel()
        emit("observed", selected=self.watch.selected(), sequence=self.watch.selected_seq)
        total = self.args.transfer_mib * 1024 * 1024
        sent = 0
        hashes_ok = True
        t0 = time.monotonic()
        while sent < total:
            chunk = os.urandom(min(CHUNK, total - sent))
            reply = await self.node.request(dev, b"blob:" + chunk, timeout=120)
            hashes_ok &= reply == hashlib.sha256(chunk).digest()
            sent += len(chunk)
        secs = time.monotonic() - t0
        emit("transfer", bytes=sent, seconds=round(secs, 3), mib_per_s=round(sent / 2**20 / secs, 2),
             selected=self.watch.selected())
        rtts = [await self.ping(dev, i, timeout=10) for i in range(self.args.requests)]
        return {
            "traffic_errors": errors[:5],
            "transfer_bytes": sent,
            "transfer_s": round(secs, 3),
            "transfer_mib_per_s": round(sent / 2**20 / secs, 2),
            "transfer_hashes_ok": hashes_ok,
            "requests_ok": len(rtts),
            "request_p50_ms": ms(percentile(rtts, 0.5)),
            "request_p99_ms": ms(percentile(rtts, 0.99)),
            "selected_at_end": self.watch.selected(),
        }

    async def send_numbered(self, dev: PairedDevice, n: int, stats: dict[str, Any],
                            mid: bytes | None = None) -> float:
        """Sends message ``n`` (under ``mid``, default a fresh id) until it is acknowledged;
        returns its latency (last attempt)."""
        payload = b"seq:%d:" % n + b"x" * self.args.payload_bytes
        mid = mid or new_message_id()
        attempt = 0
        while True:
            attempt += 1
            t = time.monotonic()
            try:
                reply = await self.node.request(
                    dev, payload, timeout=self.args.attempt_timeout, message_id=mid
                )
            except RemoteError as e:
                if e.code != MessageErrorCode.DUPLICATE:
                    raise
                stats["duplicates_answered"] += 1  # handled before; only the reply was lost
                return time.monotonic() - t
            except (IrohPairError, TimeoutError) as e:
                stats["failed_attempts"] += 1
                if len(stats["errors"]) < 8:
                    stats["errors"].append(f"{now()}: {type(e).__name__}: {str(e)[:150]}")
                await asyncio.sleep(0.2)
                continue
            if reply != b"ack:%d" % n:
                raise AssertionError(f"message {n}: bad ack {reply[:40]!r}")
            if attempt > 1:
                stats["retried_messages"] += 1
            return time.monotonic() - t

    async def work_steady(self, dev: PairedDevice, started: float, paired_at: float) -> dict[str, Any]:
        stats: dict[str, Any] = {"failed_attempts": 0, "retried_messages": 0, "duplicates_answered": 0,
                                 "errors": []}
        last_ack = time.monotonic()
        max_gap = 0.0
        recovered: float | None = None
        n = 0
        while not self.stop.is_set():
            await self.send_numbered(dev, n, stats)
            acked = time.monotonic()
            max_gap = max(max_gap, acked - last_ack)
            last_ack = acked
            n += 1
            if n == 20:
                emit("steady", acked=n)
            up = self.marks.get("link_up")
            if recovered is None and up is not None:
                recovered = acked - up
                down = self.marks.get("link_down")
                emit("recovered", after_link_up_s=round(recovered, 3), n=n,
                     since_link_down_s=round(acked - down, 3) if down else None,
                     selected=self.watch.selected() if self.watch else None)
            await asyncio.sleep(self.args.interval)
        return {"sent": n, "acked": n, **stats, "max_gap_s": round(max_gap, 3),
                "recovery_after_link_up_s": None if recovered is None else round(recovered, 3),
                "selected_at_end": self.watch.selected() if self.watch else None}

    def outbox(self) -> tuple[int, bytes | None]:
        """The soak's outbox file: the next message number and its message id, written before
        the message's first attempt, so that a killed and restarted joiner (``--resume``) sends
        the same message under the same id (the receiver then answers DUPLICATE if it had it)."""
        try:
            n, mid = (self.args.data / "soak-outbox").read_text().split()
            return int(n), bytes.fromhex(mid)
        except (OSError, ValueError):
            return 0, None

    def write_outbox(self, n: int, mid: bytes) -> None:
        tmp = self.args.data / "soak-outbox.tmp"
        tmp.write_text(f"{n} {mid.hex()}\n")
        os.replace(tmp, self.args.data / "soak-outbox")

    async def work_soak(self, dev: PairedDevice, started: float, paired_at: float) -> dict[str, Any]:
        """Numbered messages until ``--minutes`` (from the agent's start) or ``stop``; constant
        state: the interval's :class:`LatencyHistogram` (reset at every ``sample`` line) and the
        whole run's, counters, and a ``stall`` line whenever an acknowledgement came more than
        1 s after the previous one (when the harness's faults are felt, and for how long)."""
        stats: dict[str, Any] = {"failed_attempts": 0, "retried_messages": 0, "duplicates_answered": 0,
                                 "errors": []}
        end = T0 + self.args.minutes * 60
        n, mid = self.outbox() if self.args.resume else (0, None)
        first = n
        if self.args.resume:
            emit("resumed", at_message=n, same_id=mid is not None)
        interval, whole = LatencyHistogram(), LatencyHistogram()
        next_sample = time.monotonic() + self.args.sample_every
        last_ack = time.monotonic()
        while time.monotonic() < end and not self.stop.is_set():
            mid = mid or new_message_id()
            self.write_outbox(n, mid)
            failed_before = stats["failed_attempts"]
            lat = await self.send_numbered(dev, n, stats, mid)
            acked = time.monotonic()
            if acked - last_ack > 1.0:
                emit("stall", n=n, gap_s=round(acked - last_ack, 3),
                     failed_attempts=stats["failed_attempts"] - failed_before,
                     selected=self.watch.selected() if self.watch else None)
            last_ack = acked
            n += 1
            mid = None
            interval.add(lat)
            whole.add(lat)
            if acked >= next_sample:
                emit("sample", messages=n, rss_kb=rss_kb(), **memory_kb(), fds=open_fds(), **interval.summary(),
                     hist=interval.sparse(), failed_attempts=stats["failed_attempts"],
                     selected=self.watch.selected() if self.watch else None)
                interval = LatencyHistogram()
                next_sample = max(next_sample + self.args.sample_every, acked)
            await asyncio.sleep(self.args.interval)
        self.write_outbox(n, new_message_id())
        return {"sent": n, "acked": n, "first": first, **stats, **{f"whole_{k}": v for k, v in whole.summary().items()},
                "p50_ms": ms(whole.quantile(0.5)), "p99_ms": ms(whole.quantile(0.99)),
                "mean_ms": ms(whole.total / whole.n) if whole.n else None,
                "selected_at_end": self.watch.selected() if self.watch else None}


def node_options(args: argparse.Namespace) -> NetworkOptions:
    if args.local:
        return NetworkOptions.loopback()
    if not (args.relay and args.pkarr_url and args.dns_origin):
        raise SystemExit("need --relay, --pkarr-url and --dns-origin (or --local)")
    return NetworkOptions.self_hosted(
        [args.relay],
        LookupConfig(args.pkarr_url, args.dns_origin, args.dns_server),
        bind_addrs=(args.bind,) if args.bind else (),  # default: every interface of the device
        ca_certs=Path(args.ca_cert).read_bytes() if args.ca_cert else None,
    )


async def amain(args: argparse.Namespace) -> int:
    node = await Node.open(args.data, name=args.label, options=node_options(args))
    agent = Agent(args, node)
    tasks = [asyncio.create_task(c) for c in (agent.read_commands(), agent.follow_events(), agent.sample_rss())]
    emit("open", id=str(node.id), role=args.role, addrs=node.endpoint.bound_sockets())
    try:
        if args.role == "host":
            await agent.run_host()
        else:
            await agent.run_join()
        return 0
    except Exception as e:  # reported to the harness, which fails the scenario
        emit("error", error=f"{type(e).__name__}: {e}"[:2000])
        return 1
    finally:
        if agent.watch:
            agent.watch.stop()
        for t in tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await node.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--role", choices=("host", "join"), required=True)
    p.add_argument("--label", default="agent")
    p.add_argument("--data", required=True, help="the node's data directory")
    p.add_argument("--relay")
    p.add_argument("--pkarr-url")
    p.add_argument("--dns-origin")
    p.add_argument("--dns-server")
    p.add_argument("--ca-cert", help="extra trusted CA (PEM) for the relay's QUIC address discovery")
    p.add_argument("--local", action="store_true", help="loopback only: no relay, no lookup")
    p.add_argument("--bind", help="with servers: bind this address only (e.g. 127.0.0.1:0)")
    p.add_argument("--code", help="join: the host's pairing code")
    p.add_argument("--work", choices=("direct", "relayed", "steady", "soak"), default="direct")
    p.add_argument("--direct-timeout", type=float, default=30.0)
    p.add_argument("--observe", type=float, default=8.0)
    p.add_argument("--transfer-mib", type=int, default=16)
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--interval", type=float, default=0.05, help="pause between numbered messages")
    p.add_argument("--attempt-timeout", type=float, default=5.0)
    p.add_argument("--minutes", type=float, default=1.0)
    p.add_argument("--sample-every", type=float, default=5.0)
    p.add_argument("--payload-bytes", type=int, default=64, help="numbered messages: filler bytes")
    p.add_argument("--resume", action="store_true",
                   help="join: restarted; use the device paired before and the soak's outbox file")
    p.add_argument("--leak", action="store_true",
                   help="host, tests only: the handler keeps every payload (a deliberate leak)")
    args = p.parse_args()
    args.data = Path(args.data)
    if args.role == "join" and not (args.code or args.resume):
        p.error("--role join needs --code (or --resume)")
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
