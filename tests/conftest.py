"""The whole suite runs with ENV=development (the well-known secrets), as the stack's services do:
production is the default, and tests/app/test_settings.py shows what it refuses."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("ENV", "development")

# `make reliability` sets this: the slow sets run in full there, and only there.
RELIABILITY_FULL = os.environ.get("RELIABILITY_FULL") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `reliability_only` are deselected (not skipped) outside `make reliability`."""
    if RELIABILITY_FULL:
        return
    slow = [item for item in items if item.get_closest_marker("reliability_only")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item not in slow]
