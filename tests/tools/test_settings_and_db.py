"""Configuration defaults and the database plumbing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

from common.db import SQLITE_BUSY_TIMEOUT_MS, UTCDateTime, make_engine, normalize_database_url
from tools.service.schema import create_schema
from tools.service.settings import ToolsSettings, get_tools_settings


def test_defaults(monkeypatch):
    for name in (
        "TOOLS_HOST",
        "TOOLS_PORT",
        "DATABASE_URL",
        "IDEMPOTENCY_LEASE_SECONDS",
        "TOOLS_SIMULATED_LATENCY_MS",
        "MAX_BODY_BYTES",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENV", "development")

    settings = ToolsSettings(_env_file=None)

    assert (settings.tools_host, settings.tools_port) == ("127.0.0.1", 9090)
    assert settings.idempotency_lease_seconds == 60
    assert settings.tools_simulated_latency_ms == 0
    assert settings.max_body_bytes == 1024 * 1024
    database = Path(settings.database_url.removeprefix("sqlite:///"))
    assert database.is_absolute() and database.parts[-2:] == ("var", "agents.db")


def test_the_latency_knob_slows_only_the_tools_it_names(monkeypatch):
    monkeypatch.setenv("ENV", "development")
    every = ToolsSettings(_env_file=None, TOOLS_SIMULATED_LATENCY_MS=1500)
    assert every.simulated_latency_for("create_ticket") == every.simulated_latency_for("get_order") == 1.5
    named = ToolsSettings(
        _env_file=None, TOOLS_SIMULATED_LATENCY_MS=1500, TOOLS_SIMULATED_LATENCY_TOOLS=" record_expense, x"
    )
    assert named.simulated_latency_for("record_expense") == 1.5
    assert named.simulated_latency_for("create_ticket") == 0.0
    assert ToolsSettings(_env_file=None).simulated_latency_for("record_expense") == 0.0


def test_environment_variables_are_read(monkeypatch):
    monkeypatch.setenv("ENV", "development")
    monkeypatch.setenv("TOOLS_PORT", "9191")
    monkeypatch.setenv("IDEMPOTENCY_LEASE_SECONDS", "5")
    monkeypatch.setenv("TOOLS_SIMULATED_LATENCY_MS", "250")
    get_tools_settings.cache_clear()
    try:
        settings = get_tools_settings()
        assert (settings.tools_port, settings.idempotency_lease_seconds) == (9191, 5)
        assert settings.tools_simulated_latency_ms == 250
        assert get_tools_settings() is settings
    finally:
        get_tools_settings.cache_clear()


@pytest.mark.parametrize(
    "url", ["postgresql://postgres@127.0.0.1:5432/test", "postgres://postgres@127.0.0.1:5432/test"]
)
def test_plain_postgresql_urls_use_psycopg_3(url):
    assert normalize_database_url(url).drivername == "postgresql+psycopg"


def test_a_plain_postgresql_url_connects(postgres_database_url):
    engine = make_engine(postgres_database_url.replace("postgresql+psycopg://", "postgresql://"))
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_a_sqlite_engine_creates_its_directory_and_uses_wal(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'nested' / 'var' / 'agents.db'}")
    try:
        create_schema(engine)
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == SQLITE_BUSY_TIMEOUT_MS
        assert (tmp_path / "nested" / "var" / "agents.db").is_file()
    finally:
        engine.dispose()


def test_timestamps_are_utc_aware_and_naive_ones_are_refused():
    column = UTCDateTime()
    plus_two = datetime(2025, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))

    class _Dialect:
        name = "sqlite"

    stored = column.process_bind_param(plus_two, _Dialect())  # type: ignore[arg-type]
    assert stored == datetime(2025, 1, 1, 10, 0)
    assert column.process_result_value(stored, _Dialect()) == datetime(2025, 1, 1, 10, 0, tzinfo=UTC)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="naive"):
        column.process_bind_param(datetime(2025, 1, 1), _Dialect())  # type: ignore[arg-type]
