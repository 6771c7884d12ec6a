"""`OfflineModel`: the deterministic stand-in for Claude, used when `ANTHROPIC_API_KEY` is unset.

It answers each task with the task's own `offline` behaviour, which every agent ships beside its
prompts: same input, same output, no randomness, no clock, no network.
"""

from __future__ import annotations

from app.llm.port import Answer, InT, LlmTask, OutT

# About four characters a token, as a rough estimate for English text and JSON.
CHARS_PER_TOKEN = 4

__all__ = ["OfflineModel"]


class OfflineModel:
    """A `LanguageModel` that answers with each task's declared offline behaviour."""

    NAME = "offline"

    @property
    def name(self) -> str:
        return self.NAME

    @property
    def offline(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "OfflineModel()"

    async def structured(self, task: LlmTask[InT, OutT], request: InT) -> Answer[OutT]:
        # Validated like a real model's answer, so an offline behaviour cannot hand back bad data.
        output = task.output_type.model_validate(task.offline(request).model_dump())
        # What a real model would have been sent and answered, estimated: it costs nothing here.
        sent = len(task.instructions) + len(task.prompt(request))
        return Answer(
            output=output,
            input_tokens=max(1, sent // CHARS_PER_TOKEN),
            output_tokens=max(1, len(output.model_dump_json()) // CHARS_PER_TOKEN),
            estimated=True,
            # It answers as a forced tool call would: with the tool's input.
            finish_reason="tool_use",
        )
