"""The Lambda execution environment as AWS runs it, against a real emulator started for this module.

Private /tmp, /var/task, LoggingConfig, reserved concurrency, Event retries and destinations,
role credentials, layers, Pending -> Active, and the course's own cases.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from scones.deploy.iam import trust
from scones.testing import (
    INVOKE_ANY_FUNCTION,
    create_machine,
    run_execution,
    running_local_aws,
    service_role,
)
from scones.testing_functions import create_function, invoke, make_zip
from services.local_aws import lambda_sandbox
from services.local_aws.lambda_runtime import LambdaRuntime
from services.local_aws.lambda_spec import FunctionSpec, Sandbox
from tests.conftest import LocalAws

HANDLER_SOURCE = """
import json, logging, os, time
import boto3

logger = logging.getLogger()


def handler(event, context):
    action = event.get("action")
    if action == "probe":
        path = "/tmp/probe"
        with open(path, "w") as stream:
            stream.write(event["token"])
        start = time.time()
        time.sleep(event["seconds"])
        with open(path) as stream:
            seen = stream.read()
        listing = sorted(os.listdir("/tmp"))
        return {"seen": seen, "listing": listing, "pid": os.getpid(), "start": start,
                "end": time.time()}
    if action == "where":
        stat = os.statvfs("/tmp")
        return {"file": __file__, "cwd": os.getcwd(), "task_root": os.environ["LAMBDA_TASK_ROOT"],
                "tmp_mb": stat.f_blocks * stat.f_frsize // 2**20,
                "task_writable": os.access("/var/task", os.W_OK), "tmp": os.listdir("/tmp")}
    if action == "leave":
        open("/tmp/left-behind", "w").close()
        time.sleep(event.get("seconds", 0))
        return {"tmp": os.listdir("/tmp")}
    if action == "log":
        logger.debug("a debug line")
        logger.info("an info line")
        logger.warning("a warning line")
        print("a printed line")
        return {"ok": True}
    if action == "identity":
        names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
        identity = boto3.client("sts").get_caller_identity()
        return {"env": {n: os.environ.get(n, "") for n in names}, "arn": identity["Arn"]}
    if action == "layer":
        import sys
        import greeting
        return {"greeting": greeting.TEXT, "file": greeting.__file__,
                "opt_on_path": "/opt/python" in sys.path}
    if action == "bytes":
        return {"image": b"\\x89PNG"}
    if action == "runtime.sagemaker":
        client = boto3.client("runtime.sagemaker")
        return {"service": client.meta.service_model.service_name}
    if action == "plain-exception":
        raise Exception("the model is not ready")
    if action == "fail":
        raise RuntimeError("always fails: " + str(event.get("n")))
    if action == "sleep":
        time.sleep(event["seconds"])
    if action == "crash":
        os._exit(3)
    if action == "environ":
        return dict(os.environ)
    return {"ok": True}
