"""The floor: a bare Restate virtual object with the journaled shape of one of our flows (five
`ctx.run` steps and one awakeable a human resolves), served by the same hypercorn setup as the
agent service. What the engine itself costs; our figures are reported as ratios to it.

Served with `python -m bench.floor PORT`.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

import restate
from pydantic import BaseModel
from restate import ObjectContext, ObjectSharedContext, VirtualObject

from app.runtime.serving import hypercorn_config, serve_until_signalled, with_lifespan

STEPS = 5
AWAKEABLE = "awakeable"

floor = VirtualObject(
    "BenchFloor",
    description="The benchmark's floor: 5 journaled steps and an awakeable.",
    # As the agents: suspended when idle (the parked figure), the journal kept after the end.
    inactivity_timeout=timedelta(seconds=1),
    journal_retention=timedelta(days=1),
)


class Step(BaseModel):
    index: int
    ok: bool = True


class FloorResult(BaseModel):
    steps: int
    decision: str


class Waiting(BaseModel):
    awakeable_id: str | None


@floor.handler()
async def run(ctx: ObjectContext, task: str) -> FloorResult:
    for index in range(STEPS):

        async def step(index: int = index) -> Step:
            return Step(index=index)

        await ctx.run_typed(f"step {index}", step, restate.RunOptions(type_hint=Step))
    awakeable_id, decided = ctx.awakeable(type_hint=str)
    ctx.set(AWAKEABLE, awakeable_id)
    decision = await decided
    ctx.clear(AWAKEABLE)
    return FloorResult(steps=STEPS, decision=decision)


@floor.handler(kind="shared")
async def waiting(ctx: ObjectSharedContext) -> Waiting:
    return Waiting(awakeable_id=await ctx.get(AWAKEABLE, type_hint=str))


if __name__ == "__main__":
    port = int(sys.argv[1])
    app = with_lifespan(restate.app(services=[floor]))
    asyncio.run(serve_until_signalled([(app, hypercorn_config("127.0.0.1", port))]))
