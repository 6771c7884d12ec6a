"""A refused first start leaves nothing behind, not even its Idempotency-Key.

Restate keeps an invocation's outcome under its Idempotency-Key, so a `run` refused for bad input
would answer every later send with that key "PreviouslyAccepted" and the refusal, and the corrected
start would never run. As Stripe does for requests that fail validation, the refusal is not kept:
the refused `run` sends its own invocation id to `RefusedStarts/forget`, which purges it through the
admin API two seconds after it completed. What was refused stays in that handler's journal and in
the agent service's log.

`RefusedStarts` is `ingress_private`: only an agent's `run` reaches it, so nobody can purge another
invocation from the ingress.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from urllib.parse import quote

import httpx
import restate
from pydantic import BaseModel, Field
from restate import Context, ObjectContext, RunOptions, TerminalError

from app.settings import get_settings

log = logging.getLogger(__name__)


class RefusedStart(TerminalError):
    """A `run` refused before it wrote anything (bad input, a bad task id, another task's id)."""


class Refusal(BaseModel):
    """What a refused `run` hands to the forgetter: which invocation, and why it was refused."""

    invocation_id: str = Field(pattern=r"^inv_[0-9A-Za-z]+$")
    agent: str
    task_id: str
    status_code: int
    reason: str


class Forgotten(BaseModel):
    invocation_id: str
    purged: bool


refused_starts = restate.Service(
    "RefusedStarts",
    description="Purges refused first starts, so their Idempotency-Key is free again. Internal.",
    ingress_private=True,
)

# The refusal is kept this long, so the sender can read why (`agentctl start` does, from the admin
# API), then purged; a resend with the same key meanwhile gets the refusal again. A purge that comes
# before the invocation has completed is retried (ctx.run's retries) until it is done.
PURGE_DELAY = timedelta(seconds=2)
PURGE_RUN_OPTIONS: RunOptions[Forgotten] = RunOptions(
    type_hint=Forgotten,
    max_attempts=20,
    initial_retry_interval=timedelta(milliseconds=200),
    max_retry_interval=timedelta(seconds=2),
)


class NotCompletedYet(Exception):
    """The refused invocation has not completed yet: the purge is retried."""


async def purge(invocation_id: str) -> Forgotten:
    """Runs only inside `ctx.run_typed`: ask the admin API to purge a completed invocation."""
    url = f"{get_settings().restate_admin_url.rstrip('/')}/invocations/{quote(invocation_id, safe='')}/purge"
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.patch(url)
    if response.status_code == 404:
        # Already gone (an earlier attempt purged it, or its retention ended).
        return Forgotten(invocation_id=invocation_id, purged=False)
    if response.status_code == 409 or response.status_code >= 500:
        raise NotCompletedYet(f"purge of {invocation_id}: {response.status_code} {response.text[:200]}")
    if response.status_code >= 300:
        raise TerminalError(f"purge of {invocation_id} refused: {response.status_code} {response.text[:200]}")
    return Forgotten(invocation_id=invocation_id, purged=True)


@refused_starts.handler()
async def forget(ctx: Context, refusal: Refusal) -> Forgotten:
    """Purge a refused start's invocation (and with it the outcome kept under its Idempotency-Key)."""
    done = await ctx.run_typed("purge", purge, PURGE_RUN_OPTIONS, invocation_id=refusal.invocation_id)
    log.info(
        "%s/%s: refused start %s (%s %s) forgotten",
        refusal.agent,
        refusal.task_id,
        refusal.invocation_id,
        refusal.status_code,
        refusal.reason,
    )
    return done


def forget_refused_start(ctx: ObjectContext, agent: str, refused: TerminalError) -> None:
    """Called by a `run` that refuses before writing anything: its invocation is purged once done."""
    refusal = Refusal(
        invocation_id=ctx.request().id,
        agent=agent,
        task_id=ctx.key(),
        status_code=refused.status_code,
        reason=refused.message[:500],
    )
    ctx.service_send(forget, refusal, send_delay=PURGE_DELAY)
