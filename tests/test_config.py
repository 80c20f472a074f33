"""One configuration (issue #36): flags over environment over ``config.toml`` over defaults,
for every key, and the CLI with no network flags after ``iroh-pair servers --write-config``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from iroh_pair import ConfigError, Node
from iroh_pair.cli import network_options, network_settings, parser
from iroh_pair.config import (
    CONFIG_FILE,
    ENVIRONMENT,
    NetworkSettings,
    load_options,
    load_settings,
    write_config,
)
from iroh_pair.testing import DNS_BIN, RELAY_BIN, find_binary
from iroh_pair.transport import LookupConfig, RelayConfig

from helpers import skip_or_fail

CLI = [sys.executable, "-m", "iroh_pair"]
NO_ENV: dict[str, str] = {}

# For each key: (file value, environment value, flag value), all different, and how the flag
# is given on the command line.
LAYERS: dict[str, tuple[object, str, object, list[str]]] = {
    "mode": ("lan", "local", "local", ["--local"]),
    "relay": (("http://f.test/#qad=none",), "http://e.test/#qad=7000", ("http://g.test/",),
              ["--relay", "http://g.test/"]),
    "pkarr_url": ("http://f.test/pkarr", "http://e.test/pkarr", "http://g.test/pkarr",
                  ["--pkarr-url", "http://g.test/pkarr"]),
    "dns_origin": ("f.test", "e.test", "g.test", ["--dns-origin", "g.test"]),
    "dns_server": ("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", ["--dns-server", "127.0.0.1:3"]),
    "bind": (("127.0.0.1:0",), "127.0.0.2:0", ("127.0.0.3:0",), ["--bind", "127.0.0.3:0"]),
    "portmapper": (True, "on", False, ["--no-portmapper"]),
    "ca_cert": (("f.pem",), "e.pem", ("g.pem",), ["--ca-cert", "g.pem"]),
}


def env_value(key: str, raw: str) -> object:
    if key in ("relay", "bind", "ca_cert"):
        return (raw,)
    if key == "portmapper":
        return True
    return raw


@pytest.mark.parametrize("key", list(LAYERS))
@pytest.mark.parametrize("layers", ["file", "file+env", "file+env+flag", "env", "flag", "none"])
def test_each_key_follows_flags_then_environment_then_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, layers: str
) -> None:
    file_v, env_raw, flag_v, argv = LAYERS[key]
    for var in ENVIRONMENT.values():
        monkeypatch.delenv(var, raising=False)
    if "file" in layers:
        write_config(tmp_path, NetworkSettings(**{key: file_v}))  # type: ignore[arg-type]
    if "env" in layers:
        monkeypatch.setenv(ENVIRONMENT[key], env_raw)
    args = parser().parse_args(["--data-dir", str(tmp_path), *(argv if "flag" in layers else []), "id"])
    settings = network_settings(args)
    want, source = (
        (flag_v, "flag") if "flag" in layers
        else (env_value(key, env_raw), "environment") if "env" in layers
        else (file_v, "file") if "file" in layers
        else (None, None)
    )
    assert getattr(settings, key) == want
    assert settings.sources.get(key) == source
    # the library's loader agrees with the CLI
    same = load_settings(tmp_path, overrides=NetworkSettings(**{key: flag_v}) if "flag" in layers else None)  # type: ignore[arg-type]
    assert getattr(same, key) == want


def test_settings_become_options(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(b"PEM")
    s = NetworkSettings(relay=("http://127.0.0.1:3340/#qad=none",), pkarr_url="http://127.0.0.1:3341/pkarr",
                        dns_origin="irohpair.test", dns_server="127.0.0.1:5300",
                        ca_cert=(str(tmp_path / "ca.pem"),))
    opts = s.to_options()
    assert opts.relay == (RelayConfig("http://127.0.0.1:3340/", quic_port=None),)
    assert opts.lookup == LookupConfig("http://127.0.0.1:3341/pkarr", "irohpair.test", "127.0.0.1:5300")
    assert opts.portmapper is False  # your own relay: no gateway probing, as self_hosted()
    assert opts.ca_certs == b"PEM"
    assert NetworkSettings().to_options().relay == "default"  # nothing set: n0
    assert NetworkSettings().to_options().portmapper is True
    assert NetworkSettings(mode="local").to_options().bind_addrs == ("127.0.0.1:0",)
    assert NetworkSettings(mode="lan").to_options().mdns is True
    with_mapper = NetworkSettings(relay=("http://r.test/",), portmapper=True).to_options()
    assert with_mapper.portmapper is True
    with pytest.raises(ConfigError, match="go together"):
        NetworkSettings(pkarr_url="http://x/pkarr").to_options()
    with pytest.raises(ConfigError, match="cannot read"):
        NetworkSettings(ca_cert=(str(tmp_path / "missing.pem"),)).to_options()


def test_file_round_trips_and_bad_files_name_the_problem(tmp_path: Path) -> None:
    s = NetworkSettings(mode="lan", relay=('http://a.test/"x"#qad=none',), portmapper=False,
                        bind=("0.0.0.0:0", "[::]:0"))
    path = write_config(tmp_path, s)
    assert path == tmp_path / CONFIG_FILE and path.stat().st_mode & 0o777 == 0o600
    assert NetworkSettings.from_file(path) == s
    assert NetworkSettings.from_file(tmp_path / "none.toml") == NetworkSettings()
    bad = {
        "[network]\nrelays = []\n": "unknown key",
        "[netwrk]\n": "unknown table",
        "[network]\nrelay = 'http://x/'\n": "list of strings",
        "[network]\nportmapper = 'no'\n": "true or false",
        "[network]\nmode = 'wan'\n": "mode must be",
        "[network]\nrelay = ['http://x/#qad=off']\n": "qad",
        "[network\n": "config.toml",
    }
    for text, match in bad.items():
        path.write_text(text)
        with pytest.raises(ConfigError, match=match):
            NetworkSettings.from_file(path)
    with pytest.raises(ConfigError, match="IROH_PAIR_PORTMAPPER"):
        NetworkSettings.from_env({"IROH_PAIR_PORTMAPPER": "maybe"})
    with pytest.raises(ConfigError, match="environment: relay"):
        NetworkSettings.from_env({"IROH_PAIR_RELAY": "http://x/#qad=0"})
    assert NetworkSettings.from_env({"IROH_PAIR_RELAY": "http://a/, http://b/#qad=none"}).relay == (
        "http://a/", "http://b/#qad=none")
    assert NetworkSettings.from_env({"IROH_PAIR_RELAY": "  "}) == NetworkSettings()


async def test_cli_reports_a_bad_config_as_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text("[network]\nrelays = []\n")
    p = await asyncio.create_subprocess_exec(*CLI, "--data-dir", str(tmp_path), "id",
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 30)
    assert p.returncode == 2, err
    assert err.decode().count("\n") == 1 and "unknown key" in err.decode() and "relays" in err.decode()


async def test_node_open_uses_the_data_dirs_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENVIRONMENT.values():
        monkeypatch.delenv(var, raising=False)
    write_config(tmp_path, NetworkSettings(mode="local"))
    assert load_options(tmp_path).bind_addrs == ("127.0.0.1:0",)
    async with await Node.open(tmp_path) as node:  # no options: the file's
        addr = node.endpoint.addr()
        assert addr.ip_addrs and all(a.startswith("127.0.0.1:") for a in addr.ip_addrs), addr.ip_addrs
        assert not addr.relay_urls and not node.uses_servers
    # the environment overrides the file
    monkeypatch.setenv("IROH_PAIR_MODE", "n0")
    monkeypatch.setenv("IROH_PAIR_BIND", "127.0.0.1:0")
    assert load_options(tmp_path).relay == "default"
    # the CLI builds the same options from the same layers
    assert network_options(parser().parse_args(["--data-dir", str(tmp_path), "id"])) == load_options(tmp_path)


async def _cli(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    p = await asyncio.create_subprocess_exec(*CLI, *args, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE,
                                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
    out, err = await asyncio.wait_for(p.communicate(), timeout)
    assert p.returncode is not None
    return p.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_send_needs_no_network_flags_after_servers_write_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if find_binary(RELAY_BIN) is None or find_binary(DNS_BIN) is None:
        skip_or_fail("the relay and lookup server binaries are not built")
    for var in ENVIRONMENT.values():
        monkeypatch.delenv(var, raising=False)
    a, b = tmp_path / "a", tmp_path / "b"
    servers = await asyncio.create_subprocess_exec(
        *CLI, "--data-dir", str(a), "--json", "servers", "--write-config",
        "--relay-port", "0", "--lookup-port", "0", "--dns-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    host = listener = None
    try:
        assert servers.stdout is not None
        ready = json.loads(await asyncio.wait_for(servers.stdout.readline(), 60))
        assert ready["event"] == "servers" and ready["config"] == str(a / CONFIG_FILE)
        assert ready["relay"][0].endswith("#qad=none")
        # the second device takes the same file (as a user would copy it, or write its own)
        b.mkdir(mode=0o700)
        (b / CONFIG_FILE).write_bytes((a / CONFIG_FILE).read_bytes())
        # pair, with no network flag anywhere from here on
        host = await asyncio.create_subprocess_exec(
            *CLI, "--data-dir", str(a), "--name", "alice", "--json", "host", "--yes",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        assert host.stdout is not None
        code = json.loads(await asyncio.wait_for(host.stdout.readline(), 60))
        assert code["event"] == "code"
        rc, out, err = await _cli("--data-dir", str(b), "--name", "bob", "--json", "join", code["code"], "--yes")
        assert rc == 0, err
        assert await asyncio.wait_for(host.wait(), 30) == 0
        # both are new processes now: bob listens, alice finds it by id through the servers
        listener = await asyncio.create_subprocess_exec(
            *CLI, "--data-dir", str(b), "--json", "listen", "--count", "1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        assert listener.stdout is not None
        assert json.loads(await asyncio.wait_for(listener.stdout.readline(), 60))["event"] == "listening"
        rc, out, err = await _cli("--data-dir", str(a), "send", "bob", "hello, no flags")
        assert rc == 0, err
        got = json.loads(await asyncio.wait_for(listener.stdout.readline(), 30))
        assert got["text"] == "hello, no flags", got
        assert await asyncio.wait_for(listener.wait(), 30) == 0
    finally:
        for p in (host, listener):
            if p is not None and p.returncode is None:
                p.kill()
                await p.wait()
        servers.send_signal(signal.SIGINT)
        try:
            assert await asyncio.wait_for(servers.wait(), 30) == 0
        finally:
            if servers.returncode is None:
                servers.kill()
