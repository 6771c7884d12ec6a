"""A tiny machine served by the real engine, for engine behaviour no production agent should show.

`EngineProbe` runs START -> WORK -> DONE; its input can make WORK ask for an undeclared transition
(WORK -> START) or raise a permanent error, so the tests can watch the engine refuse and record them
against the real Restate server. Served with `python -m tests.integration.probe_service PORT`.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Literal

import restate
from pydantic import BaseModel
from restate import ObjectContext, ObjectSharedContext, TerminalError, VirtualObject

from app.runtime.engine import AgentEngine, Next, StepContext, TaskView
from app.runtime.machine import Machine
from app.runtime.serving import hypercorn_config, serve_until_signalled

PROBE = Machine.declare(
    "EngineProbe",
    initial="START",
    transitions={"START": ["WORK"], "WORK": ["DONE", "FAILED"]},
    terminal=["DONE", "FAILED"],
    failure="FAILED",
)


class ProbeInput(BaseModel):
    behaviour: Literal["normal", "undeclared", "terminal_error"]


class ProbeData(BaseModel):
    behaviour: str


async def start(step: StepContext[ProbeData]) -> Next:
    return Next(target="WORK")


async def work(step: StepContext[ProbeData]) -> Next:
    if step.data.behaviour == "undeclared":
        return Next(target="START")
    if step.data.behaviour == "terminal_error":
        raise TerminalError("the probe's work failed for good")
    return Next(target="DONE", result={"ok": True})


ENGINE = AgentEngine(PROBE, ProbeData, {"START": start, "WORK": work})
probe = VirtualObject("EngineProbe")


@probe.handler()
async def run(ctx: ObjectContext, request: ProbeInput) -> TaskView:
    return await ENGINE.start_or_resume(ctx, request, ProbeData(behaviour=request.behaviour))


@probe.handler(kind="shared")
async def status(ctx: ObjectSharedContext) -> TaskView:
    return await ENGINE.status(ctx)


if __name__ == "__main__":
    port = int(sys.argv[1])
    app = restate.app(services=[probe])
    asyncio.run(serve_until_signalled([(app, hypercorn_config("127.0.0.1", port))]))
