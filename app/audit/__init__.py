"""The audit record: the immutable, hash-chained event log, its verification and its archive."""
