"""How long a node takes to get online through the local relay (issue #33).

    python bench/online.py [--runs 10] [--rust] [--json]

Starts :class:`~iroh_pair.testing.LocalServers` (relay and lookup server on 127.0.0.1), then
``--runs`` times: ``Node.open`` in a fresh data directory with the servers' settings (relay and
lookup, the rest as the CLI and the demo use it), then ``await node.endpoint.online()``, each
timed, and the node closed. Prints one line per run and the median and max of both.

``--rust`` also runs plain iroh (``iroh-pair-node bench-online``, rust/node) against the same
relay, twice: with the bare relay URL (iroh's default relay map entry, what iroh's own examples
build from a URL) and with the setting LocalServers hands out (``quic_port=None``, written
``URL#qad=none`` on a command line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import rust_binary
from iroh_pair import Node
from iroh_pair.testing import LocalServers


def summary(name: str, xs: list[float]) -> dict[str, Any]:
    return {"what": name, "runs": len(xs), "median_ms": round(statistics.median(xs), 1), "max_ms": round(max(xs), 1)}


async def package_runs(servers: LocalServers, runs: int) -> tuple[list[float], list[float]]:
    opened, online = [], []
    with tempfile.TemporaryDirectory(prefix="iroh-pair-online-") as tmp:
        for i in range(runs):
            t0 = time.perf_counter()
            node = await Node.open(Path(tmp) / f"n{i}", options=servers.options().replace(bind_addrs=()))
            t1 = time.perf_counter()
            try:
                await asyncio.wait_for(node.endpoint.online(), 30)
                t2 = time.perf_counter()
            finally:
                await node.close()
            opened.append((t1 - t0) * 1e3)
            online.append((t2 - t1) * 1e3)
            print(f"  package run {i}: Node.open {opened[-1]:.1f} ms, online() {online[-1]:.1f} ms", file=sys.stderr)
    return opened, online


def rust_runs(entry: str, runs: int) -> list[float]:
    out = subprocess.run(
        [str(rust_binary()), "bench-online", "--relay", entry, "--count", str(runs)],
        capture_output=True, text=True, check=True, timeout=60 + 35 * runs,
    ).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [float(x["online_ms"]) for x in lines if x.get("event") == "run"]


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--rust", action="store_true", help="also time plain iroh (rust/node bench-online)")
    p.add_argument("--json", action="store_true", help="print the summaries as JSON lines")
    args = p.parse_args()
    results = []
    async with LocalServers() as servers:
        print(f"relays {[str(r) for r in servers.relays]}", file=sys.stderr)
        opened, online = await package_runs(servers, args.runs)
        results += [summary("package Node.open", opened), summary("package endpoint.online()", online)]
        if args.rust:
            bare = servers.relay_url
            for entry in dict.fromkeys([bare, *map(str, servers.relays)]):
                results.append(summary(f"plain iroh online(), relay entry {entry}", rust_runs(entry, args.runs)))
    for r in results:
        print(json.dumps(r) if args.json else f"{r['what']}: median {r['median_ms']} ms, max {r['max_ms']} ms "
              f"({r['runs']} runs)")


if __name__ == "__main__":
    asyncio.run(main())
