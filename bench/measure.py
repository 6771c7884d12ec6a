"""Measuring one flow kind on a running stack: throughput and approval latency at a concurrency,
CPU per flow by process, the journal of one run, and memory with tasks parked."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel

from bench.flows import Flow, FlowError
from deploy.local import Stack

TICKS = os.sysconf("SC_CLK_TCK")
PARK_TIMEOUT_SECONDS = 1200.0
# Entries and bytes (DataFusion has no length of binary: its hex encoding is twice as long).
JOURNAL_SIZE = "select count(*) as n, sum(length(encode(raw, 'hex'))) / 2 as b from sys_journal"
# A step of a run: what its logic waits on the world for. A journaled call (`ctx.run`: a tool, a
# model, a read of settings), a call or one-way send to another service, a timer, an awakeable's
# completion (the human's answer). The rest is bookkeeping: input, state reads and writes,
# notifications, output, and the engine's own journaled calls (its seed, clock reads, event
# writes), which are counted as entries, never as steps, so cutting them shows.
STEP_ENTRIES = (
    "entry_type in ('Command: Run', 'Command: Call', 'Command: OneWayCall', 'Command: Sleep', "
    "'Notification: Signal', 'Notification: CompleteAwakeable') and not (coalesce(name, '') = 'task seed' "
    "or coalesce(name, '') = 'timestamp' or coalesce(name, '') like 'event %' "
    "or coalesce(name, '') like 'events %' or coalesce(name, '') like '% ended')"
)


class Level(BaseModel):
    """One repeat of `flows` flows at `concurrency` in flight."""

    concurrency: int
    flows: int
    seconds: float
    flows_per_second: float
    approval_to_complete_ms_p50: float
    approval_to_complete_ms_p99: float
    cpu_ms_per_flow: dict[str, float]
    # Status calls the client made per flow to see it wait (the inbox's cost, not the engine's).
    polls_per_flow: float


class Journal(BaseModel):
    """The journal of one completed run invocation (and of every invocation the flow made)."""

    run_entries: int
    run_bytes: int
    # Steps of the run (see STEP_ENTRIES): entries per step compare runs of different lengths.
    run_steps: int = 0
    flow_entries: int
    flow_bytes: int
    flow_invocations: int


class Parked(BaseModel):
    tasks: int
    seconds_to_park: float
    rss_mib_before: dict[str, float]
    rss_mib_after: dict[str, float]


def cpu_ms(pid: int) -> float:
    """User + system CPU of a process and its reaped children (Tesseract runs as a child)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return (utime + stime + cutime + cstime) * 1000 / TICKS


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def processes(stack: Stack, extra: Mapping[str, int] | None = None) -> dict[str, int]:
    assert stack.restate is not None and stack.app is not None and stack.tools is not None
    found = {
        "restate-server": stack.restate.pid,
        "agent service": stack.app.pid,
        "tool service": stack.tools.pid,
    }
    found.update(extra or {})
    return found


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def one_flow(flow: Flow, index: int) -> float:
    """Run one flow to its end; returns approval (2xx) → end in seconds."""
    key, invocation = flow.start(index)
    approved_at = flow.approve_when_waiting(key)
    flow.finish(invocation)
    return time.monotonic() - approved_at


def run_level(flow: Flow, concurrency: int, flows: int, pids: Mapping[str, int]) -> Level:
    flow.prepare(flows)
    flow.reset_estimate()  # another concurrency: another time to the human step
    before = {name: cpu_ms(pid) for name, pid in pids.items()}
    polls = flow.polls
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        latencies = list(pool.map(lambda i: one_flow(flow, i), range(flows)))
    seconds = time.monotonic() - started
    after = {name: cpu_ms(pid) for name, pid in pids.items()}
    return Level(
        concurrency=concurrency,
        flows=flows,
        seconds=round(seconds, 3),
        flows_per_second=round(flows / seconds, 2),
        approval_to_complete_ms_p50=round(statistics.median(latencies) * 1000, 2),
        approval_to_complete_ms_p99=round(percentile(latencies, 0.99) * 1000, 2),
        cpu_ms_per_flow={name: round((after[name] - before[name]) / flows, 2) for name in pids},
        polls_per_flow=round((flow.polls - polls) / flows, 1),
    )


def journal_of_one_run(flow: Flow) -> Journal:
    """Run one flow alone and read its journals from Restate's SQL introspection."""
    flow.prepare(1)
    key, invocation = flow.start(0)
    flow.approve_when_waiting(key)
    flow.finish(invocation)
    stack = flow.stack
    [run] = stack.sql(f"{JOURNAL_SIZE} where id = '{invocation}'")
    [steps] = stack.sql(f"select count(*) as n from sys_journal where id = '{invocation}' and {STEP_ENTRIES}")
    # Every invocation of the flow: the run, its status polls, the gate's arbiter and the decision.
    ids = stack.sql(
        "select id from sys_invocation "
        f"where target_service_key = '{key}' or target_service_key = '{flow.service}/{key}'"
    )
    listed = ", ".join(f"'{row['id']}'" for row in ids)
    [every] = stack.sql(f"{JOURNAL_SIZE} where id in ({listed})")
    return Journal(
        run_entries=int(run["n"]),
        run_bytes=int(run["b"] or 0),
        run_steps=int(steps["n"]),
        flow_entries=int(every["n"]),
        flow_bytes=int(every["b"] or 0),
        flow_invocations=len(ids),
    )


# How often parking asks Restate how many are suspended: the count scans every invocation, so at
# 10,000 parked a tight poll costs restate-server a share of the CPU the tasks need.
PARK_POLL_SECONDS = 1.0


def park(flow: Flow, tasks: int, pids: Mapping[str, int], window: int = 100) -> Parked:
    """Start `tasks` flows and leave each waiting for its human, at most `window` on their way at
    once (more only queue up behind each other, and raise the services' peak memory, which is not
    what parked tasks cost); memory before, and once Restate has suspended every one of them (idle
    for the inactivity timeout: parked for real)."""
    before = {name: round(rss_mib(pid), 1) for name, pid in pids.items()}
    flow.prepare(tasks)
    query = (
        "select count(*) as n from sys_invocation where status = 'suspended' "
        f"and target_service_name = '{flow.service}' and target_handler_name = 'run'"
    )
    already = int(flow.stack.sql(query)[0]["n"])
    started = time.monotonic()
    deadline = started + PARK_TIMEOUT_SECONDS
    sent = 0
    with ThreadPoolExecutor(max_workers=16) as pool:
        while (parked := int(flow.stack.sql(query)[0]["n"]) - already) < tasks:
            if time.monotonic() > deadline:
                raise FlowError(f"{flow.name}: {parked} of {tasks} parked after {PARK_TIMEOUT_SECONDS:.0f} s")
            # A sliding window, not batches: a batch waits for its slowest before the next starts.
            room = min(tasks - sent, window - (sent - parked))
            if room > 0:
                list(pool.map(flow.start, range(sent, sent + room)))
                sent += room
            else:
                time.sleep(PARK_POLL_SECONDS)
    seconds = time.monotonic() - started
    after = {name: round(rss_mib(pid), 1) for name, pid in pids.items()}
    return Parked(tasks=tasks, seconds_to_park=round(seconds, 1), rss_mib_before=before, rss_mib_after=after)
