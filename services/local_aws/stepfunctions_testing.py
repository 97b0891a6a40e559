"""The TestState API: run one state on an input, with a mocked task result, as AWS documents it.

moto 5.2.5 answers `TestState` with HTTP 500 `NotImplementedError`; it ships LocalStack's
TestState interpreter (one state parsed on its own, inspection data recorded) but not the
operation. This module adds the operation around that interpreter:

- `definition` is one state, or a whole state machine with `stateName` picking the state (its
  top-level `QueryLanguage` applies to the state, as on AWS);
- `input`, `variables` (workflow variables in scope) and `context` (merged into `$$` /
  `$states.context`);
- `mock.result` (the task's result, no call is made) or `mock.errorOutput` (the task fails
  with that error and cause); without a mock, a Task calls the real (local) service;
- `inspectionLevel`: INFO gives status, output, error, cause and nextState; DEBUG and TRACE add
  `inspectionData` (input, after InputPath / Parameters / Arguments, result, after ResultSelector
  / ResultPath, variables, errorDetails). TRACE adds nothing more here: its HTTP request and
  response are those of HTTP Task states, which the emulator does not run;
- one attempt per call, as AWS: an error a Retrier matches answers RETRIABLE (with `retryIndex`
  and `retryBackoffIntervalSeconds`, counting `stateConfiguration.retrierRetryCount` retries
  already made); once its attempts are spent, or with no Retrier, a matching Catcher answers
  CAUGHT_ERROR with its `Next` and the output it builds; otherwise FAILED.

Supported state types are those of AWS's TestState less Map and Parallel (as moto's analyser).
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from .patching import once

MOCK_STATE_NAME = "TestState"  # the name moto's TestState parser gives the state
INSPECTION_LEVELS = ("INFO", "DEBUG", "TRACE")


def _validation_error(message: str) -> Exception:
    from moto.stepfunctions.exceptions import ValidationException

    return ValidationException(message)


def _json_param(value: str | None, field: str, default: Any) -> Any:
    from moto.stepfunctions.parser.api import InvalidExecutionInput

    if value is None:
        return default
    try:
        return json.loads(value)
    except ValueError as error:
        if field == "input":
            raise InvalidExecutionInput(
                f"Invalid State Machine Execution Input: '{error}'"
            ) from None
        raise _validation_error(f"The field '{field}' is not valid JSON: {error}") from None


def state_definition(definition: str, state_name: str | None) -> str:
    """The one state to test, as JSON text (a machine's state gets its QueryLanguage)."""
    from moto.stepfunctions.parser.api import InvalidDefinition

    try:
        document = json.loads(definition)
    except ValueError as error:
        raise InvalidDefinition(f"Invalid State Machine Definition: '{error}'") from None
    if not isinstance(document, dict):
        raise InvalidDefinition("Invalid State Machine Definition: a JSON object is expected")
    if state_name is None:
        if "States" in document:
            raise _validation_error("stateName is required when definition is a state machine")
        return definition
    states = document.get("States")
    if not isinstance(states, dict) or state_name not in states:
        raise _validation_error(f"The state '{state_name}' is not in the definition")
    state = dict(states[state_name])
    if "QueryLanguage" in document and "QueryLanguage" not in state:
        state["QueryLanguage"] = document["QueryLanguage"]
    return json.dumps(state)


def mock_test_case(mock: dict[str, Any] | None, retry_count: int) -> Any:
    """The mocked task response (moto's Step Functions Local mock model), or None."""
    if not mock:
        return None
    from moto.stepfunctions.parser.mocking.mock_config import (
        MockedResponseReturn,
        MockedResponseThrow,
        MockTestCase,
        StateMockedResponses,
    )

    if ("result" in mock) == ("errorOutput" in mock):
        raise _validation_error("mock must have exactly one of result and errorOutput")
    responses: list[Any] = []
    for attempt in range(retry_count + 1):
        if "result" in mock:
            payload = _json_param(mock["result"], "mock.result", None)
            responses.append(MockedResponseReturn(attempt, attempt, payload))
        else:
            error = mock["errorOutput"]
            responses.append(
                MockedResponseThrow(
                    attempt, attempt, error.get("error", ""), error.get("cause", "")
                )
            )
    return MockTestCase(
        state_machine_name=MOCK_STATE_NAME,
        test_case_name="TestState",
        state_mocked_responses_list=[StateMockedResponses(MOCK_STATE_NAME, "mock", responses)],
    )


def test_state(backend: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Run the state; the TestState response."""
    from moto.stepfunctions.parser.api import InvalidDefinition
    from moto.stepfunctions.parser.asl.static_analyser.test_state.test_state_analyser import (
        TestStateStaticAnalyser,
    )
    from moto.stepfunctions.parser.backend.state_machine import TestStateMachine
    from moto.stepfunctions.parser.backend.test_state.execution import TestStateExecution
    from moto.stepfunctions.parser.backend.test_state.execution_worker import (
        TestStateExecutionWorker,
    )

    level: Any = params.get("inspectionLevel") or "INFO"
    if level not in INSPECTION_LEVELS:
        raise _validation_error(
            f"1 validation error detected: Value '{level}' at 'inspectionLevel' failed to "
            "satisfy constraint: Member must satisfy enum value set: "
            f"[{', '.join(INSPECTION_LEVELS)}]"
        )
    definition = state_definition(params["definition"], params.get("stateName"))
    try:
        TestStateStaticAnalyser().analyse(definition)
    except Exception as error:
        raise InvalidDefinition(f"Invalid State Machine Definition: '{error}'") from None
    input_value = _json_param(params.get("input"), "input", {})
    variables = _json_param(params.get("variables"), "variables", {})
    if not isinstance(variables, dict):
        raise _validation_error("variables must be a JSON object")
    context = _json_param(params.get("context"), "context", {})
    configuration = params.get("stateConfiguration") or {}
    retry_count = int(configuration.get("retrierRetryCount") or 0)
    mocks = mock_test_case(params.get("mock"), retry_count)
    plan = AttemptPlan(json.loads(definition), retry_count)

    class Worker(TestStateExecutionWorker):
        def _get_evaluation_environment(self) -> Any:
            env: Any = super()._get_evaluation_environment()
            env.mock_test_case = mocks
            for key, value in variables.items():
                env.variable_store.set(key, value)
            env.variable_store.reset_tracing()
            data: Any = env.states.context_object.context_object_data
            for key, value in context.items() if isinstance(context, dict) else ():
                data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
            env.test_state_plan = plan  # read by ExecutionState._eval_state (see below)
            return env

    class Execution(TestStateExecution):
        def _get_start_execution_worker(self) -> Any:
            worker = super()._get_start_execution_worker()
            worker.__class__ = Worker
            return worker

    name = f"TestState-{datetime.datetime.now(datetime.UTC):%Y%m%d%H%M%S%f}"
    arn = f"arn:aws:states:{backend.region_name}:{backend.account_id}:stateMachine:{name}"
    role_arn = params.get("roleArn") or f"arn:aws:iam::{backend.account_id}:role/TestState"
    machine = TestStateMachine(name=name, arn=arn, definition=definition, role_arn=role_arn)
    execution: Any = Execution(
        name=name,
        role_arn=role_arn,
        exec_arn=arn.replace(":stateMachine:", ":execution:") + f":{name}",
        account_id=backend.account_id,
        region_name=backend.region_name,
        state_machine=machine,
        start_date=datetime.datetime.now(tz=datetime.UTC),
        input_data=json.dumps(input_value),  # type: ignore[arg-type]  # json.loads in Execution
        activity_store={},
    )
    execution.start()
    output: dict[str, Any] = dict(execution.to_test_state_output(inspection_level=level))
    output["status"] = getattr(output["status"], "value", output["status"])
    if plan.outcome == "RETRIABLE":
        output["status"] = "RETRIABLE"
    elif plan.outcome == "CAUGHT_ERROR":
        output["status"] = "CAUGHT_ERROR"
        output["nextState"] = plan.next_state
        output["error"], output["cause"] = plan.error, plan.cause
    if output["status"] == "SUCCEEDED" and "nextState" not in output:
        next_state = json.loads(definition).get("Next")
        if next_state:
            output["nextState"] = next_state
    if level == "INFO":
        output.pop("inspectionData", None)
    else:
        inspection = dict(output.get("inspectionData") or {})
        store = execution.exec_worker.env.variable_store
        assigned = {key: store.get(key) for key in sorted(store._declaration_tracing)}
        if assigned:
            inspection["variables"] = json.dumps(assigned, separators=(",", ":"))
        if plan.error_details:
            inspection["errorDetails"] = plan.error_details
        output["inspectionData"] = inspection
    return output


@once
def install() -> None:
    """Add the TestState operation to moto (idempotent)."""
    from moto.core.responses import ActionResult
    from moto.stepfunctions.responses import StepFunctionResponse

    def test_state_action(self: Any) -> Any:
        params = {
            key: self._get_param(key)
            for key in (
                "definition",
                "roleArn",
                "input",
                "inspectionLevel",
                "revealSecrets",
                "variables",
                "stateName",
                "mock",
                "context",
                "stateConfiguration",
            )
        }
        if not params["definition"]:
            raise _validation_error("definition is required")
        return ActionResult(test_state(self.stepfunction_backend, params))

    StepFunctionResponse.test_state = test_state_action  # type: ignore[attr-defined]
    _end_after_the_state()
    _single_attempt_in_test_state()


class AttemptPlan:
    """One attempt of the tested state: what its Retry and Catch decide, without retrying.

    AWS's TestState runs the state once: an error a Retrier matches (with attempts left after
    `stateConfiguration.retrierRetryCount`) answers RETRIABLE with the retrier's index and the
    backoff it would wait; one a Catcher matches answers CAUGHT_ERROR with the catcher's Next.
    """

    def __init__(self, state: dict[str, Any], retry_count: int) -> None:
        self.state = state
        self.retry_count = retry_count
        self.outcome: str | None = None
        self.next_state: str | None = None
        self.error: str | None = None
        self.cause: str | None = None
        self.error_details: dict[str, Any] = {}

    def backoff_seconds(self, retrier: dict[str, Any]) -> int:
        """The interval before the next attempt (no jitter), as AWS computes it."""
        interval = float(retrier.get("IntervalSeconds", 1))
        delay = interval * float(retrier.get("BackoffRate", 2.0)) ** self.retry_count
        if "MaxDelaySeconds" in retrier:
            delay = min(delay, float(retrier["MaxDelaySeconds"]))
        return int(delay)


def _matches(error_equals: Any, env: Any, error_name: Any) -> bool:
    env.stack.append(error_name)
    error_equals.eval(env)
    return bool(env.stack.pop())


def _one_attempt(state: Any, env: Any, plan: AttemptPlan) -> None:
    """ExecutionState._eval_state for TestState: one attempt, then Retry/Catch as AWS decides."""
    env.states.context_object.context_object_data["State"]["RetryCount"] = plan.retry_count
    try:
        state._evaluate_with_timeout(env)
        return
    except Exception as ex:
        failure_event = state._from_error(env=env, ex=ex)
    error_output = state._construct_error_output_value(failure_event=failure_event)
    env.states.set_error_output(error_output)
    env.states.set_result(error_output)
    plan.error, plan.cause = error_output["Error"], error_output["Cause"]
    retriers = plan.state.get("Retry") or []
    for index, retrier in enumerate(state.retry.retriers if state.retry else []):
        if _matches(retrier.error_equals, env, failure_event.error_name):
            attempts = int(retriers[index].get("MaxAttempts", 3))
            if plan.retry_count < attempts:
                plan.outcome = "RETRIABLE"
                plan.error_details = {
                    "retryIndex": index,
                    "retryBackoffIntervalSeconds": plan.backoff_seconds(retriers[index]),
                }
                state._handle_uncaught(env=env, failure_event=failure_event)
            break  # the first matching retrier decides; exhausted, Catch applies
    catchers = plan.state.get("Catch") or []
    for index, catcher in enumerate(state.catch.catchers if state.catch else []):
        if _matches(catcher.error_equals, env, failure_event.error_name):
            state._handle_catch(env=env, failure_event=failure_event)
            plan.outcome = "CAUGHT_ERROR"
            plan.next_state = catchers[index].get("Next")
            plan.error_details = {"catchIndex": index}
            return
    state._handle_uncaught(env=env, failure_event=failure_event)


def _single_attempt_in_test_state() -> None:
    from moto.stepfunctions.parser.asl.component.state.exec.execute_state import ExecutionState

    eval_state = ExecutionState._eval_state

    def _eval_state(self: Any, env: Any) -> None:
        plan = getattr(env, "test_state_plan", None)
        if plan is None:
            eval_state(self, env)  # an execution: moto's loop of attempts
        else:
            _one_attempt(self, env, plan)

    ExecutionState._eval_state = _eval_state  # type: ignore[method-assign]


def _end_after_the_state() -> None:
    """A tested state with `Next` ends the test (moto left the program running, then raised)."""
    from moto.stepfunctions.parser.asl.component.test_state.program.test_state_program import (
        TestStateProgram,
    )

    evaluate_state = TestStateProgram._eval_body

    def eval_body(self: Any, env: Any) -> None:
        evaluate_state(self, env)
        if env.is_running():
            env.set_ended()

    TestStateProgram._eval_body = eval_body  # type: ignore[method-assign]
