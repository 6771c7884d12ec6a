"""Fail-closed configuration shared by both services: the `ENV` switch and the secrets' rules.

Production is the default; only an explicit `ENV=development` allows the well-known development
secrets. In production every secret must be set, must not be a development value and must be at
least 32 bytes long; all offending variables are named in one line, so an operator fixes them in
one go instead of meeting them one traceback at a time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Literal, NoReturn, TypeVar

from pydantic import SecretStr, ValidationError

Environment = Literal["production", "development"]
ENVIRONMENTS: tuple[Environment, ...] = ("production", "development")
MIN_SECRET_BYTES = 32

S = TypeVar("S")


def parse_environment(value: object) -> Environment:
    """`production` or `development`, exactly: a typo such as `prod` must not weaken anything."""
    if value == "production" or value == "development":
        return value
    raise ValueError(f"ENV must be 'production' or 'development', not {value!r}")


def resolve_secrets(
    env: Environment, secrets: Mapping[str, tuple[SecretStr | None, str]]
) -> dict[str, SecretStr]:
    """Each variable's secret, given `{variable: (value or None, development default)}`.

    Development fills in the defaults of unset variables; production refuses unset, development
    and short secrets, naming every offending variable in one ValueError.
    """
    resolved: dict[str, SecretStr] = {}
    problems: list[str] = []
    for variable, (value, development_default) in secrets.items():
        if env == "development":
            resolved[variable] = value if value is not None else SecretStr(development_default)
            continue
        if value is None:
            problems.append(f"{variable} is not set")
        elif value.get_secret_value() == development_default:
            problems.append(f"{variable} is the development value")
        elif len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            problems.append(f"{variable} is shorter than {MIN_SECRET_BYTES} bytes")
        else:
            resolved[variable] = value
    if problems:
        raise ValueError("ENV=production refuses: " + "; ".join(problems))
    return resolved


def one_line(exc: ValidationError) -> str:
    """A settings ValidationError as one line: what is wrong with which variable."""
    parts = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        where = ".".join(str(part) for part in error["loc"])
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def load_or_exit(service: str, load: Callable[[], S]) -> S:
    """The settings, or one clear line on stderr and exit status 2 (never a traceback)."""
    try:
        return load()
    except ValidationError as exc:
        refuse(service, one_line(exc))


def refuse(service: str, reason: str) -> NoReturn:
    sys.stderr.write(f"{service}: refusing to start: {reason}\n")
    raise SystemExit(2)
