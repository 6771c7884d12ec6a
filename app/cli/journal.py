"""agentctl journal: a task's Restate journal, through the admin API and the Restate CLI."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

from app.cli.common import EXIT_OK, Config, admin_query, http_client, not_found, sql_literal, unreachable


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
