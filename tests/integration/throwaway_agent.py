"""A throwaway agent, declared in a test module with only the public API (app/agent.py).

The test stacks register it through `AGENT_MODULES`: nothing outside this file names it, which is
the proof that writing an agent needs no edit anywhere else. It asks its one LLM task for a
greeting, waits for a human at a gate, and ends. `GREETER_VARIANT=v2` is the next release of it, whose
SEND journals one step more (tests/integration/test_versions.py runs both releases side by side);
`GREETER_NOTES=reworded` words its notes differently (deployed in place over parked tasks).
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

from app.agent import Agent, ApprovalRequest, Gate, LlmTask, Machine, Next, StepContext
from app.llm.prompting import section


class Greet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=40)


class GreetingRequest(BaseModel):
    name: str


class Greeting(BaseModel):
    text: str


class GreeterData(BaseModel):
    name: str
    greeting: str | None = None


GREET: LlmTask[GreetingRequest, Greeting] = LlmTask(
    name="greet",
    input_type=GreetingRequest,
    output_type=Greeting,
    instructions="Write a one-line greeting for the person named in <person>.",
    prompt=lambda request: section("person", request.name),
    offline=lambda request: Greeting(text=f"Hello, {request.name}!"),
)


# Read once, at import: a release is fixed for the life of its process.
VARIANT = os.environ.get("GREETER_VARIANT", "v1")
# A release that words its notes differently (test_versions.py deploys it in place).
REWORDED = os.environ.get("GREETER_NOTES") == "reworded"


async def compose(step: StepContext[GreeterData]) -> Next:
    step.data.greeting = (await step.llm(GREET, GreetingRequest(name=step.data.name))).text
    note = f"composed for {step.data.name}: {step.data.greeting}" if REWORDED else step.data.greeting
    return Next(target="REVIEW", note=note)


def review(step: StepContext[GreeterData]) -> ApprovalRequest:
    return ApprovalRequest(
        summary=f"Send the greeting {step.data.greeting!r}?", details={"to": step.data.name}
    )


class Stamp(BaseModel):
    release: str


async def stamp() -> Stamp:
    return Stamp(release=VARIANT)


async def send(step: StepContext[GreeterData]) -> Next:
    if VARIANT == "v2":
        # The new release journals differently: a v1 task replayed here would not match its journal.
        await step.run("v2 stamp", stamp, Stamp)
    return Next(target="SENT", result={"greeting": step.data.greeting})


AGENT = Agent(
    machine=Machine.declare(
        "Greeter",
        initial="COMPOSE",
        transitions={
            "COMPOSE": ["REVIEW", "DROPPED"],
            "REVIEW": ["SEND", "DROPPED"],
            "SEND": ["SENT", "DROPPED"],
        },
        terminal=["SENT", "DROPPED"],
        failure="DROPPED",
        gates={"REVIEW": Gate(approve="SEND", reject="DROPPED", timeout="DROPPED")},
    ),
    description="A throwaway agent of the tests: compose a greeting, have it approved, send it.",
    input_type=Greet,
    data_type=GreeterData,
    start=lambda request: GreeterData(name=request.name),
    steps={"COMPOSE": compose, "SEND": send},
    approvals={"REVIEW": review},
    llm_tasks=(GREET,),
)
