"""The public surface, on purpose (model: trio's ``_tests/test_exports.py``).

- ``iroh_pair.__all__`` is pinned: adding or removing a public name means updating
  :data:`EXPORTS` here, in the same change.
- Every public module (no path component starting with ``_``) has a docstring and an
  ``__all__`` whose names resolve; every class and function it exports has a docstring, and so
  has every public method and property of those classes.
- The sans-I/O layer is what it says: ``iroh_pair/protocol/`` imports nothing of the package
  outside itself but ``iroh_pair.errors``, which imports nothing of the package at all, and
  neither imports anything that does I/O or reads a clock.
- The README's examples import only from the top level.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path

import pytest

import iroh_pair
from iroh_pair import errors

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(iroh_pair.__file__).resolve().parent

EXPORTS = {
    # the node
    "Node",
    "NodeEvent",
    "NodeEventKind",
    "PathKind",
    "NodeStats",
    "NodeCounters",
    "AdmissionStats",
    "HostedPairing",
    "PairedDevice",
    "PendingMessage",
    "DeviceInfo",
    "MessageHandler",
    "new_message_id",
    # files between paired devices
    "FileOffer",
    "FileProgress",
    "FileReceipt",
    "FileTransfer",
    # pairing
    "PairingCode",
    "LanCode",
    "SasCheck",
    "ConfirmSas",
    "Role",
    # code tables
    "RejectCode",
    "CloseCode",
    "StreamErrorCode",
    # request/response on your own ALPNs
    "RequestPeer",
    "ConnectionCache",
    "CacheStats",
    # transport
    "Endpoint",
    "Connection",
    "SendStream",
    "RecvStream",
    "IncomingStream",
    "EndpointId",
    "EndpointAddr",
    "SecretKey",
    "Chunk",
    "KindLimits",
    "LookupConfig",
    "NetworkOptions",
    "RelayConfig",
    "CloseInfo",
    "PathInfo",
    "PathEvent",
    "LanEvent",
    # storage
    "DeviceRegistry",
    # exceptions
    "IrohPairError",
    "TransportError",
    "BindError",
    "ConnectError",
    "ConnectionLost",
    "StreamReset",
    "StreamClosed",
    "FrameTooLarge",
    "TruncatedFrame",
    "Timeout",
    "RemoteError",
    "InvalidKey",
    "InvalidTicket",
    "InvalidCode",
    "UnknownWord",
    "BadWordCount",
    "MalformedCode",
    "BadSessionTag",
    "BadTicket",
    "InvalidDeviceInfo",
    "ConfigError",
    "ProtocolError",
    "MessageRejected",
    "PairingFailed",
    "NameplateNotFound",
    "AmbiguousNameplate",
    "CacheClosedError",
    "OutboxFull",
    "FileTransferError",
    "FileChanged",
    "OfferTooLarge",
    "TransferRefused",
    "DiskFull",
    "VerificationFailed",
    "OfferDeclined",
    "TooManyTransfers",
    "TransferStalled",
    "DestinationChanged",
    "DataDirLocked",
    "KeyFileCorrupt",
    "RegistryError",
    "RegistryCorrupt",
    "RegistrySchemaTooNew",
    "UnknownDevice",
    "AmbiguousDevice",
}

#: Modules whose import means I/O or a clock: none of them may appear in the sans-I/O layer.
IO_MODULES = {
    "asyncio", "concurrent", "http", "multiprocessing", "select", "selectors", "signal", "socket",
    "socketserver", "sqlite3", "ssl", "subprocess", "threading", "time", "urllib",
}
#: Third-party packages the sans-I/O layer may use (pure computation).
PURE_THIRD_PARTY = {"cryptography"}


def public_modules() -> list[str]:
    names = ["iroh_pair"]
    for info in pkgutil.walk_packages(iroh_pair.__path__, "iroh_pair."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def test_the_public_modules_are_the_layers() -> None:
    assert public_modules() == [
        "iroh_pair",
        "iroh_pair.cli",
        "iroh_pair.config",
        "iroh_pair.demo",
        "iroh_pair.errors",
        "iroh_pair.protocol",
        "iroh_pair.protocol.code",
        "iroh_pair.protocol.constants",
        "iroh_pair.protocol.device",
        "iroh_pair.protocol.envelope",
        "iroh_pair.protocol.kdf",
        "iroh_pair.protocol.lan",
        "iroh_pair.protocol.messaging",
        "iroh_pair.protocol.offer",
        "iroh_pair.protocol.pairing",
        "iroh_pair.protocol.seal",
        "iroh_pair.protocol.spake",
        "iroh_pair.protocol.wire",
        "iroh_pair.protocol.words",
        "iroh_pair.runtime",
        "iroh_pair.store",
        "iroh_pair.testing",
        "iroh_pair.transport",
    ]


def test_top_level_exports_are_pinned() -> None:
    assert len(iroh_pair.__all__) == len(set(iroh_pair.__all__)), "a name is listed twice"
    assert set(iroh_pair.__all__) == EXPORTS


def test_the_named_imports_work() -> None:
    from iroh_pair import IrohPairError, Node, PairedDevice

    assert Node.__module__.startswith("iroh_pair.") and issubclass(IrohPairError, Exception)
    assert PairedDevice is iroh_pair.store.PairedDevice


def test_every_exception_lives_in_errors_and_is_exported_at_the_top() -> None:
    assert set(errors.__all__) <= set(iroh_pair.__all__)
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.IrohPairError) and cls.__module__ == "iroh_pair.errors", name
    # No public exception class is defined anywhere else in the package but in iroh_pair.testing
    # (the test servers' errors, IrohPairErrors too).
    for info in pkgutil.walk_packages(iroh_pair.__path__, "iroh_pair."):
        if info.name.endswith("__main__") or info.name == "iroh_pair.errors":
            continue
        mod = importlib.import_module(info.name)
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                assert name.startswith("_") or info.name.startswith("iroh_pair.testing"), f"{info.name}.{name}"
    from iroh_pair.testing import ServerError

    assert issubclass(ServerError, errors.IrohPairError)


@pytest.mark.parametrize("modname", public_modules())
def test_names_in_all_resolve(modname: str) -> None:
    mod = importlib.import_module(modname)
    assert isinstance(getattr(mod, "__all__", None), list), f"{modname} has no __all__"
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert not missing, f"{modname}.__all__ names what it does not have: {missing}"


def _has_doc(obj: object) -> bool:
    doc = getattr(obj, "__doc__", None)
    if not doc or not doc.strip():
        return False
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and doc.startswith(obj.__name__ + "("):
        return False  # the signature that @dataclass writes when there is no docstring
    return True


def _undocumented_members(cls: type) -> list[str]:
    """Public methods and properties defined by ``cls`` itself without a docstring."""
    out = []
    for attr, value in vars(cls).items():
        if attr.startswith("_") or (issubclass(cls, enum.Enum) and attr in cls.__members__):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        # methods and properties, Python or native (a slot or a dataclass field is neither)
        if isinstance(value, property) or inspect.isroutine(value) or inspect.isgetsetdescriptor(value):
            if not _has_doc(value):
                out.append(f"{cls.__name__}.{attr}")
    return out


@pytest.mark.parametrize("modname", public_modules())
def test_public_things_have_docstrings(modname: str) -> None:
    mod = importlib.import_module(modname)
    assert _has_doc(mod), f"{modname} has no docstring"
    missing = []
    for name in mod.__all__:
        obj = getattr(mod, name)
        if inspect.isclass(obj):
            if not _has_doc(obj):
                missing.append(name)
            missing += _undocumented_members(obj)
        elif inspect.isroutine(obj) and not _has_doc(obj):
            missing.append(name)
    assert not missing, f"{modname}: no docstring on {missing}"


def _imports(path: Path, *, package: str | None = None, runtime_only: bool = False) -> list[str]:
    """The dotted names ``path`` imports (``from m import n`` gives ``m.n``), relative imports
    resolved (from ``package``, default: where ``path`` is in the package); with
    ``runtime_only``, not those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if package is None:
        package = ".".join(("iroh_pair", *path.relative_to(PACKAGE).parent.parts))
    skip: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip |= {id(n) for n in ast.walk(node)}
    names = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base == "__future__":
                continue
            names += [f"{base}.{a.name}" for a in node.names]
    return names


