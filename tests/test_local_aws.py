"""The embedded emulator, through plain boto3 clients configured only by the `local` profile."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from scones.deploy.iam import trust
from scones.stack import stop_process_group
from scones.testing import (
    INVOKE_ANY_FUNCTION,
    LocalAws,
    create_machine,
    run_execution,
    service_role,
    start_local_aws,
)
from scones.testing_functions import create_function, invoke, make_zip
from scones.testing_processes import alive, descendants

HANDLER_SOURCE = """
import json, os, time
import boto3

CALLS = 0
s3 = boto3.client("s3")


class CustomerNotFound(Exception):
    pass


class TransientGlitch(Exception):
    pass


def handler(event, context):
    global CALLS
    CALLS += 1
    action = event.get("action")
    print("action", action, "call", CALLS)
    if action == "s3_sum":
        body = s3.get_object(Bucket=event["bucket"], Key=event["key"])["Body"].read()
        return {"sum": sum(int(x) for x in body.split())}
    if action == "raise":
        raise CustomerNotFound("no customer " + str(event.get("id")))
    if action == "sleep":
        start = time.time()
        time.sleep(event["seconds"])
        return {"slept": event["seconds"], "start": start, "end": time.time(), "pid": os.getpid()}
    if action == "flaky":
        # Fails on the first call of this warm worker, then succeeds: retried by Step Functions.
        if CALLS == 1:
            raise TransientGlitch("first call fails")
        return {"value": event["value"] * 2, "calls": CALLS}
    if action == "env":
        return {k: v for k, v in os.environ.items() if k.startswith(("AWS_ENDPOINT", "GREETING"))}
    if action == "imports":
        import importlib.util
        names = ("boto3", "json", "numpy", "moto")
        return {m: importlib.util.find_spec(m) is not None for m in names}
    if action == "version":
        return {"version": "v1", "calls": CALLS}
    remaining_ms = context.get_remaining_time_in_millis()
    return {"calls": CALLS, "pid": os.getpid(), "remaining_ms": remaining_ms}
