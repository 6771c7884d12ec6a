"""`make up` / `make down` as a newcomer runs them: the stack is left running with tasks waiting,
the printed sign-in opens the console, a shell that sources the env file finds `agentctl`,
`restate` and the stack; `down` stops exactly what `up` started."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from deploy.local import ROOT, wait_until


def run(action: str, up_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.up", action],
        env={**os.environ, "UP_DIR": str(up_dir)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def printed(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    assert found is not None, f"{pattern!r} not in:\n{text}"
    return found.group(1)


def test_up_leaves_the_stack_running_and_down_stops_exactly_it(tmp_path: Path) -> None:
    up_dir = tmp_path / "up"
    started = run("up", up_dir)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        state = json.loads((up_dir / "stack.json").read_text())
        pids = [process["pid"] for process in state["processes"]]
        assert len(pids) == 3 and all(Path(f"/proc/{pid}").exists() for pid in pids)
        console = printed(r"Console:\s+(\S+)", started.stdout)
        token = printed(r"sign in as travel-manager\s+(\S+)", started.stdout)
        restate_ui = printed(r"Restate UI:\s+(\S+)", started.stdout)
        assert "make down" in started.stdout

        # The printed sign-in opens the console, where an expense waits for that approver.
        assert httpx.get(console, timeout=10).status_code == 200
        waiting = httpx.get(
            console.replace("/console", "/console/api/tasks"),
            params={"status": "waiting", "agent": "ExpenseReport"},
            headers={"authorization": f"Bearer {token}"},
            timeout=30,
        ).json()
        [hotel] = [task for task, who in state["waiting"].items() if who == "travel-manager"]
        assert hotel.removeprefix("ExpenseReport/") in [row["task_id"] for row in waiting["tasks"]]
        assert httpx.get(restate_ui, timeout=10).status_code == 200

        # A shell that sources the env file, anywhere, finds the tools and the stack.
        shell = subprocess.run(
            [
                "bash",
                "-c",
                f"source {up_dir / 'env'} && agentctl pending --approver travel-manager --json "
                "&& restate invocations list --all >/dev/null && echo restate-ok",
            ],
            env={key: value for key, value in os.environ.items() if key != "DATABASE_URL"},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert shell.returncode == 0, shell.stdout + shell.stderr
        listed, ok = shell.stdout.strip().splitlines()
        assert ok == "restate-ok"
        assert any(row["task_id"] == hotel.removeprefix("ExpenseReport/") for row in json.loads(listed))

        # `up` again: the same stack, not a second one.
        again = run("up", up_dir)
        assert again.returncode == 0 and "already up" in again.stdout
        assert [p["pid"] for p in json.loads((up_dir / "stack.json").read_text())["processes"]] == pids
    finally:
        stopped = run("down", up_dir)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "Stopped agent service" in stopped.stdout and "restate-server" in stopped.stdout

    def gone() -> bool:
        return not any(
            Path(f"/proc/{pid}/cmdline").exists() and Path(f"/proc/{pid}/cmdline").read_bytes()
            for pid in pids
        )

    wait_until(gone, timeout=30, what="the stack's processes to end")
    assert "Nothing to stop" in run("down", up_dir).stdout
