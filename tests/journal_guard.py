"""A non-determinism guard users can put in their own CI: the journal of a reference run, recorded
as a golden file, must not change shape unnoticed.

A code change that adds, removes, renames or reorders journaled steps makes Restate fail the
replay of every invocation the old code started ("journal mismatch"). Comparing a reference run's
journal signature (entry types and step names, in order) with the recorded one catches such a
change in CI, before it ships; an intended change is then shipped with the old deployment kept
for in-flight invocations (or drained first), and the golden file regenerated.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from deploy.local import Stack

GOLDEN_DIR = Path(__file__).parent / "golden"


def journal_signature(stack: Stack, invocation_id: str) -> list[str]:
    """The journal's shape: `entry_type [name]` per entry, in order; no values, no times."""
    safe = invocation_id.replace("'", "''")
    rows = stack.sql(f"select index, entry_type, name from sys_journal where id = '{safe}' order by index")
    return [
        f"{row['entry_type']} [{row['name']}]" if row.get("name") else str(row["entry_type"]) for row in rows
    ]


def compare(golden: list[str], actual: list[str]) -> list[str]:
    """The unified diff between the recorded and the current journal shape; empty when equal."""
    return list(difflib.unified_diff(golden, actual, "golden journal", "this build's journal", lineterm=""))


def read_golden(name: str) -> list[str]:
    return (GOLDEN_DIR / f"{name}.journal").read_text().splitlines()


def write_golden(name: str, signature: list[str]) -> None:
    GOLDEN_DIR.mkdir(exist_ok=True)
    (GOLDEN_DIR / f"{name}.journal").write_text("\n".join(signature) + "\n")
