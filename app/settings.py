"""The agent service's configuration: one pydantic-settings class, read from the environment."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = f"sqlite:///{Path('var/agents.db').resolve()}"
DEV_WEBHOOK_SECRET = "dev-approval-webhook-secret"
DEV_OPERATOR_TOKEN = "dev-operator-token"


class Settings(BaseSettings):
    """Every variable named in design.md, plus the tuning knobs of the agent service."""

    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore")

    env: str = Field("development", alias="ENV")

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

    approval_webhook_secret: SecretStr = Field(SecretStr(DEV_WEBHOOK_SECRET), alias="APPROVAL_WEBHOOK_SECRET")
    operator_token: SecretStr = Field(SecretStr(DEV_OPERATOR_TOKEN), alias="OPERATOR_TOKEN")

    # Restate invocation options. After this long without progress (a task waiting at a gate, or a
    # slow step) Restate asks the handler to suspend: a waiting task then costs no worker memory. A
    # step in flight is not cut short: it may finish within the abort timeout, which therefore
    # outlasts the slowest LLM call. 0 defers to the server's own setting (always-replay tests: 0s).
    inactivity_timeout_seconds: float = Field(60.0, alias="AGENT_INACTIVITY_TIMEOUT_SECONDS", ge=0)
    # The crash matrix's fault switch (app/faults.py): off unless set; refused in production.
    fault_plan_file: str | None = Field(None, alias="AGENT_FAULT_PLAN_FILE")
    # The event log writes a snapshot of the task's view every N events (and at the end).
    event_snapshot_every: int = Field(10, alias="EVENT_SNAPSHOT_EVERY", gt=0)
    journal_retention_days: float = Field(7.0, alias="AGENT_JOURNAL_RETENTION_DAYS", gt=0)

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

    @model_validator(mode="after")
    def _refuse_development_secrets_in_production(self) -> Settings:
        if self.env == "production":
            if self.approval_webhook_secret.get_secret_value() == DEV_WEBHOOK_SECRET:
                raise ValueError("APPROVAL_WEBHOOK_SECRET must be set when ENV=production")
            if self.operator_token.get_secret_value() == DEV_OPERATOR_TOKEN:
                raise ValueError("OPERATOR_TOKEN must be set when ENV=production")
            if self.fault_plan_file is not None:
                raise ValueError("AGENT_FAULT_PLAN_FILE (fault injection) is refused when ENV=production")
        return self

    @property
    def approvers(self) -> list[str]:
        names = [name.strip() for name in self.approvers_csv.split(",") if name.strip()]
        return list(dict.fromkeys(names))

    @property
    def auto_approve_categories(self) -> list[str]:
        return [name.strip() for name in self.auto_approve_categories_csv.split(",") if name.strip()]

    @property
    def uses_offline_model(self) -> bool:
        return self.anthropic_api_key is None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once; tests start processes with their own environment."""
    return Settings()
