"""The deploy's least-privilege roles, exercised: a removed permission fails the workflow.

One real deploy on the embedded stack (IAM enforced, as by default). Taking `s3:GetObject`
from the serialize role makes executions fail with the AccessDenied-derived error; taking
`sagemaker:InvokeEndpoint` from the classify role (checked by sagemaker-local through the
emulator) fails them at the classify step; restoring each policy makes them succeed again.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from scones.deploy import Deployer, DeployOptions, DeployResult
from scones.settings import Settings
from scones.workflow_functions import BY_FOLDER
from tests.conftest import LocalStack

pytestmark = pytest.mark.slow

OPTIONS = DeployOptions(rows_train=10_000, rows_test=2_000, waiter_delay_s=1)


@pytest.fixture(scope="module")
def deployed(local_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> DeployResult:
    settings = Settings(
        state_dir=tmp_path_factory.mktemp("permissions_state"), threshold=0.5, min_val_accuracy=0.7
    )
    lines: list[str] = []
    try:
        return Deployer(settings, OPTIONS, echo=lines.append).deploy()
    except Exception:
        print("\n".join(lines))
        raise


def _role_name(result: DeployResult, folder: str) -> str:
    """The role of a workflow function (named as the function, see scones/deploy/iam.py)."""
    (name,) = [r for r in result.roles if r.endswith(f"-{BY_FOLDER[folder].suffix}")]
    return name


def _execute(result: DeployResult, key: str) -> dict[str, Any]:
    sfn = boto3.client("stepfunctions")
    arn = sfn.start_execution(
        stateMachineArn=result.state_machine_arn,
        name=f"perm-{uuid.uuid4().hex[:12]}",
        input=json.dumps({"s3_bucket": result.bucket, "s3_key": key}),
    )["executionArn"]
    deadline = time.monotonic() + 120
    while (described := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
        assert time.monotonic() < deadline, f"execution {arn} still running"
        time.sleep(0.05)
    return dict(described)


def _a_test_key(result: DeployResult) -> str:
    manifest = f"{result.data_prefix}/test/manifest.jsonl"
    body = boto3.client("s3").get_object(Bucket=result.bucket, Key=manifest)["Body"].read()
    first = json.loads(body.decode().splitlines()[0])
    return f"{result.data_prefix}/test/{first['key']}"


@pytest.fixture
def without(deployed: DeployResult) -> Iterator[Any]:
    """Remove one action from a function role's `permissions` policy; restore it afterwards."""
    iam = boto3.client("iam")
    saved: list[tuple[str, Any]] = []

    def remove(folder: str, action: str) -> Any:
        role = _role_name(deployed, folder)
        document = iam.get_role_policy(RoleName=role, PolicyName="permissions")["PolicyDocument"]
        saved.append((role, document))
        kept = [s for s in document["Statement"] if action not in _as_list(s["Action"])]
        assert len(kept) < len(document["Statement"]), f"{role} has no {action}"
        iam.put_role_policy(
            RoleName=role,
            PolicyName="permissions",
            PolicyDocument=json.dumps({**document, "Statement": kept}),
        )
        return lambda: restore()

    def restore() -> None:
        while saved:
            role, document = saved.pop()
            iam.put_role_policy(
                RoleName=role, PolicyName="permissions", PolicyDocument=json.dumps(document)
            )

    try:
        yield remove
    finally:
        restore()


def _as_list(value: Any) -> list[str]:
    return value if isinstance(value, list) else [value]


def test_serialize_without_get_object_fails_then_passes_when_restored(
    deployed: DeployResult, without: Any
) -> None:
    key = _a_test_key(deployed)
    assert _execute(deployed, key)["status"] == "SUCCEEDED"
    restore = without("serialize_image_data", "s3:GetObject")
    failed = _execute(deployed, key)
    assert (failed["status"], failed["error"]) == ("FAILED", "ImageNotFound"), failed
    # The function names S3's code; the denial itself is the emulator's, as AWS words it.
    assert "AccessDenied" in failed["cause"], failed["cause"]
    restore()
    assert _execute(deployed, key)["status"] == "SUCCEEDED"


def test_classify_without_invoke_endpoint_fails_then_passes_when_restored(
    deployed: DeployResult, without: Any
) -> None:
    key = _a_test_key(deployed)
    assert _execute(deployed, key)["status"] == "SUCCEEDED"
    restore = without("classify_image", "sagemaker:InvokeEndpoint")
    # sagemaker-local caches a decision for 1 s: the change is seen within that time.
    deadline = time.monotonic() + 10
    while (failed := _execute(deployed, key))["status"] == "SUCCEEDED":
        assert time.monotonic() < deadline, "InvokeEndpoint still allowed"
    assert failed["status"] == "FAILED", failed
    assert "AccessDeniedException" in failed["cause"], failed["cause"]
    assert "sagemaker:InvokeEndpoint" in failed["cause"], failed["cause"]
    restore()
    deadline = time.monotonic() + 10
    while (passed := _execute(deployed, key))["status"] != "SUCCEEDED":
        assert time.monotonic() < deadline, passed
    assert json.loads(passed["output"])["body"]["s3_key"] == key
