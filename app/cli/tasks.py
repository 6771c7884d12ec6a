"""agentctl commands about tasks: start, status, watch, diagram."""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

import httpx

from app.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    UNREACHABLE_PATIENCE_SECONDS,
    CliError,
    Config,
    _message,
    _request,
    admin_query,
    fetch_status,
    http_client,
    not_found,
    print_view,
    refused,
    require_status,
    sql_literal,
    task_url,
    transition_line,
    unreachable,
)

# How long `start` waits to see whether Restate's first attempt of the run refused the input.
START_SETTLE_SECONDS = 2.0


def start_body(args: argparse.Namespace) -> dict[str, Any]:
    """The task's input: `--input JSON` for any agent, or the two shipped agents' own flags."""
    agent = args.agent
    flags = bool(args.user_id or args.task or args.expense_id)
    if args.input is not None:
        if flags:
            raise CliError(EXIT_USAGE, "give the input either as --input or as flags, not both")
        try:
            body = json.loads(args.input)
        except ValueError as exc:
            raise CliError(EXIT_USAGE, f"--input is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise CliError(EXIT_USAGE, "--input must be a JSON object")
        return body
    if agent == "AgentTask":
        if not (args.user_id and args.task) or args.expense_id:
            raise CliError(EXIT_USAGE, "start AgentTask needs --user-id and --task (and no --expense-id)")
        return {"user_id": args.user_id, "task": args.task}
    if agent == "ExpenseReport":
        if not args.expense_id or args.user_id or args.task:
            raise CliError(EXIT_USAGE, "start ExpenseReport needs --expense-id (and no --user-id or --task)")
        return {"expense_id": args.expense_id}
    raise CliError(EXIT_USAGE, f"start {agent} needs --input JSON")


def refuse_invalid_input(agent: str, body: dict[str, Any]) -> None:
    """Validate the input here, before anything is sent, when this process knows the agent.

    A refused first `run` would otherwise be Restate's stored outcome for its Idempotency-Key.
    An agent only the servers know (their AGENT_MODULES) is left to them.
    """
    from pydantic import ValidationError

    from app.agents import registered_agents

    declared = registered_agents().get(agent)
    if declared is None:
        return
    try:
        declared.input_type.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
        )
        raise refused(f"start {agent}: invalid input: {problems}") from None


