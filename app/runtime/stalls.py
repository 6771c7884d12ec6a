"""An unreachable dependency stalls a step, never fails it: retried with capped backoff, visibly."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any, TypeVar

import restate
from pydantic import BaseModel
from restate import ObjectContext, TerminalError
from restate.exceptions import RetryableError
from restate.serde import BytesSerde

from app.outage import MARK, Unreachable, is_unreachable

T = TypeVar("T")

# The state key of a stalled step (apart from the task record, which changes only at transitions).
STALL_KEY = "stall"
MAX_ERROR_LENGTH = 500

log = logging.getLogger(__name__)
# Handler code runs again on every replay: this logger drops records while the handler replays.
replay_log: logging.Logger = restate.getLogger(__name__)  # type: ignore[no-untyped-call]


class StallPolicy(BaseModel):
    """How long a stalled step waits between retry rounds (journaled with the task at creation)."""

    initial_seconds: float = 5.0
    max_seconds: float = 300.0

    def delay(self, rounds: int) -> float:
        return float(min(self.max_seconds, self.initial_seconds * 2 ** max(0, rounds - 1)))


class Stall(BaseModel):
    """A step waiting out an outage: where, since when, how often tried, why, and when next."""

    agent: str
    task_id: str
    state: str
    step: str
    rounds: int
    since: float
    last_error: str
    next_retry_at: float
    # The awakeable that wakes the wait early (`agentctl resume`); harmless if anyone resolves it
    # (it only brings the next retry forward), and never shown in a public view.
    nudge_id: str


class StallRecord(BaseModel):
    """A stall that ended (the step went on): kept in the audit record of the transition after it."""

    step: str
    rounds: int
    since: float
    until: float
    last_error: str


class OneLinePerFailedAttempt(logging.Filter):
    """Drops the SDK's traceback for a journaled step's failed attempt, which `one_line_attempts`
    has already logged in one line: the SDK logs each one as "Exception in do_progress" with the
    VM's error and the attempt's whole stack (restate-sdk 1.3), 15 to 90 lines per attempt."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "restate.server_context" or not record.exc_info:
            return True
        error = record.exc_info[1]
        return not (record.msg == "Exception in do_progress" and "Related command: run [" in str(error))


def one_line_attempts(
    what: str, action: Callable[..., Coroutine[Any, Any, T]]
) -> Callable[..., Coroutine[Any, Any, T]]:
    """The action, logging one line per failed attempt; an outage's transport traceback is dropped
    (what Restate records per attempt is then the one-line message, not 90 lines of httpx)."""

    async def attempt(*args: Any, **kwargs: Any) -> T:
        try:
            return await action(*args, **kwargs)
        except TerminalError:
            raise
        except RetryableError as exc:
            log.warning("%s: attempt failed (retried): %s", what, exc.message)
            raise
        except Unreachable as exc:
            log.warning("%s: attempt failed (retried): %s", what, exc)
            raise Unreachable(str(exc)) from None
        except Exception as exc:
            # Transient but not an outage (e.g. a model answer that failed validation): retried
            # a bounded number of times, then the task fails with this reason.
            log.warning("%s: attempt failed (retried): %s: %s", what, type(exc).__name__, exc)
            raise

    return attempt


async def through_outages(
    ctx: ObjectContext,
    stall: Stall,
    policy: StallPolicy,
    run_once: Callable[[str], Awaitable[T]],
) -> tuple[T, StallRecord | None]:
    """Run one journaled step; while its dependency is unreachable, stall and retry it, never fail.

    `run_once(name)` runs the step once under a journal name (with its quick retries). When those
    run out on an outage, the stall is written (state key `stall`, shown by `status`), the task
    waits a durable, doubling, capped delay (or an operator's nudge) and tries again under a new
    name. A refusal (a `TerminalError` without the outage mark) or a cancellation goes up as it is.
    """
    rounds = 0
    since = 0.0
    last_error = ""
    while True:
        name = stall.step if rounds == 0 else f"{stall.step} (retry {rounds})"
        try:
            result = await run_once(name)
        except TerminalError as exc:
            if not is_unreachable(exc):
                raise
            now = await ctx.time()
            rounds += 1
            since = since or now
            last_error = exc.message.removeprefix(MARK)[:MAX_ERROR_LENGTH]
            delay = policy.delay(rounds)
            nudge_id, nudge = ctx.awakeable(serde=BytesSerde())
            current = stall.model_copy(
                update={
                    "rounds": rounds,
                    "since": since,
                    "last_error": last_error,
                    "next_retry_at": now + delay,
                    "nudge_id": nudge_id,
                }
            )
            ctx.set(STALL_KEY, current)
            replay_log.warning(
                "%s/%s %s: stalled, retry round %d in %.0f s: %s",
                stall.agent,
                stall.task_id,
                stall.step,
                rounds,
                delay,
                last_error,
            )
            await restate.wait_completed(ctx.sleep(timedelta(seconds=delay)), nudge)
            continue
        if rounds == 0:
            return result, None
        ctx.clear(STALL_KEY)
        until = await ctx.time()
        replay_log.info("%s/%s %s: recovered after %d rounds", stall.agent, stall.task_id, stall.step, rounds)
        return result, StallRecord(
            step=stall.step, rounds=rounds, since=since, until=until, last_error=last_error
        )
