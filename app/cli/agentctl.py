"""agentctl: the operator's tool for durable agents (start, status, watch, approve, timeline, journal...).

Talks to the Restate ingress and admin API, the approvals webhook and the event log database.
Human text by default, `--json` for scripts; errors go to stderr as one line; the exit code says
what happened (see EXIT_CODES, printed in `agentctl --help`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.exc import SQLAlchemyError

from app.cli.audit import cmd_archive, cmd_timeline, cmd_verify
from app.cli.common import (
    EXIT_BROKEN,
    EXIT_CLOSED_PIPE,
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    Config,
    _duration,
    _event_number,
    _one_line,
    _positive_seconds,
    _seconds,
    default_approvals_url,
)
from app.cli.decisions import cmd_approvers, cmd_decide
from app.cli.deployments import cmd_deployments
from app.cli.journal import cmd_journal
from app.cli.listing import cmd_list, cmd_pending
from app.cli.operations import cmd_cancel, cmd_resume
from app.cli.tasks import cmd_diagram, cmd_start, cmd_status, cmd_watch
from app.console.query import MAX_PAGE, STATUSES
from app.settings import configured_database_url, default_database_url


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
        default=default(configured_database_url()),
        help=(
            "the service's database ($DATABASE_URL or .env, as the service reads it; default "
            "var/agents.db under the current directory). A SQLite file must exist: never created here"
        ),
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
        # Any registered agent (app/agents/ and AGENT_MODULES). Not checked here: importing every
        # agent would slow each command down; the servers and the event log answer for unknowns.
        sub.add_argument("agent", metavar="AGENT", help="a registered agent, e.g. AgentTask or ExpenseReport")
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
    start.add_argument(
        "--input",
        metavar="JSON",
        help="the task's input as a JSON object (any agent; instead of the flags below)",
    )
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
    watch.add_argument(
        "--until-waiting",
        nargs="?",
        const="",
        default=None,
        metavar="GATE",
        help="also stop (exit 0) once the task waits for an approval that has been asked for "
        "(at GATE, e.g. BUDGET, if given)",
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

    def listing(sub: argparse.ArgumentParser, *, states: bool) -> None:
        sub.add_argument("--agent", help="only this agent's tasks, e.g. ExpenseReport")
        if states:
            sub.add_argument(
                "--state",
                choices=STATUSES,
                help="running, waiting (at a gate), stalled (on an outage), failed or complete",
            )
        sub.add_argument("--search", metavar="TEXT", help="only task ids containing TEXT")
        sub.add_argument(
            "--limit", type=int, default=50, help=f"at most N tasks (1-{MAX_PAGE}, default 50)", metavar="N"
        )
        sub.add_argument(
            "--offset", type=int, default=0, help="skip the first N (the next page)", metavar="N"
        )

    tasks = command(
        "list",
        "List tasks, newest first, from the event log (with stalls from Restate).",
        [EXIT_OK, EXIT_USAGE, EXIT_UNREACHABLE],
    )
    listing(tasks, states=True)
    tasks.set_defaults(handler=cmd_list, status=None)

    failed = command(
        "failed",
        "List the tasks that ended FAILED, newest first, with their error.",
        [EXIT_OK, EXIT_USAGE, EXIT_UNREACHABLE],
    )
    listing(failed, states=False)
    failed.set_defaults(handler=cmd_list, status="failed")

    pending = command(
        "pending",
        "List the approvals waiting for a decision, soonest deadline first (from Restate).",
        [EXIT_OK, EXIT_UNREACHABLE],
    )
    pending.add_argument("--agent", help="only this agent's approvals")
    pending.add_argument("--approver", help="only those this approver may decide")
    pending.set_defaults(handler=cmd_pending)

    resume = command(
        "resume",
        "Retry a stalled task's step now (it waits out an outage), or resume a run Restate paused.",
        [EXIT_OK, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_UNREACHABLE],
    )
    agent_and_task(resume)
    resume.set_defaults(handler=cmd_resume)

    cancel = command(
        "cancel",
        "Cancel a task's run: it ends FAILED (code cancelled) with its record and audit kept.",
        [EXIT_OK, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_UNREACHABLE],
    )
    agent_and_task(cancel)
    cancel.set_defaults(handler=cmd_cancel)

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

    deployments = command(
        "deployments",
        "List each release's Restate deployment and the tasks it still holds; remove a drained one.",
        [EXIT_OK, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_UNREACHABLE],
    )
    deployments.add_argument("action", choices=["list", "remove"])
    deployments.add_argument("id", nargs="?", help="the deployment to remove (dp_…)")
    deployments.set_defaults(handler=cmd_deployments)

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
        database_source=_database_source(argv if argv is not None else sys.argv[1:], args.database_url),
    )
    handler: Callable[[Config, argparse.Namespace], int] = args.handler
    try:
        return handler(config, args)
    except BrokenPipeError:
        return _closed_pipe(config)
    except CliError as exc:
        config.err.write(f"agentctl {args.command}: {exc.message}\n")
        return exc.code
    except SQLAlchemyError as exc:
        config.err.write(f"agentctl {args.command}: the event log's database failed: {_one_line(exc)}\n")
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        config.err.write("agentctl: interrupted\n")
        return 130


def _database_source(argv: Sequence[str], url: str) -> str:
    if any(arg == "--database-url" or arg.startswith("--database-url=") for arg in argv):
        return "from --database-url"
    if os.environ.get("DATABASE_URL"):
        return "from $DATABASE_URL"
    if url == default_database_url():
        return "the default: DATABASE_URL is not set, here or in ./.env"
    return "from ./.env"


def _closed_pipe(config: Config) -> int:
    """The reader went away (`| head`): no traceback. What is still buffered for stdout cannot be
    written either, so stdout is pointed at /dev/null to let the interpreter's exit flush pass."""
    if config.out is sys.stdout:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
    return EXIT_CLOSED_PIPE


if __name__ == "__main__":
    sys.exit(main())
