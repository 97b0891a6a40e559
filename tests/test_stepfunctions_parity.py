"""Step Functions as AWS runs it, on the real emulator: JSONata, Express, names, TestState, time.

The emulator runs with `LOCAL_AWS_SFN_TIME_SCALE=0.02`, so Wait states and Retry intervals take
2% of their ASL time: the tests check they are waited (a lower bound from the event history),
not how fast anything is.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from scones.testing import StateMachines, finished_execution, tasks_in_a_row
from services.local_aws import stepfunctions_express as express
from services.local_aws import stepfunctions_jsonata as jsonata
from services.local_aws import stepfunctions_time as sfn_time
from tests.conftest import start_local_aws, stop_process

TIME_SCALE = 0.02
HANDLER = """
def handler(event, context):
    if event.get("fail"):
        raise ValueError("asked to fail")
    return {"label": "bike" if event.get("score", 0) > 0.5 else "none", "seen": event}
"""


class Stack(StateMachines):
    """The parity tests' emulator: one classify-like function (`HANDLER`)."""

    def classifier(self) -> str:
        return self.function("classify", HANDLER)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv(sfn_time.ENV_TIME_SCALE, str(TIME_SCALE))
        emulator = start_local_aws(tmp_path_factory.mktemp("sfn_parity"))
    try:
        yield Stack(emulator, "parity")
    finally:
        stop_process(emulator.process)


# --- pure parts -------------------------------------------------------------------------------


def test_step_functions_functions_give_aws_answers() -> None:
    def ev(expression: str, **bindings: Any) -> Any:
        return jsonata._to_json(jsonata.evaluate(expression, bindings))

    assert ev("$partition([1,2,3,4,5], 2)") == [[1, 2], [3, 4], [5]]
    assert ev("$range(0, 10, 2)") == [0, 2, 4, 6, 8, 10]
    assert ev("$range(5, 1, -2)") == [5, 3, 1]
    assert ev("$hash('abc', 'SHA-256')") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert ev("$hash('abc', 'MD5')") == "900150983cd24fb0d6963f7d28e17f72"
    assert ev("$random(7)") == ev("$random(7)") and 0 <= ev("$random()") < 1
    assert uuid.UUID(ev("$uuid()")).version == 4
    assert ev("$parse($s)", s='{"a": [1, null], "b": "x"}') == {"a": [1, None], "b": "x"}
    assert ev("$base64decode($base64encode('héllo'))") == "héllo"
    assert ev("$base64encode('hi')") == "aGk="
    assert ev("$x.y", x={"y": None}) is None, "JSON null stays null"
    assert jsonata.evaluate("$x.missing", {"x": {}}) is None, "undefined"
    bad_expressions = (
        "$hash(1, 'SHA-256')", "$hash('a', 'SHA-3')", "$parse('{')", "$range(0, 3, 0)",
        "$base64decode('%%%')", "$states.input.(", "$nosuch(1)", "1/0", "$eval('1')",
    )  # fmt: skip
    for bad in bad_expressions:
        with pytest.raises(jsonata.QueryEvaluationError):
            jsonata.evaluate(bad, {"states": {"input": {}}})


def test_evaluation_neither_mutates_nor_shares_the_state_data() -> None:
    data = {"input": {"a": None, "items": [{"k": 2}, {"k": 1}], "o": {"x": [1]}}}
    snapshot = json.loads(json.dumps(data))
    for expression in ("$merge([$states.input, {'b': 1}])", "$sort($states.input.items, "
                       "function($l, $r){$l.k > $r.k})", "$states.input ~> |o|{'x': [2]}|",
                       "$append($states.input.o.x, 3)", "$states.input"):  # fmt: skip
        result = jsonata._to_json(jsonata.evaluate(expression, {"states": data}))
        assert data == snapshot, expression
    assert result == snapshot["input"] and result is not data["input"], "a copy, not the input"
    result["o"]["x"].append(9)
    assert data == snapshot


