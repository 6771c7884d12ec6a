"""A local fake of the Anthropic Messages API, for tests that drive the real `anthropic` SDK.

A real HTTP/1.1 server (stdlib `ThreadingHTTPServer`, daemon threads) on 127.0.0.1 and a free port.

In-process::

    with FakeAnthropicAPI() as fake:                      # or fake = FakeAnthropicAPI().start(); fake.stop()
        model = AnthropicModel(api_key="test-key", model="claude-test", base_url=fake.url, ...)
        fake.queue_error(529)                             # the next request gets 529 overloaded_error
        fake.queue_tool_input({"success": False, "reason": "no"}, tool="submit_verification")
        ...
        assert fake.count("submit_plan") == 1

As a subprocess (prints its base URL, e.g. ``http://127.0.0.1:40123``, on the first stdout line; stops
cleanly on SIGTERM or SIGINT)::

    python -m tests.fakes.anthropic_api --port 0 [--host 127.0.0.1] [--api-key KEY]

`POST /v1/messages` answers in the real API's format: a `message` whose content is one `tool_use`
block for the tool named by `tool_choice`, `stop_reason` "tool_use" and `usage`. Without a script
the answer is built deterministically from the request (see `_default_input`): the AgentTask
tools `submit_analysis` / `submit_plan` / `submit_verification` get a valid
`Analysis` / `Plan` (one `create_ticket` step, built from the task and user id the prompt carries,
when the catalog has that tool) / `Verification` (success iff results were given and all are
non-empty), ExpenseReport's `submit_classification` a `Classification`. Any other tool gets `{}`
(script an answer for it with `queue_tool_input(..., tool=NAME)`).

Requests are checked like the real API: an API key (`x-api-key`, or `Authorization: Bearer`, which
is how `anthropic` 2.x sends `api_key`) is required (401 `authentication_error`; when the fake was
given `api_key`, it must match), `anthropic-version` is required and the body must be JSON with
`model`, `max_tokens` and `messages` (400 `invalid_request_error`).

**Scripts** (overrides) are queued and consumed in order, one per request; an item with a `tool`
only matches a request for that tool (others skip past it). Item JSON shapes (exactly one of
`input`, `error`, `message`; `tool`, `times` (default 1) and `delay_seconds` (default 0) optional):

    {"tool": "submit_verification", "input": {"success": false, "reason": "..."}}
    {"error": {"status": 529, "type": "overloaded_error", "message": "Overloaded"}}
    {"message": {"content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn"}}

`error.type` and `error.message` default from the status (400 invalid_request_error, 401
authentication_error, 403 permission_error, 404 not_found_error, 408 timeout_error, 413
request_too_large, 429 rate_limit_error, 500 api_error, 529 overloaded_error, ...).

**Control endpoints** (for tests in another process):

- `GET /_fake/requests[?tool=NAME]` -> `{"requests": [Recorded...], "counts": {tool: n}, "pending": n}`
  where a recorded request is `{"method", "path", "headers" (lower-case names), "body" (parsed JSON
  or null), "tool" (the `tool_choice` name or null), "status" (what the fake answered)}`.
- `POST /_fake/script` with one item, a list of items, or `{"items": [...]}` -> `{"queued": n, "pending": n}`
- `POST /_fake/reset` -> `{"ok": true}` (forgets requests and scripts)
- `GET /_fake/health` -> `{"ok": true}`
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

# The tools the agents' LLM tasks force (`app/agents/*/llm.py`); repeated here so the fake starts
# without importing the SDK (tests/llm/test_fake_api.py checks they agree).
ANALYZE_TOOL = "submit_analysis"
CLASSIFY_TOOL = "submit_classification"
PLAN_TOOL = "submit_plan"
VERIFY_TOOL = "submit_verification"

__all__ = ["ANALYZE_TOOL", "CLASSIFY_TOOL", "PLAN_TOOL", "VERIFY_TOOL", "FakeAnthropicAPI", "main"]

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_SECTION = re.compile(r"<([a-z_]+)>\n(.*?)\n</\1>", re.DOTALL)


def _error_body(status: int, error_type: str | None = None, message: str | None = None) -> dict[str, Any]:
    kind = error_type or ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {
        "type": "error",
        "error": {"type": kind, "message": message or f"fake {kind} ({status})"},
    }


def _normalise_item(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, dict):
        raise ValueError("a script item must be a JSON object")
    kinds = [key for key in ("input", "error", "message") if key in raw]
    if len(kinds) != 1:
        raise ValueError("a script item needs exactly one of 'input', 'error', 'message'")
    tool = raw.get("tool")
    if tool is not None and not isinstance(tool, str):
        raise ValueError("'tool' must be a string or null")
    times = raw.get("times", 1)
    delay = raw.get("delay_seconds", 0)
    if not isinstance(times, int) or times < 1:
        raise ValueError("'times' must be a positive integer")
    if not isinstance(delay, int | float) or delay < 0:
        raise ValueError("'delay_seconds' must be a non-negative number")
    item: dict[str, Any] = {"tool": tool, "delay_seconds": float(delay)}
    if "input" in raw:
        if not isinstance(raw["input"], dict):
            raise ValueError("'input' must be an object")
        item["input"] = raw["input"]
    elif "error" in raw:
        error = raw["error"]
        if not isinstance(error, dict) or not isinstance(error.get("status"), int):
            raise ValueError("'error' must be an object with an integer 'status'")
        item["error"] = {
            "status": error["status"],
            "type": error.get("type"),
            "message": error.get("message"),
        }
    else:
        message = raw["message"]
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            raise ValueError("'message' must be an object with a 'content' list")
        item["message"] = {
            "content": message["content"],
            "stop_reason": message.get("stop_reason", "end_turn"),
        }
    return [dict(item) for _ in range(times)]


def _user_text(body: dict[str, Any]) -> str:
    parts: list[str] = []
    for message in body.get("messages", []):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                block["text"]
                for block in content
                if isinstance(block, dict)
                and block.get("type") == "text"
                and isinstance(block.get("text"), str)
            )
    return "\n\n".join(parts)


def _sections(text: str) -> dict[str, Any]:
    """The JSON data sections (`<task>...</task>` etc.) the agents' prompts carry."""
    found: dict[str, Any] = {}
    for match in _SECTION.finditer(text):
        try:
            found[match.group(1)] = json.loads(match.group(2))
        except json.JSONDecodeError:
            continue
    return found


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _catalog_names(body: dict[str, Any], sections: dict[str, Any]) -> list[str] | None:
    """The tool names the plan may use: from `<tools>`, else the schema's enum; None if unknown."""
    tools = sections.get("tools")
    if isinstance(tools, list):
        return [
            tool["name"] for tool in tools if isinstance(tool, dict) and isinstance(tool.get("name"), str)
        ]
    for tool in body.get("tools", []):
        try:
            enum = tool["input_schema"]["properties"]["steps"]["items"]["properties"]["tool"]["enum"]
        except (KeyError, TypeError):
            continue
        if isinstance(enum, list):
            return [name for name in enum if isinstance(name, str)]
    return None


