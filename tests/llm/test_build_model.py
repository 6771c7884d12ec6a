"""build_model: Claude with a key, the offline model without."""

from __future__ import annotations

from app.llm import OfflineModel, build_model
from app.llm.anthropic_model import AnthropicModel
from app.settings import Settings


def test_offline_without_api_key() -> None:
    settings = Settings(_env_file=None, ANTHROPIC_API_KEY=None)

    model = build_model(settings)

    assert isinstance(model, OfflineModel)
    assert model.name == "offline" and model.offline is True


def test_anthropic_with_api_key() -> None:
    settings = Settings(
        _env_file=None,
        ANTHROPIC_API_KEY="sk-ant-from-settings",
        ANTHROPIC_MODEL="claude-from-settings",
        ANTHROPIC_BASE_URL="http://127.0.0.1:1",
        LLM_TIMEOUT_SECONDS=7.5,
        LLM_MAX_TOKENS=321,
    )

    model = build_model(settings)

    assert isinstance(model, AnthropicModel)
    assert model.name == "claude-from-settings" and model.offline is False
    assert model.max_tokens == 321 and model.timeout_seconds == 7.5
    assert "sk-ant-from-settings" not in repr(model)
