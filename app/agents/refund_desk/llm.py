"""RefundDesk's LLM task: propose the refund amount, within what the policy said so far."""

from __future__ import annotations

from app.agents.refund_desk.models import ProposeInput, RefundProposal
from app.llm import LlmTask
from app.llm.prompting import section


def _propose_prompt(request: ProposeInput) -> str:
    parts = [
        "Propose the refund for this request.",
        section("order", request.order.model_dump()),
        section("customer_reason", request.reason),
    ]
    if request.feedback:
        parts.append(section("policy_feedback", [verdict.model_dump() for verdict in request.feedback]))
    parts.append("Call submit_proposal with the amount and your rationale.")
    return "\n\n".join(parts)


def propose_offline(request: ProposeInput) -> RefundProposal:
    """The whole price first; after a refusal, the most the policy said it allows."""
    if request.feedback:
        limit = request.feedback[-1].max_amount
        return RefundProposal(amount=limit, rationale=f"the policy allows at most {limit}")
    return RefundProposal(amount=request.order.total, rationale="a full refund of the order")


PROPOSE: LlmTask[ProposeInput, RefundProposal] = LlmTask(
    name="propose",
    input_type=ProposeInput,
    output_type=RefundProposal,
    tool="submit_proposal",
    description="Submit the proposed refund amount and why.",
    instructions=(
        "You are the ASSESS step of a refund desk. Propose the amount to refund for the customer's "
        "request, in the order's currency, at most the order's total. If <policy_feedback> shows an "
        "earlier amount was refused, propose one within its max_amount."
    ),
    prompt=_propose_prompt,
    offline=propose_offline,
)
