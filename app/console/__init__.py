"""The operator console: every task, its state, timeline and approvals (served by the approvals surface)."""