"""

TRUST = trust("lambda.amazonaws.com", "states.amazonaws.com")
NAMESPACES, _, WHY_NOT = lambda_sandbox.probe(sys.executable)
needs_namespaces = pytest.mark.skipif(not NAMESPACES, reason=f"no mount namespace: {WHY_NOT}")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAws]:
    """An emulator of its own: Event retry delays scaled down (60 s -> 0.3 s)."""
    scaled = {"LOCAL_AWS_LAMBDA_RETRY_DELAY_SCALE": "0.005"}
    with running_local_aws(tmp_path_factory.mktemp("lambda_env"), environment=scaled) as started:
        yield started


@pytest.fixture(scope="module")
def role_arn(emulator: LocalAws) -> str:
    # The state machine of the Catch test invokes with this role (IAM is enforced, as on AWS).
    return service_role(boto3.client("iam"), "fn-role", [INVOKE_ANY_FUNCTION])


@pytest.fixture
def make_function(role_arn: str) -> Callable[..., str]:
    lam = boto3.client("lambda")

    def create(**settings: Any) -> str:
        name = f"fn-{uuid.uuid4().hex[:10]}"
        create_function(lam, name, HANDLER_SOURCE, role_arn, **{"Timeout": 10, **settings})
        return name

    return create


def tail(response: dict[str, Any]) -> list[str]:
    return base64.b64decode(response["LogResult"]).decode().splitlines()


# --- private /tmp and the AWS paths --------------------------------------------------------
@needs_namespaces
def test_concurrent_environments_each_have_their_own_tmp(
    make_function: Callable[..., str],
) -> None:
    name = make_function()
    results: dict[str, dict[str, Any]] = {}

    def call(token: str) -> None:
        results[token] = invoke(name, {"action": "probe", "token": token, "seconds": 2.0})[1]

    tokens = [uuid.uuid4().hex for _ in range(8)]
    threads = [threading.Thread(target=call, args=(token,)) for token in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == sorted(tokens)
    for token, result in results.items():
        assert result["seen"] == token  # nobody else's file
        assert result["listing"] == ["probe"]  # an empty /tmp of its own
    assert len({r["pid"] for r in results.values()}) == 8
    # The eight handlers overlapped: all wrote before any read back.
    assert max(r["start"] for r in results.values()) < min(r["end"] for r in results.values())


@needs_namespaces
def test_code_at_var_task_and_tmp_sized_by_ephemeral_storage(
    make_function: Callable[..., str],
) -> None:
    name = make_function(EphemeralStorage={"Size": 1024})
    _, where = invoke(name, {"action": "where"})
    assert where["file"] == "/var/task/app.py"
    assert where["cwd"] == where["task_root"] == "/var/task"
    assert where["task_writable"] is False
    assert where["tmp_mb"] == 1024
    assert where["tmp"] == []
    _, default = invoke(make_function(), {"action": "where"})
    assert default["tmp_mb"] == 512
    _, error = invoke(name, {"action": "plain-exception"})
    assert any('File "/var/task/app.py"' in line for line in error["stackTrace"])


@needs_namespaces
def test_tmp_goes_with_the_environment(make_function: Callable[..., str]) -> None:
    name = make_function(Timeout=1)
    _, first = invoke(name, {"action": "leave"})
    assert first["tmp"] == ["left-behind"]
    _, timed_out = invoke(name, {"action": "leave", "seconds": 5})
    assert timed_out["errorType"] == "Sandbox.Timedout"
    _, fresh = invoke(name, {"action": "where"})  # a new environment after the timeout
    assert fresh["tmp"] == []


# --- LoggingConfig -------------------------------------------------------------------------
def test_json_logs_filtered_by_level_into_the_custom_group(
    make_function: Callable[..., str],
) -> None:
    group = f"/scones/custom-{uuid.uuid4().hex[:6]}"
    name = make_function(
        LoggingConfig={"LogFormat": "JSON", "ApplicationLogLevel": "WARN", "LogGroup": group}
    )
    config = boto3.client("lambda").get_function_configuration(FunctionName=name)
    assert config["LoggingConfig"] == {
        "LogFormat": "JSON",
        "ApplicationLogLevel": "WARN",
        "SystemLogLevel": "INFO",
        "LogGroup": group,
    }
    response, _ = invoke(name, {"action": "log"}, LogType="Tail")
    lines = tail(response)
    records = [json.loads(line) for line in lines if line.startswith("{")]
    types = [r.get("type") for r in records]
    assert types[:2] == ["platform.initStart", "platform.start"]
    assert types[-1] == "platform.report"
    report = records[-1]["record"]
    assert report["status"] == "success" and report["metrics"]["billedDurationMs"] >= 1
    application = [r for r in records if "level" in r]
    assert [(r["level"], r["message"]) for r in application] == [("WARNING", "a warning line")]
    assert application[0]["requestId"] == records[1]["record"]["requestId"]
    assert "a printed line" in lines  # print() stays plain text, as on AWS
    assert not any("START RequestId" in line for line in lines)
    events = boto3.client("logs").filter_log_events(logGroupName=group)["events"]
    assert any("a warning line" in e["message"] for e in events)


def test_text_logs_keep_start_end_report_and_refuse_levels(
    make_function: Callable[..., str],
) -> None:
    name = make_function()
    response, _ = invoke(name, {"action": "log"}, LogType="Tail")
    lines = tail(response)
    assert lines[0].startswith("START RequestId:")
    assert any(line.startswith("END RequestId:") for line in lines)
    assert any("a warning line" in line and line.startswith("[WARNING]") for line in lines)
    # Text: no level filter from Lambda; the root logger keeps Python's WARNING default, as on AWS.
    assert not any("an info line" in line for line in lines)
    with pytest.raises(ClientError) as refused:
        make_function(LoggingConfig={"LogFormat": "Text", "ApplicationLogLevel": "WARN"})
    assert refused.value.response["Error"]["Code"] == "InvalidParameterValueException"


# --- concurrency ---------------------------------------------------------------------------
def test_reserved_concurrency_zero_throttles(make_function: Callable[..., str]) -> None:
    name = make_function()
    lam = boto3.client("lambda", config=boto3.session.Config(retries={"max_attempts": 1}))
    lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=0)
    with pytest.raises(ClientError) as throttled:
        lam.invoke(FunctionName=name, Payload=b"{}")
    error = throttled.value.response
    assert error["Error"]["Code"] == "TooManyRequestsException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert error["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    lam.delete_function_concurrency(FunctionName=name)
    assert invoke(name, {})[1] == {"ok": True}


def test_reserved_concurrency_one_admits_one_at_a_time(make_function: Callable[..., str]) -> None:
    name = make_function()
    lam = boto3.client("lambda", config=boto3.session.Config(retries={"max_attempts": 1}))
    lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=1)
    outcomes: list[str] = []

    def call() -> None:
        try:
            lam.invoke(FunctionName=name, Payload=json.dumps({"action": "sleep", "seconds": 3.0}))
            outcomes.append("ran")
        except ClientError as error:
            outcomes.append(error.response["Error"]["Code"])

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["TooManyRequestsException", "TooManyRequestsException", "ran"]


def test_event_invocation_retries_twice_then_goes_to_destination_and_dlq(
    make_function: Callable[..., str],
) -> None:
    sqs = boto3.client("sqs")
    urls = {k: sqs.create_queue(QueueName=f"{k}-{uuid.uuid4().hex[:6]}")["QueueUrl"] for k in "fd"}
    arns = {
        k: sqs.get_queue_attributes(QueueUrl=u, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        for k, u in urls.items()
    }
    name = make_function(DeadLetterConfig={"TargetArn": arns["d"]})
    lam = boto3.client("lambda")
    lam.put_function_event_invoke_config(
        FunctionName=name, DestinationConfig={"OnFailure": {"Destination": arns["f"]}}
    )
    accepted = lam.invoke(
        FunctionName=name, InvocationType="Event", Payload=json.dumps({"action": "fail", "n": 7})
    )
    assert accepted["StatusCode"] == 202
    record = json.loads(_receive(sqs, urls["f"])["Body"])
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3  # the first try and two retries
    assert record["requestPayload"] == {"action": "fail", "n": 7}
    assert record["responseContext"]["functionError"] == "Unhandled"
    assert record["responsePayload"]["errorMessage"] == "always fails: 7"
    dead = _receive(sqs, urls["d"])
    assert json.loads(dead["Body"]) == {"action": "fail", "n": 7}
    assert "always fails: 7" in dead["MessageAttributes"]["ErrorMessage"]["StringValue"]


def _receive(sqs: Any, url: str) -> dict[str, Any]:
    """One message, waiting for it with SQS's own long poll."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        messages = sqs.receive_message(
            QueueUrl=url, WaitTimeSeconds=1, MessageAttributeNames=["All"]
        ).get("Messages", [])
        if messages:
            return dict(messages[0])
    raise AssertionError(f"nothing arrived on {url}")


