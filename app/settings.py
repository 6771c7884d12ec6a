"""The agent service's configuration: one pydantic-settings class, read from the environment."""

from __future__ import annotations

import json
from decimal import Decimal
from functools import cached_property, lru_cache
from pathlib import Path

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.environment import Environment, parse_environment, resolve_secrets


def default_database_url() -> str:
    """The SQLite file under the current directory's var/ (the checkout, for `make demo`)."""
    return f"sqlite:///{Path('var/agents.db').resolve()}"


DEFAULT_DATABASE_URL = default_database_url()
# Well known, so usable only with ENV=development (common/environment.py refuses them otherwise).
DEV_WEBHOOK_SECRET = "dev-approval-webhook-secret"
DEV_OPERATOR_TOKEN = "dev-operator-token"
DEV_TOOLS_API_TOKEN = "dev-tools-api-token"
PUBLIC_KEY_PREFIX = "publickeyv1_"


class ModelPrice(BaseModel):
    """What a model costs, in US dollars per million tokens."""

    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)


# Anthropic's list prices (USD per million tokens); MODEL_PRICES overrides or extends them.
DEFAULT_MODEL_PRICES: dict[str, dict[str, str]] = {
    "offline": {"input": "0", "output": "0"},
    "claude-opus-4-1": {"input": "15", "output": "75"},
    "claude-sonnet-4-5": {"input": "3", "output": "15"},
    "claude-haiku-4-5": {"input": "1", "output": "5"},
}
_PRICE_TABLE = TypeAdapter(dict[str, ModelPrice])


def parse_model_prices(text: str) -> dict[str, ModelPrice]:
    """MODEL_PRICES, a JSON object of model -> {"input": USD, "output": USD} per million tokens,
    over the defaults; ValueError naming what is wrong."""
    try:
        given = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"MODEL_PRICES is not JSON: {exc}") from None
    try:
        return {**_PRICE_TABLE.validate_python(DEFAULT_MODEL_PRICES), **_PRICE_TABLE.validate_python(given)}
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ValueError(
            'MODEL_PRICES maps each model to {"input": USD, "output": USD} per million tokens: ' + problems
        ) from None


class DatabaseSetting(BaseSettings):
    """DATABASE_URL alone, read as `Settings` reads it (the environment, then `.env`): for tools
    that read the service's database and need none of its secrets (agentctl)."""

    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore")

    database_url: str = Field(default_factory=default_database_url, alias="DATABASE_URL")


def configured_database_url() -> str:
    return DatabaseSetting().database_url


