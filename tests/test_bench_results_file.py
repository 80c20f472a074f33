"""bench/run.py rewrites bench/RESULTS.md but keeps the hand-kept part below its marker line.

Runs no benchmark: it calls the writer function on a file in a temporary directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.run import KEPT_MARKER, write_keeping_tail  # noqa: E402


def test_kept_part_survives_a_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    kept = f"{KEPT_MARKER}\n\n## Soak (issue #35)\n\nhand-kept table\n| a | b |\n"
    path.write_text("# old generated\n\nold table\n\n" + kept)
    write_keeping_tail(path, "# new generated\n\nnew table\n")
    text = path.read_text()
    assert text == "# new generated\n\nnew table\n\n" + kept
    assert "old table" not in text
    # a second run keeps the same part once, not twice
    write_keeping_tail(path, "# newer\n")
    assert path.read_text() == "# newer\n\n" + kept


def test_file_without_marker_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# old\n\n## Soak\nnot marked, so not kept\n")
    write_keeping_tail(path, "# new\n")
    assert path.read_text() == "# new\n"


def test_missing_file_is_created(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    write_keeping_tail(path, "# new\n")
    assert path.read_text() == "# new\n"


def test_the_repository_results_file_has_the_marker_before_the_kept_sections() -> None:
    text = (ROOT / "bench" / "RESULTS.md").read_text()
    lines = text.splitlines()
    assert lines.count(KEPT_MARKER) == 1
    at = lines.index(KEPT_MARKER)
    for heading in ("## Soak (issue #35)", "## Runtime choices (bench/transport.py)"):
        assert heading in lines and lines.index(heading) > at, heading
