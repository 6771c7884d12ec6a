"""agentctl commands over the event log: timeline (and a task's state at event N), verify, archive."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from app.audit.event_log import Event, EventStore, TaskSnapshot
from app.cli.common import (
    EXIT_BROKEN,
    EXIT_OK,
    Config,
    _request,
    _shorten,
    admin_query,
    http_client,
    iso,
    not_found,
    open_store,
    print_view,
    sql_literal,
    terminal_states_of,
    unreachable,
)


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


def load_events(store: EventStore, agent: str, task_id: str) -> list[Event]:
    """A task's whole chain (see `EventStore.chain`); an unreadable archive is exit 5."""
    try:
        return store.chain(agent, task_id)
    except OSError as exc:
        raise unreachable(f"cannot read the archive of {agent}/{task_id}: {exc}") from None


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
    archived: list[tuple[str, str]] = []
    if path is not None:
        resolved = str(path.resolve())
        for agent, task_id in store.tasks():
            head = store.head(agent, task_id)
            if head is not None and head.archive_file == resolved:
                archived.append((agent, task_id))
    tasks = len(archived)
    config.note(f"done: {moved} event(s) of {tasks} task(s) moved")
    reduced = reduce_restate_records(config, archived, str(path.resolve())) if path is not None else None
    if reduced is not None:
        config.note(
            f"Restate records reduced to summaries: {reduced['tasks']} task(s), "
            f"{reduced['bytes_before']} -> {reduced['bytes_after']} bytes"
        )
    if config.json:
        config.emit(
            {"file": str(path) if path else None, "events": moved, "tasks": tasks, "restate_records": reduced}
        )
    elif path is None:
        config.line("nothing to archive")
    else:
        config.line(f"{path}: {moved} event(s) of {tasks} task(s)")
    return EXIT_OK


def reduce_restate_records(config: Config, tasks: list[tuple[str, str]], archive_file: str) -> dict[str, int]:
    """Replace each archived task's Restate state (its whole record) with its summary, under the
    same key, through the admin API; a task with an invocation still open is left alone. Counts
    and bytes, for the report."""
    from app.runtime.engine import TASK_KEY, TaskSummary

    done = before = after = 0
    with http_client() as client:
        for agent, task_id in tasks:
            where = f"service_name = {sql_literal(agent)} and service_key = {sql_literal(task_id)}"
            busy = admin_query(
                client,
                config,
                "select id from sys_invocation where status != 'completed' "
                f"and target_service_name = {sql_literal(agent)} "
                f"and target_service_key = {sql_literal(task_id)}",
            )
            rows = {
                row["key"]: row
                for row in admin_query(client, config, f"select key, value_utf8 from state where {where}")
            }
            if busy or TASK_KEY not in rows:
                continue
            record = json.loads(rows[TASK_KEY]["value_utf8"])
            if "archive_file" in record:
                continue  # reduced by an earlier archive run
            summary = TaskSummary.of(record, archive_file)
            encoded = summary.model_dump_json().encode()
            url = f"{config.admin_url.rstrip('/')}/services/{quote(agent, safe='')}/state"
            response = _request(
                client, "POST", url, json={"object_key": task_id, "new_state": {TASK_KEY: list(encoded)}}
            )
            if response.status_code >= 300:
                raise unreachable(f"reducing {agent}/{task_id}: Restate answered {response.status_code}")
            done += 1
            before += sum(len(str(row["value_utf8"]).encode()) for row in rows.values())
            after += len(encoded)
    return {"tasks": done, "bytes_before": before, "bytes_after": after}
