"""The agent service: durable LLM agents as explicit state machines on Restate."""
