"""The tool service itself: HTTP surface, credentials, idempotency store, registry, schema, outbox."""
