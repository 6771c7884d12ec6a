"""agentctl: the operator's tool for durable agents (start, status, watch, approve, timeline, journal...).

Talks to the Restate ingress and admin API, the approvals webhook and the event log database.
Human text by default, `--json` for scripts; errors go to stderr as one line; the exit code says
what happened (see EXIT_CODES, printed in `agentctl --help`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import httpx
from sqlalchemy.exc import SQLAlchemyError

from app.approvals.signature import signed_headers
from app.audit.event_log import Event, EventStore, TaskSnapshot, read_archive, store_for
from app.settings import DEFAULT_DATABASE_URL

AGENTS = ("AgentTask", "ExpenseReport")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_REFUSED = 4
EXIT_UNREACHABLE = 5
EXIT_BROKEN = 6
EXIT_TIMEOUT = 7

EXIT_CODES = {
    EXIT_OK: "ok",
    EXIT_FAILED: "the task ended FAILED (watch, start --wait)",
    EXIT_USAGE: "usage or configuration error",
    EXIT_NOT_FOUND: "not found (unknown task, invocation or machine)",
    EXIT_REFUSED: "refused (a decision answered 409/403/422, or the task's input was rejected)",
    EXIT_UNREACHABLE: "a server is unreachable or answered an unexpected error",
    EXIT_BROKEN: "verify found a broken chain",
    EXIT_TIMEOUT: "timed out (watch, start --wait)",
}

HTTP_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# How long a watch keeps polling through an unreachable server before giving up (exit 5).
UNREACHABLE_PATIENCE_SECONDS = 30.0


class CliError(Exception):
    """A failure the user should see as one line on stderr, with the exit code it maps to."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def not_found(message: str) -> CliError:
    return CliError(EXIT_NOT_FOUND, message)


def refused(message: str) -> CliError:
    return CliError(EXIT_REFUSED, message)


def unreachable(message: str) -> CliError:
    return CliError(EXIT_UNREACHABLE, message)


# --- pure helpers (unit-tested) ----------------------------------------------------------------

_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `30d`, `12h`, `15m`, `0s` or `1d12h`; ValueError otherwise."""
    compact = text.strip().lower()
    if not compact or _DURATION_PART.sub("", compact):
        raise ValueError(
            f"invalid duration {text!r}: use a number and a unit (s, m, h, d, w), e.g. 30d or 1h30m"
        )
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(compact))


def sql_literal(value: str) -> str:
    """A SQL string literal: quoted, with single quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def empty_view(agent: str | None = None, task_id: str | None = None) -> dict[str, Any]:
    """The state of a task before its first event (the shape of the engine's TaskView)."""
    return {
        "task_id": task_id,
        "agent": agent,
        "state": None,
        "terminal": False,
        "model": None,
        "history": [],
        "pending_approval": None,
        "approvals": [],
        "result": None,
        "error": None,
        "data": {},
    }


def apply_event(view: dict[str, Any], item: Event, terminal_states: frozenset[str]) -> dict[str, Any]:
    """The view after one event: its state, the data it produced, its outcome, one more history entry."""
    payload = item.payload
    updated = {**view, "data": dict(view.get("data") or {})}
    updated["task_id"] = item.task_id
    updated["agent"] = item.agent
    if item.kind == "created":
        # The task's data starts as its input; the model is recorded once, at creation.
        input_fields = payload.get("input")
        if isinstance(input_fields, Mapping):
            updated["data"].update(input_fields)
        if payload.get("model") is not None:
            updated["model"] = payload["model"]
    produced = payload.get("produced")
    if isinstance(produced, Mapping):
        updated["data"].update(produced)
    if payload.get("result") is not None:
        updated["result"] = payload["result"]
    if payload.get("error") is not None:
        updated["error"] = payload["error"]
    if payload.get("approval") is not None:
        updated["approvals"] = [*(view.get("approvals") or []), payload["approval"]]
    pending = view.get("pending_approval")
    if isinstance(pending, Mapping) and pending.get("state") == item.from_state:
        updated["pending_approval"] = None  # the gate was left
    note = payload.get("note")
    if note is None and item.kind == "created":
        note = "created"
    entry = {"from_state": item.from_state, "to_state": item.to_state, "at": iso(item.at), "note": note}
    updated["history"] = [*(view.get("history") or []), entry]
    updated["state"] = item.to_state
    updated["terminal"] = item.to_state in terminal_states
    return updated


