"""Transport benchmark: this binding against plain Rust iroh, side by side, in one run.

Both contenders run the same workloads on loopback with relays off, client and server in one
process: the Rust one is `iroh-pair-node bench` (rust/node), the Python one is this module's
`--worker` mode, each in a fresh process. Cells alternate between contenders and repeat; the
table gives medians and the ratio Python/Rust. Absolute numbers on a shared machine are noise;
the ratios, measured side by side, are the result.

One stream is measured two ways against the same plain-Rust cell: `bulk`, a sized transfer
(an 8-byte length, then one `Chunk` written again and again, not copied, as the Rust bench
writes one `Bytes`; read with `read_exact` in 1 MiB blocks, one copy into `bytes`), and
`bulk-copy`, shown as "... read() until end" (`bytes` written, one copy in; `read(1 MiB)`
until the end of the stream, one copy out and a read for every burst that arrives).

The third column, "N workers" (`--workers N`, default: one per core; 0 leaves it out), runs
this binding on the default loop with N tokio worker threads (`iroh_pair.runtime`) instead of
the default count (one per core but one). On 2 cores that compares one worker (all of a
process's networking on one thread: fewer wake-ups between threads per request, but both
peers' crypto on one core when they share the process) with two.

The "busy-poll" column runs this binding's cells on `iroh_pair.runtime`'s busy-poll loop
(`--busy-poll US`, the largest polling window; 0 leaves the column out), which spins on the
bridge before it blocks instead of sleeping in epoll_wait. With `--loop-thread`, one more
column runs them on `iroh_pair.runtime`'s loop-thread loop, which runs iroh itself on the loop's thread
while it waits (no thread hops; one core for iroh and Python). It is made for peers in separate
processes: compare it with `--split`.

With `--split` the server of every cell is another process of the same contender
(`iroh-pair-node bench-server`, or `--server` here), as two peers are deployed: then this
binding's asyncio thread serves one side only, as plain Rust's runtime does in each process.

    python bench/transport.py [--repeats 3] [--count 3000] [--queued 5000] [--mib 64] [--split]
                              [--workers N] [--busy-poll 200] [--loop-thread]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ALPN = b"iroh-pair-bench/1"
REQUEST = 200
REPLY = 64


def rust_binary() -> Path:
    env = os.environ.get("IROH_PAIR_NODE")
    p = Path(env) if env else ROOT / "target" / "release" / "iroh-pair-node"
    if not p.exists():
        sys.exit(f"{p} not found: cargo build --release -p iroh-pair-node")
    return p


# ----------------------------------------------------------------------------- python worker


async def _worker(workload: str, count: int, mib: int, peer: str | None) -> dict[str, float | int | str]:
    # The same cell as bench/run.py's "iroh-pair raw" contender (bench/irohpair.py).
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench.irohpair import raw_worker

    r = await raw_worker(workload, count, mib, peer=peer)
    return {k: v for k, v in r.items() if isinstance(v, (float, int, str))}


async def _server(workload: str) -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench.irohpair import raw_server

    await raw_server(workload)


# ----------------------------------------------------------------------------- driver


def _run(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float | int | str]:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {p.stderr[-2000:]}")
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


def _with_server(
    server_cmd: list[str], client_cmd: list[str], env: dict[str, str] | None = None
) -> dict[str, float | int | str]:
    """Runs ``client_cmd + ["--peer", ticket]`` against a server process started first; the
    server ends when its stdin closes."""
    server = subprocess.Popen(server_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line:
            raise RuntimeError(f"{server_cmd} exited before it was ready")
        return _run([*client_cmd, "--peer", json.loads(line)["ticket"]], env)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def cell(contender: str, workload: str, args: argparse.Namespace) -> dict[str, float | int | str]:
    count = {"queued": args.queued, "connect-per-message": args.connects}.get(workload, args.count)
    sizes = ["--count", str(count), "--mib", str(args.mib)]
    env = None
    if contender == "rust":
        rust_workload = "bulk" if workload == "bulk-copy" else workload  # Rust has one bulk way
        client = [str(rust_binary()), "bench", rust_workload, *sizes]
        server = [str(rust_binary()), "bench-server", rust_workload]
    else:
        loop = {"busy": ["--loop", "busy", "--busy-poll", str(args.busy_poll)], "thread": ["--loop", "thread"]}.get(
            contender, []
        )
        client = [sys.executable, __file__, "--worker", workload, *sizes, *loop]
        server = [sys.executable, __file__, "--server", workload, *loop]
        if contender == "workers":
            env = {**os.environ, "IROH_PAIR_WORKER_THREADS": str(args.workers)}
    return _with_server(server, client, env) if args.split else _run(client, env)


METRICS = {
    "sequential": [
        ("p50_us", "sequential p50 (us)", "lower"),
        ("msg_per_s", "sequential msg/s", "higher"),
        ("datagrams_per_request", "UDP datagrams/request", "lower"),
    ],
    "queued": [("msg_per_s", "queued msg/s", "higher")],
    "bulk": [("mib_per_s", "one stream MiB/s", "higher")],
    "bulk-copy": [("mib_per_s", "... read() until end", "higher")],
    "connect-per-message": [
        ("p50_us", "conn-per-msg p50 (us)", "lower"),
        ("msg_per_s", "conn-per-msg msg/s", "higher"),
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--count", type=int, default=3000, help="sequential requests per cell")
    ap.add_argument("--queued", type=int, default=5000, help="requests queued at once")
    ap.add_argument("--mib", type=int, default=64, help="MiB on one stream")
    ap.add_argument("--connects", type=int, default=300, help="messages with a new connection each")
    ap.add_argument("--workloads", default="sequential,queued,bulk,bulk-copy,connect-per-message")
    ap.add_argument("--json", type=Path, help="also write every sample to this file")
    ap.add_argument("--split", action="store_true", help="run each cell's server in another process")
    ap.add_argument("--busy-poll", type=int, default=200, metavar="US",
                    help="the busy-poll column's polling window in microseconds (0: no such column)")
    ap.add_argument("--loop-thread", action="store_true", help="add a column for iroh_pair.runtime's loop-thread loop")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), metavar="N",
                    help="a column on the default loop with N tokio worker threads (default: one per core; "
                    "0: no such column)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--server", help=argparse.SUPPRESS)
    ap.add_argument("--peer", help=argparse.SUPPRESS)
    ap.add_argument("--loop", choices=["default", "busy", "thread"], default="default", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.server or args.worker:
        from iroh_pair import runtime

        job = _server(args.server) if args.server else _worker(args.worker, args.count, args.mib, args.peer)
        if args.loop == "busy":
            r = runtime.run(job, loop="busy-poll", busy_poll_us=args.busy_poll)
        else:
            r = runtime.run(job, loop="loop-thread") if args.loop == "thread" else asyncio.run(job)
        if args.worker:
            print(json.dumps(r))
        return
    samples: dict[tuple[str, str], list[dict[str, float | int | str]]] = {}
    workloads = args.workloads.split(",")
    contenders = ["rust", "python"] + (["workers"] if args.workers else []) + (["busy"] if args.busy_poll else [])
    contenders += ["thread"] if args.loop_thread else []
    for rep in range(args.repeats):
        for w in workloads:
            shift = rep % len(contenders)
            for c in contenders[shift:] + contenders[:shift]:
                r = cell(c, w, args)
                samples.setdefault((c, w), []).append(r)
                print(f"  [{rep + 1}/{args.repeats}] {c:6} {w:10} {json.dumps(r)}", file=sys.stderr)
    rows = []
    head = f"\n{'metric':24} {'plain Rust':>12} {'iroh-pair':>12} {'ratio':>8}"
    names = {"python": "iroh-pair", "busy": "busy-poll", "thread": "loop-thread", "workers": f"{args.workers} worker" + "s" * (args.workers != 1)}
    print(head + "".join(f" {names[c]:>12} {'ratio':>8}" for c in contenders[2:]))
    for w in workloads:
        for key, label, better in METRICS[w]:
            rust = statistics.median(float(s[key]) for s in samples[("rust", w)])
            row: dict[str, Any] = {"metric": label, "rust": rust, "better": better}
            digits = 2 if rust < 10 else 1
            line = f"{label:24} {rust:12.{digits}f}"
            for c in contenders[1:]:
                v = statistics.median(float(s[key]) for s in samples[(c, w)])
                row[c], row[f"{c}_ratio"] = v, v / rust
                shown = f"{v / rust:.2f}x" if better == "lower" else f"{v / rust * 100:.0f}%"
                line += f" {v:12.{digits}f} {shown:>8}"
            rows.append(row)
            print(line + (" (x Rust)" if better == "lower" else " (of Rust)"))
    if "sequential" in workloads and "connect-per-message" in workloads:
        print("\ncached stream per message vs a new connection per message (msg/s):")
        for c, name in (("rust", "plain Rust"), ("python", "iroh-pair")):
            cached = statistics.median(float(s["msg_per_s"]) for s in samples[(c, "sequential")])
            per = statistics.median(float(s["msg_per_s"]) for s in samples[(c, "connect-per-message")])
            print(f"  {name:10} {cached:10.1f} vs {per:8.1f}: {cached / per:5.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "samples": [
            {"contender": c, "workload": w, **s} for (c, w), ss in samples.items() for s in ss
        ]}, indent=1))


if __name__ == "__main__":
    main()
