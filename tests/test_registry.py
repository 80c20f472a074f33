"""The paired-device registry (SQLite) and the node identity / data-directory lock."""

from __future__ import annotations

import hashlib
import os
import random
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iroh_pair import EndpointId, SecretKey
from iroh_pair.errors import (
    AmbiguousDevice,
    DataDirLocked,
    IrohPairError,
    KeyFileCorrupt,
    RegistryCorrupt,
    RegistryError,
    RegistrySchemaTooNew,
    UnknownDevice,
)
from iroh_pair.store import KEY_FILE, DataDirLock, load_or_create_secret_key
from iroh_pair.protocol.kdf import SessionKeys
from iroh_pair.protocol.device import DeviceInfo
from iroh_pair.store import _registry as registry_mod
from iroh_pair.store._registry import (
    APPLICATION_ID,
    DELIVERED_MAX_PER_DEVICE,
    DELIVERED_WINDOW,
    MIGRATIONS,
    SCHEMA_VERSION,
)
from iroh_pair.store import DeviceRegistry, PairedDevice, safe_display, sanitize_text


ENV = dict(os.environ)  # children import the same package as this run (the installed wheel in CI)


def _id() -> EndpointId:
    return SecretKey.generate().public()


def _keys() -> SessionKeys:
    return SessionKeys(send=os.urandom(32), receive=os.urandom(32))


def _dev(eid: EndpointId | None = None, name: str = "laptop", **kw: object) -> PairedDevice:
    fields: dict[str, object] = dict(
        endpoint_id=eid or _id(),
        name=name,
        device_type="laptop",
        os="Linux 6.8",
        app_version="1.0",
        paired_at=1_700_000_000.0,
        last_seen=None,
        keys=_keys(),
    )
    fields.update(kw)
    return PairedDevice(**fields)  # type: ignore[arg-type]


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[DeviceRegistry]:
    r = DeviceRegistry(tmp_path / "registry.db")
    yield r
    r.close()


# --------------------------------------------------------------------------------------------
# registry basics


def test_add_get_list_roundtrip(reg: DeviceRegistry) -> None:
    a, b = _dev(name="zeta"), _dev(name="Alpha", last_seen=5.0)
    reg.add_or_replace(a)
    reg.add_or_replace(b)
    assert reg.get(a.endpoint_id) == a
    assert reg.get(b.endpoint_id) == b
    assert reg.get(_id()) is None
    assert [d.name for d in reg.list()] == ["Alpha", "zeta"]
    assert len(reg) == 2 and a.endpoint_id in reg and _id() not in reg
    got = reg.get(a.endpoint_id)
    assert got is not None and got.keys.send == a.keys.send and got.keys.receive == a.keys.receive
    assert "redacted" in repr(got.keys)


def test_repairing_replaces(reg: DeviceRegistry) -> None:
    eid = _id()
    reg.add_or_replace(_dev(eid, name="old", last_seen=10.0))
    new = _dev(eid, name="new", device_type="phone", paired_at=2e9)
    reg.add_or_replace(new)
    assert reg.list() == [new]
    assert reg.get(eid) == new  # last_seen of the old entry is not kept


def test_from_pairing() -> None:
    eid, keys = _id(), _keys()
    d = PairedDevice.from_pairing(eid, DeviceInfo("Pixel", "phone", "Android 15", "2.1"), keys, 3.0)
    assert (d.name, d.device_type, d.os, d.app_version, d.paired_at, d.last_seen, d.keys) == (
        "Pixel", "phone", "Android 15", "2.1", 3.0, None, keys
    )


