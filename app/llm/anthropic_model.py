"""`AnthropicModel`: the `LanguageModel` port on Claude, through the official `anthropic` SDK.

Design points (see design.md, principles 4, 5 and 7):

- **One layer owns retries.** The SDK client has `max_retries=0` and an explicit timeout; Restate
  retries the step (with its `RunOptions`) when a call raises anything but `TerminalError`.
- **Structured output through tool use.** Each call is exactly one `messages.create` that offers a
  single tool whose `input_schema` is the task's output type's JSON schema and forces it with
  `tool_choice`; the `tool_use` block's input is validated with pydantic. Free text is never parsed.
- **Error contract** (`classify_error`): a request the provider will never accept (400, 401, 403,
  404, 422 and any other 4xx except 408/409/429) becomes `restate.TerminalError`; everything else
  (429, 408, 409, 5xx incl. 529 overloaded, connection errors, timeouts, and an answer that is cut,
  lacks the tool call or fails validation: `ModelOutputError`) stays a plain exception to retry.
- **Secrets never reach errors or logs**: messages are built here, and the API key is redacted from
  any text that could carry it.
- Prompts treat the task's data as **data, not instructions** (app/llm/prompting.py): the system
  prompt says so for every task, and agents put data in tags as JSON that cannot close its tag.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING, Any

import anthropic
from pydantic import ValidationError
from restate import TerminalError

from app.llm.port import Answer, InT, LlmTask, ModelOutputError, OutT, UnknownToolError
from app.llm.prompting import DATA_RULE, inline_refs
from app.outage import Unreachable

if TYPE_CHECKING:
    from anthropic.types import Message, MessageParam, ToolChoiceToolParam, ToolParam

    from app.settings import Settings

__all__ = [
    "AnthropicModel",
    "ModelOutputError",
    "UnknownToolError",
    "classify_error",
    "is_permanent_status",
]

logger = logging.getLogger(__name__)

# 4xx statuses that are worth retrying: request timeout, conflict, rate limit.
_TRANSIENT_CLIENT_STATUSES = frozenset({408, 409, 429})

_CONNECT_TIMEOUT_SECONDS = 10.0


def is_permanent_status(status_code: int) -> bool:
    """True when an HTTP status from the provider means "this request will never succeed"."""
    return 400 <= status_code < 500 and status_code not in _TRANSIENT_CLIENT_STATUSES


def classify_error(exc: BaseException, *, secret: str | None = None) -> BaseException:
    """Map an exception from a model call to what the engine should see.

    Returns a `restate.TerminalError` for a permanent failure (a 4xx other than 408/409/429), with a
    message naming the status and the provider's error type and message (never the API key:
    `secret` is redacted from it); returns `exc` itself for a transient failure, which Restate
    retries: an `Unreachable` (one line, no traceback) for an outage or overload (connection errors,
    timeouts, 408/409/429, 5xx incl. 529), which the engine waits out; `exc` itself otherwise.
    """
    if isinstance(exc, TerminalError):
        return exc
    if isinstance(exc, anthropic.APIStatusError) and is_permanent_status(exc.status_code):
        error_type = exc.type or "error"
        detail = exc.api_message or type(exc).__name__
        message = _redact(
            f"Anthropic API rejected the request: {exc.status_code} {error_type}: {detail}", secret
        )
        metadata = {"provider": "anthropic", "provider_status": str(exc.status_code)}
        if exc.type:
            metadata["provider_error_type"] = str(exc.type)
        if exc.request_id:
            metadata["provider_request_id"] = exc.request_id
        return TerminalError(message, metadata=metadata)
    if isinstance(exc, anthropic.APIStatusError):
        detail = exc.api_message or type(exc).__name__
        return Unreachable(_redact(f"Anthropic API answered {exc.status_code}: {detail}", secret))
    if isinstance(exc, anthropic.APIConnectionError):
        # Includes timeouts: the API could not be reached, an outage the task waits out.
        return Unreachable(_redact(f"Anthropic API unreachable: {type(exc).__name__}: {exc}", secret))
    return exc


def _redact(text: str, secret: str | None) -> str:
    if secret:
        return text.replace(secret, "[redacted]")
    return text


def system_prompt(task: LlmTask[Any, Any]) -> str:
    """The task's instructions, the data rule, and how to answer."""
    return f"{task.instructions} {DATA_RULE} Answer only by calling the {task.tool_name} tool."


