"""`make up`: the whole stack left running to explore (the console, Restate's UI, agentctl, the
README's examples), with sample tasks waiting for a decision; `make down` stops it.

`up` starts restate-server, the tool service and the agent service on free loopback ports under
`var/up/` (development secrets, SQLite, the offline model), each in a session of its own so it
outlives the command. It seeds the sample expenses and starts a report on each and one generic
task, issues approver credentials, and writes:

* `var/up/stack.json`: each process's PID and command line (what `down` stops: a PID whose
  command line is no longer the recorded one belongs to someone else and is left alone);
* `var/up/env`: the exports an operator's shell needs (`source var/up/env`): the stack's
  addresses, its development secrets, its database, the credentials, and `agentctl` and
  `restate` on the PATH;
* `var/up/receipt.png` (`$RECEIPT_FILE`): a receipt to submit by hand, dated `$RECEIPT_DATE`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path

import httpx
from pydantic import BaseModel

from deploy.local import ROOT, Stack, StackError, wait_until
from tools.domains.expense.receipts import render_receipt
from tools.domains.expense.seed import SAMPLES, days_ago, seed_expenses

# Where it lives: var/up in the checkout (UP_DIR moves it, e.g. for the tests of `make up`).
UP_DIR = Path(os.environ.get("UP_DIR") or ROOT / "var/up").resolve()
STATE_FILE = UP_DIR / "stack.json"
ENV_FILE = UP_DIR / "env"
# A receipt to submit by hand (the README's example): the hotel stay, dated yesterday, since a
# claim may be at most so many days old; its date is exported as RECEIPT_DATE.
RECEIPT_FILE = UP_DIR / "receipt.png"
STOP_SECONDS = 15.0
# Who signs in where: the approvers the sample tasks wait for.
APPROVERS = ("travel-manager", "ops-lead")


class Recorded(BaseModel):
    name: str
    pid: int
    argv: list[str]


class UpState(BaseModel):
    processes: list[Recorded]
    console_url: str
    inbox_url: str
    restate_ui_url: str
    credentials: dict[str, str]
    waiting: dict[str, str]


def shown(path: Path) -> str:
    """A path as the reader can use it from the checkout."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _ours(process: Recorded) -> bool:
    """Still the process `up` started: alive, with the command line it was started with."""
    return _cmdline(process.pid) == process.argv


def read_state() -> UpState | None:
    try:
        return UpState.model_validate_json(STATE_FILE.read_text())
    except (OSError, ValueError):
        return None


def up() -> int:
    state = read_state()
    if state is not None and all(_ours(process) for process in state.processes):
        say("The stack is already up (make down stops it).")
        explain(state)
        return 0
    if state is not None:
        say("A stack started earlier is partly gone; stopping what is left of it first.")
        stop(state)
    shutil.rmtree(UP_DIR, ignore_errors=True)
    say("Starting restate-server, the tool service and the agent service (SQLite, offline model)...")
    stack = Stack(workdir=UP_DIR, database_url=f"sqlite:///{UP_DIR / 'agents.db'}", detached=True)
    try:
        stack.start()
    except StackError as exc:
        say(f"The stack did not start: {str(exc).splitlines()[0]} (logs in {UP_DIR / 'logs'})")
        return 1
    recorded = [
        Recorded(name=process.name, pid=process.pid, argv=process.argv)
        for process in (stack.restate, stack.tools, stack.app)
        if process is not None
    ]
    try:
        waiting = start_samples(stack)
        credentials = {name: stack.approver_credential(name) for name in APPROVERS}
    except (StackError, httpx.HTTPError, TimeoutError) as exc:
        say(f"The sample tasks did not start: {exc}; stopping the stack.")
        stack.stop()
        return 1
    state = UpState(
        processes=recorded,
        console_url=f"{stack.approvals_url}/console",
        inbox_url=f"{stack.approvals_url}/inbox",
        restate_ui_url=f"{stack.admin_url}/ui/",
        credentials=credentials,
        waiting=waiting,
    )
    STATE_FILE.write_text(state.model_dump_json(indent=2))
    write_env(stack, credentials, write_receipt())
    explain(state)
    return 0