def test_find(reg: DeviceRegistry) -> None:
    a = reg.add_or_replace(_dev(name="Work Laptop"))
    b = reg.add_or_replace(_dev(name="phone"))
    c = reg.add_or_replace(_dev(name="phone"))
    assert reg.find("Work Laptop") == a
    assert reg.find("  work laptop ") == a  # case-insensitive fallback, white space stripped
    assert reg.find(str(b.endpoint_id)) == b
    assert reg.find(str(b.endpoint_id).upper()) == b
    with pytest.raises(AmbiguousDevice) as e:
        reg.find("phone")
    assert {d.endpoint_id for d in e.value.candidates} == {b.endpoint_id, c.endpoint_id}
    assert isinstance(e.value, LookupError) and isinstance(e.value, IrohPairError)
    # unique id prefixes
    ids = [str(d.endpoint_id) for d in (a, b, c)]
    for d, s in zip((a, b, c), ids):
        n = next(n for n in range(4, 65) if sum(o.startswith(s[:n]) for o in ids) == 1)
        assert reg.find(s[:n]) == d
    with pytest.raises(UnknownDevice):
        reg.find("nobody")
    with pytest.raises(UnknownDevice):
        reg.find("")
    with pytest.raises(UnknownDevice):
        reg.find(str(_id()))  # a valid id that is not paired
    with pytest.raises(UnknownDevice):
        reg.find(ids[0][:3])  # shorter than MIN_ID_PREFIX


def test_find_ambiguous_prefix(reg: DeviceRegistry) -> None:
    devs = [reg.add_or_replace(_dev(name=f"d{i}")) for i in range(40)]
    first = {str(d.endpoint_id)[:4] for d in devs}
    shared = [p for p in first if sum(str(d.endpoint_id).startswith(p) for d in devs) > 1]
    # 40 random ids rarely share 4 hex chars; a shared single-digit prefix is enough
    digit = next(
        h for h in "0123456789abcdef" if sum(str(d.endpoint_id)[0] == h for d in devs) > 1
    )
    with pytest.raises(UnknownDevice):
        reg.find(digit)  # too short to be a prefix, and no such name
    for p in shared:
        with pytest.raises(AmbiguousDevice):
            reg.find(p)


def test_rename_remove_touch(reg: DeviceRegistry) -> None:
    d = reg.add_or_replace(_dev(name="a"))
    assert reg.rename(d.endpoint_id, "b\x1b[31m").name == "b[31m"
    assert reg.find("b[31m").endpoint_id == d.endpoint_id
    with pytest.raises(ValueError):
        reg.rename(d.endpoint_id, "\x07\u202e ")
    with pytest.raises(UnknownDevice):
        reg.rename(_id(), "x")
    assert reg.touch(d.endpoint_id, 100.0)
    assert reg.touch(d.endpoint_id, 50.0)  # never backwards
    got = reg.get(d.endpoint_id)
    assert got is not None and got.last_seen == 100.0
    assert not reg.touch(_id(), 1.0)
    assert reg.remove(d.endpoint_id)
    assert not reg.remove(d.endpoint_id)
    assert reg.get(d.endpoint_id) is None and reg.list() == []


def test_closed_and_context_manager(tmp_path: Path) -> None:
    with DeviceRegistry(tmp_path / "r.db") as r:
        r.add_or_replace(_dev())
    assert r.closed
    r.close()  # idempotent
    with pytest.raises(RegistryError):
        r.list()
    with DeviceRegistry(tmp_path / "r.db") as r2:
        assert len(r2.list()) == 1


# --------------------------------------------------------------------------------------------
# hygiene