def start_key(agent: str, task_id: str, body: dict[str, Any]) -> str:
    """The send's Idempotency-Key: the same for the same input (a retry never starts twice), another
    for corrected input (a refused first start never holds the task id)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return f"agentctl-start-{agent}-{task_id}-{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"


def cmd_start(config: Config, args: argparse.Namespace) -> int:
    agent, task_id = args.agent, args.task_id
    body = start_body(args)
    refuse_invalid_input(agent, body)
    key = start_key(agent, task_id, body)
    with http_client() as client:
        response = _request(
            client,
            "POST",
            task_url(config, agent, task_id, "run/send"),
            content=json.dumps(body).encode(),
            headers={"content-type": "application/json", "idempotency-key": key},
        )
        if response.status_code == 404:
            raise not_found(f"Restate does not know {agent}: {_message(response)}")
        if response.status_code in (400, 409, 422):
            raise refused(f"start {agent}/{task_id} refused: {_message(response)}")
        if response.status_code not in (200, 202):
            raise unreachable(
                f"start {agent}/{task_id}: Restate answered {response.status_code}: {_message(response)}"
            )
        answer = response.json()
        invocation_id = str(answer.get("invocationId"))
        status = str(answer.get("status", "Accepted"))
        if config.json:
            config.emit(
                {
                    "agent": agent,
                    "task_id": task_id,
                    "invocation_id": invocation_id,
                    "status": status,
                    "idempotency_key": key,
                }
            )
        else:
            config.line(invocation_id)
            again = (
                " (already started earlier: nothing started twice)" if status == "PreviouslyAccepted" else ""
            )
            config.note(f"{agent}/{task_id}: {status}{again}")
        if not args.wait:
            # Report the real outcome: the run refuses bad input at once; wait briefly for that.
            return settled_start(client, config, invocation_id, agent, task_id)
        code = follow(
            client,
            config,
            agent,
            task_id,
            timeout=args.timeout,
            interval=args.interval,
            grace=None,
            invocation_id=invocation_id,
        )
        if code in (EXIT_OK, EXIT_FAILED):
            check_invocation_refused(client, config, invocation_id, agent, task_id)
        return code


def invocation_outcome(client: httpx.Client, config: Config, invocation_id: str) -> dict[str, Any] | None:
    rows = admin_query(
        client,
        config,
        "select status, completion_result, completion_failure from sys_invocation "
        f"where id = {sql_literal(invocation_id)}",
    )
    return rows[0] if rows else None


def settled_start(client: httpx.Client, config: Config, invocation_id: str, agent: str, task_id: str) -> int:
    """After a send: exit 4 if the run was refused, else 0 once it is under way (or still queued)."""
    deadline = time.monotonic() + START_SETTLE_SECONDS
    seen = False
    while True:
        row = invocation_outcome(client, config, invocation_id)
        if row is None and seen:
            # Gone once seen: only a refused start is purged (app/runtime/refusals.py).
            raise refused(f"run of {agent}/{task_id} refused (its outcome is already forgotten)")
        seen = seen or row is not None
        status = (row or {}).get("status")
        if status == "completed":
            check_invocation_refused(client, config, invocation_id, agent, task_id)
            return EXIT_OK
        if status in ("suspended", "paused") or time.monotonic() >= deadline:
            return EXIT_OK
        time.sleep(0.1)


def check_invocation_refused(
    client: httpx.Client, config: Config, invocation_id: str, agent: str, task_id: str
) -> None:
    """Raise `refused` when our `run` invocation failed (bad input, or the id names another task)."""
    row = invocation_outcome(client, config, invocation_id)
    if row and row.get("status") == "completed" and row.get("completion_result") == "failure":
        raise refused(f"run of {agent}/{task_id} refused: {row.get('completion_failure')}")


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    with http_client() as client:
        view = require_status(client, config, args.agent, args.task_id)
    if config.json:
        config.emit(view)
    else:
        print_view(config, view)
    return EXIT_OK


def cmd_watch(config: Config, args: argparse.Namespace) -> int:
    with http_client() as client:
        return follow(
            client,
            config,
            args.agent,
            args.task_id,
            timeout=args.timeout,
            interval=args.interval,
            grace=args.start_grace,
            until_waiting=args.until_waiting,
        )


class Progress:
    """The "waiting for approval" line: rewritten in place on a terminal, printed now and then otherwise."""

    EVERY_SECONDS = 30.0

    def __init__(self, config: Config) -> None:
        self.config = config
        self.tty = config.err.isatty()
        self.since: float | None = None
        self.last_note = 0.0
        self.open_line = False

    def waiting(self, pending: Mapping[str, Any]) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
            self.last_note = 0.0
            if self.config.json:
                self.config.emit({"type": "waiting", "pending_approval": pending})
        waited = now - self.since
        text = (
            f"waiting for approval at {pending.get('state')} by {', '.join(pending.get('approvers') or [])} "
            f"(deadline {pending.get('deadline')}, hash {str(pending.get('approval_hash'))[:12]}…): "
            f"{waited:.0f}s"
        )
        if self.tty:
            self.config.err.write("\r\x1b[K" + text)
            self.config.err.flush()
            self.open_line = True
        elif self.last_note == 0.0 or now - self.last_note >= self.EVERY_SECONDS:
            self.config.note(text)
            self.last_note = now

    def done(self) -> None:
        self.since = None
        if self.open_line:
            self.config.err.write("\n")
            self.config.err.flush()
            self.open_line = False


def follow(
    client: httpx.Client,
    config: Config,
    agent: str,
    task_id: str,
    *,
    timeout: float,
    interval: float,
    grace: float | None,
    invocation_id: str | None = None,
    until_waiting: str | None = None,
) -> int:
    """Poll the task's status, print each new transition, end at a terminal state or the timeout
    (with `until_waiting`, also once the task waits for an approval that has been asked for, at
    that gate if one is named: a gate just decided still shows until the task moves on).

    A task not there yet is waited for `grace` seconds (None: as long as its `run` invocation,
    when known, has not failed), so a watch started right after `start` does not miss it."""
    started = time.monotonic()
    deadline = started + timeout if timeout > 0 else None
    printed = 0
    seen = False
    last_state = "not started"
    unreachable_since: float | None = None
    progress = Progress(config)
    try:
        while True:
            try:
                view = fetch_status(client, config, agent, task_id)
                unreachable_since = None
            except CliError as exc:
                if exc.code != EXIT_UNREACHABLE:
                    raise
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > UNREACHABLE_PATIENCE_SECONDS:
                    raise
                view = {}
            if view is None:
                if seen:
                    raise not_found(f"{agent}/{task_id} disappeared")
                if invocation_id is not None:
                    check_invocation_refused(client, config, invocation_id, agent, task_id)
                elif grace is not None and time.monotonic() - started > grace:
                    raise not_found(f"no {agent} task {task_id!r} (waited {grace:g}s for it to appear)")
            elif view:
                seen = True
                last_state = str(view.get("state"))
                history = view.get("history") or []
                if len(history) > printed:
                    progress.done()
                for entry in history[printed:]:
                    if config.json:
                        config.emit({"type": "transition", **entry})
                    else:
                        config.line(transition_line(entry))
                printed = max(printed, len(history))
                if view.get("terminal"):
                    progress.done()
                    return finish(config, view)
                pending = view.get("pending_approval")
                if (
                    isinstance(pending, Mapping)
                    and until_waiting is not None
                    and pending.get("approval_ticket_id")
                    and until_waiting in ("", pending.get("state"))
                ):
                    progress.done()
                    return waiting_now(config, pending)
                if isinstance(pending, Mapping):
                    progress.waiting(pending)
                else:
                    progress.done()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                progress.done()
                raise CliError(
                    EXIT_TIMEOUT, f"timed out after {timeout:g}s; {agent}/{task_id} is at {last_state}"
                )
            pause = interval if deadline is None else min(interval, deadline - now)
            time.sleep(max(pause, 0.0))
    finally:
        progress.done()


def waiting_now(config: Config, pending: Mapping[str, Any]) -> int:
    if config.json:
        config.emit({"type": "waiting", "pending_approval": pending})
    else:
        config.line(
            f"waiting for approval at {pending.get('state')} by {', '.join(pending.get('approvers') or [])} "
            f"until {pending.get('deadline')}, hash {pending.get('approval_hash')}"
        )
    return EXIT_OK


def finish(config: Config, view: Mapping[str, Any]) -> int:
    state = view.get("state")
    failed = state != "COMPLETE"
    if config.json:
        config.emit({"type": "end", "state": state, "result": view.get("result"), "error": view.get("error")})
    else:
        error = view.get("error")
        if failed and isinstance(error, Mapping):
            config.line(f"{state}: {error.get('code')} in {error.get('state')}: {error.get('message')}")
        elif view.get("result") is not None:
            config.line(f"{state}: {json.dumps(view['result'], sort_keys=True)}")
        else:
            config.line(str(state))
    return EXIT_FAILED if failed else EXIT_OK


def cmd_diagram(config: Config, args: argparse.Namespace) -> int:
    from app.runtime.machine import to_mermaid
    from app.service import machines

    known = machines()
    machine = known.get(args.name)
    if machine is None:
        raise not_found(f"unknown machine {args.name!r}; known: {', '.join(sorted(known))}")
    if config.json:
        config.emit({"name": args.name, "mermaid": to_mermaid(machine)})
    else:
        config.out.write(to_mermaid(machine))
    return EXIT_OK
