"""Fixtures for the agents' tests: the anyio backend for the tests that go through a model."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
