"""agentctl commands about decisions: approve and reject (the signed webhook), approvers."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping

from app.approvals.signature import signed_headers
from app.cli.common import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Config,
    _message,
    _request,
    _safe_url,
    existing,
    http_client,
    refused,
    require_status,
    unreachable,
)


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


def cmd_approvers(config: Config, args: argparse.Namespace) -> int:
    """Issue, revoke and list approvers' personal inbox credentials (in the agent database)."""
    from app.approvals.identity import CredentialStore
    from common.db import make_engine

    existing(config, config.database_url, "agent database")
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