def start_samples(stack: Stack) -> dict[str, str]:
    """The sample expenses, a report on each, and one generic task; what waits for whom."""
    with httpx.Client(base_url=stack.tools_url, timeout=60, headers=stack.expenses_auth) as client:
        expenses = seed_expenses(client)
    reports = {}
    for expense in expenses:
        task_id = f"report-{expense.expense_id}"
        stack.send("ExpenseReport", task_id, "run", {"expense_id": expense.expense_id})
        reports[expense.label] = task_id
    generic = f"ticket-{uuid.uuid4().hex[:8]}"
    stack.send(
        "AgentTask",
        generic,
        "run",
        {"user_id": "u-1", "task": "Open a ticket: the office VPN is broken, and notify me when it is filed"},
    )
    waiting = {"ExpenseReport/" + reports["hotel-stay"]: "travel-manager", "AgentTask/" + generic: "ops-lead"}
    for target in waiting:
        agent, task_id = target.split("/", 1)

        def asked(agent: str = agent, task_id: str = task_id) -> bool:
            pending = stack.status(agent, task_id).get("pending_approval") or {}
            return bool(pending.get("approval_ticket_id"))

        wait_until(asked, timeout=90, interval=0.2, what=f"{target} to wait for its approver")
    return waiting


def write_receipt() -> str:
    """The hotel stay's receipt, dated yesterday, as a file; returns its date."""
    hotel = next(sample for sample in SAMPLES if sample.label == "hotel-stay")
    date = days_ago(1)
    RECEIPT_FILE.write_bytes(
        render_receipt(hotel.merchant, date, list(hotel.items), hotel.tax_rate, address=hotel.address)
    )
    return date.isoformat()


def write_env(stack: Stack, credentials: dict[str, str], receipt_date: str) -> None:
    from app.settings import DEV_OPERATOR_TOKEN, DEV_WEBHOOK_SECRET
    from tools.service.settings import DEV_EXPENSES_API_TOKEN, DEV_TOOLS_API_TOKEN

    exports = {
        "ENV": "development",
        "RESTATE_INGRESS_URL": stack.ingress_url,
        "RESTATE_ADMIN_URL": stack.admin_url,
        "APPROVALS_URL": stack.approvals_url,
        "TOOLS_URL": stack.tools_url,
        "DATABASE_URL": stack.database_url,
        # The development values the stack runs with (ENV=development); production refuses them.
        "APPROVAL_WEBHOOK_SECRET": DEV_WEBHOOK_SECRET,
        "OPERATOR_TOKEN": DEV_OPERATOR_TOKEN,
        "TOOLS_API_TOKEN": DEV_TOOLS_API_TOKEN,
        "EXPENSES_API_TOKEN": DEV_EXPENSES_API_TOKEN,
        **{f"APPROVER_{name.upper().replace('-', '_')}": token for name, token in credentials.items()},
        "RECEIPT_FILE": str(RECEIPT_FILE),
        "RECEIPT_DATE": receipt_date,
    }
    lines = [f"# The stack `make up` started: `source {shown(ENV_FILE)}` (make down stops it)."]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in exports.items()]
    bins = f"{ROOT / '.venv/bin'}:{ROOT / 'node_modules/.bin'}"
    lines.append(f'export PATH={shlex.quote(bins)}:"$PATH"')
    ENV_FILE.write_text("\n".join(lines) + "\n")


def explain(state: UpState) -> None:
    say("\nThe stack is up, with sample tasks waiting for a decision:")
    for target, approver in state.waiting.items():
        say(f"  {target}  waits for {approver}")
    say(f"\n  Console:       {state.console_url}")
    for name, token in state.credentials.items():
        say(f"    sign in as {name:<15} {token}")
    say(f"  Inbox:         {state.inbox_url} (the same sign-in)")
    say(f"  Restate UI:    {state.restate_ui_url}")
    say(f"  Your shell:    source {shown(ENV_FILE)}   (then: agentctl pending, agentctl list)")
    say(f"  Logs:          {shown(UP_DIR / 'logs')}")
    say("  Stop it:       make down")


def stop(state: UpState) -> list[str]:
    """SIGTERM every recorded process that is still ours at once (each stops on its own; none
    needs another to), then SIGKILL what outlives the grace."""
    running = [process for process in reversed(state.processes) if _ours(process)]
    for process in running:
        os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while any(_ours(process) for process in running) and time.monotonic() < deadline:
        time.sleep(0.1)
    for process in running:
        if _ours(process):
            os.kill(process.pid, signal.SIGKILL)
    return [f"{process.name} (pid {process.pid})" for process in running]


def down() -> int:
    state = read_state()
    if state is None:
        say(f"Nothing to stop: `make up` has not started a stack (no {shown(STATE_FILE)}).")
        return 0
    stopped = stop(state)
    STATE_FILE.unlink(missing_ok=True)
    say("Stopped " + (", ".join(stopped) if stopped else "nothing: its processes had already ended") + ".")
    say(f"Its data stays in {shown(UP_DIR)} until the next `make up`.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.up", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"], nargs="?", default="up")
    args = parser.parse_args(argv)
    return up() if args.action == "up" else down()


if __name__ == "__main__":
    sys.exit(main())