# --- credentials and trust -----------------------------------------------------------------
def test_environment_gets_the_roles_temporary_credentials(
    role_arn: str, make_function: Callable[..., str]
) -> None:
    name = make_function()
    _, body = invoke(name, {"action": "identity"})
    env = body["env"]
    assert env["AWS_ACCESS_KEY_ID"].startswith("ASIA")
    assert env["AWS_SECRET_ACCESS_KEY"] and env["AWS_SESSION_TOKEN"]
    role_name = role_arn.rsplit("/", 1)[1]
    assert f":assumed-role/{role_name}/{name}" in body["arn"]


def test_a_role_lambda_may_not_assume_fails_create(emulator: LocalAws) -> None:
    iam, lam = boto3.client("iam"), boto3.client("lambda")
    ec2_only = json.loads(TRUST)
    ec2_only["Statement"][0]["Principal"] = {"Service": "ec2.amazonaws.com"}
    role = iam.create_role(
        RoleName=f"ec2-only-{uuid.uuid4().hex[:6]}", AssumeRolePolicyDocument=json.dumps(ec2_only)
    )["Role"]["Arn"]
    with pytest.raises(ClientError) as refused:
        lam.create_function(
            FunctionName=f"fn-{uuid.uuid4().hex[:8]}",
            Runtime="python3.11",
            Role=role,
            Handler="app.handler",
            Code={"ZipFile": make_zip({"app.py": HANDLER_SOURCE})},
        )
    assert refused.value.response["Error"]["Code"] == "InvalidParameterValueException"
    assert "cannot be assumed by Lambda" in refused.value.response["Error"]["Message"]


