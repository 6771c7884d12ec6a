"""Figures a reliability test measured, collected into the report by tests/reliability_report.py."""

from __future__ import annotations

import json
import os
from pathlib import Path


def record_figure(name: str, value: str) -> None:
    """Append one named figure to `$RELIABILITY_FIGURES` (set by the report plugin); else nothing."""
    target = os.environ.get("RELIABILITY_FIGURES")
    if not target:
        return
    with Path(target).open("a", encoding="utf-8") as out:
        out.write(json.dumps({"name": name, "value": value}) + "\n")
