#!/usr/bin/env python3
"""Soak: steady messaging between paired nodes for a long time, with faults on a schedule;
exactly-once delivery, reconnects, latency per interval, flat memory and file descriptors.

Each pair is two processes of ``tests/lab_agent.py`` (a host and a joiner, the package's public
API only): the joiner sends numbered messages (one every ``--interval`` seconds, each retried
under the same message id until acknowledged) for ``--minutes``; both print a ``sample`` line
every 5 s (RSS, open fds; the joiner also the interval's latency histogram). The agents keep
constant-size state (a bitmap window of received ids, a fixed latency histogram), so RSS growth
is the library's. Two flavours:

* loopback (default): the agents run here, on 127.0.0.1, no relay;
* ``--lab``: through the simulated network (``iroh-pair-lab soak``): each device behind its own
  Moderate NAT, with the lab's relay and lookup servers (needs user namespaces and ``nft``).

``--faults`` injects faults every ``--fault-every`` seconds (default: 5 slots over the run), in
the cycle: the link of one joiner's device down for ``--outage`` s, a joiner process killed
(SIGKILL) and restarted (``--resume``: same data directory, same outbox), the relay restarted,
the lookup server restarted. Loopback has only the kill (no link, relay or lookup server);
single-device faults go to pair ``(k + k // cycle length) % pairs``
(every pair gets each kind in turn).

Report (printed, ``--json FILE`` and a plot ``FILE.png`` beside it), per pair: messages sent,
delivered exactly once, lost, repeated, connections used and reconnects (per fault), p50/p99/max
latency per ``--report-every`` interval and overall, and per process (each incarnation) RSS and
open fds over time (RSS also split into anonymous and file-backed pages, and threads), RSS growth
after ``--warmup`` in percent, the steady growth rate between faults in KiB/hour, and the RSS step
across each fault.

Memory is judged in three parts, because a fault is not steady traffic:

* the warm-up (default: 60 s, or long enough for 15,000 messages at ``--interval``, whichever is
  longer, at most half the run) covers what the library fills on purpose: up to 10,000 delivered
  message ids per device (docs/PROTOCOL.md, "delivered ids") held in the registry;
* between faults (a fault's start to 30 s after its end), the least-squares slope, weighted by
  stretch length, must stay under ``--rss-limit-kib-h`` (checked once the stretches add up to
  ``--slope-span`` seconds);
* at faults: the first fault of each kind a process sees runs code that never ran in it (iroh's
  reconnect paths are paged in and allocate once: about +1.6 MiB at a joiner's first outage);
  those steps together must stay under ``--first-fault-limit-kib``, and the mean step at the later
  faults of a kind, where a per-reconnect leak would show, under ``--fault-step-limit-kib``.

Exit status 1 when any check fails: lost or repeated messages; more than one connection or any
failed attempt without faults; a reconnect before the first fault, or more than 2 per fault
window, or a stall of more than 60 s after a fault; a process whose RSS grew more than
``--rss-limit`` percent after the warm-up, or breaks one of the memory limits above; fds growing
by more than ``--fd-limit``.

CI runs three minutes in the lab with faults (``tests/test_lab.py::test_soak_with_faults``);
``tests/test_soak.py`` checks that a leaking handler fails the RSS check. Long runs::

    python bench/soak.py --minutes 15 --pairs 4 --interval 0.01            # loopback
    python bench/soak.py --lab --minutes 60 --pairs 2 --faults --fault-every 180 --json bench/soak-lab.json

The lab binary is ``$IROH_PAIR_LAB_BIN`` or ``target/release/iroh-pair-lab``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
AGENT = ROOT / "tests" / "lab_agent.py"
sys.path.insert(0, str(ROOT / "tests"))
from lab_agent import LatencyHistogram  # noqa: E402  (the agents' bucket scheme)

T0 = time.monotonic()
FAULT_CYCLE_LAB = ("outage", "kill", "relay", "dns")
FAULT_CYCLE_LOOPBACK = ("kill", "relay", "dns")


def now() -> float:
    return round(time.monotonic() - T0, 3)


class Sink:
    """Every JSON line of every process, with ``src`` (label) and ``t`` (seconds since the soak
    started), in arrival order; thread-safe."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def add(self, obj: dict[str, Any]) -> None:
        with self.lock:
            self.lines.append(obj)

    def fault(self, **fields: Any) -> None:
        self.add({"src": "lab", "t": now(), "event": "fault", **fields})
        print(f"[{now():8.1f}] fault {fields}", flush=True)


