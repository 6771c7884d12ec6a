"""agentctl commands for an operator's hand on a running task: resume a stalled one, cancel one."""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

import httpx

from app.cli.common import (
    EXIT_OK,
    Config,
    _message,
    _request,
    admin_query,
    http_client,
    refused,
    require_status,
    sql_literal,
    unreachable,
)

# Restate's statuses of an invocation that has not ended.
OPEN_STATUSES = ("pending", "scheduled", "ready", "running", "paused", "backing-off", "suspended")


def open_run_invocation(client: httpx.Client, config: Config, agent: str, task_id: str) -> dict[str, Any]:
    """The task's `run` invocation that has not ended (there is at most one: the object's lock)."""
    rows = admin_query(
        client,
        config,
        "select id, status from sys_invocation "
        f"where target_service_name = {sql_literal(agent)} and target_service_key = {sql_literal(task_id)} "
        "and target_handler_name = 'run' and status in ("
        + ", ".join(sql_literal(status) for status in OPEN_STATUSES)
        + ")",
    )
    if not rows:
        raise refused(f"{agent}/{task_id} has no run in progress (it ended, or never started)")
    return rows[0]


def stalled_nudge(client: httpx.Client, config: Config, agent: str, task_id: str) -> str | None:
    """The awakeable that wakes a stalled step early, from the task's Restate state (admin only)."""
    rows = admin_query(
        client,
        config,
        "select value_utf8 from state "
        f"where service_name = {sql_literal(agent)} and service_key = {sql_literal(task_id)} "
        "and key = 'stall'",
    )
    if not rows or not rows[0].get("value_utf8"):
        return None
    nudge = json.loads(rows[0]["value_utf8"]).get("nudge_id")
    return str(nudge) if nudge else None


def cmd_resume(config: Config, args: argparse.Namespace) -> int:
    """Retry a stalled step now (not at its next round), or resume an invocation Restate paused."""
    agent, task_id = args.agent, args.task_id
    with http_client() as client:
        view = require_status(client, config, agent, task_id)
        invocation = open_run_invocation(client, config, agent, task_id)
        if invocation.get("status") == "paused":
            url = f"{config.admin_url.rstrip('/')}/invocations/{quote(str(invocation['id']), safe='')}/resume"
            response = _request(client, "PATCH", url)
            if response.status_code >= 300:
                raise unreachable(f"resume: Restate answered {response.status_code}: {_message(response)}")
            config.line(f"{agent}/{task_id}: invocation {invocation['id']} resumed")
            return EXIT_OK
        nudge = stalled_nudge(client, config, agent, task_id) if view.get("stall") else None
        if nudge is None:
            raise refused(f"{agent}/{task_id} is not stalled (state {view.get('state')})")
        url = f"{config.ingress_url.rstrip('/')}/restate/awakeables/{quote(nudge, safe='')}/resolve"
        response = _request(client, "POST", url, content=b"resume")
        if response.status_code >= 300:
            raise unreachable(f"resume: Restate answered {response.status_code}: {_message(response)}")
    stall = view["stall"]
    config.line(f"{agent}/{task_id}: {stall['step']} retried now (stalled since {stall['since']})")
    return EXIT_OK


def cmd_cancel(config: Config, args: argparse.Namespace) -> int:
    """Cancel a task's run: it ends FAILED with code `cancelled`, its record and audit kept."""
    agent, task_id = args.agent, args.task_id
    with http_client() as client:
        require_status(client, config, agent, task_id)
        invocation = open_run_invocation(client, config, agent, task_id)
        url = f"{config.admin_url.rstrip('/')}/invocations/{quote(str(invocation['id']), safe='')}/cancel"
        response = _request(client, "PATCH", url)
        if response.status_code >= 300:
            raise unreachable(f"cancel: Restate answered {response.status_code}: {_message(response)}")
    config.line(f"{agent}/{task_id}: cancel sent to invocation {invocation['id']}")
    return EXIT_OK
