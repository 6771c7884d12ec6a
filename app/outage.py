"""Refused versus unreachable: the mark that tells the engine an outage (stall) from a refusal (fail)."""

from __future__ import annotations

from restate import TerminalError

# Restate keeps a step's last failure message when its quick retries run out; the engine reads
# this mark in it to tell an outage from a refusal. A refusal is a `TerminalError` without it.
MARK = "unreachable: "


class Unreachable(Exception):
    """A dependency could not be reached, timed out or is overloaded: retried, never a task failure.

    Raised from `None` by the adapters, so what Restate records per attempt is this one line, not
    the transport's traceback.
    """

    def __repr__(self) -> str:
        # Restate records `repr` of a failed attempt: carry the mark through it.
        return MARK + str(self)


def unreachable_message(message: str) -> str:
    """A message for a `RetryableError` (a 408/429 with its own delay) that carries the mark."""
    return message if message.startswith(MARK) else MARK + message


def is_unreachable(exc: TerminalError) -> bool:
    """Whether a step's final failure was an outage (its quick retries ran out) and not a refusal."""
    return exc.message.startswith(MARK)
