"""LAN discovery in a simulated network, with no server at all (issue #18, "Must show").

Each lab test is one run of the harness ``iroh-pair-lab lan-...`` (``rust/lab/src/lan.rs``):
LANs are home routers (patchbay, Moderate NAT) with several devices on one bridge; no relay and
no lookup server exist, and every node runs in LAN mode (relays off, lookup off, mDNS on), so
mDNS is the only way anyone finds anyone. The devices run ``tests/lab_lan_agent.py`` (Node and
Endpoint API, and a raw mDNS capture) or the installed CLI (``python -m iroh_pair``). The tests
assert on the harness's JSON lines and print the key numbers (``pytest -s`` shows them).

Needs the harness (``$IROH_PAIR_LAB_BIN`` or ``target/release/iroh-pair-lab``), ``nft`` and root
or unprivileged user namespaces; a missing piece skips, or fails under
``IROH_PAIR_REQUIRE_LAB=1`` / ``IROH_PAIR_REQUIRE_ALL=1``.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import helpers
from helpers import ROOT, lab_events
from lab_lan_agent import DnsError, parse_dns

AGENT = ROOT / "tests" / "lab_lan_agent.py"
BIP39 = set((ROOT / "python" / "iroh_pair" / "bip39_english.txt").read_text().split())
SPOKEN = re.compile(r"^([1-9][0-9]?)-([a-z]+)-([a-z]+)-([a-z]+)$")


# -- the harness --------------------------------------------------------------------------------


def _required() -> bool:
    return bool(os.environ.get("IROH_PAIR_REQUIRE_LAB") or os.environ.get("IROH_PAIR_REQUIRE_ALL"))


def lab_binary() -> Path:
    env = os.environ.get("IROH_PAIR_LAB_BIN")
    lab = Path(env) if env else ROOT / "target" / "release" / "iroh-pair-lab"
    reason = None
    if sys.platform != "linux":
        reason = "the lab needs Linux network namespaces"
    elif not lab.is_file():
        reason = f"lab harness not built: {lab} (cargo build --release -p iroh-pair-lab)"
    elif shutil.which("nft") is None and not Path("/usr/sbin/nft").exists():
        reason = "nft (Debian package nftables) is not installed"
    if reason is not None:
        if _required():
            pytest.fail(reason)
        pytest.skip(reason)
    return lab


def leftovers(marker: str) -> list[str]:
    """Processes whose command line mentions ``marker`` (the run's work directory)."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.append(f"{p.name}: {cmd[:200]}")
    return found


def run_lab(scenario: str, timeout: float = 200.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Runs one LAN scenario; returns the harness's result and all its lines. Fails unless it
    ended with a result, and if any of its processes or files outlived it."""
    argv = [str(lab_binary()), scenario, "--python", sys.executable, "--agent", str(AGENT)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # its children die with it (PR_SET_PDEATHSIG)
        out, err = proc.communicate()
        pytest.fail(f"{scenario}: the harness did not finish within {timeout} s\n{out[-4000:]}")
    workdir = f"iroh-pair-lab-lan-{proc.pid}"
    lines: list[dict[str, Any]] = []
    for text in out.splitlines():
        try:
            obj = json.loads(text)
        except ValueError:
            continue
        if isinstance(obj, dict):
            lines.append(obj)
    last = lines[-1] if lines else {}
    if proc.returncode != 0 or last.get("event") != "result":
        pytest.fail(f"{scenario}: harness exit {proc.returncode}; last line: {json.dumps(last)[:3000]}\n"
                    f"--- stderr (tail) ---\n{err[-4000:]}")
    assert not (Path("/tmp") / workdir).exists(), f"{workdir} was left behind"
    assert leftovers(workdir) == [], leftovers(workdir)
    result: dict[str, Any] = last["result"]
    return result, lines


events = lab_events


def show(title: str, **numbers: Any) -> None:
    helpers.show("lab-lan", title, **numbers)


def port_of(sockets: list[str]) -> int:
    v4 = [s for s in sockets if s.startswith("0.0.0.0:")]
    assert len(v4) == 1, sockets
    return int(v4[0].rsplit(":", 1)[1])


def lan_of(result: dict[str, Any], device: str) -> tuple[ipaddress.IPv4Network, str]:
    """The LAN (router's downstream network) and the address of ``device``."""
    for r in result["topology"]:
        for d in r["devices"]:
            if d["name"] == device:
                return ipaddress.IPv4Network(r["cidr"]), d["ip"]
    raise AssertionError(f"no device {device} in {result['topology']}")


def id_label(endpoint_id: str) -> str:
    """iroh-mdns-address-lookup's instance label: base32 (RFC 4648) of the 32 id bytes, no
    padding, lower case."""
    return base64.b32encode(bytes.fromhex(endpoint_id)).decode().rstrip("=").lower()


def assert_direct_lan(paths: list[dict[str, Any]], lan: ipaddress.IPv4Network, addr: str) -> None:
    assert paths, "no paths"
    assert all(p["kind"] == "direct" for p in paths), paths  # no relay path exists at all
    selected = [p for p in paths if p["selected"]]
    assert len(selected) == 1 and selected[0]["addr"] == addr, (paths, addr)
    assert ipaddress.IPv4Address(addr.rsplit(":", 1)[0]) in lan, (addr, lan)


# -- the capture's DNS parser (pure) -------------------------------------------------------------


def test_dns_parser_handles_compression_and_mdns_records() -> None:
    def name(*labels: str) -> bytes:
        return b"".join(bytes([len(x)]) + x.encode() for x in labels) + b"\0"

    header = struct.pack("!6H", 0, 0x8400, 1, 4, 0, 2)
    q = name("_irohv1", "_udp", "local") + struct.pack("!HH", 12, 0x8001)  # at offset 12
    svc = b"\xc0\x0c"
    inst = name("abc")[:-1] + svc  # "abc._irohv1._udp.local" via a pointer
    inst_off = 12 + len(q) + len(svc) + 10
    ptr = svc + struct.pack("!HHIH", 12, 1, 120, len(inst)) + inst
    inst_ptr = struct.pack("!H", 0xC000 | inst_off)
    target = name("abc-7", "local")
    srv = inst_ptr + struct.pack("!HHIH", 33, 0x8001, 120, 6 + len(target)) + struct.pack("!HHH", 0, 0, 7) + target
    txt_data = b"\x0arelay=x.yz\x00"
    txt = inst_ptr + struct.pack("!HHIH", 16, 1, 120, len(txt_data)) + txt_data
    any_rec = inst_ptr + struct.pack("!HHIH", 99, 1, 5, 2) + b"\xab\xcd"
    a = name("h", "local") + struct.pack("!HHIH", 1, 1, 120, 4) + bytes([10, 0, 1, 2])
    aaaa = name("h", "local") + struct.pack("!HHIH", 28, 1, 120, 16) + bytes.fromhex("fe80" + "00" * 13 + "01")
    msg = parse_dns(header + q + ptr + srv + txt + any_rec + a + aaaa)
    assert msg["response"] and msg["questions"] == [
        {"name": "_irohv1._udp.local", "type": "PTR", "class": 1, "unicast_response": True}]
    recs = [(r["section"], r["type"], r["name"], r["data"]) for r in msg["records"]]
    assert recs == [
        ("answer", "PTR", "_irohv1._udp.local", "abc._irohv1._udp.local"),
        ("answer", "SRV", "abc._irohv1._udp.local", {"priority": 0, "weight": 0, "port": 7, "target": "abc-7.local"}),
        ("answer", "TXT", "abc._irohv1._udp.local", ["relay=x.yz", ""]),
        ("answer", "99", "abc._irohv1._udp.local", "abcd"),
        ("additional", "A", "h.local", "10.0.1.2"),
        ("additional", "AAAA", "h.local", "fe80::1"),
    ]
    assert msg["records"][1]["class"] == 1  # the cache-flush bit is not the class
    with pytest.raises(DnsError):
        parse_dns(header[:4] + struct.pack("!4H", 1, 0, 0, 0) + b"\xc0\x0c")  # a pointer to itself
    with pytest.raises(DnsError):
        parse_dns(header + q + b"\x00")  # promised records are missing


# -- 1. paired devices restart and reconnect by id over mDNS -------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_lan_reconnect_by_id_after_restart() -> None:
    result, lines = run_lab("lan-reconnect")
    assert result["topology"] and all(r["router"] != "dc" for r in result["topology"])  # no servers
    first, second = result["first_run"], result["second_run"]
    lan, alpha_ip = lan_of(result, "alpha")
    _, beta_ip = lan_of(result, "beta")
    assert lan == lan_of(result, "beta")[0], "both on one LAN"
    # the same identities, on new ports
    assert first["alpha_open"]["id"] == second["alpha_open"]["id"]
    assert first["beta_open"]["id"] == second["beta_open"]["id"]
    a1, a2 = port_of(first["alpha_open"]["sockets"]), port_of(second["alpha_open"]["sockets"])
    b1, b2 = port_of(first["beta_open"]["sockets"]), port_of(second["beta_open"]["sockets"])
    assert a1 != a2 and b1 != b2, (a1, a2, b1, b2)
    # paired with each other before the restart
    assert first["paired"]["peer"] == first["alpha_open"]["id"]
    assert second["alpha_open"]["devices"] == [second["beta_open"]["id"]]
    assert second["beta_open"]["devices"] == [second["alpha_open"]["id"]]
    # beta dialed alpha by id alone (the registry holds no address) and got there directly
    rec, ex, back = second["reconnected"], second["exchanged"], second["pinged"]
    assert_direct_lan(rec["paths"], lan, f"{alpha_ip}:{a2}")
    assert_direct_lan(ex["paths"], lan, f"{alpha_ip}:{a2}")
    assert ex["requests"] == 21 and ex["cache"] == {"dials": 1, "dial_failures": 0, "live": 1}
    assert rec["seconds"] < 10
    # and alpha talks back over the same kind of path, to beta's new port
    assert back["requests"] == 20
    assert_direct_lan(back["paths"], lan, f"{beta_ip}:{b2}")
    assert second["alpha"]["received"] == 21 and second["beta"]["received"] == 20
    # both report the other on the LAN: alpha, which had been announcing first, and beta, which
    # dialed alpha by id before watching (iroh's lookup hides ids it resolved for a dial)
    alpha_events = [e["kind"] for e in second["alpha"]["events"]]
    assert "lan_appeared" in alpha_events, alpha_events
    assert ex["on_lan"] is True and "lan_appeared" in [e["kind"] for e in second["beta"]["events"]]
    rtts = sorted(ex["rtt_ms"])
    show("lan-reconnect", reconnect_s=rec["seconds"], reconnect_wall_s=round(second["reconnect_wall_s"], 3),
         path=rec["paths"][0]["addr"], ports_alpha=f"{a1}->{a2}", ports_beta=f"{b1}->{b2}",
         rtt_p50_ms=rtts[len(rtts) // 2], alpha_events=alpha_events,
         beta_events=[e["kind"] for e in second["beta"]["events"]], beta_on_lan=ex["on_lan"])


# -- 2. spoken-code pairing through the CLI -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_lan_cli_spoken_code_pairing() -> None:
    result, lines = run_lab("lan-cli")
    r1, r2 = result["round1"], result["round2"]
    host = r1["host"]
    code = host["code"]
    m = SPOKEN.match(r1["spoken"])
    assert m and code["spoken"] == r1["spoken"], r1["spoken"]
    assert all(w in BIP39 for w in m.groups()[1:]), r1["spoken"]
    host_id, joiner_id = code["id"], host["paired"]["id"]
    # a wrong word: pairing failed (exit 3), WRONG_CODE, and the host goes on hosting
    assert r1["wrong"]["exit"] == 3, r1["wrong"]
    assert "WRONG_CODE" in r1["wrong"]["stderr"], r1["wrong"]["stderr"]
    # the right words pair: both exit 0, same SAS, and each lists the other
    assert r1["right"]["exit"] == 0 and host["exit"] == 0, (r1["right"], host)
    assert r1["right"]["paired"]["id"] == host_id
    assert r1["right"]["paired"]["sas"] == host["paired"]["sas"]
    assert [d["id"] for d in r1["devices_host"]] == [joiner_id]
    assert [d["id"] for d in r1["devices_join"]] == [host_id]
    # the host counts attempts: three wrong joins burn a new code, the host gives up (exit 3,
    # BURNED), stops announcing, and the right words then find nobody
    m2 = SPOKEN.match(r2["spoken"])
    assert m2 and r2["spoken"] != r1["spoken"], r2["spoken"]
    assert [w["exit"] for w in r2["wrong"]] == [3, 3, 3], r2["wrong"]
    assert all("WRONG_CODE" in w["stderr"] for w in r2["wrong"])
    assert r2["host"]["exit"] == 3 and "BURNED" in r2["host"]["stderr"], r2["host"]
    assert r2["after_burn"]["exit"] == 1, r2["after_burn"]
    assert f"announces nameplate {m2[1]}" in r2["after_burn"]["stderr"], r2["after_burn"]
    t = {e["proc"]: e["t"] for e in lines if e.get("event") == "cli_exit"}
    show("lan-cli", spoken=f"{m[1]}-<3 words>", wrong_join_s=round(t["join-wrong"] - lines[0]["t"], 2),
         pair_s=round(t["join-right"] - t["join-wrong"], 2), sas=host["paired"]["sas"],
         burn_exits=[w["exit"] for w in r2["wrong"]], host2_exit=r2["host"]["exit"],
         after_burn=r2["after_burn"]["stderr"].strip()[:80])


# -- 3. a third device captures the mDNS traffic --------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_lan_capture_allowlist_and_no_secrets() -> None:
    result, lines = run_lab("lan-capture")
    code, ids, ips = result["code"], result["ids"], result["ips"]
    lan, _ = lan_of(result, "sniffer")
    nameplate = code["nameplate"]
    services = {"_irohv1._udp.local", f"_iroh-pair-{nameplate}._udp.local"}
    attack = result["attack"]
    labels = {id_label(ids["host"]): "host", id_label(ids["joiner"]): "joiner", attack["label"]: "sniffer"}
    assert id_label(ids["host"]) == ids["host_label"] and len(id_label(ids["host"])) == 52
    by_ip = {ips["host"]: "host", ips["joiner"]: "joiner", ips["sniffer"]: "sniffer"}  # the sniffer's guessing node
    host_re = re.compile(r"^([a-z2-7]{52})-(\d+)\.local$")
    packets = events(lines, "sniffer", "packet")
    assert packets, "nothing captured"

    secrets = [code["spoken"], "-".join(code["words"]), " ".join(code["words"]), code["tag"],
               code["full"].split(".")[0], code["full"].split(".")[1]]
    secrets += [w for w in code["words"] if len(w) >= 4]
    tag = bytes.fromhex(code["tag"])

    adverts: Counter[tuple[str, str, str]] = Counter()  # (node, service, phase)
    types: Counter[str] = Counter()
    for p in packets:
        assert "parse_error" not in p, p
        raw = bytes.fromhex(p["hex"])
        low = raw.lower()
        for s in secrets:
            assert s.lower().encode() not in low, f"secret {s!r} in a packet from {p['from']}"
        assert tag not in raw
        assert b"user-data" not in low
        sender = by_ip.get(p["from"])
        if sender is None:  # IPv6 link-local source: any of the nodes
            assert ipaddress.ip_address(p["from"].split("%")[0]).is_link_local, f"a packet from {p['from']}"
        owners = {lab for lab, who in labels.items() if sender in (None, who)}
        for q in p["questions"]:
            types["Q" + q["type"]] += 1
            assert q["type"] == "PTR" and q["name"] in services, q
        for r in p["records"]:
            types[r["type"]] += 1
            name, data = r["name"], r["data"]
            if r["type"] == "PTR":
                assert name in services and data.split(".", 1)[0] in owners and data.split(".", 1)[1] == name, r
            elif r["type"] == "SRV":
                inst, service = name.split(".", 1)
                assert inst in owners and service in services, r
                hm = host_re.match(data["target"])
                assert hm and hm[1] == inst and int(hm[2]) == data["port"], r
                if p["response"]:
                    adverts[(labels[inst], service, p["phase"])] += 1
            elif r["type"] == "TXT":
                inst, service = name.split(".", 1)
                assert inst in owners and service in services, r
                assert all(s.startswith("relay=") for s in data) and len(data) <= 1, r
            elif r["type"] in ("A", "AAAA"):
                hm = host_re.match(name)
                assert hm and hm[1] in owners, r
                addr = ipaddress.ip_address(data)
                assert (str(addr) == p["from"]) if r["type"] == "A" else addr.is_link_local, r
                assert r["type"] == "AAAA" or addr in lan
            else:
                raise AssertionError(f"record type {r['type']} is not on the allowlist: {r}")
    nameplate_service = f"_iroh-pair-{nameplate}._udp.local"
    # at least one advertisement from each node, during hosting and after pairing
    assert adverts[("host", "_irohv1._udp.local", "hosting")] >= 1, adverts
    assert adverts[("host", nameplate_service, "hosting")] >= 1, adverts
    assert adverts[("joiner", "_irohv1._udp.local", "paired")] + adverts[("joiner", "_irohv1._udp.local", "settled")] >= 1
    assert adverts[("host", "_irohv1._udp.local", "settled")] >= 1, adverts
    assert adverts[("joiner", "_irohv1._udp.local", "settled")] >= 1, adverts
    # the nameplate is announced only while the offer is live
    assert adverts[("host", nameplate_service, "settled")] == 0, adverts
    assert not any(nameplate_service in json.dumps(p) for p in packets if p["phase"] == "settled")
    # the sniffer read the nameplate off the air but cannot pair without the words
    assert attack["nameplate"] == nameplate and attack["ok"] is False, attack
    assert attack["error_type"] == "PairingFailed" and attack["reject"] == "WRONG_CODE" and attack["devices"] == 0
    assert result["attempts"]["used"] == 1 and result["attempts"]["done"] is False, result["attempts"]
    assert result["joined"]["peer"] == ids["host"] and result["host_paired"]["peer"] == ids["joiner"]
    assert result["host"]["devices"] == [ids["joiner"]]  # not the sniffer
    show("lan-capture", packets=len(packets), by_phase=dict(Counter(p["phase"] for p in packets)),
         by_source=dict(Counter(by_ip.get(p["from"], p["from"]) for p in packets)), record_types=dict(types),
         adverts={f"{k[0]}/{k[1].split('.')[0]}/{k[2]}": v for k, v in sorted(adverts.items())},
         attack=f"{attack['reject']} in {attack['seconds']} s", v6=result["capturing"]["v6_error"] or "joined")


# -- 4. two LANs: mDNS stays on its LAN ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_lan_isolated_other_lan_cannot_dial_by_id() -> None:
    result, lines = run_lab("lan-isolated")
    same, other = result["same_lan"], result["other_lan"]
    lan1, a_ip = lan_of(result, "a")
    lan2, _ = lan_of(result, "c")
    assert lan1 != lan2 and lan_of(result, "b")[0] == lan1
    a_port = port_of(events(lines, "a", "open")[0]["sockets"])
    # the same-LAN control: dialed by id, found by mDNS, direct on the LAN
    assert same["ok"] is True, same
    assert_direct_lan(same["paths"], lan1, f"{a_ip}:{a_port}")
    assert same["saw_target_on_lan"] is True
    # the other LAN: a typed, clean failure within the timeout, and no mDNS from LAN 1 at all
    assert other["ok"] is False and other["error_type"] in ("ConnectError", "Timeout"), other
    assert other["elapsed_s"] <= other["timeout"] + 2.0, other
    assert other["saw_target_on_lan"] is False and other["lan_seen"] == {}, other
    c_id = events(lines, "c", "open")[0]["id"]
    b_id = events(lines, "b", "open")[0]["id"]
    assert c_id not in result["server"]["lan_seen"] and b_id in result["server"]["lan_seen"]
    show("lan-isolated", same_lan_connect_s=same["connect_s"], same_lan_path=same["paths"][0]["addr"],
         other_lan=f"{other['error_type']} after {other['elapsed_s']} s (timeout {other['timeout']} s)",
         other_lan_error=other["error"][:80])
