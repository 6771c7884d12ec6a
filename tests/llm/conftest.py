"""Fixtures for the model tests: the anyio backend, the fake Messages API and a model on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from app.llm.anthropic_model import AnthropicModel
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.llm.support import TEST_API_KEY, TEST_MODEL


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropicAPI]:
    with FakeAnthropicAPI(api_key=TEST_API_KEY) as fake:
        yield fake


@pytest.fixture
async def model(fake_api: FakeAnthropicAPI, anyio_backend: str) -> AsyncIterator[AnthropicModel]:
    async with AnthropicModel(
        api_key=TEST_API_KEY,
        model=TEST_MODEL,
        base_url=fake_api.url,
        timeout_seconds=5.0,
        max_tokens=777,
    ) as model:
        yield model