def state_at(
    events: Sequence[Event],
    snapshot: TaskSnapshot | None,
    n: int,
    terminal_states: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The task's view as of event `n`: from the snapshot (if its seq <= n) or an empty state, then
    every later event up to `n` applied in order. LookupError when event `n` is unknown."""
    if n < 1:
        raise LookupError(f"event numbers start at 1, not {n}")
    ordered = sorted(events, key=lambda e: e.seq)
    known = {e.seq for e in ordered}
    if snapshot is not None and snapshot.seq <= n:
        view: dict[str, Any] = json.loads(snapshot.view)
        start = snapshot.seq
    else:
        first = ordered[0] if ordered else None
        view = empty_view(first.agent if first else None, first.task_id if first else None)
        start = 0
    if n != start and n not in known:
        last = max(known | {start})
        raise LookupError(f"no event {n}: the task has {last} event(s)")
    for item in ordered:
        if start < item.seq <= n:
            view = apply_event(view, item, terminal_states)
    view["seq"] = n
    return view


def summarize_value(name: str, value: Any, width: int = 40) -> str:
    if isinstance(value, Mapping):
        keys = ",".join(sorted(str(k) for k in value))
        return f"{name}{{{_shorten(keys, width)}}}"
    if isinstance(value, list):
        return f"{name}[{len(value)}]"
    if isinstance(value, str):
        return f"{name}={_shorten(value, width)!r}"
    return f"{name}={value}"


def summarize_event(item: Event) -> str:
    """What an event produced, in one short line: input, data fields, result, error, approval."""
    payload = item.payload
    parts: list[str] = []
    if item.kind == "created":
        fields = payload.get("input") or {}
        if isinstance(fields, Mapping) and fields:
            parts.append("input " + ", ".join(summarize_value(k, v) for k, v in sorted(fields.items())))
        if payload.get("model"):
            parts.append(f"model {payload['model']}")
    produced = payload.get("produced") or {}
    if isinstance(produced, Mapping) and produced:
        parts.append("produced " + ", ".join(summarize_value(k, v) for k, v in sorted(produced.items())))
    if payload.get("result") is not None:
        parts.append(summarize_value("result", payload["result"]))
    error = payload.get("error")
    if isinstance(error, Mapping):
        parts.append(f"error {error.get('code')}: {_shorten(str(error.get('message')), 60)}")
    approval = payload.get("approval")
    if isinstance(approval, Mapping):
        who = f" by {approval.get('approver')}" if approval.get("approver") else ""
        parts.append(f"approval {approval.get('outcome')}{who}")
    return "; ".join(parts)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# --- configuration and I/O ---------------------------------------------------------------------


def default_approvals_url() -> str:
    explicit = os.environ.get("APPROVALS_URL")
    if explicit:
        return explicit
    return f"http://127.0.0.1:{os.environ.get('APPROVALS_PORT') or '9081'}"


@dataclass
class Config:
    ingress_url: str
    admin_url: str
    approvals_url: str
    database_url: str
    json: bool
    out: TextIO
    err: TextIO

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def emit(self, value: Any) -> None:
        """One JSON document on one line (JSON Lines when a command emits several)."""
        self.out.write(json.dumps(value, default=str) + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        """Progress and remarks: stderr, so stdout stays the command's output."""
        self.err.write(text + "\n")
        self.err.flush()


@contextmanager
def http_client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        yield client


def _request(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    try:
        return client.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        raise unreachable(f"cannot reach {url}: {exc or type(exc).__name__}") from None


def _message(response: httpx.Response) -> str:
    """The server's message: Restate's `{"message"}`, the webhook's `{"error": {"message"}}`, or text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, Mapping):
        inner = body.get("error")
        if isinstance(inner, Mapping) and inner.get("message"):
            return str(inner["message"])
        if body.get("message"):
            return str(body["message"])
    return response.text.strip()


def task_url(config: Config, agent: str, task_id: str, handler: str) -> str:
    return f"{config.ingress_url.rstrip('/')}/{agent}/{quote(task_id, safe='')}/{handler}"


def fetch_status(client: httpx.Client, config: Config, agent: str, task_id: str) -> dict[str, Any] | None:
    """The task's view from its shared `status` handler; None when there is no such task."""
    # A handler without input wants an empty body and no content type.
    response = _request(client, "POST", task_url(config, agent, task_id, "status"))
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise unreachable(
            f"status of {agent}/{task_id}: Restate answered {response.status_code}: {_message(response)}"
        )
    view: dict[str, Any] = response.json()
    return view


def require_status(client: httpx.Client, config: Config, agent: str, task_id: str) -> dict[str, Any]:
    view = fetch_status(client, config, agent, task_id)
    if view is None:
        raise not_found(f"no {agent} task {task_id!r}")
    return view


def admin_query(client: httpx.Client, config: Config, query: str) -> list[dict[str, Any]]:
    """Restate's introspection SQL through the admin API."""
    url = f"{config.admin_url.rstrip('/')}/query"
    response = _request(client, "POST", url, json={"query": query}, headers={"accept": "application/json"})
    if response.status_code != 200:
        raise unreachable(f"admin query failed: {response.status_code} {_message(response)}")
    rows: list[dict[str, Any]] = response.json().get("rows", [])
    return rows


def open_store(config: Config) -> EventStore:
    try:
        return store_for(config.database_url)
    except Exception as exc:  # a driver error, a bad URL: both mean "cannot use that database"
        raise unreachable(f"cannot open the event log at {_safe_url(config.database_url)}: {exc}") from None


def _safe_url(url: str) -> str:
    """The database URL without its password, fit for an error message."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def load_events(store: EventStore, agent: str, task_id: str) -> list[Event]:
    """A task's whole chain: its archived events (if archived) and the ones still in the database."""
    kept = store.events(agent, task_id)
    head = store.head(agent, task_id)
    if head is None:
        return kept
    try:
        archived = read_archive(Path(head.archive_file), agent, task_id)
    except OSError as exc:
        raise unreachable(f"cannot read the archive {head.archive_file}: {exc}") from None
    return [*archived, *kept]


# --- human output ------------------------------------------------------------------------------


def transition_line(entry: Mapping[str, Any]) -> str:
    source = entry.get("from_state") or "(start)"
    note = f"  {entry['note']}" if entry.get("note") else ""
    return f"{entry.get('at')}  {source} -> {entry.get('to_state')}{note}"


def print_view(config: Config, view: Mapping[str, Any]) -> None:
    terminal = " (terminal)" if view.get("terminal") else ""
    model = f", model {view['model']}" if view.get("model") else ""
    config.line(f"{view.get('agent')}/{view.get('task_id')}: {view.get('state')}{terminal}{model}")
    pending = view.get("pending_approval")
    if isinstance(pending, Mapping):
        config.line(f"pending approval at {pending.get('state')}: {pending.get('summary')}")
        config.line(f"  approvers: {', '.join(pending.get('approvers') or [])}")
        config.line(f"  deadline:  {pending.get('deadline')}")
        config.line(f"  hash:      {pending.get('approval_hash')}")
        if pending.get("details"):
            config.line(f"  details:   {json.dumps(pending['details'], sort_keys=True)}")
    for approval in view.get("approvals") or []:
        comment = f" ({approval.get('comment')})" if approval.get("comment") else ""
        who = f" by {approval.get('approver')}" if approval.get("approver") else ""
        config.line(
            f"approval at {approval.get('state')}: {approval.get('outcome')}{who}{comment} "
            f"at {approval.get('decided_at')}, hash {approval.get('approval_hash')}"
        )
    if view.get("result") is not None:
        config.line(f"result: {json.dumps(view['result'], sort_keys=True)}")
    error = view.get("error")
    if isinstance(error, Mapping):
        config.line(f"error: {error.get('code')} in {error.get('state')}: {error.get('message')}")
    history = view.get("history") or []
    config.line(f"history ({len(history)} transitions):")
    for entry in history:
        config.line("  " + transition_line(entry))


# --- commands ----------------------------------------------------------------------------------


def cmd_start(config: Config, args: argparse.Namespace) -> int:
    agent, task_id = args.agent, args.task_id
    if agent == "AgentTask":
        if not (args.user_id and args.task) or args.expense_id:
            raise CliError(EXIT_USAGE, "start AgentTask needs --user-id and --task (and no --expense-id)")
        body: dict[str, Any] = {"user_id": args.user_id, "task": args.task}
    else:
        if not args.expense_id or args.user_id or args.task:
            raise CliError(EXIT_USAGE, "start ExpenseReport needs --expense-id (and no --user-id or --task)")
        body = {"expense_id": args.expense_id}
    key = f"agentctl-start-{agent}-{task_id}"
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
            return EXIT_OK
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
) -> int:
    """Poll the task's status, print each new transition, end at a terminal state or the timeout.

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


def webhook_secret() -> str:
    from pydantic import ValidationError

    from app.settings import MissingSecret, get_settings

    try:
        return get_settings().webhook_secret
    except MissingSecret as exc:
        raise CliError(EXIT_USAGE, f"invalid configuration: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]["msg"] if exc.errors() else str(exc)
        raise CliError(EXIT_USAGE, f"invalid configuration: {first}") from None


def cmd_decide(config: Config, args: argparse.Namespace) -> int:
    decision = "approve" if args.command == "approve" else "reject"
    agent, task_id = args.agent, args.task_id
    with http_client() as client:
        approval_hash = args.hash
        if approval_hash is None:
            view = require_status(client, config, agent, task_id)
            pending = view.get("pending_approval")
            if not isinstance(pending, Mapping):
                raise refused(f"{agent}/{task_id} is not waiting for an approval (state {view.get('state')})")
            approval_hash = str(pending.get("approval_hash"))
        body = {
            "agent": agent,
            "task_id": task_id,
            "decision": decision,
            "approver": args.approver,
            "comment": args.comment,
            "approval_hash": approval_hash,
        }
        raw = json.dumps(body).encode()
        url = f"{config.approvals_url.rstrip('/')}/webhooks/approval"
        response = _request(
            client,
            "POST",
            url,
            content=raw,
            headers={"content-type": "application/json", **signed_headers(webhook_secret(), raw)},
        )
    if response.status_code == 200:
        if config.json:
            config.emit(response.json())
        else:
            config.line(f"{decision} by {args.approver} recorded for {agent}/{task_id}")
        return EXIT_OK
    if response.status_code in (403, 409, 422):
        raise refused(f"{decision} refused ({response.status_code}): {_message(response)}")
    if response.status_code == 401:
        raise unreachable(
            f"the approvals service refused the signature (401): APPROVAL_WEBHOOK_SECRET here differs "
            f"from the service's, or this machine's clock is off by minutes ({_message(response)})"
        )
    if response.status_code == 503 and "outcome_unknown" in response.text:
        raise unreachable(
            f"{decision}: the outcome is unknown (the decision may have been recorded); run the same "
            f"command again, it is idempotent and reports the outcome ({_message(response)})"
        )
    raise unreachable(
        f"{decision}: the approvals service answered {response.status_code}: {_message(response)}"
    )


def cmd_timeline(config: Config, args: argparse.Namespace) -> int:
    agent, task_id = args.agent, args.task_id
    store = open_store(config)
    events = load_events(store, agent, task_id)
    if not events:
        raise not_found(f"no events for {agent} task {task_id!r}")
    if args.at is not None:
        last = events[-1].seq
        if args.at > last:
            raise not_found(f"{agent}/{task_id} has {last} event(s); there is no event {args.at}")
        snapshot = store.latest_snapshot(agent, task_id, at_most=args.at)
        try:
            view = state_at(events, snapshot, args.at, terminal_states_of(agent))
        except LookupError as exc:
            raise not_found(f"{agent}/{task_id}: {exc}") from None
        if config.json:
            config.emit(view)
        else:
            at = next((e for e in events if e.seq == args.at), None)
            when = f" ({iso(at.at)})" if at is not None else ""
            config.line(f"as of event {args.at}{when}:")
            print_view(config, view)
            data = view.get("data") or {}
            if data:
                config.line("data:")
                for name, value in sorted(data.items()):
                    config.line(f"  {summarize_value(name, value, width=70)}")
        return EXIT_OK
    if config.json:
        config.emit([{**e.model_dump(mode="json"), "time": iso(e.at)} for e in events])
        return EXIT_OK
    for item in events:
        note = f"  {item.payload['note']}" if item.payload.get("note") else ""
        summary = summarize_event(item)
        tail = f"  | {summary}" if summary else ""
        source = item.from_state or "(start)"
        config.line(
            f"{item.seq:>3}  {iso(item.at)}  {item.kind:<10}  {source} -> {item.to_state}{note}{tail}"
        )
    return EXIT_OK


def terminal_states_of(agent: str) -> frozenset[str]:
    from app.service import machines

    machine = machines().get(agent)
    return machine.terminal if machine is not None else frozenset()


def cmd_journal(config: Config, args: argparse.Namespace) -> int:
    agent, task_id = args.agent, args.task_id
    with http_client() as client:
        invocations = admin_query(
            client,
            config,
            "select id, status, created_at, modified_at, retry_count, last_failure, last_failure_error_code "
            f"from sys_invocation where target_service_name = {sql_literal(agent)} "
            f"and target_service_key = {sql_literal(task_id)} and target_handler_name = 'run'",
        )
        if not invocations:
            raise not_found(f"no run invocation of {agent}/{task_id} in Restate")
        invocations.sort(key=lambda row: str(row.get("created_at") or ""))
        for row in invocations:
            row["entries"] = admin_query(
                client,
                config,
                "select index, entry_type, name, appended_at from sys_journal "
                f"where id = {sql_literal(str(row['id']))} order by index",
            )
    described: dict[str, str] = {}
    if args.describe:
        for row in invocations:
            described[str(row["id"])] = describe_invocation(config, str(row["id"]))
    if config.json:
        for row in invocations:
            if args.describe:
                row["describe"] = described[str(row["id"])]
        config.emit({"agent": agent, "task_id": task_id, "invocations": invocations})
        return EXIT_OK
    for row in invocations:
        config.line(f"invocation {row['id']}: {row.get('status')}, created {row.get('created_at')}")
        config.line(f"  modified {row.get('modified_at')}, retries {row.get('retry_count') or 0}")
        if row.get("last_failure"):
            code = f" [{row['last_failure_error_code']}]" if row.get("last_failure_error_code") else ""
            config.line(f"  last failure{code}: {row['last_failure']}")
        if not row["entries"]:
            config.line("  (no journal entries: not started yet, or purged after its retention)")
        for entry in row["entries"]:
            name = f" [{entry['name']}]" if entry.get("name") else ""
            config.line(f"  #{entry.get('index')} {entry.get('entry_type')}{name}")
        if args.describe:
            config.line(described[str(row["id"])].rstrip("\n"))
    return EXIT_OK


# Where `npm ci` puts the CLI in a checkout (make install); an installed agentctl runs from
# anywhere, so it is looked for under the working directory, never next to this file.
NPM_RESTATE_CLI = Path("node_modules/@restatedev/restate-linux-x64/bin/restate")


def restate_cli() -> Path:
    """The Restate CLI: $AGENTCTL_RESTATE_CLI, else the npm-installed binary of the checkout
    agentctl runs in, else `restate` on the PATH."""
    in_checkout = NPM_RESTATE_CLI.resolve()
    explicit = os.environ.get("AGENTCTL_RESTATE_CLI")
    if explicit:
        return Path(explicit)
    if in_checkout.exists():
        return in_checkout
    on_path = shutil.which("restate")
    if on_path:
        return Path(on_path)
    raise unreachable(
        f"the Restate CLI is missing at {in_checkout} (run `make install`) and not on the PATH; "
        "or set AGENTCTL_RESTATE_CLI"
    )


def describe_invocation(config: Config, invocation_id: str) -> str:
    """`restate invocations describe <id>` against the same server."""
    binary = restate_cli()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RESTATE_")}
    env.update({"RESTATE_ADMIN_URL": config.admin_url, "RESTATE_INGRESS_URL": config.ingress_url})
    try:
        done = subprocess.run(
            [str(binary), "invocations", "describe", invocation_id],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise unreachable(f"`restate invocations describe {invocation_id}` timed out") from None
    except OSError as exc:
        raise unreachable(f"cannot run the Restate CLI {binary}: {exc}") from None
    if done.returncode != 0:
        problem = (done.stderr or done.stdout).strip().splitlines()
        raise unreachable(
            f"`restate invocations describe` failed: {problem[-1] if problem else done.returncode}"
        )
    return done.stdout


def cmd_verify(config: Config, args: argparse.Namespace) -> int:
    from app.audit.event_log import verify_store

    store = open_store(config)
    try:
        report = verify_store(store, args.archive_dir)
    except OSError as exc:
        raise unreachable(f"cannot read an archive: {exc}") from None
    if config.json:
        config.emit({**report.model_dump(mode="json"), "ok": report.ok})
    else:
        config.line(f"checked {report.tasks} task(s), {report.events} event(s)")
        for broken in report.broken:
            config.line(f"BROKEN {broken.agent}/{broken.task_id} at event {broken.seq}: {broken.problem}")
        config.line("ok: every chain verifies" if report.ok else f"{len(report.broken)} broken chain(s)")
    return EXIT_OK if report.ok else EXIT_BROKEN


def cmd_archive(config: Config, args: argparse.Namespace) -> int:
    from app.audit.event_log import archive_finished
    from app.service import machines

    seconds = args.older_than
    before = time.time() - seconds
    terminal = {name: machine.terminal for name, machine in machines().items()}
    store = open_store(config)
    config.note(f"archiving tasks finished before {iso(before)} into {args.dir} ...")
    try:
        path, moved = archive_finished(store, terminal, before, Path(args.dir))
    except OSError as exc:
        raise unreachable(f"cannot write the archive in {args.dir}: {exc}") from None
    tasks = 0
    if path is not None:
        resolved = str(path.resolve())
        for agent, task_id in store.tasks():
            head = store.head(agent, task_id)
            if head is not None and head.archive_file == resolved:
                tasks += 1
    config.note(f"done: {moved} event(s) of {tasks} task(s) moved")
    if config.json:
        config.emit({"file": str(path) if path else None, "events": moved, "tasks": tasks})
    elif path is None:
        config.line("nothing to archive")
    else:
        config.line(f"{path}: {moved} event(s) of {tasks} task(s)")
    return EXIT_OK


def cmd_approvers(config: Config, args: argparse.Namespace) -> int:
    """Issue, revoke and list approvers' personal inbox credentials (in the agent database)."""
    from app.approvals.identity import CredentialStore
    from common.db import make_engine

    try:
        store = CredentialStore(make_engine(config.database_url))
    except Exception as exc:  # a driver error, a bad URL: both mean "cannot use that database"
        raise unreachable(f"cannot open the database at {_safe_url(config.database_url)}: {exc}") from None
    if args.action in ("add", "revoke") and not args.name:
        raise CliError(EXIT_USAGE, f"approvers {args.action} needs the approver's name")
    if args.action == "add":
        try:
            token = store.issue(args.name)
        except ValueError as exc:
            raise CliError(EXIT_USAGE, str(exc)) from None
        if config.json:
            config.emit({"approver": args.name, "credential": token})
        else:
            config.note(f"credential issued for {args.name}; it is shown once, give it to them privately:")
            config.line(token)
        return EXIT_OK
    if args.action == "revoke":
        count = store.revoke(args.name)
        if config.json:
            config.emit({"approver": args.name, "revoked": count})
        else:
            config.line(f"revoked {count} credential(s) of {args.name}")
        return EXIT_OK if count else EXIT_NOT_FOUND
    rows = store.listing()
    if config.json:
        config.emit(
            [
                {
                    "approver": name,
                    "issued_at": issued.isoformat(),
                    "revoked_at": revoked.isoformat() if revoked else None,
                }
                for name, issued, revoked in rows
            ]
        )
    else:
        for name, issued, revoked_at in rows:
            ended = f"  revoked {revoked_at.isoformat()}" if revoked_at else ""
            config.line(f"{name}  issued {issued.isoformat()}{ended}")
    return EXIT_OK


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


# --- the parser --------------------------------------------------------------------------------


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"seconds must be >= 0, not {text}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"seconds must be > 0, not {text}")
    return value


def _event_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an event number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"event numbers start at 1, not {value}")
    return value


