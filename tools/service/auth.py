"""Who may call the tool service: a bearer credential per surface, checked before anything else.

`/tools/*` and the inspection endpoints (`/tickets`, `/approval-tickets`, `/receipts/{id}`: what
the console shows) take `TOOLS_API_TOKEN` (the agent service, agentctl, the demo); the expense
REST surfaces take `EXPENSES_API_TOKEN` (an expense portal). Each route takes exactly one, so a
leaked portal credential cannot post to the ledger, and a missing or wrong one is 401 before the
body is read. `/health` alone is open (load balancers, probes).
"""

from __future__ import annotations

import enum
import hmac

from starlette.requests import Request

from tools.service.errors import ApiError
from tools.service.settings import ToolsSettings

AGENT_HEADER = "X-Agent"
AGENT_MAX_LENGTH = 64


class Credential(enum.Enum):
    TOOLS = "TOOLS_API_TOKEN"
    EXPENSES = "EXPENSES_API_TOKEN"


def _expected(settings: ToolsSettings, credential: Credential) -> str:
    return settings.tools_token if credential is Credential.TOOLS else settings.expenses_token


def require(request: Request, settings: ToolsSettings, credential: Credential) -> None:
    """Refuse (401) a request without this route's bearer credential; constant-time compare."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    expected = _expected(settings, credential).encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), expected):
        raise ApiError(
            401,
            "unauthorized",
            f"This endpoint needs Authorization: Bearer <{credential.value}>.",
            headers={"WWW-Authenticate": 'Bearer realm="tools"'},
        )


def calling_agent(request: Request) -> str | None:
    """The agent the agent service calls for (`X-Agent`), or None for a direct caller."""
    agent = request.headers.get(AGENT_HEADER)
    if agent is None:
        return None
    agent = agent.strip()
    if not agent or len(agent) > AGENT_MAX_LENGTH or not agent.isascii() or not agent.isidentifier():
        raise ApiError(400, "invalid_agent", f"The {AGENT_HEADER} header must name an agent, e.g. AgentTask.")
    return agent