def _pure(name: str) -> bool:
    top = name.split(".")[0]
    if top == "iroh_pair":
        return name.startswith(("iroh_pair.protocol.", "iroh_pair.errors."))
    if top in IO_MODULES:
        return False
    return top in sys.stdlib_module_names or top in PURE_THIRD_PARTY


@pytest.mark.parametrize("path", sorted((PACKAGE / "protocol").glob("*.py")), ids=lambda p: p.name)
def test_the_protocol_is_sans_io(path: Path) -> None:
    bad = [name for name in _imports(path) if not _pure(name)]
    assert not bad, f"protocol/{path.name} imports {bad}"


def test_errors_import_nothing_of_the_package() -> None:
    names = _imports(PACKAGE / "errors.py", runtime_only=True)
    bad = [name for name in names if name.startswith("iroh_pair") or not _pure(name)]
    assert not bad, f"errors.py imports {bad}"


def test_the_checks_above_can_fail(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import asyncio\nimport hashlib\nfrom iroh_pair import _native\nfrom ..transport import Endpoint\n"
        "from . import wire\nfrom iroh_pair.errors import ProtocolError\nfrom cryptography import x509\n"
        "import numpy\n",
        encoding="utf-8",
    )
    bad = [n for n in _imports(probe, package="iroh_pair.protocol") if not _pure(n)]
    assert bad == ["asyncio", "iroh_pair._native", "iroh_pair.transport.Endpoint", "numpy"]


def test_readme_examples_import_only_the_top_level() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("iroh_pair"):
                assert node.module == "iroh_pair", ast.unparse(node)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("iroh_pair.") for a in node.names), ast.unparse(node)
