"""Step Functions as AWS runs it: the parity patches on moto's interpreter, installed together.

Each module holds one behaviour and its reasons: `stepfunctions_jsonata` (JSONata, variables,
create-time validation), `stepfunctions_time` (Wait and Retry in real time, scaled by
`LOCAL_AWS_SFN_TIME_SCALE`), `stepfunctions_express` (StartSyncExecution, generated names),
`stepfunctions_testing` (TestState), `stepfunctions_tasks` (Lambda errors of function-ARN
tasks), `stepfunctions_roles` (calls signed with the execution role, trust checked at create).
Unlike `stepfunctions_speedups` these change behaviour, so they have no off switch: without them
the emulator answers what AWS does not.
"""

from __future__ import annotations

import threading

from . import (
    stepfunctions_express,
    stepfunctions_jsonata,
    stepfunctions_roles,
    stepfunctions_tasks,
    stepfunctions_testing,
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
