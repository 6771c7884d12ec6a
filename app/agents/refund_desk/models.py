"""RefundDesk's input, its task data, and the typed input and output of its LLM task."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

AMOUNT_PATTERN = r"^(0|[1-9][0-9]{0,6})(\.[0-9]{1,2})?$"


class RunRefund(BaseModel):
    """The `run` handler's input: which order, and what the customer says."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    order_id: str = Field(pattern=r"^ORD-[0-9]{4,10}$")
    reason: str = Field(min_length=1, max_length=1000)


class Order(BaseModel):
    """The order as the tool service's `get_order` returns it."""

    model_config = ConfigDict(extra="ignore")

    order_id: str
    customer: str
    item: str
    total: str
    currency: str
    purchased_on: str
    refunded: bool


class PolicyVerdict(BaseModel):
    """What the tool service's refund policy said of one proposed amount."""

    model_config = ConfigDict(extra="ignore")

    allowed: bool
    max_amount: str
    rule: str
    reason: str


class ProposeInput(BaseModel):
    order: Order
    reason: str
    # The policy's verdicts on earlier proposals, oldest first: the next one must respect them.
    feedback: list[PolicyVerdict] = Field(default_factory=list)


class RefundProposal(BaseModel):
    amount: str = Field(pattern=AMOUNT_PATTERN, description="The refund, a decimal string such as 60.00.")
    rationale: str = Field(description="One sentence: why this amount.")


class RevisionPolicy(BaseModel):
    """How often a proposal the policy refuses may be revised (read once, journaled)."""

    max_revisions: int


class RefundData(BaseModel):
    order_id: str
    reason: str
    order: Order | None = None
    proposal: RefundProposal | None = None
    verdicts: list[PolicyVerdict] = Field(default_factory=list)
    refund_id: str | None = None
