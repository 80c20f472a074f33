"""NAT traversal, faults and soak in a simulated network (issue #16).

Each test is one real run of the lab harness ``iroh-pair-lab`` (``rust/lab``, over n0's
``patchbay``): it builds the topology, starts this project's relay and lookup servers on a public
host and Python nodes (``tests/lab_agent.py``) in the devices, and prints JSON lines; the tests
assert on those lines and print the key numbers (``pytest -s`` shows them).

Needs the harness (``$IROH_PAIR_LAB_BIN`` or ``target/release/iroh-pair-lab``), the server
binaries, ``nft`` and root or unprivileged user namespaces. A missing piece skips with the
reason, or fails under ``IROH_PAIR_REQUIRE_LAB=1`` / ``IROH_PAIR_REQUIRE_ALL=1`` (CI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from iroh_pair.testing import DNS_BIN, RELAY_BIN, find_binary

import helpers
from helpers import ROOT, lab_events

AGENT = ROOT / "tests" / "lab_agent.py"
MiB = 1024 * 1024

pytestmark = pytest.mark.slow


def _required() -> bool:
    return bool(os.environ.get("IROH_PAIR_REQUIRE_LAB") or os.environ.get("IROH_PAIR_REQUIRE_ALL"))


def _skip_or_fail(reason: str) -> None:
    if _required():
        pytest.fail(reason)
    print(f"lab test skipped: {reason}")
    pytest.skip(reason)


def lab_binary() -> Path:
    """The harness, or skip/fail with the reason."""
    env = os.environ.get("IROH_PAIR_LAB_BIN")
    lab = Path(env) if env else ROOT / "target" / "release" / "iroh-pair-lab"
    if not lab.is_file():
        _skip_or_fail(f"lab harness not built: {lab} (cargo build --release -p iroh-pair-lab)")
    for name in (RELAY_BIN, DNS_BIN):
        if find_binary(name) is None:
            _skip_or_fail(f"{name} not built (cargo build --release -p {name})")
    if shutil.which("nft") is None and not Path("/usr/sbin/nft").exists():
        _skip_or_fail("nft (Debian package nftables) is not installed")
    if sys.platform != "linux":
        _skip_or_fail("the lab needs Linux network namespaces")
    return lab


def run_lab(scenario: str, *extra: str, timeout: float = 180.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Runs one scenario; returns the harness's result object and all its output lines.
    Fails (with the harness's error line and stderr tail) unless it ended with a result."""
    lab = lab_binary()
    argv = [str(lab), scenario, "--python", sys.executable, "--agent", str(AGENT), *extra]
    for name, env in ((RELAY_BIN, "--relay-bin"), (DNS_BIN, "--dns-bin")):
        argv += [env, str(find_binary(name))]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as e:  # run() has killed the harness; its children die with it
        pytest.fail(f"{scenario}: the harness did not finish within {timeout} s\n{e.stdout!r}"[-4000:])
    lines: list[dict[str, Any]] = []
    for text in r.stdout.splitlines():
        try:
            obj = json.loads(text)
        except ValueError:
            continue
        if isinstance(obj, dict):
            lines.append(obj)
    last = lines[-1] if lines else {}
    if r.returncode != 0 or last.get("event") != "result":
        pytest.fail(
            f"{scenario}: harness exit {r.returncode}; last line: {json.dumps(last)[:3000]}\n"
            f"--- stderr (tail) ---\n{r.stderr[-4000:]}"
        )
    result: dict[str, Any] = last["result"]
    return result, lines


events = lab_events


def show(title: str, **numbers: Any) -> None:
    helpers.show("lab", title, **numbers)


def public_addrs(result: dict[str, Any], side: str, router: str) -> list[str]:
    """The addresses `side` ("join"/"host") knew of itself at the end that are on `router`'s
    public (NAT) IP: learned through QUIC address discovery at the lab's relay."""
    ip = next(r["public_ip"] for r in result["topology"] if r["router"] == router)
    return [a for a in result[side]["ip_addrs"] if a.rsplit(":", 1)[0] == ip]


def path_sequence(lines: list[dict[str, Any]], src: str) -> list[str]:
    """`src`'s path events in order, as "what kind addr" strings."""
    return [" ".join(str(x) for x in (e.get("what"), e.get("kind"), e.get("addr") or e.get("paths")) if x)
            for e in events(lines, src, "path_event")]