def test_peer_text_is_sanitised(reg: DeviceRegistry) -> None:
    evil = "\x1b]0;pwned\x07Bob\u202e\u2066gpj.exe\x7f\x9b2J\u2028x" + "é" * 100
    d = reg.add_or_replace(
        _dev(name=evil, device_type="Phone\x00<script>", os="\x1b[2JLinux", app_version="v" * 99)
    )
    stored = reg.get(d.endpoint_id)
    assert stored is not None and stored == d
    for text in (stored.name, stored.device_type, stored.os, stored.app_version):
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)
        assert not any(c in text for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
    assert stored.name.startswith("]0;pwnedBobgpj.exe2Jx")
    assert len(stored.name.encode()) <= 64
    assert stored.name.encode().decode() == stored.name  # cut at a character boundary
    assert stored.device_type == "phonescript"
    assert stored.os == "[2JLinux" and stored.app_version == "v" * 32
    blank = reg.add_or_replace(_dev(name="\x1b\x07  ", device_type="!!!"))
    assert (blank.name, blank.device_type) == ("unnamed", "other")


def test_sanitize_and_safe_display() -> None:
    assert sanitize_text(" a\tb\nc\x00d ", 64) == "abcd"
    assert sanitize_text("日本語", 7) == "日本"
    assert sanitize_text("x\ud800y", 10) == "xy"
    assert safe_display("a\x1bb\u202ec\x9b") == "a\\x1bb\\u202ec\\x9b"
    assert safe_display("x" * 100, 10) == "x" * 9 + "…"
    assert safe_display("fine name") == "fine name"


def test_schema_has_no_address_columns(reg: DeviceRegistry) -> None:
    db = sqlite3.connect(reg.path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert sorted(tables) == ["delivered", "devices", "outbox"]
        cols = [r[1].lower() for t in tables for r in db.execute(f"PRAGMA table_info({t})")]
    finally:
        db.close()
    assert set(cols) == {
        "endpoint_id", "name", "device_type", "os", "app_version",
        "paired_at", "last_seen", "send_key", "receive_key",
        "message_id", "seq", "delivered_at",
        "kind", "data", "created", "expires", "attempts", "last_error",  # the outbox
    }
    for c in cols:
        for bad in ("addr", "ip", "port", "relay"):
            assert bad not in c, c


# --------------------------------------------------------------------------------------------
# files: modes, foreign and corrupt files, schema versions


def test_file_mode_and_pragmas(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "registry.db"
    with DeviceRegistry(p) as r:
        r.add_or_replace(_dev())
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert stat.S_IMODE(p.parent.stat().st_mode) == 0o700
    assert [f.name for f in p.parent.iterdir() if ".tmp" in f.name] == []
    db = sqlite3.connect(p)
    try:
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


@pytest.mark.parametrize("content", [b"", b"hello, not a database\n" * 20, os.urandom(4096)])
def test_not_sqlite_is_corrupt_and_untouched(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "registry.db"
    p.write_bytes(content)
    before = _digest(p)
    with pytest.raises(RegistryCorrupt) as e:
        DeviceRegistry(p)
    assert e.value.path == p and str(p) in str(e.value)
    assert _digest(p) == before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["registry.db"]


def test_foreign_sqlite_is_corrupt_and_untouched(tmp_path: Path) -> None:
    p = tmp_path / "registry.db"
    db = sqlite3.connect(p)
    db.execute("CREATE TABLE notes (x TEXT)")
    db.execute("INSERT INTO notes VALUES ('mine')")
    db.commit()
    db.close()
    before = _digest(p)
    with pytest.raises(RegistryCorrupt, match="another application"):
        DeviceRegistry(p)
    assert _digest(p) == before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["registry.db"]


def test_damaged_registry_is_corrupt(tmp_path: Path) -> None:
    p = tmp_path / "registry.db"
    with DeviceRegistry(p) as r:
        for i in range(200):
            r.add_or_replace(_dev(name=f"device {i}" + "x" * 40))
    raw = bytearray(p.read_bytes())
    page = 4096
    assert len(raw) > 3 * page
    raw[page + 8 : 3 * page] = os.urandom(2 * page - 8)  # scribble over b-tree pages
    p.write_bytes(bytes(raw))
    before = _digest(p)
    with pytest.raises(RegistryCorrupt):
        DeviceRegistry(p)
    assert _digest(p) == before


def test_schema_too_new(tmp_path: Path) -> None:
    p = tmp_path / "registry.db"
    DeviceRegistry(p).close()
    db = sqlite3.connect(p)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    before = _digest(p)
    with pytest.raises(RegistrySchemaTooNew) as e:
        DeviceRegistry(p)
    assert (e.value.version, e.value.supported) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)
    assert "upgrade" in str(e.value)
    assert _digest(p) == before


def test_reopen_keeps_data(tmp_path: Path) -> None:
    p = tmp_path / "registry.db"
    with DeviceRegistry(p) as r:
        d = r.add_or_replace(_dev())
    with DeviceRegistry(p) as r:
        assert r.list() == [d]


# --------------------------------------------------------------------------------------------
# delivered message ids (PROTOCOL.md §13.8)


def test_delivered_ids_are_per_device_and_persist(tmp_path: Path) -> None:
    assert (DELIVERED_WINDOW, DELIVERED_MAX_PER_DEVICE) == (24 * 3600, 10_000)  # as the spec says
    p = tmp_path / "registry.db"
    a, b = _dev(), _dev()
    m = os.urandom(16)
    with DeviceRegistry(p) as r:
        r.add_or_replace(a)
        r.add_or_replace(b)
        assert not r.is_delivered(a.endpoint_id, m)
        assert r.record_delivered(a.endpoint_id, m) is True
        assert r.record_delivered(a.endpoint_id, m) is False  # already there
        assert r.is_delivered(a.endpoint_id, m)
        assert not r.is_delivered(b.endpoint_id, m)  # per device
        with pytest.raises(UnknownDevice):
            r.record_delivered(_id(), m)  # not paired: nothing recorded
        with pytest.raises(ValueError):
            r.record_delivered(a.endpoint_id, b"short")
        assert r.durable_message_ids is False  # NORMAL for ids; the registry's other writes FULL
        assert r._run(lambda db: db.execute("PRAGMA synchronous").fetchone()[0]) == 2
        r.durable_message_ids = True  # an fsync per id
        m2 = os.urandom(16)
        assert r.record_delivered(b.endpoint_id, m2) and r.is_delivered(b.endpoint_id, m2)
    with DeviceRegistry(p) as r:  # a restart
        assert r.is_delivered(a.endpoint_id, m)
        assert r.delivered_count(a.endpoint_id) == 1 and r.delivered_count(b.endpoint_id) == 1


def test_delivered_ids_keep_the_newest_per_device(
    reg: DeviceRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_mod, "DELIVERED_MAX_PER_DEVICE", 5)
    a, b = reg.add_or_replace(_dev()), reg.add_or_replace(_dev())
    ids = [os.urandom(16) for _ in range(8)]
    other = os.urandom(16)
    reg.record_delivered(b.endpoint_id, other)
    for i, m in enumerate(ids):
        reg.record_delivered(a.endpoint_id, m, when=1000.0 + i)
    assert reg.delivered_count(a.endpoint_id) == 5
    now = 1010.0
    assert [reg.is_delivered(a.endpoint_id, m, now) for m in ids] == [False] * 3 + [True] * 5
    assert reg.is_delivered(b.endpoint_id, other)  # another device's ids are not dropped
    # a dropped id is new again, and drops the next oldest
    assert reg.record_delivered(a.endpoint_id, ids[0], when=1020.0) is True
    assert not reg.is_delivered(a.endpoint_id, ids[3], now) and reg.is_delivered(a.endpoint_id, ids[4], now)


def test_delivered_ids_expire_after_the_window(reg: DeviceRegistry) -> None:
    a = reg.add_or_replace(_dev())
    t0 = 1_700_000_000.0
    old, fresh = os.urandom(16), os.urandom(16)
    reg.record_delivered(a.endpoint_id, old, when=t0)
    assert reg.is_delivered(a.endpoint_id, old, now=t0 + DELIVERED_WINDOW - 1)
    assert not reg.is_delivered(a.endpoint_id, old, now=t0 + DELIVERED_WINDOW + 1)
    # an expired id is delivered again (recorded anew); inserts prune expired rows
    later = t0 + DELIVERED_WINDOW + 10
    assert reg.record_delivered(a.endpoint_id, old, when=later) is True
    reg.record_delivered(a.endpoint_id, fresh, when=later + DELIVERED_WINDOW - 5)
    assert reg.delivered_count(a.endpoint_id) == 2
    reg.record_delivered(a.endpoint_id, os.urandom(16), when=later + DELIVERED_WINDOW + 100)
    assert reg.delivered_count(a.endpoint_id) == 2  # "old" (renewed at `later`) was pruned
    assert reg.is_delivered(a.endpoint_id, fresh, now=later + DELIVERED_WINDOW + 100)


def test_unpair_forgets_delivered_ids_repair_keeps_them(reg: DeviceRegistry) -> None:
    a, b = _dev(), _dev()
    reg.add_or_replace(a)
    reg.add_or_replace(b)
    m = os.urandom(16)
    for d in (a, b):
        reg.record_delivered(d.endpoint_id, m)
    assert reg.remove(a.endpoint_id)
    assert reg.delivered_count(a.endpoint_id) == 0 and not reg.is_delivered(a.endpoint_id, m)
    reg.add_or_replace(a)  # paired again after unpairing: starts with no ids
    assert not reg.is_delivered(a.endpoint_id, m)
    # re-paired without unpairing (or a re-pairing undone): a retry sent before is still a
    # duplicate after it
    reg.add_or_replace(_dev(b.endpoint_id, name="re-paired"))
    assert reg.is_delivered(b.endpoint_id, m)
    assert reg.forget_delivered(b.endpoint_id) == 1 and not reg.is_delivered(b.endpoint_id, m)


def test_schema_1_registry_is_migrated(tmp_path: Path) -> None:
    """A registry written before delivered ids existed (schema 1) gains the table, keeps its
    devices, and is at SCHEMA_VERSION afterwards."""
    p = tmp_path / "registry.db"
    db = sqlite3.connect(p, isolation_level=None)  # what version 1 of the code wrote
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    MIGRATIONS[0](db)
    d = _dev()
    db.execute(
        "INSERT INTO devices VALUES (?,?,?,?,?,?,?,?,?)",
        (d.endpoint_id.to_bytes(), d.name, d.device_type, d.os, d.app_version, d.paired_at,
         None, d.keys.send, d.keys.receive),
    )
    db.execute("PRAGMA user_version = 1")
    db.close()
    with DeviceRegistry(p) as r:
        assert r.list() == [d]
        m = os.urandom(16)
        assert r.record_delivered(d.endpoint_id, m) and r.is_delivered(d.endpoint_id, m)
    db = sqlite3.connect(p)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    finally:
        db.close()


# --------------------------------------------------------------------------------------------
# crash safety

# A zygote imports the package once and forks one writer per round (a fresh interpreter per
# round would spend ~0.5 s importing). Each writer opens the registry, says "ready", then loops
# adding / replacing pairings and appends "<id> <n>" to its log right after each commit.
_ZYGOTE = r"""
import os, sys, time
from iroh_pair import SecretKey
from iroh_pair.protocol.kdf import SessionKeys
from iroh_pair.store import DeviceRegistry, PairedDevice
db_path = sys.argv[1]
pool = [SecretKey.from_bytes(os.urandom(32)).public() for _ in range(8)]
for line in sys.stdin:
    log_path = line.strip()
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            reg = DeviceRegistry(db_path)
            os.write(fd, b"ready\n")
            n = 0
            while True:
                fresh = SecretKey.from_bytes(os.urandom(32)).public()  # generate() repeats after fork
                eid = pool[n % len(pool)] if n % 2 else fresh
                reg.add_or_replace(PairedDevice(
                    eid, f"dev {n}", "phone", "os", "1", time.time(), None,
                    SessionKeys(os.urandom(32), os.urandom(32))))
                os.write(fd, f"{eid} {n}\n".encode())
                n += 1
        except BaseException as e:
            os.write(2, f"writer failed: {e!r}\n".encode())
        finally:
            os._exit(1)
    print(pid, flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "zygote did not answer"
    return proc.stdout.readline().strip()


def test_crash_safety(tmp_path: Path) -> None:
    db_path = tmp_path / "registry.db"
    DeviceRegistry(db_path).close()
    zygote = subprocess.Popen(
        [sys.executable, "-c", _ZYGOTE, str(db_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    assert zygote.stdin is not None
    rng = random.Random()
    committed: dict[str, int] = {}  # every id ever reported committed
    total_writes = 0
    deadline = time.monotonic() + 55
    try:
        for rnd in range(100):
            log = tmp_path / f"log-{rnd}"
            zygote.stdin.write(f"{log}\n")
            zygote.stdin.flush()
            pid = int(_readline(zygote, 30))
            t0 = time.monotonic()
            while not (log.exists() and log.read_bytes().startswith(b"ready\n")):
                assert time.monotonic() - t0 < 30, "writer did not start"
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 0.05))
            os.kill(pid, signal.SIGKILL)
            assert _readline(zygote, 30) == "reaped"
            lines = log.read_text().split("\n")[1:-1]  # drop "ready" and a partial last line
            last: dict[str, int] = {}  # this round: id -> its last write known committed
            for line in lines:
                eid, num = line.split()
                last[eid] = int(num)
            committed.update(last)
            total_writes += len(lines)
            with DeviceRegistry(db_path) as reg:
                stored = {str(d.endpoint_id): int(d.name.split()[1]) for d in reg.list()}
            lost = [eid for eid in committed if eid not in stored]
            assert not lost, f"round {rnd}: committed pairings lost: {lost}"
            for eid, n in last.items():  # a replaced id holds this write or a later one
                assert stored[eid] >= n, f"round {rnd}: {eid} write {n} lost ({stored[eid]})"
            db = sqlite3.connect(db_path)
            try:
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            finally:
                db.close()
            assert time.monotonic() < deadline, f"too slow: {rnd + 1} rounds"
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=30)
    assert total_writes > 100  # the writers really wrote (and were killed mid-stream)
    assert len(committed) > total_writes // 3  # fresh ids, not the same ones every round


# --------------------------------------------------------------------------------------------
# identity and the data-directory lock


def test_secret_key_created_once(tmp_path: Path) -> None:
    d = tmp_path / "data" / "node"
    k1 = load_or_create_secret_key(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    kf = d / KEY_FILE
    assert stat.S_IMODE(kf.stat().st_mode) == 0o600
    assert kf.read_bytes() == k1.to_bytes() and len(k1.to_bytes()) == 32
    k2 = load_or_create_secret_key(d)
    assert k2.public() == k1.public()
    assert [f.name for f in d.iterdir()] == [KEY_FILE]  # no temp files left


@pytest.mark.parametrize("content", [b"", b"x" * 31, b"x" * 33, b"x" * 64])
def test_corrupt_key_file_is_reported_and_kept(tmp_path: Path, content: bytes) -> None:
    kf = tmp_path / KEY_FILE
    kf.write_bytes(content)
    with pytest.raises(KeyFileCorrupt) as e:
        load_or_create_secret_key(tmp_path)
    assert e.value.path == kf and str(kf) in str(e.value)
    assert kf.read_bytes() == content


def test_lock_in_process(tmp_path: Path) -> None:
    with DataDirLock(tmp_path / "d") as lock:
        assert lock.held
        with pytest.raises(DataDirLocked) as e:
            DataDirLock(tmp_path / "d").acquire()
        assert e.value.pid == os.getpid() and str(os.getpid()) in str(e.value)
        assert e.value.since is not None
        with pytest.raises(DataDirLocked):
            lock.acquire()  # not re-entrant
    assert not lock.held
    with DataDirLock(tmp_path / "d"):  # released: free again
        pass


_HOLD = r"""
import sys, time
from iroh_pair.errors import DataDirLocked
from iroh_pair.store import DataDirLock
try:
    lock = DataDirLock(sys.argv[1]).acquire()
except DataDirLocked as e:
    print("locked", e.pid, flush=True)
    sys.exit(0)
print("holding", flush=True)
time.sleep(60)
"""


def test_lock_across_processes(tmp_path: Path) -> None:
    d = tmp_path / "d"
    with DataDirLock(d):
        out = subprocess.run(
            [sys.executable, "-c", _HOLD, str(d)], capture_output=True, text=True, env=ENV,
            timeout=60,
        )
        assert out.stdout.split() == ["locked", str(os.getpid())], out.stderr
    # another process holds it; when it dies, the kernel releases the lock
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(d)], stdout=subprocess.PIPE, text=True, env=ENV
    )
    try:
        assert _readline(holder, 30) == "holding"
        with pytest.raises(DataDirLocked) as e:
            DataDirLock(d).acquire()
        assert e.value.pid == holder.pid and str(holder.pid) in str(e.value)
    finally:
        holder.kill()
        holder.wait()
    with DataDirLock(d) as lock:
        assert lock.held


_FORKED_KEYS = r"""
import os, sys
from iroh_pair import SecretKey
from iroh_pair.store import load_or_create_secret_key
SecretKey.generate()  # warm up the native RNG before forking
for d in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        load_or_create_secret_key(d)
        os._exit(0)
    os.waitpid(pid, 0)
"""


def test_keys_created_in_forked_processes_differ(tmp_path: Path) -> None:
    dirs = [tmp_path / f"n{i}" for i in range(3)]
    subprocess.run(
        [sys.executable, "-c", _FORKED_KEYS, *map(str, dirs)], env=ENV, check=True, timeout=60
    )
    keys = {(p / KEY_FILE).read_bytes() for p in dirs}
    assert len(keys) == 3
