"""The tool service's declarative base and sessions (the engine comes from common/db.py)."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker


class Base(DeclarativeBase):
    """The declarative base of every table the tool service owns."""


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose loaded objects stay readable after commit (results are built from them)."""
    return sessionmaker(engine, expire_on_commit=False)
