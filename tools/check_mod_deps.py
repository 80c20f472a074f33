#!/usr/bin/env python3
"""Check that the modules of a Rust crate import each other in one direction only.

A module is a top-level module of the crate: ``src/foo.rs`` or ``src/foo/mod.rs``, together
with everything inside it (inline ``mod x { ... }`` blocks and files under ``src/foo/``). The
crate root (``lib.rs``) is the module ``lib``; it imports every module it declares with
``mod x;``. A module imports another when its code names it by a path: ``use crate::x::...``,
``crate::x::...`` anywhere, ``use crate::{x, y::Z}``, or ``super::`` paths that climb out of
the module (``super::x`` in ``src/a.rs`` names the root's ``x``). Comments, string and char
literals and ``$crate`` (macro paths) are ignored.

Prints the edges and, when there is no cycle, the modules in layers (each module after
everything it imports); exits 1 and prints the cycles otherwise.

Usage::

    python tools/check_mod_deps.py [SRC_DIR]   # default: rust/iroh-pair-native/src

Example output::

    edges (module -> the modules it imports):
      bridge -> outcome, queue
      ...
    layers (a module imports only modules of lower layers):
      0: codes, error
      ...
    OK: 12 modules, 30 edges, no cycle
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = "lib"
DEFAULT_SRC = Path(__file__).resolve().parent.parent / "rust" / "iroh-pair-native" / "src"

_IDENT = r"(?:r#)?[A-Za-z_][A-Za-z0-9_]*"
_IDENT_RE = re.compile(_IDENT)
_KEYWORD_RE = re.compile(r"(?<![\w$#])(crate|super)(?![\w])")
_MOD_DECL_RE = re.compile(rf"(?<![\w])mod\s+({_IDENT})\s*;")
_MOD_OPEN_RE = re.compile(rf"(?<![\w])mod\s+({_IDENT})\s*$")
_RAW_STR_RE = re.compile(r'(?:b|c)?r(#*)"')


def strip_code(text: str) -> str:
    """``text`` with comments and the contents of string and char literals blanked out.

    Lengths are kept, so positions in the result are positions in ``text``.
    """
    out = list(text)
    i, n = 0, len(text)

    def blank(a: int, b: int) -> None:
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            blank(i, j)
            i = j
        elif (m := _RAW_STR_RE.match(text, i)) and not _word_before(text, i):
            end = '"' + m.group(1)
            j = text.find(end, m.end())
            j = n if j < 0 else j + len(end)
            blank(m.end(), j - len(end))
            i = j
        elif c == '"' or (c in "bc" and text.startswith('"', i + 1) and not _word_before(text, i)):
            j = i + (1 if c == '"' else 2)
            start = j
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            blank(start, min(j, n))
            i = j + 1
        elif c == "'" or (c == "b" and text.startswith("'", i + 1) and not _word_before(text, i)):
            q = i if c == "'" else i + 1
            if text.startswith("\\", q + 1):  # an escape: '\n', '\'', '\u{1F600}'
                j = text.find("'", q + 3)
                j = n if j < 0 else j
                blank(q + 1, j)
                i = j + 1
            elif q + 2 < n and text[q + 2] == "'":  # 'a'
                blank(q + 1, q + 2)
                i = q + 3
            else:  # a lifetime or a label
                i = q + 1
        else:
            i += 1
    return "".join(out)


def _word_before(text: str, i: int) -> bool:
    return i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")


def _skip_ws(t: str, i: int) -> int:
    while i < len(t) and t[i].isspace():
        i += 1
    return i


def _sep(t: str, i: int) -> int | None:
    """The index after a ``::`` at ``t[i:]`` (whitespace allowed around it), else None."""
    i = _skip_ws(t, i)
    if t.startswith("::", i):
        return _skip_ws(t, i + 2)
    return None


def _matching(t: str, i: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``t[i]``."""
    depth = 0
    for j in range(i, len(t)):
        if t[j] == "{":
            depth += 1
        elif t[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(t)


def _split_top(s: str) -> list[str]:
    """``s`` split at the commas outside braces."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in s:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _path_end(t: str, i: int) -> int:
    """The index after the path or use tree that starts at ``t[i]``."""
    while i < len(t):
        if t[i] == "{":
            i = _matching(t, i) + 1
        elif t[i] == "*":
            i += 1
        elif m := _IDENT_RE.match(t, i):
            i = m.end()
        else:
            break
        after = _sep(t, i)
        if after is None:
            break
        i = after
    return i


def _tree_heads(t: str, i: int, supers: int) -> list[tuple[int, str | None]]:
    """What a use tree or path at ``t[i:]`` names first, after ``supers`` leading ``super``s.

    Returns ``(supers, segment)`` pairs: ``segment`` is the first name after the ``super``s
    (None for ``self``, ``"*"`` for a glob); a group ``{a, b::C}`` gives one pair per item.
    """
    if i >= len(t):
        return []
    if t[i] == "{":
        heads: list[tuple[int, str | None]] = []
        for item in _split_top(t[i + 1 : _matching(t, i)]):
            heads.extend(_tree_heads(item, 0, supers))
        return heads
    if t[i] == "*":
        return [(supers, "*")]
    m = _IDENT_RE.match(t, i)
    if not m:
        return []
    name = m.group(0).removeprefix("r#")
    if name == "super":
        after = _sep(t, m.end())
        return _tree_heads(t, after, supers + 1) if after is not None else [(supers + 1, None)]
    if name == "self":
        return [(supers, None)]
    return [(supers, name)]


@dataclass
class ModuleFile:
    path: Path
    top: str  # the top-level module it belongs to (ROOT for the crate root)
    mod_path: list[str]  # its module path from the root, e.g. ["a", "b"] for src/a/b.rs
    edges: set[str] = field(default_factory=set)


def module_files(src: Path) -> list[ModuleFile]:
    files = []
    for p in sorted(src.rglob("*.rs")):
        rel = p.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts[0] == "bin":
            continue
        if parts in (["lib"], ["main"]):
            files.append(ModuleFile(p, ROOT, []))
            continue
        if parts[-1] == "mod":
            parts = parts[:-1]
        files.append(ModuleFile(p, parts[0], parts))
    return files


def inline_mods_at(code: str, positions: list[int]) -> dict[int, list[str]]:
    """For each position, the names of the inline ``mod x { ... }`` blocks it is inside."""
    wanted = sorted(set(positions))
    result: dict[int, list[str]] = {}
    stack: list[str | None] = []
    w = 0
    for i, ch in enumerate(code):
        while w < len(wanted) and wanted[w] == i:
            result[i] = [s for s in stack if s is not None]
            w += 1
        if ch == "{":
            m = _MOD_OPEN_RE.search(code, max(0, i - 200), i)
            stack.append(m.group(1).removeprefix("r#") if m else None)
        elif ch == "}" and stack:
            stack.pop()
    for pos in wanted[w:]:
        result[pos] = [s for s in stack if s is not None]
    return result


def scan(files: list[ModuleFile]) -> None:
    tops = {f.top for f in files}
    for f in files:
        code = strip_code(f.path.read_text(encoding="utf-8"))
        if f.top == ROOT:
            depth = 0
            for i, ch in enumerate(code):
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                elif ch == "m" and depth == 0 and (m := _MOD_DECL_RE.match(code, i)):
                    if not _word_before(code, i):
                        f.edges.add(m.group(1).removeprefix("r#"))
        hits = [(m.start(), m.group(1), m.end()) for m in _KEYWORD_RE.finditer(code)]
        inline = inline_mods_at(code, [h[0] for h in hits])
        consumed = 0
        for start, kw, end in hits:
            after = _sep(code, end)
            if start < consumed or after is None:
                continue  # inside a path already read, or `pub(crate)`, `pub(super)`
            consumed = _path_end(code, start)
            heads = _tree_heads(code, after, 0) if kw == "crate" else _tree_heads(code, start, 0)
            here = f.mod_path + inline[start]
            for supers, seg in heads:
                if supers > len(here):
                    continue  # not a valid path; rustc would say so
                base = here[: len(here) - supers] if kw == "super" else []
                if base:
                    target = base[0]
                elif seg is not None and seg in tops and seg != ROOT:
                    target = seg
                else:
                    target = ROOT  # an item of the crate root itself
                if target != f.top:
                    f.edges.add(target)


def graph(src: Path) -> dict[str, set[str]]:
    files = module_files(src)
    scan(files)
    g: dict[str, set[str]] = {}
    for f in files:
        g.setdefault(f.top, set()).update(f.edges)
    for deps in list(g.values()):
        for d in deps:
            g.setdefault(d, set())
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(1000, 10 * len(g)))
    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(out)


def layers(g: dict[str, set[str]]) -> list[list[str]]:
    """Modules by layer: 0 imports nothing of the crate, n imports some module of layer n-1."""
    level: dict[str, int] = {}

    def depth(v: str) -> int:
        if v not in level:
            level[v] = 1 + max((depth(d) for d in g[v]), default=-1)
        return level[v]

    for v in g:
        depth(v)
    out: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for v, lv in level.items():
        out[lv].append(v)
    return [sorted(x) for x in out]


def main(argv: list[str]) -> int:
    src = Path(argv[1]) if len(argv) > 1 else DEFAULT_SRC
    if not src.is_dir():
        print(f"no such directory: {src}", file=sys.stderr)
        return 2
    g = graph(src)
    n_edges = sum(len(d) for d in g.values())
    print("edges (module -> the modules it imports):")
    for v in sorted(g):
        print(f"  {v} -> {', '.join(sorted(g[v])) or '(nothing)'}")
    found = cycles(g)
    if found:
        print("CYCLES (modules that import each other, directly or through others):")
        for comp in found:
            inside = [f"{a} -> {b}" for a in comp for b in sorted(g[a]) if b in comp]
            print(f"  {{{', '.join(comp)}}}: {'; '.join(inside)}")
        print(f"FAIL: {len(found)} cycle(s) among {len(g)} modules")
        return 1
    print("layers (a module imports only modules of lower layers):")
    for i, names in enumerate(layers(g)):
        print(f"  {i}: {', '.join(names)}")
    print(f"OK: {len(g)} modules, {n_edges} edges, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