def test_threads_share_parsed_expressions_safely() -> None:
    """Map iterations evaluate one cached expression at once, each with its own bindings."""
    from concurrent.futures import ThreadPoolExecutor

    expression = "($double := function($v){$v * 2}; $map($states.input.xs, $double) ~> $sum())"

    def run(worker: int) -> set[int]:
        xs = list(range(worker + 1))
        return {
            jsonata._to_json(jsonata.evaluate(expression, {"states": {"input": {"xs": xs}}}))
            for _ in range(100)
        }

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, range(8)))
    assert results == [{worker * (worker + 1)} for worker in range(8)]


def test_time_scale_knob(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sfn_time.ENV_TIME_SCALE, raising=False)
    assert sfn_time.time_scale() == 1.0
    monkeypatch.setenv(sfn_time.ENV_TIME_SCALE, "0.5")
    assert sfn_time.time_scale() == 0.5
    for bad in ("-1", "fast", "nan"):
        monkeypatch.setenv(sfn_time.ENV_TIME_SCALE, bad)
        with pytest.raises(ValueError, match=sfn_time.ENV_TIME_SCALE):
            sfn_time.time_scale()


def test_billing_rounds_up_as_aws() -> None:
    import datetime

    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    for elapsed_ms, billed in ((0, 100), (1, 100), (100, 100), (101, 200), (1234, 1300)):
        stop = start + datetime.timedelta(milliseconds=elapsed_ms)
        details = express.billing_details(start, stop)
        assert details == {"billedMemoryUsedInMB": 64, "billedDurationInMilliseconds": billed}


# --- JSONata on the emulator ------------------------------------------------------------------


def classify_task(function: str, payload: Any, **fields: Any) -> dict[str, Any]:
    """A JSONata Task state invoking `function` with `payload` (its Arguments), plus `fields`."""
    return {
        "Type": "Task",
        "Resource": "arn:aws:states:::lambda:invoke",
        "Arguments": {"FunctionName": function, "Payload": payload},
        **fields,
    }


def console_style_machine(function: str) -> dict[str, Any]:
    """What the console writes for a new state machine: JSONata, Arguments, Output, Assign, Map."""
    return {
        "QueryLanguage": "JSONata",
        "StartAt": "Classify",
        "States": {
            "Classify": classify_task(
                function,
                {"score": "{% $states.input.score %}", "id": "{% $uuid() %}"},
                Assign={"label": "{% $states.result.Payload.label %}", "threshold": 0.5},
                Output="{% $states.input %}",
                Next="Confident?",
            ),
            "Confident?": {
                "Type": "Choice",
                "Choices": [
                    {
                        "Condition": "{% $label = 'bike' and $states.input.score > $threshold %}",
                        "Next": "Fan out",
                    }
                ],
                "Default": "Rejected",
            },
            "Rejected": {"Type": "Fail", "Error": "LowConfidence", "Cause": "{% $label %}"},
            "Fan out": {
                "Type": "Map",
                "Items": "{% $states.input.tags %}",
                "ItemSelector": {
                    "tag": "{% $states.context.Map.Item.Value %}",
                    "index": "{% $states.context.Map.Item.Index %}",
                },
                "ItemProcessor": {
                    "ProcessorConfig": {"Mode": "INLINE"},
                    "StartAt": "Tag",
                    "States": {
                        "Tag": {
                            "Type": "Pass",
                            "Output": "{% $uppercase($states.input.tag) & '#'"
                            " & $states.input.index %}",
                            "End": True,
                        }
                    },
                },
                "Output": {
                    "label": "{% $label %}",
                    "tags": "{% $states.result %}",
                    "digest": "{% $hash($label, 'MD5') %}",
                    "execution": "{% $states.context.Execution.Name %}",
                },
                "End": True,
            },
        },
    }


