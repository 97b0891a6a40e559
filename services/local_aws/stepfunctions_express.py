"""Express workflows (`StartSyncExecution`) and generated execution names, as AWS has them.

moto 5.2.5 has no `StartSyncExecution` (HTTP 500 `NotImplementedError`) and names an execution
started without `name` "None" (ARN ending `:None`; the second such start fails with
`ExecutionAlreadyExists`). Here:

- `StartExecution` without a name gets a UUID, as on AWS.
- `StartSyncExecution` runs an EXPRESS state machine in the request and answers with its status,
  output or error and cause, and billing details (duration rounded up to 100 ms, memory in 64 MB
  units, as AWS bills Express workflows). A STANDARD machine is refused with
  `StateMachineTypeNotSupported`. The execution ARN has AWS's Express form
  (`arn:aws:states:REGION:ACCOUNT:express:MACHINE:NAME:UUID`).

Clients reach it as on AWS: botocore prefixes the host with `sync-` for these operations, so
the profile disables host prefix injection (`sync-127.0.0.1` does not resolve).
"""

from __future__ import annotations

import datetime
import json
import math
import uuid
from typing import Any

from .patching import once

# AWS bills Express workflows by 100 ms of duration and by 64 MB of memory used.
BILLING_DURATION_STEP_MS = 100
BILLING_MEMORY_STEP_MB = 64


def generated_name() -> str:
    """The name AWS gives an execution started without one."""
    return str(uuid.uuid4())


def billing_details(start: datetime.datetime, stop: datetime.datetime) -> dict[str, int]:
    """What AWS reports an Express execution is billed for."""
    elapsed_ms = max(0.0, (stop - start).total_seconds() * 1000)
    steps = max(1, math.ceil(elapsed_ms / BILLING_DURATION_STEP_MS))
    return {
        "billedMemoryUsedInMB": BILLING_MEMORY_STEP_MB,
        "billedDurationInMilliseconds": steps * BILLING_DURATION_STEP_MS,
    }


def express_execution_arn(state_machine_arn: str, name: str) -> str:
    """`arn:...:stateMachine:M` becomes `arn:...:express:M:NAME:UUID`."""
    prefix, _, machine = state_machine_arn.partition(":stateMachine:")
    return f"{prefix}:express:{machine.split(':')[0]}:{name}:{uuid.uuid4()}"


def start_sync_execution(backend: Any, arn: str, name: str | None, data: str | None,
                         trace_header: str | None) -> dict[str, Any]:  # fmt: skip
    """Run an EXPRESS state machine to its end; the StartSyncExecution response."""
    from moto.stepfunctions.parser.api import InvalidExecutionInput, StateMachineTypeNotSupported
    from moto.stepfunctions.parser.backend.execution import SyncExecution

    state_machine = backend.describe_state_machine(arn)  # StateMachineDoesNotExist, InvalidArn
    if state_machine.type != "EXPRESS":
        raise StateMachineTypeNotSupported(
            "This operation is not supported by this type of state machine"
        )
    input_data = "{}" if data is None else data
    try:
        json.loads(input_data)
    except ValueError as error:
        raise InvalidExecutionInput(f"Invalid State Machine Execution Input: '{error}'") from None
    name = name or generated_name()
    execution: Any = SyncExecution(
        name=name,
        sm_type=state_machine.type,
        role_arn=state_machine.roleArn,
        exec_arn=express_execution_arn(state_machine.arn, name),
        account_id=backend.account_id,
        region_name=backend.region_name,
        state_machine=state_machine,
        start_date=datetime.datetime.now(tz=datetime.UTC),
        cloud_watch_logging_session=None,
        input_data=input_data,
        trace_header=trace_header,
        activity_store={},
    )
    execution.start()  # a SyncExecutionWorker runs the program in this thread
    output: dict[str, Any] = dict(execution.to_start_sync_execution_output())
    output["stateMachineArn"] = state_machine.arn
    output["billingDetails"] = billing_details(execution.start_date, execution.stop_date)
    output["status"] = getattr(output["status"], "value", output["status"])
    return output


@once
def install() -> None:
    """Add StartSyncExecution and generated names to moto (idempotent)."""
    from moto.core.responses import ActionResult
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend
    from moto.stepfunctions.responses import StepFunctionResponse

    original_start = StepFunctionsParserBackend.start_execution

    def start_execution(self: Any, state_machine_arn: str, name: Any = None,
                        execution_input: Any = None, trace: Any = None) -> Any:  # fmt: skip
        return original_start(
            self, state_machine_arn, name or generated_name(), execution_input, trace
        )

    def start_sync_execution_action(self: Any) -> Any:
        response = start_sync_execution(
            self.stepfunction_backend,
            self._get_param("stateMachineArn"),
            self._get_param("name"),
            self._get_param("input"),
            self._get_param("traceHeader"),
        )
        return ActionResult(response)

    StepFunctionsParserBackend.start_execution = start_execution  # type: ignore[method-assign,assignment]
    StepFunctionResponse.start_sync_execution = start_sync_execution_action  # type: ignore[attr-defined]
