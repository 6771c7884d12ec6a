"""The model port, the offline model and the Anthropic adapter, and which model serves a task."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from app.llm.offline_model import OfflineModel
from app.llm.port import (
    InT,
    LanguageModel,
    LlmTask,
    Metered,
    ModelOutputError,
    ModelUnavailableError,
    OutT,
    UnknownToolError,
    Usage,
)
from app.llm.pricing import usage_of

if TYPE_CHECKING:
    from app.settings import Settings

__all__ = [
    "LanguageModel",
    "LlmTask",
    "Metered",
    "ModelOutputError",
    "ModelUnavailableError",
    "OfflineModel",
    "UnknownToolError",
    "Usage",
    "build_model",
    "current_model",
    "model_named",
    "structured_by",
]


def build_model(settings: Settings) -> LanguageModel:
    """Claude when `ANTHROPIC_API_KEY` is set, else the deterministic offline model."""
    if settings.anthropic_api_key is not None:
        # Imported here: the anthropic package costs about two seconds to import, which every
        # process without a key (the offline demo, agentctl, the diagrams) would pay for nothing.
        from app.llm.anthropic_model import AnthropicModel

        return AnthropicModel.from_settings(settings)
    return OfflineModel()


@lru_cache(maxsize=1)
def current_model() -> LanguageModel:
    """The model new tasks are pinned to, built once from the process's settings."""
    from app.settings import get_settings

    return build_model(get_settings())


@lru_cache(maxsize=8)
def model_named(name: str) -> LanguageModel:
    """The model a task was pinned to when it was created, whatever this process now defaults to.

    A task parked under one model finishes under it after a restart with other settings: its steps
    never switch model mid-task. A task pinned to a Claude model this process has no key for waits
    (a transient error, retried) until a key is configured again.
    """
    configured = current_model()
    if name == configured.name:
        return configured
    if name == OfflineModel.NAME:
        return OfflineModel()
    from app.settings import get_settings

    settings = get_settings()
    if settings.anthropic_api_key is None:
        raise ModelUnavailableError(f"the task is pinned to model {name!r} and ANTHROPIC_API_KEY is not set")
    from app.llm.anthropic_model import AnthropicModel

    return AnthropicModel.from_settings(settings.model_copy(update={"anthropic_model": name}))


async def structured_by(model: str, task: LlmTask[InT, OutT], request: InT) -> Metered[OutT]:
    """One structured call on the model named `model`, and what it used. Runs only inside a
    journaled step, so the model is chosen where a failure to reach it is retried, never in
    handler code, and its cost is priced once, at the prices of the moment."""
    from app.settings import get_settings

    answer = await model_named(model).structured(task, request)
    return Metered(value=answer.output, usage=usage_of(model, answer, get_settings().model_prices))
