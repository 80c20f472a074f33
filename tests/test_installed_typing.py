"""Typed from a user's seat: the built wheel, installed in a clean venv, type-checks a user's
program under ``mypy --strict`` with nothing from this repository (no stubs/, no mypy config,
no PYTHONPATH), and mypy reports each deliberate misuse in tests/typing_user/bad.py. In the same
venv, the installed metadata (version, license, license files, keywords, classifiers) is what
pyproject.toml declares, and ``iroh-pair --version`` answers, as ``python -m iroh_pair`` does.

The wheel is the one in dist/ (scripts/setup builds it; scripts/build-wheels builds the
manylinux2014 ones). Every wheel there must ship ``py.typed`` and the native module's stub.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
USER = Path(__file__).resolve().parent / "typing_user"
TYPED_FILES = ("iroh_pair/py.typed", "iroh_pair/_native.pyi", "iroh_pair/_native.abi3.so")

pytestmark = pytest.mark.slow


def wheels() -> list[Path]:
    return sorted((ROOT / "dist").glob("iroh_pair-*.whl"))


def installable_wheel() -> Path | None:
    """The newest wheel in dist/ for this machine (abi3, so any CPython >= 3.11 takes it)."""
    plat = "linux" if sys.platform == "linux" else "macosx" if sys.platform == "darwin" else sys.platform
    ok = [w for w in wheels() if plat in w.name and w.name.endswith(f"_{platform.machine()}.whl")]
    return max(ok, key=lambda w: w.stat().st_mtime) if ok else None


def clean_env() -> dict[str, str]:
    """This environment without what would let the repository leak into the check."""
    drop = ("PYTHONPATH", "MYPYPATH", "MYPY_CACHE_DIR", "PYTHONHOME", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if k not in drop}


@dataclass
class Installed:
    venv_python: Path
    site: Path
    work: Path  # outside the repository: the user programs and an empty mypy config

    def mypy(self, program: str) -> subprocess.CompletedProcess[str]:
        """``mypy --strict`` on a copied user program, resolving imports in the venv only."""
        return subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--config-file", "mypy.ini",
             "--cache-dir", str(self.work / ".mypy_cache"),
             "--python-executable", str(self.venv_python), program],
            cwd=self.work, env=clean_env(), capture_output=True, text=True, timeout=600,
        )


def _run(*args: str | Path, cwd: Path) -> str:
    p = subprocess.run([str(a) for a in args], cwd=cwd, env=clean_env(), capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, f"{args}: {p.stdout}{p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    wheel = installable_wheel()
    if wheel is None:
        skip_or_fail(f"no iroh_pair wheel for this machine in {ROOT / 'dist'} (scripts/setup builds it)")
        raise AssertionError("unreachable")
    base = tmp_path_factory.mktemp("typing_user")
    assert ROOT not in base.parents
    # the venv's python, not this (possibly venv) one, so the venv is clean
    base_python = getattr(sys, "_base_executable", sys.executable)
    _run(base_python, "-m", "venv", base / "venv", cwd=base)
    py = base / "venv" / "bin" / "python"
    _run(py, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel, cwd=base)
    site = Path(_run(py, "-c", "import iroh_pair, pathlib; print(pathlib.Path(iroh_pair.__file__).parent)",
                     cwd=base).strip())
    assert base / "venv" in site.parents, f"iroh_pair imported from {site}, not the clean venv"
    work = base / "user"
    work.mkdir()
    (work / "mypy.ini").write_text("[mypy]\n")
    for name in ("good.py", "bad.py"):
        shutil.copy(USER / name, work / name)
    yield Installed(py, site, work)


def reported_lines(out: str, program: str) -> set[int]:
    return {int(m) for m in re.findall(rf"^{re.escape(program)}:(\d+): error:", out, re.M)}


def misuse_lines() -> set[int]:
    lines = (USER / "bad.py").read_text().splitlines()
    return {i for i, line in enumerate(lines, 1) if re.search(r"#\s*misuse:", line)}


def test_every_wheel_ships_its_types() -> None:
    found = wheels()
    if not found:
        skip_or_fail(f"no iroh_pair wheel in {ROOT / 'dist'} (scripts/setup builds it)")
    for wheel in found:
        names = set(zipfile.ZipFile(wheel).namelist())
        missing = [f for f in TYPED_FILES if f not in names]
        assert not missing, f"{wheel.name} lacks {missing}"


def test_user_program_type_checks_against_the_installed_wheel(installed: Installed) -> None:
    p = installed.mypy("good.py")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Success: no issues found in 1 source file" in p.stdout
    # and it is a real program: its transport round trip runs on loopback
    out = _run(installed.venv_python, "good.py", cwd=installed.work)
    assert out.strip() == "b'ping'"


def test_each_misuse_is_reported(installed: Installed) -> None:
    expected = misuse_lines()
    assert len(expected) >= 10
    p = installed.mypy("bad.py")
    assert p.returncode == 1, p.stdout + p.stderr
    assert reported_lines(p.stdout, "bad.py") == expected, p.stdout


def test_the_check_needs_the_stub_and_the_marker(installed: Installed) -> None:
    """The check is not vacuous: without the stub a misuse goes unseen; without py.typed mypy
    refuses the package."""
    stub, marker = installed.site / "_native.pyi", installed.site / "py.typed"
    hidden = stub.with_name("_native.pyi.hidden")
    stub.rename(hidden)
    try:
        p = installed.mypy("bad.py")
        assert reported_lines(p.stdout, "bad.py") < misuse_lines(), p.stdout
    finally:
        hidden.rename(stub)
    hidden = marker.with_name("py.typed.hidden")
    marker.rename(hidden)
    try:
        p = installed.mypy("good.py")
        assert p.returncode == 1 and "missing library stubs or py.typed marker" in p.stdout, p.stdout
    finally:
        hidden.rename(marker)


def test_installed_commands_and_metadata(installed: Installed) -> None:
    """The console script and ``python -m iroh_pair`` are one command, with the package's version;
    the wheel's metadata carries the license (PEP 639), its files, keywords and classifiers."""
    py, work = installed.venv_python, installed.work
    script = py.parent / "iroh-pair"
    version = _run(py, "-c", "import iroh_pair; print(iroh_pair.__version__)", cwd=work).strip()
    assert _run(script, "--version", cwd=work) == f"iroh-pair {version}\n"
    assert _run(py, "-m", "iroh_pair", "--version", cwd=work) == f"iroh-pair {version}\n"
    help_text = _run(script, "--help", cwd=work)
    assert help_text.startswith("usage: iroh-pair ")
    assert _run(py, "-m", "iroh_pair", "--help", cwd=work) == help_text

    meta = json.loads(_run(py, "-c", (
        "import importlib.metadata as m, json; d = m.distribution('iroh-pair'); md = d.metadata; "
        "print(json.dumps({'version': d.version, 'license': md['License-Expression'], "
        "'license_files': md.get_all('License-File'), 'keywords': md['Keywords'], "
        "'classifiers': md.get_all('Classifier'), 'requires_python': md['Requires-Python'], "
        "'files': [str(f) for f in d.files or []]}))"
    ), cwd=work))
    assert meta["version"] == version
    assert meta["license"] == "MIT OR Apache-2.0"
    assert sorted(meta["license_files"]) == ["LICENSE-APACHE", "LICENSE-MIT"]
    for name in meta["license_files"]:
        assert any(f.endswith(f".dist-info/licenses/{name}") for f in meta["files"]), meta["files"]
    assert {"iroh", "p2p", "pairing"} <= set(re.split(r"[,\s]+", meta["keywords"]))
    assert {"Programming Language :: Python :: 3.11", "Operating System :: POSIX :: Linux",
            "Typing :: Typed"} <= set(meta["classifiers"])
    assert meta["requires_python"] == ">=3.11"
