"""What every part of the benchmark suite shares: the workload's constants, the plain-Rust
binary, running one cell as a fresh process, and resident-memory readings."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Union

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

#: The ALPN every contender serves (the Rust node's bench and echo modes use it too).
ALPN = b"iroh-pair-bench/1"
#: Request and reply sizes of the request/response workloads (the request is framed: a u32
#: big-endian length, then the body; the reply is the rest of the stream).
REQUEST = 200
REPLY = 64
#: Warm-up requests before any timed request/response loop.
WARMUP = 50

#: One JSON value in a worker's result line.
Value = Union[float, int, str, bool, None, list[float]]
#: A worker's result: one JSON object.
Result = dict[str, Value]


class Unavailable(RuntimeError):
    """A contender that cannot run here (a missing package or binary); the message says why."""


def rust_binary() -> Path:
    """The plain-Rust node (rust/node): ``$IROH_PAIR_NODE`` or target/release."""
    env = os.environ.get("IROH_PAIR_NODE")
    p = Path(env) if env else ROOT / "target" / "release" / "iroh-pair-node"
    if not p.exists():
        raise Unavailable(f"{p} not found: cargo build --release -p iroh-pair-node")
    return p


def frame(payload: bytes) -> bytes:
    """``payload`` as one frame: u32 big-endian length, then the bytes."""
    return len(payload).to_bytes(4, "big") + payload


def run_json(cmd: list[str], timeout: float) -> Result:
    """Runs ``cmd`` and returns the JSON object on the last line of its stdout."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if p.returncode != 0:
        tail = (p.stderr.strip() or p.stdout.strip())[-1500:]
        raise RuntimeError(f"exit {p.returncode}: {tail}")
    lines = p.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"no output; stderr: {p.stderr[-1500:]}")
    out = json.loads(lines[-1])
    if not isinstance(out, dict):
        raise RuntimeError(f"not a JSON object: {lines[-1][:200]}")
    return out


def rss_kib() -> int:
    """This process's resident set size in KiB (Linux: VmRSS of /proc/self/status), after a
    garbage collection."""
    gc.collect()
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def latency_summary(lat: list[float], total: float, samples: bool) -> Result:
    """msg/s, p50 and p99 (microseconds) of per-request latencies in seconds, the same
    percentile rule as the Rust node (nearest rank on ``(n - 1) * p``); with ``samples`` every
    latency too, in order of measurement."""
    ordered = sorted(lat)

    def pct(p: float) -> float:
        return ordered[round((len(ordered) - 1) * p)] * 1e6

    out: Result = {
        "count": len(lat),
        "msg_per_s": round(len(lat) / total, 1),
        "p50_us": round(pct(0.5), 1),
        "p99_us": round(pct(0.99), 1),
    }
    if samples:
        out["lat_us"] = [round(x * 1e6, 1) for x in lat]
    return out


def idle_result(count: int, open_: int, before: int, after: int) -> Result:
    """The result line of an idle-connections cell (the same keys as the Rust node's)."""
    return {
        "workload": "idle-connections",
        "count": count,
        "open": open_,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_conn": round((after - before) / count, 2),
    }


def emit(obj: Result) -> None:
    """Prints one JSON line and flushes it (the driver timestamps lines as they arrive)."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
