"""The README's "Two devices on one machine, or no internet" block, run as it stands: the
installed ``iroh-pair`` and ``iroh-pair-servers`` (scripts/setup installs both wheels), in an
empty directory, with no ``IROH_PAIR_*`` variable set, so only what the block writes
(``config.toml``) tells the commands where the servers are."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import skip_or_fail

README = Path(__file__).resolve().parent.parent / "README.md"
MARK = "<!-- tests/test_readme_local.py runs the next block -->"
pytestmark = pytest.mark.slow


def the_block() -> str:
    text = README.read_text()
    assert text.count(MARK) == 1, "the README must mark exactly one block for this test"
    m = re.search(re.escape(MARK) + r"\n```sh\n(.*?)\n```", text, re.S)
    assert m, "the marked README block is not a ```sh block right after the mark"
    return m.group(1)


def test_readme_block_runs_as_written(tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent
    for tool in ("iroh-pair", "iroh-pair-servers"):
        if not (bindir / tool).exists():
            skip_or_fail(f"{tool} is not installed beside {sys.executable} (scripts/setup installs both wheels)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IROH_PAIR_") and k != "PYTHONPATH"}
    env["PATH"] = f"{bindir}:/usr/local/bin:/usr/bin:/bin"
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", the_block()], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert '"text": "hello, no internet needed"' in p.stdout, p.stdout
    assert "relay" in (tmp_path / "alice" / "config.toml").read_text()
    assert (tmp_path / "bob" / "config.toml").read_bytes() == (tmp_path / "alice" / "config.toml").read_bytes()
