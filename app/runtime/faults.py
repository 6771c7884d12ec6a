"""A fault switch for the crash matrix: SIGKILL this process right after the k-th journaled event
of a given task. Off unless `AGENT_FAULT_PLAN_FILE` names a plan, refused when ENV=production, and
not reachable from any public API: only whoever can write the plan file can arm it.

The plan is JSON `{"<agent>/<task id>": k}`. Each fault fires once: a marker file next to the
plan records that it fired, so the restarted worker replays past the same boundary.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

from app.settings import get_settings


def crash_if_planned(agent: str, task_id: str, boundary: int) -> None:
    plan_file = get_settings().fault_plan_file
    if plan_file is None:
        return
    plan_path = Path(plan_file)
    try:
        plan = json.loads(plan_path.read_text())
    except (OSError, ValueError):
        return
    target = f"{agent}/{task_id}"
    if plan.get(target) != boundary:
        return
    digest = hashlib.sha256(f"{target}#{boundary}".encode()).hexdigest()[:16]
    marker = plan_path.with_name(f"{plan_path.name}.{digest}.fired")
    if marker.exists():
        return
    marker.write_text(f"{target} at event {boundary}\n")
    os.kill(os.getpid(), signal.SIGKILL)
