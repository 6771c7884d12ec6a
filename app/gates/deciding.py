"""The agents' public `decide`: a decision reaches the arbiter only with a valid proof.

Every agent's `decide` handler is this function: it checks the proof the approvals surface minted
(app/gates/proof.py) in a journaled step, so the verdict, not the key, is what the journal
keeps, then hands the decision to the task's arbiter and waits for its answer. A call straight to
the ingress without a proof, with a proof for another decision or task, or with an expired one,
is refused with 401 before anything is read or written.
"""

from __future__ import annotations

from restate import ObjectSharedContext, RunOptions, TerminalError

from app.gates import proof
from app.gates.arbiter import decide, gate_key
from app.gates.models import DecideInput, GateReply, ProvenDecision
from app.settings import get_settings


async def check_decision_proof(agent: str, task_id: str, request: ProvenDecision) -> proof.ProofCheck:
    """Runs only inside `ctx.run_typed` (it reads the clock and the secret)."""
    key = proof.proof_key(get_settings().webhook_secret)
    return proof.check(key, request.proof, agent, task_id, request.decide_input())


async def decide_with_proof(ctx: ObjectSharedContext, agent: str, request: ProvenDecision) -> GateReply:
    """Hand a proven decision to the task's arbiter; its refusals (409, 403) pass through."""
    verdict = await ctx.run_typed(
        "decision proof",
        check_decision_proof,
        RunOptions(type_hint=proof.ProofCheck),
        agent=agent,
        task_id=ctx.key(),
        request=request,
    )
    if not verdict.ok:
        raise TerminalError(
            f"decision refused: {verdict.reason}; decisions go through the approvals surface "
            "(the signed webhook or the inbox), which authenticates the approver",
            status_code=401,
        )
    decision: DecideInput = request.decide_input()
    reply: GateReply = await ctx.object_call(decide, key=gate_key(agent, ctx.key()), arg=decision)
    return reply
