"""The OTLP/HTTP sink of the trace export: our span records as OpenTelemetry SDK spans, sent by
the OpenTelemetry exporter (protobuf over HTTP; it also reads `OTEL_EXPORTER_OTLP_HEADERS`,
`..._CERTIFICATE`, `..._COMPRESSION` and `..._TIMEOUT` from the environment).

Imported only when an endpoint is configured: the SDK is not needed otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from app.audit.traces import SpanRecord

SCOPE = InstrumentationScope("durable-agents.event-log")
KINDS = {"internal": SpanKind.INTERNAL, "client": SpanKind.CLIENT}
STATUSES = {"unset": StatusCode.UNSET, "ok": StatusCode.OK, "error": StatusCode.ERROR}


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _context(trace_id: str, span_id: str, remote: bool) -> SpanContext:
    return SpanContext(
        trace_id=int(trace_id, 16),
        span_id=int(span_id, 16),
        is_remote=remote,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )


def readable(span: SpanRecord, resource: Resource) -> ReadableSpan:
    """One span record as the SDK's finished span, with its derived ids kept as they are."""
    parent = _context(span.trace_id, span.parent_span_id, remote=True) if span.parent_span_id else None
    message = span.status_message if span.status == "error" else None
    return ReadableSpan(
        name=span.name,
        context=_context(span.trace_id, span.span_id, remote=False),
        parent=parent,
        resource=resource,
        attributes={key: tuple(v) if isinstance(v, list) else v for key, v in span.attributes.items()},
        events=[Event(item.name, dict(item.attributes), timestamp=_ns(item.at)) for item in span.events],
        links=[Link(_context(trace, linked, remote=True)) for trace, linked in span.links],
        kind=KINDS[span.kind],
        status=Status(STATUSES[span.status], message),
        start_time=_ns(span.start),
        end_time=_ns(max(span.end, span.start)),
        instrumentation_scope=SCOPE,
    )


class OtlpSink:
    """Sends span records to an OTLP/HTTP endpoint (`.../v1/traces`)."""

    def __init__(self, endpoint: str, service_name: str, timeout_seconds: float = 10.0) -> None:
        self.resource = Resource.create({"service.name": service_name})
        self.exporter = OTLPSpanExporter(endpoint=endpoint, timeout=timeout_seconds)

    def export(self, spans: Sequence[SpanRecord]) -> bool:
        result = self.exporter.export([readable(span, self.resource) for span in spans])
        return result is SpanExportResult.SUCCESS

    def close(self) -> None:
        self.exporter.shutdown()  # type: ignore[no-untyped-call]
