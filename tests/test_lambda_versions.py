"""Published versions on the emulator as AWS keeps them: numbers never reused, a version an alias
names not deletable, a deleted version's environments stopped; and the deploy's pruning of old
versions (`scones.deploy.functions.prune_versions`) and its comparison of what a version froze."""

from __future__ import annotations

import uuid
from typing import Any

import boto3
import pytest

from scones.deploy import functions
from scones.deploy.iam import trust
from scones.testing import LocalAws
from scones.testing_functions import create_function, invoke, make_zip

SOURCE = (
    "import os\nN = {n}\ndef handler(event, context):\n    return {{'n': N, 'pid': os.getpid()}}\n"
)


@pytest.fixture(scope="module")
def role(local_aws: LocalAws) -> str:
    iam = boto3.client("iam")
    name = f"versions-{uuid.uuid4().hex[:6]}"
    arn: str = iam.create_role(
        RoleName=name, AssumeRolePolicyDocument=trust("lambda.amazonaws.com")
    )["Role"]["Arn"]
    return arn


def _publish(lam: Any, name: str, n: int) -> str:
    """New code (handler answering n), then a published version of it; its number."""
    lam.update_function_code(FunctionName=name, ZipFile=_zip(n))
    wait_updated(lam, name)
    return str(lam.publish_version(FunctionName=name)["Version"])


def _zip(n: int) -> bytes:
    return make_zip(SOURCE.format(n=n))


def wait_updated(lam: Any, name: str) -> None:
    lam.get_waiter("function_updated_v2").wait(
        FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30}
    )


def _versions(lam: Any, name: str) -> list[str]:
    return [v["Version"] for v in lam.list_versions_by_function(FunctionName=name)["Versions"]]


def test_deleted_versions_numbers_are_not_reused_and_alias_targets_stay(role: str) -> None:
    lam = boto3.client("lambda")
    name = f"ver-{uuid.uuid4().hex[:8]}"
    create_function(lam, name, SOURCE.format(n=0), role)
    published = [_publish(lam, name, n) for n in (1, 2, 3)]
    assert published == ["1", "2", "3"]
    lam.create_alias(FunctionName=name, Name="live", FunctionVersion="2")
    with pytest.raises(lam.exceptions.ResourceConflictException, match=r"\[live\]"):
        lam.delete_function(FunctionName=name, Qualifier="2")
    lam.delete_function(FunctionName=name, Qualifier="1")
    lam.delete_function(FunctionName=f"{name}:3")  # the qualifier in the name, as boto3 allows
    assert _versions(lam, name) == ["$LATEST", "2"]
    # One past the highest ever published (moto would count the one left and answer 2 again).
    assert _publish(lam, name, 4) == "4"
    assert lam.get_alias(FunctionName=name, Name="live")["FunctionVersion"] == "2"
    assert invoke(f"{name}:live", {})[1]["n"] == 2
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function_configuration(FunctionName=name, Qualifier="1")


def test_a_deleted_versions_environment_is_stopped(local_aws: LocalAws, role: str) -> None:
    import os

    lam = boto3.client("lambda")
    name = f"ver-{uuid.uuid4().hex[:8]}"
    create_function(lam, name, SOURCE.format(n=0), role)
    version = _publish(lam, name, 1)
    pid = invoke(f"{name}:{version}", {})[1]["pid"]
    os.kill(pid, 0)  # warm: the environment waits for its next invocation
    lam.delete_function(FunctionName=name, Qualifier=version)
    with pytest.raises(ProcessLookupError):
        # Stopped with the version (it is killed and reaped before DeleteFunction answers).
        os.kill(pid, 0)


def test_prune_keeps_the_newest_and_what_aliases_name(role: str) -> None:
    lam = boto3.client("lambda")
    name = f"ver-{uuid.uuid4().hex[:8]}"
    create_function(lam, name, SOURCE.format(n=0), role)
    for n in range(1, 7):
        _publish(lam, name, n)
    lam.create_alias(FunctionName=name, Name="old", FunctionVersion="1")
    lam.create_alias(
        FunctionName=name,
        Name="canary",
        FunctionVersion="3",
        RoutingConfig={"AdditionalVersionWeights": {"2": 0.1}},
    )
    # Older than the newest two: 1 to 4; but 1, 3 (aliases) and 2 (routed to) are in use.
    assert functions.prune_versions(lam, name, keep=2) == ["4"]
    assert _versions(lam, name) == ["$LATEST", "1", "2", "3", "5", "6"]
    assert functions.prune_versions(lam, name, keep=2) == []  # nothing more to do


def test_a_version_with_other_logging_or_layers_is_not_reused(role: str) -> None:
    lam = boto3.client("lambda")
    name = f"ver-{uuid.uuid4().hex[:8]}"
    create_function(lam, name, SOURCE.format(n=0), role, LoggingConfig={"LogFormat": "Text"})
    lam.publish_version(FunctionName=name)
    latest = lam.get_function_configuration(FunctionName=name)
    assert functions.newest_matching_version(lam, name, latest) == "1"
    lam.update_function_configuration(
        FunctionName=name, LoggingConfig={"LogFormat": "JSON", "ApplicationLogLevel": "WARN"}
    )
    wait_updated(lam, name)
    latest = lam.get_function_configuration(FunctionName=name)
    assert functions.newest_matching_version(lam, name, latest) is None
    # Layers: compared by ARN (their sizes are what the service reports).
    frozen = {**latest, "Layers": [{"Arn": "arn:aws:lambda:us-east-1:1:layer:x:1", "CodeSize": 1}]}
    assert functions.version_settings(frozen) != functions.version_settings(latest)
    same = {**frozen, "Layers": [{"Arn": "arn:aws:lambda:us-east-1:1:layer:x:1", "CodeSize": 9}]}
    assert functions.version_settings(frozen) == functions.version_settings(same)
