"""The container image, checked without a Docker engine: hadolint on the Dockerfile, what the build
context admits, the Debian packages it pins against the ones these tests run with, its production
defaults (the services refuse to start on them without secrets), and its health check."""

from __future__ import annotations

import http.server
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.console.api import MERMAID_JS
from common import healthcheck
from deploy.local import ROOT, free_port

DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(index for index, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_hadolint_passes_on_every_rule() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_really_run(tmp_path: Path) -> None:
    """The check above can fail: an unpinned apt install of the same image is refused."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN apt-get update && apt-get install -y tesseract-ocr\n")
    result = subprocess.run([str(HADOLINT), str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "DL3008" in result.stdout


def dockerignore_admits(path: str) -> bool:
    """.dockerignore is an allow-list: `*`, then `!name` for what the build may see."""
    admitted = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated, pattern = line.startswith("!"), line.lstrip("!").rstrip("/")
        if pattern == "*" or path == pattern or path.startswith(pattern + "/"):
            admitted = negated
    return admitted


def test_the_build_context_admits_what_is_copied_and_nothing_local() -> None:
    sources = [
        source
        for word, rest in instructions()
        if word == "COPY" and "--from" not in rest
        for source in shlex.split(rest)[:-1]
    ]
    assert "pyproject.toml" in sources and "app" in sources
    for source in sources:
        assert dockerignore_admits(source.rstrip("/")), f"{source} is copied but .dockerignore drops it"
        assert (ROOT / source).exists(), source
    for local in (".venv", "node_modules", "var", ".git", "tests", "bench", "deploy/k8s", ".env"):
        assert not dockerignore_admits(local), f"{local} would reach the build context"


def test_the_image_runs_as_a_non_root_user_with_a_health_check_and_the_diagram_library() -> None:
    stage = final_stage()
    [user] = [rest for word, rest in stage if word == "USER"]
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0"
    [check] = [rest for word, rest in stage if word == "HEALTHCHECK"]
    assert '"common.healthcheck"' in check
    [command] = [rest for word, rest in stage if word == "CMD"]
    assert command == '["python", "-m", "app"]'
    # The console serves Mermaid from the checkout's node_modules: the image puts it at that path.
    copied = [rest for word, rest in stage if word == "COPY" and "--from=assets" in rest]
    assert any(rest.endswith(str(MERMAID_JS.relative_to(ROOT))) for rest in copied), copied


def installed_version(package: str) -> str:
    return subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True, check=True
    ).stdout


def test_the_image_pins_the_tesseract_these_tests_run_with() -> None:
    pins = dict(re.findall(r"(tesseract-ocr(?:-eng)?)=(\S+)", DOCKERFILE.read_text()))
    assert set(pins) == {"tesseract-ocr", "tesseract-ocr-eng"}
    for package, version in pins.items():
        assert installed_version(package) == version, package


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in final_stage():
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


@pytest.mark.parametrize(
    ("module", "refusal"),
    [
        ("app", "APPROVAL_WEBHOOK_SECRET is not set"),
        ("tools", "EXPENSES_API_TOKEN is not set"),
    ],
)
def test_the_images_defaults_are_production_and_refuse_to_start_without_secrets(
    tmp_path: Path, module: str, refusal: str
) -> None:
    env = image_env()
    assert env["ENV"] == "production"
    env |= {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "APP_PORT": "0", "APPROVALS_PORT": "0"}
    env |= {"TOOLS_PORT": "0", "DATABASE_URL": f"sqlite:///{tmp_path / 'agents.db'}"}
    result = subprocess.run(
        [sys.executable, "-m", module],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0
    assert "refusing to start" in result.stderr and refusal in result.stderr, result.stderr


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def serving_health() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_the_health_check_passes_when_the_containers_service_answers(serving_health: int) -> None:
    closed = str(free_port())
    assert healthcheck.main_for({"APPROVALS_PORT": str(serving_health), "TOOLS_PORT": closed}) == 0
    assert healthcheck.main_for({"APPROVALS_PORT": closed, "TOOLS_PORT": str(serving_health)}) == 0


def test_the_health_check_fails_when_nothing_answers() -> None:
    assert healthcheck.main_for({"APPROVALS_PORT": str(free_port()), "TOOLS_PORT": str(free_port())}) == 1
