"""What every agentctl command shares: exit codes, errors, configuration, HTTP and output helpers."""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import httpx

from app.audit.event_log import EventStore, event_log_url, store_for
from app.console.query import iso as iso
from app.console.query import sql_literal as sql_literal
from common.db import normalize_database_url

EXIT_OK = 0


EXIT_FAILED = 1


EXIT_USAGE = 2


EXIT_NOT_FOUND = 3


EXIT_REFUSED = 4


EXIT_UNREACHABLE = 5


EXIT_BROKEN = 6


EXIT_TIMEOUT = 7


# The reader of stdout closed it (`agentctl list | head`): stopped quietly, as a Unix tool killed
# by SIGPIPE would be (128 + 13).
EXIT_CLOSED_PIPE = 141


EXIT_CODES = {
    EXIT_OK: "ok",
    EXIT_FAILED: "the task ended FAILED (watch, start --wait)",
    EXIT_USAGE: "usage or configuration error",
    EXIT_NOT_FOUND: "not found (unknown task, invocation or machine)",
    EXIT_REFUSED: "refused (a decision answered 409/403/422, or the task's input was rejected)",
    EXIT_UNREACHABLE: "a server is unreachable or answered an unexpected error",
    EXIT_BROKEN: "verify found a broken chain",
    EXIT_TIMEOUT: "timed out (watch, start --wait)",
    EXIT_CLOSED_PIPE: "the reader of the output went away (e.g. `| head`): stopped quietly",
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


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


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
    # Where database_url came from, for the messages that name the database read.
    database_source: str = "--database-url"

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
    """The event log of the configured database, once it is known to exist (see `existing`)."""
    url = existing(config, event_log_url(config.database_url), "event log")
    try:
        return store_for(config.database_url)
    except Exception as exc:  # a driver error, a bad URL: both mean "cannot use that database"
        raise unreachable(f"cannot open the event log at {_safe_url(url)}: {exc}") from None


def existing(config: Config, url: str, what: str) -> str:
    """`url`, said on stderr, once it names a database that exists. A SQLite file that is not
    there would be created empty and read as "no tasks" (run from another directory, or without
    the service's DATABASE_URL), so it is refused instead, naming where the URL came from."""
    try:
        parsed = normalize_database_url(url)
    except Exception as exc:  # SQLAlchemy's ArgumentError for a URL it cannot parse
        raise CliError(EXIT_USAGE, f"not a database URL ({config.database_source}): {exc}") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database)
        if not path.is_file():
            raise CliError(
                EXIT_USAGE,
                f"no {what} at {path} (the database URL is {config.database_source}); the service "
                "creates it when it first starts: point DATABASE_URL or --database-url at its database",
            )
    config.note(f"reading the {what} at {_safe_url(url)}")
    return url


def _safe_url(url: str) -> str:
    """The database URL without its password, fit for an error message."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


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
    spend = view.get("spend")
    if isinstance(spend, Mapping):
        config.line(f"spent: {spend_line(spend, estimated=view.get('model') == 'offline')}")
    stall = view.get("stall")
    if isinstance(stall, Mapping):
        config.line(
            f"stalled at {stall.get('step')} since {stall.get('since')}: {stall.get('rounds')} retry rounds, "
            f"next at {stall.get('next_retry_at')}: {stall.get('last_error')}"
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


def spend_line(spend: Mapping[str, Any], *, estimated: bool) -> str:
    """A task's spend in one line: model calls, tokens, cost, tool calls."""
    unpriced = spend.get("unpriced_calls") or 0
    cost = f"${spend.get('cost_usd')}" + (f" (+{unpriced} call(s) with no price)" if unpriced else "")
    tokens = f"{spend.get('input_tokens', 0):,} in + {spend.get('output_tokens', 0):,} out tokens"
    return (
        f"{spend.get('llm_calls', 0)} model call(s), {tokens}{' (estimated)' if estimated else ''}, "
        f"{cost}; {spend.get('tool_calls', 0)} tool call(s)"
    )


def terminal_states_of(agent: str) -> frozenset[str]:
    from app.service import machines

    machine = machines().get(agent)
    return machine.terminal if machine is not None else frozenset()


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
