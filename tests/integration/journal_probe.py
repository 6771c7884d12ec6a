"""A two-step service for the journal guard: `JournalProbe.run` journals `first` then `second`, or,
with `JOURNAL_PROBE_REORDERED=1` (standing in for a code change), `second` then `first`.
Served with `python -m tests.integration.journal_probe PORT`."""

from __future__ import annotations

import asyncio
import os
import sys

import restate
from restate import ObjectContext, VirtualObject

from app.runtime.serving import hypercorn_config, serve_until_signalled

probe = VirtualObject("JournalProbe")


async def first() -> str:
    return "first"


async def second() -> str:
    return "second"


@probe.handler()
async def run(ctx: ObjectContext) -> list[str]:
    steps = [("first", first), ("second", second)]
    if os.environ.get("JOURNAL_PROBE_REORDERED") == "1":
        steps.reverse()
    return [await ctx.run_typed(name, action) for name, action in steps]


if __name__ == "__main__":
    port = int(sys.argv[1])
    asyncio.run(serve_until_signalled([(restate.app(services=[probe]), hypercorn_config("127.0.0.1", port))]))
