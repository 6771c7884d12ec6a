"""The model port, the Anthropic adapter and the offline model; `current_model` picks one from settings."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from app.llm.anthropic_model import AnthropicModel, classify_error
from app.llm.offline_model import OfflineModel
from app.llm.port import LanguageModel, LlmTask, ModelOutputError, UnknownToolError

if TYPE_CHECKING:
    from app.settings import Settings

__all__ = [
    "AnthropicModel",
    "LanguageModel",
    "LlmTask",
    "ModelOutputError",
    "OfflineModel",
    "UnknownToolError",
    "build_model",
    "classify_error",
    "current_model",
]


def build_model(settings: Settings) -> LanguageModel:
    """Claude when `ANTHROPIC_API_KEY` is set, else the deterministic offline model."""
    if settings.anthropic_api_key is not None:
        return AnthropicModel.from_settings(settings)
    return OfflineModel()


@lru_cache(maxsize=1)
def current_model() -> LanguageModel:
    """The process's model, built once from its settings (one pooled client for every agent)."""
    from app.settings import get_settings

    return build_model(get_settings())
