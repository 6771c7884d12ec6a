"""Scale-out proof: a three-node replicated Restate cluster (replication 2) on loopback, the agent and
tool services on PostgreSQL, and one Restate node SIGKILLed in the middle of a run, later restarted.

Every expense flow completes with exactly one ledger posting, every task parked at its approval
gate stays approvable (some are approved while the node is down, the rest after it is back), and
what the clients saw meanwhile is measured: a prober keeps reading the parked tasks' status
through the ingress of a node that stays up. `make cluster-test` runs this module (and
`make reliability` with the rest); its figures go to the report.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from deploy.cluster import RestateCluster
from deploy.local import Stack, wait_until
from tests.figures import record_figure
from tests.integration.flows import END
from tests.integration.private_postgres import fresh_database
from tests.integration.test_expense_report import decide, postings, run_report, seeded, wait_waiting
from tests.integration.test_parked_tasks import rss_kib

RELIABILITY = {
    "check": (
        "Replicated Restate cluster (3 nodes, replication 2): flows and parked approvals survive "
        "a node's loss"
    ),
    "injected": "SIGKILL of the Restate node leading the most partitions mid-run, restarted later",
}

# Expense batches: each gives one auto-approved report (small-lunch) and one that parks for a
# human (hotel-stay).
BATCHES = 6


@pytest.fixture(scope="module", params=["normal", "always-replay"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RestateCluster]:
    # Always-replay: every await suspends the invocation and the next step replays its journal,
    # here on whichever node leads the partition at the time.
    replay = {"RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT": "0s"} if request.param == "always-replay" else {}
    running = RestateCluster(workdir=tmp_path_factory.mktemp("cluster"), extra_env=replay)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def cluster_stack(tmp_path_factory: pytest.TempPathFactory, cluster: RestateCluster) -> Iterator[Stack]:
    """The services, pointed at node n1 (the clients' node, kept up), on a fresh PostgreSQL database."""
    entry = cluster.node("n1")
    with fresh_database("cluster_test") as database_url:
        stack = Stack(
            workdir=tmp_path_factory.mktemp("cluster-services"),
            database_url=database_url,
            external_restate=True,
            always_replay=bool(cluster.extra_env),
            ingress_port=entry.ingress_port,
            admin_port=entry.admin_port,
            identity_key_file=cluster.identity_key_file,
            identity_public_key=cluster.identity_public_key,
        )
        stack.start()
        try:
            yield stack
        finally:
            stack.stop()


@dataclass
class Prober:
    """Reads tasks' status through one ingress, back to back, recording what each call met."""

    stack: Stack
    task_ids: list[str]
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.stack.ingress_url, timeout=30.0) as client:
            while not self.stop.is_set():
                for task_id in self.task_ids:
                    started = time.monotonic()
                    try:
                        response = client.post(f"/ExpenseReport/{task_id}/status")
                        if response.status_code != 200:
                            self.failures.append(f"{response.status_code}")
                    except httpx.HTTPError as exc:
                        self.failures.append(type(exc).__name__)
                    self.latencies.append(time.monotonic() - started)

    def summary(self) -> str:
        ordered = sorted(self.latencies)
        p99 = ordered[int(0.99 * (len(ordered) - 1))]
        return (
            f"{len(ordered)} status reads, {len(self.failures)} failed "
            f"({', '.join(sorted(set(self.failures))) or 'none'}); latency p50 "
            f"{statistics.median(ordered) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
            f"max {ordered[-1] * 1000:.0f} ms"
        )


def assert_completed_once(stack: Stack, task_id: str, expense_id: str) -> None:
    view = stack.wait_for_state("ExpenseReport", task_id, END, timeout=120)
    assert view["state"] == "COMPLETE", view
    [posting] = postings(stack, expense_id)
    assert posting["posting_id"] == view["result"]["posting_id"]


@pytest.mark.reliability_only
def test_flows_and_parked_approvals_survive_losing_a_restate_node(
    cluster: RestateCluster, cluster_stack: Stack
) -> None:
    stack = cluster_stack
    expenses = [seeded(stack) for _ in range(BATCHES)]
    parked = {run_report(stack, batch["hotel-stay"]): batch["hotel-stay"] for batch in expenses}
    views = {task_id: wait_waiting(stack, task_id) for task_id in parked}

    # The victim: of the nodes the clients do not talk to, the one leading the most partitions,
    # so its loss moves leadership (and the clients' calls into those partitions wait on it).
    leaders = cluster.leaders_by_node()
    victim = max((name for name in leaders if name != "n1"), key=lambda name: leaders[name])
    assert leaders[victim] >= 1, leaders

    prober = Prober(stack, list(parked))
    probing = threading.Thread(target=prober.run, daemon=True)
    probing.start()
    time.sleep(0.5)  # a baseline of reads before the loss, for the figure

    # Auto-approved flows in flight, and the node gone under them.
    running = {run_report(stack, batch["small-lunch"]): batch["small-lunch"] for batch in expenses}
    killed_at = time.monotonic()
    cluster.kill(victim)
    everyone = set(range(cluster.partitions))
    wait_until(lambda: cluster.led_partitions() == everyone, timeout=120, interval=0.2, what="new leaders")
    led_again = time.monotonic() - killed_at

    for task_id, expense_id in running.items():
        assert_completed_once(stack, task_id, expense_id)
    flows_done = time.monotonic() - killed_at

    # Half the parked tasks approved while the node is still down.
    waiting = list(parked)
    for task_id in waiting[: len(waiting) // 2]:
        assert decide(stack, task_id, views[task_id], "approve").status_code == 200
        assert_completed_once(stack, task_id, parked[task_id])

    prober.stop.set()
    probing.join(timeout=60)
    during_loss = prober.summary()

    restarted_at = time.monotonic()
    cluster.restart(victim)
    cluster.wait_serving(cluster.nodes, timeout=120)
    rejoined = time.monotonic() - restarted_at

    # The rest after it is back, its data caught up from its peers.
    for task_id in waiting[len(waiting) // 2 :]:
        assert stack.status("ExpenseReport", task_id)["state"] == "WAIT_APPROVAL"
        assert decide(stack, task_id, views[task_id], "approve").status_code == 200
        assert_completed_once(stack, task_id, parked[task_id])

    # Nothing posted twice anywhere: one posting per expense of the run, and only for them.
    for batch in expenses:
        assert len(postings(stack, batch["small-lunch"])) == 1
        assert len(postings(stack, batch["hotel-stay"])) == 1
        assert postings(stack, batch["mismatch-taxi"]) == []

    assert stack.app is not None
    memory = ", ".join(
        f"{node.name} {rss_kib(node.process.pid) / 1024:.0f}" for node in cluster.nodes if node.process
    )
    mode = "always-replay" if cluster.extra_env else "normal"
    figure = (
        f"{mode} mode: {cluster.size} nodes, replication {cluster.replication}, "
        f"{cluster.partitions} partitions; "
        f"{victim} (leading {leaders[victim]}) SIGKILLed with {len(running)} flows in flight and "
        f"{len(parked)} parked: every partition led again {led_again:.1f} s later, the in-flight "
        f"flows completed {flows_done:.1f} s after the kill; clients meanwhile: {during_loss}; "
        f"the node restarted and served again in {rejoined:.1f} s; RSS at the end (MiB): {memory}, "
        f"agent service {rss_kib(stack.app.pid) / 1024:.0f}"
    )
    print(figure)
    record_figure("Restate node loss", figure)