def assert_no_direct(side: dict[str, Any], who: str) -> None:
    paths = side["paths"]
    assert paths["kinds_listed"] == ["relay"], f"{who}: paths() listed {paths['kinds_listed']}"
    assert not paths["direct_ever_listed"] and not paths["direct_ever_selected"], f"{who}: {paths}"
    assert paths["selected_sequence"] == ["relay"], f"{who}: {paths['selected_sequence']}"


# -- 1. two Moderate NATs: relay first, then direct -----------------------------------------------


@pytest.mark.timeout(240)
def test_holepunch_moderate_nats_relay_then_direct() -> None:
    result, lines = run_lab("holepunch")
    join, host = result["join"], result["host"]
    seq = join["paths"]["selected_sequence"]
    addrs = events(lines, "joiner", "addrs")
    show("holepunch", sequence=seq, time_to_direct_s=join.get("time_to_direct_s"),
         time_to_direct_from_join_s=join.get("time_to_direct_from_join_s"),
         direct_rtt_p50_ms=join.get("direct_rtt_p50_ms"), joiner_addrs=join["ip_addrs"], host_addrs=host["ip_addrs"],
         joiner_path_events=path_sequence(lines, "joiner"), host_path_events=path_sequence(lines, "host"))
    # both sides learned their NAT-mapped address (QUIC address discovery at the relay)
    assert public_addrs(result, "join", "home2") and public_addrs(result, "host", "home1"), (join["ip_addrs"], host["ip_addrs"])
    assert join["paths"]["connections_seen"] == 1, "one connection, pairing then messaging"
    assert seq and seq[0] == "relay", f"the connection must start relayed: {seq}"
    assert join["direct"], (
        f"the selected path never became direct within 30 s (sequence {seq}, paths listed "
        f"{join['paths']['kinds_listed']}; the joiner's own addresses: {addrs})"
    )
    assert seq[:2] == ["relay", "direct"], seq
    assert join["selected_after_pings"] == "direct"
    assert "direct" in host["paths"]["selected_sequence"], host["paths"]
    assert join["time_to_direct_s"] < 30


# -- 2. Strict (symmetric) NAT vs Moderate: stays relayed, keeps working ---------------------------


@pytest.mark.timeout(240)
def test_strict_nat_stays_relayed_and_works() -> None:
    result, lines = run_lab("strict")
    join, host = result["join"], result["host"]
    show("strict", sequence=join["paths"]["selected_sequence"], transfer_mib=join["transfer_bytes"] / MiB,
         transfer_s=join["transfer_s"], mib_per_s=join["transfer_mib_per_s"], requests_ok=join["requests_ok"],
         request_p50_ms=join["request_p50_ms"], request_p99_ms=join["request_p99_ms"],
         joiner_addrs=join["ip_addrs"], host_addrs=host["ip_addrs"])
    # Both sides had a public candidate (QUIC address discovery), so "stays relayed" is the NAT's
    # doing: the Strict (symmetric) host's mapping towards the joiner is a fresh random port.
    assert public_addrs(result, "join", "lan-join") and public_addrs(result, "host", "lan-host"), (
        join["ip_addrs"], host["ip_addrs"])
    assert join["transfer_bytes"] == 16 * MiB and join["transfer_hashes_ok"]
    assert host["blob_bytes"] == 16 * MiB
    assert join["requests_ok"] == 100
    assert join["selected_at_end"] == "relay"
    assert join["paths"]["selected_sequence"] == ["relay"] and host["paths"]["selected_sequence"] == ["relay"]
    assert join["paths"]["connections_seen"] == 1


# -- 3. UDP blocked: relay only, never a direct path ----------------------------------------------


@pytest.mark.timeout(240)
def test_udp_blocked_relay_only() -> None:
    result, lines = run_lab("udp-blocked")
    join, host = result["join"], result["host"]
    show("udp-blocked", kinds_listed=join["paths"]["kinds_listed"], mib_per_s=join["transfer_mib_per_s"],
         requests_ok=join["requests_ok"], request_p50_ms=join["request_p50_ms"])
    assert all(r.get("block_udp") for r in result["topology"] if r["router"] != "dc")
    assert join["transfer_bytes"] == 16 * MiB and join["transfer_hashes_ok"] and join["requests_ok"] == 100
    assert_no_direct(join, "joiner")
    assert_no_direct(host, "host")
    # every path event of both sides is about the relay
    for src in ("joiner", "host"):
        kinds = {e.get("kind") for e in events(lines, src, "path_event")} - {None}
        assert kinds <= {"relay"}, f"{src} path events: {kinds}"