def test_a_console_style_jsonata_machine_runs_as_on_aws(stack: Stack) -> None:
    asl = console_style_machine(stack.classifier())
    described = stack.run(asl, {"score": 0.9, "tags": ["road", "city"]})
    assert described["status"] == "SUCCEEDED", described
    assert json.loads(described["output"]) == {
        "label": "bike",
        "tags": ["ROAD#0", "CITY#1"],
        "digest": hashlib.md5(b"bike").hexdigest(),
        "execution": described["name"],
    }
    rejected = stack.run(asl, {"score": 0.1, "tags": []})
    assert (rejected["status"], rejected["error"], rejected["cause"]) == (
        "FAILED", "LowConfidence", "none",
    )  # fmt: skip


def test_a_jsonata_catch_sees_the_error_output(stack: Stack) -> None:
    asl = {
        "QueryLanguage": "JSONata",
        "StartAt": "Classify",
        "States": {
            "Classify": classify_task(stack.classifier(), {"fail": True}, Catch=[{
                "ErrorEquals": ["ValueError"],
                "Assign": {"failedWith": "{% $states.errorOutput.Error %}"},
                "Output": {"error": "{% $states.errorOutput.Error %}",
                           "message": "{% $parse($states.errorOutput.Cause).errorMessage %}",
                           "input": "{% $states.input %}"},
                "Next": "Report",
            }], End=True),
            "Report": {"Type": "Pass", "End": True,
                       "Output": "{% $merge([$states.input, {'v': $failedWith}]) %}"},
        },
    }  # fmt: skip
    described = stack.run(asl, {"id": 3})
    assert described["status"] == "SUCCEEDED", described
    assert json.loads(described["output"]) == {
        "error": "ValueError", "message": "asked to fail", "input": {"id": 3}, "v": "ValueError",
    }  # fmt: skip


def test_a_bad_jsonata_expression_fails_with_query_evaluation_error(stack: Stack) -> None:
    asl = {
        "QueryLanguage": "JSONata",
        "StartAt": "P",
        "States": {"P": {"Type": "Pass", "Output": {"x": "{% $states.input.a.( %}"}, "End": True}},
    }
    described = stack.run(asl, {"a": 1})
    assert (described["status"], described["error"]) == ("FAILED", "States.QueryEvaluationError")
    assert "The JSONata expression '$states.input.a.('" in described["cause"]
    assert "'Output'" in described["cause"] and "entered at the event id" in described["cause"]
    failed = [e for e in described["events"] if e["type"] == "EvaluationFailed"]
    assert failed and failed[0]["evaluationFailedEventDetails"]["error"] == (
        "States.QueryEvaluationError"
    )
    undefined = stack.run(
        {
            **asl,
            "States": {"P": {"Type": "Pass", "Output": "{% $states.input.nope %}", "End": True}},
        },
        {},
    )
    assert undefined["error"] == "States.QueryEvaluationError"
    assert "returned nothing (undefined)" in undefined["cause"]
    choice = {"Type": "Choice", "Choices": [{"Condition": "{% $states.input.x %}", "Next": "Y"}],
              "Default": "Y"}  # fmt: skip
    not_boolean = stack.run(
        {**asl, "StartAt": "C", "States": {"C": choice, "Y": {"Type": "Succeed"}}}, {"x": "yes"}
    )
    assert not_boolean["error"] == "States.QueryEvaluationError"
    assert "'Condition'" in not_boolean["cause"] and "got string" in not_boolean["cause"]


def test_variables_in_a_jsonpath_machine(stack: Stack) -> None:
    asl = {
        "StartAt": "Remember",
        "States": {
            "Remember": {
                "Type": "Pass",
                "Assign": {"seen.$": "$.value", "fixed": "k"},
                "Next": "Use",
            },
            "Use": {
                "Type": "Pass",
                "Parameters": {"seen.$": "$seen", "fixed.$": "$fixed"},
                "End": True,
            },
        },
    }
    described = stack.run(asl, {"value": {"quote": 'say "hi"'}})
    assert described["status"] == "SUCCEEDED", described
    assert json.loads(described["output"]) == {"seen": {"quote": 'say "hi"'}, "fixed": "k"}


