"""Fixtures for the tool service tests: each API test runs on SQLite and on PostgreSQL.

PostgreSQL is the local server (trust auth) at 127.0.0.1:5432; every test session creates its own
database there and drops it at the end, so parallel runs never share tables.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url
from starlette.testclient import TestClient

from common.db import make_engine
from tests.tools.calls import MovableClock
from tools.service.api import create_app
from tools.service.db import Base
from tools.service.registry import ToolRegistry
from tools.service.schema import create_schema
from tools.service.settings import DEV_EXPENSES_API_TOKEN, DEV_TOOLS_API_TOKEN, ToolsSettings

EXPENSE_SURFACES = ("/expenses", "/ledger")


def service_credentials(request: Any) -> Any:
    """What the service's legitimate callers send: the expense portal's token on the expense
    surfaces, the agent service's everywhere else (tests/tools/test_auth.py tests the refusals)."""
    path = request.url.path
    token = DEV_EXPENSES_API_TOKEN if path.startswith(EXPENSE_SURFACES) else DEV_TOOLS_API_TOKEN
    request.headers.setdefault("authorization", f"Bearer {token}")
    return request


POSTGRES_ADMIN_URL = os.environ.get(
    "TOOLS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def postgres_database_url() -> Iterator[str]:
    """A private PostgreSQL database for this test session, dropped at the end."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"tools_test_{secrets.token_hex(6)}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _empty_all_tables(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        create_schema(engine)
        with engine.begin() as connection:
            for table in reversed(Base.metadata.sorted_tables):
                connection.execute(table.delete())
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A database with no rows in it: a fresh SQLite file, or the session's PostgreSQL emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tools.service.db'}"
    url: str = request.getfixturevalue("postgres_database_url")
    _empty_all_tables(url)
    return url


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
def make_client(database_url: str, clock: MovableClock) -> Iterator[Callable[..., TestClient]]:
    """Builds started TestClients on the test's database; `settings` overrides use env names."""
    clients: list[TestClient] = []

    def make(registry: ToolRegistry | None = None, **settings: Any) -> TestClient:
        app = create_app(
            ToolsSettings(ENV="development", DATABASE_URL=database_url, **settings),
            registry=registry,
            clock=clock,
        )
        client = TestClient(app)
        client.auth = service_credentials
        client.__enter__()  # runs the lifespan: schema and demo data
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()
