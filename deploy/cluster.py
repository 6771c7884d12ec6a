"""A replicated Restate cluster on this machine: N `restate-server` processes on loopback.

Used by `make cluster-test`. Every node reads the production configuration
(deploy/k8s/base/restate.toml) and gets, from its environment, what Kubernetes gives a pod: its
name, its advertised address, every peer's address, and here its own free ports and base dir. The
cluster is provisioned once with `restatectl provision`, as the provisioning Job does. Nodes are
started directly (the native binaries) and stopped by PID, like the rest of deploy/local.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from deploy import request_identity
from deploy.local import (
    FAST_RETRIES,
    RESTATE_SERVER_BIN,
    ROOT,
    ManagedProcess,
    StackError,
    free_port,
    http_ok,
    port_open,
    wait_until,
)

RESTATECTL_BIN = ROOT / "node_modules/@restatedev/restatectl-linux-x64/bin/restatectl"
PRODUCTION_CONFIG = ROOT / "deploy/k8s/base/restate.toml"
CLUSTER_NAME = "durable-agents-cluster-test"
NODE_READY_SECONDS = 90.0


@dataclass
class ClusterNode:
    """One node: its name, its ports and its process."""

    name: str
    fabric_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    ingress_port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None

    @property
    def advertised_address(self) -> str:
        return f"http://127.0.0.1:{self.fabric_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    def serving(self) -> bool:
        """Its admin API and its ingress answer (the ingress only once partitions are led)."""
        return http_ok(f"{self.admin_url}/health") and http_ok(f"{self.ingress_url}/restate/health")


@dataclass
class RestateCluster:
    """`size` nodes forming one cluster with `replication` copies of the log and each partition."""

    workdir: Path
    size: int = 3
    replication: int = 2
    partitions: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)
    nodes: list[ClusterNode] = field(default_factory=list)
    identity_key_file: Path | None = None
    identity_public_key: str | None = None

    def __post_init__(self) -> None:
        if not self.nodes:
            self.nodes = [ClusterNode(name=f"n{index + 1}") for index in range(self.size)]

    def node(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.name == name)

    def node_env(self, node: ClusterNode) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("RESTATE_")}
        peers = [peer.advertised_address for peer in self.nodes]
        env.update(
            {
                "RESTATE_CLUSTER_NAME": CLUSTER_NAME,
                "RESTATE_NODE_NAME": node.name,
                "RESTATE_BASE_DIR": str(self.workdir / "restate" / node.name),
                "RESTATE_BIND_IP": "127.0.0.1",
                "RESTATE_BIND_PORT": str(node.fabric_port),
                "RESTATE_ADVERTISED_ADDRESS": node.advertised_address,
                "RESTATE_METADATA_CLIENT__ADDRESSES": json.dumps(peers),
                "RESTATE_ADMIN__BIND_PORT": str(node.admin_port),
                "RESTATE_INGRESS__BIND_PORT": str(node.ingress_port),
                # A small machine: three nodes share two cores and their memory.
                "RESTATE_ROCKSDB_TOTAL_MEMORY_SIZE": "256 MiB",
                "RESTATE_ADMIN__QUERY_ENGINE__MEMORY_SIZE": "128 MiB",
                "RESTATE_LOG_FORMAT": "pretty",
                **FAST_RETRIES,
            }
        )
        if self.identity_key_file is not None:
            env[request_identity.SERVER_KEY_VARIABLE] = str(self.identity_key_file)
        env.update(self.extra_env)
        return env

    def _process(self, node: ClusterNode) -> ManagedProcess:
        if not RESTATE_SERVER_BIN.exists():
            raise StackError(f"{RESTATE_SERVER_BIN} is missing: run `make install` (npm ci) first")
        return ManagedProcess(
            name=f"restate-server {node.name}",
            argv=[str(RESTATE_SERVER_BIN), "--config-file", str(PRODUCTION_CONFIG)],
            env=self.node_env(node),
            log_path=self.workdir / f"logs/restate-{node.name}.log",
            ready=lambda: http_ok(f"{node.admin_url}/health"),
            cwd=self.workdir,
        )

    def start(self) -> RestateCluster:
        """Start every node side by side, provision the cluster, and wait until each serves."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.identity_key_file, self.identity_public_key = request_identity.generate(self.workdir / "keys")
        try:
            for node in self.nodes:
                node.process = self._process(node)
                node.process.launch()
            self.provision()
            for node in self.nodes:
                assert node.process is not None
                node.process.wait_ready(NODE_READY_SECONDS)
            self.wait_serving(self.nodes, NODE_READY_SECONDS)
        except BaseException:
            self.stop()
            raise
        return self

    def provision(self, timeout: float = NODE_READY_SECONDS) -> None:
        """`restatectl provision` once every node listens. A cluster provisioned already (by
        another node or an earlier run of the provisioning Job) counts as done."""
        wait_until(
            lambda: all(port_open(node.fabric_port) for node in self.nodes),
            timeout=timeout,
            what="every node's node-to-node port",
        )
        deadline = time.monotonic() + timeout
        while True:
            result = self.restatectl(
                "provision",
                "--replication",
                str(self.replication),
                "--num-partitions",
                str(self.partitions),
                "--yes",
            )
            said = (result.stdout + result.stderr).lower()
            if result.returncode == 0 and ("successfully provisioned" in said or "provisioned by" in said):
                return
            if time.monotonic() > deadline:
                raise StackError(f"restatectl provision failed ({result.returncode}): {said[-2000:]}")
            time.sleep(0.5)

    def led_partitions(self) -> set[int]:
        """The partitions with an active leader on a node that is up, from `restatectl partitions
        list` (a killed node's rows linger there until its peers notice it is gone)."""
        live = {node.name for node in self.nodes if node.process is not None and node.process.alive()}
        names = self.names_by_id()
        led: set[int] = set()
        for line in self.restatectl("partitions", "list").stdout.splitlines():
            words = line.split()
            if len(words) >= 4 and words[0].isdigit() and words[2] == "Leader" and words[3] == "Active":
                if names.get(words[1].split(":")[0]) in live:
                    led.add(int(words[0]))
        return led

    def _node_rows(self) -> list[list[str]]:
        """The rows of `restatectl status`'s node table: NODE-ID NAME UPTIME METADATA LEADER ..."""
        names = {node.name for node in self.nodes}
        rows = [line.split() for line in self.restatectl("status").stdout.splitlines()]
        return [words for words in rows if len(words) >= 3 and words[1] in names]

    def names_by_id(self) -> dict[str, str]:
        """Node ids as the partition table prints them (`N2`, without the generation) -> names."""
        return {words[0].split(":")[0]: words[1] for words in self._node_rows()}

    def leaders_by_node(self) -> dict[str, int]:
        """How many partitions each live node leads, from `restatectl status`."""
        return {
            words[1]: int(words[4].split("+")[0])
            for words in self._node_rows()
            if len(words) >= 5 and words[3] == "Member"
        }

    def wait_serving(self, nodes: list[ClusterNode], timeout: float) -> None:
        """Each of `nodes` answers, and every partition has a leader (until then, a call whose
        key falls in a leaderless partition waits)."""
        everyone = set(range(self.partitions))
        deadline = time.monotonic() + timeout
        while not (all(self._serving(node) for node in nodes) and self.led_partitions() == everyone):
            if time.monotonic() > deadline:
                tails = "\n".join(
                    f"--- {node.name} ---\n{node.process.log_tail(30)}" for node in nodes if node.process
                )
                raise StackError(f"the cluster did not serve within {timeout:.0f}s\n{tails}")
            time.sleep(0.1)

    @staticmethod
    def _serving(node: ClusterNode) -> bool:
        try:
            return node.serving()
        except (httpx.HTTPError, OSError):
            return False

    def kill(self, name: str) -> None:
        """SIGKILL one node: the loss the cluster test injects."""
        process = self.node(name).process
        assert process is not None
        process.kill()
        process.stop()

    def restart(self, name: str) -> None:
        """Start a killed node again, under its own name and data (a pod rescheduled onto its volume)."""
        node = self.node(name)
        node.process = self._process(node)
        node.process.start(NODE_READY_SECONDS)

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                node.process.stop()

    def restatectl(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """restatectl against the nodes that are up (it discovers the rest through them)."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("RESTATE")}
        addresses = ",".join(
            node.advertised_address for node in self.nodes if node.process and node.process.alive()
        )
        return subprocess.run(
            [str(RESTATECTL_BIN), "--address", addresses, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def status(self) -> dict[str, Any]:
        """`restatectl status` as text, with its exit code (for the report and for failures)."""
        result = self.restatectl("status")
        return {"returncode": result.returncode, "text": result.stdout + result.stderr}