@pytest.mark.parametrize(
    "asl",
    [
        {"QueryLanguage": "JSONata", "StartAt": "P",
         "States": {"P": {"Type": "Pass", "Parameters": {"a.$": "$.a"}, "End": True}}},
        {"StartAt": "P", "States": {"P": {"Type": "Pass", "QueryLanguage": "JSONata",
                                          "ResultPath": "$.x", "End": True}}},
        {"StartAt": "P", "States": {"P": {"Type": "Pass", "Output": {"a": 1}, "End": True}}},
    ],
    ids=["Parameters-in-JSONata", "ResultPath-in-JSONata-state", "Output-in-JSONPath"],
)  # fmt: skip
def test_mixing_query_languages_is_refused_at_create(stack: Stack, asl: dict[str, Any]) -> None:
    with pytest.raises(ClientError) as raised:
        stack.machine(asl)
    assert raised.value.response["Error"]["Code"] == "InvalidDefinition"
    assert "SCHEMA_VALIDATION_FAILED" in raised.value.response["Error"]["Message"]
    # A refused definition leaves nothing behind for the next one (moto's scope stack did).
    ok = {"StartAt": "P", "States": {"P": {"Type": "Pass", "Parameters": {"a.$": "$.a"},
                                           "End": True}}}  # fmt: skip
    assert stack.run(ok, {"a": 1})["status"] == "SUCCEEDED"


# --- names, Express ---------------------------------------------------------------------------


PASS = {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}


def test_executions_without_a_name_get_uuids(stack: Stack) -> None:
    machine = stack.machine(PASS)
    arns = [stack.sfn.start_execution(stateMachineArn=machine)["executionArn"] for _ in range(2)]
    assert arns[0] != arns[1]
    for arn in arns:
        described = finished_execution(stack.sfn, arn)
        assert described["status"] == "SUCCEEDED"
        assert uuid.UUID(described["name"]).version == 4 and arn.endswith(described["name"])


def test_start_sync_execution_on_express(stack: Stack) -> None:
    asl = {
        "QueryLanguage": "JSONata",
        "StartAt": "Double",
        "States": {
            "Double": {"Type": "Pass", "Output": {"n": "{% $states.input.n * 2 %}"}, "End": True}
        },
    }
    machine = stack.machine(asl, kind="EXPRESS")
    answer = stack.sfn.start_sync_execution(stateMachineArn=machine, input='{"n": 21}')
    assert answer["status"] == "SUCCEEDED"
    assert json.loads(answer["output"]) == {"n": 42}
    assert answer["stateMachineArn"] == machine
    assert ":express:" in answer["executionArn"] and answer["name"]
    assert answer["billingDetails"]["billedMemoryUsedInMB"] == 64
    assert answer["billingDetails"]["billedDurationInMilliseconds"] % 100 == 0
    assert answer["stopDate"] >= answer["startDate"]

    failing = stack.machine(
        {"StartAt": "F", "States": {"F": {"Type": "Fail", "Error": "Nope", "Cause": "why"}}},
        kind="EXPRESS",
    )
    failed = stack.sfn.start_sync_execution(stateMachineArn=failing, name="named")
    assert (failed["status"], failed["error"], failed["cause"]) == ("FAILED", "Nope", "why")
    assert failed["name"] == "named" and "output" not in failed

    with pytest.raises(ClientError) as raised:
        stack.sfn.start_sync_execution(stateMachineArn=stack.machine(PASS))
    assert raised.value.response["Error"]["Code"] == "StateMachineTypeNotSupported"


# --- TestState --------------------------------------------------------------------------------