# -- 4. link outage during steady messaging: exactly-once delivery ---------------------------------


@pytest.mark.timeout(300)
def test_link_outage_exactly_once() -> None:
    result, lines = run_lab("outage", "--outage", "5")
    join, host, rec = result["join"], result["host"], result["recovered"]
    got = host["received"]
    show("outage", down_s=round(result["outage"]["down_s"], 2), recovered_after_link_up_s=rec["after_link_up_s"],
         max_gap_s=join["max_gap_s"], sent=join["sent"], unique_received=got["unique"],
         repeated_deliveries=got["repeated_deliveries"], app_retries=join["retried_messages"],
         duplicates_answered=join["duplicates_answered"],
         failed_attempts=join["failed_attempts"], cache_retries=join["cache"]["retries"],
         connections_joiner=join["paths"]["connections_seen"], path_after=join["selected_at_end"])
    assert result["outage"]["down_s"] >= 4.9
    # the outage was felt: no message got through while the link was down
    assert join["max_gap_s"] >= 4.0, join["max_gap_s"]
    assert rec["after_link_up_s"] < 30
    # exactly once at the application level: every id sent arrived, none missing, each applied once
    assert got["unique"] == join["sent"] == got["max_id"] + 1, (got, join["sent"])
    assert got["missing_count"] == 0 and got["applied"] == got["unique"]
    # messages flowed after the recovery too
    assert join["sent"] > rec["n"] + 10


# -- 5. soak with faults: exactly once, reconnects attributed to faults, flat RSS and fds ---------


@pytest.mark.timeout(480)
def test_soak_with_faults(tmp_path: Path) -> None:
    """Three minutes of steady messaging (``bench/soak.py --lab --faults``) with one fault every
    36 s: the joiner's link down 5 s, the joiner killed and restarted (same data, same outbox),
    the relay restarted, the lookup server restarted. Every message is delivered exactly once,
    the killed joiner reconnects, no reconnect happens without a fault, and no process's RSS
    (after a 20 s warm-up) or fd count grows past the soak's limits."""
    lab_binary()
    env = {**os.environ, "IROH_PAIR_LAB_BIN": str(lab_binary())}
    out = tmp_path / "soak.json"
    argv = [sys.executable, str(ROOT / "bench" / "soak.py"), "--lab", "--minutes", "3", "--faults",
            "--fault-every", "36", "--warmup", "20", "--json", str(out), "--no-plot"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=460, cwd=ROOT, env=env)
    print(r.stdout[-6000:])
    assert out.exists(), f"soak.py wrote no report (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    rep = json.loads(out.read_text())
    kinds = [f["kind"] for f in rep["faults"] if f.get("phase") == "end"]
    assert kinds == ["outage", "kill", "relay", "dns"], rep["faults"]
    assert rep["servers"] == {"relay": 2, "dns": 2}, rep["servers"]
    for p in rep["pairs"]:
        per_fault = {f["kind"]: f for f in p["per_fault"]}
        show(f"soak pair {p['pair']}", sent=p["sent"], exactly_once=p["delivered_exactly_once"], lost=p["lost"],
             repeated=p["repeated"], connections=p["connections"],
             reconnects={k: f["reconnects"] for k, f in per_fault.items()},
             stall_s={k: f["max_stall_s"] for k, f in per_fault.items()}, latency=p["latency"],
             rss=[(x["proc"], x["incarnation"], x["growth_pct"], x["slope_kib_h"]) for x in p["processes"]],
             fds=[(x["proc"], x["incarnation"], x.get("fds_first"), x.get("fds_last")) for x in p["processes"]])
        assert p["sent"] is not None and p["sent"] > 1000, p["sent"]
        assert p["lost"] == 0 and p["missing_count"] == 0 and p["repeated"] == 0, p
        assert p["delivered_exactly_once"] == p["sent"]
        assert p["joiner_incarnations"] == 2
        assert per_fault["kill"]["reconnects"] >= 1, "the restarted joiner must use a new connection"
        assert p["reconnects_before_first_fault"] == 0
        host = next(x for x in p["processes"] if x["proc"] == "host0")
        assert host["growth_pct"] is not None and host["post_warmup_span_s"] > 120, host
    assert rep["failures"] == [] and r.returncode == 0, rep["failures"]
