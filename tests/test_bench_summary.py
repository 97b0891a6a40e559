"""`make bench`'s summary (benchmarks/bench_summary.py): the table, and one tiny real run.

No figure is asserted against a time: the run only has to produce every row it measures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.bench_summary import EMULATOR_ROWS, GOALS, LOCAL, PEER, Figures, main, table


def _row(text: str, title: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {title} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_table_checks_each_goal_against_the_median_and_compares_round_by_round() -> None:
    ours, peer = Figures(), Figures()
    for value in (0.2, 0.9, 0.25):  # median 0.25: met, although one round missed
        ours.add("ready_s", value)
    for value in (0.1, 0.3, 0.1):
        peer.add("ready_s", value)
    ours.add("pss_fresh_mb", 61.0)
    peer.add("pss_fresh_mb", 30.0)

    text = table({LOCAL: ours, PEER: peer})

    header = text.splitlines()[0]
    assert f"| {LOCAL} | {PEER} | {LOCAL} / {PEER} |" in header
    ready = _row(text, "emulator spawn -> ready")
    # Per-round ratios 2.0, 3.0, 2.5: median 2.5 (not the ratio of medians, 0.25 / 0.1).
    assert ready[2:] == ["0.25 s", "0.10 s", "2.50x", "met", "3"]
    assert _row(text, "emulator PSS, fresh")[2:] == ["61 MB", "30 MB", "2.03x", "NOT met", "1"]
    # A goal nobody measured says so instead of a verdict.
    assert _row(text, "model server start -> /ping 200")[2:] == ["n/a", "n/a", "", "", "0"]
    assert len(text.splitlines()) == 2 + len(GOALS)


def test_summary_runs_on_tiny_sizes_against_the_real_emulator(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    argv = ["--rounds", "1", "--environments", "3", "--warm", "2", "--sequential", "1"]
    argv += ["--concurrent", "2", "--no-peer", "--no-stack", "--json", str(out)]

    assert main(argv) == 0

    samples = json.loads(out.read_text())
    assert list(samples) == [LOCAL]
    assert {goal.key for goal in GOALS} >= EMULATOR_ROWS
    assert set(samples[LOCAL]) == EMULATOR_ROWS
    for key, values in samples[LOCAL].items():
        assert len(values) == 1 and math.isfinite(values[0]) and values[0] > 0, key
