"""The deploy's least-privilege roles, exercised: a removed permission fails the workflow.

One real deploy on the embedded stack (IAM enforced, as by default). Taking `s3:GetObject`
from the serialize role makes executions fail with the AccessDenied-derived error; taking
`sagemaker:InvokeEndpoint` from the classify role (checked by sagemaker-local through the
emulator) fails them at the classify step; restoring each policy makes them succeed again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from scones.deploy import DeployResult
from scones.settings import Settings
from scones.testing_deploy import deploy, execute, manifest_keys
from scones.workflow_functions import BY_FOLDER
from tests.conftest import LocalStack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deployed(local_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> DeployResult:
    settings = Settings(
        state_dir=tmp_path_factory.mktemp("permissions_state"), threshold=0.5, min_val_accuracy=0.7
    )
    return deploy(settings)


def _role_name(result: DeployResult, folder: str) -> str:
    """The role of a workflow function (named as the function, see scones/deploy/iam.py)."""
    (name,) = [r for r in result.roles if r.endswith(f"-{BY_FOLDER[folder].suffix}")]
    return name


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


@pytest.mark.parametrize(
    ("folder", "action", "settle_s", "error", "in_cause"),
    [
        # The function names S3's code; the denial itself is the emulator's, as AWS words it.
        ("serialize_image_data", "s3:GetObject", 0, "ImageNotFound", ["AccessDenied"]),
        # sagemaker-local caches a decision for 1 s: the change is seen within `settle_s`.
        (
            "classify_image",
            "sagemaker:InvokeEndpoint",
            10,
            None,
            ["AccessDeniedException", "sagemaker:InvokeEndpoint"],
        ),
    ],
)
def test_a_function_without_a_permission_fails_then_passes_when_restored(
    deployed: DeployResult,
    without: Any,
    folder: str,
    action: str,
    settle_s: float,
    error: str | None,
    in_cause: list[str],
) -> None:
    key = manifest_keys(deployed)[0]
    assert execute(deployed, key)["status"] == "SUCCEEDED"
    restore = without(folder, action)
    deadline = time.monotonic() + settle_s
    while (failed := execute(deployed, key))["status"] == "SUCCEEDED":
        assert time.monotonic() < deadline, f"{action} still allowed"
    assert failed["status"] == "FAILED", failed
    if error is not None:
        assert failed["error"] == error, failed
    for word in in_cause:
        assert word in failed["cause"], failed["cause"]
    restore()
    deadline = time.monotonic() + settle_s
    while (passed := execute(deployed, key))["status"] != "SUCCEEDED":
        assert time.monotonic() < deadline, passed
    assert json.loads(passed["output"])["body"]["s3_key"] == key