"""


TRUST = trust("lambda.amazonaws.com", "states.amazonaws.com")


@pytest.fixture(scope="module")
def role_arn(local_aws: LocalAws) -> str:
    # What the handlers and the state machine do with it (IAM is enforced, as on AWS).
    return service_role(
        boto3.client("iam"),
        "lambda-role",
        [
            {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::*/*"},
            INVOKE_ANY_FUNCTION,
        ],
    )


@pytest.fixture
def make_function(role_arn: str) -> Callable[..., str]:
    lam = boto3.client("lambda")

    def create(
        timeout: int = 10, env: dict[str, str] | None = None, source: str = HANDLER_SOURCE
    ) -> str:
        name = f"fn-{uuid.uuid4().hex[:10]}"
        create_function(
            lam, name, source, role_arn, Timeout=timeout, Environment={"Variables": env or {}}
        )
        return name

    return create


def test_s3_round_trip(local_aws: LocalAws) -> None:
    s3 = boto3.client("s3")
    bucket = f"bucket-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    data = os.urandom(256 * 1024)
    s3.put_object(Bucket=bucket, Key="a/b.bin", Body=data)
    assert s3.get_object(Bucket=bucket, Key="a/b.bin")["Body"].read() == data
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [("a/b.bin", len(data))]
    # The client found the emulator through the profile alone.
    assert s3.meta.endpoint_url == local_aws.endpoint_url


def test_lambda_reads_s3_and_computes(
    local_aws: LocalAws, make_function: Callable[..., str]
) -> None:
    s3 = boto3.client("s3")
    bucket = f"numbers-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="n.txt", Body=b"1 2 3 4 5 100")
    name = make_function()
    response, body = invoke(name, {"action": "s3_sum", "bucket": bucket, "key": "n.txt"})
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    assert body == {"sum": 115}


def test_warm_worker_keeps_module_state(make_function: Callable[..., str]) -> None:
    name = make_function()
    _, first = invoke(name, {})
    _, second = invoke(name, {})
    assert second["calls"] == first["calls"] + 1
    assert second["pid"] == first["pid"]
    assert 0 < second["remaining_ms"] <= 10_000


def test_timeout_kills_worker_with_aws_error(make_function: Callable[..., str]) -> None:
    name = make_function(timeout=1)
    started = time.monotonic()
    response, body = invoke(name, {"action": "sleep", "seconds": 30})
    assert time.monotonic() - started < 10
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in body["errorMessage"]
    # A fresh worker serves the next call: module state starts again.
    _, after = invoke(name, {})
    assert after["calls"] == 1


def test_custom_exception_in_aws_shape(make_function: Callable[..., str]) -> None:
    name = make_function()
    response, body = invoke(name, {"action": "raise", "id": 7})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "CustomerNotFound"
    assert body["errorMessage"] == "no customer 7"
    assert any("raise CustomerNotFound" in line for line in body["stackTrace"])


def test_parallel_invocations_overlap(make_function: Callable[..., str]) -> None:
    name = make_function()
    results: list[dict[str, Any]] = []

    def call() -> None:
        results.append(invoke(name, {"action": "sleep", "seconds": 2.0})[1])

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and all(r["slept"] == 2.0 for r in results)
    # Four workers, and a moment when all four handlers were running at once.
    assert len({r["pid"] for r in results}) == 4
    assert max(r["start"] for r in results) < min(r["end"] for r in results)


def test_code_update_takes_effect(make_function: Callable[..., str]) -> None:
    name = make_function()
    _, before = invoke(name, {"action": "version"})
    assert before["version"] == "v1"
    lam = boto3.client("lambda")
    lam.update_function_code(
        FunctionName=name, ZipFile=make_zip(HANDLER_SOURCE.replace('"v1"', '"v2"'))
    )
    _, after = invoke(name, {"action": "version"})
    assert after == {"version": "v2", "calls": 1}


def test_environment_and_injected_endpoint(
    local_aws: LocalAws, make_function: Callable[..., str]
) -> None:
    name = make_function(env={"GREETING": "hello"})
    _, body = invoke(name, {"action": "env"})
    assert body["GREETING"] == "hello"
    assert body["AWS_ENDPOINT_URL"] == local_aws.endpoint_url


def test_function_sees_only_what_aws_offers(make_function: Callable[..., str]) -> None:
    _, body = invoke(make_function(), {"action": "imports"})
    assert body == {"boto3": True, "json": True, "numpy": False, "moto": False}


def test_log_tail_and_cloudwatch_logs(make_function: Callable[..., str]) -> None:
    name = make_function()
    response, _ = invoke(name, {"action": "tail-me"}, LogType="Tail")
    tail = base64.b64decode(response["LogResult"]).decode()
    assert "action tail-me call 1" in tail
    assert tail.startswith("START RequestId:")
    assert "REPORT RequestId:" in tail and "Init Duration:" in tail
    logs = boto3.client("logs")
    events = logs.filter_log_events(logGroupName=f"/aws/lambda/{name}")["events"]
    assert any("action tail-me call 1" in e["message"] for e in events)


def test_bad_requests_get_aws_error_codes(make_function: Callable[..., str]) -> None:
    lam = boto3.client("lambda")
    with pytest.raises(ClientError) as missing:
        lam.invoke(FunctionName="no-such-function", Payload=b"{}")
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    name = make_function()
    with pytest.raises(ClientError) as malformed:
        lam.invoke(FunctionName=name, Payload=b"{not json")
    assert malformed.value.response["Error"]["Code"] == "InvalidRequestContentException"
    assert malformed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_state_machine_retry_and_catch(role_arn: str, make_function: Callable[..., str]) -> None:
    flaky, failing = make_function(), make_function()
    lam = boto3.client("lambda")
    arn = {
        n: lam.get_function(FunctionName=n)["Configuration"]["FunctionArn"]
        for n in (flaky, failing)
    }
    definition = {
        "StartAt": "Double",
        "States": {
            "Double": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {
                    "FunctionName": arn[flaky],
                    "Payload": {"action": "flaky", "value.$": "$.value"},
                },
                "ResultSelector": {"doubled.$": "$.Payload.value", "calls.$": "$.Payload.calls"},
                "Retry": [
                    {
                        "ErrorEquals": ["TransientGlitch"],
                        "IntervalSeconds": 1,
                        "MaxAttempts": 2,
                        "BackoffRate": 1.0,
                    }
                ],
                "Next": "Lookup",
            },
            "Lookup": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {
                    "FunctionName": arn[failing],
                    "Payload": {"action": "raise", "id.$": "$.doubled"},
                },
                "ResultPath": "$.lookup",
                "Catch": [
                    {
                        "ErrorEquals": ["CustomerNotFound"],
                        "ResultPath": "$.error",
                        "Next": "NotFound",
                    }
                ],
                "End": True,
            },
            "NotFound": {"Type": "Pass", "End": True},
        },
    }
    sfn = boto3.client("stepfunctions")
    machine = create_machine(sfn, definition, role_arn)
    described = run_execution(sfn, machine, {"value": 21}, name=f"run-{uuid.uuid4().hex[:8]}")
    assert described["status"] == "SUCCEEDED", described
    output = json.loads(described["output"])
    assert output["doubled"] == 42
    assert output["calls"] == 2  # the first attempt failed and was retried on the warm worker
    assert output["error"]["Error"] == "CustomerNotFound"
    assert json.loads(output["error"]["Cause"])["errorMessage"] == "no customer 42"


def test_sigterm_stops_workers(tmp_path: Path) -> None:
    emulator = start_local_aws(tmp_path / "state")
    try:
        # A separate process, configured by this emulator's own profile.
        config_env = {**os.environ, **emulator.env}
        script = (
            "import boto3, json, io, zipfile;"
            "b=io.BytesIO();z=zipfile.ZipFile(b,'w');"
            "z.writestr('app.py','def handler(e,c):\\n return 1');z.close();"
            "iam=boto3.client('iam');"
            f"r=iam.create_role(RoleName='r',AssumeRolePolicyDocument={TRUST!r})['Role']['Arn'];"
            "l=boto3.client('lambda');"
            "l.create_function(FunctionName='f',Runtime='python3.11',Role=r,Handler='app.handler',Code={'ZipFile':b.getvalue()});"
            "l.get_waiter('function_active_v2').wait(FunctionName='f');"
            "print(l.invoke(FunctionName='f')['Payload'].read().decode())"
        )
        out = subprocess.run(
            [sys.executable, "-c", script],
            env=config_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.stdout.strip() == "1", out.stderr
        workers = descendants(emulator.process.pid)
        assert len(workers) >= 2, "the fork server and a warm worker should be running"
    finally:
        stop_process_group(emulator.process)
    assert emulator.process.returncode == 0
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers), "worker processes were orphaned"