def _exits(*codes: int) -> str:
    return "exit codes:\n" + "\n".join(f"  {code}  {EXIT_CODES[code]}" for code in codes)


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The global options; on subcommands with SUPPRESS defaults, so they may come after the command."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--ingress-url",
        default=default(os.environ.get("RESTATE_INGRESS_URL") or "http://127.0.0.1:8080"),
        help="Restate ingress ($RESTATE_INGRESS_URL, default http://127.0.0.1:8080)",
    )
    group.add_argument(
        "--admin-url",
        default=default(os.environ.get("RESTATE_ADMIN_URL") or "http://127.0.0.1:9070"),
        help="Restate admin API ($RESTATE_ADMIN_URL, default http://127.0.0.1:9070)",
    )
    group.add_argument(
        "--approvals-url",
        default=default(default_approvals_url()),
        help="approvals service ($APPROVALS_URL, else http://127.0.0.1:$APPROVALS_PORT, default port 9081)",
    )
    group.add_argument(
        "--database-url",
        default=default(os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL),
        help="the event log's database ($DATABASE_URL, default the service's SQLite file)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="machine-readable output on stdout (one JSON document per line)",
    )


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="agentctl",
        description="Operate durable agents: start, follow, approve and audit tasks.",
        epilog=_exits(*EXIT_CODES),
        formatter_class=formatter,
    )
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str, codes: Sequence[int]) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=_exits(*codes),
            formatter_class=formatter,
            parents=[common],
        )

    def agent_and_task(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("agent", metavar="AGENT", choices=AGENTS, help=" or ".join(AGENTS))
        sub.add_argument("task_id", metavar="TASK_ID", help="the task id (the virtual object's key)")

    def watching(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--timeout", type=_seconds, default=0.0, help="give up after S seconds (exit 7); 0: never"
        )
        sub.add_argument(
            "--interval", type=_positive_seconds, default=1.0, help="seconds between polls (default 1)"
        )

    start = command(
        "start",
        "Start a task through the Restate ingress (idempotent: running it again never starts twice).",
        [EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_TIMEOUT],
    )
    agent_and_task(start)
    start.add_argument("--user-id", help="AgentTask: the user the task is for")
    start.add_argument("--task", help="AgentTask: what to do")
    start.add_argument("--expense-id", help="ExpenseReport: the expense to process")
    start.add_argument("--wait", action="store_true", help="then watch the task until it ends")
    watching(start)
    start.set_defaults(handler=cmd_start)

    status = command(
        "status",
        "Show a task's state, pending approval, approvals, result or error.",
        [EXIT_OK, EXIT_NOT_FOUND, EXIT_UNREACHABLE],
    )
    agent_and_task(status)
    status.set_defaults(handler=cmd_status)

    watch = command(
        "watch",
        "Follow a task live, one line per transition, until it ends.",
        [EXIT_OK, EXIT_FAILED, EXIT_NOT_FOUND, EXIT_UNREACHABLE, EXIT_TIMEOUT],
    )
    agent_and_task(watch)
    watching(watch)
    watch.add_argument(
        "--start-grace",
        type=_seconds,
        default=10.0,
        help="how long a task not there yet may take to appear before exit 3 (default 10)",
    )
    watch.set_defaults(handler=cmd_watch)

    for name, verb in (("approve", "Approve"), ("reject", "Reject")):
        decide = command(
            name,
            f"{verb} a task's pending approval through the signed approvals webhook.",
            [EXIT_OK, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_UNREACHABLE],
        )
        agent_and_task(decide)
        decide.add_argument("--approver", required=True, help="who decides (must be an allowed approver)")
        decide.add_argument("--comment", help="a comment recorded with the decision")
        decide.add_argument(
            "--hash", help="the approval_hash decided on (default: the pending approval's, read from status)"
        )
        decide.epilog = (decide.epilog or "") + (
            "\n\nWithout --hash the hash is read from status: an unknown task is exit 3, a task not\n"
            "waiting exit 4. With --hash the approvals service decides (not waiting: 409, exit 4)."
        )
        decide.set_defaults(handler=cmd_decide)

    timeline = command(
        "timeline",
        "Show a task's events from the event log, or its state as of one event (--at N).",
        [EXIT_OK, EXIT_NOT_FOUND, EXIT_UNREACHABLE],
    )
    agent_and_task(timeline)
    timeline.add_argument("--at", type=_event_number, metavar="N", help="the task's state as of event N")
    timeline.set_defaults(handler=cmd_timeline)

    journal = command(
        "journal",
        "Show the Restate journal of a task's run invocation(s).",
        [EXIT_OK, EXIT_NOT_FOUND, EXIT_UNREACHABLE],
    )
    agent_and_task(journal)
    journal.add_argument(
        "--describe", action="store_true", help="also print `restate invocations describe <id>`"
    )
    journal.set_defaults(handler=cmd_journal)

    verify = command(
        "verify",
        "Verify every task's hash chain in the event log (and its archive).",
        [EXIT_OK, EXIT_UNREACHABLE, EXIT_BROKEN],
    )
    verify.add_argument("--archive-dir", type=Path, help="where archives are (default: as recorded)")
    verify.set_defaults(handler=cmd_verify)

    archive = command(
        "archive",
        "Move finished tasks' events older than a duration into a gzipped JSON Lines archive.",
        [EXIT_OK, EXIT_USAGE, EXIT_UNREACHABLE],
    )
    archive.add_argument(
        "--older-than",
        type=_duration,
        required=True,
        metavar="DURATION",
        help="e.g. 30d, 12h, 15m, 0s (last event older than now minus this)",
    )
    archive.add_argument("--dir", required=True, help="the directory the archive file is written to")
    archive.set_defaults(handler=cmd_archive)

    approvers = command(
        "approvers",
        "Issue (add), revoke or list approvers' personal credentials for the inbox.",
        [EXIT_OK, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNREACHABLE],
    )
    approvers.add_argument("action", choices=["add", "revoke", "list"])
    approvers.add_argument("name", nargs="?", help="the approver (add, revoke), e.g. ops-lead")
    approvers.set_defaults(handler=cmd_approvers)

    diagram = command(
        "diagram",
        "Print a machine's Mermaid stateDiagram-v2.",
        [EXIT_OK, EXIT_NOT_FOUND],
    )
    diagram.add_argument("name", metavar="NAME", help="the machine, e.g. AgentTask or ExpenseReport")
    diagram.set_defaults(handler=cmd_diagram)
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = Config(
        ingress_url=args.ingress_url,
        admin_url=args.admin_url,
        approvals_url=args.approvals_url,
        database_url=args.database_url,
        json=args.json,
        out=out or sys.stdout,
        err=err or sys.stderr,
    )
    handler: Callable[[Config, argparse.Namespace], int] = args.handler
    try:
        return handler(config, args)
    except CliError as exc:
        config.err.write(f"agentctl {args.command}: {exc.message}\n")
        return exc.code
    except SQLAlchemyError as exc:
        config.err.write(f"agentctl {args.command}: the event log's database failed: {_one_line(exc)}\n")
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        config.err.write("agentctl: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
