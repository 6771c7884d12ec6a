"""Shared test data for the model tests (the AgentTask data is in tests/agents/agent_task/support.py)."""

from __future__ import annotations

TEST_API_KEY = "sk-ant-test-0123456789-secret"
TEST_MODEL = "claude-test-model"