class Settings(BaseSettings):
    """Every variable named in design.md, plus the tuning knobs of the agent service."""

    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore")

    env: Environment = Field("production", alias="ENV")

    restate_ingress_url: str = Field("http://127.0.0.1:8080", alias="RESTATE_INGRESS_URL")
    restate_admin_url: str = Field("http://127.0.0.1:9070", alias="RESTATE_ADMIN_URL")

    app_host: str = Field("127.0.0.1", alias="APP_HOST")
    app_port: int = Field(9080, alias="APP_PORT")
    approvals_port: int = Field(9081, alias="APPROVALS_PORT")

    tools_url: str = Field("http://127.0.0.1:9090", alias="TOOLS_URL")
    # A tool call that takes longer than this is abandoned and retried by Restate with the same
    # Idempotency-Key, so the tool service answers the retry from its store, never acting twice.
    tool_timeout_seconds: float = Field(30.0, alias="TOOL_TIMEOUT_SECONDS", gt=0)

    database_url: str = Field(DEFAULT_DATABASE_URL, alias="DATABASE_URL")

    anthropic_api_key: SecretStr | None = Field(None, alias="ANTHROPIC_API_KEY")
    anthropic_model: str = Field("claude-sonnet-4-5", alias="ANTHROPIC_MODEL")
    # Tests point the real SDK at a local fake Messages API; production leaves it unset.
    anthropic_base_url: str | None = Field(None, alias="ANTHROPIC_BASE_URL")
    llm_timeout_seconds: float = Field(120.0, alias="LLM_TIMEOUT_SECONDS", gt=0)
    llm_max_tokens: int = Field(2048, alias="LLM_MAX_TOKENS", gt=0)
    # What each model costs (see parse_model_prices): a task's spend is priced with it, per call.
    model_prices_json: str = Field("", alias="MODEL_PRICES")

    # Secrets: unset means the development value with ENV=development, and a refusal to start in
    # production (see _fail_closed). The webhook secret also keys the proofs the approvals surface
    # mints for the agents' `decide` handlers (app/gates/proof.py).
    approval_webhook_secret: SecretStr | None = Field(None, alias="APPROVAL_WEBHOOK_SECRET")
    operator_token: SecretStr | None = Field(None, alias="OPERATOR_TOKEN")
    tools_api_token: SecretStr | None = Field(None, alias="TOOLS_API_TOKEN")
    # The Restate server's request-signing keys the agent endpoint accepts (restate-notes §1.10);
    # without them anyone who reaches the endpoint can invoke handlers, so production requires them.
    restate_identity_public_keys_csv: str = Field("", alias="RESTATE_IDENTITY_PUBLIC_KEYS")

    # How often AgentTask replans after a failed verification before it fails (VERIFY -> PLAN).
    agent_max_replans: int = Field(1, alias="AGENT_MAX_REPLANS", ge=0, le=10)

    # The cap of Restate's backoff between attempts of an invocation whose worker crashed or was
    # unreachable (registered with the deployment).
    invocation_retry_max_interval_seconds: float = Field(30.0, alias="AGENT_RETRY_MAX_INTERVAL_SECONDS", gt=0)

    # How long a stopping service lets open invocation streams finish before it closes them
    # (Restate retries whatever was cut; a parked task's stream holds nothing worth waiting for).
    shutdown_grace_seconds: float = Field(10.0, alias="AGENT_SHUTDOWN_GRACE_SECONDS", ge=0)

    # How often RefundDesk revises a proposal the refund policy refused before it fails.
    refund_max_revisions: int = Field(2, alias="REFUND_MAX_REVISIONS", ge=0, le=10)

    # A step whose dependency is unreachable stalls and is retried, never failed: after its quick
    # retries, the engine waits this long, doubling each round up to the cap, then tries again.
    stall_retry_initial_seconds: float = Field(5.0, alias="STALL_RETRY_INITIAL_SECONDS", gt=0)
    stall_retry_max_seconds: float = Field(300.0, alias="STALL_RETRY_MAX_SECONDS", gt=0)
    # At most this many quick attempts in one round, whatever the step kind declares (0: as declared).
    # Lowered by the outage tests to reach a stall in seconds.
    step_max_quick_attempts: int = Field(0, alias="STEP_MAX_QUICK_ATTEMPTS", ge=0)

    # Agents beyond the packages under app/agents/: comma-separated module names, each declaring
    # `AGENT` (app/agent.py). The service, the webhook and agentctl know them all.
    agent_modules_csv: str = Field("", alias="AGENT_MODULES")

    # Restate invocation options. After this long without progress (a task waiting at a gate, or a
    # slow step) Restate asks the handler to suspend: a waiting task then costs no worker memory. A
    # step in flight is not cut short: it may finish within the abort timeout, which therefore
    # outlasts the slowest LLM call. 0 defers to the server's own setting (always-replay tests: 0s).
    inactivity_timeout_seconds: float = Field(60.0, alias="AGENT_INACTIVITY_TIMEOUT_SECONDS", ge=0)
    # The crash matrix's fault switch (app/runtime/faults.py): off unless set; refused in production.
    fault_plan_file: str | None = Field(None, alias="AGENT_FAULT_PLAN_FILE")
    # The event log writes a snapshot of the task's view every N events (and at the end).
    event_snapshot_every: int = Field(10, alias="EVENT_SNAPSHOT_EVERY", gt=0)
    journal_retention_days: float = Field(7.0, alias="AGENT_JOURNAL_RETENTION_DAYS", gt=0)
    # OpenTelemetry: the OTLP/HTTP collector the tasks' spans are exported to (the standard
    # variables; neither set: no export). The base endpoint gets `/v1/traces` appended.
    otel_exporter_otlp_endpoint: str | None = Field(None, alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    otel_exporter_otlp_traces_endpoint: str | None = Field(None, alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    otel_service_name: str = Field("durable-agents", alias="OTEL_SERVICE_NAME", min_length=1)
    # How often the exporter looks at the log when nothing wakes it (a write in this process does).
    trace_export_interval_seconds: float = Field(1.0, alias="TRACE_EXPORT_INTERVAL_SECONDS", gt=0)

    # Approval gates. A reminder goes out this long before the deadline (0 or >= the timeout: none),
    # to the approvers and, when set, an escalation approver who may then decide too.
    approval_timeout_seconds: float = Field(86_400.0, alias="APPROVAL_TIMEOUT_SECONDS", gt=0)
    approval_reminder_before_seconds: float = Field(3_600.0, alias="APPROVAL_REMINDER_BEFORE_SECONDS", ge=0)
    approvers_csv: str = Field("ops-lead", alias="APPROVERS", min_length=1)
    approval_escalation_approver: str | None = Field("ops-manager", alias="APPROVAL_ESCALATION_APPROVER")

    # Expense reports. A receipt total within this of the claim matches. Auto-approval (no human)
    # only for an amount up to the maximum, in a low-risk category, classified confidently.
    expense_total_tolerance: Decimal = Field(Decimal("0.05"), alias="EXPENSE_TOTAL_TOLERANCE", ge=0)
    auto_approve_max_amount: Decimal = Field(Decimal("50.00"), alias="AUTO_APPROVE_MAX_AMOUNT", ge=0)
    auto_approve_categories_csv: str = Field("meals,office_supplies", alias="AUTO_APPROVE_CATEGORIES")
    auto_approve_min_confidence: float = Field(0.8, alias="AUTO_APPROVE_MIN_CONFIDENCE", ge=0, le=1)

    @field_validator("approval_escalation_approver")
    @classmethod
    def _none_disables_escalation(cls, value: str | None) -> str | None:
        return None if value is None or value.strip().lower() in ("", "none", "-") else value.strip()

    @field_validator("env", mode="before")
    @classmethod
    def _known_environment(cls, value: object) -> Environment:
        return parse_environment(value)

    @field_validator("model_prices_json")
    @classmethod
    def _prices_parse(cls, value: str) -> str:
        parse_model_prices(value)
        return value

    @field_validator("otel_exporter_otlp_endpoint", "otel_exporter_otlp_traces_endpoint")
    @classmethod
    def _endpoint_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"an OTLP/HTTP endpoint is an http:// or https:// URL, not {value[:60]!r}")
        return value

    @field_validator("restate_identity_public_keys_csv")
    @classmethod
    def _public_keys_look_right(cls, value: str) -> str:
        keys = [key.strip() for key in value.split(",") if key.strip()]
        wrong = [key[:24] for key in keys if not key.startswith(PUBLIC_KEY_PREFIX)]
        if wrong:
            raise ValueError(f"RESTATE_IDENTITY_PUBLIC_KEYS must be {PUBLIC_KEY_PREFIX}... keys, not {wrong}")
        return ",".join(keys)

    @model_validator(mode="after")
    def _development_defaults(self) -> Settings:
        # Only an explicit ENV=development gets the well-known secrets; production keeps what is
        # set, and `python -m app` refuses to serve until startup_problems() is empty.
        if self.env == "development":
            resolved = resolve_secrets(self.env, self._secrets())
            self.approval_webhook_secret = resolved["APPROVAL_WEBHOOK_SECRET"]
            self.operator_token = resolved["OPERATOR_TOKEN"]
            self.tools_api_token = resolved["TOOLS_API_TOKEN"]
        return self

    def _secrets(self) -> dict[str, tuple[SecretStr | None, str]]:
        return {
            "APPROVAL_WEBHOOK_SECRET": (self.approval_webhook_secret, DEV_WEBHOOK_SECRET),
            "OPERATOR_TOKEN": (self.operator_token, DEV_OPERATOR_TOKEN),
            "TOOLS_API_TOKEN": (self.tools_api_token, DEV_TOOLS_API_TOKEN),
        }

    def startup_problems(self) -> list[str]:
        """Why the service must not serve with this configuration (empty: it may).

        Checked at start, not when the settings are read: the CLI and `diagram` read settings too
        and need no secret; anything that uses a missing secret fails closed anyway (see below).
        """
        problems: list[str] = []
        if self.env == "production":
            try:
                resolve_secrets(self.env, self._secrets())
            except ValueError as exc:
                problems.append(str(exc))
            if not self.restate_identity_public_keys:
                problems.append("ENV=production requires RESTATE_IDENTITY_PUBLIC_KEYS (request identity)")
            if self.fault_plan_file is not None:
                problems.append("AGENT_FAULT_PLAN_FILE (fault injection) is refused when ENV=production")
        return problems

    @property
    def webhook_secret(self) -> str:
        return _required(self.approval_webhook_secret, "APPROVAL_WEBHOOK_SECRET")

    @property
    def operator_secret(self) -> str:
        return _required(self.operator_token, "OPERATOR_TOKEN")

    @property
    def tools_token(self) -> str:
        return _required(self.tools_api_token, "TOOLS_API_TOKEN")

    @property
    def restate_identity_public_keys(self) -> list[str]:
        return [key for key in self.restate_identity_public_keys_csv.split(",") if key]

    @cached_property
    def model_prices(self) -> dict[str, ModelPrice]:
        # Parsed once per settings object: read inside every LLM step.
        return parse_model_prices(self.model_prices_json)

    @property
    def traces_endpoint(self) -> str | None:
        """Where spans are sent (`.../v1/traces`), None when tracing is off."""
        if self.otel_exporter_otlp_traces_endpoint:
            return self.otel_exporter_otlp_traces_endpoint
        if self.otel_exporter_otlp_endpoint:
            return self.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
        return None

    @property
    def approvers(self) -> list[str]:
        names = [name.strip() for name in self.approvers_csv.split(",") if name.strip()]
        return list(dict.fromkeys(names))

    @property
    def auto_approve_categories(self) -> list[str]:
        return [name.strip() for name in self.auto_approve_categories_csv.split(",") if name.strip()]

    @property
    def agent_modules(self) -> list[str]:
        return [name.strip() for name in self.agent_modules_csv.split(",") if name.strip()]

    @property
    def uses_offline_model(self) -> bool:
        return self.anthropic_api_key is None


class MissingSecret(RuntimeError):
    """A secret was needed and is not configured: fail closed, never fall back to a default."""


def _required(secret: SecretStr | None, variable: str) -> str:
    if secret is None:
        raise MissingSecret(f"{variable} is not set (ENV=production has no default for it)")
    return secret.get_secret_value()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once; tests start processes with their own environment."""
    return Settings()
