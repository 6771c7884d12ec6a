"""The tool service's configuration: one pydantic-settings class, read from the environment."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.environment import MIN_SECRET_BYTES, Environment, parse_environment, resolve_secrets

# The same default file as the agent service (app/settings.py): one embedded database for the
# tool service and the event log, resolved against the working directory the process starts in.
DEFAULT_DATABASE_URL = f"sqlite:///{Path('var/agents.db').resolve()}"
# Well known, so usable only with ENV=development (common/environment.py refuses them otherwise).
DEV_TOOLS_API_TOKEN = "dev-tools-api-token"
DEV_EXPENSES_API_TOKEN = "dev-expenses-api-token"


class ToolsSettings(BaseSettings):
    """Every variable the tool service reads (names as in design.md), with its default."""

    model_config = SettingsConfigDict(
        env_file=".env", env_ignore_empty=True, extra="ignore", validate_by_name=True
    )

    env: Environment = Field("production", alias="ENV")

    tools_host: str = Field("127.0.0.1", alias="TOOLS_HOST")
    tools_port: int = Field(9090, alias="TOOLS_PORT", ge=0, le=65535)
    database_url: str = Field(DEFAULT_DATABASE_URL, alias="DATABASE_URL")

    # Bearer credentials: `/tools/*` and the inspection endpoints for the agent service (and
    # agentctl, the demo); the expense REST surfaces for an expense portal. Least privilege: each
    # route takes exactly one of them.
    tools_api_token: SecretStr | None = Field(None, alias="TOOLS_API_TOKEN")
    expenses_api_token: SecretStr | None = Field(None, alias="EXPENSES_API_TOKEN")

    # How long an in-flight claim on an Idempotency-Key blocks other requests with the same key.
    # After it, a retry may take the claim over: the holder is presumed dead (a crash between the
    # claim and the commit of its effect leaves no effect behind, so re-running is safe). It must
    # outlast the slowest tool, or a slow-but-alive holder loses its claim and its work is rolled back.
    idempotency_lease_seconds: float = Field(60.0, alias="IDEMPOTENCY_LEASE_SECONDS", gt=0)

    # TESTING KNOB, refused in production. The service sleeps this long after committing the
    # in-flight claim and before executing the tool, so a test can observe a request in flight
    # (a concurrent duplicate gets 409) or kill the process between claim and effect.
    tools_simulated_latency_ms: int = Field(0, alias="TOOLS_SIMULATED_LATENCY_MS", ge=0)
    # Which tools it slows, comma-separated (empty: every tool), so a crash test waits only where
    # it kills.
    tools_simulated_latency_tools_csv: str = Field("", alias="TOOLS_SIMULATED_LATENCY_TOOLS")

    # Request bodies above this size are refused with 413 before they are parsed.
    max_body_bytes: int = Field(1024 * 1024, alias="MAX_BODY_BYTES", gt=0)

    # The expense policy the ledger enforces on its own evidence (the same variables the agent
    # service reads to choose its route; the agent may be stricter, never looser): a receipt total
    # within the tolerance of the claim, and auto-approval only up to the amount, in the categories.
    expense_total_tolerance: Decimal = Field(Decimal("0.05"), alias="EXPENSE_TOTAL_TOLERANCE", ge=0)
    auto_approve_max_amount: Decimal = Field(Decimal("50.00"), alias="AUTO_APPROVE_MAX_AMOUNT", ge=0)
    auto_approve_categories_csv: str = Field("meals,office_supplies", alias="AUTO_APPROVE_CATEGORIES")
    # An expense dated more than this many days ago is refused at submission.
    expense_max_age_days: int = Field(365, alias="EXPENSE_MAX_AGE_DAYS", gt=0)

    # Done idempotency keys and delivered (or dead) outbox rows are deleted after this many days,
    # checked every IDEMPOTENCY_SWEEP_INTERVAL_SECONDS (0: never). Longer than the agent service's
    # journal retention (7 days): a retry never comes after its journal is gone.
    idempotency_retention_days: float = Field(30.0, alias="IDEMPOTENCY_RETENTION_DAYS", gt=0)
    idempotency_sweep_interval_seconds: float = Field(
        3600.0, alias="IDEMPOTENCY_SWEEP_INTERVAL_SECONDS", ge=0
    )

    # Delivery of the outbox (tools/service/dispatcher.py): SMTP (`smtp://host:port`) and/or a
    # signed chat-style webhook. Neither set: messages stay queued for another dispatcher.
    notify_smtp_url: str | None = Field(None, alias="NOTIFY_SMTP_URL", pattern=r"^smtp://[^/]+$")
    notify_smtp_from: str = Field("agents@localhost", alias="NOTIFY_SMTP_FROM")
    # Recipients that are names (approvers) get this domain for email; unset: webhook only.
    notify_email_domain: str | None = Field(None, alias="NOTIFY_EMAIL_DOMAIN")
    notify_webhook_url: str | None = Field(None, alias="NOTIFY_WEBHOOK_URL", pattern=r"^https?://")
    notify_webhook_secret: SecretStr | None = Field(None, alias="NOTIFY_WEBHOOK_SECRET")
    notify_max_attempts: int = Field(8, alias="NOTIFY_MAX_ATTEMPTS", gt=0)
    notify_lease_seconds: float = Field(60.0, alias="NOTIFY_LEASE_SECONDS", gt=0)
    notify_retry_initial_seconds: float = Field(2.0, alias="NOTIFY_RETRY_INITIAL_SECONDS", gt=0)
    notify_retry_max_seconds: float = Field(300.0, alias="NOTIFY_RETRY_MAX_SECONDS", gt=0)
    notify_poll_seconds: float = Field(1.0, alias="NOTIFY_POLL_SECONDS", gt=0)
    # Testing knob: the process exits right after its first send, before marking it sent.
    notify_fault_exit_after_send: bool = Field(False, alias="NOTIFY_FAULT_EXIT_AFTER_SEND")

    @field_validator("env", mode="before")
    @classmethod
    def _known_environment(cls, value: object) -> Environment:
        return parse_environment(value)

    @model_validator(mode="after")
    def _fail_closed(self) -> ToolsSettings:
        resolved = resolve_secrets(
            self.env,
            {
                "TOOLS_API_TOKEN": (self.tools_api_token, DEV_TOOLS_API_TOKEN),
                "EXPENSES_API_TOKEN": (self.expenses_api_token, DEV_EXPENSES_API_TOKEN),
            },
        )
        self.tools_api_token = resolved["TOOLS_API_TOKEN"]
        self.expenses_api_token = resolved["EXPENSES_API_TOKEN"]
        if self.env == "production" and self.tools_simulated_latency_ms:
            raise ValueError("TOOLS_SIMULATED_LATENCY_MS (a testing knob) is refused when ENV=production")
        if self.env == "production" and self.notify_fault_exit_after_send:
            raise ValueError("NOTIFY_FAULT_EXIT_AFTER_SEND (a testing knob) is refused when ENV=production")
        if self.notify_webhook_url:
            # Fail closed: a webhook the receiver cannot authenticate is not sent at all.
            secret = self.notify_webhook_secret.get_secret_value() if self.notify_webhook_secret else ""
            if len(secret.encode()) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"NOTIFY_WEBHOOK_URL needs NOTIFY_WEBHOOK_SECRET of at least {MIN_SECRET_BYTES} bytes"
                )
        return self

    @property
    def tools_token(self) -> str:
        assert self.tools_api_token is not None  # resolved by _fail_closed
        return self.tools_api_token.get_secret_value()

    @property
    def expenses_token(self) -> str:
        assert self.expenses_api_token is not None  # resolved by _fail_closed
        return self.expenses_api_token.get_secret_value()

    @property
    def auto_approve_categories(self) -> list[str]:
        return [name.strip() for name in self.auto_approve_categories_csv.split(",") if name.strip()]

    def simulated_latency_for(self, tool: str) -> float:
        """Seconds the testing knob holds a call of `tool` between its claim and its effect."""
        names = {name.strip() for name in self.tools_simulated_latency_tools_csv.split(",") if name.strip()}
        if names and tool not in names:
            return 0.0
        return self.tools_simulated_latency_ms / 1000


@lru_cache(maxsize=1)
def get_tools_settings() -> ToolsSettings:
    """The process's settings, read once; tests build ToolsSettings(...) themselves."""
    return ToolsSettings()