class AnthropicModel:
    """`LanguageModel` on Claude. One pooled `AsyncAnthropic` client per instance (per event loop)."""

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        base_url: str | None = None,
        timeout_seconds: float = 120.0,
        max_tokens: int = 2048,
    ) -> None:
        if not api_key:
            raise ValueError("api_key must be a non-empty string")
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        if max_tokens <= 0:
            raise ValueError("max_tokens must be positive")
        self._api_key = api_key
        self._model = model
        self._base_url = base_url
        self._timeout_seconds = timeout_seconds
        self._max_tokens = max_tokens
        self._client: anthropic.AsyncAnthropic | None = None
        self._client_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AnthropicModel:
        if settings.anthropic_api_key is None:
            raise ValueError("ANTHROPIC_API_KEY is not set")
        return cls(
            api_key=settings.anthropic_api_key.get_secret_value(),
            model=settings.anthropic_model,
            base_url=settings.anthropic_base_url,
            timeout_seconds=settings.llm_timeout_seconds,
            max_tokens=settings.llm_max_tokens,
        )

    def __repr__(self) -> str:
        return f"AnthropicModel(model={self._model!r}, base_url={self._base_url!r})"

    @property
    def name(self) -> str:
        return self._model

    @property
    def offline(self) -> bool:
        return False

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    @property
    def timeout_seconds(self) -> float:
        return self._timeout_seconds

    def _get_client(self) -> anthropic.AsyncAnthropic:
        """The pooled client, created lazily in the running loop (a pool cannot cross loops)."""
        loop = asyncio.get_running_loop()
        current = self._client_loop() if self._client_loop is not None else None
        if self._client is None or current is not loop:
            # A client bound to another (finished) loop cannot be closed from here; drop it.
            self._client = anthropic.AsyncAnthropic(
                api_key=self._api_key,
                base_url=self._base_url,
                max_retries=0,
                timeout=anthropic.Timeout(
                    self._timeout_seconds,
                    connect=min(self._timeout_seconds, _CONNECT_TIMEOUT_SECONDS),
                ),
            )
            self._client_loop = weakref.ref(loop)
        return self._client

    async def aclose(self) -> None:
        """Close the pooled client (call from the loop that used it); the model stays usable."""
        client, self._client, self._client_loop = self._client, None, None
        if client is not None:
            await client.close()

    async def __aenter__(self) -> AnthropicModel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def structured(self, task: LlmTask[InT, OutT], request: InT) -> Answer[OutT]:
        """One forced tool call for `task`; its input validated as the task's output type."""
        schema = task.schema(request) if task.schema else inline_refs(task.output_type.model_json_schema())
        answer = await self._call(
            tool_name=task.tool_name,
            description=task.description or f"Submit the {task.name} result.",
            schema=schema,
            system=system_prompt(task),
            prompt=task.prompt(request),
            output=task.output_type,
        )
        if task.check is not None:
            task.check(request, answer.output)
        return answer

    async def _call(
        self,
        *,
        tool_name: str,
        description: str,
        schema: dict[str, Any],
        system: str,
        prompt: str,
        output: type[OutT],
    ) -> Answer[OutT]:
        tool: ToolParam = {"name": tool_name, "description": description, "input_schema": schema}
        tool_choice: ToolChoiceToolParam = {"type": "tool", "name": tool_name}
        messages: list[MessageParam] = [{"role": "user", "content": prompt}]
        try:
            response = await self._get_client().messages.create(
                model=self._model,
                max_tokens=self._max_tokens,
                system=system,
                messages=messages,
                tools=[tool],
                tool_choice=tool_choice,
            )
        except Exception as exc:
            classified = classify_error(exc, secret=self._api_key)
            if isinstance(classified, Unreachable):
                logger.warning("model call %s failed (will be retried): %s", tool_name, classified)
                raise classified from None
            if classified is exc:
                logger.warning(
                    "model call %s failed (transient, will be retried): %s",
                    tool_name,
                    _redact(f"{type(exc).__name__}: {exc}", self._api_key),
                )
                raise
            logger.error("model call %s failed permanently: %s", tool_name, classified)
            raise classified from exc
        logger.info(
            "model call %s: stop_reason=%s input_tokens=%s output_tokens=%s",
            tool_name,
            response.stop_reason,
            response.usage.input_tokens,
            response.usage.output_tokens,
        )
        return Answer(
            output=self._parse(response, tool_name, output),
            input_tokens=response.usage.input_tokens,
            output_tokens=response.usage.output_tokens,
            finish_reason=response.stop_reason,
            response_id=response.id,
        )

    @staticmethod
    def _parse(response: Message, tool_name: str, output: type[OutT]) -> OutT:
        if response.stop_reason == "max_tokens":
            raise ModelOutputError(f"the answer to {tool_name} was cut at max_tokens")
        tool_input: object = None
        for block in response.content:
            if block.type == "tool_use" and block.name == tool_name:
                tool_input = block.input
                break
        else:
            raise ModelOutputError(
                f"the answer has no {tool_name} tool call (stop_reason={response.stop_reason})"
            )
        try:
            return output.model_validate(tool_input)
        except ValidationError as exc:
            errors = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
            )
            raise ModelOutputError(
                f"the {tool_name} input is not a valid {output.__name__}: {errors}"
            ) from exc
