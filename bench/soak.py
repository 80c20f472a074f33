#!/usr/bin/env python3
"""Soak: steady messaging between paired nodes for a long time; one connection per pair, no
reconnects, flat memory.

Each pair is two processes of ``tests/lab_agent.py`` (a host and a joiner, the package's public
API only): the joiner sends numbered messages (one every ``--interval`` seconds, each until
acknowledged) for ``--minutes`` and samples its latency and RSS every 5 s; the host answers and
samples its RSS. Two ways to run the pairs:

* loopback (default): the agents run here, on 127.0.0.1, no relay;
* ``--lab``: through the simulated network (``iroh-pair-lab soak``): each device behind its own
  Moderate NAT, with the lab's relay and lookup servers (needs root or user namespaces, ``nft``).

It prints a summary and, last, one JSON line ``{"soak": {...}}``: per pair the messages, the
connections the pair used, reconnects, retries, p50/p99 latency, and RSS per process after the
warm-up and at the end (growth in percent). Exit status 1 when a pair used more than one
connection, reconnected, needed retries, or a process's RSS grew more than ``--rss-limit``
percent after the warm-up.

CI runs one minute (``tests/test_lab.py::test_soak``). For a real soak run hours::

    python bench/soak.py --minutes 240 --pairs 4 --lab --json soak.json
    python bench/soak.py --minutes 600 --interval 0.01        # loopback, 10 hours

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


class AgentProc:
    """One agent subprocess on loopback; its JSON lines are queued by a reader thread."""

    def __init__(self, argv: list[str], label: str) -> None:
        self.label = label
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


def run_loopback(args: argparse.Namespace) -> list[dict[str, Any]]:
    pairs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="iroh-pair-soak-") as tmp:
        procs: list[tuple[AgentProc, AgentProc]] = []
        try:
            for i in range(args.pairs):
                base = [args.python, "-u", str(AGENT), "--local"]
                host = AgentProc(base + ["--role", "host", "--label", f"host{i}", "--data", f"{tmp}/h{i}"], f"host{i}")
                code = host.wait("code", 60)["code"]
                join = AgentProc(base + ["--role", "join", "--label", f"join{i}", "--data", f"{tmp}/j{i}",
                                         "--code", code, "--work", "soak", "--minutes", str(args.minutes),
                                         "--interval", str(args.interval)], f"join{i}")
                join.wait("paired", 60)
                host.wait("paired", 60)
                procs.append((host, join))
            for host, join in procs:
                jd = join.wait("done", args.minutes * 60 + 60)
                host.command("stop")
                hd = host.wait("done", 30)
                pairs.append({"join": jd, "host": hd})
        finally:
            for h, j in procs:
                j.kill()
                h.kill()
    return pairs


def run_lab(args: argparse.Namespace) -> list[dict[str, Any]]:
    lab = os.environ.get("IROH_PAIR_LAB_BIN") or str(ROOT / "target" / "release" / "iroh-pair-lab")
    argv = [lab, "soak", "--python", args.python, "--agent", str(AGENT), "--minutes", str(args.minutes),
            "--pairs", str(args.pairs)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=args.minutes * 60 + 180)
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    last = lines[-1] if lines else {}
    if r.returncode != 0 or last.get("event") != "result":
        raise RuntimeError(f"iroh-pair-lab soak failed (exit {r.returncode}): {last}\n{r.stderr[-3000:]}")
    pairs: list[dict[str, Any]] = last["result"]["pairs"]
    return pairs


def rss_growth(series: list[tuple[float, int]], warm_at: float) -> dict[str, Any]:
    """RSS right after the warm-up (first sample at or after ``warm_at`` seconds of the
    process's own clock) and at the end, and the growth in percent."""
    after = [(t, kb) for t, kb in series if t >= warm_at]
    if len(after) < 2:
        return {"warm_kb": None, "end_kb": None, "growth_pct": None, "samples": len(series)}
    warm, end = after[0][1], after[-1][1]
    return {"warm_kb": warm, "end_kb": end, "growth_pct": round(100.0 * (end - warm) / warm, 2),
            "max_kb": max(kb for _, kb in after), "samples": len(series)}


def report(pairs: list[dict[str, Any]], warmup: float) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for i, p in enumerate(pairs):
        j, h = p["join"], p["host"]
        # The joiner's samples carry its own clock; the warm-up counts from its first sample.
        j_series = [(s["at"], s["rss_kb"]) for s in j["samples"]]
        j_start = j_series[0][0] if j_series else 0.0
        h_series = [(t, kb) for t, kb in h["rss_kb"]]
        h_paired = next((e["at"] for e in h["paths"]["path_log"] if "selected" in e), 0.0)
        conns = max(j["paths"]["connections_seen"], h["paths"]["connections_seen"])
        out.append({
            "pair": i,
            "messages": j["sent"],
            "received_unique": h["received"]["unique"],
            "repeated_deliveries": h["received"]["repeated_deliveries"],
            "connections": conns,
            "reconnects": conns - 1,
            "join_dials": j["cache"]["dials"],
            "evictions": j["cache"]["evictions"],
            "cache_retries": j["cache"]["retries"],
            "failed_attempts": j["failed_attempts"],
            "p50_ms": j["p50_ms"],
            "p99_ms": j["p99_ms"],
            "selected_path": j["selected_at_end"],
            "rss_join": rss_growth(j_series, j_start + warmup - 5.0),
            "rss_host": rss_growth(h_series, h_paired + warmup),
            "samples": [{k: s[k] for k in ("at", "messages", "p50_ms", "p99_ms", "rss_kb")} for s in j["samples"]],
        })
    return {"pairs": out}


def failures(rep: dict[str, Any], rss_limit: float) -> list[str]:
    bad: list[str] = []
    for p in rep["pairs"]:
        i = p["pair"]
        if p["connections"] != 1:
            bad.append(f"pair {i}: {p['connections']} connections")
        if p["failed_attempts"] or p["cache_retries"] or p["evictions"]:
            bad.append(f"pair {i}: failed attempts {p['failed_attempts']}, retries {p['cache_retries']}, "
                       f"evictions {p['evictions']}")
        if p["received_unique"] != p["messages"]:
            bad.append(f"pair {i}: sent {p['messages']}, received {p['received_unique']}")
        for who in ("rss_join", "rss_host"):
            g = p[who]["growth_pct"]
            if g is None or g > rss_limit:
                bad.append(f"pair {i}: {who} growth {g}% (limit {rss_limit}%)")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description="steady messaging between paired nodes; connections, latency, RSS")
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--pairs", type=int, default=1)
    ap.add_argument("--interval", type=float, default=0.02, help="pause between messages (loopback)")
    ap.add_argument("--lab", action="store_true", help="through the simulated network (iroh-pair-lab)")
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds before the RSS baseline")
    ap.add_argument("--rss-limit", type=float, default=10.0, help="allowed RSS growth after warm-up, percent")
    ap.add_argument("--python", default=sys.executable, help="the interpreter for the agents")
    ap.add_argument("--json", type=Path, help="also write the report here")
    args = ap.parse_args()
    t = time.monotonic()
    pairs = run_lab(args) if args.lab else run_loopback(args)
    rep = report(pairs, args.warmup)
    rep.update(mode="lab" if args.lab else "loopback", minutes=args.minutes, wall_s=round(time.monotonic() - t, 1))
    bad = failures(rep, args.rss_limit)
    rep["failures"] = bad
    for p in rep["pairs"]:
        print(f"pair {p['pair']}: {p['messages']} messages, {p['connections']} connection(s), "
              f"{p['reconnects']} reconnects, p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms, path {p['selected_path']}; "
              f"RSS joiner {p['rss_join']['warm_kb']} -> {p['rss_join']['end_kb']} KiB ({p['rss_join']['growth_pct']}%), "
              f"host {p['rss_host']['warm_kb']} -> {p['rss_host']['end_kb']} KiB ({p['rss_host']['growth_pct']}%)")
    for b in bad:
        print("FAIL:", b)
    if args.json:
        args.json.write_text(json.dumps(rep, indent=2))
    print(json.dumps({"soak": rep}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
