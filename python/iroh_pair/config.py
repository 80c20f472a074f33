"""One configuration: network settings from flags, environment variables, a file, and defaults.

A node's network settings (which relays, which address lookup, which local addresses) come from
four layers, each overriding the ones below it, key by key:

1. **flags** (the command line, or the ``overrides`` of :func:`load_settings`),
2. **environment variables** (``IROH_PAIR_RELAY``, ... below),
3. **the file** ``config.toml`` in the data directory,
4. **defaults**: n0's public relays and address lookup (:meth:`NetworkOptions.n0`).

So after one ``iroh-pair config --write`` (or ``iroh-pair servers --write-config``), every
command of that data directory needs no network flags, and ``Node.open(data_dir)`` with no
``options`` uses the same settings.

The keys, with their environment variable and file form (``[network]`` table)::

    key          environment variable     file (TOML)                       meaning
    mode         IROH_PAIR_MODE           mode = "n0" | "local" | "lan"     the preset
    relay        IROH_PAIR_RELAY          relay = ["URL#qad=none", ...]     your relays (list)
    pkarr_url    IROH_PAIR_PKARR_URL      pkarr_url = "http://.../pkarr"    self-hosted lookup
    dns_origin   IROH_PAIR_DNS_ORIGIN     dns_origin = "irohpair.test"      (with pkarr_url)
    dns_server   IROH_PAIR_DNS_SERVER     dns_server = "127.0.0.1:5300"     DNS server to ask
    bind         IROH_PAIR_BIND           bind = ["127.0.0.1:0"]            local sockets (list)
    portmapper   IROH_PAIR_PORTMAPPER     portmapper = false                gateway port mapping
    ca_cert      IROH_PAIR_CA_CERT        ca_cert = ["/path/ca.pem"]        extra trusted roots

In environment variables, lists are separated by commas (``IROH_PAIR_RELAY=URL1,URL2``) and
booleans are ``1/0``, ``true/false``, ``yes/no`` or ``on/off``; an empty variable counts as
unset. Relays are written as :meth:`RelayConfig.parse <iroh_pair.transport.RelayConfig.parse>`
reads them (``URL``, ``URL#qad=none``, ``URL#qad=PORT``).

How the settings become :class:`~iroh_pair.transport.NetworkOptions`: ``mode`` picks the preset
(``local``: :meth:`loopback <iroh_pair.transport.NetworkOptions.loopback>`, ``lan``:
:meth:`lan <iroh_pair.transport.NetworkOptions.lan>`, ``n0``: :meth:`n0
<iroh_pair.transport.NetworkOptions.n0>`); in ``n0`` mode your own relays also turn the port
mapper off, as :meth:`self_hosted <iroh_pair.transport.NetworkOptions.self_hosted>` does (set
``portmapper`` to turn it back on); then each key that is set changes its field. A relay given
without a lookup server keeps n0's address lookup.

Example::

    >>> from iroh_pair.config import NetworkSettings
    >>> file = NetworkSettings(relay=("http://127.0.0.1:3340/#qad=none",), portmapper=False)
    >>> env = NetworkSettings.from_env({"IROH_PAIR_PORTMAPPER": "on"})
    >>> merged = NetworkSettings.merge(file, env)        # env over file
    >>> merged.portmapper, merged.sources["portmapper"], merged.sources["relay"]
    (True, 'environment', 'file')
    >>> merged.to_options().relay[0].quic_port is None
    True
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from iroh_pair.errors import ConfigError
from iroh_pair.transport._options import LookupConfig, NetworkOptions, RelayConfig

__all__ = [
    "CONFIG_FILE",
    "ENVIRONMENT",
    "Mode",
    "NetworkSettings",
    "Source",
    "load_options",
    "load_settings",
    "write_config",
]

#: The configuration file's name, in the data directory.
CONFIG_FILE = "config.toml"

Mode = Literal["n0", "local", "lan"]
#: Where a setting came from, highest precedence first.
Source = Literal["flag", "environment", "file", "default"]

#: The environment variable of each key.
ENVIRONMENT: Mapping[str, str] = {
    "mode": "IROH_PAIR_MODE",
    "relay": "IROH_PAIR_RELAY",
    "pkarr_url": "IROH_PAIR_PKARR_URL",
    "dns_origin": "IROH_PAIR_DNS_ORIGIN",
    "dns_server": "IROH_PAIR_DNS_SERVER",
    "bind": "IROH_PAIR_BIND",
    "portmapper": "IROH_PAIR_PORTMAPPER",
    "ca_cert": "IROH_PAIR_CA_CERT",
}
_LISTS = ("relay", "bind", "ca_cert")
_STRINGS = ("pkarr_url", "dns_origin", "dns_server")
_MODES = ("n0", "local", "lan")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class NetworkSettings:
    """One layer of network settings, or several merged: every key is optional (``None``: not
    set here). :meth:`merge` stacks layers, :meth:`to_options` makes the
    :class:`~iroh_pair.transport.NetworkOptions`. ``sources`` says where each set key came from.
    """

    mode: Mode | None = None
    relay: tuple[str, ...] | None = None
    pkarr_url: str | None = None
    dns_origin: str | None = None
    dns_server: str | None = None
    bind: tuple[str, ...] | None = None
    portmapper: bool | None = None
    ca_cert: tuple[str, ...] | None = None
    sources: Mapping[str, Source] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in _MODES:
            raise ConfigError(f"mode must be one of {', '.join(_MODES)}, got {self.mode!r}")
        for key in _LISTS:
            value = getattr(self, key)
            if value is not None:
                if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(f"{key} must be a list of strings, got {value!r}")
                object.__setattr__(self, key, tuple(value))
        for key in _STRINGS:
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{key} must be a string, got {value!r}")
        if self.portmapper is not None and not isinstance(self.portmapper, bool):
            raise ConfigError(f"portmapper must be true or false, got {self.portmapper!r}")
        for r in self.relay or ():
            try:
                RelayConfig.parse(r)
            except ValueError as e:
                raise ConfigError(f"relay: {e}") from None

    def _set(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "sources" and getattr(self, f.name) is not None}

    def labelled(self, source: Source) -> NetworkSettings:
        """This layer with every set key marked as coming from ``source``."""
        return dataclasses.replace(self, sources={k: source for k in self._set()})

    @classmethod
    def merge(cls, *layers: NetworkSettings) -> NetworkSettings:
        """The layers stacked, lowest precedence first: a key set in a later layer wins."""
        values: dict[str, Any] = {}
        sources: dict[str, Source] = {}
        for layer in layers:
            for key, value in layer._set().items():
                values[key] = value
                sources[key] = layer.sources.get(key, "flag")
        return cls(**values, sources=sources)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> NetworkSettings:
        """The ``IROH_PAIR_*`` variables of ``environ`` (default :data:`os.environ`).

        Raises:
            ConfigError: a variable's value is not valid (names the variable).
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for key, var in ENVIRONMENT.items():
            raw = env.get(var, "").strip()
            if not raw:
                continue
            if key in _LISTS:
                values[key] = tuple(p.strip() for p in raw.split(",") if p.strip())
            elif key == "portmapper":
                if raw.lower() not in _TRUE + _FALSE:
                    raise ConfigError(f"{var}={raw!r}: expected 1/0, true/false, yes/no or on/off")
                values[key] = raw.lower() in _TRUE
            else:
                values[key] = raw
        try:
            return cls(**values).labelled("environment")
        except ConfigError as e:
            raise ConfigError(f"environment: {e}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> NetworkSettings:
        """The ``[network]`` table of a TOML file; a missing file is an empty layer.

        Raises:
            ConfigError: the file cannot be read, is not TOML, or has an unknown or invalid key
                (the message names the file and the key).
        """
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{p}: {e}") from None
        unknown_tables = set(data) - {"network"}
        if unknown_tables:
            raise ConfigError(f"{p}: unknown table or key {sorted(unknown_tables)} (only [network])")
        table = data.get("network", {})
        if not isinstance(table, dict):
            raise ConfigError(f"{p}: network must be a table")
        unknown = set(table) - set(ENVIRONMENT)
        if unknown:
            raise ConfigError(f"{p}: unknown key(s) {sorted(unknown)} in [network] "
                              f"(known: {', '.join(ENVIRONMENT)})")
        try:
            return cls(**table).labelled("file")
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from None

    def to_options(self) -> NetworkOptions:
        """The :class:`~iroh_pair.transport.NetworkOptions` these settings describe.

        Raises:
            ConfigError: ``pkarr_url`` without ``dns_origin`` (or the reverse), ``mode``
                ``local`` with ``lan`` settings, or a CA certificate file that cannot be read.
        """
        if (self.pkarr_url is None) != (self.dns_origin is None):
            raise ConfigError("pkarr_url and dns_origin go together (self-hosted address lookup)")
        lookup = (LookupConfig(self.pkarr_url, self.dns_origin, self.dns_server)
                  if self.pkarr_url is not None and self.dns_origin is not None else None)
        relays = tuple(RelayConfig.parse(r) for r in self.relay) if self.relay else None
        mode = self.mode or "n0"
        if mode == "local":
            opts = NetworkOptions.loopback()
        elif mode == "lan":
            opts = NetworkOptions.lan()
        elif relays:
            # your own relays: no gateway is probed either (as NetworkOptions.self_hosted)
            opts = NetworkOptions.n0().replace(portmapper=False)
        else:
            opts = NetworkOptions.n0()
        changes: dict[str, Any] = {}
        if relays:
            changes["relay"] = relays
        if lookup is not None:
            changes["lookup"] = lookup
        if self.bind is not None:
            changes["bind_addrs"] = self.bind
        if self.portmapper is not None:
            changes["portmapper"] = self.portmapper
        if self.ca_cert:
            try:
                changes["ca_certs"] = b"".join(Path(f).expanduser().read_bytes() for f in self.ca_cert)
            except OSError as e:
                raise ConfigError(f"ca_cert: cannot read {e.filename}: {e.strerror}") from None
        return opts.replace(**changes)

    def to_toml(self) -> str:
        """The set keys as a ``config.toml`` (``sources`` is not written)."""
        lines = ["# iroh-pair configuration (see `iroh-pair config --help`); flags and",
                 "# IROH_PAIR_* environment variables override it.", "[network]"]
        for key, value in self._set().items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, tuple):
                text = "[" + ", ".join(json.dumps(v) for v in value) + "]"
            else:
                text = json.dumps(value)
            lines.append(f"{key} = {text}")
        return "\n".join(lines) + "\n"


