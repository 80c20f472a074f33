"""The hand-written stub matches the native module, and the code type-checks strictly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MYPYPATH=str(ROOT / "stubs"))
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )


@pytest.mark.slow
def test_stubtest_native_module() -> None:
    # The one allowlist entry (Chunk.__buffer__) is for Python 3.11, where the buffer protocol
    # has no Python-level method; from 3.12 the method exists and the entry goes unused.
    unused_ok = ("--ignore-unused-allowlist",) if sys.version_info >= (3, 12) else ()
    p = _run(
        "mypy.stubtest", "iroh_pair._native",
        "--allowlist", str(ROOT / "stubs" / "stubtest-allowlist.txt"), *unused_ok,
    )
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.slow
def test_mypy_strict_python_and_tests() -> None:
    p = _run("mypy", "--strict", "python/iroh_pair", "tests")
    assert p.returncode == 0, p.stdout + p.stderr
