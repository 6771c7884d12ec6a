"""The tool service's declarative base and sessions (the engine comes from common/db.py)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker


class Base(DeclarativeBase):
    """The declarative base of every table the tool service owns."""


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose loaded objects stay readable after commit (results are built from them)."""
    return sessionmaker(engine, expire_on_commit=False)


def seed_where_missing(sessions: sessionmaker[Session], insert_missing: Callable[[Session], None]) -> None:
    """Insert a domain's demo rows where missing; safe at every start of every replica.

    Two processes starting at once may both find a row missing; the second one's unique violation
    means the first one's rows are there now, so one more pass inserts only what is still missing.
    """
    try:
        with sessions.begin() as session:
            insert_missing(session)
    except IntegrityError:
        with sessions.begin() as session:
            insert_missing(session)