def load_settings(
    data_dir: str | os.PathLike[str] | None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: NetworkSettings | None = None,
) -> NetworkSettings:
    """The merged settings of a data directory: ``overrides`` (flags) over the environment
    over ``data_dir/config.toml`` (no file if ``data_dir`` is None).

    Example::

        settings = load_settings("~/.local/share/iroh-pair")
        print(settings.sources)      # {'relay': 'file', 'portmapper': 'environment', ...}
    """
    file = (NetworkSettings.from_file(Path(data_dir).expanduser() / CONFIG_FILE)
            if data_dir is not None else NetworkSettings())
    flags = overrides.labelled("flag") if overrides is not None else NetworkSettings()
    return NetworkSettings.merge(file, NetworkSettings.from_env(environ), flags)


def load_options(
    data_dir: str | os.PathLike[str] | None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: NetworkSettings | None = None,
) -> NetworkOptions:
    """:func:`load_settings` made into :class:`~iroh_pair.transport.NetworkOptions`: what
    ``Node.open(data_dir)`` uses when it is given no ``options``.

    Example::

        node = await Node.open(path, options=load_options(path))   # the same as Node.open(path)
    """
    return load_settings(data_dir, environ=environ, overrides=overrides).to_options()


def write_config(data_dir: str | os.PathLike[str], settings: NetworkSettings) -> Path:
    """Writes ``settings`` as ``data_dir/config.toml`` (replacing it atomically; owner-only
    permissions) and returns its path."""
    d = Path(data_dir).expanduser()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = d / CONFIG_FILE
    tmp = path.with_name(f".{CONFIG_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(settings.to_toml())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
