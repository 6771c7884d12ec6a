"""agentctl's lists: every task (`list`, with the console's filters), the approvals waiting for
someone (`pending`) and the tasks that failed (`failed`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from app.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Config,
    _shorten,
    admin_query,
    http_client,
    open_store,
    unreachable,
)
from app.console.query import TaskQuery

if TYPE_CHECKING:
    from app.console.tasks import TaskPage, TaskRow

SUMMARY_WIDTH = 60
ERROR_WIDTH = 100


def _query(args: argparse.Namespace, status: str | None) -> TaskQuery:
    try:
        return TaskQuery(
            agent=args.agent, status=status, search=args.search, limit=args.limit, offset=args.offset
        )
    except ValueError as exc:  # pydantic's ValidationError: a limit out of range, an unknown state
        raise CliError(EXIT_USAGE, " ".join(str(exc).split())) from None


def _page(config: Config, query: TaskQuery) -> TaskPage:
    # Here, not at the top: the index imports the engine (and the Restate SDK), which every other
    # agentctl command would pay for at start.
    from app.console.tasks import STALLS_QUERY, UnknownAgent, list_tasks, stalls_of
    from app.service import machines

    store = open_store(config)
    try:
        with http_client() as client:
            stalls = stalls_of(admin_query(client, config, STALLS_QUERY))
    except CliError as exc:
        if query.status == "stalled":
            raise
        config.note(f"not shown as stalled, for want of Restate: {exc.message}")
        stalls = None
    try:
        return list_tasks(store, machines(), query, stalls)
    except UnknownAgent as exc:
        raise CliError(EXIT_USAGE, str(exc)) from None
    except LookupError as exc:
        raise unreachable(str(exc)) from None


def _print_rows(config: Config, page: TaskPage) -> None:
    for row in page.tasks:
        config.line(f"{row.created_at}  {row.agent:<14} {row.task_id:<28} {row.state:<14} {row.status}")
        detail = _detail(row)
        if detail:
            config.line(f"    {detail}")
    shown = f"{page.offset + 1}-{page.offset + len(page.tasks)}" if page.tasks else "none"
    more = (
        f"; next page: --offset {page.offset + len(page.tasks)}"
        if page.offset + len(page.tasks) < page.total
        else ""
    )
    config.note(f"{page.total} task(s) match; shown {shown}{more}")


def _detail(row: TaskRow) -> str:
    if row.stall is not None:
        stall = row.stall
        return _shorten(
            f"stalled at {stall.step} since {stall.since}, {stall.rounds} round(s), next at "
            f"{stall.next_retry_at}: {stall.last_error}",
            ERROR_WIDTH,
        )
    if row.error is not None:
        return _shorten(f"{row.error.get('code')}: {row.error.get('message')}", ERROR_WIDTH)
    return ""


def cmd_list(config: Config, args: argparse.Namespace) -> int:
    """`list`, and `failed` (a list of one status)."""
    page = _page(config, _query(args, getattr(args, "state", None) or args.status))
    if config.json:
        config.emit(page.model_dump(mode="json"))
    else:
        _print_rows(config, page)
    return EXIT_OK


def cmd_pending(config: Config, args: argparse.Namespace) -> int:
    from app.console.tasks import OPEN_GATES_QUERY, open_gates

    with http_client() as client:
        rows = admin_query(client, config, OPEN_GATES_QUERY)
    pending = [row for row in open_gates(rows) if args.agent is None or row.agent == args.agent]
    if args.approver is not None:
        pending = [row for row in pending if args.approver in row.approvers]
    listed: list[dict[str, Any]] = [row.as_listed(args.approver) for row in pending]
    if config.json:
        config.emit(listed)
        return EXIT_OK
    for row in pending:
        approval = row.approval
        reminded = ", reminded" if approval.reminded else ""
        config.line(
            f"{row.agent:<14} {row.task_id:<28} {approval.state:<14} for {', '.join(row.approvers)} "
            f"until {approval.deadline}{reminded}"
        )
        config.line(f"    {_shorten(approval.summary, SUMMARY_WIDTH * 2)}")
        config.line(f"    hash {approval.approval_hash}")
    config.note(f"{len(pending)} approval(s) waiting")
    return EXIT_OK
