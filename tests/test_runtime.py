"""The runtime's worker count (iroh_pair.runtime): chosen once per process, so every scenario runs
in a child process (tests/runtime_child.py) over real iroh endpoints on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from test_loop_thread import BAD_STDERR

CHILD = Path(__file__).resolve().parent / "runtime_child.py"


def child(scenario: str, **env: str) -> dict[str, Any]:
    environ = {k: v for k, v in os.environ.items() if k != "IROH_PAIR_WORKER_THREADS"}
    p = subprocess.run(
        [sys.executable, str(CHILD), scenario], capture_output=True, text=True, timeout=120, env={**environ, **env}
    )
    assert p.returncode == 0, p.stderr[-3000:]
    for bad in BAD_STDERR:
        assert bad not in p.stderr, p.stderr[-3000:]
    out: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


def test_a_chosen_count_carries_requests_and_a_stream_and_stays_fixed() -> None:
    out = child("two-workers")
    assert out["chosen"] == 2 and out["workers"] == 2
    assert out["sequential_ok"] and out["queued_ok"] and out["bulk_ok"]
    assert out["again"] is None  # the same count again is fine
    assert out["other"].startswith("RuntimeError: ") and "already has 2 worker threads" in out["other"]
    assert out["loop_thread"].startswith("RuntimeError: ")  # the multi-thread runtime is chosen


def test_the_default_leaves_a_core_to_the_loop_and_a_late_choice_is_refused() -> None:
    out = child("default")
    assert out["before"] is None  # nothing chosen until the first native operation
    assert out["sequential_ok"] and out["queued_ok"] and out["bulk_ok"]
    assert out["after"] == out["workers"] == max(1, len(os.sched_getaffinity(0)) - 1)
    assert out["late_other"].startswith("RuntimeError: ")
    assert out["late_same"] is None


def test_the_environment_variable_sets_the_default() -> None:
    out = child("default", IROH_PAIR_WORKER_THREADS="3")
    assert out["after"] == out["workers"] == 3
    assert out["sequential_ok"] and out["queued_ok"] and out["bulk_ok"]


def test_bad_counts_are_refused_without_fixing_the_runtime() -> None:
    out = child("bad-counts")
    assert out["0"].startswith("ValueError: ") and out["-1"].startswith("ValueError: ")
    assert out["'2'"].startswith("TypeError: ") and out["True"].startswith("TypeError: ")
    assert out["1.5"].startswith("TypeError: ")
    assert out["count_for_loop_thread"].startswith("ValueError: ")
    assert out["1025"].startswith("ValueError: ") and out["native_too_many"].startswith("ValueError: ")
    assert out[repr(2**70)].startswith("ValueError: ")
    assert out["after"] == {"kind": None, "workers": None}


def test_a_loop_thread_process_has_no_worker_count_to_choose() -> None:
    out = child("loop-thread-first")
    assert out["error"].startswith("RuntimeError: ") and out["workers"] is None