# --- layers --------------------------------------------------------------------------------
def test_layers_mounted_at_opt_with_versions_honoured(make_function: Callable[..., str]) -> None:
    lam = boto3.client("lambda")
    layer = f"greeting-{uuid.uuid4().hex[:6]}"
    versions = [
        lam.publish_layer_version(
            LayerName=layer,
            Content={"ZipFile": make_zip({"python/greeting.py": f"TEXT = {text!r}\n"})},
        )["LayerVersionArn"]
        for text in ("hello v1", "hello v2")
    ]
    first = make_function(Layers=[versions[0]])
    _, body = invoke(first, {"action": "layer"})
    expected_file = "/opt/python/greeting.py" if NAMESPACES else body["file"]
    assert body == {"greeting": "hello v1", "file": expected_file, "opt_on_path": NAMESPACES}
    _, second = invoke(make_function(Layers=[versions[1]]), {"action": "layer"})
    assert second["greeting"] == "hello v2"
    with pytest.raises(ClientError) as too_many:
        make_function(Layers=[versions[0]] * 6)
    assert too_many.value.response["Error"]["Code"] == "InvalidParameterValueException"


# --- states --------------------------------------------------------------------------------
@contextlib.contextmanager
def emulator_with(tmp_path: Path, **variables: str) -> Iterator[LocalAws]:
    """A second emulator started with extra settings, its profile selected, always stopped."""
    with running_local_aws(tmp_path / "state", environment=variables) as other:
        yield other


def test_pending_then_active_and_update_in_progress_then_successful(tmp_path: Path) -> None:
    # Pending for 3 s here (0.2 s by default), so the early calls land inside it on a busy machine.
    with emulator_with(tmp_path, LOCAL_AWS_LAMBDA_PENDING_S="3"):
        iam, lam = boto3.client("iam"), boto3.client("lambda")
        role = iam.create_role(RoleName="states", AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]
        name = "states"
        created = lam.create_function(
            FunctionName=name,
            Runtime="python3.11",
            Role=role,
            Handler="app.handler",
            Code={"ZipFile": make_zip({"app.py": HANDLER_SOURCE})},
        )
        assert created["State"] == "Pending" and created["StateReasonCode"] == "Creating"
        with pytest.raises(ClientError) as early:
            lam.invoke(FunctionName=name, Payload=b"{}")
        assert early.value.response["Error"]["Code"] == "ResourceConflictException"
        assert "Pending" in early.value.response["Error"]["Message"]
        lam.get_waiter("function_active_v2").wait(FunctionName=name)
        updated = lam.update_function_configuration(FunctionName=name, MemorySize=256)
        assert updated["LastUpdateStatus"] == "InProgress"
        lam.get_waiter("function_updated_v2").wait(FunctionName=name)
        config = lam.get_function_configuration(FunctionName=name)
        assert (config["State"], config["LastUpdateStatus"]) == ("Active", "Successful")
        assert invoke(name, {})[1] == {"ok": True}