class AgentProc:
    """One agent subprocess on loopback; its JSON lines go to the sink and a queue."""

    def __init__(self, argv: list[str], label: str, sink: Sink) -> None:
        self.label = label
        self.sink = sink
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  start_new_session=True)
        self.q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        assert self.p.stdout is not None
        threading.Thread(target=self._read, args=(self.p.stdout,), daemon=True).start()

    def _read(self, out: IO[str]) -> None:
        for line in out:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                obj["src"], obj["t"] = self.label, now()
                self.sink.add(obj)
                if obj.get("event") not in ("sample", "path_event", "node_event"):
                    self.q.put(obj)
        self.q.put(None)

    def wait(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                obj = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"{self.label}: no {event!r} within {timeout:.0f} s") from None
            if obj is None:
                raise RuntimeError(f"{self.label} exited before {event!r} (status {self.p.wait()})")
            if obj.get("event") == "error":
                raise RuntimeError(f"{self.label}: {obj.get('error')}")
            if obj.get("event") == event:
                return obj

    def command(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


def schedule(args: argparse.Namespace, cycle: tuple[str, ...]) -> list[tuple[float, str, int]]:
    """(seconds after the start of messaging, kind, target pair) of every fault."""
    if not args.faults:
        return []
    if args.fault_kinds:
        unknown = [k for k in args.fault_kinds if k not in cycle]
        if unknown:
            raise SystemExit(f"--fault-kinds: {', '.join(unknown)} not available here (choose from {', '.join(cycle)})")
        cycle = tuple(args.fault_kinds)
    total = args.minutes * 60
    every = args.fault_every or total / 5
    out = []
    k = 0
    while (k + 1) * every < total - 10:
        out.append(((k + 1) * every, cycle[k % len(cycle)], (k + k // len(cycle)) % args.pairs))
        k += 1
    return out


class Servers:
    """With ``--faults`` on loopback: the package's :class:`~iroh_pair.servers.LocalServers`
    (relay and lookup server on 127.0.0.1, restartable on the same ports), driven from a thread
    of their own. A restarted joiner finds its host through them, as after a real restart."""

    def __init__(self) -> None:
        import asyncio

        from iroh_pair.testing import LocalServers

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.s = LocalServers()
        self._run(self.s.start())

    def _run(self, coro: Any, timeout: float = 60) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def agent_args(self) -> list[str]:
        return self.s.cli_args() + ["--bind", "127.0.0.1:0"]

    def restart(self, which: str, down: float) -> None:
        stop, start = ((self.s.stop_relay, self.s.start_relay) if which == "relay"
                       else (self.s.stop_dns, self.s.start_dns))
        self._run(stop())
        time.sleep(down)
        self._run(start())

    def close(self) -> None:
        self._run(self.s.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)


def run_loopback(args: argparse.Namespace, sink: Sink) -> None:
    with tempfile.TemporaryDirectory(prefix="iroh-pair-soak-") as tmp:
        hosts: list[AgentProc] = []
        joins: list[AgentProc] = []
        servers = Servers() if args.faults else None
        net = servers.agent_args() if servers else ["--local"]
        base = [args.python, "-u", str(AGENT), *net, "--payload-bytes", str(args.payload_bytes)]
        join_args = ["--work", "soak", "--interval", str(args.interval)]
        try:
            for i in range(args.pairs):
                leak = ["--leak"] if args.leak else []
                host = AgentProc(base + ["--role", "host", "--label", f"host{i}", "--data", f"{tmp}/h{i}"] + leak,
                                 f"host{i}", sink)
                code = host.wait("code", 60)["code"]
                join = AgentProc(base + ["--role", "join", "--label", f"join{i}", "--data", f"{tmp}/j{i}",
                                         "--code", code, "--minutes", str(args.minutes)] + join_args, f"join{i}", sink)
                join.wait("paired", 60)
                host.wait("paired", 60)
                hosts.append(host)
                joins.append(join)
            start = time.monotonic()
            end = start + args.minutes * 60
            for at, kind, i in schedule(args, FAULT_CYCLE_LOOPBACK):
                time.sleep(max(0.0, start + at - time.monotonic()))
                if kind in ("relay", "dns"):
                    assert servers is not None
                    sink.fault(kind=kind, phase="start", down_s=args.server_down)
                    servers.restart(kind, args.server_down)
                    sink.fault(kind=kind, phase="end")
                    continue
                sink.fault(kind="kill", pair=i, phase="start", device=f"join{i}")
                joins[i].kill()
                time.sleep(1.0)
                left = (end - time.monotonic()) / 60
                joins[i] = AgentProc(base + ["--role", "join", "--label", f"join{i}", "--data", f"{tmp}/j{i}",
                                             "--resume", "--minutes", str(left)] + join_args, f"join{i}", sink)
                joins[i].wait("paired", 60)
                sink.fault(kind="kill", pair=i, phase="end", device=f"join{i}")
            for host, join in zip(hosts, joins):
                join.wait("done", max(60.0, end - time.monotonic() + 60))
                host.command("stop")
                host.wait("done", 30)
        finally:
            for p in joins + hosts:
                p.kill()
            if servers:
                servers.close()


def run_lab(args: argparse.Namespace, sink: Sink) -> None:
    lab = os.environ.get("IROH_PAIR_LAB_BIN") or str(ROOT / "target" / "release" / "iroh-pair-lab")
    argv = [lab, "soak", "--python", args.python, "--agent", str(AGENT), "--minutes", str(args.minutes),
            "--pairs", str(args.pairs), "--interval", str(args.interval), "--outage", str(args.outage)]
    if args.faults:
        argv += ["--faults", "--fault-every", str(args.fault_every or args.minutes * 60 / 5)]
        if args.fault_kinds:
            argv += ["--fault-kinds", ",".join(args.fault_kinds)]
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
        assert p.stdout is not None
        last: dict[str, Any] = {}
        deadline = time.monotonic() + args.minutes * 60 + 300
        for line in p.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue
            obj["lab_t"] = obj.get("t")
            obj["t"] = now()
            if obj.get("src") == "lab" and obj.get("event") in ("fault", "error", "result"):
                if obj["event"] == "fault":
                    print(f"[{now():8.1f}] fault {obj}", flush=True)
            if obj.get("event") != "result":
                sink.add(obj)
            last = obj
            if time.monotonic() > deadline:
                p.kill()
        code = p.wait()
        if code != 0 or last.get("event") != "result":
            err.seek(0)
            raise RuntimeError(f"iroh-pair-lab soak failed (exit {code}): {json.dumps(last)[:2000]}\n"
                               f"{err.read()[-3000:]}")


# ------------------------------------------------------------------------------------ report


def slope_kib_h(series: list[tuple[float, int]]) -> float | None:
    """Least-squares slope of RSS over time, KiB per hour."""
    if len(series) < 3:
        return None
    n = len(series)
    mt = sum(t for t, _ in series) / n
    mk = sum(k for _, k in series) / n
    var = sum((t - mt) ** 2 for t, _ in series)
    if var == 0:
        return None
    return round(sum((t - mt) * (k - mk) for t, k in series) / var * 3600, 1)


def incarnations(lines: list[dict[str, Any]], src: str) -> list[list[dict[str, Any]]]:
    """``src``'s lines split at each ``open`` (a process start)."""
    out: list[list[dict[str, Any]]] = []
    for e in lines:
        if e.get("src") != src:
            continue
        if e.get("event") == "open" or not out:
            out.append([])
        out[-1].append(e)
    return out


SETTLE_S = 30.0
"""Seconds after a fault ends during which a process's memory still belongs to the fault: the
reconnect, iroh's extra threads (back to two ~15 s after an outage) and the retried messages."""


def fault_windows(lines: list[dict[str, Any]]) -> list[tuple[float, float, str, int]]:
    """(start, end + settle, kind, n) of every fault, from its ``start``/``end`` lines."""
    ends = {f.get("n"): f["t"] for f in lines if f.get("event") == "fault" and f.get("phase") == "end"}
    out: list[tuple[float, float, str, int]] = []
    for f in lines:
        if f.get("event") == "fault" and f.get("phase") == "start":
            end = ends.get(f.get("n"), f["t"])
            out.append((f["t"], end + SETTLE_S, f["kind"], f.get("n", len(out))))
    return out


def memory_across_faults(after: list[tuple[float, int]], windows: list[tuple[float, float, str, int]]
                         ) -> dict[str, Any]:
    """Splits a process's post-warm-up RSS samples into what faults did and what steady traffic did.

    * steady: the stretches between fault windows (a fault's start to its end plus
      :data:`SETTLE_S`); their least-squares slopes, weighted by duration, give the steady growth
      rate in KiB/hour. Without faults this is the slope over the whole span.
    * per fault: the step across its window (the last sample before it to the first after it).
      The first fault of each kind a process sees runs code that never ran in it before (iroh's
      reconnect paths, paged in and allocated once); a leak shows as the same step again at the
      later faults of that kind, so those are checked on their own."""
    inside = [(a, b) for a, b, _, _ in windows]
    segs: list[list[tuple[float, int]]] = [[]]
    for t, kb in after:
        if any(a <= t <= b for a, b in inside):
            if segs[-1]:
                segs.append([])
            continue
        segs[-1].append((t, kb))
    num = den = 0.0
    for seg in segs:
        if len(seg) >= 3 and seg[-1][0] > seg[0][0]:
            sl = slope_kib_h(seg)
            if sl is not None:
                d = seg[-1][0] - seg[0][0]
                num, den = num + sl * d, den + d
    steps: list[dict[str, Any]] = []
    seen: set[str] = set()
    for a, b, kind, n in windows:
        pre = [kb for t, kb in after if t < a]
        post = [kb for t, kb in after if t > b]
        if not pre or not post:
            continue
        steps.append({"fault": n, "kind": kind, "step_kb": post[0] - pre[-1], "first_of_kind": kind not in seen})
        seen.add(kind)
    repeats = [x["step_kb"] for x in steps if not x["first_of_kind"]]
    return {"steady_span_s": round(den, 1), "steady_kib_h": round(num / den, 1) if den else None,
            "fault_steps": steps, "first_fault_steps_kb": sum(x["step_kb"] for x in steps if x["first_of_kind"]),
            "repeat_fault_steps": len(repeats),
            "repeat_fault_step_mean_kb": round(sum(repeats) / len(repeats), 1) if repeats else None}


def process_report(lines: list[dict[str, Any]], src: str, warmup: float, every: float) -> list[dict[str, Any]]:
    out = []
    windows = fault_windows(lines)
    for k, inc in enumerate(incarnations(lines, src)):
        samples = [e for e in inc if e.get("event") == "sample" and "rss_kb" in e]
        paired = next((e["t"] for e in inc if e.get("event") == "paired"), inc[0]["t"])
        after = [(e["t"], e["rss_kb"], e.get("fds", -1)) for e in samples if e["t"] >= paired + warmup]
        span = after[-1][0] - after[0][0] if len(after) > 1 else 0.0
        r: dict[str, Any] = {"proc": src, "incarnation": k, "start_t": inc[0]["t"], "end_t": inc[-1]["t"],
                             "samples": len(samples), "post_warmup_span_s": round(span, 1)}
        if len(after) >= 2:
            warm, end = after[0][1], after[-1][1]
            r.update(warm_kb=warm, end_kb=end, max_kb=max(x[1] for x in after),
                     growth_kb=end - warm, growth_pct=round(100.0 * (end - warm) / warm, 2),
                     slope_kib_h=slope_kib_h([(t, kb) for t, kb, _ in after]),
                     # the second half alone: a plateau reached early is not an ongoing leak
                     slope_second_half_kib_h=slope_kib_h([(t, kb) for t, kb, _ in after
                                                          if t >= after[0][0] + span / 2]),
                     fds_first=after[0][2], fds_last=after[-1][2],
                     fds_min=min(x[2] for x in after), fds_max=max(x[2] for x in after))
            r.update(memory_across_faults([(t, kb) for t, kb, _ in after], windows))
            split = [e for e in samples if e["t"] >= paired + warmup and "rss_anon_kb" in e]
            if len(split) >= 2:
                # anonymous pages (heap, stacks) vs file-backed ones (code paged in), threads
                r.update(anon_warm_kb=split[0]["rss_anon_kb"], anon_end_kb=split[-1]["rss_anon_kb"],
                         anon_slope_kib_h=slope_kib_h([(e["t"], e["rss_anon_kb"]) for e in split]),
                         file_warm_kb=split[0]["rss_file_kb"], file_end_kb=split[-1]["rss_file_kb"],
                         threads_first=split[0]["threads"], threads_last=split[-1]["threads"],
                         threads_max=max(e["threads"] for e in split))
        else:
            r.update(warm_kb=None, end_kb=None, growth_pct=None, slope_kib_h=None)
        # over time, one row per report interval (the interval's last sample)
        rows: dict[int, dict[str, Any]] = {}
        for e in samples:
            rows[int(e["t"] // every)] = {"t": e["t"], "rss_kb": e["rss_kb"], "fds": e.get("fds"),
                                          **{k: e[k] for k in ("rss_anon_kb", "rss_file_kb", "threads") if k in e}}
        r["series"] = list(rows.values())
        out.append(r)
    return out


def pair_report(lines: list[dict[str, Any]], i: int, faults: list[dict[str, Any]], end_t: float,
                args: argparse.Namespace) -> dict[str, Any]:
    h, j = f"host{i}", f"join{i}"
    mine = [e for e in lines if e.get("src") in (h, j)]
    jdone = [e for e in mine if e["src"] == j and e.get("event") == "done"]
    hdone = [e for e in mine if e["src"] == h and e.get("event") == "done"]
    jd = jdone[-1] if jdone else {}
    hd = hdone[-1] if hdone else {}
    got = hd.get("received", {})
    sent = jd.get("sent")
    # latency: the joiner's interval histograms, merged per report interval and overall
    whole = LatencyHistogram()
    per: dict[int, tuple[LatencyHistogram, list[int]]] = {}
    for e in mine:
        if e["src"] == j and e.get("event") == "sample":
            b = int(e["t"] // args.report_every)
            hist, msgs = per.setdefault(b, (LatencyHistogram(), []))
            hist.merge_sparse(e.get("hist", {}), (e.get("max_ms") or 0) / 1000)
            msgs.append(e["messages"])
            whole.merge_sparse(e.get("hist", {}), (e.get("max_ms") or 0) / 1000)
    latency = [{"t0": b * args.report_every, "t1": (b + 1) * args.report_every, "messages_at_end": m[-1],
                **hist.summary()} for b, (hist, m) in sorted(per.items())]
    # connections: the host sees every connection of the pair (the joiner's restarts too)
    conns = [e for e in mine if e.get("event") == "connection"]
    host_conns = [e for e in conns if e["src"] == h]
    join_conns = [e for e in conns if e["src"] == j]
    stalls = [e for e in mine if e["src"] == j and e.get("event") == "stall"]
    starts = [f for f in faults if f.get("phase") == "start"]
    first_fault = starts[0]["t"] if starts else end_t + 1
    # connections after the first, per window [fault, next fault)
    per_fault = []
    for k, f in enumerate(starts):
        t1 = starts[k + 1]["t"] if k + 1 < len(starts) else end_t + 1
        new = [c for c in host_conns[1:] if f["t"] <= c["t"] < t1]
        st = [s for s in stalls if f["t"] <= s["t"] < t1]
        per_fault.append({"fault": k, "kind": f["kind"], "target_pair": f.get("pair"), "t": f["t"],
                          "affects_pair": f.get("pair") in (None, i),
                          "reconnects": len(new), "max_stall_s": max((s["gap_s"] for s in st), default=0.0),
                          "failed_attempts": sum(s.get("failed_attempts", 0) for s in st)})
    before = [c for c in host_conns[1:] if c["t"] < first_fault]
    connections = max(len(host_conns), len(join_conns))
    unique = got.get("unique", 0)
    return {
        "pair": i,
        "sent": sent,
        "received_unique": unique,
        "delivered_exactly_once": got.get("exactly_once"),
        "lost": None if sent is None else max(0, sent - unique),
        "missing_count": got.get("missing_count"),
        "repeated": got.get("repeated_deliveries"),
        "connections": connections,
        "host_connections": len(host_conns),
        "joiner_connections": len(join_conns),
        "reconnects": connections - 1,
        "reconnects_before_first_fault": len(before),
        "per_fault": per_fault,
        "stalls": len(stalls),
        "failed_attempts": sum(e.get("failed_attempts", 0) for e in mine if e["src"] == j and e.get("event") == "done"),
        "duplicates_answered": sum(e.get("duplicates_answered", 0) for e in jdone),
        "joiner_incarnations": len(incarnations(lines, j)),
        "cache_retries": jd.get("cache", {}).get("retries"),
        "latency": {"p50_ms": whole.summary()["p50_ms"], "p99_ms": whole.summary()["p99_ms"],
                    "max_ms": whole.summary()["max_ms"], "n": whole.n},
        "latency_per_interval": latency,
        "selected_path_at_end": jd.get("selected_at_end"),
        "leaked_payloads": hd.get("leaked"),
        "processes": process_report(lines, h, args.warmup, args.report_every)
        + process_report(lines, j, args.warmup, args.report_every),
        "errors": jd.get("errors", [])[:8],
    }


def failures(rep: dict[str, Any], args: argparse.Namespace) -> list[str]:
    bad: list[str] = []
    faulted = bool(rep["faults"])
    for p in rep["pairs"]:
        i = p["pair"]
        if p["sent"] is None:
            bad.append(f"pair {i}: the joiner never finished")
        if p["lost"] != 0 or p["missing_count"] != 0:
            bad.append(f"pair {i}: lost {p['lost']} (missing ids {p['missing_count']})")
        if p["repeated"] != 0:
            bad.append(f"pair {i}: {p['repeated']} repeated deliveries")
        if not faulted:
            if p["connections"] != 1:
                bad.append(f"pair {i}: {p['connections']} connections without faults")
            if p["failed_attempts"] or p["cache_retries"]:
                bad.append(f"pair {i}: failed attempts {p['failed_attempts']}, retries {p['cache_retries']} without faults")
        if p["reconnects_before_first_fault"]:
            bad.append(f"pair {i}: {p['reconnects_before_first_fault']} reconnects before any fault")
        for f in p["per_fault"]:
            if f["reconnects"] > 2:
                bad.append(f"pair {i}: {f['reconnects']} reconnects after fault {f['fault']} ({f['kind']})")
            if f["max_stall_s"] > 60:
                bad.append(f"pair {i}: stalled {f['max_stall_s']} s after fault {f['fault']} ({f['kind']})")
        for r in p["processes"]:
            who = f"pair {i}: {r['proc']}#{r['incarnation']}"
            if r["post_warmup_span_s"] < 30:
                continue  # a short-lived incarnation (killed, or restarted near the end): no trend
            g, s = r["growth_pct"], r.get("steady_kib_h")
            if g is None or g > args.rss_limit:
                bad.append(f"{who}: RSS grew {g}% after the warm-up (limit {args.rss_limit}%)")
            if r.get("steady_span_s", 0) >= args.slope_span and (s is None or s > args.rss_limit_kib_h):
                bad.append(f"{who}: RSS grows {s} KiB/hour between faults (limit {args.rss_limit_kib_h})")
            if r.get("first_fault_steps_kb", 0) > args.first_fault_limit_kib:
                bad.append(f"{who}: the first fault of each kind added {r['first_fault_steps_kb']} KiB "
                           f"(limit {args.first_fault_limit_kib})")
            m = r.get("repeat_fault_step_mean_kb")
            if m is not None and m > args.fault_step_limit_kib:
                bad.append(f"{who}: each repeated fault adds {m} KiB on average over {r['repeat_fault_steps']} "
                           f"(limit {args.fault_step_limit_kib})")
            if r.get("fds_last") is not None and r["fds_last"] - r["fds_first"] > args.fd_limit:
                bad.append(f"{who}: fds {r['fds_first']} -> {r['fds_last']} (limit +{args.fd_limit})")
    return bad


def plot(rep: dict[str, Any], lines: list[dict[str, Any]], path: Path) -> None:
    """Latency (each 5 s sample's p50/p99/max), RSS and fds per process over time, faults as
    vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for p in rep["pairs"]:
        i = p["pair"]
        c = colors[i % len(colors)]
        js = [e for e in lines if e.get("src") == f"join{i}" and e.get("event") == "sample" and e.get("p50_ms")]
        t = [e["t"] / 60 for e in js]
        axes[0].plot(t, [e["p50_ms"] for e in js], color=c, lw=1, label=f"pair {i} p50")
        axes[0].plot(t, [e["p99_ms"] for e in js], color=c, lw=0.8, ls="--", label=f"pair {i} p99")
        axes[0].plot(t, [e["max_ms"] for e in js], color=c, lw=0, marker=".", ms=2)
        for who, ls in ((f"host{i}", "-"), (f"join{i}", ":")):
            for k, inc in enumerate(incarnations(lines, who)):
                ss = [e for e in inc if e.get("event") == "sample" and "rss_kb" in e]
                lab = f"{who}" if k == 0 else None
                axes[1].plot([e["t"] / 60 for e in ss], [e["rss_kb"] / 1024 for e in ss], color=c, ls=ls, label=lab)
                axes[2].plot([e["t"] / 60 for e in ss], [e.get("fds", 0) for e in ss], color=c, ls=ls, label=lab)
    for f in rep["faults"]:
        if f.get("phase") == "start":
            for ax in axes:
                ax.axvline(f["t"] / 60, color="grey", lw=0.6, ls="-.")
            axes[0].annotate(f["kind"], (f["t"] / 60, 1), xycoords=("data", "axes fraction"), fontsize=7,
                             rotation=90, va="top", ha="right", color="grey")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("latency per 5 s (ms)\np50 —, p99 --, max ·")
    axes[1].set_ylabel("RSS (MiB)\nhost —, joiner ··")
    axes[2].set_ylabel("open fds")
    axes[2].set_xlabel("minutes")
    axes[1].legend(fontsize=7, ncol=4)
    mode = rep["mode"] + (" + faults" if rep["faults"] else "")
    axes[0].set_title(f"soak: {mode}, {rep['minutes']} min, {len(rep['pairs'])} pairs, "
                      f"interval {rep['interval']} s")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def markdown(rep: dict[str, Any], json_path: str, png_path: str) -> str:
    """A short Markdown section for bench/RESULTS.md from a report (``--summarize``)."""
    mode = rep["mode"] + (" with faults" if rep["faults"] else "")
    kinds = [f["kind"] for f in rep["faults"] if f.get("phase") == "start"]
    out = [f"### Soak: {mode}, {rep['minutes']:g} min, {len(rep['pairs'])} pairs, one message per "
           f"{rep['interval']:g} s per pair",
           "",
           f"`bench/soak.py` report [{json_path}]({Path(json_path).name}), plot [{png_path}]({Path(png_path).name}). "
           f"Wall {rep['wall_s'] / 60:.1f} min; warm-up {rep['warmup_s']:g} s; limits: RSS +{rep['limits']['rss_pct']:g}% "
           f"and {rep['limits']['rss_kib_h']:g} KiB/hour (spans >= {rep['limits']['slope_span_s']:g} s), fds "
           f"+{rep['limits']['fds']}." + (f" Faults ({len(kinds)}): {', '.join(kinds)}." if kinds else ""),
           "",
           "| pair | sent | exactly once | lost | repeated | connections | reconnects per fault (longest stall) | p50 / p99 / max ms |",
           "|---|---|---|---|---|---|---|---|"]
    for p in rep["pairs"]:
        lat = p["latency"]
        per = ", ".join(f"{f['kind']} {f['reconnects']} ({f['max_stall_s']:.1f} s)" for f in p["per_fault"]) or "none"
        out.append(f"| {p['pair']} | {p['sent']} | {p['delivered_exactly_once']} | {p['lost']} | {p['repeated']} | "
                   f"{p['connections']} | {per} | {lat['p50_ms']} / {lat['p99_ms']} / {lat['max_ms']} |")
    out += ["", f"Memory after the warm-up (limits: steady {rep['limits']['rss_kib_h']:g} KiB/hour between faults; "
                f"first fault of each kind {rep['limits'].get('first_fault_kib', '-')} KiB in all; "
                f"repeated faults {rep['limits'].get('fault_step_kib', '-')} KiB each on average):", "",
            "| process | post-warm-up span | RSS KiB (anon / file) | growth | steady KiB/hour (span) "
            "| first-fault steps KiB | repeated-fault steps KiB (mean) | threads | fds first → last (max) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for p in rep["pairs"]:
        for r in p["processes"]:
            steps = [f"{x['kind']} {x['step_kb']:+d}" for x in r.get("fault_steps", []) if not x["first_of_kind"]]
            out.append(f"| {r['proc']}#{r['incarnation']} | {r['post_warmup_span_s'] / 60:.1f} min | "
                       f"{r['warm_kb']} → {r['end_kb']} ({r.get('anon_warm_kb')} → {r.get('anon_end_kb')} / "
                       f"{r.get('file_warm_kb')} → {r.get('file_end_kb')}) | {r['growth_pct']}% | "
                       f"{r.get('steady_kib_h')} ({(r.get('steady_span_s') or 0) / 60:.1f} min) | "
                       f"{r.get('first_fault_steps_kb')} | {', '.join(steps) or '-'} "
                       f"({r.get('repeat_fault_step_mean_kb')}) | {r.get('threads_first')} → {r.get('threads_last')} "
                       f"(max {r.get('threads_max')}) | {r.get('fds_first')} → {r.get('fds_last')} ({r.get('fds_max')}) |")
    out += ["", "Checks: " + ("all passed." if not rep["failures"] else "; ".join(rep["failures"])), ""]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description="steady messaging with faults: exactly once, reconnects, latency, RSS, fds")
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--pairs", type=int, default=1)
    ap.add_argument("--interval", type=float, default=0.02, help="pause between a joiner's messages, s")
    ap.add_argument("--lab", action="store_true", help="through the simulated network (iroh-pair-lab)")
    ap.add_argument("--faults", action="store_true", help="inject the fault schedule")
    ap.add_argument("--fault-every", type=float, default=0.0, help="seconds between faults (default: run/5)")
    ap.add_argument("--fault-kinds", type=lambda v: [k.strip() for k in v.split(",")], default=None,
                    help="comma-separated fault kinds to cycle through (default: all; loopback has no outage)")
    ap.add_argument("--outage", type=float, default=5.0, help="lab: seconds a link stays down")
    ap.add_argument("--server-down", type=float, default=3.0, help="seconds a restarted server stays down")
    ap.add_argument("--warmup", type=float, default=0.0,
                    help="seconds after a process paired before its RSS baseline (default: 15,000 messages at --interval, 60 to run/2; 30 below 10 min)")
    ap.add_argument("--rss-limit", type=float, default=10.0, help="allowed RSS growth after warm-up, percent")
    ap.add_argument("--rss-limit-kib-h", type=float, default=4096.0,
                    help="allowed RSS growth rate after warm-up, KiB/hour (checked when the span >= --slope-span)")
    ap.add_argument("--fault-step-limit-kib", type=float, default=256.0,
                    help="allowed mean RSS step at a process's repeated faults of a kind, KiB")
    ap.add_argument("--first-fault-limit-kib", type=float, default=4096.0,
                    help="allowed RSS added by the first fault of each kind a process sees, KiB in all")
    ap.add_argument("--slope-span", type=float, default=600.0, help="seconds of samples needed for the KiB/h check")
    ap.add_argument("--fd-limit", type=int, default=16, help="allowed growth of open fds after warm-up")
    ap.add_argument("--report-every", type=float, default=0.0, help="report interval, s (default 60, 10 below 10 min)")
    ap.add_argument("--payload-bytes", type=int, default=64, help="filler bytes per message (loopback)")
    ap.add_argument("--leak", action="store_true", help="TEST ONLY: the hosts' handlers keep every payload")
    ap.add_argument("--python", default=sys.executable, help="the interpreter for the agents")
    ap.add_argument("--json", type=Path, help="write the report here (and the plot beside it, .png)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--lines", type=Path, help="also write every process's JSON lines here (JSON Lines)")
    ap.add_argument("--from-lines", type=Path,
                    help="rebuild the report from a --lines file of an earlier run (same run options)")
    ap.add_argument("--summarize", type=Path, help="print a Markdown section for bench/RESULTS.md from this report")
    args = ap.parse_args()
    if args.summarize:
        done = json.loads(args.summarize.read_text())
        rel = os.path.relpath(args.summarize, ROOT)
        print(markdown(done, rel, str(Path(rel).with_suffix(".png"))))
        return 0
    args.report_every = args.report_every or (60.0 if args.minutes >= 10 else 10.0)
    if not args.warmup:
        # the delivered-id window (10,000 per device) fills during the warm-up
        args.warmup = min(max(60.0, 15_000 * args.interval), args.minutes * 30) if args.minutes >= 10 else 30.0
    if args.lab and args.leak:
        ap.error("--leak is loopback only")
    sink = Sink()
    error = None
    if args.from_lines:
        sink.lines = [json.loads(x) for x in args.from_lines.read_text().splitlines() if x.strip()]
    else:
        try:
            (run_lab if args.lab else run_loopback)(args, sink)
        except (RuntimeError, TimeoutError) as e:
            error = str(e)
    lines = sink.lines
    if args.lines and not args.from_lines:
        args.lines.write_text("".join(json.dumps(e) + "\n" for e in lines))
    faults = [e for e in lines if e.get("event") == "fault"]
    end_t = max(e["t"] for e in lines) if args.from_lines and lines else now()
    rep: dict[str, Any] = {
        "mode": "lab" if args.lab else "loopback", "minutes": args.minutes, "interval": args.interval,
        "pairs_n": args.pairs, "wall_s": end_t, "warmup_s": args.warmup, "report_every_s": args.report_every,
        "limits": {"rss_pct": args.rss_limit, "rss_kib_h": args.rss_limit_kib_h, "slope_span_s": args.slope_span,
                   "first_fault_kib": args.first_fault_limit_kib, "fault_step_kib": args.fault_step_limit_kib,
                   "fds": args.fd_limit},
        "faults": [{k: v for k, v in f.items() if k not in ("src", "event")} for f in faults],
        "pairs": [pair_report(lines, i, faults, end_t, args) for i in range(args.pairs)],
        # lab: how many times each server was started (2 after one restart)
        "servers": {s: sum(1 for e in lines if e.get("src") == "lab" and e.get("event") == "spawned"
                           and e.get("proc") == s) for s in ("relay", "dns")} if args.lab else None,
    }
    bad = failures(rep, args)
    if error:
        bad.insert(0, f"harness: {error[:3000]}")
    rep["failures"] = bad
    for p in rep["pairs"]:
        lat = p["latency"]
        print(f"pair {p['pair']}: sent {p['sent']}, exactly once {p['delivered_exactly_once']}, lost {p['lost']}, "
              f"repeated {p['repeated']}, connections {p['connections']} (reconnects per fault "
              f"{[(f['kind'], f['reconnects']) for f in p['per_fault']]}), p50 {lat['p50_ms']} ms, "
              f"p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms")
        for r in p["processes"]:
            print(f"    {r['proc']}#{r['incarnation']}: RSS {r['warm_kb']} -> {r['end_kb']} KiB "
                  f"({r['growth_pct']}%, steady {r.get('steady_kib_h')} KiB/h over {r.get('steady_span_s')} s, "
                  f"first-fault steps {r.get('first_fault_steps_kb')} KiB, repeated-fault step mean "
                  f"{r.get('repeat_fault_step_mean_kb')} KiB over {r.get('repeat_fault_steps')}), "
                  f"fds {r.get('fds_first')} -> {r.get('fds_last')} (max {r.get('fds_max')})")
    for b in bad:
        print("FAIL:", b)
    if args.json:
        args.json.write_text(json.dumps(rep, indent=1))
        if not args.no_plot:
            png = args.json.with_suffix(".png")
            plot(rep, lines, png)
            print(f"report {args.json}, plot {png}")
    print(json.dumps({"soak": {k: v for k, v in rep.items() if k != "pairs"}
                      | {"pairs": [{k: v for k, v in p.items() if k not in ("latency_per_interval",)}
                                   for p in rep["pairs"]]}}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
