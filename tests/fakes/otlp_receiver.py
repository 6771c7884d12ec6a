"""A real OTLP/HTTP trace receiver on loopback: it decodes each `POST /v1/traces` with
opentelemetry-proto and keeps every span it accepted (a collector, as far as the exporter sees).

Restate's own exporter (`RESTATE_TRACING_ENDPOINT`) speaks OTLP over gRPC; the receiver does not
answer it, and Restate drops its spans quietly. What the tests need from Restate is the trace
context it then sends with every invocation attempt, which our spans join.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from deploy.local import free_port


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    links: tuple[tuple[str, str], ...]
    events: tuple[str, ...]
    service_name: str
    raw: bytes = field(repr=False)


@dataclass
class Receiver:
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Answer the next N requests with 503 (a collector that is down), then accept again.
    refuse_next: int = 0

    def of_task(self, task_id: str) -> list[ReceivedSpan]:
        with self.lock:
            return [s for s in self.spans if s.attributes.get("gen_ai.conversation.id") == task_id]

    def wait_for(
        self, condition: Callable[[list[ReceivedSpan]], bool], task_id: str, timeout: float = 30.0
    ) -> list[ReceivedSpan]:
        """The task's spans once `condition` holds for them (AssertionError after `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.of_task(task_id)
            if condition(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"spans of {task_id} never met the condition: {[s.name for s in spans]}")
            time.sleep(0.05)


def _decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=span.kind,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        status_code=span.status.code,
                        status_message=span.status.message,
                        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                        events=tuple(event.name for event in span.events),
                        service_name=str(resource.get("service.name")),
                        raw=span.SerializeToString(),
                    )
                )
    return spans


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
                self._answer(404, b"")
                return
            with receiver.lock:
                receiver.requests += 1
                if receiver.refuse_next > 0:
                    receiver.refuse_next -= 1
                    refused = True
                else:
                    receiver.spans.extend(_decode(body))
                    refused = False
            if refused:
                self._answer(503, b"")
            else:
                self._answer(200, ExportTraceServiceResponse().SerializeToString())

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def running_receiver() -> Iterator[tuple[Receiver, str]]:
    """The receiver and its base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`), served until the block ends."""
    receiver = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _handler(receiver))
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield receiver, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