# --- the course's cases --------------------------------------------------------------------
def test_bytes_in_the_result_fail_marshalling_as_on_aws(make_function: Callable[..., str]) -> None:
    response, body = invoke(make_function(), {"action": "bytes"})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.MarshalError"
    assert body["errorMessage"].startswith("Unable to marshal response")


def test_runtime_sagemaker_client_name(make_function: Callable[..., str]) -> None:
    assert invoke(make_function(), {"action": "runtime.sagemaker"})[1] == {
        "service": "sagemaker-runtime"
    }


def test_plain_exception_is_caught_by_its_error_type(
    role_arn: str, make_function: Callable[..., str]
) -> None:
    name = make_function()
    arn = boto3.client("lambda").get_function(FunctionName=name)["Configuration"]["FunctionArn"]
    definition = {
        "StartAt": "Classify",
        "States": {
            "Classify": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {"FunctionName": arn, "Payload": {"action": "plain-exception"}},
                "Catch": [{"ErrorEquals": ["Exception"], "ResultPath": "$.error", "Next": "No"}],
                "End": True,
            },
            "No": {"Type": "Pass", "End": True},
        },
    }
    sfn = boto3.client("stepfunctions")
    machine = create_machine(sfn, definition, role_arn)
    described = run_execution(sfn, machine, {}, name=uuid.uuid4().hex)
    assert described["status"] == "SUCCEEDED", described
    error = json.loads(described["output"])["error"]
    assert error["Error"] == "Exception"
    assert json.loads(error["Cause"])["errorMessage"] == "the model is not ready"


def test_sandbox_probe_reports_why_when_unavailable(tmp_path: Path) -> None:
    ok, _, reason = lambda_sandbox.probe(str(tmp_path / "no-such-python"))
    assert not ok and reason


# --- fork server and its fallback ----------------------------------------------------------
def test_a_crashing_environment_reports_its_exit_status(make_function: Callable[..., str]) -> None:
    name = make_function()
    response, body = invoke(name, {"action": "crash"})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ExitError"
    assert body["errorMessage"].endswith("exit status 3")
    assert invoke(name, {})[1] == {"ok": True}  # a fresh environment replaces it


def test_environments_see_only_their_own_variables(
    emulator: LocalAws, make_function: Callable[..., str]
) -> None:
    first = make_function(Environment={"Variables": {"ONLY_FIRST": "1"}})
    second = make_function()
    _, env_first = invoke(first, {"action": "environ"})
    _, env_second = invoke(second, {"action": "environ"})
    assert env_first["ONLY_FIRST"] == "1" and "ONLY_FIRST" not in env_second
    assert env_first["AWS_LAMBDA_FUNCTION_NAME"] == first
    assert env_second["AWS_LAMBDA_FUNCTION_NAME"] == second
    # Nothing of the emulator's own environment leaks in (its profile, its settings).
    assert not any(k.startswith(("LOCAL_AWS_", "_LOCAL_LAMBDA", "AWS_PROFILE")) for k in env_first)
    # Both were forked by the fork server (the fallback is tested below).
    assert (emulator.state_dir / "lambda" / "logs" / "forkserver.log").exists()


@needs_namespaces
def test_without_the_fork_server_environments_are_the_same(tmp_path: Path) -> None:
    with emulator_with(tmp_path, LOCAL_AWS_LAMBDA_FORK_SERVER="0") as other:
        iam, lam = boto3.client("iam"), boto3.client("lambda")
        role = iam.create_role(RoleName="exec", AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]
        create_function(lam, "exec", HANDLER_SOURCE, role)
        _, where = invoke("exec", {"action": "where"})
        assert (where["file"], where["tmp"], where["tmp_mb"]) == ("/var/task/app.py", [], 512)
        assert not (other.state_dir / "lambda" / "logs" / "forkserver.log").exists()


