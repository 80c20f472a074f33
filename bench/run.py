"""The benchmark suite: this package against plain Rust iroh, the official iroh Python binding
(PyPI ``iroh``) and aioquic, side by side in one run.

    python bench/run.py [--quick] [--repeats 3] [--out DIR]     (or: python -m bench ...)

Every cell (one contender, one workload) runs in a fresh process on loopback with relays off;
within each repeat the contenders of a workload run one after another, in an order that
rotates from repeat to repeat. The table gives the median of the repeats and each contender's
ratio to plain Rust; the targets of issue #17 are checked from the same medians. The suite
writes DIR/RESULTS.md, DIR/results.json (every sample) and DIR/latency.png (DIR defaults to
bench/). A contender that cannot run is named with the reason, and the rest goes on.

    python bench/run.py --files [bench/files.py's options]

runs the files benchmark instead (``bench/files.py``: send_file against plain Rust iroh-blobs,
the raw stream and magic-wormhole, and the RSS of a large transfer); it writes its own section
of RESULTS.md, which the default run keeps.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import select
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ALPN, BENCH, REPLY, REQUEST, ROOT, WARMUP, Result, Unavailable, run_json, rust_binary

WORKER = BENCH / "worker.py"


# ----------------------------------------------------------------------------- contenders


@dataclass(frozen=True)
class Contender:
    key: str
    name: str  # column header
    what: str  # one line for RESULTS.md
    stream_limit: str


CONTENDERS = [
    Contender("rust", "plain Rust iroh", "rust/node `iroh-pair-node bench` on the iroh crate directly: the ceiling",
              "100 (iroh default)"),
    Contender("raw", "iroh-pair raw", "this package's binding: `Connection.request` / native `Connection.serve`; "
              "one stream: a sized transfer, one `Chunk` written again and again, `read_exact` in 1 MiB blocks",
              "100 (iroh default)"),
    Contender("cores", "iroh-pair raw, a worker per core", "the raw binding's cells on one tokio worker thread per "
              "core (`iroh_pair.runtime.run(..., worker_threads=N)`), where the default leaves one core to the asyncio loop",
              "100 (iroh default)"),
    Contender("busy", "iroh-pair busy-poll", "the raw binding's cells on `iroh_pair.runtime`'s busy-poll loop, which "
              "spins (up to 200 us, adaptive; not while a bulk transfer or a dial is in flight) on the bridge before it blocks", "100 (iroh default)"),
    Contender("layer", "iroh-pair layer", "this package's cache/request layer: `RequestPeer` (cache, timeouts); "
              "pairing: `Node`", "100 (iroh default)"),
    Contender("pypi-iroh", "PyPI iroh", "the official iroh Python binding (uniffi): open_bi / write_all / finish / "
              "read_to_end per request", "100 (iroh default)"),
    Contender("aioquic", "aioquic", "pure-Python QUIC, self-signed certificate verified by the client, "
              "event API, stream per request", "128 (aioquic's fixed default)"),
]
BY_KEY = {c.key: c for c in CONTENDERS}
WORKLOADS = ["sequential", "connect-per-message", "queued", "bulk", "pairing", "idle-connections"]
SLOW = {"pypi-iroh", "aioquic"}  # bulk with --slow-mib

NOT_APPLICABLE = {
    ("layer", "connect-per-message"): "the cache exists to reuse one connection per peer",
    ("layer", "bulk"): "a single stream is the raw binding's API; the layer adds nothing once it is open",
    ("layer", "idle-connections"): "the cache holds one connection per peer; its connections are the raw binding's",
    ("raw", "pairing"): "pairing runs in the Node layer (column: iroh-pair layer)",
    ("busy", "pairing"): "pairing runs in the Node layer (column: iroh-pair layer)",
    ("cores", "pairing"): "pairing runs in the Node layer (column: iroh-pair layer)",
    ("cores", "idle-connections"): "the worker count does not change what an idle connection holds",
    ("busy", "idle-connections"): "an idle connection has nothing to poll: the raw binding's column",
    ("pypi-iroh", "pairing"): "the binding has no pairing protocol",
    ("aioquic", "pairing"): "plain QUIC + TLS has no pairing protocol",
}


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def iroh_crate_version() -> str:
    lines = (ROOT / "Cargo.lock").read_text().splitlines()
    for i, line in enumerate(lines):
        if line == 'name = "iroh"' and lines[i + 1].startswith("version = "):
            return lines[i + 1].split('"')[1]
    return "?"


def probe(key: str) -> tuple[str | None, str]:
    """(why the contender cannot run, or None; its version)."""
    if key == "rust":
        try:
            rust_binary()
        except Unavailable as e:
            return str(e), iroh_crate_version()
        return None, iroh_crate_version()
    dist, module = {"raw": ("iroh-pair", "iroh_pair"), "busy": ("iroh-pair", "iroh_pair"),
                    "cores": ("iroh-pair", "iroh_pair"),
                    "layer": ("iroh-pair", "iroh_pair"),
                    "pypi-iroh": ("iroh", "iroh"), "aioquic": ("aioquic", "aioquic")}[key]
    v = _dist_version(dist)
    if v is None or importlib.util.find_spec(module) is None:
        extra = "" if key in ("raw", "cores", "busy", "layer") else " (the `bench` extra installs it: pip install 'iroh-pair[bench]')"
        return f"package `{dist}` is not installed{extra}", "-"
    return None, v


# ----------------------------------------------------------------------------- cells


class Lines:
    """A child's stdout as timestamped JSON lines, read with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def until(self, event: str, timeout: float) -> tuple[dict[str, Any], float]:
        """The next line whose "event" is ``event``, and when it arrived (perf_counter)."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                t = time.perf_counter()
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict) and obj.get("event") == event:
                    return obj, t
                if isinstance(obj, dict) and obj.get("event") in ("error", "failed"):
                    raise RuntimeError(f"{event!r} expected, got {line.decode()[:500]}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"timed out waiting for {event!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    err = self.proc.stderr.read().decode()[-1500:] if self.proc.stderr else ""
                    raise RuntimeError(f"exited (waiting for {event!r}): {err}")
                self.buf += chunk


def _spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)


def _stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def py_worker(contender: str, workload: str, *args: str) -> list[str]:
    return [sys.executable, str(WORKER), contender, workload, *args]


def pairing_cell(key: str, timeout: float) -> Result:
    """Two processes, host and joiner; the clock runs from the joiner's "ready" line (its node
    is open) to its "paired" line, as the driver receives them."""
    tmp = Path(tempfile.mkdtemp(prefix="iroh-pair-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if key == "rust":
            rust = str(rust_binary())
            host_cmd = [rust, "host", "--state", str(tmp / "host"), "--name", "bench-host"]
            join_cmd = [rust, "join", "CODE", "--state", str(tmp / "join"), "--name", "bench-join"]
        else:
            host_cmd = py_worker("layer", "pair-host")
            join_cmd = py_worker("layer", "pair-join", "--peer", "CODE")
        host = _spawn(host_cmd)
        procs.append(host)
        hl = Lines(host)
        code = str(hl.until("code", timeout)[0]["code"])
        join = _spawn([code if a == "CODE" else a for a in join_cmd])
        procs.append(join)
        jl = Lines(join)
        _, t_ready = jl.until("ready", timeout)
        joined, t_paired = jl.until("paired", timeout)
        hosted, _ = hl.until("paired", timeout)
        stats = hosted.get("stats", hosted)
        out: Result = {
            "workload": "pairing",
            "ms": round((t_paired - t_ready) * 1e3, 2),
            "round_trips": int(stats["pairing_messages_received"]),
            "host_connections_accepted": int(stats["connections_accepted"]),
        }
        if "join_ms_in_process" in joined:
            out["join_ms_in_process"] = float(joined["join_ms_in_process"])
        for p in procs:
            _stop(p)
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def idle_cell(key: str, count: int, timeout: float) -> Result:
    """The client in a fresh process, the server in another one: the Rust node's echo mode for
    the iroh contenders (this package's endpoint if the Rust node is not built), an aioquic
    server for aioquic."""
    if key == "aioquic":
        server, kind, field_ = _spawn(py_worker("aioquic", "serve")), "aioquic", "peer"
    else:
        try:
            server, kind = _spawn([str(rust_binary()), "echo", "--alpn", ALPN.decode()]), "rust-echo"
        except Unavailable:  # the Python contenders can still be measured
            server, kind = _spawn(py_worker("raw", "serve")), "iroh-pair"
        field_ = "ticket"
    try:
        peer = str(Lines(server).until("ready", timeout)[0][field_])
        if key == "rust":
            cmd = [str(rust_binary()), "bench", "idle-connections", "--count", str(count), "--peer", peer]
        else:
            cmd = py_worker(key, "idle-connections", "--count", str(count), "--peer", peer)
        return {**run_json(cmd, timeout), "server": kind}
    finally:
        server.kill()
        server.wait()


@dataclass
class Params:
    repeats: int
    count: int
    queued: int
    connects: int
    mib: int
    slow_mib: int
    idle: int
    timeout: float

    def size(self, key: str, workload: str) -> int:
        if workload == "bulk":
            return self.slow_mib if key in SLOW else self.mib
        return {"queued": self.queued, "connect-per-message": self.connects,
                "idle-connections": self.idle}.get(workload, self.count)


def run_cell(key: str, workload: str, p: Params) -> Result:
    if workload == "pairing":
        return pairing_cell(key, p.timeout)
    n = p.size(key, workload)
    if workload == "idle-connections":
        return idle_cell(key, n, p.timeout)
    args = ["--count", str(n), "--mib", str(p.size(key, "bulk"))]
    if workload == "sequential":
        args.append("--samples")
    if key == "rust":
        return run_json([str(rust_binary()), "bench", workload, *args], p.timeout)
    return run_json(py_worker(key, workload, *args), p.timeout)


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Metric:
    key: str
    workload: str
    field: str
    label: str
    better: str  # "higher" | "lower" | "none"
    digits: int = 0


def metrics(p: Params) -> list[Metric]:
    return [
        Metric("seq_msgs", "sequential", "msg_per_s", "sequential, one cached connection: msg/s", "higher"),
        Metric("seq_p50", "sequential", "p50_us", "sequential: p50 (us)", "lower"),
        Metric("seq_p99", "sequential", "p99_us", "sequential: p99 (us)", "lower"),
        Metric("cpm_msgs", "connect-per-message", "msg_per_s", "new connection per message: msg/s", "higher"),
        Metric("cpm_p50", "connect-per-message", "p50_us", "new connection per message: p50 (us)", "lower"),
        Metric("queued", "queued", "msg_per_s", f"{p.queued:,} queued on one connection: msg/s", "higher"),
        Metric("bulk", "bulk", "mib_per_s", "one stream: MiB/s", "higher", 1),
        Metric("pair_ms", "pairing", "ms", "pairing end to end: ms", "lower", 1),
        Metric("pair_rt", "pairing", "round_trips", "pairing: round trips (messages the host answered)", "none"),
        Metric("idle_kib", "idle-connections", "kib_per_conn", "memory per idle connection: KiB", "lower", 1),
    ]


@dataclass
class Run:
    params: Params
    contenders: list[str]
    workloads: list[str]
    unavailable: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def values(self, key: str, workload: str, fld: str) -> list[float]:
        return [float(s["result"][fld]) for s in self.samples
                if s["contender"] == key and s["workload"] == workload and "result" in s]

    def median(self, key: str, m: Metric) -> float | None:
        v = self.values(key, m.workload, m.field)
        return statistics.median(v) if v else None

    def why_missing(self, key: str, workload: str) -> str:
        """Why a cell has no number: not applicable, contender unavailable, or failures."""
        if (key, workload) in NOT_APPLICABLE:
            return "n/a: " + NOT_APPLICABLE[(key, workload)]
        if key in self.unavailable:
            return "not run: " + self.unavailable[key]
        if workload not in self.workloads or key not in self.contenders:
            return "not selected"
        errors = [s["error"] for s in self.samples
                  if s["contender"] == key and s["workload"] == workload and "error" in s]
        return "failed: " + (errors[0][:200] if errors else "no samples")


def fmt(v: float, digits: int) -> str:
    return f"{v:,.{digits}f}"


def ratio_text(v: float, ref: float, better: str) -> str:
    if better == "higher":
        return f"{v / ref * 100:.0f}%"
    if better == "lower":
        return f"{v / ref:.2f}x"
    return ""


def main_table(run: Run) -> tuple[list[str], list[dict[str, Any]]]:
    """The markdown table (values, and in parentheses the ratio to plain Rust: % of its rate,
    or x its time/memory), and the same as data."""
    cols = [BY_KEY[k] for k in run.contenders]
    head = "| metric | " + " | ".join(c.name for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    rows: list[dict[str, Any]] = []
    notes: dict[str, int] = {}
    for m in metrics(run.params):
        if m.workload not in run.workloads:
            continue
        ref = run.median("rust", m) if "rust" in run.contenders else None
        cells = []
        row: dict[str, Any] = {"metric": m.key, "label": m.label, "workload": m.workload, "field": m.field,
                               "better": m.better, "medians": {}, "ratio_to_rust": {}, "missing": {}}
        for c in cols:
            v = run.median(c.key, m)
            if v is None:
                reason = run.why_missing(c.key, m.workload)
                n = notes.setdefault(reason, len(notes) + 1)
                cells.append(f"{reason.split(':')[0]} [{n}]")
                row["missing"][c.key] = reason
                continue
            row["medians"][c.key] = v
            text = fmt(v, m.digits)
            extra = []
            if ref is not None and c.key != "rust" and ref > 0 and m.better != "none":
                row["ratio_to_rust"][c.key] = v / ref
                extra.append(ratio_text(v, ref, m.better))
            if m.workload == "bulk" and c.key in SLOW:
                extra.append(f"{run.params.size(c.key, 'bulk')} MiB")
            cells.append(text + (f" ({', '.join(extra)})" if extra else ""))
        rows.append(row)
        lines.append(f"| {m.label} | " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines.extend(f"[{n}] {reason}  " for reason, n in notes.items())
    return lines, rows


@dataclass(frozen=True)
class Target:
    label: str
    num: tuple[str, str]  # (contender, metric key)
    den: tuple[str, str]
    kind: str  # "x<=", "%>=", "x>=", "cost<="
    goal: float


TARGETS = [
    Target("sequential p50: raw binding vs plain Rust", ("raw", "seq_p50"), ("rust", "seq_p50"), "x<=", 1.3),
    Target("sequential p50: raw binding on the busy-polling loop vs plain Rust", ("busy", "seq_p50"),
           ("rust", "seq_p50"), "x<=", 1.3),
    Target("sequential p50: cache/request layer vs plain Rust", ("layer", "seq_p50"), ("rust", "seq_p50"), "x<=", 1.3),
    Target("queued msg/s: raw binding vs plain Rust", ("raw", "queued"), ("rust", "queued"), "%>=", 0.9),
    Target("queued msg/s: cache/request layer vs plain Rust", ("layer", "queued"), ("rust", "queued"), "%>=", 0.9),
    Target("one stream MiB/s: raw binding vs plain Rust", ("raw", "bulk"), ("rust", "bulk"), "%>=", 0.9),
    Target("one stream MiB/s: raw binding on a worker per core vs plain Rust", ("cores", "bulk"), ("rust", "bulk"),
           "%>=", 0.9),
    Target("sequential msg/s: raw binding vs PyPI iroh", ("raw", "seq_msgs"), ("pypi-iroh", "seq_msgs"), "x>=", 4),
    Target("sequential msg/s: cache/request layer vs PyPI iroh", ("layer", "seq_msgs"), ("pypi-iroh", "seq_msgs"),
           "x>=", 4),
    Target("queued msg/s: raw binding vs PyPI iroh", ("raw", "queued"), ("pypi-iroh", "queued"), "x>=", 80),
    Target("queued msg/s: cache/request layer vs PyPI iroh", ("layer", "queued"), ("pypi-iroh", "queued"), "x>=", 80),
    Target("one stream MiB/s: raw binding vs PyPI iroh", ("raw", "bulk"), ("pypi-iroh", "bulk"), "x>=", 40),
    Target("cost of the cache/request layer: sequential p50 (layer / raw - 1)", ("layer", "seq_p50"),
           ("raw", "seq_p50"), "cost<=", 0.15),
    Target("cost of the cache/request layer: sequential msg/s (raw / layer - 1)", ("raw", "seq_msgs"),
           ("layer", "seq_msgs"), "cost<=", 0.15),
    Target("cost of the cache/request layer: queued msg/s (raw / layer - 1)", ("raw", "queued"),
           ("layer", "queued"), "cost<=", 0.15),
]


def target_table(run: Run) -> tuple[list[str], list[dict[str, Any]]]:
    ms = {m.key: m for m in metrics(run.params)}
    lines = ["| target | measured | goal | result |", "|---|---|---|---|"]
    rows: list[dict[str, Any]] = []
    for t in TARGETS:
        a, b = run.median(t.num[0], ms[t.num[1]]), run.median(t.den[0], ms[t.den[1]])
        goal = {"x<=": f"<= {t.goal:g}x", "%>=": f">= {t.goal * 100:.0f}%", "x>=": f">= {t.goal:g}x",
                "cost<=": f"<= {t.goal * 100:.0f}%"}[t.kind]
        row: dict[str, Any] = {"target": t.label, "num": list(t.num), "den": list(t.den), "kind": t.kind,
                               "goal": t.goal}
        if a is None or b is None or b == 0:
            missing = t.num if a is None else t.den
            why = run.why_missing(missing[0], ms[missing[1]].workload)
            row.update(value=None, result="NOT RUN", why=why)
            lines.append(f"| {t.label} | {why} | {goal} | NOT RUN |")
        else:
            r = a / b
            if t.kind == "cost<=":
                r -= 1
                ok = r <= t.goal
                shown = f"{r * 100:+.1f}%"
            elif t.kind == "%>=":
                ok = r >= t.goal
                shown = f"{r * 100:.0f}%"
            elif t.kind == "x>=":
                ok = r >= t.goal
                shown = f"{r:.1f}x"
            else:
                ok = r <= t.goal
                shown = f"{r:.2f}x"
            row.update(value=r, result="PASS" if ok else "MISS")
            lines.append(f"| {t.label} | {shown} | {goal} | {'PASS' if ok else 'MISS'} |")
        rows.append(row)
    return lines, rows


def cache_lines(run: Run) -> list[str]:
    ms = {m.key: m for m in metrics(run.params)}
    out = []
    for k in run.contenders:
        seq, cpm = run.median(k, ms["seq_msgs"]), run.median(k, ms["cpm_msgs"])
        if seq and cpm:
            out.append(f"- {BY_KEY[k].name}: {seq:,.0f} msg/s on one connection vs {cpm:,.0f} msg/s with a new "
                       f"connection per message: {seq / cpm:.1f}x")
    return out


def plot(run: Run, path: Path) -> str | None:
    """CDF and box plot of every sequential request's latency, per contender. Returns why
    there is no plot, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        return "matplotlib is not installed (the `bench` extra installs it)"
    series: list[tuple[str, list[float]]] = []
    for k in run.contenders:
        lat = [x for s in run.samples if s["contender"] == k and s["workload"] == "sequential" and "result" in s
               for x in s["result"].get("lat_us", [])]
        if lat:
            series.append((BY_KEY[k].name, sorted(lat)))
    if not series:
        return "no sequential latency samples"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for name, lat in series:
        n = len(lat)
        ax1.plot(lat, [(i + 1) / n for i in range(n)], label=f"{name} (pooled p50 {lat[round((n - 1) * 0.5)]:,.0f} us)")
    ax1.set_xscale("log")
    ax1.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax1.xaxis.set_minor_formatter(NullFormatter())
    ax1.set_xlabel("latency of one request (us, log scale)")
    ax1.set_ylabel("fraction of requests")
    ax1.set_title(f"Sequential {REQUEST} B request / {REPLY} B reply, one cached connection")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(loc="lower right", fontsize=8)
    ax2.boxplot([lat for _, lat in series], whis=(1, 99), showfliers=False)
    ax2.set_xticks(range(1, len(series) + 1), [name for name, _ in series], rotation=15, fontsize=8)
    ax2.set_yscale("log")
    ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax2.yaxis.set_minor_formatter(NullFormatter())
    ax2.set_ylabel("latency (us, log scale)")
    ax2.set_title("box: quartiles, whiskers: p1 and p99")
    ax2.grid(True, axis="y", which="both", alpha=0.3)
    fig.suptitle(f"iroh-pair benchmarks, loopback, relays off ({len(run.samples)} cells, medians in RESULTS.md)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "iroh_pair_workers": iroh_pair_workers(),
    }


def iroh_pair_workers() -> str:
    """The tokio worker count iroh-pair's contenders run on (iroh_pair.runtime's default, or
    IROH_PAIR_WORKER_THREADS), read from a fresh process; "?" if it cannot be read."""
    code = "from iroh_pair import _native, runtime; _native._debug_stats(); print(runtime.worker_threads())"
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return p.stdout.strip() if p.returncode == 0 else "?"


def command() -> str:
    exe = Path(sys.executable)
    try:
        exe_s = str(exe.relative_to(ROOT))
    except ValueError:
        exe_s = "python"
    argv0 = Path(sys.argv[0])
    head = ["-m", "bench"] if argv0.name == "__main__.py" else ["bench/run.py"]
    return shlex.join([exe_s, *head, *sys.argv[1:]])


KEPT_MARKER = "<!-- kept below: not generated by bench/run.py -->"


def write_keeping_tail(path: Path, generated: str) -> None:
    """Write ``generated`` to ``path``, keeping the hand-kept part of the file it replaces.

    Everything from the line :data:`KEPT_MARKER` to the end of the existing file (the marker
    included) is appended after the generated text, so sections written by hand (soak reports,
    the runtime choices) survive a new run. A file without the marker is overwritten whole.
    """
    kept = ""
    if path.exists():
        old = path.read_text()
        at = old.find("\n" + KEPT_MARKER + "\n")
        if at >= 0:
            kept = old[at + 1 :]
        elif old.startswith(KEPT_MARKER + "\n"):
            kept = old
    if kept:
        path.write_text(generated.rstrip("\n") + "\n\n" + kept)
    else:
        path.write_text(generated)


def write_results(run: Run, out: Path, wall: float, info: dict[str, Any], cmd: str) -> list[str]:
    table, rows = main_table(run)
    targets, trows = target_table(run)
    no_plot = plot(run, out / "latency.png")
    if no_plot is None:
        png = "![Latency distributions of the sequential workload](latency.png)"
    else:
        png = f"(no plot: {no_plot})"
        (out / "latency.png").unlink(missing_ok=True)
    p = run.params
    date = info["date"]
    md = [
        "# Benchmarks: iroh-pair against plain Rust iroh, PyPI iroh and aioquic",
        "",
        f"Written by `bench/run.py` on {date}; nothing here is typed by hand. Every sample is in "
        "[results.json](results.json).",
        "",
        f"- Command (from the repository root): `{cmd}`",
        f"- Machine: {info['machine']['cores']} cores, {info['machine']['cpu']}, {info['machine']['system']}, "
        f"Python {info['machine']['python']}; iroh-pair on {info['machine'].get('iroh_pair_workers', '?')} tokio "
        "worker thread(s) (`iroh_pair.runtime`); load average at the start "
        f"{' / '.join(str(x) for x in info['machine']['load_average_at_start'])}, at the end "
        f"{' / '.join(str(x) for x in info['load_average_at_end'])} (1 / 5 / 15 min; a shared machine: "
        "absolute numbers are noise, the ratios measured side by side are the result)",
        f"- Wall time of the run: {wall:.0f} s; {p.repeats} repeats, the median of each cell is shown",
        f"- Workloads: {REQUEST}-byte request, {REPLY}-byte reply, a new stream per request; sequential: "
        f"{p.count:,} requests on one connection after {WARMUP} warm-up requests; new connection per message: "
        f"{p.connects:,} (dial, request, close); queued: {p.queued:,} requests started at once on one connection; "
        f"one stream: {p.mib} MiB for plain Rust and iroh-pair, {p.slow_mib} MiB for PyPI iroh and aioquic "
        "(at their rate a larger stream only adds minutes, the rate is steady); pairing: one pairing per cell, "
        "host and joiner in two processes; idle connections: "
        f"{p.idle} connections after one warm-up connection, server in another process",
        "",
        "## Contenders",
        "",
        "| column | what | version | concurrent streams per connection |",
        "|---|---|---|---|",
    ]
    for k in run.contenders:
        c = BY_KEY[k]
        md.append(f"| {c.name} | {c.what} | {run.versions.get(k, '-')} | {c.stream_limit} |")
    md += [""]
    if run.unavailable:
        md += ["Could not run:", ""] + [f"- {BY_KEY[k].name}: {why}" for k, why in run.unavailable.items()] + [""]
    md += [
        "## Medians",
        "",
        "In parentheses, the ratio to plain Rust: for rates the percentage of Rust's rate, for times and "
        "memory the multiple of Rust's (lower is better).",
        "",
        *table,
        "",
        "## Targets (issue #17)",
        "",
        "Ratios of the medians above.",
        "",
        *targets,
        "",
        "## One cached connection vs a new connection per message",
        "",
        *cache_lines(run),
        "",
        "## Latency distributions",
        "",
        png,
        "",
        "## Method",
        "",
        "- Every cell is a fresh process. Request/response, queued and one-stream cells have client and server "
        "in that one process (as the plain-Rust bench mode has), over loopback UDP on 127.0.0.1.",
        "- Relays, address lookup and the portmapper are off for every iroh endpoint (this package: the "
        "defaults of `Endpoint.bind`; PyPI iroh: the minimal preset with `RelayMode.disabled()`; the Rust "
        "node: `presets::Minimal`, `RelayMode::Disabled`); clients dial the server's direct address.",
        "- Order: within a repeat, the contenders of a workload run one after another, starting one place later "
        "in each repeat.",
        "- Pairing time runs from the joiner's \"ready\" line (its node is open) to its \"paired\" line, as the "
        "driver receives them; it includes the QUIC handshake. Round trips are the pairing messages the host "
        "received and answered after the handshake (its `pairing_messages_received` counter).",
        "- Memory per idle connection: (RSS after - RSS before) / count in the client's process, the server "
        "being another process (the Rust node's echo mode for the iroh contenders, an aioquic server for "
        "aioquic); connections held idle for a second before the second reading.",
        "- Latencies are per request, measured by the client around the whole request (open stream, send, "
        "read the reply to its end); p50/p99 are nearest-rank.",
        "",
    ]
    write_keeping_tail(out / "RESULTS.md", "\n".join(md))
    raw = {
        "info": info,
        "command": cmd,
        "wall_s": round(wall, 1),
        "params": vars(p),
        "contenders": {k: {"name": BY_KEY[k].name, "version": run.versions.get(k),
                           "stream_limit": BY_KEY[k].stream_limit} for k in run.contenders},
        "unavailable": run.unavailable,
        "not_applicable": [{"contender": k, "workload": w, "why": why} for (k, w), why in NOT_APPLICABLE.items()],
        "table": rows,
        "targets": trows,
        "samples": run.samples,
    }
    (out / "results.json").write_text(json.dumps(raw, indent=None, separators=(",", ":")) + "\n")
    return table + [""] + targets


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if "--files" in args:
        from bench import files

        files.main([x for x in args if x != "--files"])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run of about a minute (small counts, 2 repeats)")
    ap.add_argument("--repeats", type=int, help="repeats per cell (default 3; --quick: 2)")
    ap.add_argument("--count", type=int, help="sequential requests per cell (default 3000)")
    ap.add_argument("--queued", type=int, help="requests queued at once (default 5000)")
    ap.add_argument("--connects", type=int, help="messages with a new connection each (default 300)")
    ap.add_argument("--mib", type=int, help="MiB on one stream (default 256)")
    ap.add_argument("--slow-mib", type=int, help="MiB on one stream for PyPI iroh and aioquic (default 64)")
    ap.add_argument("--idle", type=int, help="idle connections (default 100)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per cell")
    ap.add_argument("--contenders", default=",".join(c.key for c in CONTENDERS))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--out", type=Path, default=BENCH, help="where RESULTS.md, results.json, latency.png go")
    a = ap.parse_args(argv)
    q = a.quick
    p = Params(
        repeats=a.repeats or (2 if q else 3),
        count=a.count or (300 if q else 3000),
        queued=a.queued or (500 if q else 5000),
        connects=a.connects or (30 if q else 300),
        mib=a.mib or (16 if q else 256),
        slow_mib=a.slow_mib or (4 if q else 64),
        idle=a.idle or (20 if q else 100),
        timeout=a.timeout,
    )
    contenders = [k for k in a.contenders.split(",") if k]
    workloads = [w for w in a.workloads.split(",") if w]
    for k in contenders:
        if k not in BY_KEY:
            ap.error(f"unknown contender {k!r}")
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}")
    run = Run(p, contenders, workloads)
    for k in contenders:
        why, v = probe(k)
        run.versions[k] = v
        if why is not None:
            run.unavailable[k] = why
            print(f"cannot run {BY_KEY[k].name}: {why}", file=sys.stderr)
    info: dict[str, Any] = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine()}
    a.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    runnable = [k for k in contenders if k not in run.unavailable]
    for rep in range(p.repeats):
        for w in workloads:
            keys = [k for k in runnable if (k, w) not in NOT_APPLICABLE]
            if not keys:
                continue
            shift = rep % len(keys)
            for pos, k in enumerate(keys[shift:] + keys[:shift]):
                t = time.monotonic()
                rec: dict[str, Any] = {"contender": k, "workload": w, "repeat": rep, "position": pos}
                try:
                    rec["result"] = run_cell(k, w, p)
                except Exception as e:  # noqa: BLE001 - a failed cell is a result too
                    rec["error"] = " ".join(f"{type(e).__name__}: {e}".split())
                rec["wall_s"] = round(time.monotonic() - t, 2)
                run.samples.append(rec)
                shown = {kk: vv for kk, vv in rec.get("result", {}).items() if kk != "lat_us"}
                print(f"  [{rep + 1}/{p.repeats}] {w:20} {k:10} {rec['wall_s']:6.1f}s "
                      f"{json.dumps(shown) if 'result' in rec else rec['error'][:300]}", file=sys.stderr, flush=True)
    wall = time.monotonic() - start
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = write_results(run, a.out, wall, info, command())
    print()
    print("\n".join(text))
    print(f"\n{len(run.samples)} cells in {wall:.0f} s; wrote {a.out / 'RESULTS.md'}, {a.out / 'results.json'}"
          + ("" if not (a.out / "latency.png").exists() else f", {a.out / 'latency.png'}"))


if __name__ == "__main__":
    main()
