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


def test_the_files_section_is_replaced_in_place_and_kept_by_run_py(tmp_path: Path) -> None:
    from bench.files import BEGIN, END, write_section

    path = tmp_path / "RESULTS.md"
    path.write_text(f"# generated\n\n{KEPT_MARKER}\n\n## Soak (issue #35)\n\nsoak table\n")
    write_section(tmp_path, [BEGIN, "", "files v1", END])
    first = path.read_text()
    assert first == f"# generated\n\n{KEPT_MARKER}\n\n{BEGIN}\n\nfiles v1\n{END}\n\n## Soak (issue #35)\n\nsoak table\n"
    write_section(tmp_path, [BEGIN, "", "files v2", END])
    second = path.read_text()
    assert second == first.replace("files v1", "files v2")
    # a run of bench/run.py keeps it (it is below the marker)
    write_keeping_tail(path, "# regenerated\n")
    assert path.read_text() == "# regenerated\n\n" + second.split("\n\n", 1)[1]


def test_the_repository_results_file_has_one_files_section_below_the_marker() -> None:
    from bench.files import BEGIN, END

    text = (ROOT / "bench" / "RESULTS.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert text.index(KEPT_MARKER) < text.index(BEGIN) < text.index(END)
