"""Wait states and Retry intervals in real time, with one knob that scales them for tests.

AWS waits as long as the ASL says: a `Wait` of 10 s takes 10 s, a Retry with `IntervalSeconds: 2`
and `BackoffRate: 2` sleeps 2 s, then 4 s. The emulator does the same by default.
`LOCAL_AWS_SFN_TIME_SCALE` multiplies every such wait: `0.01` turns 10 s into 100 ms, `0` into
none at all. The ASL, the event history and the retry counts are unchanged; only the clock moves
faster. Waits are interruptible: StopExecution ends a Wait or a Retry interval at once (moto's
Retry slept with `time.sleep`, which nothing could interrupt).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from .patching import once

log = logging.getLogger("local_aws.stepfunctions")

ENV_TIME_SCALE = "LOCAL_AWS_SFN_TIME_SCALE"


def time_scale() -> float:
    """The factor applied to Wait and Retry intervals (default 1: real time)."""
    raw = os.environ.get(ENV_TIME_SCALE, "").strip()
    if not raw:
        return 1.0
    try:
        scale = float(raw)
    except ValueError:
        raise ValueError(f"{ENV_TIME_SCALE} must be a number >= 0, got {raw!r}") from None
    if scale < 0 or scale != scale:
        raise ValueError(f"{ENV_TIME_SCALE} must be a number >= 0, got {raw!r}")
    return scale


def wait_scaled(env: Any, seconds: float) -> None:
    """Wait `seconds` of ASL time, scaled; returns early when the execution stops."""
    remaining = max(0.0, float(seconds)) * time_scale()
    deadline = time.monotonic() + remaining
    # program_state_event is set on every program state change (stop, timeout, error):
    # wake up then, and keep waiting only while the execution still runs.
    while remaining > 0 and env.is_running():
        env.program_state_event.wait(remaining)
        remaining = deadline - time.monotonic()


@once
def install() -> None:
    """Route moto's Wait and Retry waits through `wait_scaled` (idempotent)."""
    time_scale()  # a bad knob fails the emulator's start, not a later execution
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
    from moto.stepfunctions.parser.asl.component.state.wait.wait_function import (
        wait_function,
    )

    def wait_interval(self: Any, env: Any, wait_seconds: int) -> None:
        wait_scaled(env, wait_seconds)

    wait_function.WaitFunction._wait_interval = wait_interval  # type: ignore[method-assign]
    retrier_decl.RetrierDecl._eval_body = _retrier_eval_body  # type: ignore[method-assign]


def _retrier_eval_body(self: Any, env: Any) -> None:
    """moto 5.2.5's RetrierDecl._eval_body with its `time.sleep` made scaled and interruptible."""
    from moto.stepfunctions.parser.asl.component.common.retry.max_attempts_decl import (
        MaxAttemptsOutcome,
    )
    from moto.stepfunctions.parser.asl.component.common.retry.retrier_outcome import (
        RetrierOutcome,
    )

    self.error_equals.eval(env)
    if not env.stack.pop():
        env.stack.append(RetrierOutcome.Skipped)
        return
    self.max_attempts.eval(env=env)
    if env.stack.pop() == MaxAttemptsOutcome.EXHAUSTED:
        env.stack.append(RetrierOutcome.Failed)
        return
    self.interval_seconds.eval(env=env)
    self.backoff_rate.eval(env=env)
    self.max_delay_seconds.eval(env=env)
    self.jitter_strategy.eval(env=env)
    interval_seconds: float = env.stack.pop()
    wait_scaled(env, interval_seconds)
    env.stack.append(RetrierOutcome.Executed)
