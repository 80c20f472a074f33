"""The soak's instrument (issue #35): its state is constant-size, its quantiles and id
accounting are right, its checks fail on what they must catch, and a deliberately leaking
handler makes a real (loopback) soak fail its RSS check while the other process passes.

The long runs themselves are ``bench/soak.py`` (see its docstring); CI's short lab soak with
faults is ``tests/test_lab.py::test_soak_with_faults``.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT))
from bench import soak  # noqa: E402
from lab_agent import IdWindow, LatencyHistogram  # noqa: E402


def test_id_window_counts_and_stays_constant_size() -> None:
    w = IdWindow(1024)
    size = len(w.bits)
    rng = random.Random(7)
    skip = set(rng.sample(range(200_000), 40))
    again = set(rng.sample(range(200_000), 25)) - skip
    for n in range(200_000):
        if n in skip:
            continue
        w.add(n)
        if n in again:
            w.add(n)  # a repeat right away (inside the window)
    w.add(5)  # far below the window: counted as a repeat, cannot be told apart
    r = w.report()
    assert len(w.bits) == size and len(w.rep) == size, "the window must not grow"
    assert r["unique"] == 200_000 - 40
    assert r["missing_count"] == 40 and r["missing"] == sorted(skip)
    assert r["repeated_ids"] == 25 and r["repeated_deliveries"] == 26 and r["below_window"] == 1
    assert r["exactly_once"] == 200_000 - 40 - 25
    assert r["max_id"] == 199_999


def test_id_window_slides_over_a_jump() -> None:
    w = IdWindow(64)
    for n in (0, 1, 2, 500, 3):  # 3 arrives after the window slid past it: a repeat, and missing
        w.add(n)
    r = w.report()
    assert r["unique"] == 4 and r["max_id"] == 500
    assert r["missing_count"] == 500 - 3 and r["missing"][:3] == [3, 4, 5]
    assert r["below_window"] == 1


def test_latency_histogram_quantiles_within_bucket_error() -> None:
    rng = random.Random(3)
    xs = [rng.lognormvariate(-6.5, 1.0) for _ in range(50_000)] + [2.5]
    h = LatencyHistogram()
    for x in xs:
        h.add(x)
    s = sorted(xs)
    for q in (0.5, 0.9, 0.99):
        exact = s[max(0, -(-int(q * len(s) * 1000) // 1000) - 1)]
        got = h.quantile(q)
        assert got is not None and abs(got - exact) / exact < 0.04, (q, got, exact)
    assert h.max == 2.5 and len(h.counts) == LatencyHistogram.BUCKETS
    # merging the sparse form of two halves gives the same histogram
    a, b = LatencyHistogram(), LatencyHistogram()
    for i, x in enumerate(xs):
        (a if i % 2 else b).add(x)
    m = LatencyHistogram()
    m.merge_sparse(a.sparse(), a.max)
    m.merge_sparse(b.sparse(), b.max)
    assert m.counts == h.counts and m.max == h.max


def _args(**kw: Any) -> argparse.Namespace:
    base = {"warmup": 0.0, "report_every": 10.0, "rss_limit": 10.0, "rss_limit_kib_h": 4096.0,
            "slope_span": 600.0, "fd_limit": 16, "fault_step_limit_kib": 256.0, "first_fault_limit_kib": 4096.0}
    return argparse.Namespace(**(base | kw))


def _lines(received: dict[str, Any], *, host_rss: list[int], conns: int = 1,
           faults: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:  # type: ignore[assignment]
    out: list[dict[str, Any]] = [
        {"src": "host0", "t": 0.0, "event": "open"}, {"src": "host0", "t": 1.0, "event": "paired"},
        {"src": "join0", "t": 0.5, "event": "open"}, {"src": "join0", "t": 1.0, "event": "paired"},
    ]
    out += [{"src": "host0", "t": 2.0 + k, "event": "connection", "n": k + 1} for k in range(conns)]
    out += faults
    for k, kb in enumerate(host_rss):
        t = 10.0 + 10 * k
        out.append({"src": "host0", "t": t, "event": "sample", "rss_kb": kb, "fds": 20})
        out.append({"src": "join0", "t": t, "event": "sample", "rss_kb": 50_000, "fds": 20, "messages": 100 * k,
                    "hist": {"150": 100}, "max_ms": 1.0, "p50_ms": 1.0, "p99_ms": 1.0})
    out.append({"src": "join0", "t": 700.0, "event": "done", "sent": 1000, "failed_attempts": 0,
                "cache": {"retries": 0}, "duplicates_answered": 0})
    out.append({"src": "host0", "t": 701.0, "event": "done", "received": received})
    return out


def _check(lines: list[dict[str, Any]], **kw: Any) -> list[str]:
    args = _args(**kw)
    faults = [e for e in lines if e.get("event") == "fault"]
    rep = {"faults": faults, "pairs": [soak.pair_report(lines, 0, faults, 710.0, args)]}
    return soak.failures(rep, args)


GOOD = {"unique": 1000, "exactly_once": 1000, "repeated_deliveries": 0, "missing_count": 0}
FLAT = [50_000 + (k % 3) * 10 for k in range(70)]  # 700 s, flat


def test_checks_pass_a_clean_run_and_catch_each_defect() -> None:
    assert _check(_lines(GOOD, host_rss=FLAT)) == []
    lost = _check(_lines(GOOD | {"unique": 999, "exactly_once": 999, "missing_count": 1}, host_rss=FLAT))
    assert any("lost 1" in b for b in lost), lost
    rep = _check(_lines(GOOD | {"repeated_deliveries": 2, "exactly_once": 998}, host_rss=FLAT))
    assert any("2 repeated" in b for b in rep), rep
    recon = _check(_lines(GOOD, host_rss=FLAT, conns=2))
    assert any("2 connections without faults" in b for b in recon), recon
    # +6% over 690 s: under the percent limit, but 15,000 KiB/hour is over the rate limit
    slow_leak = [50_000 + int(3000 * k / 69) for k in range(70)]
    leak = _check(_lines(GOOD, host_rss=slow_leak))
    assert any("KiB/hour" in b and "host0" in b for b in leak), leak
    assert not any("%" in b and "host0" in b and "grew" in b for b in leak), leak
    big = _check(_lines(GOOD, host_rss=[50_000 + 100 * k for k in range(70)]))
    assert any("grew 13.8%" in b for b in big), big


def test_reconnects_are_attributed_to_faults() -> None:
    faults = [{"src": "lab", "t": 100.0, "event": "fault", "kind": "kill", "pair": 0, "phase": "start"},
              {"src": "lab", "t": 300.0, "event": "fault", "kind": "relay", "pair": None, "phase": "start"}]
    lines = _lines(GOOD, host_rss=FLAT, faults=faults)
    lines.append({"src": "host0", "t": 101.5, "event": "connection", "n": 2})
    lines.append({"src": "join0", "t": 101.4, "event": "stall", "gap_s": 2.5, "failed_attempts": 1})
    lines.sort(key=lambda e: e["t"])
    args = _args()
    fs = [e for e in lines if e.get("event") == "fault"]
    p = soak.pair_report(lines, 0, fs, 710.0, args)
    assert [(f["kind"], f["reconnects"], f["max_stall_s"]) for f in p["per_fault"]] == [("kill", 1, 2.5), ("relay", 0, 0.0)]
    assert soak.failures({"faults": fs, "pairs": [p]}, args) == []
    # a reconnect before any fault is a regression
    lines.append({"src": "host0", "t": 50.0, "event": "connection", "n": 3})
    lines.sort(key=lambda e: e["t"])
    p = soak.pair_report(lines, 0, fs, 710.0, args)
    assert any("before any fault" in b for b in soak.failures({"faults": fs, "pairs": [p]}, args))


def _outages(*starts: float) -> list[dict[str, Any]]:
    out = []
    for n, t in enumerate(starts):
        out += [{"src": "lab", "t": t, "event": "fault", "kind": "outage", "pair": 0, "phase": "start", "n": n},
                {"src": "lab", "t": t + 5, "event": "fault", "kind": "outage", "pair": 0, "phase": "end", "n": n}]
    return out


def _stepped(steps: dict[float, int], *, per_hour: float = 0.0) -> list[int]:
    """70 host samples (t = 10 ... 700 s): flat at 50,000 KiB plus ``steps`` (KiB added at a time)
    plus a steady ``per_hour`` KiB/hour."""
    return [50_000 + int(per_hour * t / 3600) + sum(kb for at, kb in steps.items() if t >= at)
            for t in (10.0 + 10 * k for k in range(70))]


def test_memory_is_judged_between_faults_and_per_repeated_fault() -> None:
    """Steps at faults are judged apart from steady growth: the first fault of a kind may add a
    bounded one-off step (here +1,800 KiB, as a joiner's first outage does), the later ones must
    not add it again, and growth between faults is held to the KiB/hour limit."""
    faults = _outages(100.0, 300.0, 500.0)
    # one step at the first outage, flat otherwise: passes (the whole-span slope would not)
    once = _lines(GOOD, host_rss=_stepped({120.0: 1800}), faults=faults)
    assert _check(once) == []
    p = soak.pair_report(once, 0, [e for e in once if e.get("event") == "fault"], 710.0, _args())
    host = next(r for r in p["processes"] if r["proc"] == "host0")
    assert host["slope_kib_h"] > 4096 and host["steady_kib_h"] == 0.0, host
    assert host["first_fault_steps_kb"] == 1800 and host["repeat_fault_step_mean_kb"] == 0.0, host
    # the same step at every outage: a leak per reconnect
    every = _check(_lines(GOOD, host_rss=_stepped({120.0: 1800, 320.0: 600, 520.0: 600}), faults=faults))
    assert any("each repeated fault adds 600.0 KiB" in b for b in every), every
    # a first step beyond the one-off allowance
    huge = _check(_lines(GOOD, host_rss=_stepped({120.0: 5000}), faults=faults))
    assert any("first fault of each kind added 5000 KiB" in b for b in huge), huge
    # steady growth between the faults (8,000 KiB/hour), with flat fault windows
    steady = _check(_lines(GOOD, host_rss=_stepped({}, per_hour=8000), faults=faults), slope_span=300)
    assert any("between faults" in b and "host0" in b for b in steady), steady


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_leaking_handler_fails_the_soak(tmp_path: Path) -> None:
    """A real loopback soak (one pair, 75 s) whose host handler keeps every 4 KiB payload
    (``--leak``) must fail the host's RSS check; the joiner in the same run, which leaks
    nothing, must pass its own (the control)."""
    out = tmp_path / "leak.json"
    argv = [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "1.25", "--warmup", "15",
            "--interval", "0.01", "--payload-bytes", "4096", "--leak", "--json", str(out), "--no-plot"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=280, cwd=ROOT)
    print(r.stdout[-3000:])
    assert out.exists(), f"soak.py wrote no report (exit {r.returncode}):\n{r.stderr[-3000:]}"
    rep = json.loads(out.read_text())
    p = rep["pairs"][0]
    host = next(x for x in p["processes"] if x["proc"] == "host0")
    join = next(x for x in p["processes"] if x["proc"] == "join0")
    assert p["lost"] == 0 and p["repeated"] == 0 and p["leaked_payloads"] == p["sent"] > 1000, p
    assert r.returncode == 1
    assert any("host0#0: RSS grew" in b for b in rep["failures"]), rep["failures"]
    assert host["growth_pct"] > 10.0, host
    assert not any("join0" in b for b in rep["failures"]), rep["failures"]
    assert join["growth_pct"] is not None and join["growth_pct"] <= 10.0, join