def _default_input(tool: str | None, body: dict[str, Any]) -> dict[str, Any]:
    text = _user_text(body)
    sections = _sections(text)
    task_value = sections.get("task")
    task = task_value if isinstance(task_value, str) else _cut(text, 200)
    context = sections.get("user_context")
    user_id = context.get("user_id") if isinstance(context, dict) else None
    user = user_id if isinstance(user_id, str) and user_id else "unknown-user"

    if tool == ANALYZE_TOOL:
        return {
            "summary": f"The user asks: {_cut(task, 150) or '(empty task)'}",
            "intent": "open_ticket",
            "risks": ["Creates a ticket in the tracker (side effect)."],
        }
    if tool == PLAN_TOOL:
        names = _catalog_names(body, sections)
        if names is not None and "create_ticket" not in names:
            return {"steps": []}
        return {
            "steps": [
                {
                    "tool": "create_ticket",
                    "args": {
                        "title": _cut(task, 80) or "Support request",
                        "body": f"Requested by {user}: {task}"[:5000],
                        "priority": "normal",
                        "requester": user,
                    },
                    "reason": "The user reports a problem that needs a ticket.",
                }
            ]
        }
    if tool == VERIFY_TOOL:
        results = sections.get("results")
        if not isinstance(results, list):
            return {"success": True, "reason": "The executed calls accomplish the task."}
        if not results:
            return {"success": False, "reason": "Nothing was executed for the task."}
        if all(isinstance(call, dict) and call.get("result") for call in results):
            return {"success": True, "reason": f"All {len(results)} calls returned a result."}
        return {"success": False, "reason": "A call returned no result."}
    if tool == CLASSIFY_TOOL:
        expense = sections.get("expense")
        description = str(expense.get("description", "")) if isinstance(expense, dict) else ""
        category = "lodging" if "hotel" in description.lower() else "other"
        return {"category": category, "confidence": 0.9, "rationale": "The fake reads the description."}
    return {}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client goes away mid-answer (a test's timeout, a closed pool)."""


class FakeAnthropicAPI:
    """The fake server; thread-safe, usable as a context manager."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None) -> None:
        self._host = host
        self._port = port
        self._api_key = api_key
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._script: list[dict[str, Any]] = []
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeAnthropicAPI:
        if self._server is not None:
            return self
        server = _Server((self._host, self._port), _make_handler(self))
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="fake-anthropic-api", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeAnthropicAPI:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL to give the SDK (`base_url`), e.g. `http://127.0.0.1:40123`."""
        if self._server is None:
            raise RuntimeError("the fake Anthropic API is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # --- scripting ---------------------------------------------------------------------------

    def script(self, *items: dict[str, Any]) -> int:
        """Queue raw script items (the JSON shapes in the module docstring); returns the count queued."""
        normalised = [entry for item in items for entry in _normalise_item(item)]
        with self._lock:
            self._script.extend(normalised)
        return len(normalised)

    def queue_tool_input(
        self, tool_input: dict[str, Any], *, tool: str | None = None, times: int = 1, delay_seconds: float = 0
    ) -> None:
        """Answer the next matching request with this `tool_use` input (valid or not)."""
        self.script({"tool": tool, "input": tool_input, "times": times, "delay_seconds": delay_seconds})

    def queue_error(
        self,
        status: int,
        *,
        error_type: str | None = None,
        message: str | None = None,
        tool: str | None = None,
        times: int = 1,
        delay_seconds: float = 0,
    ) -> None:
        """Answer the next matching request with an Anthropic-style error body and this status."""
        error = {"status": status, "type": error_type, "message": message}
        self.script({"tool": tool, "error": error, "times": times, "delay_seconds": delay_seconds})

    def queue_message(
        self,
        content: list[dict[str, Any]],
        *,
        stop_reason: str = "end_turn",
        tool: str | None = None,
        times: int = 1,
        delay_seconds: float = 0,
    ) -> None:
        """Answer the next matching request with a message of exactly this content and stop_reason."""
        message = {"content": content, "stop_reason": stop_reason}
        self.script({"tool": tool, "message": message, "times": times, "delay_seconds": delay_seconds})

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._script.clear()

    # --- inspection --------------------------------------------------------------------------

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every `/v1/...` request received, oldest first (copies)."""
        with self._lock:
            return [dict(request) for request in self._requests]

    def requests_for(self, tool: str) -> list[dict[str, Any]]:
        return [request for request in self.requests if request["tool"] == tool]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for request in self.requests:
            key = request["tool"] or ""
            counts[key] = counts.get(key, 0) + 1
        return counts

    def count(self, tool: str | None = None) -> int:
        """Requests received for `tool`, or all of them."""
        return len(self.requests if tool is None else self.requests_for(tool))

    @property
    def pending(self) -> int:
        """Script items not consumed yet."""
        with self._lock:
            return len(self._script)

    # --- request handling (called from handler threads) ---------------------------------------

    def _record(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(record)

    def _take_script(self, tool: str | None) -> dict[str, Any] | None:
        with self._lock:
            for index, item in enumerate(self._script):
                if item["tool"] is None or item["tool"] == tool:
                    return self._script.pop(index)
        return None

    def _next_id(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def _messages(
        self, headers: dict[str, str], raw: bytes, record: dict[str, Any]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, JSON body, extra headers) for `POST /v1/messages`; fills in `record`."""
        body: Any = None
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = None
        tool_choice = body.get("tool_choice") if isinstance(body, dict) else None
        tool = tool_choice.get("name") if isinstance(tool_choice, dict) else None
        tool = tool if isinstance(tool, str) else None
        with self._lock:
            record.update(body=body, tool=tool)
        status, payload, extra = self._answer(headers, raw, body, tool)
        with self._lock:
            record["status"] = status
        return status, payload, extra

    def _answer(
        self, headers: dict[str, str], raw: bytes, body: Any, tool: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:

        bearer = headers.get("authorization", "")
        key = headers.get("x-api-key") or (bearer[7:] if bearer.lower().startswith("bearer ") else "")
        if not key:
            return 401, _error_body(401, message="x-api-key header is required"), {}
        if self._api_key is not None and key != self._api_key:
            return 401, _error_body(401, message="invalid x-api-key"), {}
        if not headers.get("anthropic-version"):
            return 400, _error_body(400, message="anthropic-version: header is required"), {}
        if not isinstance(body, dict):
            return 400, _error_body(400, message="The request body is not valid JSON."), {}
        for field in ("model", "max_tokens", "messages"):
            if field not in body:
                return 400, _error_body(400, message=f"{field}: Field required"), {}

        item = self._take_script(tool)
        if item is not None and item["delay_seconds"]:
            time.sleep(item["delay_seconds"])
        if item is not None and "error" in item:
            error = item["error"]
            status = error["status"]
            extra = {"retry-after": "1"} if status == 429 else {}
            return status, _error_body(status, error["type"], error["message"]), extra

        number = self._next_id()
        if item is not None and "message" in item:
            content = item["message"]["content"]
            stop_reason = item["message"]["stop_reason"]
        else:
            tool_input = item["input"] if item is not None else _default_input(tool, body)
            content = [
                {
                    "type": "tool_use",
                    "id": f"toolu_fake_{number:06d}",
                    "name": tool or "tool",
                    "input": tool_input,
                }
            ]
            stop_reason = "tool_use"
        answer = {
            "id": f"msg_fake_{number:06d}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": max(1, len(raw) // 4),
                "output_tokens": max(1, len(json.dumps(content)) // 4),
            },
        }
        return 200, answer, {}


def _make_handler(fake: FakeAnthropicAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "FakeAnthropicAPI/1.0"
        timeout = 60  # idle keep-alive connections end after this
        disable_nagle_algorithm = True  # headers and body go out without a delayed-ACK stall

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, status: int, payload: Any, extra_headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("request-id", f"req_fake_{threading.get_ident()}_{time.monotonic_ns()}")
            for name, value in (extra_headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _read_body(self) -> bytes:
            length = int(self.headers.get("content-length") or 0)
            return self.rfile.read(length) if length > 0 else b""

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/_fake/health":
                self._send(200, {"ok": True})
            elif url.path == "/_fake/requests":
                tool = parse_qs(url.query).get("tool", [None])[0]
                requests = fake.requests if tool is None else fake.requests_for(tool)
                self._send(200, {"requests": requests, "counts": fake.counts(), "pending": fake.pending})
            else:
                self._send(404, _error_body(404, message=f"Not found: {url.path}"))

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            raw = self._read_body()
            if url.path == "/_fake/reset":
                fake.reset()
                self._send(200, {"ok": True})
            elif url.path == "/_fake/script":
                self._script(raw)
            elif url.path == "/v1/messages":
                headers = {name.lower(): value for name, value in self.headers.items()}
                # Recorded on arrival (status None until answered), so a slow answer is visible too.
                record: dict[str, Any] = {"method": "POST", "path": url.path, "headers": headers}
                record.update(body=None, tool=None, status=None)
                fake._record(record)
                status, payload, extra = fake._messages(headers, raw, record)
                # What the answer said it used: what a task's spend must add up to.
                record["usage"] = payload.get("usage") if status == 200 else None
                record["response_id"] = payload.get("id") if status == 200 else None
                self._send(status, payload, extra)
            else:
                self._send(404, _error_body(404, message=f"Not found: {url.path}"))

        def _script(self, raw: bytes) -> None:
            try:
                parsed = json.loads(raw)
                if isinstance(parsed, dict) and "items" in parsed:
                    parsed = parsed["items"]
                items = parsed if isinstance(parsed, list) else [parsed]
                queued = fake.script(*items)
            except (json.JSONDecodeError, ValueError) as exc:
                self._send(400, {"ok": False, "error": str(exc)})
                return
            self._send(200, {"queued": queued, "pending": fake.pending})

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A local fake of the Anthropic Messages API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", default=None, help="when set, requests must carry this key")
    args = parser.parse_args(argv)

    stopping = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    fake = FakeAnthropicAPI(host=args.host, port=args.port, api_key=args.api_key).start()
    print(fake.url, flush=True)
    try:
        while not stopping.wait(0.2):
            pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
