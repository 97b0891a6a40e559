"""The Step Functions speedups: cached programs and clients, Lambda in-process, same semantics.

Each outcome (success, a named error with Retry and Catch, a timeout, an unknown function, an
oversized result) is run on two real emulators, one with `LOCAL_AWS_SFN_SPEEDUPS=0` (moto's path
as shipped) and one with the speedups, and the two must agree on status, error names, causes,
outputs and the event history.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import botocore.config
import botocore.session
import pytest
from moto.moto_server.werkzeug_app import MotoRequestHandler
from moto.stepfunctions.parser.asl.component.eval_component import EvalComponent
from werkzeug.serving import make_server

from scones.testing import StateMachines
from scones.testing_functions import make_zip
from services.local_aws import stepfunctions_speedups as speedups
from statemachine import definition
from tests.conftest import LocalAws, start_local_aws, stop_process

HANDLER = """
import time


class CustomerNotFound(Exception):
    pass


def handler(event, context):
    action = event.get("action")
    if action == "raise":
        raise CustomerNotFound("no customer " + str(event.get("id")))
    if action == "sleep":
        time.sleep(event["seconds"])
    if action == "big":
        return {"blob": "x" * event["size"]}
    # Shaped as the workflow's events, so the project's ASL runs on it too.
    body = {"s3_bucket": "b", "s3_key": "k.png", "image_data": "", "inferences": [0.1, 0.9]}
    return {"statusCode": 200, "body": {**body, "label": "x"}, "echo": event}
"""
# Built once: the same bytes (and so the same code folder in stack traces) in both emulators.
HANDLER_ZIP = make_zip(HANDLER)
FAKE_ARNS = {
    name: f"arn:aws:lambda:us-east-1:123456789012:function:{function}"
    for function, name in definition.FUNCTION_PLACEHOLDERS.items()
}


# --- pure parts -------------------------------------------------------------------------------


def test_programs_are_parsed_once_per_definition_with_every_heap_key_assigned() -> None:
    cache = speedups.ProgramCache(size=2)
    text = definition.render(FAKE_ARNS)
    program = cache.program(text)
    assert cache.program(text) is program
    assert (cache.misses, cache.hits) == (1, 1)
    components = list(speedups._components(program))
    evaluable = [c for c in components if isinstance(c, EvalComponent)]
    assert len(evaluable) > 50, "the walk reaches the states, their Retry, Catch and paths"
    # Assigned up front, so concurrent executions cannot each assign their own.
    assert all(c.__dict__.get("_EvalComponent__heap_key") for c in evaluable)
    other = cache.program(text.replace('"MaxAttempts": 3', '"MaxAttempts": 4'))
    assert other is not program
    cache.program(text.replace('"MaxAttempts": 3', '"MaxAttempts": 5'))
    assert len(cache) == 2 and cache.program(text) is not program, "least recently used evicted"


def test_switch_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (("0", False), ("off", False), ("1", True), ("", True)):
        monkeypatch.setenv(speedups.ENV_SWITCH, value)
        assert speedups.enabled_by_environment() is expected
    monkeypatch.delenv(speedups.ENV_SWITCH)
    assert speedups.enabled_by_environment() is True


def _lambda_client(server: Any, config: botocore.config.Config | None = None) -> Any:
    """A Lambda client of the test server on `server`'s port (the interpreter's own keys)."""
    return boto3.client(
        "lambda",
        endpoint_url=f"http://localhost:{server.server_address[1]}",
        region_name="us-east-1",
        aws_access_key_id="ak",
        aws_secret_access_key="sk",
        config=config,
    )


def test_in_process_environ_is_the_one_werkzeug_builds_from_the_socket() -> None:
    """The same botocore request, over a socket and in-process, gives the same WSGI environ."""
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["wsgi.input"] = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"] or 0))
        seen.append(environ)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
        return [b"{}"]

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        transport = speedups.InProcessTransport(app, server)
        client = _lambda_client(server)
        requests: list[Any] = []
        client.meta.events.register("before-send", lambda request, **_: requests.append(request))
        client.invoke(
            FunctionName="arn:aws:lambda:us-east-1:123456789012:function:f_1",
            Qualifier="$LATEST",
            Payload=b'{"a": "\\u00e9"}',
            ClientContext="e30=",
            LogType="Tail",
        )
        over_socket = seen.pop()
        in_process = transport.environ(requests[0])
        in_process["wsgi.input"] = in_process["wsgi.input"].read()
    finally:
        server.shutdown()
        server.server_close()
    differ = {"werkzeug.socket", "wsgi.errors", "REMOTE_PORT"}
    assert {k: v for k, v in over_socket.items() if k not in differ} == {
        k: v for k, v in in_process.items() if k not in differ
    }
    assert in_process["PATH_INFO"].endswith("function:f_1/invocations")
    assert in_process["QUERY_STRING"] == "Qualifier=%24LATEST"


# --- two real emulators -----------------------------------------------------------------------


class Target(StateMachines):
    """One emulator (Step Functions speedups on or off); functions run `HANDLER`."""

    def health(self) -> dict[str, Any]:
        url = f"{self.emulator.endpoint_url}/_local_aws/health"
        with urllib.request.urlopen(url, timeout=5) as response:
            health: dict[str, Any] = json.loads(response.read())
        return health

    def handler(self, name: str, timeout: int = 10) -> str:
        return self.function(name, HANDLER_ZIP, timeout)


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Target]]:
    started: dict[str, LocalAws] = {}
    try:
        with pytest.MonkeyPatch.context() as env:
            for mode, switch in (("baseline", "0"), ("speedups", "1")):
                env.setenv(speedups.ENV_SWITCH, switch)
                started[mode] = start_local_aws(tmp_path_factory.mktemp(mode))
        found = {mode: Target(emulator, "speedups") for mode, emulator in started.items()}
        assert found["baseline"].health()["stepfunctions_speedups"] is None
        assert found["speedups"].health()["stepfunctions_speedups"] is not None
        yield found
    finally:
        for emulator in started.values():
            stop_process(emulator.process)


def task(resource: str, parameters: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A Lambda task, via the `lambda:invoke` integration or the function ARN as Resource."""
    if resource == "integration":
        return {
            "Type": "Task",
            "Resource": "arn:aws:states:::lambda:invoke",
            "Parameters": parameters,
            **extra,
        }
    state = {"Type": "Task", "Resource": parameters.pop("FunctionName"), **extra}
    if "Payload" in parameters:
        state["Parameters"] = parameters["Payload"]
    return state


