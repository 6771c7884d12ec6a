"""Fail closed: production is the default, an unknown ENV is refused, and production refuses to
serve with unset, development or short secrets, naming every offending variable in one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.settings import DEV_WEBHOOK_SECRET, MissingSecret, Settings
from tools.service.settings import ToolsSettings

ROOT = Path(__file__).resolve().parents[2]
STRONG = "s" * 32
STRONG_SECRETS: dict[str, Any] = dict.fromkeys(
    ("APPROVAL_WEBHOOK_SECRET", "OPERATOR_TOKEN", "TOOLS_API_TOKEN"), STRONG
)
KEY = "publickeyv1_7u9GNwD5S1NaYfCJKTc8t17bLxAZZkZ9PX5BJDyTjNhh"
APP_SECRETS = ("APPROVAL_WEBHOOK_SECRET", "OPERATOR_TOKEN", "TOOLS_API_TOKEN")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        *APP_SECRETS,
        "ENV",
        "EXPENSES_API_TOKEN",
        "RESTATE_IDENTITY_PUBLIC_KEYS",
        "AGENT_FAULT_PLAN_FILE",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_production_is_the_default_and_has_no_secret_to_fall_back_on(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings(_env_file=None)
    assert settings.env == "production"
    problems = "; ".join(settings.startup_problems())
    for variable in (*APP_SECRETS, "RESTATE_IDENTITY_PUBLIC_KEYS"):
        assert variable in problems
    with pytest.raises(MissingSecret, match="APPROVAL_WEBHOOK_SECRET"):
        _ = settings.webhook_secret


@pytest.mark.parametrize("env", ["prod", "Production", "dev", "staging", ""])
def test_an_unknown_env_is_refused(clean_env: pytest.MonkeyPatch, env: str) -> None:
    clean_env.setenv("ENV", env or " ")
    with pytest.raises(ValidationError, match="ENV must be 'production' or 'development'"):
        Settings(_env_file=None)


def test_production_refuses_development_and_short_secrets_naming_each(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings(
        _env_file=None,
        APPROVAL_WEBHOOK_SECRET=DEV_WEBHOOK_SECRET,
        OPERATOR_TOKEN="tok",
        TOOLS_API_TOKEN=STRONG,
        RESTATE_IDENTITY_PUBLIC_KEYS=KEY,
    )
    [problem] = settings.startup_problems()
    assert "APPROVAL_WEBHOOK_SECRET is the development value" in problem
    assert "OPERATOR_TOKEN is shorter than 32 bytes" in problem
    assert "TOOLS_API_TOKEN" not in problem


def test_production_with_strong_secrets_and_identity_keys_may_serve(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings(
        _env_file=None,
        **STRONG_SECRETS,
        RESTATE_IDENTITY_PUBLIC_KEYS=f" {KEY} , {KEY.replace('7u9', '8u9')} ",
    )
    assert settings.startup_problems() == []
    assert len(settings.restate_identity_public_keys) == 2


def test_production_refuses_the_fault_switch(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings(
        _env_file=None,
        **STRONG_SECRETS,
        RESTATE_IDENTITY_PUBLIC_KEYS=KEY,
        AGENT_FAULT_PLAN_FILE="/tmp/plan",
    )
    assert any("AGENT_FAULT_PLAN_FILE" in problem for problem in settings.startup_problems())


def test_identity_keys_must_look_like_restate_public_keys(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="publickeyv1_"):
        Settings(_env_file=None, ENV="development", RESTATE_IDENTITY_PUBLIC_KEYS="ssh-ed25519 AAAA")


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
def test_an_otlp_endpoint_that_is_not_http_is_refused(clean_env: pytest.MonkeyPatch, variable: str) -> None:
    with pytest.raises(ValidationError, match="an OTLP/HTTP endpoint is an http:// or https:// URL"):
        clean_env.setenv(variable, "grpc://collector:4317")
        Settings(_env_file=None, ENV="development")


def test_traces_go_to_the_signal_endpoint_or_the_base_one_with_its_path(
    clean_env: pytest.MonkeyPatch,
) -> None:
    assert Settings(_env_file=None, ENV="development").traces_endpoint is None
    base = Settings(_env_file=None, ENV="development", OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318/")
    assert base.traces_endpoint == "http://collector:4318/v1/traces"
    signal = Settings(
        _env_file=None,
        ENV="development",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="https://traces.example/ingest",
    )
    assert signal.traces_endpoint == "https://traces.example/ingest"


def test_development_uses_the_well_known_values_only_when_asked(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings(_env_file=None, ENV="development")
    assert settings.webhook_secret == DEV_WEBHOOK_SECRET
    assert settings.startup_problems() == []


def test_the_tool_service_fails_closed_too(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError) as refused:
        ToolsSettings(_env_file=None, TOOLS_API_TOKEN="short")
    message = str(refused.value)
    assert (
        "TOOLS_API_TOKEN is shorter than 32 bytes" in message and "EXPENSES_API_TOKEN is not set" in message
    )
    with pytest.raises(ValidationError, match="TOOLS_SIMULATED_LATENCY_MS"):
        ToolsSettings(
            _env_file=None, TOOLS_API_TOKEN=STRONG, EXPENSES_API_TOKEN=STRONG, TOOLS_SIMULATED_LATENCY_MS=5
        )


def refusal_of(module: str, env: dict[str, str]) -> str:
    """`python -m MODULE` refusing to start: exit 2 and one line on stderr, no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    return line


@pytest.mark.parametrize("module", ["app", "tools"])
def test_a_service_refuses_to_start_with_one_clear_line(module: str, tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"ENV", *APP_SECRETS, "EXPENSES_API_TOKEN", "RESTATE_IDENTITY_PUBLIC_KEYS"}
    }
    env.update({"APPROVAL_WEBHOOK_SECRET": "tok", "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"})
    line = refusal_of(module, env)
    assert "refusing to start" in line
    expected = (
        ("APPROVAL_WEBHOOK_SECRET is shorter", "OPERATOR_TOKEN is not set", "RESTATE_IDENTITY_PUBLIC_KEYS")
        if module == "app"
        else ("TOOLS_API_TOKEN is not set", "EXPENSES_API_TOKEN is not set")
    )
    for words in expected:
        assert words in line, line


@pytest.mark.parametrize(
    ("module", "variable", "names"),
    [
        ("app", "APP_PORT", "APP_HOST/APP_PORT"),
        ("app", "APPROVALS_PORT", "APP_HOST/APPROVALS_PORT"),
        ("tools", "TOOLS_PORT", "TOOLS_HOST/TOOLS_PORT"),
    ],
)
def test_a_port_in_use_is_one_line_naming_it(module: str, variable: str, names: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {key: value for key, value in os.environ.items() if not key.startswith(("APP_", "TOOLS_"))}
        env.update(
            {
                "ENV": "development",
                "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
                "APP_PORT": "0",
                "APPROVALS_PORT": "0",
                "TOOLS_PORT": "0",
                variable: str(port),
            }
        )
        line = refusal_of(module, env)
    assert line.endswith(
        f"refusing to start: cannot listen on 127.0.0.1:{port} ({names}): address already in use"
    )
