"""Step Functions as AWS runs it: the parity patches on moto's interpreter, installed together.

Each module holds one behaviour and its reasons: `stepfunctions_jsonata` (JSONata, variables,
create-time validation), `stepfunctions_time` (Wait and Retry in real time, scaled by
`LOCAL_AWS_SFN_TIME_SCALE`), `stepfunctions_express` (StartSyncExecution, generated names),
`stepfunctions_testing` (TestState), `stepfunctions_tasks` (Lambda errors of function-ARN
tasks), `stepfunctions_roles` (calls signed with the execution role, trust checked at create).
StopExecution returns once the execution has ended (`_stop_returns_after_the_end`).
Unlike `stepfunctions_speedups` these change behaviour, so they have no off switch: without them
the emulator answers what AWS does not.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from . import (
    stepfunctions_express,
    stepfunctions_jsonata,
    stepfunctions_roles,
    stepfunctions_tasks,
    stepfunctions_testing,
    stepfunctions_threads,
    stepfunctions_time,
)

_lock = threading.Lock()
_done = False


def install() -> None:
    """Install every parity patch (idempotent)."""
    global _done
    with _lock:
        if _done:
            return
        _fix_error_codes()
        _stop_returns_after_the_end()
        stepfunctions_threads.install()  # not parity: moto's list of every thread, pruned
        stepfunctions_jsonata.install()
        stepfunctions_time.install()
        stepfunctions_express.install()
        stepfunctions_testing.install()
        stepfunctions_tasks.install()
        stepfunctions_roles.install()
        _done = True


def _fix_error_codes() -> None:
    """Give moto's parser exceptions their AWS error code on the wire.

    `moto.stepfunctions.parser.api` declares `code = "InvalidDefinition"` (LocalStack's
    convention) on subclasses of moto's AWSError, which reads `TYPE`: clients saw
    `An error occurred ()` with no code, so `except client.exceptions.InvalidDefinition` missed.
    """
    from moto.core.exceptions import AWSError
    from moto.stepfunctions.parser import api

    for value in vars(api).values():
        if isinstance(value, type) and issubclass(value, AWSError) and value.TYPE is None:
            code = value.__dict__.get("code")
            if isinstance(code, str):
                value.TYPE = code
                value.STATUS = int(value.__dict__.get("status_code", 400))


# How long StopExecution waits for the execution's worker to end it (a task still running, e.g.
# a Lambda invoke, keeps the worker busy until it returns: then the answer does not wait longer).
STOP_WAIT_S = 2.0


def _stop_returns_after_the_end() -> None:
    """StopExecution answers once the execution is ABORTED, as AWS's does.

    moto only signals the execution's worker thread, which sets the end later: a describe or a
    StartExecution of the same name right after StopExecution still found it RUNNING (and the
    start was then taken as an idempotent retry instead of ExecutionAlreadyExists).
    """
    from moto.stepfunctions.parser.api import ExecutionStatus
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    stop_before = StepFunctionsParserBackend.stop_execution

    def stop_execution(backend: Any, *args: Any, **kwargs: Any) -> Any:
        execution: Any = stop_before(backend, *args, **kwargs)
        deadline = time.monotonic() + STOP_WAIT_S
        while execution.exec_status == ExecutionStatus.RUNNING and time.monotonic() < deadline:
            time.sleep(0.002)  # the worker wakes at once; its end is journaled, then published
        return execution

    StepFunctionsParserBackend.stop_execution = stop_execution  # type: ignore[method-assign,assignment]