def test_test_state_with_a_mocked_task(stack: Stack) -> None:
    state = {
        "Type": "Task",
        "Resource": "arn:aws:states:::lambda:invoke",
        "Parameters": {"FunctionName": "not-called", "Payload.$": "$"},
        "ResultSelector": {"label.$": "$.Payload.label"},
        "ResultPath": "$.classified",
        "Next": "Done",
    }
    answer = stack.sfn.test_state(
        definition=json.dumps(state),
        roleArn=stack.role,
        input='{"score": 0.9}',
        inspectionLevel="DEBUG",
        mock={"result": json.dumps({"StatusCode": 200, "Payload": {"label": "bike"}})},
    )
    assert answer["status"] == "SUCCEEDED", answer
    assert json.loads(answer["output"]) == {"score": 0.9, "classified": {"label": "bike"}}
    assert answer["nextState"] == "Done"
    inspection = answer["inspectionData"]
    assert json.loads(inspection["input"]) == {"score": 0.9}
    assert json.loads(inspection["afterParameters"]) == {"FunctionName": "not-called",
                                                         "Payload": {"score": 0.9}}  # fmt: skip
    assert json.loads(inspection["afterResultSelector"]) == {"label": "bike"}

    info = stack.sfn.test_state(
        definition=json.dumps(state), input="{}", mock={"result": '{"Payload": {"label": "x"}}'}
    )
    assert info["status"] == "SUCCEEDED" and "inspectionData" not in info

    failed = stack.sfn.test_state(
        definition=json.dumps(state),
        input="{}",
        mock={
            "errorOutput": {"error": "Lambda.TooManyRequestsException", "cause": "Rate Exceeded."}
        },
    )
    assert (failed["status"], failed["error"]) == ("FAILED", "Lambda.TooManyRequestsException")


def test_test_state_answers_retriable_then_caught_error(stack: Stack) -> None:
    """One attempt per call: Retry answers RETRIABLE until its attempts run out, then Catch."""
    state = {
        "Type": "Task",
        "Resource": "arn:aws:states:::lambda:invoke",
        "Parameters": {"FunctionName": "f", "Payload.$": "$"},
        "Retry": [
            {"ErrorEquals": ["States.Timeout"], "MaxAttempts": 1},
            {"ErrorEquals": ["Lambda.TooManyRequestsException"], "IntervalSeconds": 2,
             "BackoffRate": 3, "MaxAttempts": 2},
        ],
        "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Handle"}],
        "Next": "Done",
    }  # fmt: skip
    throttled = {"errorOutput": {"error": "Lambda.TooManyRequestsException", "cause": "Rate"}}
    answers = [
        stack.sfn.test_state(
            definition=json.dumps(state), input='{"a": 1}', inspectionLevel="DEBUG",
            mock=throttled, stateConfiguration={"retrierRetryCount": retries},
        )
        for retries in (0, 1, 2)
    ]  # fmt: skip
    for answer, backoff in zip(answers[:2], (2, 6), strict=True):
        assert (answer["status"], answer["error"]) == (
            "RETRIABLE",
            "Lambda.TooManyRequestsException",
        )
        assert answer["inspectionData"]["errorDetails"] == {
            "retryIndex": 1,
            "retryBackoffIntervalSeconds": backoff,
        }
    caught = answers[2]
    assert (caught["status"], caught["nextState"]) == ("CAUGHT_ERROR", "Handle")
    assert json.loads(caught["output"]) == {
        "a": 1, "error": {"Error": "Lambda.TooManyRequestsException", "Cause": "Rate"},
    }  # fmt: skip
    assert caught["inspectionData"]["errorDetails"] == {"catchIndex": 0}


def test_test_state_of_a_jsonata_state_in_a_machine(stack: Stack) -> None:
    machine = {
        "QueryLanguage": "JSONata",
        "StartAt": "Pick",
        "States": {
            "Pick": {
                "Type": "Choice",
                "Choices": [{"Condition": "{% $states.input.n > $limit %}", "Next": "Big"}],
                "Default": "Small",
            },
            "Big": {"Type": "Succeed"},
            "Small": {"Type": "Succeed"},
        },
    }
    answer = stack.sfn.test_state(
        definition=json.dumps(machine), stateName="Pick", input='{"n": 5}', variables='{"limit": 3}'
    )
    assert (answer["status"], answer["nextState"]) == ("SUCCEEDED", "Big")
    with pytest.raises(ClientError) as raised:
        stack.sfn.test_state(definition=json.dumps(machine), stateName="Absent", input="{}")
    assert raised.value.response["Error"]["Code"] == "ValidationException"


# --- time ----------------------------------------------------------------------------------


