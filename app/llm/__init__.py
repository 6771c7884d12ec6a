"""The model port, the Anthropic adapter and the offline model; `build_model` picks one from settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.llm.anthropic_model import AnthropicModel, ModelOutputError, UnknownToolError, classify_error
from app.llm.offline_model import OfflineModel
from app.llm.port import LanguageModel

if TYPE_CHECKING:
    from app.settings import Settings

__all__ = [
    "AnthropicModel",
    "LanguageModel",
    "ModelOutputError",
    "OfflineModel",
    "UnknownToolError",
    "build_model",
    "classify_error",
]


def build_model(settings: Settings) -> LanguageModel:
    """Claude when `ANTHROPIC_API_KEY` is set, else the deterministic offline model."""
    if settings.anthropic_api_key is not None:
        return AnthropicModel.from_settings(settings)
    return OfflineModel()
