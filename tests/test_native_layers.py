"""The native crate's modules import each other in one direction only.

`tools/check_mod_deps.py` reads the `crate::` and `super::` paths of every module of
rust/iroh-pair-native/src and fails on any cycle. It runs here on the real crate, and on small
synthetic crates that do have cycles, so that a checker which cannot fail would be caught.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKER = ROOT / "tools" / "check_mod_deps.py"
SRC = ROOT / "rust" / "iroh-pair-native" / "src"


def _check(src: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECKER), str(src)], capture_output=True, text=True, timeout=60
    )


def _crate(tmp_path: Path, files: dict[str, str]) -> Path:
    src = tmp_path / "src"
    for name, text in files.items():
        p = src / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return src


def _edges(stdout: str) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for m in re.finditer(r"^  (\w+) -> (.*)$", stdout, re.MULTILINE):
        deps = m.group(2)
        edges[m.group(1)] = set() if deps == "(nothing)" else set(deps.split(", "))
    return edges


def test_native_crate_has_no_cycle() -> None:
    r = _check(SRC)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK:" in r.stdout and "no cycle" in r.stdout
    modules = {p.stem for p in SRC.glob("*.rs")} - {"lib"}
    edges = _edges(r.stdout)
    assert modules <= set(edges), modules - set(edges)
    # lib.rs declares every module, so the root imports them all.
    assert edges["lib"] == modules
    # The bridge sits below what runs on it (the lower half of what was one circle).
    assert not edges["bridge"] & {"connection", "streams", "serve", "endpoint", "mdns"}


def test_native_crate_docs_list_every_module_in_layer_order() -> None:
    """lib.rs lists each module once, each after every module it imports."""
    docs = [
        line for line in (SRC / "lib.rs").read_text().splitlines() if line.startswith("//!")
    ]
    listed = [m.group(1) for line in docs if (m := re.match(r"//! - `(\w+)`", line))]
    modules = {p.stem for p in SRC.glob("*.rs")} - {"lib"}
    assert sorted(listed) == sorted(modules), (listed, modules)
    r = _check(SRC)
    edges = _edges(r.stdout)
    for i, name in enumerate(listed):
        later = edges[name] & set(listed[i + 1 :])
        assert not later, f"lib.rs lists {name} before {sorted(later)}, which it imports"


def test_direct_cycle_fails(tmp_path: Path) -> None:
    src = _crate(tmp_path, {
        "lib.rs": "mod a;\nmod b;\n",
        "a.rs": "use crate::b::B;\npub struct A;\n",
        "b.rs": "pub struct B(super::a::A);\n",
    })
    r = _check(src)
    assert r.returncode == 1, r.stdout
    assert "{a, b}" in r.stdout and "a -> b" in r.stdout and "b -> a" in r.stdout


def test_indirect_cycle_fails(tmp_path: Path) -> None:
    src = _crate(tmp_path, {
        "lib.rs": "mod a;\nmod b;\nmod c;\nmod d;\n",
        "a.rs": "use crate::{b::B, d};\npub fn f() {}\n",
        "b.rs": "pub struct B;\nimpl B { fn g() { crate::c::h() } }\n",
        "c.rs": "pub fn h() { crate :: a :: f() }\n",
        "d.rs": "pub const D: u8 = 1;\n",
    })
    r = _check(src)
    assert r.returncode == 1, r.stdout
    assert "{a, b, c}" in r.stdout  # d is imported but not part of the cycle
    assert "FAIL: 1 cycle(s)" in r.stdout


def test_using_an_item_of_the_root_is_a_cycle(tmp_path: Path) -> None:
    src = _crate(tmp_path, {
        "lib.rs": "mod a;\npub fn helper() {}\n",
        "a.rs": "pub fn f() { crate::helper() }\n",
    })
    r = _check(src)
    assert r.returncode == 1, r.stdout
    assert "{a, lib}" in r.stdout


def test_directory_modules_count_as_one(tmp_path: Path) -> None:
    src = _crate(tmp_path, {
        "lib.rs": "mod a;\nmod b;\n",
        "a/mod.rs": "mod inner;\n",
        "a/inner.rs": "use crate::b::B;\npub struct I;\n",
        "b.rs": "pub struct B;\nfn f(_: super::a::inner::I) {}\n",
    })
    r = _check(src)
    assert r.returncode == 1, r.stdout
    assert "{a, b}" in r.stdout


def test_what_is_not_an_import_is_ignored(tmp_path: Path) -> None:
    src = _crate(tmp_path, {
        "lib.rs": "mod a;\nmod b;\nmod c;\n",
        "a.rs": """
            //! Mentions crate::b::B in a comment /* and crate::c */ only.
            use crate::{c, c::C as _};
            pub(crate) struct A<'a>(&'a str);
            pub(super) const S: &str = "crate::b::B and super::b";
            const Q: char = '"';
            const R: &str = r#"crate::b "quoted" super::b"#;
            macro_rules! m { () => { $crate::b::B } }
            #[cfg(test)]
            mod tests {
                use super::*;
                mod deeper {
                    use super::super::A;
                }
            }
        """,
        "b.rs": "use crate::a::A;\n",
        "c.rs": "pub struct C;\n",
    })
    r = _check(src)
    assert r.returncode == 0, r.stdout
    assert _edges(r.stdout) == {
        "lib": {"a", "b", "c"},
        "a": {"c"},
        "b": {"a"},
        "c": set(),
    }
    assert "0: c" in r.stdout and "1: a" in r.stdout and "2: b" in r.stdout
