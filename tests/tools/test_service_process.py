"""`python -m tools` as a real process: a request in flight, its duplicate, its replay, SIGTERM;
and `python -m tools.domains.expense.seed` against it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.tools.calls import TICKET
from tools.service.settings import DEV_EXPENSES_API_TOKEN, DEV_TOOLS_API_TOKEN

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STARTUP_DEADLINE_SECONDS = 30
LATENCY_MS = 1500
TOOLS_AUTH = {"authorization": f"Bearer {DEV_TOOLS_API_TOKEN}"}
EXPENSES_AUTH = {"authorization": f"Bearer {DEV_EXPENSES_API_TOKEN}"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until(
    condition: Callable[[], Any],
    deadline_seconds: float,
    what: str,
    process: subprocess.Popen[bytes] | None = None,
) -> Any:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the service exited with {process.returncode} while waiting for {what}")
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {deadline_seconds}s waiting for {what}")


def _healthy(http: httpx.Client) -> bool:
    try:
        return http.get("/health").status_code == 200
    except httpx.TransportError:
        return False


def test_the_service_process_serves_idempotently_and_stops_on_sigterm(tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "ENV": "development",
        "TOOLS_HOST": "127.0.0.1",
        "TOOLS_PORT": str(port),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'tools.service.db'}",
        "TOOLS_SIMULATED_LATENCY_MS": str(LATENCY_MS),
        "IDEMPOTENCY_LEASE_SECONDS": "30",
    }
    log_path = tmp_path / "tools.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tools"], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, headers=TOOLS_AUTH) as http:
            _wait_until(lambda: _healthy(http), STARTUP_DEADLINE_SECONDS, "/health", process)
            assert f"tools service listening on http://127.0.0.1:{port}" in log_path.read_text()

            key = "task-42:EXECUTE:0"
            headers = {"Idempotency-Key": key}
            first: dict[str, httpx.Response] = {}
            caller = threading.Thread(
                target=lambda: first.update(
                    response=http.post("/tools/create_ticket", json=TICKET, headers=headers)
                )
            )
            caller.start()
            try:
                _wait_until(
                    lambda: http.get(f"/idempotency/{key}").json().get("status") == "in_flight",
                    5,
                    "the first call to be in flight",
                    process,
                )
                duplicate = http.post("/tools/create_ticket", json=TICKET, headers=headers)
            finally:
                caller.join(timeout=10)

            assert duplicate.status_code == 409
            assert int(duplicate.headers["retry-after"]) >= 1
            assert first["response"].status_code == 200
            replay = http.post("/tools/create_ticket", json=TICKET, headers=headers)
            assert replay.status_code == 200
            assert replay.headers["idempotent-replayed"] == "true"
            assert replay.content == first["response"].content
            assert len(http.get("/tickets").json()["tickets"]) == 1

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_the_seed_command_submits_the_demo_expenses_through_the_running_service(tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "ENV": "development",
        "TOOLS_HOST": "127.0.0.1",
        "TOOLS_PORT": str(port),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'tools.service.db'}",
    }
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "tools.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tools"], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        with httpx.Client(base_url=url, timeout=10, headers=EXPENSES_AUTH) as http:
            _wait_until(lambda: _healthy(http), STARTUP_DEADLINE_SECONDS, "/health", process)

            runs = [
                subprocess.run(
                    [sys.executable, "-m", "tools.domains.expense.seed", "--url", url],
                    cwd=PROJECT_ROOT,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                for _ in range(2)
            ]

            assert [run.returncode for run in runs] == [0, 0], [run.stderr for run in runs]
            lines = [json.loads(line) for line in runs[0].stdout.splitlines()]
            assert [(line["label"], line["amount"], line["merchant"]) for line in lines] == [
                ("small-lunch", "18.50", "Blue Bottle Cafe"),
                ("hotel-stay", "420.00", "Hilton Garden Inn"),
                ("conference-flight", "980.00", "Lufthansa"),
                ("mismatch-taxi", "94.20", "Yellow Cab Co"),
            ]
            assert all(set(line) == {"expense_id", "label", "amount", "merchant"} for line in lines)
            # Seeding again replays the same submissions: same ids, nothing new.
            assert runs[1].stdout == runs[0].stdout
            stored = http.get("/expenses").json()["expenses"]
            assert sorted(expense["expense_id"] for expense in stored) == sorted(
                line["expense_id"] for line in lines
            )
            receipt = http.get(stored[0]["receipt_url"])
            assert receipt.headers["content-type"] == "image/png"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def test_the_seed_command_reports_an_unreachable_service(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.domains.expense.seed",
            "--url",
            f"http://127.0.0.1:{_free_port()}",
            "--timeout",
            "2",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert run.returncode == 1
    assert run.stdout == ""
    assert "seeding http://127.0.0.1:" in run.stderr and "failed" in run.stderr
