"""`make bench`'s smoke: the harness runs every flow against a real stack and writes its results and
report. It asserts that it works and what it measured exists, never how fast anything was."""

from __future__ import annotations

import json
from pathlib import Path

from bench.__main__ import main


def test_the_benchmark_measures_every_flow_against_the_floor(tmp_path: Path) -> None:
    results_path, report_path = tmp_path / "results.json", tmp_path / "performance.md"
    assert main(["--smoke", "--results", str(results_path), "--report", str(report_path)]) == 0

    results = json.loads(results_path.read_text())
    sqlite = results["databases"]["sqlite"]
    assert set(sqlite) == {"floor", "AgentTask", "ExpenseReport"}
    for measured in sqlite.values():
        for repeats in measured["levels"].values():
            for level in repeats:
                assert level["flows"] == 2 and level["flows_per_second"] > 0
                assert 0 < level["approval_to_complete_ms_p50"] <= level["approval_to_complete_ms_p99"]
                assert level["cpu_ms_per_flow"]["restate-server"] > 0
    # The floor's journal is its 5 steps, the awakeable and its bookkeeping; ours is longer.
    assert 10 <= sqlite["floor"]["journal"]["run_entries"] < sqlite["AgentTask"]["journal"]["run_entries"]
    assert sqlite["AgentTask"]["parked"]["tasks"] == 2
    assert sqlite["AgentTask"]["levels"]["2"][0]["cpu_ms_per_flow"]["agent service"] > 0
    assert sqlite["floor"]["levels"]["2"][0]["cpu_ms_per_flow"]["floor service"] > 0

    report = report_path.read_text()
    assert report.startswith("# Performance") and "Smoke run" in report
    assert "| AgentTask |" in report and "How far from the floor" in report