def _elapsed(events: list[dict[str, Any]], first: str, last: str) -> float:
    """Seconds from the first `first` event to the last `last` event."""
    start = next(e["timestamp"] for e in events if e["type"] == first)
    end = [e["timestamp"] for e in events if e["type"] == last][-1]
    return float((end - start).total_seconds())


def test_wait_states_are_waited_scaled_by_the_knob(stack: Stack) -> None:
    asl = {"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 25, "End": True}}}
    described = stack.run(asl, {})
    assert described["status"] == "SUCCEEDED"
    # 25 s of ASL time at the tests' scale: at least 0.5 s, and the execution did end.
    waited = _elapsed(described["events"], "WaitStateEntered", "WaitStateExited")
    assert waited >= 25 * TIME_SCALE
    assert waited < 25 / 2, "the knob scaled the wait (unscaled it is 25 s)"


@pytest.mark.parametrize("resource", ["integration", "function-arn"])
def test_a_throttled_lambda_is_retried_by_the_asl(stack: Stack, resource: str) -> None:
    function = stack.classifier()
    name = function.rsplit(":", 1)[1]
    stack.lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=0)
    try:
        retry = [{"ErrorEquals": ["Lambda.TooManyRequestsException"], "IntervalSeconds": 10,
                  "MaxAttempts": 2, "BackoffRate": 1}]  # fmt: skip
        task: dict[str, Any] = (
            {"Resource": "arn:aws:states:::lambda:invoke",
             "Parameters": {"FunctionName": function, "Payload": {}}}
            if resource == "integration"
            else {"Resource": function}
        )  # fmt: skip
        asl = {
            "StartAt": "Invoke",
            "States": {
                "Invoke": {
                    "Type": "Task",
                    **task,
                    "Retry": retry,
                    "End": True,
                }
            },
        }
        described = stack.run(asl, {})
    finally:
        stack.lam.delete_function_concurrency(FunctionName=name)
    assert (described["status"], described["error"]) == (
        "FAILED", "Lambda.TooManyRequestsException",
    ), described  # fmt: skip
    # The integration schedules Tasks; a function-ARN Resource schedules LambdaFunctions.
    kind = "TaskScheduled" if resource == "integration" else "LambdaFunctionScheduled"
    scheduled = [e for e in described["events"] if e["type"] == kind]
    assert len(scheduled) == 3, "the first attempt and the two retries the ASL asks for"
    # Two intervals of 10 s of ASL time, scaled.
    retried = _elapsed(described["events"], kind, "ExecutionFailed")
    assert 2 * 10 * TIME_SCALE <= retried < 2 * 10 / 2, "scaled, not skipped nor real-time"


def test_stop_execution_answers_once_the_execution_is_aborted(stack: Stack) -> None:
    machine = stack.machine(
        {"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 3600, "End": True}}}
    )
    name = f"stopped-{uuid.uuid4().hex[:8]}"
    arn = stack.sfn.start_execution(stateMachineArn=machine, name=name, input="{}")["executionArn"]
    stopped = stack.sfn.stop_execution(executionArn=arn)
    # Right after the answer, as on AWS: ABORTED, and its name is taken (not an idempotent retry).
    described = stack.sfn.describe_execution(executionArn=arn)
    assert described["status"] == "ABORTED" and described["stopDate"] == stopped["stopDate"]
    with pytest.raises(stack.sfn.exceptions.ExecutionAlreadyExists):
        stack.sfn.start_execution(stateMachineArn=machine, name=name, input="{}")


def test_finished_threads_are_not_kept_as_executions_end(stack: Stack) -> None:
    """moto lists every thread it starts (one per execution and per task) and never forgets."""
    machine = stack.machine(tasks_in_a_row(stack.classifier()))
    for _ in range(20):  # 80 threads started: a worker and three tasks each
        assert stack.run(machine, {"score": 0.9})["status"] == "SUCCEEDED"
    health = requests.get(f"{stack.emulator.endpoint_url}/_local_aws/health", timeout=10).json()
    assert health["stepfunctions_threads_kept"] < 10, health["stepfunctions_threads_kept"]