def case_definition(target: Target, case: str, resource: str) -> tuple[dict[str, Any], dict]:
    """The state machine and input of one case, for one emulator."""
    fn = target.handler("speedups-fn")
    states: dict[str, Any]
    if case == "success":
        states = {"Only": task(resource, {"FunctionName": fn, "Payload.$": "$"}, End=True)}
        return {"StartAt": "Only", "States": states}, {"value": 21, "text": "é"}
    if case == "retry-then-catch":
        retry = [{"ErrorEquals": ["CustomerNotFound"], "IntervalSeconds": 1, "MaxAttempts": 1}]
        catch = [{"ErrorEquals": ["CustomerNotFound"], "ResultPath": "$.error", "Next": "Caught"}]
        states = {
            "Lookup": task(
                resource,
                {"FunctionName": fn, "Payload": {"action": "raise", "id.$": "$.id"}},
                Retry=retry,
                Catch=catch,
                End=True,
            ),
            "Caught": {"Type": "Fail", "Error": "NotFound", "CausePath": "$.error.Cause"},
        }
        return {"StartAt": "Lookup", "States": states}, {"id": 7}
    if case == "uncaught":
        states = {
            "Lookup": task(
                resource, {"FunctionName": fn, "Payload": {"action": "raise", "id": 1}}, End=True
            )
        }
        return {"StartAt": "Lookup", "States": states}, {}
    if case == "timeout":
        short = target.handler("speedups-short", timeout=1)
        parameters = {"FunctionName": short, "Payload": {"action": "sleep", "seconds": 3}}
        return {"StartAt": "Slow", "States": {"Slow": task(resource, parameters, End=True)}}, {}
    if case == "unknown-function":
        missing = fn.replace("speedups-fn", "speedups-absent")
        states = {"Missing": task(resource, {"FunctionName": missing, "Payload": {}}, End=True)}
        return {"StartAt": "Missing", "States": states}, {}
    if case == "oversized-result":
        parameters = {"FunctionName": fn, "Payload": {"action": "big", "size": 300_000}}
        return {"StartAt": "Big", "States": {"Big": task(resource, parameters, End=True)}}, {}
    raise ValueError(case)


_VOLATILE = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # request ids
    r"|Request ID: [A-Za-z0-9-]+"
    r"|arn:aws:[^\"'\\\s,)]+"  # names carry random suffixes
)


