"""`make up` / `make down` as a newcomer runs them, and the README's examples run as written
against that stack: the stack is left running with tasks waiting, the printed sign-in opens the
console, a shell that sources the env file finds `agentctl`, `restate` and the stack; every
`sh` example of the README runs (or says why not); `down` stops exactly what `up` started."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.local import ROOT, wait_until

README = ROOT / "README.md"
# Each `sh` block of the README is preceded by its marker: run it, or skip it, saying why.
MARKED_BLOCK = re.compile(r"<!-- readme: (run|skip \((?P<why>[^)]+)\)) -->\n```sh\n(?P<code>.*?)\n```", re.S)
ANY_BLOCK = re.compile(r"```sh\n")


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


def shell(up_dir: Path, script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """bash, as an operator's shell after `source var/up/env`: nothing of this process's own
    configuration leaks in (no DATABASE_URL, no Restate addresses)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RESTATE_", "DATABASE_URL", "APPROVALS_", "TOOLS_", "ENV"))
    }
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail\nsource {up_dir / 'env'}\n{script}"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@dataclass
class Up:
    up_dir: Path
    output: str
    state: dict[str, Any]

    @property
    def pids(self) -> list[int]:
        return [process["pid"] for process in self.state["processes"]]


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    up_dir = tmp_path_factory.mktemp("up") / "up"
    started = run("up", up_dir)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield Up(up_dir, started.stdout, json.loads((up_dir / "stack.json").read_text()))
    finally:
        run("down", up_dir)  # a no-op once the last test has stopped it


def test_up_leaves_the_stack_running_with_tasks_waiting(up: Up) -> None:
    assert len(up.pids) == 3 and all(Path(f"/proc/{pid}").exists() for pid in up.pids)
    console = printed(r"Console:\s+(\S+)", up.output)
    token = printed(r"sign in as travel-manager\s+(\S+)", up.output)
    restate_ui = printed(r"Restate UI:\s+(\S+)", up.output)
    assert "make down" in up.output
    # The printed sign-in opens the console, where an expense waits for that approver.
    assert httpx.get(console, timeout=10).status_code == 200
    waiting = httpx.get(
        console.replace("/console", "/console/api/tasks"),
        params={"status": "waiting", "agent": "ExpenseReport"},
        headers={"authorization": f"Bearer {token}"},
        timeout=30,
    ).json()
    [hotel] = [task for task, who in up.state["waiting"].items() if who == "travel-manager"]
    assert hotel.removeprefix("ExpenseReport/") in [row["task_id"] for row in waiting["tasks"]]
    assert httpx.get(restate_ui, timeout=10).status_code == 200
    # `up` again: the same stack, not a second one.
    again = run("up", up.up_dir)
    assert again.returncode == 0 and "already up" in again.stdout
    assert [p["pid"] for p in json.loads((up.up_dir / "stack.json").read_text())["processes"]] == up.pids


def test_a_shell_that_sources_the_env_file_finds_the_tools_and_the_stack(up: Up, tmp_path: Path) -> None:
    done = shell(
        up.up_dir,
        "agentctl pending --approver travel-manager --json\nrestate deployments list >/dev/null\necho ok",
        cwd=tmp_path,  # anywhere: not the checkout
    )
    assert done.returncode == 0, done.stdout + done.stderr
    listed, ok = done.stdout.strip().splitlines()
    assert ok == "ok"
    [hotel] = [task for task, who in up.state["waiting"].items() if who == "travel-manager"]
    assert any(row["task_id"] == hotel.removeprefix("ExpenseReport/") for row in json.loads(listed))


def readme_blocks() -> list[tuple[str, str | None, str]]:
    """(first line, why skipped or None, code) of every `sh` block of the README."""
    text = README.read_text()
    blocks = [
        (match["code"].splitlines()[0], match["why"], match["code"]) for match in MARKED_BLOCK.finditer(text)
    ]
    assert len(blocks) == len(ANY_BLOCK.findall(text)), "an `sh` block of the README has no readme marker"
    return blocks


def test_every_readme_example_is_run_or_says_why_not() -> None:
    blocks = readme_blocks()
    assert sum(why is None for _, why, _ in blocks) >= 4
    assert all(why for _, why, _ in blocks if why is not None)


def test_every_readme_example_runs_as_written(up: Up) -> None:
    """Side by side (each is independent: its own task ids), each in a shell of its own."""
    examples = [code for _, why, code in readme_blocks() if why is None]
    with ThreadPoolExecutor(max_workers=len(examples)) as pool:
        done = list(pool.map(lambda code: shell(up.up_dir, code, cwd=ROOT), examples))
    failed = [
        f"--- example: {code.splitlines()[0]}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        for code, result in zip(examples, done, strict=True)
        if result.returncode != 0 or "Traceback" in result.stderr
    ]
    assert not failed, "\n".join(failed)


def test_down_stops_exactly_what_up_started(up: Up) -> None:
    stopped = run("down", up.up_dir)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "Stopped agent service" in stopped.stdout and "restate-server" in stopped.stdout

    def gone() -> bool:
        return not any(
            Path(f"/proc/{pid}/cmdline").exists() and Path(f"/proc/{pid}/cmdline").read_bytes()
            for pid in up.pids
        )

    wait_until(gone, timeout=30, what="the stack's processes to end")
    assert "Nothing to stop" in run("down", up.up_dir).stdout
