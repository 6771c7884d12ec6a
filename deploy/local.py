"""Start the whole stack on this machine: restate-server, the tool service, the agent service.

Used by the test fixtures and by `make demo`. Every process runs on free loopback ports with a
private base dir, is started directly (the native restate-server binary, not the npm wrapper, so
its PID is the server's own and a SIGKILL reaches it) and is stopped by PID, never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from deploy import request_identity

ROOT = Path(__file__).resolve().parent.parent
RESTATE_SERVER_BIN = ROOT / "node_modules/@restatedev/restate-server-linux-x64/bin/restate-server"
RESTATE_CLI_BIN = ROOT / "node_modules/@restatedev/restate-linux-x64/bin/restate"
RESTATE_CONFIG = ROOT / "restate.toml"
RESTATE_READY_SECONDS = 90.0
# Restate's retries come fast in tests and the demo, so a restarted worker is picked up at once.
FAST_RETRIES = {
    "RESTATE_DEFAULT_RETRY_POLICY__INITIAL_INTERVAL": "100ms",
    "RESTATE_DEFAULT_RETRY_POLICY__MAX_INTERVAL": "2s",
}


class StackError(RuntimeError):
    """A component did not start or did not answer in time (with the tail of its log)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> None:
    """Poll `condition` until it is true or `timeout` seconds pass (then raise TimeoutError)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (httpx.HTTPError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class ManagedProcess:
    """One child process, its log file, and how to tell it is ready."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    ready: Callable[[], bool]
    cwd: Path = ROOT
    # In a session of its own, so it outlives the command that started it (`make up`) and a
    # Ctrl-C in that terminal does not reach it; `make down` stops it by PID.
    detached: bool = False
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    def start(self, timeout: float = 60.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Spawn the process without waiting for it (see `wait_ready`)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=self.detached,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.process is not None, f"{self.name} was never launched"
        try:
            wait_until(self._ready_or_dead, timeout=timeout, what=f"{self.name} to become ready")
        except TimeoutError as exc:
            raise StackError(f"{exc}\n--- {self.log_path} ---\n{self.log_tail()}") from None
        if self.process.poll() is not None:
            raise StackError(
                f"{self.name} exited with {self.process.returncode}\n"
                f"--- {self.log_path} ---\n{self.log_tail()}"
            )

    def _ready_or_dead(self) -> bool:
        assert self.process is not None
        return self.process.poll() is not None or self.ready()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash the durability tests inject."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        code: int | None = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.process.send_signal(signal.SIGKILL)
                    self.process.wait(timeout=10)
            code = self.process.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def restart(self, timeout: float = 60.0) -> None:
        self.stop()
        self.start(timeout=timeout)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def http_ok(url: str) -> bool:
    return httpx.get(url, timeout=1.0).status_code == 200


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Stack:
    """The running components and their addresses; `stop()` ends every process it started."""

    workdir: Path
    database_url: str
    always_replay: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # An OTLP/HTTP collector's base URL: the agent service exports its spans there, and Restate
    # (told to trace) sends the trace context our spans join.
    trace_endpoint: str | None = None
    # Its processes outlive this Python process (see ManagedProcess.detached): `make up`.
    detached: bool = False
    # Restate runs elsewhere (a cluster, deploy/cluster.py): the ports below are one of its nodes',
    # and the identity key pair is the one its nodes sign with. This stack starts only the services.
    external_restate: bool = False
    ingress_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    fabric_port: int = field(default_factory=free_port)
    app_port: int = field(default_factory=free_port)
    approvals_port: int = field(default_factory=free_port)
    tools_port: int = field(default_factory=free_port)
    restate: ManagedProcess | None = None
    tools: ManagedProcess | None = None
    app: ManagedProcess | None = None
    # Restate request identity (the server signs, the agent endpoint checks); made at start.
    identity_key_file: Path | None = None
    identity_public_key: str | None = None

    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def approvals_url(self) -> str:
        return f"http://127.0.0.1:{self.approvals_port}"

    @property
    def tools_url(self) -> str:
        return f"http://127.0.0.1:{self.tools_port}"

    @property
    def app_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}"

    def service_env(self) -> dict[str, str]:
        """The environment both services get: every address of this stack, nothing inherited by luck."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(
                ("RESTATE_", "ANTHROPIC_", "TOOLS_", "APP_", "DATABASE_URL", "AGENT_", "OTEL_")
            )
        }
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                # Development: the well-known secrets below and the crash matrix's fault switch.
                # Production refuses both (tests/app/test_settings.py shows it).
                "ENV": "development",
                "RESTATE_INGRESS_URL": self.ingress_url,
                "RESTATE_ADMIN_URL": self.admin_url,
                "APP_HOST": "127.0.0.1",
                "APP_PORT": str(self.app_port),
                "APPROVALS_PORT": str(self.approvals_port),
                "TOOLS_HOST": "127.0.0.1",
                "TOOLS_PORT": str(self.tools_port),
                "TOOLS_URL": self.tools_url,
                "DATABASE_URL": self.database_url,
                # Stopping a service with a parked task need not wait for its idle stream.
                "AGENT_SHUTDOWN_GRACE_SECONDS": "2",
                # A restarted worker is picked up within 2 s, as the server's default policy above.
                "AGENT_RETRY_MAX_INTERVAL_SECONDS": "2",
            }
        )
        if self.identity_public_key is not None:
            env["RESTATE_IDENTITY_PUBLIC_KEYS"] = self.identity_public_key
        if self.trace_endpoint is not None:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.trace_endpoint
            # Spans reach the collector within a poll even when no write in-process nudges.
            env["TRACE_EXPORT_INTERVAL_SECONDS"] = "0.2"
        if self.always_replay:
            # Defer the inactivity timeout to the server, which is set to 0s below.
            env["AGENT_INACTIVITY_TIMEOUT_SECONDS"] = "0"
        env.update(self.extra_env)
        return env

    def restate_env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("RESTATE_")}
        env.update(
            {
                "RESTATE_BASE_DIR": str(self.workdir / "restate"),
                "RESTATE_BIND_PORT": str(self.fabric_port),
                "RESTATE_ADMIN__BIND_PORT": str(self.admin_port),
                "RESTATE_INGRESS__BIND_PORT": str(self.ingress_port),
                "RESTATE_DISABLE_TELEMETRY": "true",
                **FAST_RETRIES,
            }
        )
        if self.trace_endpoint is not None:
            # Restate exports its own spans over OTLP/gRPC, and sends its trace context with
            # every invocation attempt; without a tracing endpoint it sends none.
            env["RESTATE_TRACING_ENDPOINT"] = self.trace_endpoint
        if self.identity_key_file is not None:
            env[request_identity.SERVER_KEY_VARIABLE] = str(self.identity_key_file)
        if self.always_replay:
            # Suspend after every await and replay on resume: shakes out any non-determinism.
            env["RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT"] = "0s"
        return env

    def start_restate(self) -> None:
        self.restate = self._restate_process()
        self.restate.start(timeout=RESTATE_READY_SECONDS)

    def _restate_process(self) -> ManagedProcess:
        if not RESTATE_SERVER_BIN.exists():
            raise StackError(f"{RESTATE_SERVER_BIN} is missing: run `make install` (npm ci) first")
        return ManagedProcess(
            name="restate-server",
            argv=[str(RESTATE_SERVER_BIN), "--config-file", str(RESTATE_CONFIG)],
            env=self.restate_env(),
            log_path=self.workdir / "logs/restate-server.log",
            detached=self.detached,
            ready=lambda: (
                http_ok(f"{self.admin_url}/health") and http_ok(f"{self.ingress_url}/restate/health")
            ),
            cwd=self.workdir,
        )

    def start_tools(self) -> None:
        self.tools = self._tools_process()
        self.tools.start()

    def _tools_process(self) -> ManagedProcess:
        return ManagedProcess(
            name="tool service",
            argv=[sys.executable, "-m", "tools"],
            env=self.service_env(),
            log_path=self.workdir / "logs/tools.log",
            detached=self.detached,
            ready=lambda: http_ok(f"{self.tools_url}/health"),
        )

    def start_app(self) -> None:
        self.app = self._app_process()
        self.app.start()

    def _app_process(self) -> ManagedProcess:
        return ManagedProcess(
            name="agent service",
            argv=[sys.executable, "-m", "app"],
            env=self.service_env(),
            log_path=self.workdir / "logs/app.log",
            detached=self.detached,
            ready=lambda: port_open(self.app_port) and http_ok(f"{self.approvals_url}/health"),
        )

    def start_release(self, name: str, env: Mapping[str, str]) -> tuple[ManagedProcess, str]:
        """Another release of the agent service beside the running one, at its own endpoint (not
        registered): the process and its Restate endpoint URL. The caller stops it."""
        app_port, approvals_port = free_port(), free_port()
        process = ManagedProcess(
            name=f"agent service {name}",
            argv=[sys.executable, "-m", "app"],
            env={
                **self.service_env(),
                **env,
                "APP_PORT": str(app_port),
                "APPROVALS_PORT": str(approvals_port),
            },
            log_path=self.workdir / f"logs/app-{name}.log",
            ready=lambda: port_open(app_port) and http_ok(f"http://127.0.0.1:{approvals_port}/health"),
        )
        process.start()
        return process, f"http://127.0.0.1:{app_port}"

    @contextlib.contextmanager
    def serving(self, name: str, module: str) -> Iterator[ManagedProcess]:
        """Another Restate service beside ours (`python -m MODULE PORT`, e.g. a test probe or the
        benchmark's floor), registered on this stack's server while the block runs."""
        port = free_port()
        process = ManagedProcess(
            name=name,
            argv=[sys.executable, "-m", module, str(port)],
            env=self.service_env(),
            log_path=self.workdir / f"logs/{module}.log",
            ready=lambda: port_open(port),
        )
        process.start()
        try:
            registered = httpx.post(
                f"{self.admin_url}/deployments",
                json={"uri": f"http://127.0.0.1:{port}", "force": True},
                timeout=30,
            )
            if registered.status_code >= 300:
                raise StackError(f"registering {name} failed: {registered.status_code} {registered.text}")
            yield process
        finally:
            process.stop()

    def register(self) -> dict[str, Any]:
        """Register (or re-register, with force) the agent service's deployment with Restate."""
        response = httpx.post(
            f"{self.admin_url}/deployments",
            json={"uri": self.app_url, "force": True},
            timeout=30.0,
        )
        if response.status_code >= 300:
            raise StackError(f"registering {self.app_url} failed: {response.status_code} {response.text}")
        body: dict[str, Any] = response.json()
        return body

    def start(self) -> Stack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.external_restate:
            # A fresh request-identity key pair per stack: the agent endpoint accepts only this server.
            self.identity_key_file, self.identity_public_key = request_identity.generate(
                self.workdir / "keys"
            )
        try:
            # The three start side by side (none needs another to come up); registering needs all.
            self.tools = self._tools_process()
            self.app = self._app_process()
            if not self.external_restate:
                self.restate = self._restate_process()
                self.restate.launch()
            for process in (self.tools, self.app):
                process.launch()
            if self.restate is not None:
                self.restate.wait_ready(RESTATE_READY_SECONDS)
            self.tools.wait_ready()
            self.app.wait_ready()
            self.register()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in (self.app, self.tools, self.restate):
            if process is not None:
                process.stop()

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run the Restate CLI against this stack's server."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("RESTATE_")}
        env.update({"RESTATE_ADMIN_URL": self.admin_url, "RESTATE_INGRESS_URL": self.ingress_url})
        return subprocess.run(
            [str(RESTATE_CLI_BIN), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def call(
        self, agent: str, key: str, handler: str, body: Any = None, timeout: float = 120.0
    ) -> httpx.Response:
        """Call a handler through the Restate ingress and wait for its answer."""
        return self._ingress_post(f"/{agent}/{key}/{handler}", body, timeout=timeout)

    def send(self, agent: str, key: str, handler: str, body: Any, idempotency_key: str | None = None) -> str:
        """Fire-and-forget through the ingress; returns the invocation id."""
        headers = {"idempotency-key": idempotency_key} if idempotency_key else {}
        response = self._ingress_post(f"/{agent}/{key}/{handler}/send", body, headers=headers)
        if response.status_code != 202:
            raise StackError(f"send {agent}/{key}/{handler}: {response.status_code} {response.text}")
        invocation_id: str = response.json()["invocationId"]
        return invocation_id

    def status(self, agent: str, key: str) -> dict[str, Any]:
        response = self.call(agent, key, "status", timeout=30.0)
        response.raise_for_status()
        view: dict[str, Any] = response.json()
        return view

    def wait_for_state(
        self, agent: str, key: str, states: set[str], timeout: float = 120.0
    ) -> dict[str, Any]:
        """Poll `status` until the task is in one of `states`; returns that view."""
        seen: dict[str, Any] = {}

        def reached() -> bool:
            response = self.call(agent, key, "status", timeout=10.0)
            if response.status_code != 200:
                return False
            seen.update(response.json())
            return seen.get("state") in states

        try:
            wait_until(
                reached, timeout=timeout, interval=0.1, what=f"{agent}/{key} to reach {sorted(states)}"
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last view: {seen}") from None
        return seen

    def decide(
        self,
        agent: str,
        key: str,
        decision: str = "approve",
        approver: str = "ops-lead",
        comment: str | None = None,
        approval_hash: str | None = None,
    ) -> httpx.Response:
        """Decide the task's pending approval the way an integration does: the signed webhook
        (hash read from status unless given); the webhook's answer."""
        if approval_hash is None:
            pending = self.status(agent, key).get("pending_approval") or {}
            approval_hash = pending.get("approval_hash", "0" * 64)
        body = {
            "agent": agent,
            "task_id": key,
            "decision": decision,
            "approver": approver,
            "comment": comment,
            "approval_hash": approval_hash,
        }
        return self.signed_webhook(body)

    def signed_webhook(
        self, payload: Mapping[str, Any] | bytes, secret: str | None = None, timestamp: int | None = None
    ) -> httpx.Response:
        """POST a decision to the approvals webhook, signed as a real sender would sign it."""
        from app.approvals.signature import signed_headers

        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return httpx.post(
            f"{self.approvals_url}/webhooks/approval",
            content=body,
            headers={
                "content-type": "application/json",
                **signed_headers(secret or self.webhook_secret, body, timestamp),
            },
            timeout=30.0,
        )

    # --- credentials (the services run with ENV=development and these well-known values) -----

    @property
    def webhook_secret(self) -> str:
        from app.settings import DEV_WEBHOOK_SECRET

        return self.extra_env.get("APPROVAL_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET)

    @property
    def operator_auth(self) -> dict[str, str]:
        from app.settings import DEV_OPERATOR_TOKEN

        return {"authorization": f"Bearer {self.extra_env.get('OPERATOR_TOKEN', DEV_OPERATOR_TOKEN)}"}

    @property
    def tools_auth(self) -> dict[str, str]:
        from tools.service.settings import DEV_TOOLS_API_TOKEN

        return {"authorization": f"Bearer {self.extra_env.get('TOOLS_API_TOKEN', DEV_TOOLS_API_TOKEN)}"}

    @property
    def expenses_auth(self) -> dict[str, str]:
        from tools.service.settings import DEV_EXPENSES_API_TOKEN

        token = self.extra_env.get("EXPENSES_API_TOKEN", DEV_EXPENSES_API_TOKEN)
        return {"authorization": f"Bearer {token}"}

    def approver_credential(self, approver: str) -> str:
        """Issue a personal inbox credential for `approver` in this stack's database."""
        from app.approvals.identity import credentials_for

        return credentials_for(self.database_url).issue(approver)

    def tools_get(self, path: str, params: Mapping[str, Any] | None = None) -> httpx.Response:
        """GET one of the tool service's routes with the credential that route takes."""
        expense_route = path.startswith(("/expenses", "/ledger"))
        auth = self.expenses_auth if expense_route else self.tools_auth
        return httpx.get(f"{self.tools_url}{path}", params=dict(params or {}), headers=auth, timeout=30.0)

    def _ingress_post(
        self, path: str, body: Any, *, headers: Mapping[str, str] | None = None, timeout: float = 30.0
    ) -> httpx.Response:
        if body is None:
            # Handlers without input want an empty body and no content type.
            return httpx.post(f"{self.ingress_url}{path}", headers=dict(headers or {}), timeout=timeout)
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(
            f"{self.ingress_url}{path}",
            content=content,
            headers={"content-type": "application/json", **(headers or {})},
            timeout=timeout,
        )

    def sql(self, query: str) -> list[dict[str, Any]]:
        """Restate's introspection SQL through the admin API."""
        response = httpx.post(
            f"{self.admin_url}/query",
            json={"query": query},
            headers={"accept": "application/json"},
            timeout=30.0,
        )
        response.raise_for_status()
        rows: list[dict[str, Any]] = response.json()["rows"]
        return rows


@contextlib.contextmanager
def running_stack(workdir: Path, database_url: str, **options: Any) -> Iterator[Stack]:
    stack = Stack(workdir=workdir, database_url=database_url, **options)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