def normalised(described: dict[str, Any], target: Target) -> dict[str, Any]:
    """What must be equal between the two emulators (ids, ARNs, folders and times aside)."""
    state_dir = str(target.emulator.state_dir)

    def clean(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return _VOLATILE.sub("<id>", value.replace(state_dir, "<state>"))

    events = []
    for event in described["events"]:
        details = {
            key: {k: clean(v) for k, v in value.items()}
            for key, value in event.items()
            if key.endswith("EventDetails")
        }
        events.append((event["type"], json.dumps(details, sort_keys=True)))
    return {
        "status": described["status"],
        "error": described.get("error"),
        "cause": clean(described.get("cause")),
        "output": clean(described.get("output")),
        "events": events,
    }


CASES = ["success", "retry-then-catch", "uncaught", "timeout", "unknown-function"]


@pytest.mark.parametrize("resource", ["integration", "function-arn"])
@pytest.mark.parametrize("case", [*CASES, "oversized-result"])
def test_outcomes_match_moto_as_shipped(
    targets: dict[str, Target], case: str, resource: str
) -> None:
    outcomes = {}
    for mode, target in targets.items():
        asl, execution_input = case_definition(target, case, resource)
        outcomes[mode] = target.run(target.machine(asl), execution_input)
    baseline, fast = (normalised(outcomes[m], targets[m]) for m in ("baseline", "speedups"))
    # Event by event first, for a readable failure; then everything, lengths included.
    pairs = zip(fast["events"], baseline["events"], strict=False)
    for event, (fast_event, baseline_event) in enumerate(pairs):
        assert fast_event == baseline_event, f"event {event}"
    assert fast == baseline
    expected_error = {
        "success": None,
        "retry-then-catch": "NotFound",
        "uncaught": "CustomerNotFound",
        "timeout": "Sandbox.Timedout",
        "unknown-function": "Lambda.ResourceNotFoundException"
        if resource == "integration"
        else "States.TaskFailed",
        "oversized-result": "States.DataLimitExceeded",
    }[case]
    if case == "unknown-function" and resource == "function-arn":
        expected_error = baseline["error"]  # moto's own mapping for this form; equal is the point
    assert baseline["error"] == expected_error, baseline


def test_the_workflow_asl_gives_the_same_history(targets: dict[str, Target]) -> None:
    """The project's definition (Retry with jitter, Catch by name) behaves the same."""
    outcomes = {}
    for mode, target in targets.items():
        fn = target.handler("speedups-fn")
        arns = dict.fromkeys(definition.FUNCTION_PLACEHOLDERS, fn)
        machine = target.sfn.create_state_machine(
            name=f"wf-{uuid.uuid4().hex[:8]}",
            definition=definition.render_for_functions(arns),
            roleArn=target.role,
        )["stateMachineArn"]
        described = target.run(machine, {"statusCode": 200, "body": {}})
        outcomes[mode] = normalised(described, target)
    assert outcomes["speedups"] == outcomes["baseline"]
    assert outcomes["baseline"]["status"] == "SUCCEEDED"


def test_concurrent_executions_keep_their_own_retry_counts(targets: dict[str, Target]) -> None:
    """One cached program, many executions at once: each retries exactly as configured."""
    target = targets["speedups"]
    fn = target.handler("speedups-fn")
    retry = [{"ErrorEquals": ["CustomerNotFound"], "IntervalSeconds": 1, "MaxAttempts": 2}]
    parameters = {"FunctionName": fn, "Payload": {"action": "raise", "id.$": "$.id"}}
    machine = target.machine(
        {"StartAt": "L", "States": {"L": task("integration", parameters, Retry=retry, End=True)}}
    )
    before = target.health()["stepfunctions_speedups"]
    with ThreadPoolExecutor(12) as pool:
        runs = list(pool.map(lambda i: target.run(machine, {"id": i}), range(12)))
    for i, described in enumerate(runs):
        assert (described["status"], described["error"]) == ("FAILED", "CustomerNotFound")
        assert f"no customer {i}" in described["cause"]
        scheduled = [e for e in described["events"] if e["type"] == "TaskScheduled"]
        assert len(scheduled) == 3, "the first attempt and exactly two retries"
    after = target.health()["stepfunctions_speedups"]
    assert after["program_parses"] - before["program_parses"] == 1
    assert after["program_cache_hits"] - before["program_cache_hits"] == 11
    assert after["direct_lambda_invokes"] - before["direct_lambda_invokes"] == 36


def test_one_client_serves_every_task(targets: dict[str, Target]) -> None:
    target = targets["speedups"]
    asl, execution_input = case_definition(target, "success", "integration")
    machine = target.machine(asl)
    before = target.health()["stepfunctions_speedups"]
    for _ in range(3):
        assert target.run(machine, execution_input)["status"] == "SUCCEEDED"
    after = target.health()["stepfunctions_speedups"]
    assert after["clients_created"] == after["clients_cached"] == 1
    assert after["client_requests"] - before["client_requests"] == 3
    assert after["direct_lambda_invokes"] - before["direct_lambda_invokes"] == 3


def test_a_broken_backend_answers_500_as_over_http() -> None:
    """An exception in the application becomes werkzeug's 500, not an exception in the caller."""

    def broken(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise RuntimeError("backend bug")

    server = make_server("127.0.0.1", 0, broken, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
        connection.request("POST", "/2015-03-31/functions/f/invocations", body=b"{}")
        over_socket = connection.getresponse()
        socket_status, socket_body = over_socket.status, over_socket.read()
        client = _lambda_client(server, botocore.config.Config(retries={"total_max_attempts": 1}))
        client.meta.events.register("before-send", speedups.InProcessTransport(broken, server).send)
        with pytest.raises(client.exceptions.ClientError) as raised:
            client.invoke(FunctionName="f", Payload=b"{}")
    finally:
        server.shutdown()
        server.server_close()
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == socket_status == 500
    assert b"Internal Server Error" in socket_body
