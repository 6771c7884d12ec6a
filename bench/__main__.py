"""`make bench` (`python -m bench`): one run, one process tree, every figure against the floor.

For each database (SQLite, then the local PostgreSQL in a database of its own), one stack with the
floor's service registered beside ours; for each flow (the floor, `AgentTask`, `ExpenseReport`): a
warm-up, then `--repeats` runs at every concurrency, the journal of one run, and memory with tasks
parked. Writes `bench/results.json` and `docs/performance.md` (bench/report.py). `--smoke` runs a
few flows of each to show it works (the `make test` check); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench.flows import AgentTaskFlow, ExpenseFlow, FloorFlow, Flow
from bench.measure import journal_of_one_run, park, processes, run_level
from bench.report import write_report
from deploy.local import ROOT, running_stack

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
# Parked tasks are suspended after 1 s idle (not a minute), so their memory is read once they are.
STACK_ENV = {"AGENT_INACTIVITY_TIMEOUT_SECONDS": "1"}
FLOWS: tuple[tuple[str, type[Flow], str], ...] = (
    ("floor", FloorFlow, "BenchFloor"),
    ("AgentTask", AgentTaskFlow, "AgentTask"),
    ("ExpenseReport", ExpenseFlow, "ExpenseReport"),
)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few flows of each: shows it works")
    # Two repeats (and a warm-up) keep `make bench` within 15 minutes with 10,000 tasks parked.
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--concurrency", default="1,4,16,64", help="comma-separated levels")
    parser.add_argument("--parked", type=int, default=10_000, help="AgentTasks parked for the memory figure")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument(
        "--flows", default=",".join(name for name, _, _ in FLOWS), help="comma-separated flows to measure"
    )
    parser.add_argument("--results", type=Path, default=ROOT / "bench/results.json")
    parser.add_argument("--report", type=Path, default=ROOT / "docs/performance.md")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats, args.concurrency, args.parked, args.databases = 1, "1,2", 2, "sqlite"
    args.levels = [int(level) for level in args.concurrency.split(",")]
    args.flows = args.flows.split(",")
    unknown = set(args.flows) - {name for name, _, _ in FLOWS}
    if unknown:
        parser.error(f"unknown flows {sorted(unknown)}: choose from {[name for name, _, _ in FLOWS]}")
    return args


# The floor's parked figure is its own comparison, not a target: a tenth as many keeps the run short.
FLOOR_PARKED_SHARE = 10


def flows_per_repeat(concurrency: int, smoke: bool) -> int:
    """Enough flows that the ramp-up and the last stragglers of a level do not decide its rate
    (with 2 per slot, a 16-slot level measured mostly its tail): 3 per slot, and no more than 64,
    so that `make bench` with 10,000 tasks parked stays within 15 minutes here."""
    return 2 if smoke else min(64, max(10, 3 * concurrency))


@contextlib.contextmanager
def database(kind: str, workdir: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'bench.db'}"
        return
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def measure_flow(flow: Flow, args: argparse.Namespace, pids: dict[str, int]) -> dict[str, Any]:
    say(f"  {flow.name}: warm-up")
    run_level(flow, 4, 8 if not args.smoke else 1, pids)
    levels: dict[str, list[dict[str, Any]]] = {}
    for concurrency in args.levels:
        repeats = []
        for _ in range(args.repeats):
            level = run_level(flow, concurrency, flows_per_repeat(concurrency, args.smoke), pids)
            repeats.append(level.model_dump())
        best = max(r["flows_per_second"] for r in repeats)
        say(f"  {flow.name}: {concurrency} in flight: {best:.1f} flows/s (best of {len(repeats)})")
        levels[str(concurrency)] = repeats
    journal = journal_of_one_run(flow)
    return {"levels": levels, "journal": journal.model_dump()}


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": _cpus(), "platform": platform.platform()},
        "settings": {
            "repeats": args.repeats,
            "levels": args.levels,
            "parked": args.parked,
            "smoke": args.smoke,
            "flows_per_repeat": {str(c): flows_per_repeat(c, args.smoke) for c in args.levels},
        },
        "databases": {},
    }
    started = time.monotonic()
    for kind in args.databases.split(","):
        say(f"{kind}:")
        with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as tmp, database(kind, Path(tmp)) as url:
            with (
                running_stack(Path(tmp), url, extra_env=STACK_ENV) as stack,
                stack.serving("floor service", "bench.floor") as floor,
            ):
                # The benchmark's own client is measured too: what it costs is not the system's.
                pids = processes(stack, {"floor service": floor.pid, "bench client": os.getpid()})
                section: dict[str, Any] = {}
                for name, kind_of_flow, service in FLOWS:
                    if name not in args.flows or (kind != "sqlite" and name == "floor"):
                        continue  # the floor keeps no database: measured once
                    flow = kind_of_flow(name=name, service=service, stack=stack)
                    section[name] = measure_flow(flow, args, pids)
                # Memory with tasks parked: the floor, then AgentTask, each from the same stack.
                for name, kind_of_flow, service in FLOWS[:2]:
                    if kind != "sqlite" or not args.parked:
                        break
                    if name not in args.flows:
                        continue
                    flow = kind_of_flow(name=name, service=service, stack=stack)
                    tasks = args.parked if name != "floor" else max(1, args.parked // FLOOR_PARKED_SHARE)
                    parked = park(flow, tasks, pids)
                    say(f"  {name}: {tasks} parked in {parked.seconds_to_park:.0f} s")
                    section[name]["parked"] = parked.model_dump()
                results["databases"][kind] = section
    results["seconds"] = round(time.monotonic() - started, 1)
    return results


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    results = run(args)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, args.report)
    say(f"wrote {args.results} and {args.report} in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
