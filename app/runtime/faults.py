"""A fault switch for the crash matrix: SIGKILL this process right after the k-th journaled event
of a given task. Off unless `AGENT_FAULT_PLAN_FILE` names a plan, refused when ENV=production, and
not reachable from any public API: only whoever can write the plan file can arm it.

The plan is JSON `{"<agent>/<task id>": k}`. Each fault fires once: a marker file next to the
plan records that it fired, so the restarted worker replays past the same boundary. With
`"every_kth_tool_call": k`, the process also SIGKILLs itself inside every k-th tool call it makes
(counted across restarts in a file next to the plan): after the tool service answered, before the
answer is journaled, the worst moment for a side effect.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

from app.settings import get_settings


def _plan() -> tuple[Path, dict[str, object]] | None:
    plan_file = get_settings().fault_plan_file
    if plan_file is None:
        return None
    plan_path = Path(plan_file)
    try:
        plan = json.loads(plan_path.read_text())
    except (OSError, ValueError):
        return None
    return (plan_path, plan) if isinstance(plan, dict) else None


def crash_in_tool_call_if_planned() -> None:
    """Runs inside a tool call's journaled step, after the tool service answered."""
    planned = _plan()
    if planned is None:
        return
    plan_path, plan = planned
    every = plan.get("every_kth_tool_call")
    if not isinstance(every, int) or every <= 0:
        return
    counter = plan_path.with_name(f"{plan_path.name}.tool-calls")
    try:
        count = int(counter.read_text()) + 1
    except (OSError, ValueError):
        count = 1
    counter.write_text(str(count))
    if count % every == 0:
        os.kill(os.getpid(), signal.SIGKILL)


def crash_if_planned(agent: str, task_id: str, boundary: int) -> None:
    planned = _plan()
    if planned is None:
        return
    plan_path, plan = planned
    target = f"{agent}/{task_id}"
    if plan.get(target) != boundary:
        return
    digest = hashlib.sha256(f"{target}#{boundary}".encode()).hexdigest()[:16]
    marker = plan_path.with_name(f"{plan_path.name}.{digest}.fired")
    if marker.exists():
        return
    marker.write_text(f"{target} at event {boundary}\n")
    os.kill(os.getpid(), signal.SIGKILL)
