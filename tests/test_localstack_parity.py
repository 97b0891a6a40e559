"""Parity with real LocalStack 4.14.0: the project's own deploy against it, in host mode.

The compose path (LocalStack beside sagemaker-local) needs a Docker engine; LocalStack itself
also runs as a host process from PyPI. This module creates its Python >= 3.12 environment
(cached under .state, skipped with the reason where no such Python exists), starts LocalStack
on a free port, starts sagemaker-local with S3 and STS sent to LocalStack, and runs
`python -m scripts.deploy` on small data, exactly as a user would with a profile: twice with
`--skip-functions` (everything else created, then a second run that changes nothing), then the
full deploy, twice.

What LocalStack's free edition cannot do here is asserted, not skipped: it runs Lambda code only
in Docker, so a function ends in State `Failed`, and the full deploy must fail with that reason
instead of printing "Deployed:" over functions that cannot run.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from scones.testing_deploy import deploy_cli
from scones.testing_processes import rss_mb
from services.localstack_host.environment import (
    LOCALSTACK_VERSION,
    EnvironmentUnavailable,
    LocalStackEnvironment,
    ensure_environment,
)
from services.localstack_host.host import SERVICES, RunningLocalStack
from services.localstack_host.stack import down, up
from tests.conftest import free_port, selected_profile

LOCALSTACK_ACCOUNT = "000000000000"
PREFIX = "scones"
ENDPOINT = "scones-image-classifier"
# Small data: 2,000 archive rows are 40 training images of the two default classes.
DEPLOY_ARGS = ("--rows-train", "2000", "--rows-test", "500", "--epochs", "1")
# The runs, in order: (name, extra arguments).
RUNS = (
    ("first", ("--skip-functions",)),
    ("second", ("--skip-functions",)),
    ("full", ()),
    ("full-again", ()),
)
DEPLOY_TIMEOUT_S = 600
FUNCTIONS = ("serialize-image-data", "classify-image", "filter-inferences")
ROLES = (*FUNCTIONS, "states", "sagemaker")
# Every resource the deploy creates, but the Lambda functions.
BUT_THE_FUNCTIONS = {
    "s3 bucket",
    "iam role",
    "dataset",
    "training job",
    "sagemaker model",
    "endpoint config",
    "endpoint",
    "state machine",
}
# One change line of the deploy: "  + iam role           scones-states".
CHANGE_LINE = re.compile(r"^  ([+~=-]) (\S(?:.{0,17}\S)?)\s+(\S+)")


@dataclass
class DeployRun:
    """One `python -m scripts.deploy` run: exit code, output, the change lines it printed."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    changes: list[tuple[str, str, str]] = field(default_factory=list)

    def by_resource(self, resource: str) -> dict[str, str]:
        """name -> verb for one kind of resource."""
        return {name: verb for verb, kind, name in self.changes if kind == resource}


@dataclass
class ParityStack:
    """LocalStack + sagemaker-local, the profile selecting both, and the deploy runs by name."""

    localstack: RunningLocalStack
    sagemaker_url: str
    env: dict[str, str]
    runs: dict[str, DeployRun]


def _report(config: pytest.Config, line: str) -> None:
    """A measured figure on the terminal, past pytest's output capture (CI logs keep it)."""
    reporter = config.pluginmanager.getplugin("terminalreporter")
    capture = config.pluginmanager.getplugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\n[localstack parity] {line}")


@pytest.fixture(scope="session")
def localstack_environment(pytestconfig: pytest.Config) -> LocalStackEnvironment:
    """LocalStack's venv, installed once (cached by a stamp); skipped where no Python >= 3.12."""
    try:
        environment = ensure_environment()
    except EnvironmentUnavailable as error:
        pytest.skip(str(error))
    _report(
        pytestconfig,
        f"environment {environment.venv} (Python {environment.python_version}): "
        + (
            f"installed in {environment.install_seconds:.1f}s"
            if environment.installed_now
            else "cached"
        ),
    )
    return environment


def run_deploy(env: dict[str, str], state_dir: Path, *extra: str) -> DeployRun:
    """The real deploy CLI in a subprocess, configured only by the profile and SCONES_* knobs."""
    started = time.monotonic()
    result = deploy_cli((*DEPLOY_ARGS, *extra), env, state_dir, DEPLOY_TIMEOUT_S)
    run = DeployRun(result.returncode, result.stdout, result.stderr, time.monotonic() - started)
    for line in result.stdout.splitlines():
        if match := CHANGE_LINE.match(line):
            verb, resource, name = match.groups()
            run.changes.append((verb, resource.strip(), name))
    return run