@pytest.mark.parametrize("fork_server", ["1", "0"])
def test_without_namespaces_each_environment_gets_its_own_tmpdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork_server: str
) -> None:
    monkeypatch.setenv("LOCAL_AWS_LAMBDA_FORK_SERVER", fork_server)
    source = (
        "import tempfile, time\n"
        "def handler(e, c):\n"
        "    time.sleep(e['s'])\n"
        "    return tempfile.gettempdir()\n"
    )
    runtime = LambdaRuntime(tmp_path, sandbox=Sandbox(False, False, False))
    spec = FunctionSpec(
        "f",
        "arn:aws:lambda:us-east-1:123456789012:function:f",
        "$LATEST",
        "app.handler",
        "python3.11",
        10.0,
        128,
        (),
        "sha-f",
        "us-east-1",
        "123456789012",
    )
    results: list[str] = []

    def call() -> None:
        outcome = runtime.invoke(spec, lambda: make_zip({"app.py": source}), b'{"s": 1.5}')
        results.append(json.loads(outcome.payload))

    try:
        threads = [threading.Thread(target=call) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(results)) == 2  # one TMPDIR each, under the runtime's state
        assert all(Path(r).is_relative_to(tmp_path) and Path(r).is_dir() for r in results)
    finally:
        runtime.shutdown()
    assert not any(Path(r).exists() for r in results)  # removed with their environments


def test_provisioned_concurrency_initialises_environments_ahead(
    make_function: Callable[..., str],
) -> None:
    lam = boto3.client("lambda")
    name = make_function()
    version = lam.publish_version(FunctionName=name)["Version"]
    with pytest.raises(ClientError) as unpublished:
        lam.put_provisioned_concurrency_config(
            FunctionName=name, Qualifier="$LATEST", ProvisionedConcurrentExecutions=1
        )
    assert unpublished.value.response["Error"]["Code"] == "InvalidParameterValueException"
    put = lam.put_provisioned_concurrency_config(
        FunctionName=name, Qualifier=version, ProvisionedConcurrentExecutions=2
    )
    assert put["RequestedProvisionedConcurrentExecutions"] == 2
    deadline = time.monotonic() + 30
    while (config := lam.get_provisioned_concurrency_config(FunctionName=name, Qualifier=version))[
        "Status"
    ] != "READY":
        assert config["Status"] == "IN_PROGRESS"
        assert time.monotonic() < deadline, config
        time.sleep(0.05)
    assert config["AvailableProvisionedConcurrentExecutions"] == 2
    response, env = invoke(name, {"action": "environ"}, Qualifier=version, LogType="Tail")
    assert response["ExecutedVersion"] == env["AWS_LAMBDA_FUNCTION_VERSION"] == version
    assert env["AWS_LAMBDA_INITIALIZATION_TYPE"] == "provisioned-concurrency"
    assert "Init Duration" not in base64.b64decode(response["LogResult"]).decode()
    lam.delete_provisioned_concurrency_config(FunctionName=name, Qualifier=version)
    with pytest.raises(ClientError) as gone:
        lam.get_provisioned_concurrency_config(FunctionName=name, Qualifier=version)
    assert gone.value.response["Error"]["Code"] == "ProvisionedConcurrencyConfigNotFoundException"


def test_a_published_version_keeps_its_code(make_function: Callable[..., str]) -> None:
    lam = boto3.client("lambda")
    name = make_function()
    version = lam.publish_version(FunctionName=name)["Version"]
    changed = HANDLER_SOURCE.replace('return {"ok": True}', 'return {"ok": "v2"}')
    lam.update_function_code(FunctionName=name, ZipFile=make_zip({"app.py": changed}))
    lam.get_waiter("function_updated_v2").wait(FunctionName=name)
    assert invoke(name, {})[1] == {"ok": "v2"}
    response, body = invoke(name, {}, Qualifier=version)
    assert body == {"ok": True} and response["ExecutedVersion"] == version
