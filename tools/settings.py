"""The tool service's configuration: one pydantic-settings class, read from the environment."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The same default file as the agent service (app/settings.py): one embedded database for the
# tool service and the event log, resolved against the working directory the process starts in.
DEFAULT_DATABASE_URL = f"sqlite:///{Path('var/agents.db').resolve()}"


class ToolsSettings(BaseSettings):
    """Every variable the tool service reads (names as in design.md), with its default."""

    model_config = SettingsConfigDict(
        env_file=".env", env_ignore_empty=True, extra="ignore", validate_by_name=True
    )

    tools_host: str = Field("127.0.0.1", alias="TOOLS_HOST")
    tools_port: int = Field(9090, alias="TOOLS_PORT", ge=0, le=65535)
    database_url: str = Field(DEFAULT_DATABASE_URL, alias="DATABASE_URL")

    # How long an in-flight claim on an Idempotency-Key blocks other requests with the same key.
    # After it, a retry may take the claim over: the holder is presumed dead (a crash between the
    # claim and the commit of its effect leaves no effect behind, so re-running is safe). It must
    # outlast the slowest tool, or a slow-but-alive holder loses its claim and its work is rolled back.
    idempotency_lease_seconds: float = Field(60.0, alias="IDEMPOTENCY_LEASE_SECONDS", gt=0)

    # TESTING KNOB, keep 0 in production. The service sleeps this long after committing the
    # in-flight claim and before executing the tool, so a test can observe a request in flight
    # (a concurrent duplicate gets 409) or kill the process between claim and effect.
    tools_simulated_latency_ms: int = Field(0, alias="TOOLS_SIMULATED_LATENCY_MS", ge=0)

    # Request bodies above this size are refused with 413 before they are parsed.
    max_body_bytes: int = Field(1024 * 1024, alias="MAX_BODY_BYTES", gt=0)


@lru_cache(maxsize=1)
def get_tools_settings() -> ToolsSettings:
    """The process's settings, read once; tests build ToolsSettings(...) themselves."""
    return ToolsSettings()
