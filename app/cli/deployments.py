"""agentctl deployments: each release's Restate deployment, what it still holds, and its removal."""

from __future__ import annotations

import argparse
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
    not_found,
    refused,
    unreachable,
)

# An invocation a deployment still holds: started there and not ended (Restate pins it to it).
HELD = (
    "select pinned_deployment_id as deployment, target_service_name as service, count(*) as n "
    "from sys_invocation where status != 'completed' and pinned_deployment_id is not null "
    "group by pinned_deployment_id, target_service_name"
)


def deployments(client: httpx.Client, config: Config) -> list[dict[str, Any]]:
    """Every registered deployment with its services, whether it is the latest of any, and the
    invocations it still holds (per service), newest first."""
    response = _request(client, "GET", f"{config.admin_url.rstrip('/')}/deployments")
    if response.status_code != 200:
        raise unreachable(f"deployments: Restate answered {response.status_code}: {_message(response)}")
    listed: list[dict[str, Any]] = response.json().get("deployments", [])
    held: dict[str, dict[str, int]] = {}
    for row in admin_query(client, config, HELD):
        held.setdefault(str(row["deployment"]), {})[str(row["service"])] = int(row["n"])
    services = _request(client, "GET", f"{config.admin_url.rstrip('/')}/services")
    latest = {
        str(service.get("deployment_id"))
        for service in (services.json().get("services", []) if services.status_code == 200 else [])
    }
    rows = []
    for item in listed:
        deployment_id = str(item.get("id"))
        rows.append(
            {
                "id": deployment_id,
                "uri": item.get("uri"),
                "created_at": item.get("created_at"),
                "services": sorted(str(s.get("name")) for s in item.get("services", [])),
                "latest": deployment_id in latest,
                "held": held.get(deployment_id, {}),
                "open_invocations": sum(held.get(deployment_id, {}).values()),
            }
        )
    rows.sort(key=lambda row: str(row.get("created_at") or ""), reverse=True)
    return rows


def cmd_deployments(config: Config, args: argparse.Namespace) -> int:
    with http_client() as client:
        rows = deployments(client, config)
        if args.action == "list":
            if config.json:
                config.emit({"deployments": rows})
                return EXIT_OK
            for row in rows:
                latest = " (latest: new tasks start here)" if row["latest"] else ""
                held = ", ".join(f"{service} {n}" for service, n in sorted(row["held"].items())) or "drained"
                config.line(f"{row['id']}  {row['uri']}  created {row['created_at']}{latest}")
                config.line(f"  holds: {held}")
            return EXIT_OK
        if not args.id:
            raise refused("deployments remove needs the deployment id (see `agentctl deployments list`)")
        found = next((row for row in rows if row["id"] == args.id), None)
        if found is None:
            raise not_found(f"no deployment {args.id}")
        if found["latest"]:
            raise refused(f"{args.id} is the latest deployment of a service: new tasks start there")
        if found["open_invocations"]:
            held = ", ".join(f"{service} {n}" for service, n in sorted(found["held"].items()))
            raise refused(
                f"{args.id} is not drained: it still holds {found['open_invocations']} invocation(s) "
                f"({held}); they finish there first"
            )
        # Restate cannot tell by itself that a deployment is drained (hence `force`); we checked.
        url = f"{config.admin_url.rstrip('/')}/deployments/{quote(args.id, safe='')}?force=true"
        response = _request(client, "DELETE", url)
        if response.status_code >= 300:
            raise unreachable(
                f"remove {args.id}: Restate answered {response.status_code}: {_message(response)}"
            )
    config.line(f"removed {args.id}")
    return EXIT_OK
