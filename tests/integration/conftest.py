"""Real-server fixtures: restate-server (the npm binary), the tool service and the agent service as
subprocesses on free ports with private dirs, registered with `force`; every process stopped by PID.

`stack` runs in the normal mode; `replay_stack` in always-replay mode (the server's invoker
inactivity timeout is 0s, so every await suspends the invocation and the next step replays the
journal from the start). `any_stack` runs a test once in each mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local import Stack, running_stack
from tests.fakes.otlp_receiver import Receiver, running_receiver


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'agents.db'}"


# The session stacks also serve an agent declared in a test module, registered only here.
THROWAWAY = {"AGENT_MODULES": "tests.integration.throwaway_agent"}


@pytest.fixture(scope="session")
def otlp() -> Iterator[tuple[Receiver, str]]:
    """The OTLP/HTTP receiver every session stack exports its spans to (and its URL)."""
    with running_receiver() as running:
        yield running


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, otlp: tuple[Receiver, str]) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    with running_stack(workdir, sqlite_url(workdir), extra_env=THROWAWAY, trace_endpoint=otlp[1]) as running:
        yield running


@pytest.fixture(scope="session")
def replay_stack(tmp_path_factory: pytest.TempPathFactory, otlp: tuple[Receiver, str]) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("replay-stack")
    with running_stack(
        workdir, sqlite_url(workdir), always_replay=True, extra_env=THROWAWAY, trace_endpoint=otlp[1]
    ) as running:
        yield running


@pytest.fixture(params=["normal", "always-replay"])
def any_stack(request: pytest.FixtureRequest) -> Stack:
    name = "stack" if request.param == "normal" else "replay_stack"
    running: Stack = request.getfixturevalue(name)
    return running
