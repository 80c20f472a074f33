"""One benchmark cell in a fresh process: ``python bench/worker.py CONTENDER WORKLOAD ...``.

Prints one JSON line: the result (bench/run.py starts it; pairing cells also print the event
lines the driver timestamps). CONTENDER is raw | cores (raw on a tokio worker per core) |
busy (raw on iroh_pair.runtime's busy-poll loop) |
layer | pypi-iroh | aioquic; WORKLOAD is
sequential | queued | bulk | connect-per-message | idle-connections (with ``--peer``, the
server in another process) | pair-host | pair-join (with ``--peer CODE``) | serve (the server of
idle-connections cells: aioquic's, or this package's when the Rust node is not built).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Result, emit


async def run(contender: str, workload: str, count: int, mib: int, peer: str, samples: bool) -> Result:
    if contender == "cores":
        contender = "raw"  # on a worker per core: chosen in main(), by the loop's entry point
    if contender == "busy":
        from bench import irohpair

        return await irohpair.raw_worker(workload, count, mib, samples)
    if contender in ("raw", "layer"):
        from bench import irohpair

        if workload == "idle-connections" and contender == "raw":
            return await irohpair.idle_connections(peer, count)
        if workload == "serve" and contender == "raw":
            await irohpair.serve_forever()
            return {}
        if workload == "pair-host" and contender == "layer":
            return await irohpair.pair_host()
        if workload == "pair-join" and contender == "layer":
            return await irohpair.pair_join(peer)
        if contender == "layer":
            return await irohpair.layer_worker(workload, count, samples)
        return await irohpair.raw_worker(workload, count, mib, samples)
    if contender == "pypi-iroh":
        from bench import pypi_iroh

        if workload == "idle-connections":
            return await pypi_iroh.idle_connections(peer, count)
        return await pypi_iroh.worker(workload, count, mib, samples)
    if contender == "aioquic":
        from bench import quic_aioquic

        if workload == "idle-connections":
            return await quic_aioquic.idle_connections(peer, count)
        if workload == "serve":
            await quic_aioquic.serve_forever()
            return {}
        return await quic_aioquic.worker(workload, count, mib, samples)
    raise SystemExit(f"unknown contender {contender!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("contender")
    ap.add_argument("workload")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--peer", default="")
    ap.add_argument("--samples", action="store_true", help="include every latency (us)")
    a = ap.parse_args()
    cell = run(a.contender, a.workload, a.count, a.mib, a.peer, a.samples)
    if a.contender == "busy":
        from iroh_pair import runtime

        emit(runtime.run(cell, loop="busy-poll"))
    elif a.contender == "cores":
        from iroh_pair import runtime

        emit(runtime.run(cell, worker_threads=len(os.sched_getaffinity(0))))
    else:
        emit(asyncio.run(cell))


if __name__ == "__main__":
    main()
