"""General-purpose tools: waiting a fixed time and echoing a value. Used by tests, benchmarks
and plans that need a pause; both are free of side effects, so idempotent by nature."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from agents.tools.base import RetryPolicy, ToolContext, TransientToolError, tool


class PauseArgs(BaseModel):
    seconds: float = Field(ge=0, le=300, description="how long to wait")
    label: str = ""


class PauseResult(BaseModel):
    seconds: float
    label: str
    started_at: float = Field(description="unix time the wait began")
    finished_at: float = Field(description="unix time the wait ended")


@tool(timeout_s=330)
def pause(args: PauseArgs, ctx: ToolContext) -> PauseResult:
    """Wait the given number of seconds, then report when the wait began and ended.

    Stops early, as cancelled, when its goal is cancelled, and as timed out when its time is up.
    """
    started = time.time()
    ctx.sleep(args.seconds)
    return PauseResult(
        seconds=args.seconds, label=args.label, started_at=started, finished_at=time.time()
    )


class EchoArgs(BaseModel):
    value: Any = None


class EchoResult(BaseModel):
    value: Any = None


@tool(timeout_s=5, inline=True)
def echo(args: EchoArgs, ctx: ToolContext) -> EchoResult:
    """Return the given value unchanged."""
    return EchoResult(value=args.value)


class FlakyArgs(BaseModel):
    fail_times: int = Field(
        0, ge=0, description="fail transiently while the attempt is this or less"
    )
    value: Any = None


@tool(
    retry=RetryPolicy(max_attempts=4, initial_delay_s=2.0, factor=2.0, max_delay_s=30.0),
    inline=True,
)
def flaky(args: FlakyArgs, ctx: ToolContext) -> EchoResult:
    """Fail with a transient error on the first ``fail_times`` attempts, then echo the value."""
    if ctx.attempt <= args.fail_times:
        raise TransientToolError(f"flaky: attempt {ctx.attempt} of {args.fail_times} failing")
    return EchoResult(value=args.value)


BUILTIN_TOOLS = (pause, echo, flaky)