@pytest.fixture(scope="module")
def parity(
    localstack_environment: LocalStackEnvironment,
    tmp_path_factory: pytest.TempPathFactory,
    pytestconfig: pytest.Config,
) -> Iterator[ParityStack]:
    """LocalStack and sagemaker-local on free ports; the deploy runs against them."""
    root = tmp_path_factory.mktemp("localstack_parity")
    sagemaker_port = free_port()
    try:
        # The same code path as `make up BACKEND=localstack-host`, on free ports.
        localstack, env = up(
            root, free_port(), sagemaker_port, {"SAGEMAKER_LOCAL_CAPTURE_FLUSH_SECONDS": "1"}
        )
        runs = {name: run_deploy(env, root / "state", *extra) for name, extra in RUNS}
        _report(
            pytestconfig,
            f"LocalStack {LOCALSTACK_VERSION} ready in {localstack.ready_seconds:.1f}s; deploy "
            + ", ".join(f"{n} {r.seconds:.1f}s (exit {r.returncode})" for n, r in runs.items())
            + f"; LocalStack RSS then {rss_mb(localstack.pid):.0f} MiB",
        )
        with selected_profile(env, hide=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")):
            yield ParityStack(localstack, f"http://127.0.0.1:{sagemaker_port}", env, runs)
    finally:
        down(root)


def _explain(run: DeployRun) -> str:
    return (
        f"exit {run.returncode}\n--- stdout\n{run.stdout[-6000:]}\n--- stderr\n{run.stderr[-3000:]}"
    )


def test_localstack_is_the_pinned_version_with_every_needed_service(parity: ParityStack) -> None:
    url = f"{parity.localstack.endpoint_url}/_localstack/health"
    with urllib.request.urlopen(url, timeout=5) as response:
        health = json.loads(response.read())
    assert health["version"] == LOCALSTACK_VERSION
    states = {service: health["services"].get(service) for service in SERVICES}
    assert set(states.values()) <= {"available", "running"}, states


def test_the_account_is_localstack_s_end_to_end(parity: ParityStack) -> None:
    assert boto3.client("sts").get_caller_identity()["Account"] == LOCALSTACK_ACCOUNT
    assert parity.localstack.account == LOCALSTACK_ACCOUNT
    first = parity.runs["first"]
    assert f"Deploying to account {LOCALSTACK_ACCOUNT}," in first.stdout, _explain(first)
    # sagemaker-local builds its ARNs from the account STS gave it: LocalStack's, not a default.
    sagemaker = boto3.client("sagemaker")
    endpoint_arn = sagemaker.describe_endpoint(EndpointName=ENDPOINT)["EndpointArn"]
    assert endpoint_arn == f"arn:aws:sagemaker:us-east-1:{LOCALSTACK_ACCOUNT}:endpoint/{ENDPOINT}"
    jobs = sagemaker.list_training_jobs()["TrainingJobSummaries"]
    assert jobs and all(f":{LOCALSTACK_ACCOUNT}:" in job["TrainingJobArn"] for job in jobs)


def test_first_deploy_creates_every_resource_in_localstack(parity: ParityStack) -> None:
    first = parity.runs["first"]
    assert first.returncode == 0 and "Deployed:" in first.stdout, _explain(first)
    created = {kind for verb, kind, _ in first.changes if verb == "+"}
    assert created == BUT_THE_FUNCTIONS, _explain(first)
    assert set(first.by_resource("lambda function").values()) == {"-"}, _explain(first)
    bucket = f"scones-unlimited-{LOCALSTACK_ACCOUNT}-us-east-1"
    s3, iam, sagemaker = boto3.client("s3"), boto3.client("iam"), boto3.client("sagemaker")
    s3.head_bucket(Bucket=bucket)
    for role in ROLES:
        assert iam.get_role(RoleName=f"{PREFIX}-{role}")["Role"]["RoleName"] == f"{PREFIX}-{role}"
    manifest = s3.list_objects_v2(Bucket=bucket, Prefix="cifar100/")["KeyCount"]
    assert manifest >= 50  # 40 train + 10 test images and their manifests
    (job_name,) = first.by_resource("training job")
    job = sagemaker.describe_training_job(TrainingJobName=job_name)
    assert job["TrainingJobStatus"] == "Completed"
    artefact = job["ModelArtifacts"]["S3ModelArtifacts"]
    # The artefact was written by sagemaker-local into LocalStack's S3.
    assert artefact.startswith(f"s3://{bucket}/models/")
    assert s3.head_object(Bucket=bucket, Key=artefact.split("/", 3)[3])["ContentLength"] > 0
    endpoint = sagemaker.describe_endpoint(EndpointName=ENDPOINT)
    assert endpoint["EndpointStatus"] == "InService"
    (machine,) = boto3.client("stepfunctions").list_state_machines()["stateMachines"]
    definition = boto3.client("stepfunctions").describe_state_machine(
        stateMachineArn=machine["stateMachineArn"]
    )["definition"]
    # The repository's ASL with the function ARNs the deploy computed for LocalStack's account.
    for suffix in FUNCTIONS:
        arn = f"arn:aws:lambda:us-east-1:{LOCALSTACK_ACCOUNT}:function:{PREFIX}-{suffix}"
        assert arn in definition
    assert "${" not in definition


def test_lambda_execution_is_the_known_gap_and_the_deploy_says_so(parity: ParityStack) -> None:
    full = parity.runs["full"]
    # The full deploy gets as far as the first function and stops: no "Deployed:" over it.
    assert full.returncode == 1, _explain(full)
    assert "Deployed:" not in full.stdout and "Nothing to change" not in full.stdout
    failure = full.stderr.rpartition("deploy failed:")[2]
    name = f"{PREFIX}-{FUNCTIONS[0]}"
    assert name in failure and "State Failed" in failure, _explain(full)
    # LocalStack's free edition runs Lambda only in Docker: its runtime cannot be installed.
    assert "lambda-runtime" in failure, _explain(full)
    config = boto3.client("lambda").get_function_configuration(FunctionName=name)
    assert config["State"] == "Failed", config
    assert config["StateReason"] in failure
    # Everything before the functions was already there: the full run changed none of it.
    assert not [c for c in full.changes if c[0] in "+~" and c[1] != "lambda function"]
    # Run again, the deploy finds the function Failed, tries to heal it once, and says why not.
    again = parity.runs["full-again"]
    assert again.returncode == 1, _explain(again)
    failure = again.stderr.rpartition("deploy failed:")[2]
    assert f"{name} is Failed" in failure and config["StateReason"] in failure, _explain(again)


def test_an_execution_meets_the_gap_as_lambda_resource_conflict(parity: ParityStack) -> None:
    sfn = boto3.client("stepfunctions")
    (machine,) = sfn.list_state_machines()["stateMachines"]
    bucket = f"scones-unlimited-{LOCALSTACK_ACCOUNT}-us-east-1"
    execution = sfn.start_execution(
        stateMachineArn=machine["stateMachineArn"],
        name=f"gap-{uuid.uuid4().hex[:8]}",
        input=json.dumps({"s3_bucket": bucket, "s3_key": "cifar100/test/any.png"}),
    )
    deadline = time.monotonic() + 60
    while (described := sfn.describe_execution(executionArn=execution["executionArn"]))[
        "status"
    ] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    # LocalStack's own interpreter runs the repository's ASL up to the first Lambda task.
    assert described["status"] == "FAILED", described
    assert described["error"] == "Lambda.ResourceConflictException", described
    assert "state: Failed" in described["cause"], described
    # Without `events` among the services LocalStack logs, per execution, "ERROR ... Service
    # 'events' is not enabled" and "Unable to send notification of Entry=..." (measured).
    log = Path(parity.localstack.log_path).read_text(errors="replace").splitlines()
    missing_events = ("'events' is not enabled", "Unable to send notification")
    assert not [line for line in log if any(text in line for text in missing_events)]
    assert any("AWS stepfunctions.StartExecution => 200" in line for line in log)


def test_endpoint_serves_and_captures_into_localstack_s3(parity: ParityStack) -> None:
    bucket = f"scones-unlimited-{LOCALSTACK_ACCOUNT}-us-east-1"
    s3 = boto3.client("s3")
    keys = [
        item["Key"]
        for item in s3.list_objects_v2(Bucket=bucket, Prefix="cifar100/test/")["Contents"]
        if item["Key"].endswith(".png")
    ]
    image = s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read()
    inference_id = uuid.uuid4().hex
    response = boto3.client("sagemaker-runtime").invoke_endpoint(
        EndpointName=ENDPOINT, ContentType="image/png", Body=image, InferenceId=inference_id
    )
    answer = json.loads(response["Body"].read())
    assert answer["labels"] == ["bicycle", "motorcycle"], answer
    assert abs(sum(answer["probabilities"]) - 1) < 1e-4, answer
    record = _wait_for_capture(s3, bucket, f"data-capture/{ENDPOINT}/AllTraffic/", inference_id)
    assert record["captureData"]["endpointInput"]["observedContentType"] == "image/png"
    assert record["captureData"]["endpointInput"]["encoding"] == "BASE64"
    assert json.loads(record["captureData"]["endpointOutput"]["data"]) == answer


def _wait_for_capture(s3: Any, bucket: str, prefix: str, inference_id: str) -> dict[str, Any]:
    # sagemaker-local flushes capture files every second (SAGEMAKER_LOCAL_CAPTURE_FLUSH_SECONDS).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode()
                for line in body.splitlines():
                    record = json.loads(line)
                    if record["eventMetadata"].get("inferenceId") == inference_id:
                        return dict(record)
        time.sleep(0.5)
    raise AssertionError(f"no capture record with inferenceId {inference_id} under {prefix}")


def test_second_deploy_changes_nothing(parity: ParityStack) -> None:
    first, second = parity.runs["first"], parity.runs["second"]
    assert second.returncode == 0, _explain(second)
    assert "Nothing to change: everything is up to date." in second.stdout, _explain(second)
    assert not [c for c in second.changes if c[0] in "+~"], _explain(second)
    for resource in BUT_THE_FUNCTIONS:
        assert set(second.by_resource(resource)) == set(first.by_resource(resource)), resource
        assert set(second.by_resource(resource).values()) == {"="}, _explain(second)
    # No second training job and no new endpoint configuration.
    sagemaker = boto3.client("sagemaker")
    assert len(sagemaker.list_training_jobs()["TrainingJobSummaries"]) == 1
    configs = sagemaker.list_endpoint_configs()["EndpointConfigs"]
    assert [c["EndpointConfigName"] for c in configs] == list(first.by_resource("endpoint config"))
