"""Approval gates: the arbiter (internal), how a task waits, decision proofs and the gate types."""
